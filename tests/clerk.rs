//! The Clerk Frontend API proxy, tested against a fake FAPI that records what it receives.
//! Tests are named after the requirements of section 10 of `clerk-fapi-proxy.md` (reqNN).

mod common;

use std::io::Read as _;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;

const PK: &str = "pk_live_Y2xlcmsuZXhhbXBsZS5jb20k";
const SK: &str = "sk_live_TESTSECRET_9f8e7d";

/// A fake FAPI: records every request; answers by path.
async fn fake_fapi() -> Backend {
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let mut b = backend_with(Arc::new(move |req: Request<hyper::body::Incoming>| {
        let seen = seen2.clone();
        Box::pin(async move {
            let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let s = record(&seen, req).await;
            let path = s.uri.split('?').next().unwrap_or("").to_owned();
            let json = |status: u16, body: String| Response::builder().status(status).header("content-type", "application/json").body(full(body)).unwrap();
            match path.as_str() {
                "/v1/proxy-health" => {
                    let ok = s.header("clerk-proxy-url").is_some() && s.header("clerk-secret-key") == Some(SK) && s.header("x-forwarded-for").is_some();
                    if ok {
                        json(200, format!("{{\"status\":\"healthy\",\"x_forwarded_for\":\"{}\"}}", s.header("x-forwarded-for").unwrap()))
                    } else {
                        json(400, "{\"errors\":[{\"code\":\"host_invalid\",\"message\":\"unable to attribute this request\"}]}".into())
                    }
                }
                "/v1/client/handshake" => {
                    let redirect = s.uri.split("redirect_url=").nth(1).and_then(|r| r.split('&').next()).unwrap_or("https://app.test/");
                    let redirect = redirect.replace("%3A", ":").replace("%2F", "/");
                    Response::builder()
                        .status(307)
                        .header("location", format!("{redirect}?__clerk_handshake=abc"))
                        .header("set-cookie", "__client_uat=1700000000; Path=/; Secure; SameSite=Lax")
                        .header("set-cookie", "__session=eyJhbGciOi; Path=/; Secure; HttpOnly")
                        .header("set-cookie", "__clerk_db_jwt=xyz; Path=/; Secure")
                        .body(full(""))
                        .unwrap()
                }
                "/v1/oauth/to-fapi" => Response::builder().status(302).header("location", format!("http://{host}/v1/oauth/callback?code=123")).body(full("")).unwrap(),
                "/v1/oauth/relative" => Response::builder().status(302).header("location", "/v1/client?x=1").body(full("")).unwrap(),
                "/v1/oauth/google" => Response::builder().status(302).header("location", "https://accounts.google.com/o/oauth2/auth?client_id=1").body(full("")).unwrap(),
                "/v1/status/401" => json(401, "{\"errors\":[{\"code\":\"authentication_invalid\"}]}".into()),
                "/v1/status/503" => json(503, "{\"errors\":[{\"code\":\"service_unavailable\"}]}".into()),
                "/v1/gzip" => {
                    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    std::io::Write::write_all(&mut enc, b"console.log('gzipped');").unwrap();
                    let gz = enc.finish().unwrap();
                    Response::builder().header("content-encoding", "gzip").header("content-type", "application/javascript").header("content-length", gz.len()).body(full(gz)).unwrap()
                }
                "/v1/hop" => Response::builder()
                    .header("connection", "X-Internal")
                    .header("x-internal", "1")
                    .header("keep-alive", "timeout=5")
                    .header("x-clerk-trace-id", "t1")
                    .body(full("{}"))
                    .unwrap(),
                "/v1/hang" => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                p if p.starts_with("/npm/") => Response::builder().header("content-type", "application/javascript").body(full(script())).unwrap(),
                _ => json(200, format!("{{\"method\":\"{}\",\"path\":\"{}\",\"body_len\":{}}}", s.method, s.uri, s.body.len())),
            }
        })
    }))
    .await;
    b.seen = seen;
    b
}

/// A 2 MiB script, deterministic.
fn script() -> Vec<u8> {
    (0..2 * 1024 * 1024)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789;\n"[i % 38])
        .collect()
}

fn config(fapi: &Backend, app: &Backend, extra_server: &str, extra_route: &str) -> String {
    format!(
        r#"
[server]
http = "127.0.0.1:0"
{extra_server}

[clerk]
publishable_key = {{ env = "CLERK_PUBLISHABLE_KEY" }}
secret_key = {{ env = "CLERK_SECRET_KEY" }}
fapi_url = "http://localhost:{port}/"

[[site]]
hosts = ["app.test", "other.test"]
  [[site.route]]
  prefix = "/__clerk"
  clerk = true
  {extra_route}
  [[site.route]]
  prefix = "/"
  upstream = "{app}"
"#,
        port = fapi.addr.port(),
        app = app.url()
    )
}

struct Env {
    gw: Gw,
    fapi: Backend,
    app: Backend,
}

async fn setup(extra_server: &str, extra_route: &str) -> Env {
    let fapi = fake_fapi().await;
    let app = backend("app").await;
    let gw = gateway_env(
        &config(&fapi, &app, extra_server, extra_route),
        &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
    )
    .await;
    Env { gw, fapi, app }
}

