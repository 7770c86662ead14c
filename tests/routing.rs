//! Sites by Host, routes by path segment, and the non-proxy targets.

mod common;

use common::*;

async fn two_route_gateway() -> (Gw, Backend, Backend, Backend) {
    let api = backend("api").await;
    let app = backend("app").await;
    let admin = backend("admin").await;
    let gw = gateway(&format!(
        r#"
[server]
http = "127.0.0.1:0"

[[site]]
hosts = ["app.example.com", "www.app.example.com"]
  [[site.route]]
  prefix = "/api"
  upstream = "{}"
  [[site.route]]
  prefix = "/admin"
  upstream = "{}"
  [[site.route]]
  prefix = "/"
  upstream = "{}"
"#,
        api.url(),
        admin.url(),
        app.url()
    ))
    .await;
    (gw, api, app, admin)
}

#[tokio::test]
async fn prefix_matches_on_segment_boundaries() {
    let (gw, _api, _app, _admin) = two_route_gateway().await;
    for (path, want) in [
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/x/y", "api"),
        ("/apix", "app"),
        ("/api-v2/x", "app"),
        ("/", "app"),
    ] {
        assert_eq!(
            get(gw.http(), "app.example.com", path).await.text(),
            want,
            "{path}"
        );
    }
}

#[tokio::test]
async fn dot_segments_route_by_the_normalized_path_and_forward_the_original() {
    let (gw, api, _app, admin) = two_route_gateway().await;
    let r = get(gw.http(), "app.example.com", "/api/../admin/users").await;
    assert_eq!(r.text(), "admin");
    assert_eq!(admin.last().uri, "/api/../admin/users");
    assert_eq!(api.count(), 0);
}

#[tokio::test]
async fn encoded_dot_segments_are_resolved_for_routing() {
    let (gw, _api, _app, _admin) = two_route_gateway().await;
    assert_eq!(
        get(gw.http(), "app.example.com", "/api/%2e%2e/admin")
            .await
            .text(),
        "admin"
    );
    assert_eq!(
        get(gw.http(), "app.example.com", "/api/.%2E/admin")
            .await
            .text(),
        "admin"
    );
}

#[tokio::test]
async fn repeated_slashes_are_merged_for_routing() {
    let (gw, _api, _app, _admin) = two_route_gateway().await;
    assert_eq!(
        get(gw.http(), "app.example.com", "//api//x").await.text(),
        "api"
    );
}

#[tokio::test]
async fn a_path_climbing_above_root_is_400() {
    let (gw, api, app, admin) = two_route_gateway().await;
    let r = get(gw.http(), "app.example.com", "/api/../../etc/passwd").await;
    assert_eq!(r.status, 400);
    assert_eq!(api.count() + app.count() + admin.count(), 0);
}

#[tokio::test]
async fn host_matching_ignores_case_port_and_trailing_dot() {
    let (gw, _api, _app, _admin) = two_route_gateway().await;
    for host in [
        "APP.Example.com",
        "app.example.com:8080",
        "app.example.com.",
        "www.app.example.com",
    ] {
        assert_eq!(get(gw.http(), host, "/api").await.text(), "api", "{host}");
    }
}

#[tokio::test]
async fn an_unknown_host_without_default_site_is_404() {
    let (gw, _api, _app, _admin) = two_route_gateway().await;
    let r = get(gw.http(), "other.org", "/").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no site"), "{}", r.text());
}

