//! The binary as systemd runs it: signals, sd_notify, logs, the unit file and the installer.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::*;

fn config(dir: &Path, body: &str, extra_server: &str) -> std::path::PathBuf {
    let path = dir.join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
http = "127.0.0.1:0"
{extra_server}

[[site]]
hosts = ["app.test"]
  [[site.route]]
  prefix = "/"
  respond = {{ body = "{body}" }}
"#
        ),
    )
    .unwrap();
    path
}

/// Reads sd_notify datagrams until one contains `needle`.
fn expect_notify(sock: &UnixDatagram, needle: &str) -> String {
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no sd_notify message with {needle}"
        );
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.contains(needle) {
                    return msg;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn sd_notify_ready_reloading_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "one", "");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut p = Proc::start(&path, &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);

    let ready = expect_notify(&sock, "READY=1");
    assert!(ready.contains("STATUS=serving generation 1"), "{ready}");

    config(dir.path(), "two", "");
    p.signal("HUP");
    let reloading = expect_notify(&sock, "RELOADING=1");
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING");
    assert!(usec.parse::<u64>().unwrap() > 0);
    let after = expect_notify(&sock, "READY=1");
    assert!(after.contains("STATUS=serving generation 2"), "{after}");
    assert_eq!(get_blocking(p.http[0], "/"), "two");

    std::fs::write(&path, "[server]\nhttp = \"127.0.0.1:0\"\n").unwrap();
    p.signal("HUP");
    expect_notify(&sock, "RELOADING=1");
    let failed = expect_notify(&sock, "READY=1");
    assert!(
        failed.contains("STATUS=reload failed, serving generation 2"),
        "{failed}"
    );
    assert!(failed.contains("defines no [[site]]"), "{failed}");
    assert_eq!(get_blocking(p.http[0], "/"), "two");

    p.signal("TERM");
    expect_notify(&sock, "STOPPING=1");
    assert_eq!(p.wait(), Some(0));
}

/// A blocking GET for tests that drive a child process from a plain thread.
fn get_blocking(addr: std::net::SocketAddr, path: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { get(addr, "app.test", path).await.text() })
}

#[test]
fn sighup_reloads_and_logs_one_line_with_generation_changes_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "one", "");
    let p = Proc::start(&path, &[]);
    config(dir.path(), "two", "");
    p.signal("HUP");
    let line = p.wait_for("configuration reloaded");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["generation"], 2);
    assert!(
        line["fields"]["changes"]
            .as_str()
            .unwrap()
            .contains("routes changed: app.test/"),
        "{line}"
    );
    assert!(line["fields"]["ms"].is_u64());
    assert_eq!(get_blocking(p.http[0], "/"), "two");
}

#[test]
fn a_refused_reload_logs_one_error_line_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "one", "");
    let p = Proc::start(&path, &[]);
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("respond", "respnd"),
    )
    .unwrap();
    p.signal("HUP");
    let line = p.wait_for("reload refused");
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("gatehouse.toml:10:3"),
        "{line}"
    );
    assert_eq!(get_blocking(p.http[0], "/"), "one");
}

#[test]
fn sigterm_exits_zero_after_draining() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "one", "shutdown_grace = \"5s\"");
    let mut p = Proc::start(&path, &[]);
    assert_eq!(get_blocking(p.http[0], "/"), "one");
    p.signal("TERM");
    p.wait_for("shutting down");
    assert_eq!(p.wait(), Some(0));
}

#[test]
fn sigusr1_reopens_the_access_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\n[log]\naccess_log = \"{}\"\n[[site]]\nhosts = [\"app.test\"]\n  [[site.route]]\n  prefix = \"/\"\n  respond = {{ body = \"x\" }}\n",
            log.display()
        ),
    )
    .unwrap();
    let p = Proc::start(&path, &[]);
    get_blocking(p.http[0], "/first");
    wait_for_file_line(&log, "/first");
    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    p.signal("USR1");
    p.wait_for("access log reopened");
    get_blocking(p.http[0], "/second");
    wait_for_file_line(&log, "/second");
    let rotated = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
    assert!(
        rotated.contains("/first") && !rotated.contains("/second"),
        "{rotated}"
    );
}

/// Waits until `path` holds a line containing `needle` (the writer flushes asynchronously).
fn wait_for_file_line(path: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return l.to_owned();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never got {needle}",
            path.display()
        );
        // Polling the condition (the file's content), not sleeping in place of it.
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "one", "");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "-c"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("listening"), "{first}");
    assert!(!first.contains('\u{1b}'), "{first:?}");
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (.ci/run installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/gatehouse.service"),
    )
    .unwrap();
    // verify checks that ExecStart= exists: point it at the binary under test.
    let unit = unit.replace("/usr/local/bin/gatehouse", env!("CARGO_BIN_EXE_gatehouse"));
    let path = dir.path().join("gatehouse.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}

#[test]
fn the_unit_file_has_the_service_settings() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/gatehouse.service"),
    )
    .unwrap();
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/local/bin/gatehouse check",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LoadCredential=clerk-secret-key:",
        "EnvironmentFile=-/etc/gatehouse/env",
        "WatchdogSec=",
        "User=gatehouse",
    ] {
        assert!(unit.contains(line), "missing {line}");
    }
}

#[test]
fn install_and_uninstall_stage_and_remove_the_files() {
    let root = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/install.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "--binary",
            env!("CARGO_BIN_EXE_gatehouse"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "usr/local/bin/gatehouse",
        "etc/systemd/system/gatehouse.service",
        "etc/gatehouse/gatehouse.toml",
        "etc/gatehouse/env",
        "etc/gatehouse/credentials/clerk-secret-key",
    ] {
        assert!(root.path().join(f).exists(), "{f} was not installed");
    }
    // The installed binary accepts the installed config.
    let check = std::process::Command::new(root.path().join("usr/local/bin/gatehouse"))
        .args(["check", "-c"])
        .arg(root.path().join("etc/gatehouse/gatehouse.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A second install keeps an edited config.
    std::fs::write(
        root.path().join("etc/gatehouse/gatehouse.toml"),
        "# edited\n",
    )
    .unwrap();
    let again = std::process::Command::new("bash")
        .arg(&script)
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "--binary",
            env!("CARGO_BIN_EXE_gatehouse"),
        ])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/gatehouse/gatehouse.toml")).unwrap(),
        "# edited\n"
    );
    let un = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/uninstall.sh");
    let out = std::process::Command::new("bash")
        .arg(&un)
        .args(["--root", root.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!root.path().join("usr/local/bin/gatehouse").exists());
    assert!(
        root.path().join("etc/gatehouse/gatehouse.toml").exists(),
        "uninstall without --purge removed the config"
    );
    let out = std::process::Command::new("bash")
        .arg(&un)
        .args(["--root", root.path().to_str().unwrap(), "--purge"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!root.path().join("etc/gatehouse").exists());
}
