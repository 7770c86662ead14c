//! Live reload: file edits of every kind, SIGHUP and POST /reload, refused edits, and zero
//! dropped requests under load.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};

fn versioned(body: &str, admin: bool) -> String {
    let admin = if admin { "admin = \"127.0.0.1:0\"" } else { "" };
    format!(
        r#"
[server]
http = "127.0.0.1:0"
{admin}

[[site]]
hosts = ["app.test"]
  [[site.route]]
  prefix = "/"
  respond = {{ body = "{body}" }}
"#
    )
}

async fn watched(toml: &str) -> Gw {
    let gw = gateway(toml).await;
    gatehouse::reload::spawn_watcher(gw.gw.clone()).await;
    gw
}

/// Waits for the next swap and checks it came within `limit` of `since`.
async fn next_generation(
    gw: &Gw,
    rx: &mut tokio::sync::watch::Receiver<u64>,
    since: Instant,
    limit: Duration,
) -> u64 {
    within("a reload", rx.changed()).await.unwrap();
    let took = since.elapsed();
    assert!(took < limit, "the edit took {took:?} to be served");
    let _ = gw;
    *rx.borrow()
}

#[tokio::test]
async fn an_edit_written_in_place_is_served_within_a_second() {
    let gw = watched(&versioned("one", false)).await;
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "one");
    let mut rx = gw.gw.subscribe_generation();
    let t = Instant::now();
    std::fs::write(&gw.path, versioned("two", false)).unwrap();
    next_generation(&gw, &mut rx, t, Duration::from_secs(1)).await;
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "two");
}

#[tokio::test]
async fn a_rename_save_is_seen() {
    let gw = watched(&versioned("one", false)).await;
    let mut rx = gw.gw.subscribe_generation();
    let tmp = gw.file(".gatehouse.toml.swp");
    std::fs::write(&tmp, versioned("renamed", false)).unwrap();
    let t = Instant::now();
    std::fs::rename(&tmp, &gw.path).unwrap();
    next_generation(&gw, &mut rx, t, Duration::from_secs(1)).await;
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "renamed");
}

#[tokio::test]
async fn a_cp_over_the_file_is_seen() {
    let gw = watched(&versioned("one", false)).await;
    let mut rx = gw.gw.subscribe_generation();
    let other = tempfile::tempdir().unwrap();
    let src = other.path().join("new.toml");
    std::fs::write(&src, versioned("copied", false)).unwrap();
    let t = Instant::now();
    std::fs::copy(&src, &gw.path).unwrap();
    next_generation(&gw, &mut rx, t, Duration::from_secs(1)).await;
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "copied");
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_seen() {
    // /dir/gatehouse.toml -> ..data/gatehouse.toml, ..data -> ..v1 ; the update swaps ..data.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/gatehouse.toml"), versioned("v1", false)).unwrap();
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gatehouse.toml", root.join("gatehouse.toml")).unwrap();
    let path = root.join("gatehouse.toml");
    gatehouse::tls::install_default_provider();
    let gw = gatehouse::Gateway::start(gatehouse::Options {
        config_path: path,
        env: env_of(&[]),
        workers: common::workers(),
    })
    .await
    .unwrap();
    gatehouse::reload::spawn_watcher(gw.clone()).await;
    let http = gw.http_addrs()[0];
    assert_eq!(get(http, "app.test", "/").await.text(), "v1");
    let mut rx = gw.subscribe_generation();
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/gatehouse.toml"), versioned("v2", false)).unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    let t = Instant::now();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    within("the symlink swap to be applied", rx.changed())
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(get(http, "app.test", "/").await.text(), "v2");
}