async fn trusted() -> Env {
    setup("trusted_proxies = [\"127.0.0.1/32\"]", "").await
}

async fn untrusted() -> Env {
    setup("", "").await
}

/// The Clerk route on a TLS listener: `app.test` with a certificate from `ca`.
struct TlsEnv {
    gw: Gw,
    fapi: Backend,
    app: Backend,
    ca: common::pki::TestCa,
}

async fn tls_env() -> TlsEnv {
    let ca = common::pki::TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "app", &["app.test"]);
    let fapi = fake_fapi().await;
    let app = backend("app").await;
    let toml = config(&fapi, &app, "https = \"127.0.0.1:0\"", "").replace(
        "hosts = [\"app.test\", \"other.test\"]",
        "hosts = [\"app.test\"]\ntls = { cert = \"app.crt\", key = \"app.key\" }",
    );
    let gw = gateway_in(
        dir,
        &toml,
        &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
    )
    .await;
    TlsEnv { gw, fapi, app, ca }
}

impl TlsEnv {
    /// A TLS connection to `app.test` offering one ALPN protocol.
    async fn connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        tls_connect(
            self.gw.https(),
            self.ca.client_config(&[alpn]),
            Some("app.test"),
        )
        .await
        .unwrap()
    }
}

impl Env {
    async fn get(&self, path: &str) -> Reply {
        get(self.gw.http(), "app.test", path).await
    }
    async fn send(&self, r: http::request::Builder, body: &'static str) -> Reply {
        send(
            self.gw.http(),
            r.body(Full::new(Bytes::from(body))).unwrap(),
        )
        .await
    }
}

#[tokio::test]
async fn req01_one_upstream_request_per_client_request() {
    let e = untrusted().await;
    let r = e.get("/__clerk/v1/client").await;
    assert_eq!(r.status, 200);
    assert_eq!(e.fapi.count(), 1);
    assert_eq!(e.fapi.last().uri, "/v1/client");
    assert_eq!(e.app.count(), 0);
}

#[tokio::test]
async fn req02_the_bare_prefix_forwards_root() {
    let e = untrusted().await;
    e.get("/__clerk").await;
    assert_eq!(e.fapi.last().uri, "/");
    e.get("/__clerk/").await;
    assert_eq!(e.fapi.last().uri, "/");
}

#[tokio::test]
async fn req03_paths_outside_the_prefix_go_to_the_next_route() {
    let e = untrusted().await;
    assert_eq!(e.get("/__clerk-admin/v1/client").await.text(), "app");
    assert_eq!(e.get("/api/users").await.text(), "app");
    assert_eq!(e.fapi.count(), 0);
}

#[tokio::test]
async fn req04_a_trailing_slash_on_the_prefix_is_ignored_and_the_default_not_intercepted() {
    let fapi = fake_fapi().await;
    let app = backend("app").await;
    let gw = gateway_env(
        &config(&fapi, &app, "", "")
            .replace("prefix = \"/__clerk\"", "prefix = \"/custom-clerk/\""),
        &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
    )
    .await;
    get(gw.http(), "app.test", "/custom-clerk/v1/client").await;
    assert_eq!(fapi.last().uri, "/v1/client");
    assert_eq!(
        fapi.last().header("clerk-proxy-url"),
        Some("http://app.test/custom-clerk")
    );
    assert_eq!(
        get(gw.http(), "app.test", "/__clerk/v1/client")
            .await
            .text(),
        "app"
    );
    assert_eq!(fapi.count(), 1);
}

#[tokio::test]
async fn req05_a_root_or_empty_prefix_is_a_config_error() {
    let fapi = fake_fapi().await;
    let app = backend("app").await;
    for prefix in ["/", ""] {
        let text = config(&fapi, &app, "", "")
            .replace("prefix = \"/__clerk\"", &format!("prefix = \"{prefix}\""));
        let cfg = gatehouse::config::load_bytes(
            std::path::Path::new("/etc/g.toml"),
            text.as_bytes(),
            &env_of(&[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)]),
        );
        let err = cfg.unwrap_err().to_string();
        assert!(
            err.contains("clerk route") || err.contains("does not start with `/`"),
            "{prefix:?}: {err}"
        );
    }
}

#[tokio::test]
async fn req06_a_double_slash_after_the_prefix_stays_on_the_fapi_host() {
    let e = untrusted().await;
    e.get("/__clerk//evil.com/steal").await;
    let s = e.fapi.last();
    assert_eq!(s.uri, "//evil.com/steal");
    assert_eq!(
        s.header("host"),
        Some(format!("localhost:{}", e.fapi.addr.port()).as_str())
    );
}

#[tokio::test]
async fn req07_the_query_is_forwarded_byte_for_byte() {
    let e = untrusted().await;
    e.get("/__clerk/v1/client?_clerk_js_version=5.0.0&_method=PATCH&a=%2F%20b&x")
        .await;
    assert_eq!(
        e.fapi.last().uri,
        "/v1/client?_clerk_js_version=5.0.0&_method=PATCH&a=%2F%20b&x"
    );
}

