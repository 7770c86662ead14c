//! The `static` target: files the way nginx serves a monolith's assets.

mod common;

use common::*;

struct Site {
    gw: Gw,
    root: std::path::PathBuf,
    _outside: tempfile::TempDir,
}

async fn site(extra: &str, fallback: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("public");
    std::fs::create_dir_all(root.join("css")).unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("css/app.css"), "body{}\n").unwrap();
    std::fs::write(root.join("app.js"), "console.log(1)\n").unwrap();
    std::fs::write(root.join("app.js.gz"), b"\x1f\x8bGZ").unwrap();
    std::fs::write(root.join("app.js.br"), b"BR").unwrap();
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(
        root.join("big.bin"),
        (0..=255u8).cycle().take(1 << 20).collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(root.join(".env"), "SECRET=1\n").unwrap();
    std::fs::write(root.join("caf\u{e9}.txt"), "accent\n").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("link.txt")).unwrap();
    let toml = format!(
        r#"
[server]
http = "127.0.0.1:0"
[[site]]
hosts = ["files.test"]
  [[site.route]]
  prefix = "/"
  static = {{ root = "public"{extra} }}
  {fallback}
"#
    );
    let gw = gateway_in(dir, &toml, &[]).await;
    let root = gw.dir.path().join("public");
    Site {
        gw,
        root,
        _outside: outside,
    }
}

async fn fetch(s: &Site, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut r = req("GET", "files.test", path);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send(s.gw.http(), r.body(empty()).unwrap()).await
}

#[tokio::test]
async fn files_are_served_with_their_content_type() {
    let s = site("", "").await;
    let r = fetch(&s, "/css/app.css", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body{}\n");
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("7"));
    let r = fetch(&s, "/caf%C3%A9.txt", &[]).await;
    assert_eq!(r.text(), "accent\n");
}

