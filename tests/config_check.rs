//! `gatehouse check` and config loading: every broken example gets `file:line:column`, the key,
//! and what to do; valid files load exactly as written.

use std::path::Path;
use std::process::Command;

fn check(toml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, toml).unwrap();
    check_path(&path)
}

fn check_path(path: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "-c"])
        .arg(path)
        .env_remove("CLERK_SECRET_KEY")
        .env_remove("CLERK_PUBLISHABLE_KEY")
        .env_remove("CLERK_FAPI_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_error(toml: &str, position: &str, needles: &[&str]) {
    let (ok, out, err) = check(toml);
    assert!(!ok, "check accepted it:\n{out}");
    assert!(
        err.contains(&format!("g.toml:{position}: error:")),
        "no position {position} in:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
    assert!(err.contains("help:"), "no help in:\n{err}");
}

const ISSUE_EXAMPLE: &str = r#"[server]
http = ["127.0.0.1:8080"]            # plain-HTTP listeners: a string or a list
https = ["127.0.0.1:8443"]           # TLS listeners (TLS issue)
admin = "127.0.0.1:9901"             # health/metrics/reload endpoint; omit to disable
trusted_proxies = ["127.0.0.1/32"]   # peers whose X-Forwarded-* are believed; default: none
connect_timeout = "5s"               # these five can also be set per route
response_timeout = "60s"             # time to the upstream's response headers
idle_timeout = "60s"
max_request_header_bytes = "32KiB"
max_body = "100MiB"
header_read_timeout = "10s"
shutdown_grace = "30s"

[[site]]
hosts = ["app.example.com", "www.app.example.com"]

  [[site.route]]
  prefix = "/api"
  upstream = "http://127.0.0.1:3000"
  strip_prefix = true

  [[site.route]]
  prefix = "/"
  upstream = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]

[[site]]
hosts = ["*.preview.example.com"]
  [[site.route]]
  prefix = "/"
  upstream = "http://127.0.0.1:3000"

[[site]]
default = true                        # serves any Host that no other site claims
hosts = ["localhost"]
  [[site.route]]
  exact = "/healthz"
  respond = { status = 200, body = "ok\n" }
  [[site.route]]
  prefix = "/old"
  redirect = { to = "https://app.example.com$request_uri", status = 301 }
  [[site.route]]
  prefix = "/"
  respond = { status = 200, body = "Gatehouse is running.\n" }
"#;

#[test]
fn the_issue_example_loads_exactly_as_written() {
    let (ok, out, err) = check(ISSUE_EXAMPLE);
    assert!(ok, "{err}");
    assert!(out.contains("3 sites, 6 routes"), "{out}");
    assert!(
        out.contains("upstream http://127.0.0.1:8081, http://127.0.0.1:8082"),
        "{out}"
    );
}

#[test]
fn the_shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatehouse.toml");
    let (ok, _out, err) = check_path(&path);
    assert!(ok, "{err}");
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
                .args(["check", "-c"])
                .arg(&path)
                .env("CLERK_SECRET_KEY", "sk_live_example")
                .env("CLERK_PUBLISHABLE_KEY", "pk_live_Y2xlcmsuZXhhbXBsZS5jb20k")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_summary_lists_sites_hosts_routes_and_upstreams() {
    let (_, out, _) = check(ISSUE_EXAMPLE);
    assert!(
        out.contains("site app.example.com: app.example.com, www.app.example.com"),
        "{out}"
    );
    assert!(out.contains("/api"), "{out}");
    assert!(out.contains("(strip prefix)"), "{out}");
    assert!(out.contains("= /healthz"), "{out}");
    assert!(out.contains("[default"), "{out}");
}

#[test]
fn an_empty_file_is_an_error() {
    let (ok, _, err) = check("   \n# nothing\n");
    assert!(!ok);
    assert!(
        err.contains("g.toml") && err.contains("no [[site]]") || err.contains("empty"),
        "{err}"
    );
}

#[test]
fn a_file_with_no_sites_is_an_error() {
    let (ok, _, err) = check("[server]\nhttp = \"127.0.0.1:8080\"\n");
    assert!(!ok);
    assert!(err.contains("defines no [[site]]"), "{err}");
    assert!(err.contains("help:"), "{err}");
}

#[test]
fn a_file_cut_mid_write_is_an_error_with_a_position() {
    let cut = &ISSUE_EXAMPLE[..ISSUE_EXAMPLE
        .find("upstream = [\"http://127.0.0.1:8081\"")
        .unwrap()
        + 20];
    let (ok, _, err) = check(cut);
    assert!(!ok);
    assert!(err.contains("g.toml:24:"), "{err}");
}

#[test]
fn a_misspelt_key_is_named_with_its_position() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n  [[site.route]]\n  prefix = \"/\"\n  upsteam = \"http://127.0.0.1:3000\"\n",
        "7:3",
        &["unknown field `upsteam`", "upstream"],
    );
}