#[tokio::test]
async fn req08_trailing_slashes_and_encodings_are_forwarded_unchanged() {
    let e = untrusted().await;
    e.get("/__clerk/v1/client/").await;
    assert_eq!(e.fapi.last().uri, "/v1/client/");
    e.get("/__clerk/v1/a%2Fb/%41").await;
    assert_eq!(e.fapi.last().uri, "/v1/a%2Fb/%41");
}

fn check_output(toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(["check", "-c"])
        .arg(&path)
        .env_remove("CLERK_SECRET_KEY")
        .env_remove("CLERK_PUBLISHABLE_KEY")
        .env_remove("CLERK_FAPI_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn clerk_only(route: &str, clerk_table: &str) -> String {
    format!(
        "[server]\nhttp = \"127.0.0.1:0\"\n{clerk_table}\n[[site]]\nhosts = [\"app.test\"]\n  [[site.route]]\n  prefix = \"/__clerk\"\n  clerk = {route}\n"
    )
}

fn pk_for(host: &str) -> String {
    use base64::Engine;
    format!(
        "pk_live_{}",
        base64::engine::general_purpose::STANDARD.encode(format!("{host}$"))
    )
}

#[test]
fn req09_production_and_invalid_keys_target_frontend_api_clerk_dev() {
    for pk in [
        PK.to_string(),
        pk_for("happy-cat-1.clerk.accounts.dev"),
        "pk_live_garbage".into(),
    ] {
        let (ok, out) = check_output(
            &clerk_only("true", ""),
            &[("CLERK_PUBLISHABLE_KEY", &pk), ("CLERK_SECRET_KEY", SK)],
        );
        assert!(ok, "{out}");
        assert!(
            out.contains("clerk -> https://frontend-api.clerk.dev"),
            "{pk}: {out}"
        );
    }
}

#[test]
fn req10_staging_and_local_keys_choose_their_fapi() {
    for (host, want) in [
        (
            "clerk.accountsstage.dev",
            "https://frontend-api.clerkstage.dev",
        ),
        ("myapp.lclclerk.com", "https://frontend-api.lclclerk.com"),
        (
            "clerk.example.lclclerk.com",
            "https://frontend-api.clerk.dev",
        ),
    ] {
        let (ok, out) = check_output(
            &clerk_only("true", ""),
            &[
                ("CLERK_PUBLISHABLE_KEY", &pk_for(host)),
                ("CLERK_SECRET_KEY", SK),
            ],
        );
        assert!(ok, "{out}");
        assert!(out.contains(&format!("clerk -> {want}")), "{host}: {out}");
    }
}

#[test]
fn req11_the_fapi_url_option_beats_the_env_which_beats_the_key() {
    let env = [
        ("CLERK_PUBLISHABLE_KEY", PK),
        ("CLERK_SECRET_KEY", SK),
        ("CLERK_FAPI_URL", "https://frontend-api.clerkstage.dev"),
    ];
    let (_, out) = check_output(
        &clerk_only("{ fapi_url = \"http://localhost:8001/\" }", ""),
        &env,
    );
    assert!(out.contains("clerk -> http://localhost:8001"), "{out}");
    let (_, out) = check_output(&clerk_only("true", ""), &env);
    assert!(
        out.contains("clerk -> https://frontend-api.clerkstage.dev"),
        "{out}"
    );
}

#[test]
fn req12_an_invalid_fapi_url_is_a_config_error_not_a_500() {
    for (url, msg) in [
        ("ftp://x.example", "FAPI URL must use http or https"),
        (
            "https://u:p@x.example",
            "must not include credentials, a query string, or a hash",
        ),
        (
            "https://x.example/?q=1",
            "must not include credentials, a query string, or a hash",
        ),
        (
            "https://x.example/#f",
            "must not include credentials, a query string, or a hash",
        ),
        ("not-a-url", "Invalid URL"),
    ] {
        let (ok, out) = check_output(
            &clerk_only(&format!("{{ fapi_url = \"{url}\" }}"), ""),
            &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
        );
        assert!(!ok, "{url} accepted");
        assert!(
            out.contains(msg) && out.contains("route[0].clerk.fapi_url"),
            "{url}: {out}"
        );
    }
    let (ok, out) = check_output(
        &clerk_only("true", ""),
        &[
            ("CLERK_PUBLISHABLE_KEY", PK),
            ("CLERK_SECRET_KEY", SK),
            ("CLERK_FAPI_URL", "not-a-url"),
        ],
    );
    assert!(!ok && out.contains("Invalid URL"), "{out}");
}

#[tokio::test]
async fn req13_a_fapi_url_with_a_port_sets_host_with_the_port() {
    let e = untrusted().await;
    e.get("/__clerk/v1/client").await;
    let s = e.fapi.last();
    assert_eq!(
        s.header("host"),
        Some(format!("localhost:{}", e.fapi.addr.port()).as_str())
    );
}

#[test]
fn req14_missing_keys_are_config_errors_naming_the_route_and_key() {
    let (ok, out) = check_output(&clerk_only("true", ""), &[("CLERK_SECRET_KEY", SK)]);
    assert!(!ok);
    assert!(
        out.contains("site[0].route[0].clerk.publishable_key")
            && out.contains("CLERK_PUBLISHABLE_KEY is not set"),
        "{out}"
    );
    let (ok, out) = check_output(&clerk_only("true", ""), &[("CLERK_PUBLISHABLE_KEY", PK)]);
    assert!(!ok);
    assert!(
        out.contains("site[0].route[0].clerk.secret_key")
            && out.contains("CLERK_SECRET_KEY is not set"),
        "{out}"
    );
    let (ok, out) = check_output(
        &clerk_only("{ secret_key = { file = \"missing-secret\" } }", ""),
        &[("CLERK_PUBLISHABLE_KEY", PK)],
    );
    assert!(
        !ok && out.contains("missing-secret") && out.contains("cannot read"),
        "{out}"
    );
    assert!(!out.contains(SK));
}

#[test]
fn per_route_overrides_and_secret_files_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("staging-secret"), format!("{SK}\n")).unwrap();
    let toml = clerk_only(
        &format!("{{ secret_key = {{ file = \"staging-secret\" }}, publishable_key = \"{PK}\" }}"),
        "",
    );
    let path = dir.path().join("g.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("CLERK_SECRET_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SK));
}

