//! `gatehouse import-nginx` on a corpus of realistic nginx sites: golden outputs, a report entry
//! for every directive, the output passes `check`, the imported site behaves as nginx's
//! semantics say, and, where nginx is installed, a differential run against real nginx.
//!
//! `UPDATE_GOLDEN=1 cargo test --test import_nginx` rewrites the golden files; review the diff.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use gatehouse::nginx::{self, Outcome};
use http::{Request, Response};
use http_body_util::Full;

const FIXTURES: [(&str, &str); 4] = [
    ("monolith", "nginx.conf"),
    ("multi", "nginx.conf"),
    ("clerk", "site.conf"),
    ("regex", "site.conf"),
];
const PK: &str = "pk_live_Y2xlcmsuZXhhbXBsZS5jb20k";

fn fixture(name: &str) -> PathBuf {
    std::fs::canonicalize(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nginx")
            .join(name),
    )
    .unwrap()
}

fn import(dir: &Path, file: &str) -> (String, nginx::Report) {
    nginx::import(&dir.join(file), None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn golden_outputs_and_reports() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    for (name, file) in FIXTURES {
        let dir = fixture(name);
        let (toml, report) = import(&dir, file);
        let toml = toml.replace(&dir.display().to_string(), "<fixture>");
        let report = report
            .to_string()
            .replace(&dir.display().to_string(), "<fixture>");
        for (got, golden) in [(toml, "expected.toml"), (report, "expected-report.txt")] {
            let path = dir.join(golden);
            if update {
                std::fs::write(&path, &got).unwrap();
            } else {
                let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                    panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display())
                });
                assert_eq!(
                    got, want,
                    "{name}/{golden} differs (UPDATE_GOLDEN=1 rewrites it)"
                );
            }
        }
    }
}

#[test]
fn every_imported_config_passes_check() {
    for (name, file) in FIXTURES {
        let dir = fixture(name);
        let (toml, _) = import(&dir, file);
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("gatehouse.toml");
        std::fs::write(&path, &toml).unwrap();
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["check", "-c"])
            .arg(&path)
            .env("CLERK_SECRET_KEY", "sk_live_from_env")
            .env("CLERK_PUBLISHABLE_KEY", PK)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: {}\n{toml}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

#[test]
fn the_command_writes_the_file_and_the_report() {
    let dir = fixture("multi");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("g.toml");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["import-nginx"])
        .arg(dir.join("nginx.conf"))
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(run.status.success());
    let report = String::from_utf8_lossy(&run.stderr);
    assert!(
        report.contains("conf.d/app.conf:16: rewrite ^/legacy$ /new permanent"),
        "{report}"
    );
    assert!(
        report.contains("translated,") && report.contains("left out"),
        "{report}"
    );
    assert!(std::fs::read_to_string(&path).unwrap().contains("[[site]]"));
    // A broken file is an error with a position.
    let bad = out.path().join("bad.conf");
    std::fs::write(&bad, "http {\n  server {\n    listen 80\n  }\n}\n").unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["import-nginx"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("bad.conf:4"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn nothing_is_dropped_silently() {
    for (name, file) in FIXTURES {
        let dir = fixture(name);
        let (_, report) = import(&dir, file);
        let mut ds = nginx::parse::parse_file(&dir.join(file), &dir).unwrap();
        nginx::parse::relativize(&mut ds, &dir);
        let mut all = Vec::new();
        fn walk<'a>(ds: &'a [nginx::parse::Directive], out: &mut Vec<&'a nginx::parse::Directive>) {
            for d in ds {
                out.push(d);
                walk(d.children(), out);
            }
        }
        walk(&ds, &mut all);
        for d in all {
            assert!(
                report
                    .entries
                    .iter()
                    .any(|e| e.at == d.at() && e.directive == d.head()),
                "{name}: {} {} is not in the report",
                d.at(),
                d.head()
            );
        }
    }
}

#[test]
fn the_clerk_secret_is_not_copied_and_the_report_says_where_to_put_it() {
    let dir = fixture("clerk");
    let (toml, report) = import(&dir, "site.conf");
    assert!(!toml.contains("DO_NOT_COPY"));
    assert!(toml.contains("clerk = true"));
    assert!(toml.contains("secret_key = { env = \"CLERK_SECRET_KEY\" }"));
    let e = report
        .entries
        .iter()
        .find(|e| e.directive.starts_with("proxy_set_header Clerk-Secret-Key"))
        .unwrap();
    assert!(
        e.note.contains("NOT copied") && e.note.contains("CLERK_SECRET_KEY"),
        "{}",
        e.note
    );
}

#[test]
fn regex_locations_and_if_blocks_are_reported() {
    let dir = fixture("regex");
    let (_, report) = import(&dir, "site.conf");
    let find = |head: &str| {
        report
            .entries
            .iter()
            .find(|e| e.directive.starts_with(head))
            .unwrap_or_else(|| panic!("{head} not reported"))
    };
    assert_eq!(
        find("location ~* \\.(png|jpg|css)$").outcome,
        Outcome::LeftOut
    );
    assert_eq!(find("location ~ ^/(v1|v2)/").outcome, Outcome::LeftOut);
    assert_eq!(find("location ~ ^/api/").outcome, Outcome::Approximated);
    assert_eq!(
        find("if ($request_method = POST)").outcome,
        Outcome::LeftOut
    );
    assert_eq!(find("if ($maintenance = 1)").outcome, Outcome::LeftOut);
    assert_eq!(find("set $maintenance 0").outcome, Outcome::LeftOut);
}

#[test]
fn the_segment_matching_difference_is_in_the_report() {
    let (_, report) = import(&fixture("multi"), "nginx.conf");
    let e = report
        .entries
        .iter()
        .find(|e| e.directive == "location /admin")
        .unwrap();
    assert!(e.note.contains("/adminx"), "{}", e.note);
}

#[test]
fn an_spa_try_files_becomes_a_fallback_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spa.conf"),
        "server {\n  listen 80;\n  server_name spa.example.com;\n  root /srv/spa;\n  location / {\n    try_files $uri $uri/ /index.html;\n  }\n}\n",
    )
    .unwrap();
    let (toml, report) = import(dir.path(), "spa.conf");
    assert!(toml.contains("fallback = \"/index.html\""), "{toml}");
    let e = report
        .entries
        .iter()
        .find(|e| e.directive.starts_with("try_files"))
        .unwrap();
    assert_eq!(e.outcome, Outcome::Translated, "{}", e.note);
}