#[tokio::test]
async fn an_edit_is_seen_while_another_file_in_the_folder_is_written_all_the_time() {
    // The access log kept next to the config, written on every request: its writes must not
    // hold the reload back (a debounce restarted by every event never ended).
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = |body: &str| {
        format!(
            "[log]\naccess_log = \"{}\"\n{}",
            log.display(),
            versioned(body, false)
        )
    };
    let gw = gateway_in(dir, &toml("one"), &[]).await;
    gatehouse::reload::spawn_watcher(gw.gw.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (stop, served, addr) = (stop.clone(), served.clone(), gw.http());
        async move {
            while !stop.load(Ordering::Relaxed) {
                get(addr, "app.test", "/").await;
                served.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // The log is being written before the edit.
    within("the access log to grow", async {
        while std::fs::metadata(&log).map_or(0, |m| m.len()) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut rx = gw.gw.subscribe_generation();
    let t = Instant::now();
    std::fs::write(&gw.path, toml("two")).unwrap();
    next_generation(&gw, &mut rx, t, Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "two");
}

#[tokio::test]
async fn a_config_rewritten_without_pause_is_still_applied() {
    // A script that rewrites the file in a loop: the debounce waits for a quiet moment that
    // never comes, so it gives up waiting after MAX_DEBOUNCE and checks anyway.
    let gw = watched(&versioned("one", false)).await;
    let mut rx = gw.gw.subscribe_generation();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (stop, path, tmp) = (stop.clone(), gw.path.clone(), gw.file("next.tmp"));
        move || {
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Whole files only (write, then rename over): every check reads a valid one.
                std::fs::write(&tmp, versioned("two", false)).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                writes += 1;
            }
            writes
        }
    });
    let t = Instant::now();
    next_generation(
        &gw,
        &mut rx,
        t,
        gatehouse::reload::MAX_DEBOUNCE + Duration::from_secs(1),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 1);
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "two");
}

#[tokio::test]
async fn post_reload_applies_and_reports_the_outcome() {
    let gw = gateway(&versioned("one", true)).await;
    let admin = gw.gw.admin_addr().unwrap();
    std::fs::write(&gw.path, versioned("two", true)).unwrap();
    let r = send(
        admin,
        req("POST", "admin", "/reload").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["generation"], 2);
    assert!(
        v["changes"].as_str().unwrap().contains("routes changed"),
        "{v}"
    );
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "two");
    assert_eq!(
        send(admin, req("GET", "admin", "/reload").body(empty()).unwrap())
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn an_invalid_edit_is_refused_the_old_routes_stay_and_the_error_is_visible() {
    let gw = watched(&versioned("good", true)).await;
    let admin = gw.gw.admin_addr().unwrap();
    std::fs::write(
        &gw.path,
        versioned("good", true).replace("respond =", "respnd ="),
    )
    .unwrap();
    let r = send(
        admin,
        req("POST", "admin", "/reload").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 422);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("gatehouse.toml:10:3"),
        "{v}"
    );
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "good");
    let c: serde_json::Value =
        serde_json::from_slice(&get(admin, "admin", "/config").await.body).unwrap();
    assert_eq!(c["generation"], 1);
    assert_eq!(c["last_reload_ok"], false);
    assert!(
        c["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("unknown field `respnd`"),
        "{c}"
    );
    // Fixing the file is picked up by the watcher.
    let mut rx = gw.gw.subscribe_generation();
    std::fs::write(&gw.path, versioned("fixed", true)).unwrap();
    within("the fix", rx.changed()).await.unwrap();
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "fixed");
    let c: serde_json::Value =
        serde_json::from_slice(&get(admin, "admin", "/config").await.body).unwrap();
    assert_eq!(c["last_reload_ok"], true);
}

#[tokio::test]
async fn an_empty_or_site_less_file_never_replaces_a_working_one() {
    let gw = gateway(&versioned("good", false)).await;
    for bad in [
        "",
        "[server]\nhttp = \"127.0.0.1:0\"\n",
        "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"app.test\"]\n  [[site.route]]\n  prefix = \"/\"\n  respond = { bo",
    ] {
        std::fs::write(&gw.path, bad).unwrap();
        assert!(gw.gw.reload().await.is_err(), "accepted: {bad:?}");
        assert_eq!(get(gw.http(), "app.test", "/").await.text(), "good");
    }
}

#[tokio::test]
async fn a_changed_certificate_file_triggers_a_reload() {
    let ca = common::pki::TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("live")).unwrap();
    ca.leaf(&dir.path().join("live"), "a", &["a.test"]);
    let gw = gateway_in(
        dir,
        r#"
[server]
https = "127.0.0.1:0"
[[site]]
hosts = ["a.test"]
tls = { cert = "live/a.crt", key = "live/a.key" }
  [[site.route]]
  prefix = "/"
  respond = { body = "a" }
"#,
        &[],
    )
    .await;
    gatehouse::reload::spawn_watcher(gw.gw.clone()).await;
    let mut rx = gw.gw.subscribe_generation();
    ca.leaf(&gw.dir.path().join("live"), "a", &["a.test"]);
    within("the certificate change to be applied", rx.changed())
        .await
        .unwrap();
}