#[test]
fn a_literal_secret_loads_with_a_warning_that_never_shows_it() {
    let (ok, out) = check_output(
        &clerk_only(
            &format!("{{ secret_key = \"{SK}\", publishable_key = \"{PK}\" }}"),
            "",
        ),
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("the secret key is written into the config file"),
        "{out}"
    );
    assert!(!out.contains(SK), "{out}");
}

#[tokio::test]
async fn req15_the_secret_key_is_set_over_any_client_value() {
    let e = untrusted().await;
    e.send(
        req("GET", "app.test", "/__clerk/v1/client").header("clerk-secret-key", "sk_live_forged"),
        "",
    )
    .await;
    let v: Vec<_> = e
        .fapi
        .last()
        .headers
        .get_all("clerk-secret-key")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(v, [SK]);
}

#[tokio::test]
async fn req16_proxy_url_is_the_request_origin_plus_prefix_over_any_client_value() {
    let e = untrusted().await;
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("clerk-proxy-url", "https://evil.test/__clerk"),
        "",
    )
    .await;
    assert_eq!(
        e.fapi.last().header("clerk-proxy-url"),
        Some("http://app.test/__clerk")
    );
    get(e.gw.http(), "other.test:8080", "/__clerk/v1/client").await;
    assert_eq!(
        e.fapi.last().header("clerk-proxy-url"),
        Some("http://other.test:8080/__clerk")
    );
}

#[tokio::test]
async fn req16_on_tls_the_proxy_url_is_https() {
    let e = tls_env().await;
    let r = tls_send(
        e.connect(b"h2").await,
        Request::get("https://app.test/__clerk/v1/client")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let s = e.fapi.last();
    assert_eq!(
        s.header("clerk-proxy-url"),
        Some("https://app.test/__clerk")
    );
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    assert_eq!(s.header("x-forwarded-host"), Some("app.test"));
    assert_eq!(s.version, http::Version::HTTP_11);
}

#[tokio::test]
async fn req17_forwarded_proto_and_host_from_a_trusted_proxy_form_the_proxy_url() {
    let e = trusted().await;
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("x-forwarded-proto", "https, http")
            .header("x-forwarded-host", "myapp.example.com, lb.internal"),
        "",
    )
    .await;
    assert_eq!(
        e.fapi.last().header("clerk-proxy-url"),
        Some("https://myapp.example.com/__clerk")
    );
}