#[tokio::test]
async fn http11_without_host_is_400() {
    let (gw, _api, _app, _admin) = two_route_gateway().await;
    let out = raw(gw.http(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

async fn hosts_gateway() -> Gw {
    gateway(
        r#"
[server]
http = "127.0.0.1:0"

[[site]]
hosts = ["app.example.com"]
  [[site.route]]
  prefix = "/"
  respond = { body = "app" }

[[site]]
hosts = ["*.example.com"]
  [[site.route]]
  prefix = "/"
  respond = { body = "wild" }

[[site]]
hosts = ["*.preview.example.com"]
  [[site.route]]
  prefix = "/"
  respond = { body = "preview" }

[[site]]
default = true
hosts = ["localhost"]
  [[site.route]]
  prefix = "/"
  respond = { body = "default" }
"#,
    )
    .await
}

#[tokio::test]
async fn an_http10_request_without_host_goes_to_the_default_site() {
    let gw = hosts_gateway().await;
    let out = raw(gw.http(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("default"), "{out}");
}

#[tokio::test]
async fn an_empty_host_is_400_even_with_a_default_site() {
    // RFC 9110 §4.2.1: an `http` URI's host is never empty; nginx answers 400 too. Both HTTP
    // versions, on the fast path and on hyper's (a request with a body).
    let gw = hosts_gateway().await;
    for head in [
        "GET / HTTP/1.1\r\nHost: \r\n\r\n",
        "GET / HTTP/1.0\r\nHost:\r\n\r\n",
        "POST / HTTP/1.1\r\nHost:  \r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let out = raw(gw.http(), head.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{head:?} -> {out}");
        assert!(out.contains("Host header is not valid"), "{out}");
    }
}

#[tokio::test]
async fn exact_host_beats_wildcard() {
    let gw = hosts_gateway().await;
    assert_eq!(get(gw.http(), "app.example.com", "/").await.text(), "app");
}

#[tokio::test]
async fn wildcard_matches_any_depth_and_the_longest_wins() {
    let gw = hosts_gateway().await;
    assert_eq!(get(gw.http(), "www.example.com", "/").await.text(), "wild");
    assert_eq!(get(gw.http(), "a.b.example.com", "/").await.text(), "wild");
    assert_eq!(
        get(gw.http(), "pr-7.preview.example.com", "/").await.text(),
        "preview"
    );
    assert_eq!(
        get(gw.http(), "x.pr-7.preview.example.com", "/")
            .await
            .text(),
        "preview"
    );
}

#[tokio::test]
async fn unclaimed_hosts_go_to_the_default_site() {
    let gw = hosts_gateway().await;
    assert_eq!(get(gw.http(), "example.com", "/").await.text(), "default");
    assert_eq!(get(gw.http(), "127.0.0.1", "/").await.text(), "default");
}

#[tokio::test]
async fn h2_authority_selects_the_site() {
    let gw = hosts_gateway().await;
    let req = http::Request::get(format!(
        "http://pr-1.preview.example.com:{}/",
        gw.http().port()
    ))
    .body(empty())
    .unwrap();
    let r = send_h2c(gw.http(), req).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.text(), "preview");
}

#[tokio::test]
async fn an_h2_request_without_authority_or_host_is_400() {
    // RFC 9113 §8.3.1: an `http` request carries `:authority` or Host; with neither it is not
    // sent to the default site.
    let gw = hosts_gateway().await;
    let req = http::Request::get("/").body(empty()).unwrap();
    let r = send_h2c(gw.http(), req).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("no Host"), "{}", r.text());
}

async fn targets_gateway() -> Gw {
    gateway(
        r#"
[server]
http = "127.0.0.1:0"

[[site]]
hosts = ["old.example.com"]
  [[site.route]]
  exact = "/healthz"
  respond = { status = 200, body = "ok\n" }
  [[site.route]]
  prefix = "/gone"
  respond = { status = 410, body = "{\"gone\":true}", content_type = "application/json" }
  [[site.route]]
  prefix = "/old"
  redirect = { to = "https://new.example.com$request_uri", status = 301 }
  [[site.route]]
  prefix = "/parts"
  redirect = { to = "$scheme://$host/x$path?q=$query" }
  [[site.route]]
  prefix = "/"
  respond = { body = "root" }
"#,
    )
    .await
}

#[tokio::test]
async fn exact_route_wins_over_prefix_and_only_matches_exactly() {
    let gw = targets_gateway().await;
    assert_eq!(
        get(gw.http(), "old.example.com", "/healthz").await.text(),
        "ok\n"
    );
    assert_eq!(
        get(gw.http(), "old.example.com", "/healthz/x").await.text(),
        "root"
    );
}

#[tokio::test]
async fn respond_sets_status_body_and_content_type() {
    let gw = targets_gateway().await;
    let r = get(gw.http(), "old.example.com", "/gone/x").await;
    assert_eq!(r.status, 410);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"gone\":true}");
    let r = get(gw.http(), "old.example.com", "/healthz").await;
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[tokio::test]
async fn redirect_substitutes_request_uri() {
    let gw = targets_gateway().await;
    let r = get(gw.http(), "old.example.com", "/old/a?b=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://new.example.com/old/a?b=1")
    );
}

#[tokio::test]
async fn redirect_substitutes_scheme_host_path_and_query_with_302_default() {
    let gw = targets_gateway().await;
    let r = get(gw.http(), "Old.Example.com:8080", "/parts/z?k=v").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://old.example.com/x/parts/z?q=k=v")
    );
}

#[tokio::test]
async fn head_gets_headers_without_a_body() {
    let gw = targets_gateway().await;
    let r = send(
        gw.http(),
        req("HEAD", "old.example.com", "/healthz")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3"));
    assert!(r.body.is_empty());
}
