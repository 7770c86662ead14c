//! The admin endpoint, Prometheus metrics and the access log.

mod common;

use std::time::Duration;

use common::*;

/// `upstream` is a TOML value: `"http://..."` or `["http://...", ...]`.
fn site(name: &str, upstream: &str, log: &str) -> String {
    format!(
        r#"
[server]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
{log}

[[site]]
name = "{name}"
hosts = ["{name}.test"]
  [[site.route]]
  id = "{name}-api"
  prefix = "/api"
  upstream = {upstream}
  [[site.route]]
  id = "{name}-root"
  prefix = "/"
  respond = {{ status = 404, body = "nope" }}
"#
    )
}

fn q(s: &str) -> String {
    format!("\"{s}\"")
}

/// The value of one sample line of the Prometheus text, found by metric name and label fragments.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes until `ready` holds: a request's metrics are recorded as its response body ends,
/// which can be a moment after the client has read the last byte.
async fn scrape_until(gw: &Gw, ready: impl Fn(&str) -> bool) -> String {
    within("the expected metrics", async {
        loop {
            let m = scrape(gw).await;
            if ready(&m) {
                return m;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

async fn scrape(gw: &Gw) -> String {
    let r = get(gw.gw.admin_addr().unwrap(), "admin", "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    r.text()
}

#[tokio::test]
async fn a_client_body_that_breaks_off_is_counted_as_a_4xx_and_not_against_the_backend() {
    // The backend reads the request until the gateway gives up on it, and never answers.
    let (addr, _got) = swallowing_backend().await;
    let up = format!("http://{addr}");
    let gw = gateway(&site("metrics7", &q(&up), "")).await;
    let out = raw(
        gw.http(),
        b"POST /api HTTP/1.1\r\nHost: metrics7.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    let m = scrape_until(&gw, |m| {
        sample(
            m,
            "gatehouse_requests_total",
            &["site=\"metrics7\"", "status=\"4xx\""],
        ) == Some(1.0)
    })
    .await;
    let label = format!("upstream=\"{up}\"");
    assert_eq!(
        sample(&m, "gatehouse_upstream_errors_total", &[&label]),
        None,
        "{m}"
    );
}

#[tokio::test]
async fn a_backend_body_that_breaks_off_is_counted_against_the_backend() {
    // Ten bytes promised, three sent, then the backend closes: the client's response is cut off
    // (its head was sent), and the backend gets an error of kind `body`.
    let (addr, _) = raw_backend(|_, mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tokio::io::AsyncWriteExt::write_all(
            &mut tcp,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        )
        .await;
    })
    .await;
    let up = format!("http://{addr}");
    let gw = gateway(&site("metrics8", &q(&up), "")).await;
    let out = raw(
        gw.http(),
        b"GET /api HTTP/1.1\r\nHost: metrics8.test\r\n\r\n",
    )
    .await;
    assert_cut_off(&out, 10);
    let label = format!("upstream=\"{up}\"");
    // Both are recorded as the response ends, which can be a moment after the client saw it.
    scrape_until(&gw, |m| {
        sample(
            m,
            "gatehouse_upstream_errors_total",
            &[&label, "kind=\"body\""],
        ) == Some(1.0)
            && sample(m, "gatehouse_requests_total", &["site=\"metrics8\""]) == Some(1.0)
    })
    .await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn latency_samples_are_drained_on_a_thread_of_their_own() {
    // The exporter's histograms keep every sample until they are drained; the drain runs on a
    // thread named for it, not on a runtime that serves connections (bench/README.md, p99.9).
    let _gw = gateway(&site("metrics9", "\"http://127.0.0.1:9\"", "")).await;
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    // The kernel keeps 15 bytes of a thread's name.
    assert!(names.iter().any(|n| n == "gatehouse-metri"), "{names:?}");
}

#[tokio::test]
async fn request_counters_and_histograms_by_site_route_method_and_status() {
    let b = backend("b").await;
    let gw = gateway(&site("metrics1", &q(&b.url()), "")).await;
    for _ in 0..5 {
        assert_eq!(get(gw.http(), "metrics1.test", "/api/x").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            send(
                gw.http(),
                req("POST", "metrics1.test", "/api/y")
                    .body(http_body_util::Full::new(bytes::Bytes::from("12345")))
                    .unwrap()
            )
            .await
            .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(get(gw.http(), "metrics1.test", "/other").await.status, 404);
    }
    let m = scrape_until(&gw, |m| {
        sample(m, "gatehouse_requests_total", &["route=\"metrics1-root\""]) == Some(2.0)
            && sample(
                m,
                "gatehouse_requests_total",
                &["route=\"metrics1-api\"", "method=\"POST\""],
            ) == Some(3.0)
    })
    .await;
    let l = |route: &str, method: &str, status: &str| {
        [
            format!("route=\"{route}\""),
            format!("method=\"{method}\""),
            format!("status=\"{status}\""),
            "site=\"metrics1\"".to_string(),
        ]
    };
    let get2xx = l("metrics1-api", "GET", "2xx");
    let refs: Vec<&str> = get2xx.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        sample(&m, "gatehouse_requests_total", &refs),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gatehouse_request_duration_seconds_count", &refs),
        Some(5.0)
    );
    let post = l("metrics1-api", "POST", "2xx");
    let refs: Vec<&str> = post.iter().map(|s| s.as_str()).collect();
    assert_eq!(sample(&m, "gatehouse_requests_total", &refs), Some(3.0));
    let nf = l("metrics1-root", "GET", "4xx");
    let refs: Vec<&str> = nf.iter().map(|s| s.as_str()).collect();
    assert_eq!(sample(&m, "gatehouse_requests_total", &refs), Some(2.0));
    assert_eq!(
        sample(
            &m,
            "gatehouse_request_bytes_total",
            &["route=\"metrics1-api\""]
        ),
        Some(15.0)
    );
    // 8 responses of "b" (1 byte) from the backend + 2 of "nope" (4 bytes).
    assert_eq!(
        sample(
            &m,
            "gatehouse_response_bytes_total",
            &["route=\"metrics1-api\""]
        ),
        Some(8.0)
    );
    assert_eq!(
        sample(
            &m,
            "gatehouse_response_bytes_total",
            &["route=\"metrics1-root\""]
        ),
        Some(8.0)
    );
}

#[tokio::test]
async fn labels_never_carry_raw_paths_or_hosts() {
    let b = backend("b").await;
    let gw = gateway(&site("metrics2", &q(&b.url()), "")).await;
    get(gw.http(), "metrics2.test", "/api/secret-path-123").await;
    get(gw.http(), "unknown-host-xyz.test", "/whatever-456").await;
    let m = scrape(&gw).await;
    assert!(
        !m.contains("secret-path-123")
            && !m.contains("whatever-456")
            && !m.contains("unknown-host-xyz"),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "gatehouse_requests_total",
            &["route=\"-\"", "status=\"4xx\""]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn upstream_errors_and_backend_health_are_exported() {
    let live = backend("live").await;
    let dead = dead_port().await;
    let gw = gateway(&site(
        "metrics3",
        &format!("[\"http://{dead}\", \"{}\"]", live.url()),
        "",
    ))
    .await;
    assert_eq!(get(gw.http(), "metrics3.test", "/api").await.status, 200);
    let live_active = format!("upstream=\"{}\"", live.url());
    let m = scrape_until(&gw, |m| {
        sample(m, "gatehouse_upstream_active_requests", &[&live_active]) == Some(0.0)
    })
    .await;
    let dead_label = format!("upstream=\"http://{dead}\"");
    assert_eq!(
        sample(
            &m,
            "gatehouse_upstream_errors_total",
            &[&dead_label, "kind=\"refused\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gatehouse_backend_up", &[&dead_label]),
        Some(0.0)
    );
    let live_label = format!("upstream=\"{}\"", live.url());
    assert_eq!(
        sample(&m, "gatehouse_backend_up", &[&live_label]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "gatehouse_upstream_open_connections", &[&live_label]),
        Some(1.0),
        "the pooled connection"
    );
    assert_eq!(
        sample(&m, "gatehouse_upstream_active_requests", &[&live_label]),
        Some(0.0)
    );
}

/// Each worker tallies its requests and hands the tally over at a scrape or when its route goes
/// away: requests served by a route that a reload replaced, and never scraped before, still count.
#[tokio::test]
async fn requests_counted_before_a_reload_are_not_lost() {
    let b = backend("b").await;
    let gw = gateway(&site("metrics6", &q(&b.url()), "")).await;
    for _ in 0..3 {
        assert_eq!(get(gw.http(), "metrics6.test", "/api/x").await.status, 200);
    }
    std::fs::write(&gw.path, site("metrics6", &q(&b.url()), "") + "# changed\n").unwrap();
    gw.gw.reload().await.unwrap();
    assert_eq!(get(gw.http(), "metrics6.test", "/api/x").await.status, 200);
    scrape_until(&gw, |m| {
        sample(m, "gatehouse_requests_total", &["route=\"metrics6-api\""]) == Some(4.0)
    })
    .await;
}

/// Requests in flight are counted by each worker on its own and added up when /metrics is read:
/// the sum must show a held request, on whichever worker it runs, and go back to 0 after it.
#[tokio::test]
async fn a_request_in_flight_is_counted_until_its_response_ends() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let b = backend_with(std::sync::Arc::new(move |_req| {
        let mut release = release_rx.clone();
        Box::pin(async move {
            let _ = release.wait_for(|r| *r).await;
            http::Response::new(full("late"))
        })
    }))
    .await;
    let gw = gateway(&site("metrics5", &q(&b.url()), "")).await;
    let label = format!("upstream=\"{}\"", b.url());
    let addr = gw.http();
    let held = tokio::spawn(async move { get(addr, "metrics5.test", "/api/held").await });
    scrape_until(&gw, |m| {
        sample(m, "gatehouse_upstream_active_requests", &[&label]) == Some(1.0)
    })
    .await;
    release_tx.send_replace(true);
    assert_eq!(held.await.unwrap().text(), "late");
    scrape_until(&gw, |m| {
        sample(m, "gatehouse_upstream_active_requests", &[&label]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn config_gauges_and_connection_gauges() {
    let b = backend("b").await;
    let gw = gateway(&site("metrics4", &q(&b.url()), "")).await;
    // One keep-alive connection held open while we scrape.
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (mut s, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    s.send_request(req("GET", "metrics4.test", "/api").body(empty()).unwrap())
        .await
        .unwrap();
    let m = scrape(&gw).await;
    assert!(
        sample(
            &m,
            "gatehouse_open_connections",
            &["listener=\"http\"", "protocol=\"h1\""]
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    assert!(sample(&m, "gatehouse_config_generation", &[]).unwrap() >= 1.0);
    assert!(
        m.contains("# HELP gatehouse_requests_total"),
        "metrics are not described"
    );
    drop(s);
}

#[tokio::test]
async fn readiness_is_true_when_serving_and_false_while_draining() {
    let b = backend("b").await;
    let gw = gateway(&site("ready1", &q(&b.url()), "")).await;
    let admin = gw.gw.admin_addr().unwrap();
    assert_eq!(get(admin, "admin", "/healthz").await.text(), "ok\n");
    assert_eq!(get(admin, "admin", "/readyz").await.status, 200);
    // Hold a request in flight so the drain takes a while, then start shutting down.
    let hold = std::sync::Arc::new(tokio::sync::Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let hold2 = hold.clone();
    let slow = backend_with(std::sync::Arc::new(move |_r| {
        let hold = hold2.clone();
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(()).await;
            hold.notified().await;
            http::Response::new(full("done"))
        })
    }))
    .await;
    std::fs::write(&gw.path, site("ready1", &q(&slow.url()), "")).unwrap();
    gw.gw.reload().await.unwrap();
    let addr = gw.http();
    let inflight = tokio::spawn(async move { get(addr, "ready1.test", "/api").await });
    within("the request to arrive", rx.recv()).await;
    let g = gw.gw.clone();
    let shutdown = tokio::spawn(async move { g.shutdown(Duration::from_secs(10)).await });
    within("readyz to turn 503", async {
        loop {
            if get(admin, "admin", "/readyz").await.status == 503 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    hold.notify_waiters();
    assert_eq!(within("in flight", inflight).await.unwrap().text(), "done");
    assert!(within("shutdown", shutdown).await.unwrap());
}

#[tokio::test]
async fn config_shows_generation_hash_routes_and_no_secret() {
    let gw = gateway_env(
        r#"
[server]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[[site]]
hosts = ["app.test"]
  [[site.route]]
  prefix = "/__clerk"
  clerk = true
  [[site.route]]
  prefix = "/"
  respond = {}
"#,
        &[
            ("CLERK_SECRET_KEY", "sk_live_TOPSECRET123"),
            ("CLERK_PUBLISHABLE_KEY", "pk_live_Y2xlcmsuZXhhbXBsZS5jb20k"),
        ],
    )
    .await;
    let admin = gw.gw.admin_addr().unwrap();
    let r = get(admin, "admin", "/config").await;
    assert!(!r.text().contains("TOPSECRET"), "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(v["loaded_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        v["sites"][0]["routes"][0]["target"]["clerk"]["secret_key"],
        "<redacted>"
    );
    assert_eq!(
        v["sites"][0]["routes"][0]["target"]["clerk"]["fapi_url"],
        "https://frontend-api.clerk.dev"
    );
    let m = get(admin, "admin", "/metrics").await;
    assert!(!m.text().contains("TOPSECRET"));
}

#[tokio::test]
async fn access_log_combined_line_per_request_with_every_field() {
    let b = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = site(
        "alog1",
        &q(&b.url()),
        &format!("[log]\naccess_log = \"{}\"", log.display()),
    );
    let gw = gateway_in(dir, &toml, &[]).await;
    let r = send(
        gw.http(),
        req("POST", "alog1.test", "/api/items?token=SECRET")
            .header("user-agent", "test-agent/1.0")
            .header("referer", "https://ref.test/")
            .header("cookie", "session=COOKIEVALUE")
            .header("authorization", "Bearer AUTHVALUE")
            .body(http_body_util::Full::new(bytes::Bytes::from("hello")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    get(gw.http(), "alog1.test", "/missing").await;
    let text = wait_lines(&log, 2).await;
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.contains(
            "\"POST /api/items HTTP/1.1\" 200 1 \"https://ref.test/\" \"test-agent/1.0\""
        ),
        "{first}"
    );
    for f in [
        "host=alog1.test",
        "in=5",
        "rt=",
        "site=alog1",
        "route=alog1-api",
        &format!("upstream={}", b.url()),
        "gen=1",
    ] {
        assert!(first.contains(f), "{f} missing in {first}");
    }
    assert!(
        !text.contains("SECRET") && !text.contains("COOKIEVALUE") && !text.contains("AUTHVALUE"),
        "{text}"
    );
    let second = text.lines().nth(1).unwrap();
    assert!(
        second.contains("\"GET /missing HTTP/1.1\" 404 4"),
        "{second}"
    );
}

#[tokio::test]
async fn access_log_json_lines_parse_and_carry_the_fields() {
    let b = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let toml = site(
        "alog2",
        &q(&b.url()),
        &format!(
            "[log]\naccess_log = \"{}\"\naccess_log_format = \"json\"\naccess_log_query = true",
            log.display()
        ),
    );
    let gw = gateway_in(dir, &toml, &[]).await;
    get(gw.http(), "alog2.test", "/api/x?page=2").await;
    let text = wait_lines(&log, 1).await;
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["host"], "alog2.test");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/api/x?page=2");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_out"], 1);
    assert_eq!(v["site"], "alog2");
    assert_eq!(v["route"], "alog2-api");
    assert_eq!(v["upstream"], b.url());
    assert_eq!(v["generation"], 1);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn access_log_client_ip_is_resolved_through_trusted_proxies() {
    let b = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = site(
        "alog3",
        &q(&b.url()),
        &format!(
            "trusted_proxies = [\"127.0.0.1\"]\n[log]\naccess_log = \"{}\"",
            log.display()
        ),
    );
    let gw = gateway_in(dir, &toml, &[]).await;
    send(
        gw.http(),
        req("GET", "alog3.test", "/api")
            .header("x-forwarded-for", "198.51.100.4")
            .body(empty())
            .unwrap(),
    )
    .await;
    let text = wait_lines(&log, 1).await;
    assert!(text.starts_with("198.51.100.4 - - ["), "{text}");
}

/// Waits until the log file has `n` lines (the writer is asynchronous).
async fn wait_lines(path: &std::path::Path, n: usize) -> String {
    within("access log lines", async {
        loop {
            if let Ok(t) = tokio::fs::read_to_string(path).await {
                if t.lines().count() >= n {
                    return t;
                }
            }
            // Polling the file's content until the writer task has flushed it.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

#[tokio::test]
async fn tls_handshakes_and_failures_are_counted_by_reason() {
    let gw = gateway(
        r#"
[server]
https = "127.0.0.1:0"
admin = "127.0.0.1:0"
[[site]]
hosts = ["tlsmetrics.test"]
tls = "self-signed"
  [[site.route]]
  prefix = "/"
  respond = { body = "ok" }
"#,
    )
    .await;
    let ok = tls_connect(
        gw.https(),
        common::pki::capture_config(&[b"http/1.1"]),
        Some("tlsmetrics.test"),
    )
    .await
    .unwrap();
    drop(ok);
    assert!(
        tls_connect(
            gw.https(),
            common::pki::capture_config(&[]),
            Some("nobody.test")
        )
        .await
        .is_err()
    );
    // The server counts a handshake once it has the client's Finished, and a failure right
    // after sending the alert: both can come after the client is done, so wait for the counts.
    let failed = |m: &str| {
        sample(
            m,
            "gatehouse_tls_handshake_failures_total",
            &["reason=\"unrecognized_name\""],
        )
        .unwrap_or(0.0)
    };
    let ok = |m: &str| {
        sample(
            m,
            "gatehouse_tls_handshakes_total",
            &["protocol=\"http/1.1\""],
        )
        .unwrap_or(0.0)
    };
    let m = within("the handshake counters", async {
        loop {
            let m = scrape(&gw).await;
            if failed(&m) >= 1.0 && ok(&m) >= 1.0 {
                return m;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let left = sample(
        &m,
        "gatehouse_certificate_expiry_seconds",
        &["site=\"tlsmetrics.test\""],
    )
    .unwrap_or(0.0);
    assert!(left > 86400.0, "{m}");
}