#[tokio::test]
async fn req17_forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let e = untrusted().await;
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example"),
        "",
    )
    .await;
    let s = e.fapi.last();
    assert_eq!(s.header("clerk-proxy-url"), Some("http://app.test/__clerk"));
    assert_eq!(s.header("x-forwarded-host"), Some("app.test"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn public_url_fixes_the_proxy_url_outright() {
    let fapi = fake_fapi().await;
    let app = backend("app").await;
    let toml = config(&fapi, &app, "trusted_proxies = [\"127.0.0.1/32\"]", "").replace(
        "clerk = true",
        &format!("clerk = {{ public_url = \"https://cdn.example.com/__clerk/\", fapi_url = \"http://localhost:{}\" }}", fapi.addr.port()),
    );
    let gw = gateway_env(
        &toml,
        &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
    )
    .await;
    let r = send(
        gw.http(),
        req("GET", "app.test", "/__clerk/v1/oauth/to-fapi")
            .header("x-forwarded-host", "other.example")
            .header("x-forwarded-proto", "http")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        fapi.last().header("clerk-proxy-url"),
        Some("https://cdn.example.com/__clerk")
    );
    assert_eq!(
        r.header("location"),
        Some("https://cdn.example.com/__clerk/v1/oauth/callback?code=123")
    );
}

#[tokio::test]
async fn req18_host_is_the_fapi_host_and_accept_encoding_identity() {
    let e = untrusted().await;
    e.send(
        req("GET", "app.test", "/__clerk/v1/client").header("accept-encoding", "gzip, deflate, br"),
        "",
    )
    .await;
    let s = e.fapi.last();
    assert_eq!(
        s.header("host"),
        Some(format!("localhost:{}", e.fapi.addr.port()).as_str())
    );
    assert_eq!(s.header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn req19_forwarded_host_and_proto_are_added_when_absent_and_kept_from_trusted_proxies() {
    let e = trusted().await;
    e.get("/__clerk/v1/client").await;
    assert_eq!(e.fapi.last().header("x-forwarded-host"), Some("app.test"));
    assert_eq!(e.fapi.last().header("x-forwarded-proto"), Some("http"));
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("x-forwarded-host", "myapp.example.com")
            .header("x-forwarded-proto", "https"),
        "",
    )
    .await;
    assert_eq!(
        e.fapi.last().header("x-forwarded-host"),
        Some("myapp.example.com")
    );
    assert_eq!(e.fapi.last().header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn req20_client_ip_from_cf_connecting_ip_then_x_real_ip_then_first_xff() {
    let e = trusted().await;
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("cf-connecting-ip", "10.0.0.1")
            .header("x-forwarded-for", "192.168.1.1"),
        "",
    )
    .await;
    assert_eq!(e.fapi.last().header("x-forwarded-for"), Some("10.0.0.1"));
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("x-real-ip", "10.0.0.2")
            .header("x-forwarded-for", "192.168.1.1"),
        "",
    )
    .await;
    assert_eq!(e.fapi.last().header("x-forwarded-for"), Some("10.0.0.2"));
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("x-forwarded-for", "192.168.1.1, 10.9.9.9"),
        "",
    )
    .await;
    assert_eq!(e.fapi.last().header("x-forwarded-for"), Some("192.168.1.1"));
}

#[tokio::test]
async fn req21_the_socket_peer_is_the_client_ip_otherwise() {
    let e = trusted().await;
    e.get("/__clerk/v1/client").await;
    assert_eq!(e.fapi.last().header("x-forwarded-for"), Some("127.0.0.1"));
    // An untrusted peer cannot choose the IP FAPI sees.
    let e = untrusted().await;
    e.send(
        req("GET", "app.test", "/__clerk/v1/client")
            .header("cf-connecting-ip", "10.0.0.1")
            .header("x-forwarded-for", "192.168.1.1"),
        "",
    )
    .await;
    let s = e.fapi.last();
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(s.header("cf-connecting-ip").is_none());
}

#[tokio::test]
async fn req22_hop_by_hop_request_headers_are_not_forwarded() {
    let e = untrusted().await;
    e.send(
        req("POST", "app.test", "/__clerk/v1/client")
            .header("connection", "keep-alive, X-Custom-Hop")
            .header("x-custom-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic eA==")
            .header("te", "gzip")
            .header("user-agent", "clerk-js"),
        "x",
    )
    .await;
    let s = e.fapi.last();
    for h in [
        "connection",
        "x-custom-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(s.header(h).is_none(), "{h} forwarded");
    }
    assert_eq!(s.header("user-agent"), Some("clerk-js"));
}

#[tokio::test]
async fn req23_other_headers_are_forwarded_unchanged() {
    let e = untrusted().await;
    e.send(
        req("POST", "app.test", "/__clerk/v1/client")
            .header("cookie", "__client=abc; __client_uat=1")
            .header("authorization", "Bearer t")
            .header("origin", "https://app.test")
            .header("user-agent", "Mozilla/5.0")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x_with_underscore", "kept"),
        "a=1",
    )
    .await;
    let s = e.fapi.last();
    assert_eq!(s.header("cookie"), Some("__client=abc; __client_uat=1"));
    assert_eq!(s.header("authorization"), Some("Bearer t"));
    assert_eq!(s.header("origin"), Some("https://app.test"));
    assert_eq!(s.header("user-agent"), Some("Mozilla/5.0"));
    assert_eq!(
        s.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(s.header("x_with_underscore"), Some("kept"));
}

#[tokio::test]
async fn req24_bodies_are_streamed_with_the_same_method() {
    let e = untrusted().await;
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let r = e
            .send(
                req(method, "app.test", "/__clerk/v1/sign_ups")
                    .header("content-type", "application/json"),
                "{\"email\":\"a@b.test\"}",
            )
            .await;
        assert_eq!(r.status, 200);
        let s = e.fapi.last();
        assert_eq!(s.method, method);
        assert_eq!(s.body, "{\"email\":\"a@b.test\"}");
    }
}

#[tokio::test]
async fn req25_redirects_are_returned_not_followed() {
    let e = untrusted().await;
    let r = e.get("/__clerk/v1/oauth/google").await;
    assert_eq!(r.status, 302);
    assert_eq!(e.fapi.count(), 1);
}

#[tokio::test]
async fn req26_a_location_on_the_fapi_host_is_rewritten_to_the_proxy_url() {
    let e = untrusted().await;
    let r = e.get("/__clerk/v1/oauth/to-fapi").await;
    assert_eq!(
        r.header("location"),
        Some("http://app.test/__clerk/v1/oauth/callback?code=123")
    );
    let r = e.get("/__clerk/v1/oauth/relative").await;
    assert_eq!(
        r.header("location"),
        Some("http://app.test/__clerk/v1/client?x=1")
    );
    let e = trusted().await;
    let r = e
        .send(
            req("GET", "app.test", "/__clerk/v1/oauth/to-fapi")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "myapp.example.com"),
            "",
        )
        .await;
    assert_eq!(
        r.header("location"),
        Some("https://myapp.example.com/__clerk/v1/oauth/callback?code=123")
    );
}

#[tokio::test]
async fn req27_a_location_on_another_host_is_untouched() {
    let e = untrusted().await;
    assert_eq!(
        e.get("/__clerk/v1/oauth/google").await.header("location"),
        Some("https://accounts.google.com/o/oauth2/auth?client_id=1")
    );
}

#[tokio::test]
async fn req28_every_set_cookie_is_its_own_header_unmodified() {
    let e = untrusted().await;
    let r = e
        .get("/__clerk/v1/client/handshake?redirect_url=https%3A%2F%2Fapp.test%2Fdashboard")
        .await;
    let cookies: Vec<_> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "__client_uat=1700000000; Path=/; Secure; SameSite=Lax",
            "__session=eyJhbGciOi; Path=/; Secure; HttpOnly",
            "__clerk_db_jwt=xyz; Path=/; Secure"
        ]
    );
}

