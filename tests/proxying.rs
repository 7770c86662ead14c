//! Reverse proxying to app backends: headers, bodies, upgrades, protocols, balancing.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

fn one_route(upstream: &str, extra_server: &str, extra_route: &str) -> String {
    format!(
        r#"
[server]
http = "127.0.0.1:0"
{extra_server}

[[site]]
hosts = ["app.example.com"]
  [[site.route]]
  prefix = "/api"
  upstream = {upstream}
  {extra_route}
  [[site.route]]
  prefix = "/"
  respond = {{ body = "fallthrough" }}
"#
    )
}

#[tokio::test]
async fn host_is_kept_by_default_and_forwarding_headers_set_for_untrusted_peers() {
    let b = backend("b").await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    let r = send(
        gw.http(),
        req("GET", "app.example.com", "/api/x")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("x-real-ip", "6.6.6.6")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let s = b.last();
    assert_eq!(s.header("host"), Some("app.example.com"));
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-host"), Some("app.example.com"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    // One of each: the client's were removed, not kept beside ours.
    for name in [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-host",
        "x-forwarded-proto",
    ] {
        assert_eq!(s.headers.get_all(name).iter().count(), 1, "{name}");
    }
}

#[tokio::test]
async fn a_trusted_peer_extends_the_forwarding_chain() {
    let b = backend("b").await;
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "trusted_proxies = [\"127.0.0.1/32\"]",
        "",
    ))
    .await;
    send(
        gw.http(),
        req("GET", "app.example.com", "/api")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-host", "public.example.com")
            .header("x-forwarded-proto", "https")
            .body(empty())
            .unwrap(),
    )
    .await;
    let s = b.last();
    assert_eq!(s.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(s.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(s.header("x-forwarded-host"), Some("public.example.com"));
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn strip_prefix_removes_the_prefix_and_announces_it() {
    let b = backend("b").await;
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "strip_prefix = true",
    ))
    .await;
    get(gw.http(), "app.example.com", "/api/users?id=1").await;
    let s = b.last();
    assert_eq!(s.uri, "/users?id=1");
    assert_eq!(s.header("x-forwarded-prefix"), Some("/api"));
    get(gw.http(), "app.example.com", "/api").await;
    assert_eq!(b.last().uri, "/");
}

#[tokio::test]
async fn an_upstream_url_path_is_prepended() {
    let b = backend("b").await;
    let gw = gateway(&one_route(
        &format!("\"{}/v2/\"", b.url()),
        "",
        "strip_prefix = true",
    ))
    .await;
    get(gw.http(), "app.example.com", "/api/users").await;
    assert_eq!(b.last().uri, "/v2/users");
}

#[tokio::test]
async fn without_strip_the_original_path_bytes_are_forwarded() {
    let b = backend("b").await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    get(gw.http(), "app.example.com", "/api//a/./b%41?x=%20").await;
    assert_eq!(b.last().uri, "/api//a/./b%41?x=%20");
}

