//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/config`, `POST /reload`.
//!
//! Meant for loopback (the config warns otherwise). Nothing it serves may reveal a secret: the
//! routing table in `/config` names where a Clerk secret comes from (an environment variable or a
//! file), never its value.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::Body;
use crate::config::{TargetConfig, TlsSource};
use crate::gateway::Gateway;

/// Serves the admin endpoint on `listener` until a reload moves it, or for the life of the
/// process: it keeps answering while the gateway drains, so a load balancer sees `/readyz` turn
/// 503.
///
/// Boxed, with its type spelled out: a reload that this endpoint serves can start the endpoint
/// again, and the compiler needs a named type to see that the recursive future is `Send`.
pub fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(accept_loop(listener, gw, metrics))
}

async fn accept_loop(
    listener: TcpListener,
    gw: Arc<Gateway>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let gw = gw.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(route(req, &gw, &metrics).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = text(status, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(
    req: Request<Incoming>,
    gw: &Arc<Gateway>,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if gw.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            // Off the runtime: rendering drains every latency sample since the last upkeep and
            // formats every route's series (10,000 sites: milliseconds), and with one worker
            // this runtime is the one serving requests.
            let (gw, metrics) = (gw.clone(), metrics.clone());
            let rendered = tokio::task::spawn_blocking(move || {
                crate::metrics::flush_all();
                crate::metrics::snapshot_gauges(&gw.shared.load(), &gw.scraped_labels);
                metrics.render()
            })
            .await;
            let rendered = match rendered {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "GET /metrics: rendering failed");
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics rendering failed\n",
                    );
                }
            };
            let mut r = text(StatusCode::OK, rendered);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/config") => json_response(StatusCode::OK, &config_json(gw)),
        (&Method::POST, "/reload") => match crate::reload::apply(gw, "admin").await {
            Ok(report) => json_response(
                StatusCode::OK,
                &json!({
                    "ok": true,
                    "generation": report.generation,
                    "changes": report.to_string(),
                    "millis": report.millis as u64,
                }),
            ),
            Err(e) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({
                    "ok": false,
                    "generation": gw.generation(),
                    "error": e.to_string(),
                }),
            ),
        },
        (_, "/reload") => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
            r.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
            r
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/config") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: GET /healthz, GET /readyz, GET /metrics, GET /config, POST /reload\n",
        ),
    }
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The state of the configuration, with secrets redacted.
pub fn config_json(gw: &Gateway) -> Value {
    let snap = gw.shared.load();
    let c = &snap.config;
    let status = gw.status();
    let sites: Vec<Value> = c
        .sites
        .iter()
        .map(|s| {
            let tls = match &s.tls {
                None => Value::Null,
                Some(TlsSource::SelfSigned) => json!({ "self_signed": true }),
                Some(TlsSource::Files { cert_path, key_path, loaded }) => json!({
                    "cert": cert_path,
                    "key": key_path,
                    "names": loaded.names,
                    "not_after": loaded.not_after_text(),
                }),
            };
            let routes: Vec<Value> = s
                .routes
                .iter()
                .map(|r| {
                    let target = match &r.target {
                        TargetConfig::Upstream(u) => json!({ "upstream": u.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>() }),
                        TargetConfig::Redirect(rd) => json!({ "redirect": { "to": rd.to.as_str(), "status": rd.status.as_u16() } }),
                        TargetConfig::Respond(rs) => json!({ "respond": { "status": rs.status.as_u16() } }),
                        TargetConfig::Clerk(cl) => json!({ "clerk": {
                            "fapi_url": cl.fapi.origin(),
                            "publishable_key": cl.publishable_key,
                            "secret_key": "<redacted>",
                            "public_url": cl.public_url,
                        } }),
                        TargetConfig::Static(st) => json!({ "static": { "root": st.root } }),
                    };
                    json!({
                        "id": r.id,
                        "match": r.matcher.to_string(),
                        "target": target,
                        "strip_prefix": r.options.strip_prefix,
                    })
                })
                .collect();
            json!({
                "name": s.name,
                "hosts": s.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "default": s.default,
                "tls": tls,
                "redirect_https": s.redirect_https.map(|c| c.as_u16()),
                "routes": routes,
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "loaded_at": unix(snap.loaded_at),
        "file": c.path,
        "sha256": c.hash,
        "uptime_seconds": gw.uptime().as_secs(),
        "last_reload_ok": status.last_attempt_ok,
        "last_reload_error": status.last_error,
        "last_reload_error_at": status.last_error_at.map(unix),
        "reloads_failed": status.reloads_failed,
        "listeners": {
            "http": gw.http_addrs(),
            "https": gw.https_addrs(),
        },
        "warnings": c.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        "sites": sites,
    })
}
