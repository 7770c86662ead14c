//! Reload latency: from the moment the routes file is written to the first response served
//! from the new version, over 100 edits (the watcher's debounce included); then the time to
//! reload a 10,000-site file, and request latency while it reloads.
//! `cargo run --release --example bench_reload`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn site(body: &str, extra_sites: usize) -> String {
    let mut s = format!(
        "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"bench.local\"]\n  [[site.route]]\n  prefix = \"/\"\n  respond = {{ body = \"{body}\" }}\n"
    );
    for i in 0..extra_sites {
        s.push_str(&format!("[[site]]\nhosts = [\"site{i}.example.com\"]\n"));
        for r in ["/api", "/static", "/admin", "/auth", "/"] {
            s.push_str(&format!(
                "  [[site.route]]\n  prefix = \"{r}\"\n  upstream = \"http://127.0.0.1:3000\"\n"
            ));
        }
    }
    s
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    gatehouse::tls::install_default_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, site("v0", 0)).unwrap();
    let gw = gatehouse::Gateway::start(gatehouse::Options {
        config_path: path.clone(),
        env: gatehouse::config::process_env(),
        workers: Vec::new(),
    })
    .await
    .expect("start");
    gatehouse::reload::spawn_watcher(gw.clone()).await;
    let addr = gw.http_addrs()[0];
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let get = |client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>| async move {
        let req = http::Request::get(format!("http://{addr}/"))
            .header("host", "bench.local")
            .body(Empty::new())
            .unwrap();
        let r = client.request(req).await.expect("request");
        String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned()
    };
    let mut lat = Vec::new();
    for i in 1..=100 {
        let want = format!("v{i}");
        let t0 = Instant::now();
        std::fs::write(&path, site(&want, 0)).unwrap();
        loop {
            if get(client.clone()).await == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "edit -> first response from the new version, 100 edits: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );

    // 10,000 sites x 5 routes: reload time, and requests meanwhile.
    std::fs::write(&path, site("big0", 10_000)).unwrap();
    let t0 = Instant::now();
    let r = gatehouse::reload::apply(&gw, "bench")
        .await
        .expect("10k reload");
    println!(
        "reload of 10,000 sites x 5 routes: {} ms (wall {} ms)",
        r.millis,
        t0.elapsed().as_millis()
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut quiet = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        get(client.clone()).await;
        quiet.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let stop2 = stop.clone();
    let gw2 = gw.clone();
    let path2 = path.clone();
    let reloader = tokio::spawn(async move {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            std::fs::write(&path2, site(&format!("big{n}"), 10_000)).unwrap();
            let _ = gatehouse::reload::apply(&gw2, "bench").await;
        }
        n
    });
    let mut busy = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        get(client.clone()).await;
        busy.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = reloader.await.unwrap();
    println!(
        "request latency with a 10,000-site table: quiet p50 {:.3} ms p99 {:.3} ms; during {} back-to-back reloads p50 {:.3} ms p99 {:.3} ms",
        pct(&mut quiet, 0.5),
        pct(&mut quiet, 0.99),
        reloads,
        pct(&mut busy, 0.5),
        pct(&mut busy, 0.99)
    );
}