#[tokio::test]
async fn host_upstream_and_literal_policies() {
    let b = backend("b").await;
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "host = \"upstream\"",
    ))
    .await;
    get(gw.http(), "app.example.com", "/api").await;
    assert_eq!(b.last().header("host"), Some(b.addr.to_string().as_str()));
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "host = \"api.internal\"",
    ))
    .await;
    get(gw.http(), "app.example.com", "/api").await;
    assert_eq!(b.last().header("host"), Some("api.internal"));
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let b = backend("b").await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    send(
        gw.http(),
        req("GET", "app.example.com", "/api")
            .header("connection", "keep-alive, X-Private")
            .header("x-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic eA==")
            .header("te", "trailers, gzip")
            .header("x-kept", "1")
            .body(empty())
            .unwrap(),
    )
    .await;
    let s = b.last();
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(s.header(gone).is_none(), "{gone} reached the backend");
    }
    assert_eq!(s.header("te"), Some("trailers"));
    assert_eq!(s.header("x-kept"), Some("1"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let b = backend_with(Arc::new(|_req| {
        Box::pin(async {
            Response::builder()
                .header("connection", "X-Internal")
                .header("x-internal", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-public", "1")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    let r = get(gw.http(), "app.example.com", "/api").await;
    for gone in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(r.header(gone).is_none(), "{gone} reached the client");
    }
    assert_eq!(r.header("x-public"), Some("1"));
}

#[tokio::test]
async fn three_set_cookie_headers_stay_three() {
    let b = backend_with(Arc::new(|_req| {
        Box::pin(async {
            Response::builder()
                .header("set-cookie", "__client=a; Path=/; HttpOnly")
                .header("set-cookie", "__client_uat=1; Path=/")
                .header("set-cookie", "__session=jwt, with comma; Path=/")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    for r in [
        get(gw.http(), "app.example.com", "/api").await,
        send_h2c(
            gw.http(),
            Request::get(format!("http://app.example.com:{}/api", gw.http().port()))
                .body(empty())
                .unwrap(),
        )
        .await,
    ] {
        let cookies: Vec<&str> = r
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            cookies,
            [
                "__client=a; Path=/; HttpOnly",
                "__client_uat=1; Path=/",
                "__session=jwt, with comma; Path=/"
            ]
        );
    }
}

#[tokio::test]
async fn underscore_headers_are_dropped_unless_the_route_allows_them() {
    let b = backend("b").await;
    let request = || {
        req("GET", "app.example.com", "/api")
            .header("x_forwarded_for", "6.6.6.6")
            .header("x-ok", "1")
            .body(empty())
            .unwrap()
    };
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    send(gw.http(), request()).await;
    assert!(b.last().header("x_forwarded_for").is_none());
    assert_eq!(b.last().header("x-ok"), Some("1"));
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "allow_underscore_headers = true",
    ))
    .await;
    send(gw.http(), request()).await;
    assert_eq!(b.last().header("x_forwarded_for"), Some("6.6.6.6"));
}

#[tokio::test]
async fn encoded_slashes_are_refused_unless_the_route_allows_them() {
    let b = backend("b").await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    for path in ["/api/a%2Fb", "/api/a%5cb", "/api/a%00b"] {
        assert_eq!(
            get(gw.http(), "app.example.com", path).await.status,
            400,
            "{path}"
        );
    }
    assert_eq!(b.count(), 0);
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "allow_encoded_slashes = true",
    ))
    .await;
    assert_eq!(
        get(gw.http(), "app.example.com", "/api/a%2Fb").await.status,
        200
    );
    assert_eq!(b.last().uri, "/api/a%2Fb");
}

#[tokio::test]
async fn clerk_headers_from_clients_never_reach_an_app_backend() {
    let b = backend("b").await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    send(
        gw.http(),
        req("GET", "app.example.com", "/api")
            .header("clerk-secret-key", "sk_live_stolen")
            .header("clerk-proxy-url", "https://evil")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(b.last().header("clerk-secret-key").is_none());
    assert!(b.last().header("clerk-proxy-url").is_none());
}

#[tokio::test]
async fn request_and_response_header_operations_apply() {
    let b = backend_with(Arc::new(|_req| {
        Box::pin(async {
            Response::builder()
                .header("server", "internal/1.0")
                .header("x-powered-by", "php")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await;
    let seen = backend("seen").await;
    let _ = seen;
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        r#"response_headers = { set = { "X-Frame-Options" = "DENY" }, remove = ["x-powered-by"] }"#,
    ))
    .await;
    let r = get(gw.http(), "app.example.com", "/api").await;
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("x-powered-by").is_none());
    assert_eq!(r.header("server"), Some("internal/1.0"));

    let rec = backend("rec").await;
    let gw = gateway(&one_route(&format!("\"{}\"", rec.url()), "", r#"request_headers = { set = { "X-App" = "gatehouse" }, add = { "X-Multi" = "2" }, remove = ["x-debug"] }"#)).await;
    send(
        gw.http(),
        req("GET", "app.example.com", "/api")
            .header("x-debug", "1")
            .header("x-multi", "1")
            .body(empty())
            .unwrap(),
    )
    .await;
    let s = rec.last();
    assert_eq!(s.header("x-app"), Some("gatehouse"));
    assert!(s.header("x-debug").is_none());
    let multi: Vec<_> = s.headers.get_all("x-multi").iter().collect();
    assert_eq!(
        multi,
        [HeaderValue::from_static("1"), HeaderValue::from_static("2")]
    );
}

#[tokio::test]
async fn a_route_edit_applies_to_the_forwarding_fields_gatehouse_writes() {
    // Behind a TLS terminator the app must see `https`; the route's edit wins over ours, and
    // the client's own value is still not believed.
    let rec = backend("rec").await;
    let edits =
        r#"request_headers = { set = { "X-Forwarded-Proto" = "https" }, remove = ["x-real-ip"] }"#;
    let gw = gateway(&one_route(&format!("\"{}\"", rec.url()), "", edits)).await;
    send(
        gw.http(),
        req("GET", "app.example.com", "/api")
            .header("x-forwarded-for", "6.6.6.6")
            .body(empty())
            .unwrap(),
    )
    .await;
    let s = rec.last();
    let proto: Vec<_> = s.headers.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(proto, [HeaderValue::from_static("https")]);
    assert!(s.header("x-real-ip").is_none());
    let xff: Vec<_> = s.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff, [HeaderValue::from_static("127.0.0.1")]);
}

#[tokio::test]
async fn round_robin_spreads_requests_over_the_list() {
    let (a, b) = (backend("a").await, backend("b").await);
    let gw = gateway(&one_route(
        &format!("[\"{}\", \"{}\"]", a.url(), b.url()),
        "",
        "",
    ))
    .await;
    let mut bodies = Vec::new();
    for _ in 0..6 {
        bodies.push(get(gw.http(), "app.example.com", "/api").await.text());
    }
    assert_eq!(a.count(), 3, "{bodies:?}");
    assert_eq!(b.count(), 3, "{bodies:?}");
    assert!(
        bodies.windows(2).all(|w| w[0] != w[1]),
        "not alternating: {bodies:?}"
    );
}

#[tokio::test]
async fn a_dead_backend_is_skipped_and_every_request_succeeds() {
    let live = backend("live").await;
    let dead = dead_port().await;
    let gw = gateway(&one_route(
        &format!("[\"http://{dead}\", \"{}\"]", live.url()),
        "",
        "",
    ))
    .await;
    for _ in 0..6 {
        let r = get(gw.http(), "app.example.com", "/api").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "live");
    }
    assert_eq!(live.count(), 6);
}

#[tokio::test]
async fn a_large_body_streams_through_without_buffering() {
    // The backend reports when it has the first chunk; the client sends the rest only then.
    // A gateway that buffered the whole body would deadlock here (and hit the test's time limit).
    let (first_tx, mut first_rx) = mpsc::channel::<()>(1);
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total2 = total.clone();
    let b = backend_with(Arc::new(move |req| {
        let first_tx = first_tx.clone();
        let total = total2.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let mut n = 0u64;
            let mut told = false;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.unwrap().into_data() {
                    n += d.len() as u64;
                    if !told {
                        told = true;
                        let _ = first_tx.send(()).await;
                    }
                }
            }
            total.store(n, std::sync::atomic::Ordering::SeqCst);
            Response::new(full(format!("{n}")))
        })
    }))
    .await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let request = Request::post("/api/upload")
        .header("host", "app.example.com")
        .body(body)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = tokio::spawn(async move { sender.send_request(request).await });
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    within("the backend to see the first chunk", first_rx.recv()).await;
    for _ in 0..15 {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let resp = within("the upload response", resp).await.unwrap().unwrap();
    let r = collect(resp).await;
    assert_eq!(r.text(), (16u64 << 20).to_string());
}

#[tokio::test]
async fn an_h2_upload_that_stops_gets_408_on_its_stream_after_body_timeout() {
    // The same limit as on HTTP/1.1, on hyper's HTTP/2 path: one chunk, then the stream is held
    // open with nothing more. The stream gets 408; the backend never sees the upload end.
    let b = backend("b").await;
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "body_timeout = \"300ms\"",
    ))
    .await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
        .await
        .unwrap();
    let request = Request::post(format!(
        "http://app.example.com:{}/api/up",
        gw.http().port()
    ))
    .body(StreamBody::new(tokio_stream_from(rx)))
    .unwrap();
    let r = send_h2c(gw.http(), request).await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("stopped arriving"), "{}", r.text());
    assert!(b.requests().iter().all(|s| s.body != "first"));
    drop(tx);
}

#[tokio::test]
async fn an_h2_backend_that_stalls_mid_stream_is_cut_off_after_body_timeout() {
    // hyper's client path (`http2 = true`): one frame of a gRPC-style stream, then silence with
    // the stream open. The client gets the frame and then the end of its connection, short.
    let b = backend_h2c(Arc::new(|_req| {
        Box::pin(async {
            use futures_util::StreamExt as _;
            let frames = futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(
                Bytes::from_static(b"first"),
            ))])
            .chain(futures_util::stream::pending::<
                Result<Frame<Bytes>, std::io::Error>,
            >());
            Response::new(BodyExt::boxed(StreamBody::new(frames)))
        })
    }))
    .await;
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "http2 = true\n  body_timeout = \"300ms\"",
    ))
    .await;
    let out = raw(
        gw.http(),
        b"GET /api/stream HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(out.contains("first"), "{out}");
    // Chunked, and never its last chunk: the client can tell the stream did not end.
    assert!(!out.ends_with("0\r\n\r\n"), "{out}");
}

