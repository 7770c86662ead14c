//! Idle HTTP/1.1 keep-alive connections parked as bare sockets (`park.rs`): a parked connection
//! serves its client's next request, is closed at its idle timeout and by shutdown, and leaves
//! the lot when its client goes away. Parking is seen through `gatehouse_parked_connections`,
//! a process-wide gauge, so these tests take turns, and each ends by shutting its gateway down:
//! connections are served on worker runtimes shared by the whole binary, so one left open by a
//! test would otherwise close during the next one and move the gauges under it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(upstream: &str, idle: &str) -> String {
    format!(
        "[server]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nidle_timeout = \"{idle}\"\n\n\
         [[site]]\nhosts = [\"app.example.com\"]\n  [[site.route]]\n  prefix = \"/\"\n  upstream = \"{upstream}\"\n"
    )
}

async fn gauge(admin: SocketAddr, name: &str) -> f64 {
    let m = get(admin, "admin", "/metrics").await.text();
    m.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (polling the admin endpoint) until the gauge `name` reads `n`.
async fn gauge_reaches(admin: SocketAddr, name: &str, n: f64) {
    within(name, async {
        while gauge(admin, name).await != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits until `n` connections are parked.
async fn parked(admin: SocketAddr, n: f64) {
    gauge_reaches(admin, "gatehouse_parked_connections", n).await;
}

/// Shuts the gateway down and waits for its connection tasks, which settles the gauges before the
/// next test takes its turn.
async fn settle(gw: &Gw) {
    assert!(
        within("shutdown", gw.gw.shutdown(Duration::from_secs(10))).await,
        "a connection held the shutdown up"
    );
}

/// A keep-alive client connection to the gateway.
async fn client(addr: SocketAddr) -> SendRequest<http_body_util::Full<bytes::Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A raw connection that has sent one request and read its 200 head (the body, "b", unread).
async fn answered_once(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    request_and_head(&mut tcp).await;
    tcp
}

/// Sends a request on `tcp` and reads its 200 head.
async fn request_and_head(tcp: &mut TcpStream) {
    tokio::io::AsyncWriteExt::write_all(tcp, b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(tcp).await.expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

async fn fetch(
    send: &mut SendRequest<http_body_util::Full<bytes::Bytes>>,
    path: &str,
) -> (u16, String) {
    let r = send
        .send_request(req("GET", "app.example.com", path).body(empty()).unwrap())
        .await
        .expect("the parked connection answers");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_request() {
    let _turn = TURN.lock().await;
    let b = backend("b").await;
    let gw = gateway(&config(&b.url(), "60s")).await;
    let admin = gw.gw.admin_addr().unwrap();
    let mut c = client(gw.http()).await;
    assert_eq!(fetch(&mut c, "/1").await, (200, "b".into()));
    parked(admin, 1.0).await;
    // Still counted as open while parked.
    assert!(gauge(admin, "gatehouse_open_connections").await >= 1.0);
    assert_eq!(fetch(&mut c, "/2").await, (200, "b".into()));
    // And parked again when idle again.
    parked(admin, 1.0).await;
    assert_eq!(fetch(&mut c, "/3").await, (200, "b".into()));
    let uris: Vec<String> = b.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/1", "/2", "/3"]);
    drop(c);
    parked(admin, 0.0).await;
    settle(&gw).await;
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_its_idle_timeout() {
    let _turn = TURN.lock().await;
    let b = backend("b").await;
    let gw = gateway(&config(&b.url(), "1s")).await;
    let admin = gw.gw.admin_addr().unwrap();
    let mut tcp = answered_once(gw.http()).await;
    parked(admin, 1.0).await;
    // The body ("b"), then the close.
    let mut rest = Vec::new();
    within("the idle close", tcp.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b"b");
    parked(admin, 0.0).await;
    settle(&gw).await;
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_the_lot() {
    let _turn = TURN.lock().await;
    let b = backend("b").await;
    let gw = gateway(&config(&b.url(), "60s")).await;
    let admin = gw.gw.admin_addr().unwrap();
    let open_before = gauge(admin, "gatehouse_open_connections").await;
    let mut c = client(gw.http()).await;
    assert_eq!(fetch(&mut c, "/").await, (200, "b".into()));
    parked(admin, 1.0).await;
    drop(c);
    parked(admin, 0.0).await;
    gauge_reaches(admin, "gatehouse_open_connections", open_before).await;
    settle(&gw).await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections() {
    let _turn = TURN.lock().await;
    let b = backend("b").await;
    let gw = gateway(&config(&b.url(), "60s")).await;
    let admin = gw.gw.admin_addr().unwrap();
    let mut tcp = answered_once(gw.http()).await;
    parked(admin, 1.0).await;
    assert!(
        within("shutdown", gw.gw.shutdown(Duration::from_secs(10))).await,
        "a parked connection held the shutdown up"
    );
    let mut rest = Vec::new();
    within("the close", tcp.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b"b");
}

#[tokio::test]
async fn a_connection_that_came_back_is_parked_and_serves_on() {
    let _turn = TURN.lock().await;
    let b = backend("b").await;
    let gw = gateway(&config(&b.url(), "60s")).await;
    let admin = gw.gw.admin_addr().unwrap();
    let mut c = client(gw.http()).await;
    // From its second request on, a connection waits for the next one in its busy state for a
    // while before it is parked.
    for path in ["/1", "/2", "/3"] {
        assert_eq!(fetch(&mut c, path).await, (200, "b".into()));
    }
    parked(admin, 1.0).await;
    for path in ["/4", "/5"] {
        assert_eq!(fetch(&mut c, path).await, (200, "b".into()));
    }
    parked(admin, 1.0).await;
    assert_eq!(fetch(&mut c, "/6").await, (200, "b".into()));
    settle(&gw).await;
}

#[tokio::test]
async fn shutdown_closes_a_connection_waiting_for_its_next_request() {
    let _turn = TURN.lock().await;
    let b = backend("b").await;
    let gw = gateway(&config(&b.url(), "60s")).await;
    let mut tcp = TcpStream::connect(gw.http()).await.unwrap();
    for _ in 0..2 {
        request_and_head(&mut tcp).await;
        let mut body = [0u8; 1];
        within("the body", tcp.read_exact(&mut body)).await.unwrap();
        assert_eq!(&body, b"b");
    }
    // Waiting in its busy state (or parked, on a slow machine): either way shutdown closes it.
    assert!(
        within("shutdown", gw.gw.shutdown(Duration::from_secs(10))).await,
        "an idle connection held the shutdown up"
    );
    let mut rest = Vec::new();
    within("the close", tcp.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}
