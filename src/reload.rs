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
//! symlinks, and a watch on the file itself loses track in all three cases. A folder holds other
//! files too (an access log written on every request, an app's database), so only events that
//! name one of our files, its symlink target, a watched folder itself or a Kubernetes `..data`
//! swap go on ([`Concerned`]); the rest are dropped on the watcher's thread and never wake the
//! runtime, which is the serving worker's when there is one worker. Events are debounced
//! ([`DEBOUNCE`], at most [`MAX_DEBOUNCE`] after the first) into one check; the check reloads
//! only when the content of a watched file actually changed (a SHA-256 per file). A file caught
//! half-written fails validation; its next write is a new event and is retried. If the watcher
//! cannot be set up (inotify limits), the files are polled every second instead.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;

use crate::config::Fingerprint;
use crate::gateway::{Gateway, ReloadError, ReloadReport};

/// Quiet time after the last file event before the files are checked.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The longest a burst of events delays the check: a file of ours rewritten without pause (a
/// script's loop) is still checked, once per this interval.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

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

/// The paths whose events can mean new content for the config: the files it reads as written in
/// it and as their symlinks resolve, and the watched folders themselves (removed or moved).
#[derive(Default)]
struct Concerned {
    paths: HashSet<PathBuf>,
}

impl Concerned {
    /// The folders to watch for `files` (each file's, and its symlink target's) and the paths
    /// whose events concern them, each file resolved once.
    fn of(files: &[PathBuf]) -> (BTreeSet<PathBuf>, Concerned) {
        // notify reports a relative watch's events under the working folder: `-c gatehouse.toml`
        // watches `""`, and its events name `/cwd/gatehouse.toml`.
        let cwd = std::env::current_dir().ok();
        let absolute = |p: &Path| cwd.as_ref().map(|d| d.join(p));
        let (mut folders, mut paths) = (BTreeSet::new(), HashSet::new());
        for f in files {
            let real = std::fs::canonicalize(f).ok();
            folders.extend(f.parent().map(Path::to_path_buf));
            folders.extend(
                real.as_deref()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf),
            );
            paths.extend([Some(f.clone()), absolute(f), real].into_iter().flatten());
        }
        for dir in &folders {
            paths.extend([Some(dir.clone()), absolute(dir)].into_iter().flatten());
        }
        (folders, Concerned { paths })
    }

    /// Whether `event` may be about our files. An event without paths, or one that says events
    /// were lost (the inotify queue overflowed), may be: it goes on.
    fn wants(&self, event: &notify::Event) -> bool {
        if !is_change(&event.kind) {
            return false;
        }
        event.need_rescan()
            || event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| self.paths.contains(p) || is_symlink_swap(p))
    }
}

/// A Kubernetes ConfigMap or Secret volume updates by renaming a new `..data` symlink over the
/// old one (`..data_tmp` → `..data`); our file is `name -> ..data/name`, and its own path sees no
/// event. Every name of that scheme starts with `..`.
fn is_symlink_swap(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".."))
}

/// Whether an event can mean new content. Opening and reading a file (inotify's `IN_OPEN`,
/// `IN_ACCESS`, `IN_CLOSE_NOWRITE`) cannot, and must not count: the watcher reads the files to
/// fingerprint them, so counting reads would wake it forever (measured: a 10,000-site file was
/// hashed five times a second on an idle server).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        // A file opened for writing was closed: the end of a truncate-and-write.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts watching the config and its files; returns once the watches are in place, so a write
/// made after this returns is never missed. The watcher stops when the gateway shuts down.
pub async fn spawn_watcher(gw: Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    let wake = Arc::new(Notify::new());
    let concerned = Arc::new(ArcSwap::from_pointee(Concerned::default()));
    let (wake2, concerned2) = (wake.clone(), concerned.clone());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // An error (the watch itself failing) may have hidden a change: check.
        if res.map_or(true, |e| concerned2.load().wants(&e)) {
            wake2.notify_one();
        }
    });
    let mut w = Watch {
        watcher: match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; polling them every second instead");
                None
            }
        },
        folders: BTreeSet::new(),
        concerned,
    };
    w.update(&gw.shared.load().config.files);
    // Anything written between the load and the watches being in place is caught here.
    wake.notify_one();
    tokio::spawn(watch_loop(gw, w, wake))
}

struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    folders: BTreeSet<PathBuf>,
    /// Shared with the watcher's callback, which filters events with it.
    concerned: Arc<ArcSwap<Concerned>>,
}

impl Watch {
    /// Watches the folders of `files`, and stops watching folders no longer needed.
    fn update(&mut self, files: &[PathBuf]) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        let (want, concerned) = Concerned::of(files);
        // Before the new watches: an event in a new folder must find its files concerned.
        self.concerned.store(Arc::new(concerned));
        for gone in self.folders.difference(&want).cloned().collect::<Vec<_>>() {
            let _ = w.unwatch(&gone);
            self.folders.remove(&gone);
        }
        for dir in want {
            if !self.folders.contains(&dir) {
                match w.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.folders.insert(dir);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder; changes in it need SIGHUP")
                    }
                }
            }
        }
    }
}

