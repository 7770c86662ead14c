//! TLS termination: a certificate per site by SNI, ALPN h2, reloads, redirects, HSTS, deadlines.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pki::{TestCa, capture_config, names_of};
use common::*;
use http::Request;
use tokio::io::AsyncReadExt;

struct Tls {
    gw: Gw,
    ca: TestCa,
    backend: Backend,
}

/// Three sites with their own certificates, a wildcard site, and a default site.
async fn three_domains(default_tls: bool) -> Tls {
    let ca = TestCa::new("Gatehouse Test CA");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "a", &["a.test"]);
    ca.leaf(dir.path(), "b", &["b.test", "www.b.test"]);
    ca.leaf(dir.path(), "c", &["c.test"]);
    ca.leaf(dir.path(), "wild", &["*.wild.test"]);
    ca.leaf(dir.path(), "default", &["default.test"]);
    let backend = backend("app").await;
    let default_tls = if default_tls {
        "tls = { cert = \"default.crt\", key = \"default.key\" }"
    } else {
        ""
    };
    let toml = format!(
        r#"
[server]
http = "127.0.0.1:0"
https = "127.0.0.1:0"

[[site]]
hosts = ["a.test"]
tls = {{ cert = "a.crt", key = "a.key" }}
hsts = "max-age=31536000; includeSubDomains"
  [[site.route]]
  prefix = "/"
  upstream = "{url}"

[[site]]
hosts = ["b.test", "www.b.test"]
tls = {{ cert = "b.crt", key = "b.key" }}
redirect_https = true
  [[site.route]]
  prefix = "/"
  upstream = "{url}"

[[site]]
hosts = ["c.test"]
tls = {{ cert = "c.crt", key = "c.key" }}
  [[site.route]]
  prefix = "/"
  respond = {{ body = "c" }}

[[site]]
hosts = ["*.wild.test"]
tls = {{ cert = "wild.crt", key = "wild.key" }}
  [[site.route]]
  prefix = "/"
  respond = {{ body = "wild" }}

[[site]]
default = true
hosts = ["default.test"]
{default_tls}
  [[site.route]]
  prefix = "/"
  respond = {{ body = "default" }}
"#,
        url = backend.url()
    );
    let gw = gateway_in(dir, &toml, &[]).await;
    Tls { gw, ca, backend }
}

async fn served_names(addr: std::net::SocketAddr, sni: Option<&str>) -> Vec<String> {
    let s = tls_connect(addr, capture_config(&[b"http/1.1"]), sni)
        .await
        .unwrap();
    names_of(&s.get_ref().1.peer_certificates().unwrap()[0])
}

#[tokio::test]
async fn each_domain_gets_its_own_certificate_verified_by_a_real_client() {
    let t = three_domains(true).await;
    for (host, body) in [("a.test", "app"), ("www.b.test", "app"), ("c.test", "c")] {
        let s = tls_connect(t.gw.https(), t.ca.client_config(&[b"http/1.1"]), Some(host))
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let r = tls_get(s, host).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.text(), body, "{host}");
    }
    assert_eq!(served_names(t.gw.https(), Some("a.test")).await, ["a.test"]);
    assert_eq!(
        served_names(t.gw.https(), Some("b.test")).await,
        ["b.test", "www.b.test"]
    );
    assert_eq!(served_names(t.gw.https(), Some("c.test")).await, ["c.test"]);
}

#[tokio::test]
async fn openssl_s_client_sees_the_sni_certificate() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("skipped: openssl is not installed (.ci/run installs it)");
        return;
    }
    let t = three_domains(true).await;
    let addr = t.gw.https();
    for (sni, want) in [
        ("a.test", "CN=a.test"),
        ("c.test", "CN=c.test"),
        ("x.wild.test", "CN=*.wild.test"),
    ] {
        let out = tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                sni,
            ])
            .stdin(std::process::Stdio::null())
            .output();
        let out = within("openssl s_client", out).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).replace(" = ", "=");
        assert!(
            text.contains(&format!("subject={want}")) || text.contains(&format!("s:{want}")),
            "{sni}: {text}"
        );
    }
}