#[tokio::test]
async fn listeners_stay_bound_and_only_changed_ones_move() {
    let gw = gateway(&versioned("one", false)).await;
    let first = gw.http();
    std::fs::write(
        &gw.path,
        versioned("two", false).replace(
            "http = \"127.0.0.1:0\"",
            "http = [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
        ),
    )
    .unwrap();
    let r = gw.gw.reload().await.unwrap();
    assert_eq!(r.listeners_added.len(), 1);
    assert_eq!(
        gw.gw.http_addrs()[0],
        first,
        "the unchanged listener was re-bound"
    );
    let second = gw.gw.http_addrs()[1];
    assert_eq!(get(second, "app.test", "/").await.text(), "two");
    std::fs::write(
        &gw.path,
        versioned("three", false).replace("http = \"127.0.0.1:0\"", "http = \"127.0.0.2:0\""),
    )
    .unwrap();
    let r = gw.gw.reload().await.unwrap();
    assert_eq!(r.listeners_removed, [first]);
    assert!(
        tokio::net::TcpStream::connect(first).await.is_err(),
        "the removed listener still accepts once the reload has returned"
    );
}

fn two_versions(
    a: &Backend,
    b: &Backend,
    version: &str,
    ws: &std::net::SocketAddr,
    slow: &Backend,
) -> String {
    let (backend, body) = if version == "v1" {
        (a.url(), "v1")
    } else {
        (b.url(), "v2")
    };
    format!(
        r#"
[server]
http = "127.0.0.1:0"

[[site]]
hosts = ["app.test"]
  [[site.route]]
  prefix = "/"
  upstream = "{backend}"
  response_headers = {{ set = {{ "X-Version" = "{version}" }} }}
  [[site.route]]
  exact = "/static"
  respond = {{ body = "{body}" }}
  [[site.route]]
  prefix = "/ws"
  upstream = "http://{ws}"
  [[site.route]]
  prefix = "/upload"
  upstream = "{slow}"
"#,
        slow = slow.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_requests_fail_while_the_config_is_rewritten_200_times() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (a, b) = (backend("A").await, backend("B").await);
    // WebSocket echo backend.
    let wsl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = wsl.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = wsl.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() {
                        ws.send(m).await.unwrap();
                    }
                }
            });
        }
    });
    // An upload backend that counts what it receives.
    let slow = backend_with(Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let n = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes().len())
                .unwrap_or(0);
            Response::new(full(n.to_string()))
        })
    }))
    .await;
    let v1 = two_versions(&a, &b, "v1", &ws_addr, &slow);
    let v2 = two_versions(&a, &b, "v2", &ws_addr, &slow);
    let gw = watched(&v1).await;
    let addr = gw.http();

    // A WebSocket opened before the reloads.
    let mut wsreq = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/ws"),
    )
    .unwrap();
    wsreq
        .headers_mut()
        .insert("host", http::HeaderValue::from_static("app.test"));
    let (mut ws, _) = within("ws connect", tokio_tungstenite::connect_async(wsreq))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("before")
    );

    // A long upload in flight during the reloads.
    let (up_tx, up_rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(2);
    let upload = {
        let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
            up_rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        ));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut s, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(c);
        let req = Request::post("/upload")
            .header("host", "app.test")
            .body(body)
            .unwrap();
        tokio::spawn(async move { s.send_request(req).await })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    // Keep-alive HTTP/1.1, fresh HTTP/1.1 connections, and HTTP/2 (h2c), each checking that a
    // response comes from one version only.
    for kind in 0..3 {
        let stop = stop.clone();
        let ok = ok.clone();
        clients.push(tokio::spawn(async move {
            let check =
                |status: http::StatusCode, version: Option<&str>, body: &[u8], path: &str| {
                    assert_eq!(status, 200, "{path}: status {status}");
                    if path == "/static" {
                        assert!(
                            body == b"v1" || body == b"v2",
                            "{path}: {:?}",
                            String::from_utf8_lossy(body)
                        );
                    } else {
                        let pair = (version, body);
                        assert!(
                            pair == (Some("v1"), &b"A"[..]) || pair == (Some("v2"), &b"B"[..]),
                            "mixed response: {pair:?}"
                        );
                    }
                };
            let mut i = 0u64;
            let mut h1 = None;
            let mut h2 = None;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let path = if i % 2 == 0 { "/static" } else { "/app" };
                let req = Request::get(format!("http://app.test{path}"))
                    .header("host", "app.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = match kind {
                    0 => {
                        if h1.is_none() {
                            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                            let (s, c) = hyper::client::conn::http1::handshake(
                                hyper_util::rt::TokioIo::new(tcp),
                            )
                            .await
                            .unwrap();
                            tokio::spawn(c);
                            h1 = Some(s);
                        }
                        let s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>> =
                            h1.as_mut().unwrap();
                        s.ready().await.unwrap();
                        let mut req = req;
                        *req.uri_mut() = path.parse().unwrap();
                        s.send_request(req).await.unwrap()
                    }
                    1 => {
                        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                        let (mut s, c) = hyper::client::conn::http1::handshake(
                            hyper_util::rt::TokioIo::new(tcp),
                        )
                        .await
                        .unwrap();
                        tokio::spawn(c);
                        let mut req = req;
                        *req.uri_mut() = path.parse().unwrap();
                        s.send_request(req).await.unwrap()
                    }
                    _ => {
                        if h2.is_none() {
                            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                            let (s, c) = hyper::client::conn::http2::handshake(
                                hyper_util::rt::TokioExecutor::new(),
                                hyper_util::rt::TokioIo::new(tcp),
                            )
                            .await
                            .unwrap();
                            tokio::spawn(c);
                            h2 = Some(s);
                        }
                        let s: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>> =
                            h2.as_mut().unwrap();
                        s.send_request(req).await.unwrap()
                    }
                };
                let status = resp.status();
                let version = resp
                    .headers()
                    .get("x-version")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                check(status, version.as_deref(), &body, path);
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // 200 rewrites, alternating v1 and v2, with an invalid version now and then. Every rewrite
    // is also applied at once (besides the watcher), so there really are ~200 swaps.
    let mut refused = 0;
    for i in 0..200 {
        let text = if i % 17 == 16 {
            "[[site]]\nhosts = [\"app.test\"]\n  [[site.route]]\n  prefix = \"/\"\n  upstream = \"not a url".to_string()
        } else if i % 2 == 0 {
            v2.clone()
        } else {
            v1.clone()
        };
        std::fs::write(&gw.path, text).unwrap();
        if gatehouse::reload::apply(&gw.gw, "test").await.is_err() {
            refused += 1;
        }
        if i == 100 {
            // Halfway: send part of the upload.
            up_tx
                .send(Ok(hyper::body::Frame::data(Bytes::from(vec![
                    1u8;
                    1 << 20
                ]))))
                .await
                .unwrap();
        }
        tokio::task::yield_now().await;
    }
    up_tx
        .send(Ok(hyper::body::Frame::data(Bytes::from(vec![
            1u8;
            1 << 20
        ]))))
        .await
        .unwrap();
    drop(up_tx);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        within("a client to finish", c).await.unwrap();
    }
    assert!(
        refused >= 11,
        "invalid versions were accepted ({refused} refused)"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too few requests: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        gw.gw.generation() > 150,
        "generation {}",
        gw.gw.generation()
    );

    // The WebSocket opened before the reloads still echoes.
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(
        within("echo after reloads", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::text("after")
    );
    // The upload that was in flight completed, whole.
    let resp = within("the upload", upload).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        (2u64 << 20).to_string()
    );
}

/// `versioned("one", true)` with `server.max_connections`.
fn limited(max: usize) -> String {
    versioned("one", true).replace(
        "http = \"127.0.0.1:0\"",
        &format!("http = \"127.0.0.1:0\"\nmax_connections = {max}"),
    )
}

async fn post_reload(gw: &Gw) {
    let admin = gw.gw.admin_addr().unwrap();
    let r = send(
        admin,
        req("POST", "admin", "/reload").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Sends a keep-alive GET and returns the first read of the answer.
async fn ask(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncWriteExt;
    tcp.write_all(GET).await.unwrap();
    answer(tcp).await
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";

/// Sends a GET and checks that no answer comes while the connection limit holds it back (the
/// kernel completes the handshake; Gatehouse does not take the connection).
async fn ask_held_back(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    assert_not_answered(&mut tcp).await;
    tcp
}

/// The first read of the answer to a GET already sent.
async fn answer(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let n = within("an answer", tcp.read(&mut buf)).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_raised_max_connections_lets_a_waiting_connection_in_at_reload() {
    let gw = gateway(&limited(1)).await;
    let mut first = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    assert!(ask(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = ask_held_back(gw.http()).await;

    std::fs::write(&gw.path, limited(2)).unwrap();
    post_reload(&gw).await;
    assert!(answer(&mut second).await.starts_with("HTTP/1.1 200"));
    assert!(ask(&mut first).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_lowered_max_connections_closes_nothing_and_new_connections_wait_under_it() {
    let gw = gateway(&limited(2)).await;
    let mut a = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    assert!(ask(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(ask(&mut b).await.starts_with("HTTP/1.1 200"));

    std::fs::write(&gw.path, limited(1)).unwrap();
    post_reload(&gw).await;
    // Both stay open and served, over the new limit.
    assert!(ask(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(ask(&mut b).await.starts_with("HTTP/1.1 200"));

    let mut c = ask_held_back(gw.http()).await;
    drop(a);
    // One left open: at the new limit, so `c` still waits.
    assert_not_answered(&mut c).await;
    drop(b);
    assert!(answer(&mut c).await.starts_with("HTTP/1.1 200"));
}

/// `versioned("one", ..)` with the admin listener at `admin` (none when `None`).
fn with_admin(admin: Option<&str>) -> String {
    let admin = admin
        .map(|a| format!("admin = \"{a}\""))
        .unwrap_or_default();
    versioned("one", false).replace(
        "http = \"127.0.0.1:0\"",
        &format!("http = \"127.0.0.1:0\"\n{admin}"),
    )
}

async fn healthz(admin: std::net::SocketAddr) -> http::StatusCode {
    send(
        admin,
        req("GET", "admin", "/healthz").body(empty()).unwrap(),
    )
    .await
    .status
}

#[tokio::test]
async fn a_reload_starts_moves_and_stops_the_admin_listener() {
    let gw = gateway(&with_admin(None)).await;
    assert_eq!(gw.gw.admin_addr(), None);

    std::fs::write(&gw.path, with_admin(Some("127.0.0.1:0"))).unwrap();
    let r = gatehouse::reload::apply(&gw.gw, "test").await.unwrap();
    let first = gw.gw.admin_addr().expect("an admin listener");
    assert_eq!(r.listeners_added, vec![first]);
    assert_eq!(healthz(first).await, 200);

    // Moved, by the reload its own endpoint asked for: the answer comes back on the connection
    // the old listener accepted, and the old address refuses connections after it.
    std::fs::write(&gw.path, with_admin(Some("127.0.0.2:0"))).unwrap();
    let r = send(
        first,
        req("POST", "admin", "/reload").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = gw.gw.admin_addr().expect("an admin listener");
    assert_eq!(second.ip().to_string(), "127.0.0.2");
    assert_eq!(healthz(second).await, 200);
    assert!(tokio::net::TcpStream::connect(first).await.is_err());

    std::fs::write(&gw.path, with_admin(None)).unwrap();
    let r = gatehouse::reload::apply(&gw.gw, "test").await.unwrap();
    assert_eq!(r.listeners_removed, vec![second]);
    assert_eq!(gw.gw.admin_addr(), None);
    assert!(tokio::net::TcpStream::connect(second).await.is_err());
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "one");
}

#[tokio::test]
async fn an_admin_address_that_cannot_be_bound_refuses_the_reload_and_keeps_the_old_one() {
    let gw = gateway(&with_admin(Some("127.0.0.1:0"))).await;
    let admin = gw.gw.admin_addr().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();

    std::fs::write(&gw.path, with_admin(Some(&busy)).replace("one", "two")).unwrap();
    let e = gatehouse::reload::apply(&gw.gw, "test").await.unwrap_err();
    assert!(e.summary().contains(&busy), "{}", e.summary());
    assert_eq!(gw.gw.admin_addr(), Some(admin));
    assert_eq!(healthz(admin).await, 200);
    assert_eq!(get(gw.http(), "app.test", "/").await.text(), "one");
}
