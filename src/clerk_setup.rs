//! `gatehouse clerk verify | enable | disable`: the last steps of Clerk's proxy guide, from the
//! command line instead of the dashboard.
//!
//! `verify` asks FAPI's health endpoint *through the public proxy URL*, exactly as Clerk's own
//! check does, and explains what to fix when it fails. `enable` and `disable` set the domain's
//! `proxy_url` with the Backend API (`PATCH /v1/domains/{id}`); `enable` refuses when `verify`
//! fails, because Clerk's docs warn that enabling a proxy that does not work yet takes sign-in
//! down. The secret key comes from the environment or a file and is never printed.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    /// The client IP FAPI saw, when it said.
    pub x_forwarded_for: Option<String>,
    /// One line on what happened.
    pub summary: String,
    /// What to do about it.
    pub hints: Vec<String>,
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client() -> Result<HttpsClient, String> {
    let tls = crate::tls::client_config(true, None)?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

async fn call(
    method: Method,
    url: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::builder().method(method).uri(url).header(
        header::USER_AGENT,
        concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
    );
    if let Some(secret) = auth {
        let mut v = header::HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| "the secret key is not a valid header value".to_string())?;
        v.set_sensitive(true);
        req = req.header(header::AUTHORIZATION, v);
    }
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req
        .body(body)
        .map_err(|e| format!("invalid URL {url}: {e}"))?;
    let fut = client()?.request(req);
    let resp = tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .map_err(|_| format!("{url}: no answer within 20s"))?
        .map_err(|e| crate::proxy::error_chain(&e))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

/// `<proxy_url>/v1/proxy-health?domain_id=...`
pub fn health_url(proxy_url: &str, domain_id: Option<&str>) -> String {
    let mut u = format!("{}/v1/proxy-health", proxy_url.trim_end_matches('/'));
    if let Some(d) = domain_id {
        u.push_str("?domain_id=");
        u.push_str(d);
    }
    u
}

/// Checks the proxy the way Clerk does: FAPI's health endpoint, through the public URL.
pub async fn verify(proxy_url: &str, domain_id: Option<&str>) -> Verdict {
    let url = health_url(proxy_url, domain_id);
    match call(Method::GET, &url, None, None).await {
        Err(e) => Verdict {
            healthy: false,
            x_forwarded_for: None,
            summary: format!("cannot reach {url}: {e}"),
            hints: vec![
                "check that the proxy URL's host resolves to this server, that Gatehouse listens on its port, and that a firewall lets it through".into(),
                "for https, check that the site has a certificate for the host (`gatehouse check` lists them)".into(),
            ],
        },
        Ok((status, body)) => judge(&url, status, &body),
    }
}

/// Reads FAPI's answer (pure, for tests).
pub fn judge(url: &str, status: StatusCode, body: &[u8]) -> Verdict {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let xff = json
        .as_ref()
        .and_then(|j| j["x_forwarded_for"].as_str())
        .map(str::to_owned);
    let healthy =
        status == StatusCode::OK && json.as_ref().is_some_and(|j| j["status"] == "healthy");
    let mut hints = Vec::new();
    if healthy {
        if let Some(ip) = xff
            .as_deref()
            .and_then(|x| x.parse::<std::net::IpAddr>().ok())
        {
            let private = match ip {
                std::net::IpAddr::V4(v4) => {
                    v4.is_private() || v4.is_loopback() || v4.is_link_local()
                }
                std::net::IpAddr::V6(v6) => {
                    v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00
                }
            };
            if private {
                hints.push(format!(
                    "FAPI sees the client as {ip}, a private address: if a CDN or load balancer is in front of Gatehouse, add it to server.trusted_proxies so the real client IP is forwarded"
                ));
            }
        }
        return Verdict {
            healthy,
            x_forwarded_for: xff,
            summary: format!("healthy: {url} answered {status}"),
            hints,
        };
    }
    let code = json
        .as_ref()
        .and_then(|j| j["errors"][0]["code"].as_str())
        .map(str::to_owned);
    let message = json
        .as_ref()
        .and_then(|j| {
            j["message"]
                .as_str()
                .or(j["errors"][0]["long_message"].as_str())
                .or(j["errors"][0]["message"].as_str())
        })
        .map(str::to_owned);
    let summary = format!(
        "unhealthy: {url} answered {status}{}",
        message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    );
    match (status.as_u16(), code.as_deref(), &json) {
        (_, Some("host_invalid"), _) => hints.push(
            "FAPI could not tell which instance this is: the proxy URL is not registered yet (run `gatehouse clerk enable`), or the secret key belongs to another instance".into(),
        ),
        (_, _, None) => hints.push(format!(
            "the answer is not from Clerk (status {status}, not JSON): check that the site has a route with prefix = \"/__clerk\" and clerk = true, and that the proxy URL's path is that prefix"
        )),
        (502, Some("proxy_request_failed"), _) => hints.push("Gatehouse could not reach Clerk's Frontend API: check this server's outbound HTTPS and DNS".into()),
        (401 | 403, _, _) => hints.push("FAPI refused the secret key: check CLERK_SECRET_KEY (sk_live_...) for this instance".into()),
        _ => hints.push("see the message above; `journalctl -u gatehouse` shows the proxy's side".into()),
    }
    Verdict {
        healthy: false,
        x_forwarded_for: xff,
        summary,
        hints,
    }
}

/// Where the Backend API is.
pub const DEFAULT_API_URL: &str = "https://api.clerk.com";

/// Sets (or clears, with `None`) the domain's proxy URL.
pub async fn set_proxy_url(
    api_url: &str,
    domain_id: &str,
    secret: &str,
    proxy_url: Option<&str>,
) -> Result<String, String> {
    if domain_id.is_empty() || domain_id.contains(['/', '?', '#']) {
        return Err(format!("`{domain_id}` is not a domain id (dmn_...)"));
    }
    let url = format!("{}/v1/domains/{domain_id}", api_url.trim_end_matches('/'));
    let body = serde_json::json!({ "proxy_url": proxy_url });
    let (status, bytes) = call(Method::PATCH, &url, Some(secret), Some(body)).await?;
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status.is_success() {
        let now = json
            .as_ref()
            .and_then(|j| j["proxy_url"].as_str())
            .unwrap_or("none");
        return Ok(format!("domain {domain_id}: proxy_url is now {now}"));
    }
    let msg = json
        .as_ref()
        .and_then(|j| {
            j["errors"][0]["long_message"]
                .as_str()
                .or(j["errors"][0]["message"].as_str())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
    Err(format!("the Backend API answered {status}: {msg}"))
}

/// The secret key for the Backend API: a file, or `CLERK_SECRET_KEY`.
pub fn secret_key(file: Option<&std::path::Path>) -> Result<String, String> {
    let value = match file {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?
        }
        None => std::env::var("CLERK_SECRET_KEY")
            .map_err(|_| "set CLERK_SECRET_KEY or pass --secret-key-file".to_string())?,
    };
    let v = value.trim().to_owned();
    if v.is_empty() {
        return Err("the secret key is empty".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_url_is_under_the_proxy_url() {
        assert_eq!(
            health_url("https://app.example.com/__clerk/", Some("dmn_1")),
            "https://app.example.com/__clerk/v1/proxy-health?domain_id=dmn_1"
        );
        assert_eq!(
            health_url("https://app.example.com/__clerk", None),
            "https://app.example.com/__clerk/v1/proxy-health"
        );
    }

    #[test]
    fn healthy_answers_are_healthy() {
        let v = judge(
            "u",
            StatusCode::OK,
            br#"{"status":"healthy","x_forwarded_for":"203.0.113.9"}"#,
        );
        assert!(v.healthy);
        assert_eq!(v.x_forwarded_for.as_deref(), Some("203.0.113.9"));
        assert!(v.hints.is_empty());
    }

    #[test]
    fn a_private_client_ip_gets_a_trusted_proxies_hint() {
        let v = judge(
            "u",
            StatusCode::OK,
            br#"{"status":"healthy","x_forwarded_for":"10.1.2.3"}"#,
        );
        assert!(v.healthy);
        assert!(v.hints[0].contains("trusted_proxies"));
    }

    #[test]
    fn host_invalid_says_to_register_the_proxy() {
        let v = judge(
            "u",
            StatusCode::BAD_REQUEST,
            br#"{"errors":[{"code":"host_invalid","message":"unable to attribute"}]}"#,
        );
        assert!(!v.healthy);
        assert!(v.hints[0].contains("gatehouse clerk enable"));
    }

    #[test]
    fn a_non_clerk_answer_says_to_check_the_route() {
        let v = judge("u", StatusCode::NOT_FOUND, b"<html>not found</html>");
        assert!(!v.healthy);
        assert!(v.hints[0].contains("clerk = true"));
    }

    #[test]
    fn an_unhealthy_status_is_reported_with_its_message() {
        let v = judge(
            "u",
            StatusCode::OK,
            br#"{"status":"unhealthy","message":"missing Clerk-Proxy-Url"}"#,
        );
        assert!(!v.healthy);
        assert!(v.summary.contains("missing Clerk-Proxy-Url"));
    }
}