/// A backend that answers `<name> <method> <uri> host=<host>`, so answers through nginx and
/// through Gatehouse can be compared.
async fn echo(name: &'static str) -> Backend {
    backend_with(Arc::new(move |req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let host = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let body = format!("{name} {} {} host={host}", req.method(), req.uri());
            Response::builder()
                .header("x-powered-by", "php")
                .body(full(body))
                .unwrap()
        })
    }))
    .await
}

/// The backends of one fixture, by the address the fixture uses.
struct Backends(Vec<(String, Backend)>);

impl Backends {
    async fn new(addrs: &[(&str, &'static str)]) -> Backends {
        let mut v = Vec::new();
        for (addr, name) in addrs {
            v.push((addr.to_string(), echo(name).await));
        }
        Backends(v)
    }

    /// Points every fixture address at its test backend.
    fn apply(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for (addr, b) in &self.0 {
            t = t.replace(addr, &b.addr.to_string());
        }
        t
    }
}

/// Starts Gatehouse on a fixture's import, listening on 127.0.0.1:0.
async fn run_import(dir: &Path, file: &str, backends: &Backends, env: &[(&str, &str)]) -> Gw {
    let (toml, _) = import(dir, file);
    let mut toml = backends.apply(&toml);
    let mut lines = Vec::new();
    for l in toml.lines() {
        if l.starts_with("http = ") {
            lines.push("http = \"127.0.0.1:0\"".to_owned());
        } else if l.starts_with("https = ") {
            lines.push("https = \"127.0.0.1:0\"".to_owned());
        } else if l.starts_with("admin = ") {
            continue;
        } else {
            lines.push(l.to_owned());
        }
    }
    toml = lines.join("\n");
    gateway_env(&toml, env).await
}

async fn https_get(gw: &Gw, host: &str, path: &str) -> Reply {
    let s = tls_connect(
        gw.https(),
        common::pki::capture_config(&[b"http/1.1"]),
        Some(host),
    )
    .await
    .unwrap();
    tls_send(
        s,
        Request::get(path)
            .header("host", host)
            .body(empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn monolith_answers_as_nginx_would() {
    let dir = fixture("monolith");
    let b = Backends::new(&[("127.0.0.1:8000", "django")]).await;
    let gw = run_import(&dir, "nginx.conf", &b, &[]).await;
    // certbot's redirect server.
    let r = get(gw.http(), "shop.example.com", "/cart?id=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://shop.example.com:{}/cart?id=1", gw.https().port()).as_str())
    );
    // Static files by alias.
    let r = https_get(&gw, "shop.example.com", "/static/css/site.css").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body { color: #333; }\n");
    assert!(r.header("content-type").unwrap().starts_with("text/css"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        https_get(&gw, "shop.example.com", "/media/readme.txt")
            .await
            .text(),
        "hello media\n"
    );
    assert_eq!(
        https_get(&gw, "shop.example.com", "/static/missing.css")
            .await
            .status,
        404
    );
    // The app, with the Host nginx sent ($host) and HSTS.
    let r = https_get(&gw, "www.shop.example.com", "/checkout?step=2").await;
    assert_eq!(
        r.text(),
        "django GET /checkout?step=2 host=www.shop.example.com"
    );
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // Fixed answers.
    assert_eq!(
        https_get(&gw, "shop.example.com", "/robots.txt")
            .await
            .text(),
        "User-agent: *\nDisallow: /admin/\n"
    );
    let r = https_get(&gw, "shop.example.com", "/old-blog/post-1?ref=x").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://blog.example.org/old-blog/post-1?ref=x")
    );
    // client_max_body_size 20m.
    let big = send(
        gw.http(),
        req("POST", "shop.example.com", "/upload")
            .header("content-length", (25u64 << 20).to_string())
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(big.status == 301 || big.status == 413, "{}", big.status);
}

#[tokio::test]
async fn multi_domain_answers_as_nginx_would() {
    let dir = fixture("multi");
    let b = Backends::new(&[
        ("127.0.0.1:9001", "api1"),
        ("127.0.0.1:9002", "api2"),
        ("127.0.0.1:9101", "blog"),
        ("127.0.0.1:9201", "app"),
    ])
    .await;
    let gw = run_import(&dir, "nginx.conf", &b, &[]).await;
    let app_addr =
        b.0.iter()
            .find(|(a, _)| a == "127.0.0.1:9201")
            .unwrap()
            .1
            .addr;
    // proxy_set_header Host $proxy_host; proxy_hide_header X-Powered-By.
    let r = get(gw.http(), "app.example.net", "/dashboard").await;
    assert_eq!(r.text(), format!("app GET /dashboard host={app_addr}"));
    assert!(r.header("x-powered-by").is_none());
    // `.example.net` covers the bare domain and every subdomain; default_server catches the rest.
    assert!(
        get(gw.http(), "example.net", "/")
            .await
            .text()
            .starts_with("app ")
    );
    assert!(
        get(gw.http(), "a.b.example.net", "/")
            .await
            .text()
            .starts_with("app ")
    );
    assert!(
        get(gw.http(), "unknown.test", "/")
            .await
            .text()
            .starts_with("app ")
    );
    assert_eq!(
        get(gw.http(), "app.example.net", "/admin").await.status,
        403
    );
    let r = get(gw.http(), "app.example.net", "/legacy?a=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/new?a=1"));
    assert_eq!(
        get(gw.http(), "app.example.net", "/docs/guide.txt")
            .await
            .text(),
        "guide\n"
    );
    assert_eq!(
        get(gw.http(), "app.example.net", "/docs/").await.text(),
        "<h1>docs</h1>\n"
    );
    assert_eq!(
        get(gw.http(), "app.example.net", "/docs/nope").await.status,
        404
    );
    // The TLS site: the upstream block with its URI part, and the fixed answer.
    let r = https_get(&gw, "blog.example.org", "/api/posts?page=2").await;
    assert!(
        r.text().starts_with("api1 GET /v1/posts?page=2")
            || r.text().starts_with("api2 GET /v1/posts?page=2"),
        "{}",
        r.text()
    );
    assert_eq!(
        https_get(&gw, "blog.example.org", "/healthz").await.text(),
        "ok"
    );
    assert_eq!(
        https_get(&gw, "blog.example.org", "/").await.text(),
        "blog GET / host=blog.example.org"
    );
}

#[tokio::test]
async fn clerk_snippet_becomes_a_working_clerk_route() {
    let dir = fixture("clerk");
    let fapi = echo("fapi").await;
    let b = Backends::new(&[("127.0.0.1:3000", "next")]).await;
    let fapi_url = fapi.url();
    let gw = run_import(
        &dir,
        "site.conf",
        &b,
        &[
            ("CLERK_SECRET_KEY", "sk_live_from_env"),
            ("CLERK_PUBLISHABLE_KEY", PK),
            ("CLERK_FAPI_URL", &fapi_url),
        ],
    )
    .await;
    let r = get(
        gw.http(),
        "app.example.com",
        "/__clerk/v1/client?_clerk_js_version=5",
    )
    .await;
    assert_eq!(
        r.text(),
        format!("fapi GET /v1/client?_clerk_js_version=5 host={}", fapi.addr)
    );
    assert!(
        get(gw.http(), "app.example.com", "/sign-in")
            .await
            .text()
            .starts_with("next GET /sign-in host=app.example.com")
    );
}

#[tokio::test]
async fn regex_site_keeps_what_a_prefix_can_say() {
    let dir = fixture("regex");
    let b = Backends::new(&[("127.0.0.1:9301", "api"), ("127.0.0.1:9302", "app")]).await;
    let gw = run_import(&dir, "site.conf", &b, &[]).await;
    assert!(
        get(gw.http(), "regex.example.com", "/api/x")
            .await
            .text()
            .starts_with("api GET /api/x")
    );
    assert!(
        get(gw.http(), "regex.example.com", "/other")
            .await
            .text()
            .starts_with("app GET /other")
    );
}

// === Differential: real nginx against Gatehouse on the import ===

fn nginx_available() -> bool {
    std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Real nginx on a copy of a fixture, with listens moved to free loopback ports.
struct Nginx {
    child: std::process::Child,
    dir: tempfile::TempDir,
    ports: HashMap<u16, u16>,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Real nginx on free ports. A port found free can be taken by another test before nginx binds
/// it; nginx then exits, and whatever took the port would answer in its place (a comparison
/// against the wrong server). So nginx counts as started only once it has written its pid file,
/// which it does after binding every listen socket; if it exits first, it is tried again on
/// other ports.
async fn start_nginx(name: &str, file: &str, backends: &Backends, listen_ports: &[u16]) -> Nginx {
    for _ in 0..5 {
        if let Some(n) = try_start_nginx(name, file, backends, listen_ports).await {
            return n;
        }
    }
    panic!("nginx did not start on free ports in five tries");
}

async fn try_start_nginx(
    name: &str,
    file: &str,
    backends: &Backends,
    listen_ports: &[u16],
) -> Option<Nginx> {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(name), dir.path());
    let mut ports = HashMap::new();
    for p in listen_ports {
        ports.insert(*p, free_port());
    }
    // Rewrite every config file: backends, listen ports, process settings.
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "conf") {
                let mut t = backends.apply(&std::fs::read_to_string(&p).unwrap());
                for (from, to) in &ports {
                    t = t
                        .replace(
                            &format!("listen {from} "),
                            &format!("listen 127.0.0.1:{to} "),
                        )
                        .replace(
                            &format!("listen {from};"),
                            &format!("listen 127.0.0.1:{to};"),
                        );
                }
                let t: String = t
                    .lines()
                    .filter(|l| {
                        !l.trim_start().starts_with("pid ")
                            && !l.trim_start().starts_with("user ")
                            && !l.trim_start().starts_with("access_log /")
                            && !l.trim_start().starts_with("error_log /")
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(&p, t).unwrap();
            }
        }
    }
    let main = if file == "nginx.conf" {
        dir.path().join("nginx.conf")
    } else {
        let wrapper = dir.path().join("main.conf");
        std::fs::write(
            &wrapper,
            format!("events {{}}\nhttp {{\n  include {file};\n}}\n"),
        )
        .unwrap();
        wrapper
    };
    let child = std::process::Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&main)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .args([
            "-g",
            &format!(
                "daemon off; master_process off; pid {}/nginx.pid;",
                dir.path().display()
            ),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut n = Nginx { child, dir, ports };
    let pid_file = n.dir.path().join("nginx.pid");
    let bound = within("nginx to bind its ports or exit", async {
        loop {
            if pid_file.exists() {
                return true;
            }
            if n.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            // Polling: nginx has no readiness signal to wait on.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    if !bound {
        return None;
    }
    for port in n.ports.values() {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        within("nginx to listen", async {
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                // Polling for nginx's socket (it has no readiness signal to wait on).
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    Some(n)
}

/// Location with scheme, host and port removed: nginx makes relative redirects absolute
/// (`absolute_redirect on`) with its own port; what matters is where they point.
fn location_path(l: Option<&str>) -> Option<String> {
    l.map(|l| match l.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map(|i| rest[i..].to_owned())
            .unwrap_or_else(|| "/".into()),
        None => l.to_owned(),
    })
}

async fn compare(
    name: &str,
    n: &Nginx,
    gw: &Gw,
    plain_port: u16,
    tls_port: Option<u16>,
    cases: &[(&str, &str, &str)],
) {
    for (scheme, host, path) in cases {
        let (a, b) = if *scheme == "https" {
            let nport = n.ports[&tls_port.unwrap()];
            let s = tls_connect(
                format!("127.0.0.1:{nport}").parse().unwrap(),
                common::pki::capture_config(&[b"http/1.1"]),
                Some(host),
            )
            .await
            .unwrap();
            let a = tls_send(
                s,
                Request::get(*path)
                    .header("host", *host)
                    .body(empty())
                    .unwrap(),
            )
            .await;
            (a, https_get(gw, host, path).await)
        } else {
            let nport = n.ports[&plain_port];
            (
                get(format!("127.0.0.1:{nport}").parse().unwrap(), host, path).await,
                get(gw.http(), host, path).await,
            )
        };
        let case = format!("{name}: {scheme}://{host}{path}");
        assert_eq!(
            a.status,
            b.status,
            "{case}: nginx {} vs gatehouse {}\nnginx: {}\ngatehouse: {}",
            a.status,
            b.status,
            a.text(),
            b.text()
        );
        if a.status.is_redirection() {
            assert_eq!(
                location_path(a.header("location")),
                location_path(b.header("location")),
                "{case}"
            );
        }
        if a.status.is_success() {
            assert_eq!(a.text(), b.text(), "{case}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_against_real_nginx() {
    if !nginx_available() {
        eprintln!("skipped: nginx is not installed (.ci/run installs it)");
        return;
    }
    // monolith
    let b = Backends::new(&[("127.0.0.1:8000", "django")]).await;
    let n = start_nginx("monolith", "nginx.conf", &b, &[80, 443]).await;
    let gw = run_import(n.dir.path(), "nginx.conf", &b, &[]).await;
    compare(
        "monolith",
        &n,
        &gw,
        80,
        Some(443),
        &[
            ("http", "shop.example.com", "/cart?id=1"),
            ("http", "www.shop.example.com", "/"),
            ("https", "shop.example.com", "/static/css/site.css"),
            ("https", "shop.example.com", "/media/readme.txt"),
            ("https", "shop.example.com", "/static/missing.css"),
            ("https", "shop.example.com", "/checkout?step=2"),
            ("https", "www.shop.example.com", "/"),
            ("https", "shop.example.com", "/robots.txt"),
            ("https", "shop.example.com", "/old-blog/post-1?ref=x"),
        ],
    )
    .await;
    drop(n);
    // multi-domain with includes and an upstream block
    let b = Backends::new(&[
        ("127.0.0.1:9001", "api1"),
        ("127.0.0.1:9002", "api1"),
        ("127.0.0.1:9101", "blog"),
        ("127.0.0.1:9201", "app"),
    ])
    .await;
    let n = start_nginx("multi", "nginx.conf", &b, &[80, 443]).await;
    let gw = run_import(n.dir.path(), "nginx.conf", &b, &[]).await;
    compare(
        "multi",
        &n,
        &gw,
        80,
        Some(443),
        &[
            ("http", "app.example.net", "/dashboard"),
            ("http", "example.net", "/x"),
            ("http", "deep.sub.example.net", "/y"),
            ("http", "app.example.net", "/admin"),
            ("http", "app.example.net", "/legacy?a=1"),
            ("http", "app.example.net", "/docs/guide.txt"),
            ("http", "app.example.net", "/docs/"),
            ("http", "app.example.net", "/docs/nope"),
            ("https", "blog.example.org", "/api/posts?page=2"),
            ("https", "blog.example.org", "/healthz"),
            ("https", "blog.example.org", "/"),
        ],
    )
    .await;
    drop(n);
    // regex: the requests the import says it keeps
    let b = Backends::new(&[("127.0.0.1:9301", "api"), ("127.0.0.1:9302", "app")]).await;
    let n = start_nginx("regex", "site.conf", &b, &[8080]).await;
    let gw = run_import(n.dir.path(), "site.conf", &b, &[]).await;
    compare(
        "regex",
        &n,
        &gw,
        8080,
        None,
        &[
            ("http", "regex.example.com", "/api/users"),
            ("http", "regex.example.com", "/page"),
        ],
    )
    .await;
}