#[test]
fn a_toml_syntax_error_has_a_position() {
    assert_error("[server]\nhttp = 127.0.0.1:8080\n", "2:13", &["invalid"]);
}

#[test]
fn two_sites_claiming_one_host() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n[[site]]\nhosts = [\"b.test\", \"A.test\"]\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n",
        "9:20",
        &["site[1].hosts", "`a.test` is already served by site[0]"],
    );
}

#[test]
fn a_route_with_no_target() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\n",
        "5:1",
        &["site[0].route[0]", "has no target"],
    );
}

#[test]
fn a_route_with_two_targets() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\nrespond = {}\n",
        "5:1",
        &["several targets (upstream, respond)"],
    );
}

#[test]
fn a_bad_upstream_url() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\nupstream = [\"http://127.0.0.1:1\", \"ftp://x\"]\n",
        "7:35",
        &["site[0].route[0].upstream", "scheme `ftp` is not supported"],
    );
}

#[test]
fn an_upstream_without_scheme_gets_the_fix() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\nupstream = \"127.0.0.1:3000\"\n",
        "7:12",
        &["http://127.0.0.1:3000"],
    );
}

#[test]
fn an_empty_host_list() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = []\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n",
        "4:9",
        &["site[0].hosts", "is empty"],
    );
}

#[test]
fn bad_durations_sizes_and_addresses() {
    let (ok, _, err) = check(
        "[server]\nhttp = \"8080\"\nconnect_timeout = \"5\"\nmax_body = \"lots\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n",
    );
    assert!(!ok);
    for n in [
        "g.toml:2:8: error: server.http",
        "0.0.0.0:8080",
        "g.toml:3:19: error: server.connect_timeout",
        "\"5s\"",
        "g.toml:4:12: error: server.max_body",
        "g.toml:5:20: error: server.trusted_proxies",
    ] {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
}

#[test]
fn a_zero_timeout_is_refused_on_the_server_and_on_a_route() {
    let (ok, _, err) = check(
        "[server]\nhttp = \"127.0.0.1:1\"\nbody_timeout = \"0s\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:2\"\nresponse_timeout = \"0ms\"\n",
    );
    assert!(!ok);
    for n in [
        "g.toml:3:16: error: server.body_timeout: must be greater than zero",
        "g.toml:9:20: error: ",
        "response_timeout: must be greater than zero",
        "help: a timeout of 0 would fail every request",
    ] {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
}

#[test]
fn all_errors_are_reported_in_one_pass() {
    let (ok, _, err) = check(
        r#"[server]
http = "127.0.0.1:1"
[[site]]
hosts = []
  [[site.route]]
  prefix = "/"
[[site]]
hosts = ["b.test"]
  [[site.route]]
  prefix = "/"
  upstream = "gopher://x"
  [[site.route]]
  prefix = "api"
  respond = {}
  [[site.route]]
  prefix = "/x"
  redirect = { to = "https://x$request_url" }
"#,
    );
    assert!(!ok);
    for n in [
        "g.toml:4:9",
        "g.toml:5:3",
        "g.toml:11:14",
        "g.toml:13:12",
        "g.toml:17:21",
        "5 error(s)",
    ] {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
}

#[test]
fn duplicate_prefixes_in_a_site() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/api\"\nrespond = {}\n[[site.route]]\nprefix = \"/api/\"\nrespond = {}\n",
        "8:1",
        &["`/api` is already matched by site[0].route[0]"],
    );
}

#[test]
fn two_default_sites() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\ndefault = true\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n[[site]]\ndefault = true\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n",
        "8:1",
        &["site[0] is already the default site"],
    );
}

#[test]
fn nginx_style_hosts_get_a_translation() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\".example.com\"]\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n",
        "4:10",
        &["nginx syntax", "\"*.example.com\""],
    );
}

#[test]
fn a_path_not_in_normal_form() {
    assert_error(
        "[server]\nhttp = \"127.0.0.1:1\"\n[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/a/../b\"\nrespond = {}\n",
        "6:10",
        &["write it as \"/b\""],
    );
}

#[test]
fn no_listener_at_all() {
    let (ok, _, err) =
        check("[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\nprefix = \"/\"\nrespond = {}\n");
    assert!(!ok);
    assert!(err.contains("no listener"), "{err}");
}

#[test]
fn a_missing_file_says_how_to_point_at_the_right_one() {
    let (ok, _, err) = check_path(Path::new("/nonexistent/gatehouse.toml"));
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/gatehouse.toml: cannot read the config file"),
        "{err}"
    );
    assert!(err.contains("GATEHOUSE_CONFIG"), "{err}");
}

#[test]
fn run_refuses_to_start_on_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, "[server]\nhttp = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not started"));
}

#[test]
fn version_and_help() {
    let v = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("gatehouse "));
    let h = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--help")
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&h.stdout);
    assert!(h.contains("run") && h.contains("check"), "{h}");
}