async fn watch_loop(gw: Arc<Gateway>, mut w: Watch, wake: Arc<Notify>) {
    let mut shutdown = gw.shutdown_signal();
    // What the files held when the serving config was loaded (or last attempted).
    let mut last = gw.shared.load().config.fingerprint.clone();
    loop {
        let poll = if w.watcher.is_some() {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
        // Let the burst of events (an editor's save, certbot's renewal) end.
        let latest = tokio::time::Instant::now() + MAX_DEBOUNCE;
        loop {
            tokio::select! {
                _ = wake.notified() => continue,
                _ = tokio::time::sleep(DEBOUNCE) => break,
                _ = tokio::time::sleep_until(latest) => break,
                _ = shutdown.changed() => return,
            }
        }
        let files = gw.shared.load().config.files.clone();
        let now = tokio::task::spawn_blocking(move || Fingerprint::of(&files))
            .await
            .unwrap_or_default();
        if now == last {
            continue;
        }
        last = now;
        if apply(&gw, "watch").await.is_ok() {
            let cfg = &gw.shared.load().config;
            last = cfg.fingerprint.clone();
            w.update(&cfg.files);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Concerned, is_change};
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, Flag, ModifyKind, RemoveKind, RenameMode,
    };
    use notify::{Event, EventKind};
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    /// The config `/srv/gh/gatehouse.toml` and a certificate `/srv/certs/a.crt` (neither exists,
    /// so no symlink resolves), watched in their two folders.
    fn concerned() -> Concerned {
        let files = [
            PathBuf::from("/srv/gh/gatehouse.toml"),
            PathBuf::from("/srv/certs/a.crt"),
        ];
        let (folders, concerned) = Concerned::of(&files);
        let expected: BTreeSet<PathBuf> = ["/srv/gh", "/srv/certs"].map(PathBuf::from).into();
        assert_eq!(folders, expected);
        concerned
    }

    fn written(path: impl Into<PathBuf>) -> Event {
        Event::new(EventKind::Modify(ModifyKind::Data(DataChange::Any))).add_path(path.into())
    }

    #[test]
    fn a_write_to_a_file_of_ours_is_wanted() {
        assert!(concerned().wants(&written("/srv/gh/gatehouse.toml")));
        assert!(concerned().wants(&written("/srv/certs/a.crt")));
    }

    #[test]
    fn a_write_to_another_file_in_a_watched_folder_is_not() {
        // The access log next to the config: written on every request.
        assert!(!concerned().wants(&written("/srv/gh/access.log")));
        assert!(!concerned().wants(&written("/srv/gh/.gatehouse.toml.swp")));
    }

    #[test]
    fn a_rename_onto_a_file_of_ours_is_wanted() {
        let e = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/srv/gh/.gatehouse.toml.swp".into())
            .add_path("/srv/gh/gatehouse.toml".into());
        assert!(concerned().wants(&e));
    }

    #[test]
    fn a_relative_config_path_matches_events_under_the_working_folder() {
        let (_, c) = Concerned::of(&[PathBuf::from("gatehouse.toml")]);
        let cwd = std::env::current_dir().unwrap();
        assert!(c.wants(&written(cwd.join("gatehouse.toml"))));
        assert!(!c.wants(&written(cwd.join("access.log"))));
    }

    #[test]
    fn a_kubernetes_data_symlink_swap_is_wanted() {
        let e = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::To)))
            .add_path("/srv/gh/..data".into());
        assert!(concerned().wants(&e));
    }

    #[test]
    fn a_watched_folder_removed_is_wanted() {
        let e = Event::new(EventKind::Remove(RemoveKind::Folder)).add_path("/srv/certs".into());
        assert!(concerned().wants(&e));
    }

    #[test]
    fn an_event_that_names_no_file_or_reports_lost_events_is_wanted() {
        assert!(concerned().wants(&Event::new(EventKind::Any)));
        let lost = Event::new(EventKind::Other)
            .add_path("/srv/gh/other".into())
            .set_flag(Flag::Rescan);
        assert!(concerned().wants(&lost));
    }

    #[test]
    fn reading_a_file_of_ours_is_not_wanted() {
        let e = Event::new(EventKind::Access(AccessKind::Close(AccessMode::Read)))
            .add_path("/srv/gh/gatehouse.toml".into());
        assert!(!concerned().wants(&e));
    }

    #[test]
    fn opening_or_reading_a_file_is_not_a_change() {
        for k in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
            AccessKind::Any,
        ] {
            assert!(!is_change(&EventKind::Access(k)), "{k:?}");
        }
    }

    #[test]
    fn closing_a_file_written_to_is_a_change() {
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
    }

    #[test]
    fn writes_creates_renames_and_removals_are_changes() {
        for k in [
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(is_change(&k), "{k:?}");
        }
    }
}