#[tokio::test]
async fn a_wildcard_certificate_serves_its_subdomains() {
    let t = three_domains(true).await;
    assert_eq!(
        served_names(t.gw.https(), Some("pr-1.wild.test")).await,
        ["*.wild.test"]
    );
    let s = tls_connect(
        t.gw.https(),
        t.ca.client_config(&[]),
        Some("pr-1.wild.test"),
    )
    .await
    .unwrap();
    assert_eq!(tls_get(s, "pr-1.wild.test").await.text(), "wild");
}

#[tokio::test]
async fn no_sni_gets_the_default_sites_certificate() {
    let t = three_domains(true).await;
    assert_eq!(served_names(t.gw.https(), None).await, ["default.test"]);
}

#[tokio::test]
async fn an_unknown_name_gets_the_default_certificate_when_there_is_one() {
    let t = three_domains(true).await;
    assert_eq!(
        served_names(t.gw.https(), Some("unknown.test")).await,
        ["default.test"]
    );
}

#[tokio::test]
async fn an_unknown_name_without_default_fails_with_unrecognized_name() {
    let t = three_domains(false).await;
    let err = tls_connect(t.gw.https(), capture_config(&[]), Some("unknown.test"))
        .await
        .unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        inner,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnrecognisedName
        )),
        "{err}"
    );
    // The listener keeps working.
    assert_eq!(served_names(t.gw.https(), Some("a.test")).await, ["a.test"]);
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn_end_to_end() {
    let t = three_domains(true).await;
    let s = tls_connect(
        t.gw.https(),
        t.ca.client_config(&[b"h2", b"http/1.1"]),
        Some("a.test"),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let r = tls_send(s, Request::get("https://a.test/x").body(empty()).unwrap()).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.text(), "app");
    let seen = t.backend.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.header("host"), Some("a.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn tls_1_2_clients_are_served() {
    let t = three_domains(true).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(t.ca.der()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let s = tls_connect(t.gw.https(), Arc::new(cfg), Some("c.test"))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls_get(s, "c.test").await.text(), "c");
}

#[tokio::test]
async fn a_host_of_another_site_than_the_sni_gets_421() {
    let t = three_domains(true).await;
    let s = tls_connect(
        t.gw.https(),
        t.ca.client_config(&[b"http/1.1"]),
        Some("a.test"),
    )
    .await
    .unwrap();
    let r = tls_get(s, "c.test").await;
    assert_eq!(r.status, 421);
}

#[tokio::test]
async fn redirect_https_sends_plain_http_to_https_with_308() {
    let t = three_domains(true).await;
    let r = get(t.gw.http(), "b.test", "/path?q=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://b.test:{}/path?q=1", t.gw.https().port()).as_str())
    );
    // Sites without redirect_https still answer on plain HTTP.
    assert_eq!(get(t.gw.http(), "c.test", "/").await.text(), "c");
}

#[tokio::test]
async fn hsts_is_sent_on_https_only() {
    let t = three_domains(true).await;
    let s = tls_connect(
        t.gw.https(),
        t.ca.client_config(&[b"http/1.1"]),
        Some("a.test"),
    )
    .await
    .unwrap();
    let r = tls_get(s, "a.test").await;
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    let r = get(t.gw.http(), "a.test", "/").await;
    assert!(r.header("strict-transport-security").is_none());
}

#[tokio::test]
async fn a_client_that_never_sends_a_client_hello_is_dropped_at_the_deadline() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "a", &["a.test"]);
    let gw = gateway_in(
        dir,
        r#"
[server]
https = "127.0.0.1:0"
tls_handshake_timeout = "300ms"
[[site]]
hosts = ["a.test"]
tls = { cert = "a.crt", key = "a.key" }
  [[site.route]]
  prefix = "/"
  respond = { body = "a" }
"#,
        &[],
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.https()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = within("the gateway to drop the silent client", tcp.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "dropped after {:?}",
        started.elapsed()
    );
}