#[tokio::test]
async fn req29_encoding_headers_always_describe_the_bytes_sent() {
    let e = untrusted().await;
    let r = e
        .send(
            req("GET", "app.test", "/__clerk/v1/gzip").header("accept-encoding", "gzip"),
            "",
        )
        .await;
    // Gatehouse never decodes, so FAPI's Content-Encoding and Content-Length travel with the very
    // bytes they describe: the body must decode, and its length must match.
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        r.body.len()
    );
    let mut out = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "console.log('gzipped');");
    // And the identity request means a well-behaved FAPI sends plain bytes with no encoding.
    let r = e.get("/__clerk/v1/client").await;
    assert!(r.header("content-encoding").is_none());
}

#[tokio::test]
async fn req30_hop_by_hop_response_headers_are_dropped() {
    let e = untrusted().await;
    let r = e.get("/__clerk/v1/hop").await;
    assert!(r.header("x-internal").is_none() && r.header("keep-alive").is_none());
    assert_eq!(r.header("x-clerk-trace-id"), Some("t1"));
}

#[tokio::test]
async fn req31_any_status_and_body_pass_through() {
    let e = untrusted().await;
    let r = e.get("/__clerk/v1/status/401").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.text(),
        "{\"errors\":[{\"code\":\"authentication_invalid\"}]}"
    );
    assert_eq!(e.get("/__clerk/v1/status/503").await.status, 503);
}

#[tokio::test]
async fn req32_req33_an_unreachable_fapi_is_a_502_in_clerks_error_shape() {
    let dead = dead_port().await;
    let app = backend("app").await;
    let toml = format!(
        "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"app.test\"]\n  [[site.route]]\n  prefix = \"/__clerk\"\n  clerk = {{ fapi_url = \"http://127.0.0.1:{}\" }}\n  [[site.route]]\n  prefix = \"/\"\n  upstream = \"{}\"\n",
        dead.port(),
        app.url()
    );
    let gw = gateway_env(
        &toml,
        &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
    )
    .await;
    let r = get(gw.http(), "app.test", "/__clerk/v1/client").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "proxy_request_failed");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to proxy request to Clerk FAPI: "),
        "{v}"
    );
    assert!(!r.text().contains(SK));
}