#[tokio::test]
async fn etag_and_last_modified_give_304s() {
    let s = site("", "").await;
    let r = fetch(&s, "/css/app.css", &[]).await;
    let etag = r.header("etag").unwrap().to_owned();
    let lm = r.header("last-modified").unwrap().to_owned();
    let r = fetch(&s, "/css/app.css", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = fetch(&s, "/css/app.css", &[("if-modified-since", &lm)]).await;
    assert_eq!(r.status, 304);
    let r = fetch(&s, "/css/app.css", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn range_requests_rfc9110_14() {
    let s = site("", "").await;
    let r = fetch(&s, "/big.bin", &[("range", "bytes=256-511")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 256-511/1048576"));
    assert_eq!(r.body.len(), 256);
    assert_eq!(r.body[0], 0);
    assert_eq!(r.body[255], 255);
    let r = fetch(&s, "/big.bin", &[("range", "bytes=-10")]).await;
    assert_eq!(r.body.len(), 10);
    let r = fetch(&s, "/big.bin", &[("range", "bytes=2000000-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1048576"));
    let etag = fetch(&s, "/big.bin", &[])
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    assert_eq!(
        fetch(
            &s,
            "/big.bin",
            &[("range", "bytes=0-0"), ("if-range", &etag)]
        )
        .await
        .status,
        206
    );
    assert_eq!(
        fetch(
            &s,
            "/big.bin",
            &[("range", "bytes=0-0"), ("if-range", "\"stale\"")]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn a_large_file_streams_whole() {
    let s = site("", "").await;
    let r = fetch(&s, "/big.bin", &[]).await;
    assert_eq!(r.body.len(), 1 << 20);
    assert_eq!(
        &r.body[..],
        &std::fs::read(s.root.join("big.bin")).unwrap()[..]
    );
}

#[tokio::test]
async fn head_has_headers_and_no_body() {
    let s = site("", "").await;
    let r = send(
        s.gw.http(),
        req("HEAD", "files.test", "/app.js").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("15"));
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn precompressed_siblings_when_accepted() {
    let s = site("", "").await;
    let r = fetch(&s, "/app.js", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.text(), "BR");
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(r.header("content-type").unwrap().contains("javascript"));
    let r = fetch(&s, "/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let r = fetch(&s, "/app.js", &[]).await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.text(), "console.log(1)\n");
}

#[tokio::test]
async fn directories_serve_their_index_and_never_a_listing() {
    let s = site("", "").await;
    assert_eq!(fetch(&s, "/docs/", &[]).await.text(), "<h1>docs</h1>\n");
    let r = fetch(&s, "/docs", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/docs/"));
    assert_eq!(fetch(&s, "/empty/", &[]).await.status, 404);
}

#[tokio::test]
async fn nothing_outside_the_root_is_ever_served() {
    let s = site("", "").await;
    for path in [
        "/../secret.txt",
        "/css/%2e%2e/%2e%2e/secret.txt",
        "/css%2F..%2F..%2Fsecret.txt",
        "/link.txt",
        "/.env",
        "/css/..%5C..%5Csecret.txt",
    ] {
        let r = fetch(&s, path, &[]).await;
        assert!(r.status == 400 || r.status == 404, "{path}: {}", r.status);
        assert!(
            !r.text().contains("outside") && !r.text().contains("SECRET"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn symlinks_out_of_the_root_are_served_only_when_allowed() {
    let s = site(", allow_symlinks = true", "").await;
    assert_eq!(fetch(&s, "/link.txt", &[]).await.text(), "outside\n");
}

#[tokio::test]
async fn misses_fall_back_to_an_upstream_like_try_files() {
    let app = backend("app").await;
    let s = site(&format!(", fallback = \"{}\"", app.url()), "").await;
    let r = fetch(&s, "/users/42", &[]).await;
    assert_eq!(r.text(), "app");
    assert_eq!(app.last().uri, "/users/42");
    assert_eq!(fetch(&s, "/css/app.css", &[]).await.text(), "body{}\n");
    // A POST never reads a file: it goes to the app.
    let r = send(
        s.gw.http(),
        req("POST", "files.test", "/css/app.css")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.text(), "app");
}

#[tokio::test]
async fn misses_fall_back_to_another_route_by_id() {
    let app = backend("app").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    std::fs::write(dir.path().join("public/a.txt"), "a\n").unwrap();
    let toml = format!(
        "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"files.test\"]\n  [[site.route]]\n  prefix = \"/\"\n  static = {{ root = \"public\", fallback = \"app\" }}\n  [[site.route]]\n  id = \"app\"\n  prefix = \"/__app\"\n  upstream = \"{}\"\n",
        app.url()
    );
    let gw = gateway_in(dir, &toml, &[]).await;
    assert_eq!(get(gw.http(), "files.test", "/a.txt").await.text(), "a\n");
    assert_eq!(get(gw.http(), "files.test", "/missing").await.text(), "app");
}

#[tokio::test]
async fn misses_get_a_fallback_file_like_an_spa_try_files() {
    let s = site(", fallback = \"/docs/index.html\"", "").await;
    // A client-side route: the app shell, with a 200, as `try_files $uri $uri/ /index.html`.
    let r = fetch(&s, "/users/42/edit", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>docs</h1>\n");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    // Files that exist are still themselves.
    assert_eq!(fetch(&s, "/css/app.css", &[]).await.text(), "body{}\n");
}

#[tokio::test]
async fn a_fallback_file_never_stands_in_for_a_forbidden_path_or_a_post() {
    let s = site(", fallback = \"/docs/index.html\"", "").await;
    assert_eq!(fetch(&s, "/.env", &[]).await.status, 404);
    let post = req("POST", "files.test", "/users").body(empty()).unwrap();
    assert_eq!(send(s.gw.http(), post).await.status, 405);
}

#[tokio::test]
async fn a_missing_fallback_file_is_a_404() {
    let s = site(", fallback = \"/gone.html\"", "").await;
    assert_eq!(fetch(&s, "/users/42", &[]).await.status, 404);
}

#[test]
fn a_fallback_file_outside_the_root_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"files.test\"]\n  [[site.route]]\n  prefix = \"/\"\n  static = { root = \"public\", fallback = \"/../etc/passwd\" }\n",
    )
    .unwrap();
    let err = gatehouse::config::load(&path, &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gatehouse.toml:7:"), "{err}");
    assert!(err.contains("is not a file path under root"), "{err}");
}

#[tokio::test]
async fn a_miss_without_fallback_is_404() {
    let s = site("", "").await;
    assert_eq!(fetch(&s, "/nope.css", &[]).await.status, 404);
    assert_eq!(
        send(
            s.gw.http(),
            req("POST", "files.test", "/nope").body(empty()).unwrap()
        )
        .await
        .status,
        405
    );
}

#[tokio::test]
async fn alias_style_routes_strip_their_prefix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/x.css"), "x\n").unwrap();
    let toml = "[server]\nhttp = \"127.0.0.1:0\"\n[[site]]\nhosts = [\"files.test\"]\n  [[site.route]]\n  prefix = \"/static\"\n  static = { root = \"assets\", cache_control = \"public, max-age=86400\" }\n  strip_prefix = true\n";
    let gw = gateway_in(dir, toml, &[]).await;
    let r = get(gw.http(), "files.test", "/static/x.css").await;
    assert_eq!(r.text(), "x\n");
    assert_eq!(r.header("cache-control"), Some("public, max-age=86400"));
}