fn one_site(cert: &str, key: &str) -> String {
    format!(
        r#"
[server]
https = "127.0.0.1:0"
[[site]]
hosts = ["a.test"]
tls = {{ cert = "{cert}", key = "{key}" }}
  [[site.route]]
  prefix = "/"
  respond = {{ body = "a" }}
"#
    )
}

fn serial_of(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    use x509_parser::prelude::*;
    let der = &s.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
    cert.raw_serial().to_vec()
}

#[tokio::test]
async fn replaced_certificate_files_are_served_on_the_next_handshake_without_dropping_connections()
{
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "a", &["a.test"]);
    let gw = gateway_in(dir, &one_site("a.crt", "a.key"), &[]).await;
    let cfg = ca.client_config(&[b"http/1.1"]);
    let old = tls_connect(gw.https(), cfg.clone(), Some("a.test"))
        .await
        .unwrap();
    let old_serial = serial_of(&old);
    // An established keep-alive connection.
    let io = hyper_util::rt::TokioIo::new(old);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let r = sender
        .send_request(
            Request::get("/")
                .header("host", "a.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // certbot renews: new files in place.
    ca.leaf(gw.dir.path(), "a", &["a.test"]);
    gw.gw.reload().await.unwrap();

    // A fresh client (no session to resume) sees the new certificate.
    let fresh = tls_connect(gw.https(), ca.client_config(&[b"http/1.1"]), Some("a.test"))
        .await
        .unwrap();
    assert_ne!(
        serial_of(&fresh),
        old_serial,
        "the old certificate is still served"
    );
    let r = sender
        .send_request(
            Request::get("/")
                .header("host", "a.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the established connection was dropped");
}

#[tokio::test]
async fn a_mismatched_key_is_refused_by_check_and_by_reload_and_the_old_certificate_stays() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "a", &["a.test"]);
    ca.leaf(dir.path(), "other", &["other.test"]);
    let gw = gateway_in(dir, &one_site("a.crt", "a.key"), &[]).await;
    let cfg = ca.client_config(&[]);
    let before = serial_of(
        &tls_connect(gw.https(), cfg.clone(), Some("a.test"))
            .await
            .unwrap(),
    );

    std::fs::write(&gw.path, one_site("a.crt", "other.key")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "-c"])
        .arg(&gw.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the certificate"), "{err}");
    assert!(err.contains("gatehouse.toml:6:7"), "{err}");

    let e = gw.gw.reload().await.unwrap_err();
    assert!(e.summary().contains("does not match"), "{}", e.summary());
    let after = serial_of(
        &tls_connect(gw.https(), ca.client_config(&[]), Some("a.test"))
            .await
            .unwrap(),
    );
    assert_eq!(before, after);
}

#[tokio::test]
async fn an_unreadable_certificate_at_reload_keeps_the_last_good_one() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "a", &["a.test"]);
    let gw = gateway_in(dir, &one_site("a.crt", "a.key"), &[]).await;
    std::fs::remove_file(gw.file("a.crt")).unwrap();
    let e = gw.gw.reload().await.unwrap_err();
    assert!(e.summary().contains("a.crt"), "{}", e.summary());
    let s = tls_connect(gw.https(), ca.client_config(&[]), Some("a.test"))
        .await
        .unwrap();
    assert_eq!(tls_get(s, "a.test").await.text(), "a");
}

#[tokio::test]
async fn check_shows_every_certificates_expiry_and_warns_about_near_expiry_and_wrong_names() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf_with(dir.path(), "a", &["a.test"], |p| {
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(5);
    });
    ca.leaf(dir.path(), "wrong", &["wrong.test"]);
    let toml = r#"