#[tokio::test]
async fn req32_a_fapi_with_an_untrusted_certificate_is_a_502_and_a_trusted_one_works() {
    let ca = common::pki::TestCa::new("fapi-ca");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(dir.path(), "fapi", &["localhost"]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let (fapi, conns) = backend_tls(
        Arc::new(move |req| {
            let seen = seen2.clone();
            Box::pin(async move {
                record(&seen, req).await;
                Response::new(full("{\"ok\":true}"))
            })
        }),
        &cert,
        &key,
    )
    .await;
    let route = |tls_ca: &str| {
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"app.test\"]\n  [[site.route]]\n  prefix = \"/__clerk\"\n  clerk = {{ fapi_url = \"https://localhost:{}\" }}\n  {tls_ca}\n",
            fapi.addr.port()
        )
    };
    let env = [("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)];
    // Without the CA: verification fails, the proxy answers 502 in Clerk's shape.
    let gw = gateway_env(&route(""), &env).await;
    let r = get(gw.http(), "app.test", "/__clerk/v1/client").await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("TLS handshake failed"), "{}", r.text());
    assert!(seen.lock().unwrap().is_empty());
    // With it: verified HTTPS, and keep-alive connections are reused (one worker, so that
    // every request reaches the same idle connections).
    let gw = gateway_on(
        dir,
        &route("tls_ca = \"ca.pem\""),
        &env,
        workers()[..1].to_vec(),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(gw.http(), "app.test", "/__clerk/v1/client")
                .await
                .status,
            200
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(
        seen.lock().unwrap()[0].header("host"),
        Some(format!("localhost:{}", fapi.addr.port()).as_str())
    );
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one refused handshake, then one pooled connection for three requests"
    );
}

#[tokio::test]
async fn req34_clerk_false_switches_the_proxy_off_for_that_domain() {
    let fapi = fake_fapi().await;
    let app = backend("app").await;
    let toml = format!(
        r#"
[server]
http = "127.0.0.1:0"
[clerk]
fapi_url = "http://localhost:{port}"
[[site]]
hosts = ["on.test"]
  [[site.route]]
  prefix = "/__clerk"
  clerk = true
  [[site.route]]
  prefix = "/"
  upstream = "{app}"
[[site]]
hosts = ["off.test"]
  [[site.route]]
  prefix = "/__clerk"
  clerk = false
  [[site.route]]
  prefix = "/"
  upstream = "{app}"
"#,
        port = fapi.addr.port(),
        app = app.url()
    );
    let gw = gateway_env(
        &toml,
        &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
    )
    .await;
    assert_eq!(
        get(gw.http(), "off.test", "/__clerk/v1/client")
            .await
            .text(),
        "app"
    );
    assert_eq!(fapi.count(), 0);
    assert_eq!(app.last().uri, "/__clerk/v1/client");
    assert!(app.last().header("clerk-secret-key").is_none());
    assert_eq!(
        get(gw.http(), "on.test", "/__clerk/v1/client").await.status,
        200
    );
    assert_eq!(fapi.count(), 1);
    // Switching it on for off.test is a one-word edit.
    std::fs::write(&gw.path, toml.replace("clerk = false", "clerk = true")).unwrap();
    gw.gw.reload().await.unwrap();
    get(gw.http(), "off.test", "/__clerk/v1/client").await;
    assert_eq!(fapi.count(), 2);
}

#[tokio::test]
async fn req35_the_app_gets_the_public_origin_to_build_its_handshake_redirect() {
    // The handshake redirect itself is made by the app's Clerk SDK; Gatehouse's part is to hand
    // the app the public origin (X-Forwarded-Host/Proto), so the SDK never redirects to localhost.
    let e = tls_env().await;
    tls_send(
        e.connect(b"http/1.1").await,
        Request::get("/dashboard?tab=1")
            .header("host", "app.test")
            .header("sec-fetch-dest", "document")
            .body(empty())
            .unwrap(),
    )
    .await;
    let seen = e.app.last();
    assert_eq!(seen.header("x-forwarded-host"), Some("app.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some("app.test"));
}

#[tokio::test]
async fn req36_the_handshake_returns_fapis_307_with_cookies_and_an_app_origin_location() {
    let e = untrusted().await;
    let r = e.get("/__clerk/v1/client/handshake?redirect_url=https%3A%2F%2Fapp.test%2Fdashboard&suffixed_cookies=false&format=nonce").await;
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some("https://app.test/dashboard?__clerk_handshake=abc")
    );
    assert_eq!(r.headers.get_all("set-cookie").iter().count(), 3);
    assert_eq!(
        e.fapi.last().uri,
        "/v1/client/handshake?redirect_url=https%3A%2F%2Fapp.test%2Fdashboard&suffixed_cookies=false&format=nonce"
    );
}

#[tokio::test]
async fn req37_the_clerk_js_script_is_forwarded_and_arrives_intact() {
    let e = untrusted().await;
    let r = e
        .get("/__clerk/npm/@clerk/clerk-js@5/dist/clerk.browser.js")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 2 * 1024 * 1024);
    assert_eq!(&r.body[..], &script()[..]);
    assert_eq!(
        e.fapi.last().uri,
        "/npm/@clerk/clerk-js@5/dist/clerk.browser.js"
    );
}

#[tokio::test]
async fn req38_proxy_health_gets_the_three_required_headers() {
    let e = untrusted().await;
    let r = e.get("/__clerk/v1/proxy-health?domain_id=dmn_123").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["x_forwarded_for"], "127.0.0.1");
}

#[tokio::test]
async fn req39_trace_is_refused_without_contacting_fapi() {
    let e = untrusted().await;
    let r = e
        .send(req("TRACE", "app.test", "/__clerk/v1/client"), "")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(e.fapi.count(), 0);
}

