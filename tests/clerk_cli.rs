//! `gatehouse clerk verify | enable | disable` against a real gateway, a fake FAPI and a fake
//! Backend API.

mod common;

use std::sync::Arc;

use common::*;
use http::{Request, Response};

const PK: &str = "pk_live_Y2xlcmsuZXhhbXBsZS5jb20k";
const SK: &str = "sk_live_CLI_SECRET_42";

/// A fake FAPI health endpoint that checks the three proxy headers.
async fn fapi() -> Backend {
    backend_with(Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let h = req.headers();
            let ok = h.get("clerk-secret-key").is_some_and(|v| v == SK)
                && h.contains_key("clerk-proxy-url")
                && h.contains_key("x-forwarded-for");
            let body = if ok {
                format!(
                    "{{\"status\":\"healthy\",\"x_forwarded_for\":\"{}\"}}",
                    h["x-forwarded-for"].to_str().unwrap()
                )
            } else {
                "{\"errors\":[{\"code\":\"host_invalid\",\"message\":\"unable to attribute\"}]}"
                    .into()
            };
            Response::builder()
                .status(if ok { 200 } else { 400 })
                .header("content-type", "application/json")
                .body(full(body))
                .unwrap()
        })
    }))
    .await
}

/// A fake Backend API recording PATCH /v1/domains/{id}.
async fn bapi() -> Backend {
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let mut b = backend_with(Arc::new(move |req| {
        let seen = seen2.clone();
        Box::pin(async move {
            let s = record(&seen, req).await;
            if s.header("authorization") != Some(&format!("Bearer {SK}")) {
                return Response::builder().status(401).body(full("{\"errors\":[{\"message\":\"Unauthorized\",\"long_message\":\"Invalid secret key\"}]}")).unwrap();
            }
            let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            Response::new(full(format!("{{\"object\":\"domain\",\"id\":\"dmn_1\",\"proxy_url\":{}}}", v["proxy_url"])))
        })
    }))
    .await;
    b.seen = seen;
    b
}

async fn gatehouse_with_clerk(fapi: &Backend) -> Gw {
    gateway_env(
        &format!(
            "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"127.0.0.1\"]\n  [[site.route]]\n  prefix = \"/__clerk\"\n  clerk = {{ fapi_url = \"{}\" }}\n",
            fapi.url()
        ),
        &[("CLERK_PUBLISHABLE_KEY", PK), ("CLERK_SECRET_KEY", SK)],
    )
    .await
}

async fn run(args: &[&str], secret: Option<&str>) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.arg("clerk").args(args).env_remove("CLERK_SECRET_KEY");
    if let Some(s) = secret {
        cmd.env("CLERK_SECRET_KEY", s);
    }
    let out = within("the clerk command", cmd.output()).await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn verify_reports_healthy_and_the_ip_clerk_saw() {
    let f = fapi().await;
    let gw = gatehouse_with_clerk(&f).await;
    let proxy = format!("http://{}/__clerk", gw.http());
    let (code, out) = run(
        &["verify", "--proxy-url", &proxy, "--domain-id", "dmn_1"],
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("healthy"), "{out}");
    assert!(
        out.contains("x_forwarded_for seen by Clerk: 127.0.0.1"),
        "{out}"
    );
    assert!(
        out.contains("trusted_proxies"),
        "a loopback client IP should get the hint: {out}"
    );
}

#[tokio::test]
async fn verify_explains_a_url_that_does_not_reach_clerk() {
    let app = backend("not clerk").await;
    let (code, out) = run(
        &["verify", "--proxy-url", &format!("{}/__clerk", app.url())],
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        out.contains("unhealthy") && out.contains("clerk = true"),
        "{out}"
    );
    let dead = dead_port().await;
    let (code, out) = run(
        &["verify", "--proxy-url", &format!("http://{dead}/__clerk")],
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        out.contains("cannot reach") && out.contains("fix:"),
        "{out}"
    );
}

#[tokio::test]
async fn enable_verifies_then_patches_the_domain() {
    let f = fapi().await;
    let gw = gatehouse_with_clerk(&f).await;
    let api = bapi().await;
    let proxy = format!("http://{}/__clerk", gw.http());
    let (code, out) = run(
        &[
            "enable",
            "--domain-id",
            "dmn_1",
            "--proxy-url",
            &proxy,
            "--api-url",
            &api.url(),
        ],
        Some(SK),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("proxy_url is now {proxy}")), "{out}");
    assert!(out.contains("NEXT_PUBLIC_CLERK_PROXY_URL"), "{out}");
    assert!(!out.contains(SK));
    let s = api.last();
    assert_eq!(s.method, "PATCH");
    assert_eq!(s.uri, "/v1/domains/dmn_1");
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {SK}").as_str())
    );
    assert_eq!(s.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(v["proxy_url"], proxy);
}

#[tokio::test]
async fn enable_refuses_a_proxy_that_fails_verify_unless_forced() {
    let api = bapi().await;
    let dead = dead_port().await;
    let proxy = format!("http://{dead}/__clerk");
    let (code, out) = run(
        &[
            "enable",
            "--domain-id",
            "dmn_1",
            "--proxy-url",
            &proxy,
            "--api-url",
            &api.url(),
        ],
        Some(SK),
    )
    .await;
    assert_eq!(code, 1);
    assert!(out.contains("--force"), "{out}");
    assert_eq!(
        api.count(),
        0,
        "enable patched the domain after a failed verify"
    );
    let (code, out) = run(
        &[
            "enable",
            "--domain-id",
            "dmn_1",
            "--proxy-url",
            &proxy,
            "--api-url",
            &api.url(),
            "--force",
        ],
        Some(SK),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(api.count(), 1);
}

#[tokio::test]
async fn disable_sets_proxy_url_to_null() {
    let api = bapi().await;
    let (code, out) = run(
        &["disable", "--domain-id", "dmn_1", "--api-url", &api.url()],
        Some(SK),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_slice(&api.last().body).unwrap();
    assert!(v["proxy_url"].is_null(), "{v}");
    assert!(out.contains("proxy_url is now none"), "{out}");
}

#[tokio::test]
async fn a_wrong_secret_is_reported_with_clerks_message_and_no_secret() {
    let api = bapi().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sk");
    std::fs::write(&file, "sk_live_WRONG_ONE\n").unwrap();
    let (code, out) = run(
        &[
            "disable",
            "--domain-id",
            "dmn_1",
            "--api-url",
            &api.url(),
            "--secret-key-file",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        out.contains("401") && out.contains("Invalid secret key"),
        "{out}"
    );
    assert!(!out.contains("WRONG_ONE"));
}

#[tokio::test]
async fn without_a_secret_key_the_commands_say_where_to_put_it() {
    let (code, out) = run(
        &[
            "disable",
            "--domain-id",
            "dmn_1",
            "--api-url",
            "http://127.0.0.1:9",
        ],
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        out.contains("CLERK_SECRET_KEY") && out.contains("--secret-key-file"),
        "{out}"
    );
}