[server]
https = "127.0.0.1:0"
[[site]]
hosts = ["a.test"]
tls = { cert = "a.crt", key = "a.key" }
  [[site.route]]
  prefix = "/"
  respond = {}
[[site]]
hosts = ["b.test"]
tls = { cert = "wrong.crt", key = "wrong.key" }
  [[site.route]]
  prefix = "/"
  respond = {}
"#;
    std::fs::write(dir.path().join("g.toml"), toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "-c"])
        .arg(dir.path().join("g.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a.crt (expires 20"), "{text}");
    assert!(text.contains("wrong.crt (expires "), "{text}");
    assert!(text.contains("in less than 14 days"), "{text}");
    assert!(text.contains("covers none of the site's hosts"), "{text}");
}

#[tokio::test]
async fn self_signed_certificates_survive_unrelated_reloads() {
    let gw = gateway(
        r#"
[server]
https = "127.0.0.1:0"
[[site]]
hosts = ["dev.test"]
tls = "self-signed"
  [[site.route]]
  prefix = "/"
  respond = { body = "one" }
"#,
    )
    .await;
    let first = served_names(gw.https(), Some("dev.test")).await;
    assert_eq!(first, ["dev.test"]);
    let serial = |gw: &Gw| {
        let addr = gw.https();
        async move {
            serial_of(
                &tls_connect(addr, capture_config(&[]), Some("dev.test"))
                    .await
                    .unwrap(),
            )
        }
    };
    let before = serial(&gw).await;
    std::fs::write(
        &gw.path,
        std::fs::read_to_string(&gw.path)
            .unwrap()
            .replace("\"one\"", "\"two\""),
    )
    .unwrap();
    gw.gw.reload().await.unwrap();
    assert_eq!(
        serial(&gw).await,
        before,
        "an unrelated edit replaced the self-signed certificate"
    );
    std::fs::write(
        &gw.path,
        std::fs::read_to_string(&gw.path)
            .unwrap()
            .replace("[\"dev.test\"]", "[\"dev.test\", \"dev2.test\"]"),
    )
    .unwrap();
    gw.gw.reload().await.unwrap();
    assert_ne!(
        serial(&gw).await,
        before,
        "new hosts need a new certificate"
    );
}

#[tokio::test]
async fn session_resumption_survives_a_reload() {
    let t = three_domains(true).await;
    let cfg = t.ca.client_config(&[b"http/1.1"]);
    let first = tls_connect(t.gw.https(), cfg.clone(), Some("a.test"))
        .await
        .unwrap();
    // Read the session ticket the server sends after the handshake (TLS 1.3 sends it post-handshake).
    let r = tls_get(first, "a.test").await;
    assert_eq!(r.status, 200);
    t.gw.gw.reload().await.unwrap();
    let second = tls_connect(t.gw.https(), cfg, Some("a.test"))
        .await
        .unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

/// Reads one HTTP/1.1 response with a `Content-Length` body off a raw stream: its head and body.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn an_idle_tls_keep_alive_connection_serves_a_request_that_comes_in_pieces() {
    use tokio::io::AsyncWriteExt;
    let t = three_domains(true).await;
    let mut s = tls_connect(
        t.gw.https(),
        t.ca.client_config(&[b"http/1.1"]),
        Some("a.test"),
    )
    .await
    .unwrap();
    within("two requests on one TLS connection", async {
        s.write_all(b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "app");
        // The connection now waits for its next request on the socket. The next head comes in
        // three TLS records (each flush is one): the first wakes it with part of a head.
        for piece in [&b"GET /tw"[..], b"o HTTP/1.1\r\nHo", b"st: a.test\r\n\r\n"] {
            s.write_all(piece).await.unwrap();
            s.flush().await.unwrap();
        }
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "app");
    })
    .await;
    assert_eq!(t.backend.last().uri, "/two");
}