#[tokio::test]
async fn req40_a_fapi_that_does_not_answer_in_time_is_a_502_proxy_request_failed() {
    let e = setup("", "response_timeout = \"300ms\"").await;
    let r = e.get("/__clerk/v1/hang").await;
    assert_eq!(r.status, 502);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "proxy_request_failed");
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_sign_in_shaped_flow_through_the_gateway() {
    let e = untrusted().await;
    // 1. clerk-js loads.
    let js = e
        .get("/__clerk/npm/@clerk/clerk-js@5/dist/clerk.browser.js?v=1")
        .await;
    assert_eq!(js.body.len(), 2 * 1024 * 1024);
    // 2. The handshake: FAPI's 307 with three cookies, Location left on the app.
    let hs = e
        .get("/__clerk/v1/client/handshake?redirect_url=https%3A%2F%2Fapp.test%2F")
        .await;
    assert_eq!(hs.status, 307);
    assert_eq!(hs.headers.get_all("set-cookie").iter().count(), 3);
    assert!(
        hs.header("location")
            .unwrap()
            .starts_with("https://app.test/")
    );
    // 3. A sign-in POST with a form body.
    let post = e
        .send(
            req(
                "POST",
                "app.test",
                "/__clerk/v1/client/sign_ins?_clerk_js_version=5.0.0",
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", "__client=abc"),
            "identifier=a%40b.test&strategy=password",
        )
        .await;
    assert_eq!(post.status, 200);
    let s = e.fapi.last();
    assert_eq!(s.method, "POST");
    assert_eq!(s.body, "identifier=a%40b.test&strategy=password");
    assert_eq!(s.header("cookie"), Some("__client=abc"));
    // 4. An OAuth step that redirects back to FAPI: rewritten to the proxy.
    assert_eq!(
        e.get("/__clerk/v1/oauth/to-fapi").await.header("location"),
        Some("http://app.test/__clerk/v1/oauth/callback?code=123")
    );
    // 5. The hop to the identity provider: untouched.
    assert_eq!(
        e.get("/__clerk/v1/oauth/google").await.header("location"),
        Some("https://accounts.google.com/o/oauth2/auth?client_id=1")
    );
    // The app backend saw none of it.
    assert_eq!(e.app.count(), 0);
}

#[tokio::test]
async fn the_secret_never_reaches_an_app_backend() {
    let e = untrusted().await;
    e.get("/__clerk/v1/client").await;
    e.send(
        req("GET", "app.test", "/page").header("clerk-secret-key", SK),
        "",
    )
    .await;
    for s in e.app.requests() {
        for (k, v) in &s.headers {
            assert!(
                !v.as_bytes().windows(SK.len()).any(|w| w == SK.as_bytes()),
                "{k} carried the secret"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_output_of_clerk_traffic_contains_the_secret() {
    // The binary at trace level, access log on, Clerk traffic of every kind: the secret must not
    // appear in any line it writes.
    let fapi = fake_fapi().await;
    let app = backend("app").await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let toml = config(&fapi, &app, "admin = \"127.0.0.1:0\"", "").replace(
        "[clerk]",
        &format!(
            "[log]\naccess_log = \"{}\"\naccess_log_query = true\n\n[clerk]",
            access.display()
        ),
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, &toml).unwrap();
    let proc = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            Proc::start(
                &path,
                &[
                    ("CLERK_PUBLISHABLE_KEY", PK),
                    ("CLERK_SECRET_KEY", SK),
                    ("RUST_LOG", "trace"),
                ],
            )
        }
    })
    .await
    .unwrap();
    let addr = proc.http[0];
    for path in [
        "/__clerk/v1/client",
        "/__clerk/v1/client/handshake?redirect_url=https%3A%2F%2Fapp.test%2F",
        "/__clerk/v1/oauth/to-fapi",
        "/__clerk/v1/status/401",
        "/__clerk/v1/proxy-health?domain_id=dmn_1",
    ] {
        get(addr, "app.test", path).await;
    }
    send(
        addr,
        req("POST", "app.test", "/__clerk/v1/sign_ins")
            .header("clerk-secret-key", SK)
            .body(Full::new(Bytes::from("a=1")))
            .unwrap(),
    )
    .await;
    send(
        addr,
        req("GET", "app.test", "/page")
            .header("clerk-secret-key", SK)
            .body(empty())
            .unwrap(),
    )
    .await;
    send(
        addr,
        req("TRACE", "app.test", "/__clerk/v1/client")
            .body(empty())
            .unwrap(),
    )
    .await;
    // Ask the process to reload (a trace-level reload logs the config it read) and wait for it.
    proc.signal("HUP");
    let proc = tokio::task::spawn_blocking(move || {
        proc.wait_for("configuration reloaded");
        proc
    })
    .await
    .unwrap();
    let access_text = within("the access log", async {
        loop {
            if let Ok(t) = tokio::fs::read_to_string(&access).await {
                if t.lines().count() >= 8 {
                    return t;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let log = proc.full_log();
    assert!(
        log.matches("proxying to Clerk's Frontend API").count() >= 6
            && log.contains("request headers toward Clerk"),
        "trace logging did not log the Clerk requests, so the check would prove nothing:\n{log}"
    );
    assert!(!log.contains(SK), "the secret is in the process log");
    assert!(!access_text.contains(SK), "the secret is in the access log");
    assert!(!log.contains("TESTSECRET") && !access_text.contains("TESTSECRET"));
    assert!(
        fapi.requests()
            .iter()
            .all(|s| s.header("clerk-secret-key") == Some(SK))
    );
}
