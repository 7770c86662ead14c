//! Live reload: what triggers it, and what is reported when it runs.
//!
//! Triggers: a file watcher, SIGHUP, and `POST /reload` on the admin listener. All of them go
//! through [`apply`], which runs [`Gateway::reload`] (validate everything, then one swap) and
//! reports the outcome the same way: one log line, metrics, and systemd `RELOADING=1` /
//! `READY=1` / `STATUS=`.
//!
//! The watcher watches the *parent folders* of the config file and of every file it references
//! (certificates, keys, secret files, CA bundles), and of their symlink targets, because editors
//! save by renaming a temporary file, `cp` truncates and rewrites, certbot and Kubernetes swap
//! symlinks, and a watch on the file itself loses track in all three cases. Events are debounced
//! ([`DEBOUNCE`]) into one check; the check reloads only when the content of a watched file
//! actually changed (a SHA-256 per file), so noise in a shared folder costs a few reads and
//! nothing else. A file caught half-written fails validation; its next write is a new event and
//! is retried. If the watcher cannot be set up (inotify limits), the files are polled every
//! second instead.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;

use crate::gateway::{Gateway, ReloadError, ReloadReport};

/// Quiet time after the last file event before the files are checked.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads and reports the outcome. `trigger` names what asked (`watch`, `SIGHUP`, `admin`).
pub async fn apply(gw: &Gateway, trigger: &'static str) -> Result<ReloadReport, ReloadError> {
    crate::systemd::reloading();
    let started = Instant::now();
    let result = gw.reload().await;
    let took = started.elapsed();
    match &result {
        Ok(r) => {
            crate::metrics::reload(true, r.generation, took);
            gw.after_reload();
            tracing::info!(trigger, generation = r.generation, ms = r.millis as u64, changes = %r, "configuration reloaded");
            crate::systemd::reloaded(&format!("serving generation {}", r.generation));
        }
        Err(e) => {
            crate::metrics::reload(false, gw.generation(), took);
            tracing::error!(trigger, generation = gw.generation(), error = %e.summary(), "reload refused; still serving the previous configuration");
            crate::systemd::reloaded(&format!(
                "reload failed, serving generation {}: {}",
                gw.generation(),
                e.summary()
            ));
        }
    }
    result
}

/// The content of every watched file: a change in any of them means "reload".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<[u8; 32]>)>);

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    Fingerprint(
        files
            .iter()
            .map(|p| {
                let digest = std::fs::read(p).ok().map(|b| {
                    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &b);
                    let mut out = [0u8; 32];
                    out.copy_from_slice(d.as_ref());
                    out
                });
                (p.clone(), digest)
            })
            .collect(),
    )
}

/// Folders to watch for `files`: each file's folder, and the folder of its symlink target.
fn folders(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        if let Some(parent) = f.parent() {
            out.insert(parent.to_path_buf());
        }
        if let Ok(real) = std::fs::canonicalize(f) {
            if let Some(parent) = real.parent() {
                out.insert(parent.to_path_buf());
            }
        }
    }
    out
}

/// Watches the config and its files until the gateway shuts down.
pub async fn watch(gw: Arc<Gateway>) {
    let wake = Arc::new(Notify::new());
    let wake2 = wake.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            wake2.notify_one();
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; polling them every second instead");
            None
        }
    };
    let mut shutdown = gw.shutdown_signal();
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let files = gw.shared.load().config.files.clone();
    let mut last = tokio::task::spawn_blocking({
        let f = files.clone();
        move || fingerprint(&f)
    })
    .await
    .unwrap_or(Fingerprint(Vec::new()));
    loop {
        let files = gw.shared.load().config.files.clone();
        if let Some(w) = watcher.as_mut() {
            let want = folders(&files);
            for gone in watched.difference(&want).cloned().collect::<Vec<_>>() {
                let _ = w.unwatch(&gone);
                watched.remove(&gone);
            }
            for dir in want {
                if !watched.contains(&dir) {
                    match w.watch(&dir, RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            watched.insert(dir);
                        }
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder; changes in it need SIGHUP")
                        }
                    }
                }
            }
        }
        // Wait for an event (or a poll tick), then for the burst to end.
        let poll = if watcher.is_some() {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            tokio::select! {
                _ = wake.notified() => continue,
                _ = tokio::time::sleep(DEBOUNCE) => break,
                _ = shutdown.changed() => return,
            }
        }
        let now = {
            let f = files.clone();
            tokio::task::spawn_blocking(move || fingerprint(&f))
                .await
                .unwrap_or(Fingerprint(Vec::new()))
        };
        if now == last {
            continue;
        }
        last = now;
        if apply(&gw, "watch").await.is_ok() {
            // The new config may reference other files: fingerprint those.
            let f = gw.shared.load().config.files.clone();
            last = tokio::task::spawn_blocking(move || fingerprint(&f))
                .await
                .unwrap_or(Fingerprint(Vec::new()));
        }
    }
}
