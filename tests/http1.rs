//! The client side of HTTP/1.1 (`h1_server.rs`, with hyper taking over a connection at its first
//! request with a body): pipelining, the handover mid-connection, HTTP/1.0 keep-alive rules, and
//! streamed responses, over raw sockets so every byte is seen.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = backend("b").await;
    let gw = gateway(&app_site(&b.url())).await;
    let out = raw(
        gw.http(),
        b"GET /a HTTP/1.1\r\nHost: app.example.com\r\n\r\nGET /b HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 2, "{out}");
    let uris: Vec<String> = b.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/a", "/b"]);
}

#[tokio::test]
async fn a_request_with_a_body_mid_connection_is_served_and_so_is_the_next() {
    // GET (our path), POST (hyper takes the connection from here), GET (hyper).
    let b = backend("b").await;
    let gw = gateway(&app_site(&b.url())).await;
    let out = raw(
        gw.http(),
        b"GET /1 HTTP/1.1\r\nHost: app.example.com\r\n\r\nPOST /2 HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n\r\nhelloGET /3 HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 3, "{out}");
    let seen = b.requests();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/1", "/2", "/3"]);
    assert_eq!(&seen[1].body[..], b"hello");
}

#[tokio::test]
async fn responses_carry_a_date_and_their_length() {
    let b = backend("body").await;
    let gw = gateway(&app_site(&b.url())).await;
    let out = raw(
        gw.http(),
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(out.contains("\r\ndate: "), "{out}");
    assert!(out.contains("\r\ncontent-length: 4\r\n"), "{out}");
    assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nbody"), "{out}");
}

#[tokio::test]
async fn close_wins_over_keep_alive_on_the_wire() {
    // RFC 9112 §9.3: `close` anywhere ends the connection; `raw` reads to the close, so a
    // connection left open would fail this test by timing out.
    let b = backend("b").await;
    let gw = gateway(&app_site(&b.url())).await;
    for head in [
        "GET / HTTP/1.0\r\nHost: app.example.com\r\nConnection: close, keep-alive\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: app.example.com\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let out = raw(gw.http(), head.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{head:?} -> {out}");
        assert!(
            !out.to_ascii_lowercase().contains("connection: keep-alive"),
            "{out}"
        );
    }
}

#[tokio::test]
async fn an_http10_client_is_closed_unless_it_asks_for_keep_alive() {
    // RFC 9112 §9.3: HTTP/1.0 closes by default; `raw` reads to the close, so a connection left
    // open would fail this test by timing out.
    let b = backend("b").await;
    let gw = gateway(&app_site(&b.url())).await;
    let out = raw(
        gw.http(),
        b"GET / HTTP/1.0\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    let mut tcp = TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(b"GET /1 HTTP/1.0\r\nHost: app.example.com\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let head = within("the first response", read_head(&mut tcp))
        .await
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("connection: keep-alive"), "{head}");
    let mut body = [0u8; 1];
    tcp.read_exact(&mut body).await.unwrap();
    tcp.write_all(b"GET /2 HTTP/1.0\r\nHost: app.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within(
        "the second response and the close",
        tcp.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
    assert_eq!(b.count(), 3);
}

/// A backend whose chunked response sends "first", then waits for the test's go before "second".
async fn two_part_backend() -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let go = Arc::new(Mutex::new(Some(go_rx)));
    let (addr, _) = raw_backend(move |_, mut tcp| {
        let go = go.lock().unwrap().take();
        async move {
            read_head(&mut tcp).await;
            tcp.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .unwrap();
            if let Some(go) = go {
                let _ = go.await;
            }
            let _ = tcp.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await;
        }
    })
    .await;
    (addr, go_tx)
}

#[tokio::test]
async fn a_streamed_response_is_chunked_and_never_held_back() {
    let (addr, go) = two_part_backend().await;
    let gw = gateway(&app_site(&format!("http://{addr}"))).await;
    let mut tcp = TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(b"GET /events HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = within("the head", read_head(&mut tcp))
        .await
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // The first piece arrives while the backend still holds the second.
    let mut first = [0u8; 10];
    within("the first piece", tcp.read_exact(&mut first))
        .await
        .unwrap();
    assert_eq!(&first, b"5\r\nfirst\r\n");
    go.send(()).unwrap();
    let mut rest = Vec::new();
    within("the rest", tcp.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(&rest[..], b"6\r\nsecond\r\n0\r\n\r\n");
}

#[tokio::test]
async fn a_streamed_response_to_http10_ends_with_the_close() {
    let (addr, go) = two_part_backend().await;
    go.send(()).unwrap();
    let gw = gateway(&app_site(&format!("http://{addr}"))).await;
    let out = raw(
        gw.http(),
        b"GET / HTTP/1.0\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    let lower = out.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "{out}");
    assert!(lower.contains("connection: close"), "{out}");
    assert!(out.ends_with("\r\n\r\nfirstsecond"), "{out}");
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_refused_and_never_forwarded() {
    // RFC 9112 §3.2: routing on one Host while the backend reads the other would get round
    // host-based rules. Both orders, on the fast path and on hyper's (a request with a body).
    let b = backend("b").await;
    let gw = gateway(&app_site(&b.url())).await;
    for head in [
        "GET / HTTP/1.1\r\nHost: app.example.com\r\nHost: other.example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: other.example.com\r\nhost: app.example.com\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: app.example.com\r\nHost: app.example.com\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let out = raw(gw.http(), head.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{head:?} -> {out}");
        assert!(out.contains("more than one Host header"), "{out}");
    }
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn content_length_beside_chunked_is_ignored_and_the_connection_closed_after() {
    // RFC 9112 §6.1: Transfer-Encoding overrides Content-Length, and the connection closes after
    // the response, so bytes a front proxy framed the other way are never read as a request. The
    // backend gets the body chunked, without the Content-Length.
    let b = backend("b").await;
    let gw = gateway(&app_site(&b.url())).await;
    let out = raw(
        gw.http(),
        b"GET /0 HTTP/1.1\r\nHost: app.example.com\r\n\r\nPOST /1 HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 2, "{out}");
    let seen = b.requests();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/0", "/1"]);
    assert_eq!(&seen[1].body[..], b"abc");
    assert_eq!(seen[1].header("content-length"), None);
}

#[tokio::test]
async fn requests_framed_two_ways_or_not_at_all_are_refused_and_never_forwarded() {
    // RFC 9112 §6.3: a request whose body length cannot be known for certain is answered 400
    // and its connection closed; each head on the fast path's first request and after it.
    let b = backend("b").await;
    let gw = gateway(&app_site(&b.url())).await;
    for framing in [
        "Content-Length: 1\r\nContent-Length: 2\r\n",
        "Content-Length: 1, 2\r\n",
        "Content-Length: +1\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x1\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
    ] {
        for first in ["", "GET /ok HTTP/1.1\r\nHost: app.example.com\r\n\r\n"] {
            let head = format!(
                "{first}POST /bad HTTP/1.1\r\nHost: app.example.com\r\n{framing}\r\nx\r\n\r\n"
            );
            let out = raw(gw.http(), head.as_bytes()).await;
            assert!(out.contains("HTTP/1.1 400 "), "{head:?} -> {out}");
            assert!(!out.contains("200 OK") || !first.is_empty(), "{out}");
        }
    }
    let uris: Vec<String> = b.requests().into_iter().map(|s| s.uri).collect();
    assert!(uris.iter().all(|u| u == "/ok"), "{uris:?}");
}

#[tokio::test]
async fn a_chunked_body_that_breaks_off_is_400_and_never_reaches_the_backend_whole() {
    // A chunk size that is not hex: the body stops there. The backend's request is cut off (no
    // last chunk), the client gets 400 as from nginx (the client's fault, not the backend's: no
    // upstream error is counted), and its connection is closed rather than read on from the
    // middle of a body.
    let (addr, got_rx) = swallowing_backend().await;
    let gw = gateway(&app_site(&format!("http://{addr}"))).await;
    let out = raw(
        gw.http(),
        b"POST /1 HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nGET /2 HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("cut short or malformed"), "{out}");
    assert_eq!(count(&out, "HTTP/1.1 "), 1, "{out}");
    let got = within("the backend's side to close", got_rx).await.unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("POST /1 "), "{got}");
    assert!(!got.ends_with("0\r\n\r\n"), "{got}");
    assert!(!got.contains("GET /2"), "{got}");
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_after_body_timeout() {
    // nginx's client_body_timeout: three of ten bytes, then nothing. The answer is 408 and the
    // connection is closed (the rest of the body would otherwise be read as a request); the
    // backend never gets the whole body.
    let (addr, got_rx) = swallowing_backend().await;
    let toml = app_site(&format!("http://{addr}")).replace(
        "http = \"127.0.0.1:0\"",
        "http = \"127.0.0.1:0\"\nbody_timeout = \"200ms\"",
    );
    let gw = gateway(&toml).await;
    let mut tcp = TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(b"POST /up HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut out = Vec::new();
    within("the 408 and the close", tcp.read_to_end(&mut out))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(out.contains("stopped arriving"), "{out}");
    let got = within("the backend's side to close", got_rx).await.unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("POST /up "), "{got}");
    let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(body.len() < 10, "{got}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_body_timeout() {
    // nginx's send_timeout: the backend offers 1 GiB, the client reads none of it. Once the
    // buffers between them are full, the gateway waits body_timeout for the client, then closes
    // both sides; the backend sees its write fail.
    let (failed_tx, failed_rx) = oneshot::channel::<()>();
    let failed_tx = Arc::new(Mutex::new(Some(failed_tx)));
    let (addr, _) = raw_backend(move |_, mut tcp| {
        let failed_tx = failed_tx.clone();
        async move {
            read_head(&mut tcp).await;
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n".to_vec();
            out.resize(out.len() + 65536, b'x');
            let mut sent = 0usize;
            while sent < 1 << 30 {
                match tcp.write(&out).await {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
                out.truncate(65536);
            }
            if let Some(tx) = failed_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    })
    .await;
    let toml = app_site(&format!("http://{addr}")).replace(
        "http = \"127.0.0.1:0\"",
        "http = \"127.0.0.1:0\"\nbody_timeout = \"300ms\"",
    );
    let gw = gateway(&toml).await;
    let mut tcp = TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(b"GET /big HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        .await
        .unwrap();
    within("the backend's write to fail", failed_rx)
        .await
        .unwrap();
    // What was buffered on the way is there to read, and then the connection ends, short.
    let mut got = Vec::new();
    let _ = within("the close", tcp.read_to_end(&mut got)).await;
    assert!(got.len() < 1 << 30, "{}", got.len());
}

#[tokio::test]
async fn a_connection_over_max_connections_waits_for_one_to_close() {
    let b = backend("b").await;
    let toml = app_site(&b.url()).replace(
        "http = \"127.0.0.1:0\"",
        "http = \"127.0.0.1:0\"\nmax_connections = 1",
    );
    let gw = gateway(&toml).await;
    let get = b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n";
    let mut first = TcpStream::connect(gw.http()).await.unwrap();
    first.write_all(get).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within("the first answer", first.read(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    // The kernel completes the second handshake; Gatehouse does not take the connection while
    // the first one is open.
    let mut second = TcpStream::connect(gw.http()).await.unwrap();
    second.write_all(get).await.unwrap();
    assert_not_answered(&mut second).await;

    drop(first);
    let n = within("the second answer", second.read(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}
