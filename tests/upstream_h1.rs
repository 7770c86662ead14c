//! The HTTP/1.1 upstream connection (`pool.rs` + `h1.rs`) against raw backends that write exact
//! bytes: body framing, interim responses, keep-alive reuse, replay on a stale connection, and a
//! backend that answers before it has read the request body.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers every request on the connection with `resp`, until the peer closes.
async fn answer_each(mut tcp: TcpStream, resp: &'static [u8]) {
    while read_head(&mut tcp).await.is_some() {
        if tcp.write_all(resp).await.is_err() {
            return;
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (addr, conns) = raw_backend(|_, tcp| answer_each(tcp, OK)).await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    for _ in 0..3 {
        let r = get(gw.http(), "app.example.com", "/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_chunked_response_arrives_whole_and_leaves_the_connection_reusable() {
    let (addr, conns) = raw_backend(|_, mut tcp| async move {
        while read_head(&mut tcp).await.is_some() {
            // Three writes: the decoder must cope with a body that arrives in pieces.
            for part in [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
                b"lo\r\n6;x=y\r\n world\r\n",
                b"0\r\n\r\n",
            ] {
                tcp.write_all(part).await.unwrap();
                tcp.flush().await.unwrap();
            }
        }
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    for _ in 0..2 {
        let r = get(gw.http(), "app.example.com", "/").await;
        assert_eq!(r.text(), "hello world");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_delimited_by_close_is_read_to_the_end_and_its_connection_not_reused() {
    let (addr, conns) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    for _ in 0..2 {
        assert_eq!(
            get(gw.http(), "app.example.com", "/").await.text(),
            "until the end"
        );
    }
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_response_framed_two_ways_is_read_as_chunked_without_its_length_and_not_reused() {
    // RFC 9112 §6.3 rule 3: Transfer-Encoding wins, the Content-Length is not passed on (the
    // client would wait for 100 bytes), and the connection is not trusted with another request.
    let (addr, conns) = raw_backend(|_, tcp| {
        answer_each(
            tcp,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    for _ in 0..2 {
        let r = get(gw.http(), "app.example.com", "/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "abc"));
        assert_ne!(r.header("content-length"), Some("100"));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

/// `app_site` with a `body_timeout` on its route.
fn site_with_body_timeout(upstream: &str, timeout: &str) -> String {
    app_site(upstream).replace(
        "  upstream = ",
        &format!("  body_timeout = \"{timeout}\"\n  upstream = "),
    )
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_given_up_on_after_body_timeout() {
    // nginx's proxy_read_timeout: the backend sends three of ten bytes and then nothing, with
    // its connection open. The client gets the cut-off response and a closed connection.
    let (addr, conns) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        // Hold the connection until the gateway closes it.
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    })
    .await;
    let gw = gateway_one_worker(&site_with_body_timeout(&format!("http://{addr}"), "200ms")).await;
    let out = raw(
        gw.http(),
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    assert_cut_off(&out, 10);
    // The stalled connection was closed, not pooled: the next request opens another.
    let again = raw(
        gw.http(),
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    assert!(!again.ends_with("abcdefghij"), "{again}");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_backend_that_stops_taking_the_request_body_gets_504_after_body_timeout() {
    // nginx's proxy_send_timeout: the backend reads the head and then nothing, while the client
    // keeps sending. Once the buffers between them are full, nothing moves for body_timeout,
    // and the client is told the backend timed out (not that it was slow itself).
    let (addr, _) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        // Hold the connection, reading nothing, until the gateway closes it.
        let _ = tcp.writable().await;
        std::future::pending::<()>().await;
    })
    .await;
    let gw = gateway_one_worker(&site_with_body_timeout(&format!("http://{addr}"), "300ms")).await;
    let tcp = TcpStream::connect(gw.http()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let upload = tokio::spawn(async move {
        let total: usize = 64 << 20;
        let _ = wr
            .write_all(
                format!(
                    "POST /up HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: {total}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        let chunk = vec![b'x'; 65536];
        let mut sent = 0;
        while sent < total {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    let mut head = [0u8; 64];
    let n = within("the 504", rd.read(&mut head)).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 504 "), "{head}");
    upload.abort();
}

#[tokio::test]
async fn a_body_that_keeps_coming_is_never_cut_by_body_timeout() {
    // Ten pieces 100 ms apart (a second in all) under a 500 ms limit: the limit is between two
    // pieces, not on the whole body, with room for a slow machine between pieces.
    let (addr, _) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        tcp.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..10 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            tcp.write_all(b"1\r\nx\r\n").await.unwrap();
        }
        tcp.write_all(b"0\r\n\r\n").await.unwrap();
    })
    .await;
    let gw = gateway_one_worker(&site_with_body_timeout(&format!("http://{addr}"), "500ms")).await;
    let r = get(gw.http(), "app.example.com", "/").await;
    assert_eq!(r.text(), "x".repeat(10));
}

#[tokio::test]
async fn interim_100_and_103_responses_are_skipped() {
    let (addr, _) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp
            .write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            )
            .await;
        let _ = tcp.write_all(OK).await;
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    let r = get(gw.http(), "app.example.com", "/").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
}

#[tokio::test]
async fn conflicting_content_lengths_from_a_backend_are_502() {
    // RFC 9112 §6.3: a response whose length is ambiguous is never passed on.
    let (addr, _) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!")
            .await;
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    assert_eq!(get(gw.http(), "app.example.com", "/").await.status, 502);
}

#[tokio::test]
async fn a_backend_that_is_not_http_is_502() {
    let (addr, _) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    assert_eq!(get(gw.http(), "app.example.com", "/").await.status, 502);
}

/// The first connection answers one request, then reads the next and closes without a word (a
/// backend whose keep-alive timer fired as the request arrived). Later connections answer.
async fn stale_after_one(n: usize, mut tcp: TcpStream) {
    if n > 0 {
        return answer_each(tcp, OK).await;
    }
    read_head(&mut tcp).await;
    tcp.write_all(OK).await.unwrap();
    read_head(&mut tcp).await;
}

#[tokio::test]
async fn an_idempotent_request_is_replayed_once_when_a_reused_connection_dies_unanswered() {
    let (addr, conns) = raw_backend(stale_after_one).await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    assert_eq!(get(gw.http(), "app.example.com", "/1").await.status, 200);
    let r = get(gw.http(), "app.example.com", "/2").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_post_is_not_replayed_when_a_reused_connection_dies_unanswered() {
    // RFC 9110 §9.2.2: the backend may have acted on it.
    let (addr, conns) = raw_backend(stale_after_one).await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    assert_eq!(get(gw.http(), "app.example.com", "/1").await.status, 200);
    let r = send(
        gw.http(),
        req("POST", "app.example.com", "/2")
            .body(Full::new(bytes::Bytes::from_static(b"once")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_backend_that_answers_before_reading_the_body_is_heard() {
    let (addr, _) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        tcp.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
        )
        .await
        .unwrap();
        // Lingering close: read what comes until the gateway lets go.
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    // The client declares 1 MiB and sends 1 KiB: the request body can never be finished, so the
    // 413 can only come through while it is still being sent.
    let mut tcp = TcpStream::connect(gw.http()).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[b'x'; 1024]).await.unwrap();
    let head = within("the early 413", read_head(&mut tcp)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn a_chunked_upload_is_sent_chunked() {
    let b = backend("b").await;
    let gw = gateway_one_worker(&app_site(&b.url())).await;
    let out = raw(
        gw.http(),
        b"POST /up HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = b.last();
    assert_eq!(&seen.body[..], b"abcdefg");
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.header("content-length"), None);
}

#[tokio::test]
async fn a_body_cut_short_by_the_backend_is_not_completed() {
    let (addr, conns) = raw_backend(|n, mut tcp| async move {
        if n > 0 {
            return answer_each(tcp, OK).await;
        }
        read_head(&mut tcp).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .await;
    })
    .await;
    let gw = gateway_one_worker(&app_site(&format!("http://{addr}"))).await;
    let out = raw(
        gw.http(),
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    // The client's connection closes (`raw` reads to the end) with the body short: hyper drops
    // the unflushed head and "abc" with it, or they went out before the cut. Never a complete or
    // padded body, never a hang.
    assert!(out.is_empty() || out.ends_with("\r\n\r\nabc"), "{out}");
    // The broken connection was not pooled: the next request gets a new one.
    assert_eq!(get(gw.http(), "app.example.com", "/").await.text(), "ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}
