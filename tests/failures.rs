//! Dead and slow backends, oversized requests, slow clients, and graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

fn site(upstream: &str, server: &str, route: &str) -> String {
    format!(
        r#"
[server]
http = "127.0.0.1:0"
{server}

[[site]]
hosts = ["app.example.com"]
  [[site.route]]
  prefix = "/"
  upstream = {upstream}
  {route}
"#
    )
}

#[tokio::test]
async fn a_refused_connection_is_502_with_a_short_body() {
    let dead = dead_port().await;
    let gw = gateway(&site(&format!("\"http://{dead}\""), "", "")).await;
    let r = get(gw.http(), "app.example.com", "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.text(),
        "502 Bad Gateway: the backend could not be reached\n"
    );
    assert!(
        !r.text().contains(&dead.port().to_string()),
        "the body leaks the backend address"
    );
}

#[tokio::test]
async fn a_single_backend_is_never_marked_down() {
    let dead = dead_port().await;
    let gw = gateway(&site(&format!("\"http://{dead}\""), "", "")).await;
    for _ in 0..3 {
        assert_eq!(get(gw.http(), "app.example.com", "/").await.status, 502);
    }
}

#[tokio::test]
async fn when_every_backend_of_a_list_is_down_the_answer_is_503() {
    let (d1, d2) = (dead_port().await, dead_port().await);
    let gw = gateway(&site(
        &format!("[\"http://{d1}\", \"http://{d2}\"]"),
        "",
        "",
    ))
    .await;
    // The first request tries both and finds them refusing; after that both are cooling off.
    assert_eq!(get(gw.http(), "app.example.com", "/").await.status, 502);
    let r = get(gw.http(), "app.example.com", "/").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("no backend"), "{}", r.text());
}

/// A gateway to `b` whose route waits 300 ms for a response head.
async fn with_300ms_response_timeout(b: &Backend) -> Gw {
    gateway_one_worker(&site(
        &format!("\"{}\"", b.url()),
        "response_timeout = \"300ms\"",
        "",
    ))
    .await
}

#[tokio::test]
async fn a_backend_that_never_answers_is_504_after_the_response_timeout() {
    let hang = Arc::new(Notify::new());
    let hang2 = hang.clone();
    let b = backend_with(Arc::new(move |_req| {
        let hang = hang2.clone();
        Box::pin(async move {
            hang.notified().await;
            Response::new(full("late"))
        })
    }))
    .await;
    let gw = with_300ms_response_timeout(&b).await;
    let started = std::time::Instant::now();
    let r = get(gw.http(), "app.example.com", "/").await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    hang.notify_waiters();
}

#[tokio::test]
async fn a_reused_backend_connection_times_each_request_from_its_own_start() {
    // The first answer takes 200 ms of a 300 ms timeout; the second never comes. The pooled
    // connection's timer, set for the first request, must not end the second one early, and a
    // timeout is not retried on a new connection.
    let slow_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hang = Arc::new(Notify::new());
    let (hits, hang2) = (slow_hits.clone(), hang.clone());
    let b = backend_with(Arc::new(move |req| {
        let (hits, hang) = (hits.clone(), hang2.clone());
        Box::pin(async move {
            if req.uri().path() == "/slow" {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                hang.notified().await;
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Response::new(full("ok"))
        })
    }))
    .await;
    let gw = with_300ms_response_timeout(&b).await;
    assert_eq!(
        get(gw.http(), "app.example.com", "/first").await.status,
        200
    );
    let started = std::time::Instant::now();
    let r = get(gw.http(), "app.example.com", "/slow").await;
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "timed out after {:?}",
        started.elapsed()
    );
    assert_eq!(slow_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        b.conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second request did not reuse the connection"
    );
    hang.notify_waiters();
}

#[tokio::test]
async fn a_per_route_response_timeout_overrides_the_server_one() {
    let hang = Arc::new(Notify::new());
    let hang2 = hang.clone();
    let b = backend_with(Arc::new(move |_req| {
        let hang = hang2.clone();
        Box::pin(async move {
            hang.notified().await;
            Response::new(full("late"))
        })
    }))
    .await;
    let gw = gateway(&site(
        &format!("\"{}\"", b.url()),
        "",
        "response_timeout = \"200ms\"",
    ))
    .await;
    assert_eq!(get(gw.http(), "app.example.com", "/").await.status, 504);
}

#[tokio::test]
async fn a_backend_reset_mid_response_is_502() {
    // A raw backend that reads the request and closes without answering.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            drop(tcp);
        }
    });
    let gw = gateway(&site(&format!("\"http://{addr}\""), "", "")).await;
    assert_eq!(get(gw.http(), "app.example.com", "/").await.status, 502);
}