/// An HTTP/2 (h2c) client connection whose streams open with a 16 KiB window: a response body
/// moves on only as fast as the test reads it.
async fn h2c_small_window(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 << 10)
            .initial_connection_window_size(16 << 20)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A GET for `path` on `client`'s connection, to the head of its response.
async fn h2_get(
    client: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    port: u16,
    path: &str,
) -> Response<hyper::body::Incoming> {
    let req = Request::get(format!("http://app.example.com:{port}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    within(path, client.send_request(req)).await.unwrap()
}

#[tokio::test]
async fn an_h2_stream_whose_client_takes_nothing_is_reset_after_body_timeout_and_its_backend_let_go()
 {
    // The client reads the head and none of the body, so the stream's window stays shut after
    // 16 KiB: the gateway waits on the client for that stream alone, with the connection's
    // writes flowing. After the route's body_timeout the stream is reset and the backend's
    // connection closed; the connection's other streams go on.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (closed_tx, mut closed_rx) = mpsc::channel::<()>(1);
    let (addr, _) = raw_backend(move |_, mut tcp| {
        let closed = closed_tx.clone();
        async move {
            read_head(&mut tcp).await;
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n";
            let mut open = tcp.write_all(head).await.is_ok();
            let chunk = vec![0u8; 64 << 10];
            for _ in 0..1024 {
                open = open && tcp.write_all(&chunk).await.is_ok();
            }
            // Cut off mid-write, or (were the buffers that large) all written: either way the
            // gateway's side ends only when it lets go of the response.
            let _ = tcp.read(&mut [0u8; 1]).await;
            let _ = closed.send(()).await;
        }
    })
    .await;
    let gw = gateway(&one_route(
        &format!("\"http://{addr}\""),
        "",
        "body_timeout = \"300ms\"",
    ))
    .await;
    let port = gw.http().port();
    let mut client = h2c_small_window(gw.http()).await;
    let big = h2_get(&mut client, port, "/api/big").await;
    assert_eq!(big.status(), 200);
    let asked = std::time::Instant::now();
    within("the backend's connection closed", closed_rx.recv()).await;
    assert!(
        asked.elapsed() >= std::time::Duration::from_millis(250),
        "let go after {:?}, before body_timeout",
        asked.elapsed()
    );
    // The same connection serves on.
    let other = h2_get(&mut client, port, "/other").await;
    assert_eq!(collect(other).await.text(), "fallthrough");
    // The stalled stream ends in a reset, not in a response that passes for whole.
    let rest = within("the reset stream", big.into_body().collect()).await;
    assert!(rest.is_err(), "the stream ended as if complete");
}

#[tokio::test]
async fn an_h2_client_that_reads_slowly_but_steadily_is_never_reset() {
    // 512 KiB through a 16 KiB window, one frame every 40 ms: about a second in all, under a
    // body_timeout of 300 ms. Each frame taken moves the limit on.
    let b = backend_with(Arc::new(|_req| {
        Box::pin(async { Response::new(full(vec![5u8; 512 << 10])) })
    }))
    .await;
    let gw = gateway(&one_route(
        &format!("\"{}\"", b.url()),
        "",
        "body_timeout = \"300ms\"",
    ))
    .await;
    let mut client = h2c_small_window(gw.http()).await;
    let resp = h2_get(&mut client, gw.http().port(), "/api/slow").await;
    let mut body = resp.into_body();
    let (mut got, started) = (0usize, std::time::Instant::now());
    while let Some(frame) = within("the next frame", body.frame()).await {
        got += frame
            .expect("the stream was reset")
            .into_data()
            .map_or(0, |d| d.len());
        // Pacing the reader, not waiting for an event: the window opens only as it reads.
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    assert_eq!(got, 512 << 10);
    assert!(started.elapsed() > std::time::Duration::from_millis(300));
}

/// An mpsc receiver as a stream of frames.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn a_large_response_streams_back() {
    let b = backend_with(Arc::new(|_req| {
        Box::pin(async { Response::new(full(vec![7u8; 8 << 20])) })
    }))
    .await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    let r = get(gw.http(), "app.example.com", "/api/big").await;
    assert_eq!(r.body.len(), 8 << 20);
    assert!(r.body.iter().all(|&x| x == 7));
}

#[tokio::test]
async fn an_h2c_client_reaches_an_http11_backend_with_a_host_header() {
    let b = backend("b").await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    let r = send_h2c(
        gw.http(),
        Request::post(format!("http://app.example.com:{}/api/x", gw.http().port()))
            .body(Full::new(Bytes::from("hello")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let s = b.last();
    assert_eq!(s.version, http::Version::HTTP_11);
    assert_eq!(
        s.header("host"),
        Some(format!("app.example.com:{}", gw.http().port()).as_str())
    );
    assert_eq!(s.body, "hello");
}

#[tokio::test]
async fn http2_upstreams_are_spoken_to_over_h2c() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let b = backend_h2c(Arc::new(move |req| {
        let seen = seen2.clone();
        Box::pin(async move {
            seen.lock().unwrap().push(req.version());
            Response::new(full("h2"))
        })
    }))
    .await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "http2 = true")).await;
    let r = get(gw.http(), "app.example.com", "/api").await;
    assert_eq!(r.text(), "h2");
    assert_eq!(seen.lock().unwrap().as_slice(), [http::Version::HTTP_2]);
}

#[tokio::test]
async fn websocket_upgrades_are_proxied_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A real WebSocket echo server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let gw = gateway(&one_route(&format!("\"http://{ws_addr}\""), "", "")).await;
    let url = format!("ws://{}/api/socket", gw.http());
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    let mut request = request;
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("app.example.com"));
    let (mut ws, resp) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echo = within("the echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echo, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        within("the binary echo", ws.next()).await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
}

/// A backend that answers `data` then the trailer `grpc-status: 0`, declaring it in `Trailer`
/// (HTTP/1.1 sends declared trailers only, RFC 9110 §6.6.2).
fn trailing_handler() -> Handler {
    Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            drop(req.into_body().collect().await);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"data"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
            Response::builder()
                .header("trailer", "grpc-status")
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        })
    })
}

/// Sends `req` and checks the answer: 200, the body `data`, the trailer `grpc-status: 0`.
async fn expect_data_and_trailers(
    send: impl std::future::Future<Output = hyper::Result<Response<hyper::body::Incoming>>>,
) {
    let resp = within("the response", send).await.unwrap();
    assert_eq!(resp.status(), 200);
    let c = within("the body and trailers", resp.into_body().collect())
        .await
        .expect("the body");
    let trailers = c.trailers().cloned().expect("the trailers");
    assert_eq!(c.to_bytes(), "data");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
}

#[tokio::test]
async fn trailers_reach_an_h2_client_from_an_h2c_upstream() {
    // gRPC: h2 from end to end, its status in the trailers.
    let b = backend_h2c(trailing_handler()).await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "http2 = true")).await;
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://app.example.com/api/pkg.Service/Method")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    expect_data_and_trailers(send.send_request(req)).await;
}

#[tokio::test]
async fn trailers_reach_an_http1_client_that_accepts_them() {
    let b = backend_with(trailing_handler()).await;
    let gw = gateway(&one_route(&format!("\"{}\"", b.url()), "", "")).await;
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = req("GET", "app.example.com", "/api/x")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    expect_data_and_trailers(send.send_request(req)).await;
}