#[tokio::test]
async fn a_declared_body_over_max_body_is_413_and_closes_the_connection() {
    let b = backend("b").await;
    let gw = gateway(&site(
        &format!("\"{}\"", b.url()),
        "max_body = \"1KiB\"",
        "",
    ))
    .await;
    let out = raw(
        gw.http(),
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert_eq!(b.count(), 0, "the backend saw a request it should not have");
}

#[tokio::test]
async fn a_streamed_body_over_max_body_is_413() {
    let b = backend("b").await;
    let gw = gateway(&site(
        &format!("\"{}\"", b.url()),
        "",
        "max_body = \"64KiB\"",
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b'a'; 16 * 1024];
    let mut out = Vec::new();
    // Keep sending chunks until the gateway answers; it must answer before the body ends.
    let answered = within("a 413 while streaming", async {
        loop {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if tcp.write_all(&frame).await.is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    out.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => continue,
            }
        }
        let _ = tcp.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
    .await;
    assert!(answered.starts_with("HTTP/1.1 413"), "{answered}");
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let b = backend("b").await;
    let gw = gateway(&site(
        &format!("\"{}\"", b.url()),
        "max_request_header_bytes = \"16KiB\"",
        "",
    ))
    .await;
    let big = "a".repeat(40 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: app.example.com\r\nCookie: {big}\r\n\r\n");
    let out = raw(gw.http(), request.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn a_route_may_set_a_lower_header_limit() {
    let b = backend("b").await;
    let gw = gateway(&site(
        &format!("\"{}\"", b.url()),
        "",
        "max_request_header_bytes = \"8KiB\"",
    ))
    .await;
    let big = "a".repeat(12 * 1024);
    let r = send(
        gw.http(),
        req("GET", "app.example.com", "/")
            .header("cookie", big)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 431);
    let small = get(gw.http(), "app.example.com", "/").await;
    assert_eq!(small.status, 200);
}

/// Trickles a byte every 50 ms into a head that never ends: the gateway must close the
/// connection anyway, without answering, once the 300 ms header-read timeout passes.
async fn trickle_until_closed(tcp: &mut tokio::net::TcpStream) {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let closed = within("the slowloris connection to be closed", async {
        loop {
            match tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => return false,
                Err(_) => {
                    if tcp.write_all(b"a").await.is_err() {
                        return true;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed, "the gateway answered a request that never finished");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_slowloris_client_is_closed_at_the_header_read_timeout() {
    let b = backend("b").await;
    let gw = gateway(&site(
        &format!("\"{}\"", b.url()),
        "header_read_timeout = \"300ms\"",
        "",
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Slow: ")
        .await
        .unwrap();
    trickle_until_closed(&mut tcp).await;
    assert_eq!(b.count(), 0);
}

/// Sends `first` on a kept-alive connection, reads its answer, then a head that never ends:
/// the connection must be closed at the header-read timeout, the second request never sent on.
async fn slowloris_after(first: &[u8]) {
    let b = backend("b").await;
    let gw = gateway(&site(
        &format!("\"{}\"", b.url()),
        "header_read_timeout = \"300ms\"",
        "",
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(first).await.unwrap();
    let head = read_head(&mut tcp).await.expect("the first response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 1];
    tcp.read_exact(&mut body).await.unwrap();
    // The second head never ends.
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Slow: ")
        .await
        .unwrap();
    trickle_until_closed(&mut tcp).await;
    assert_eq!(b.count(), 1);
}

#[tokio::test]
async fn a_slowloris_second_request_on_a_kept_alive_connection_is_closed_too() {
    slowloris_after(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n").await;
}

#[tokio::test]
async fn a_slowloris_request_after_hyper_took_the_connection_over_is_closed_too() {
    // A request with a body hands the connection to hyper; its watchdog times the next head.
    slowloris_after(b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 2\r\n\r\nhi")
        .await;
}

/// Reads one response from the `backend("b")` behind the gateway (its body is "b").
async fn read_b_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nb") {
        let n = within("a response", s.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// Sends `requests` one after another on `s` (idle_timeout 600 ms, header_read_timeout
/// 200 ms), and checks the connection is closed at the idle timeout after the last answer, not
/// before.
async fn closed_at_idle_timeout<S>(mut s: S, requests: &[&[u8]])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for r in requests {
        s.write_all(r).await.unwrap();
        read_b_response(&mut s).await;
    }
    let idle_from = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = within("the idle close", s.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(500),
        "closed after {idle:?}, before idle_timeout"
    );
}

const IDLE_LIMITS: &str = "idle_timeout = \"600ms\"\nheader_read_timeout = \"200ms\"";
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n";

async fn closed_at_idle_timeout_after(requests: &[&[u8]]) {
    let b = backend("b").await;
    let gw = gateway(&site(&format!("\"{}\"", b.url()), IDLE_LIMITS, "")).await;
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    closed_at_idle_timeout(tcp, requests).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout_not_header_timeout() {
    closed_at_idle_timeout_after(&[GET]).await;
}

#[tokio::test]
async fn a_head_that_fills_the_first_read_leaves_the_connection_idle_not_closed() {
    // A read that fills its buffer leaves tokio believing the socket readable, so the idle
    // wait wakes at once and finds nothing: that wake-up must not turn the wait's timer (here
    // the 100 ms after which an idle connection is parked) into a close.
    let mut head = b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Pad: ".to_vec();
    head.resize(1024 - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    closed_at_idle_timeout_after(&[&head]).await;
}

#[tokio::test]
async fn a_connection_that_came_back_is_closed_at_idle_timeout_too() {
    // From its second request on, a connection waits for the next one in its busy state for
    // 100 ms, then in the idle state (parked): the idle timeout counts from the last answer.
    closed_at_idle_timeout_after(&[GET, GET, GET]).await;
}

#[tokio::test]
async fn a_tls_connection_that_came_back_is_closed_at_idle_timeout_too() {
    // A TLS connection is not parked, and its socket may be readable with no request to read
    // (a record without application data): a wait in the busy state can end in a read that
    // times out, and the idle state must not take that for the idle timeout.
    let b = backend("b").await;
    let gw = gateway(&format!(
        r#"
[server]
https = "127.0.0.1:0"
{IDLE_LIMITS}

[[site]]
hosts = ["app.example.com"]
tls = "self-signed"
  [[site.route]]
  prefix = "/"
  upstream = "{}"
"#,
        b.url()
    ))
    .await;
    let tls = tls_connect(
        gw.https(),
        common::pki::capture_config(&[b"http/1.1"]),
        Some("app.example.com"),
    )
    .await
    .unwrap();
    closed_at_idle_timeout(tls, &[GET, GET, GET]).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight_and_refuses_new_ones() {
    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(1);
    let release = Arc::new(Notify::new());
    let release2 = release.clone();
    let b = backend_with(Arc::new(move |_req| {
        let arrived = arrived_tx.clone();
        let release = release2.clone();
        Box::pin(async move {
            let _ = arrived.send(()).await;
            release.notified().await;
            Response::new(full("finished"))
        })
    }))
    .await;
    let gw = gateway(&site(&format!("\"{}\"", b.url()), "", "")).await;
    let addr = gw.http();
    let inflight = tokio::spawn(async move { get(addr, "app.example.com", "/slow").await });
    within("the request to reach the backend", arrived_rx.recv()).await;
    let gw2 = gw.gw.clone();
    let shutdown = tokio::spawn(async move { gw2.shutdown(Duration::from_secs(10)).await });
    // New connections are refused once the listener is closed.
    within("the listener to close", async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(_) => break,
                Ok(mut s) => {
                    // Accepted by the kernel backlog before the close: the gateway must not serve it.
                    let _ = s
                        .write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
                        .await;
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out).await;
                    if out.is_empty() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the request in flight"
    );
    release.notify_waiters();
    let r = within("the in-flight response", inflight).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    assert!(
        within("shutdown", shutdown).await.unwrap(),
        "shutdown reported connections left open"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_gateway_keeps_serving() {
    let b = backend("b").await;
    let gw = gateway(&site(&format!("\"{}\"", b.url()), "", "")).await;
    for bad in [
        &b"GET /a%zz HTTP/1.1\r\nHost: app.example.com\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
        b"BLAH\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: x\r\n\r\n",
    ] {
        let out = raw(gw.http(), bad).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} -> {out}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(get(gw.http(), "app.example.com", "/").await.status, 200);
}

#[tokio::test]
async fn one_failing_h2_stream_does_not_break_the_others() {
    let b = backend("ok").await;
    let dead = dead_port().await;
    let gw = gateway(&format!(
        r#"
[server]
http = "127.0.0.1:0"
[[site]]
hosts = ["app.example.com"]
  [[site.route]]
  prefix = "/dead"
  upstream = "http://{dead}"
  [[site.route]]
  prefix = "/"
  upstream = "{}"
"#,
        b.url()
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let port = gw.http().port();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut s = sender.clone();
        let path = if i % 2 == 0 { "/dead" } else { "/ok" };
        tasks.push(tokio::spawn(async move {
            let r = s
                .send_request(
                    http::Request::get(format!("http://app.example.com:{port}{path}"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            (path, r.status().as_u16())
        }));
    }
    for t in tasks {
        let (path, status) = within("an h2 stream", t).await.unwrap();
        assert_eq!(status, if path == "/dead" { 502 } else { 200 }, "{path}");
    }
}
