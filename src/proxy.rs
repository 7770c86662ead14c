//! The request path, as one straight line: host → site → path → route → target → response fixups.
//!
//! [`serve`] is the hyper service of every connection. It loads the current snapshot once, runs
//! [`handle`], turns any [`ProxyError`] into a short response (one log line), and hooks the
//! response body's end to the connection's idle tracking. It never returns an error to hyper.
//!
//! The upstream call itself ([`forward`]) is shared by app routes and the Clerk route: backend
//! choice and failover, the response timeout (which starts once the request body is fully sent,
//! so a slow upload is not a slow backend), a backend that stops taking the body
//! (`body_timeout`), and error classification: a request body that fails on the client's side
//! is the client's error (400, 408), never counted against the backend.
//!
//! This module must not parse config or hold state across requests; it reads the snapshot.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::body::{Body, ReqBody, RequestBodyStats, UpstreamBody, UpstreamUsed};
use crate::config::HostPolicy;
use crate::error::ProxyError;
use crate::headers::{self, Hop};
use crate::metrics::{ConnGauge, ConnProtocol};
use crate::router::normalize_host;
use crate::server::{Activity, ActivityGuard};
use crate::state::{Route, Shared, Snapshot, Target};
use crate::template::Vars;
use crate::upstream::{Backend, FailureKind, Upstream, classify};

/// What the proxy knows about the connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The TLS server name, lowercased, when the client sent one.
    pub sni: Option<Box<str>>,
    /// The peer's address as text, for `X-Forwarded-For` and `X-Real-IP`.
    pub peer_text: crate::headers::IpText,
    /// In the connection's one allocation (a separate `Arc` was one more per connection).
    pub activity: Activity,
    /// Counts this connection in `gatehouse_open_connections` from its first request (when its
    /// protocol is known) until it closes.
    pub gauge: std::sync::OnceLock<ConnGauge>,
}

impl ConnInfo {
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Per-request facts computed once and shared by every step.
pub(crate) struct Ctx<'a> {
    pub conn: &'a ConnInfo,
    pub snap: &'a Snapshot,
    /// The Host (or `:authority`) as the client sent it, port included.
    pub host: &'a HeaderValue,
    /// The host name lowercased, without port (borrowed from `host` unless it had capitals).
    pub host_name: Cow<'a, str>,
    pub client_ip: IpAddr,
    pub peer_trusted: bool,
}

impl Ctx<'_> {
    pub fn host_str(&self) -> &str {
        self.host.to_str().unwrap_or("")
    }

    pub fn hop(&self) -> Hop<'_> {
        Hop {
            peer: self.conn.peer.ip(),
            peer_text: self.conn.peer_text.as_str(),
            peer_trusted: self.peer_trusted,
            client_ip: self.client_ip,
            proto: self.conn.scheme(),
            host: self.host,
        }
    }
}

/// The hyper service: never fails, always answers.
///
/// It borrows the connection and the shared state rather than taking a reference count of each:
/// the HTTP/1.1 fast path awaits it in place, and a count on `Shared` is a write every worker
/// makes to one cache line per request (see [`crate::worker`]).
///
/// Written as a function that returns an `async move` block, as are the other functions on the
/// request path, rather than as an `async fn`: an `async fn` keeps its arguments in its state
/// twice (rust-lang/rust#62958), and these states are built and moved once per request at each
/// level of calls (callgrind: 490 instructions fewer per small request, futures 10-25% smaller).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
pub fn serve<'a>(
    req: Request<ReqBody>,
    conn: &'a Arc<ConnInfo>,
    shared: &'a Shared,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + 'a {
    async move {
        let guard = ActivityGuard::begin(conn);
        let started = Instant::now();
        conn.gauge.get_or_init(|| {
            let proto = if req.version() == Version::HTTP_2 {
                ConnProtocol::H2
            } else {
                ConnProtocol::H1
            };
            ConnGauge::open(conn.tls, proto)
        });
        let snap = shared.load();
        let is_h1 = req.version() <= Version::HTTP_11;
        let method = req.method().clone();
        let log = shared.access_log.load_full().map(|l| {
            let fields = LogFields::new(&req, conn, &snap, l.with_query());
            (l, fields)
        });
        let mut route: Option<Arc<Route>> = None;
        // Not boxed (an allocation per request): the upstream call inside is boxed already, so
        // this state is about 1 KiB, the fast path holds it in its boxed busy state, and hyper
        // moves a service future once (into an HTTP/2 stream's task, or its HTTP/1 dispatcher's
        // slot).
        let mut resp = match handle(req, conn, &snap, &mut route).await {
            Ok(r) => r,
            Err(e) => {
                let id = route_id(&route);
                if e.is_client_error() {
                    tracing::debug!(peer = %conn.peer, %method, route = id, status = e.status().as_u16(), error = %e, "request refused");
                } else {
                    tracing::warn!(peer = %conn.peer, %method, route = id, status = e.status().as_u16(), error = %e, "request failed");
                }
                error_response(&e, is_h1)
            }
        };
        let finish = Finish {
            _guard: guard,
            started,
            method,
            status: resp.status(),
            route,
            upstream: resp.body_mut().used.take(),
            generation: snap.generation,
            log,
        };
        resp.body_mut()
            .on_complete(Box::new(move |outcome| finish.done(outcome)));
        Ok(resp)
    }
}

/// The matched route's id for a log line, `-` before a route matched.
fn route_id(route: &Option<Arc<Route>>) -> &str {
    route.as_ref().map_or("-", |r| &*r.id)
}

/// Access-log fields taken from the request before it is consumed.
struct LogFields {
    time: std::time::SystemTime,
    client_ip: IpAddr,
    host: String,
    target: String,
    version: &'static str,
    referer: Option<String>,
    user_agent: Option<String>,
}

impl LogFields {
    fn new(
        req: &Request<ReqBody>,
        conn: &ConnInfo,
        snap: &Snapshot,
        with_query: bool,
    ) -> LogFields {
        let h = req.headers();
        let text = |name| {
            h.get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| text(header::HOST))
            .unwrap_or_default();
        let target = match (with_query, req.uri().query()) {
            (true, Some(q)) => format!("{}?{q}", req.uri().path()),
            _ => req.uri().path().to_owned(),
        };
        LogFields {
            time: std::time::SystemTime::now(),
            client_ip: headers::client_ip(conn.peer.ip(), h, &snap.trusted),
            host,
            target,
            version: match req.version() {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            },
            referer: text(header::REFERER),
            user_agent: text(header::USER_AGENT),
        }
    }
}

/// Runs when the response body ends: metrics, the access log line, and the connection's
/// activity (dropping the guard marks the connection idle).
struct Finish {
    _guard: ActivityGuard,
    started: Instant,
    method: Method,
    status: StatusCode,
    route: Option<Arc<Route>>,
    upstream: Option<UpstreamUsed>,
    generation: u64,
    log: Option<(Arc<crate::access_log::AccessLog>, LogFields)>,
}

impl Finish {
    fn done(self, outcome: crate::body::BodyOutcome) {
        let elapsed = self.started.elapsed();
        if let (Some(error), Some(up)) = (&outcome.failure, &self.upstream) {
            // The backend broke off its body (closed early, a malformed chunk) after the head
            // was sent: the client can only be given a cut-off response. nginx logs "upstream
            // prematurely closed connection" at `error` for the same.
            let backend = up.active.label();
            let route = route_id(&self.route);
            tracing::warn!(method = %self.method, route, status = self.status.as_u16(), backend, bytes_sent = outcome.bytes, %error, "the backend's response body failed; the response is cut off");
            crate::metrics::upstream_error(backend, "body");
        }
        let bytes_in = self
            .upstream
            .as_ref()
            .and_then(|u| u.stats.as_ref())
            .map(|s| s.bytes.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0);
        let metrics = self
            .route
            .as_ref()
            .map(|r| &r.metrics)
            .unwrap_or_else(|| crate::metrics::unmatched());
        metrics.record(
            crate::metrics::method_class(&self.method),
            self.status,
            elapsed,
            bytes_in,
            outcome.bytes,
        );
        if let Some((log, f)) = self.log {
            let (site, route) = match &self.route {
                Some(r) => (r.site.clone(), r.id.clone()),
                None => (Arc::from("-"), Arc::from("-")),
            };
            log.log(&crate::access_log::Entry {
                time: f.time,
                client_ip: f.client_ip,
                host: f.host,
                method: self.method.to_string(),
                target: f.target,
                version: f.version,
                status: self.status.as_u16(),
                bytes_in,
                bytes_out: outcome.bytes,
                duration: elapsed,
                site,
                route,
                upstream: self.upstream.as_ref().map(|u| u.active.label().to_owned()),
                generation: self.generation,
                referer: f.referer,
                user_agent: f.user_agent,
            });
        }
    }
}

/// A short plain-text error response. On HTTP/1, an answer to a body not read to its end (413,
/// a broken or stalled body) also closes the connection, so the rest is not parsed as the next
/// request; so does one to a head that cannot be trusted.
pub fn error_response(e: &ProxyError, is_h1: bool) -> Response<Body> {
    let status = e.status();
    let text = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        e.public_message()
    );
    let mut r = Response::new(Body::full(text));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if is_h1
        && matches!(
            e,
            ProxyError::BodyTooLarge(_)
                | ProxyError::BadBody(_)
                | ProxyError::BodyTimeout(_)
                | ProxyError::BadPath(_)
                | ProxyError::BadHost
                | ProxyError::DuplicateHost
                | ProxyError::MissingHost
        )
    {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
fn handle(
    req: Request<ReqBody>,
    conn: &ConnInfo,
    snap: &Snapshot,
    matched: &mut Option<Arc<Route>>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
    async move {
        // Host: the h2 `:authority` (or an absolute-form target) wins over the Host header
        // (RFC 9110 §7.2, RFC 9112 §3.2.2).
        let mut fields = req.headers().get_all(header::HOST).iter();
        let (field, another) = (fields.next(), fields.next());
        if another.is_some() {
            return Err(ProxyError::DuplicateHost);
        }
        let sent = req.uri().authority().is_some() || field.is_some();
        let host = match (req.uri().authority(), field) {
            (Some(a), _) => HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadHost)?,
            (None, Some(h)) => h.clone(),
            // RFC 9112 §3.2; and an HTTP/2 request names its host too (RFC 9113 §8.3.1).
            (None, None) if req.version() >= Version::HTTP_11 => {
                return Err(ProxyError::MissingHost);
            }
            // An HTTP/1.0 client need not send one: the default site answers it.
            (None, None) => HeaderValue::from_static(""),
        };
        // A Host that is sent must name a host, an empty one included (an `http` URI's host is
        // never empty, RFC 9110 §4.2.1): nginx answers it 400 too.
        let host_name = if sent {
            let h = host.to_str().map_err(|_| ProxyError::BadHost)?;
            normalize_host(h).map_err(|_| ProxyError::BadHost)?
        } else {
            Cow::Borrowed("")
        };
        let site_idx = snap.hosts.lookup(&host_name).ok_or(ProxyError::NoSite)?;
        let site = &snap.sites[site_idx];

        // A TLS connection serves the site its SNI chose, and no other (RFC 9110 §15.5.20).
        if let Some(sni) = &conn.sni {
            if snap.tls_site(Some(sni)) != Some(site_idx) {
                return Err(ProxyError::Misdirected);
            }
        }

        let peer_trusted = snap.trusted.contains(conn.peer.ip());
        let client_ip = headers::client_ip(conn.peer.ip(), req.headers(), &snap.trusted);
        let cx = Ctx {
            conn,
            snap,
            host: &host,
            host_name,
            client_ip,
            peer_trusted,
        };

        if let (Some(status), false) = (site.redirect_https, conn.tls) {
            return Ok(redirect_to_https(&cx, req.uri(), status));
        }

        // Routing borrows the target from its own handle (a reference count, not a copy), so the
        // request can move on while the matched prefix and the rest of the path are slices of it.
        let uri = req.uri().clone();
        let normalized = crate::path::normalize(uri.path())?;
        let (route, prefix) = site
            .routes
            .lookup(&normalized.path)
            .ok_or(ProxyError::NoRoute)?;
        // One reference count per request, held by the caller's `Finish`: the route is shared by
        // every worker, and each count is a write to a cache line they all use.
        let route = &*matched.insert(route.clone());
        let stripped = normalized.path.get(prefix.len()..);

        let mut resp = dispatch(req, &cx, route, prefix, stripped, normalized.ambiguous).await?;

        route.options.response_headers.apply(resp.headers_mut());
        if let (true, Some(hsts)) = (conn.tls, &site.hsts) {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        Ok(resp)
    }
}

/// Runs a route's target. Static routes call back into this for their fallback route.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
pub(crate) fn dispatch(
    req: Request<ReqBody>,
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    prefix: &str,
    stripped: Option<&str>,
    ambiguous: bool,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
    async move {
        match &route.target {
            Target::Respond(r) => {
                let mut resp = Response::new(Body::full(r.body.clone()));
                *resp.status_mut() = r.status;
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, r.content_type.clone());
                Ok(resp)
            }
            Target::Redirect(r) => {
                let (path, query) = (req.uri().path(), req.uri().query());
                let location = r.to.render(&Vars {
                    scheme: cx.conn.scheme(),
                    host: &cx.host_name,
                    path,
                    query,
                });
                redirect(r.status, &location)
            }
            Target::Upstream(up) => {
                if ambiguous && !route.options.allow_encoded_slashes {
                    return Err(ProxyError::AmbiguousPath);
                }
                // Boxed: each level of async calls holds its callee's future twice (the call's
                // result, then the awaited copy), so sizes double per level; the box stops that
                // here, where the upstream call's 4.6 KiB state would grow `handle` to 20 KiB,
                // all of it copied per request (measured; bench/README.md).
                Box::pin(to_upstream(req, cx, route, up, prefix, stripped)).await
            }
            // The Clerk and static handlers are boxed: their states are larger than an upstream
            // call's, and every request would otherwise carry (and copy) room for them.
            Target::Clerk(c) => {
                let stripped = stripped.unwrap_or("");
                Ok(Box::pin(crate::clerk::handle(req, cx, route, c, prefix, stripped)).await)
            }
            Target::Static(s) => {
                Box::pin(crate::static_files::handle(
                    req, cx, route, s, prefix, stripped, ambiguous,
                ))
                .await
            }
        }
    }
}

fn redirect(status: StatusCode, location: &str) -> Result<Response<Body>, ProxyError> {
    let value = HeaderValue::from_str(location).map_err(|_| {
        ProxyError::Internal(format!(
            "redirect target {location:?} is not a valid header"
        ))
    })?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, value);
    Ok(resp)
}

fn redirect_to_https(cx: &Ctx<'_>, uri: &Uri, status: StatusCode) -> Response<Body> {
    let port = match cx.snap.https_port {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = format!("https://{}{port}{pq}", cx.host_name);
    redirect(status, &location).unwrap_or_else(|e| error_response(&e, true))
}

/// The size of a header block as nginx and hyper count it: name, value, and 4 bytes of framing.
fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
fn to_upstream(
    mut req: Request<ReqBody>,
    cx: &Ctx<'_>,
    route: &Route,
    up: &Upstream,
    prefix: &str,
    stripped: Option<&str>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
    async move {
        let opts = &route.options;
        let server_limits = &cx.snap.config.server.limits;
        if opts.limits.max_request_header_bytes < server_limits.max_request_header_bytes
            && header_bytes(req.headers()) > opts.limits.max_request_header_bytes
        {
            return Err(ProxyError::HeadersTooLarge);
        }
        if !req.body().is_end_stream() {
            // A request without a body (the fast path's) has no length to check.
            check_content_length(req.headers(), opts.limits.max_body)?;
        }

        let client_upgrade = (req.version() <= Version::HTTP_11 && opts.websocket)
            .then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();

        // The path the backend gets: the original bytes, or the normalized rest after the prefix.
        // The client's own target is borrowed as it is (a copy was an allocation per request).
        let strip = opts.strip_prefix && prefix != "/";
        let query = parts.uri.query();
        let with_query = |path: &str| {
            // Exactly sized: the string becomes the request target's bytes without a copy,
            // which an oversized buffer would cost (an allocation).
            let mut pq = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
            pq.push_str(path);
            if let Some(q) = query {
                pq.push('?');
                pq.push_str(q);
            }
            Cow::Owned(pq)
        };
        let (pq, target_checked) = match (stripped, parts.uri.path_and_query()) {
            (Some(rest), _) if strip && !rest.is_empty() => (with_query(rest), false),
            _ if strip => (with_query("/"), true),
            (_, Some(own)) if own.as_str().starts_with('/') => (Cow::Borrowed(own.as_str()), true),
            _ => (with_query(parts.uri.path()), true),
        };
        let mut h = parts.headers;
        // An h2 client sends `:authority`, not Host: the h1 upstream needs a Host header. (Without
        // an authority in the target, `cx.host` is the Host header itself: no lookup needed.)
        if parts.uri.authority().is_some() && !h.contains_key(header::HOST) && !cx.host.is_empty() {
            h.insert(header::HOST, cx.host.clone());
        }
        let hop = headers::strip_hop_by_hop(&mut h);
        if !opts.allow_underscore_headers {
            headers::drop_underscore_headers(&mut h);
        }
        headers::drop_clerk_headers(&mut h);
        // From an untrusted peer (the common case) our forwarding fields are written with the
        // request head; a route that edits fields gets them in the map first, so its edits
        // apply to them as before.
        let forwarding = cx.hop();
        let appended = match forwarding.peer_trusted {
            false if opts.request_headers.is_empty() => Some(headers::untrusted_forwarding(
                &mut h,
                &forwarding,
                strip.then_some(prefix),
            )),
            _ => {
                headers::set_forwarding_headers(&mut h, &forwarding, strip.then_some(prefix));
                None
            }
        };
        opts.request_headers.apply(&mut h);
        if hop.te_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let upgrade = match (client_upgrade, hop.upgrade) {
            (Some(on), Some(proto)) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, proto);
                Some(on)
            }
            _ => None,
        };

        let out = Outgoing {
            upgrade: upgrade.is_some(),
            method: parts.method,
            path_and_query: pq,
            target_checked,
            headers: h,
            appended,
            host: match &opts.host {
                HostPolicy::Keep => HostChoice::Keep,
                HostPolicy::Upstream => HostChoice::Backend,
                HostPolicy::Literal(v) => HostChoice::Fixed(v.clone()),
            },
            http2: opts.http2,
        };
        let Forwarded {
            mut resp,
            backend,
            used,
        } = forward(
            up,
            out,
            body,
            opts.timeouts.response,
            opts.timeouts.body,
            opts.limits.max_body,
        )
        .await?;

        if let Some(client_on) = upgrade {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let (parts, body) = resp.into_parts();
                if let UpResp::Legacy(body) = body {
                    return Ok(splice_upgrade(
                        client_on,
                        Response::from_parts(parts, body),
                        backend,
                        cx.conn.tls,
                    ));
                }
                return Err(ProxyError::UpgradeRefused);
            }
        }
        headers::strip_hop_by_hop_keep_trailer(resp.headers_mut());
        Ok(resp.map(|b| Body::upstream(b, used, opts.timeouts.body)))
    }
}

/// Refuses a declared body over the limit before reading any of it.
pub(crate) fn check_content_length(h: &HeaderMap, max: u64) -> Result<(), ProxyError> {
    if let Some(len) = h.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if len > max {
            return Err(ProxyError::BodyTooLarge(max));
        }
    }
    Ok(())
}

/// Answers the client's upgrade with the backend's 101 and joins the two connections.
fn splice_upgrade(
    client_on: hyper::upgrade::OnUpgrade,
    mut resp: Response<Incoming>,
    backend: &Backend,
    tls: bool,
) -> Response<Body> {
    let upstream_on = hyper::upgrade::on(&mut resp);
    let label = backend.label.clone();
    tokio::spawn(async move {
        let _open = ConnGauge::open(tls, ConnProtocol::WebSocket);
        let (client, upstream) = tokio::join!(client_on, upstream_on);
        match (client, upstream) {
            (Ok(c), Ok(u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                match tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    Ok((from_client, from_backend)) => {
                        tracing::debug!(backend = %label, from_client, from_backend, "upgraded connection closed")
                    }
                    Err(e) => {
                        tracing::debug!(backend = %label, error = %e, "upgraded connection ended with an error")
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(backend = %label, error = %e, "upgrade did not complete")
            }
        }
    });
    // Keep Connection/Upgrade: they are the 101's meaning (RFC 9110 §15.2.2).
    resp.map(|_| Body::empty())
}

/// How the upstream request's Host is set.
pub(crate) enum HostChoice {
    /// Leave the headers' Host as it is.
    Keep,
    /// The chosen backend's authority.
    Backend,
    Fixed(HeaderValue),
}

/// An upstream request before a backend is chosen.
pub(crate) struct Outgoing<'a> {
    /// An HTTP/1.1 upgrade (WebSocket): it goes through hyper-util's client, which hands over
    /// the upgraded connection.
    pub upgrade: bool,
    pub method: Method,
    /// Appended to the backend URL's own path.
    pub path_and_query: Cow<'a, str>,
    /// `path_and_query` is the client's own, as parsed when the request was read (or `/`): it
    /// goes to a pooled connection without being checked again. A normalized path (a stripped
    /// prefix) or a target built by a handler is checked.
    pub target_checked: bool,
    pub headers: HeaderMap,
    /// Forwarding fields written after `headers` (see [`headers::untrusted_forwarding`]).
    pub appended: Option<headers::Appended<'a>>,
    pub host: HostChoice,
    pub http2: bool,
}

/// Sends a request to one of `up`'s backends. Bodiless requests fail over to the next backend
/// when a connection cannot even be made; requests with a body cannot be replayed, so they do not.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
pub(crate) fn forward<'a>(
    up: &'a Upstream,
    mut out: Outgoing<'a>,
    body: ReqBody,
    response_timeout: std::time::Duration,
    body_timeout: std::time::Duration,
    max_body: u64,
) -> impl Future<Output = Result<Forwarded<'a>, ProxyError>> + 'a {
    async move {
        let bodiless = body.is_end_stream();
        let can_retry = bodiless && up.backends.len() > 1;
        let mut body = Some(body);
        let stats = (!bodiless).then(|| Arc::new(RequestBodyStats::default()));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let backend = up.pick().ok_or(ProxyError::NoBackend)?;
            let mut h = if can_retry {
                out.headers.clone()
            } else {
                std::mem::take(&mut out.headers)
            };
            match &out.host {
                HostChoice::Keep => {}
                HostChoice::Backend => {
                    if let Ok(v) = HeaderValue::from_str(backend.url.authority.as_str()) {
                        h.insert(header::HOST, v);
                    }
                }
                HostChoice::Fixed(v) => {
                    h.insert(header::HOST, v.clone());
                }
            }
            if out.http2 {
                // HTTP/2 carries the authority in `:authority` (RFC 9113 §8.3.1).
                h.remove(header::HOST);
            } else if !h.contains_key(header::HOST) {
                // HTTP/1.1 requires Host (RFC 9112 §3.2); an HTTP/1.0 client may not have sent one.
                if let Ok(v) = HeaderValue::from_str(backend.url.authority.as_str()) {
                    h.insert(header::HOST, v);
                }
            }
            let (finished_tx, finished_rx) = if bodiless {
                (None, None)
            } else {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            };
            let up_body = match body.take() {
                Some(b) if !bodiless => UpstreamBody::new(
                    b,
                    max_body,
                    body_timeout,
                    stats.clone().unwrap_or_default(),
                    finished_tx,
                ),
                _ => UpstreamBody::empty(),
            };
            let pq = if !backend.url.base_path.is_empty() {
                let mut pq =
                    String::with_capacity(backend.url.base_path.len() + out.path_and_query.len());
                pq.push_str(&backend.url.base_path);
                pq.push_str(&out.path_and_query);
                Cow::Owned(pq)
            } else if can_retry {
                // Borrowed (the client's own) costs nothing to send again.
                out.path_and_query.clone()
            } else {
                // Sent once: the path is used as it is.
                std::mem::take(&mut out.path_and_query)
            };
            // The pool writes the request line as given (origin-form); hyper-util's client wants
            // absolute-form and converts it itself. The target is checked as a URI's path and
            // query unless it is the client's own, parsed when the request was read (parsing it
            // again, with the `Uri` around it, was 3% of a small request's instructions).
            let pool = backend.pool.as_ref().filter(|_| !out.upgrade);
            let parse = |pq: Cow<'_, str>| {
                PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq.into_owned()))
                    .map_err(|_| ProxyError::BadPath(crate::path::PathError::BadEscape))
            };
            let sending = match pool {
                Some(pool) => Sending::Pooled {
                    pool,
                    method: out.method.clone(),
                    target: match out.target_checked {
                        true => RequestTarget::Checked(pq),
                        false => RequestTarget::Parsed(parse(pq)?),
                    },
                    headers: h,
                    appended: out.appended,
                    body: up_body,
                },
                None => {
                    if let Some(appended) = &out.appended {
                        appended.append_to(&mut h);
                    }
                    let pq = parse(pq)?;
                    let uri = Uri::builder()
                        .scheme(backend.scheme.clone())
                        .authority(backend.url.authority.clone())
                        .path_and_query(pq)
                        .build()
                        .map_err(|e| ProxyError::Internal(e.to_string()))?;
                    let mut req = Request::new(up_body);
                    *req.method_mut() = out.method.clone();
                    *req.uri_mut() = uri;
                    *req.version_mut() = if out.http2 {
                        Version::HTTP_2
                    } else {
                        Version::HTTP_11
                    };
                    *req.headers_mut() = h;
                    Sending::Client(req)
                }
            };

            // A bodiless request on a pooled connection is timed by the pool, with a timer the
            // connection keeps (a new timer per request was 3% of a small request's instructions).
            let pool_times_it = bodiless && pool.is_some();
            let active = backend.start();
            // Both futures are built where they are pinned: `select!` would move them into its
            // own state, and a move is a copy at their full size (an unstarted future is as large
            // as its largest state: 2 KiB per request).
            let result = {
                let mut timer = std::pin::pin!(async {
                    if pool_times_it {
                        return std::future::pending().await;
                    }
                    if let (Some(rx), Some(stats)) = (finished_rx, &stats) {
                        if let Err(e) = body_taken(rx, stats, body_timeout, backend).await {
                            return e;
                        }
                    }
                    tokio::time::sleep(response_timeout).await;
                    timed_out(backend, response_timeout)
                });
                let mut send = std::pin::pin!(async {
                    match sending {
                        Sending::Pooled {
                            pool,
                            method,
                            target,
                            headers,
                            appended,
                            body,
                        } => pool
                            .send(
                                method,
                                target.as_str(),
                                headers,
                                appended,
                                body,
                                pool_times_it.then_some(response_timeout),
                            )
                            .await
                            .map(|r| r.map(UpResp::Pooled))
                            .map_err(SendFailure::Pool),
                        Sending::Client(req) => up
                            .client
                            .request(req)
                            .await
                            .map(|r| r.map(UpResp::Legacy))
                            .map_err(SendFailure::Client),
                    }
                });
                tokio::select! {
                    biased;
                    r = &mut send => r,
                    e = &mut timer => return Err(e),
                }
            };
            match result {
                Ok(resp) => {
                    let used = UpstreamUsed { active, stats };
                    return Ok(Forwarded {
                        resp,
                        backend,
                        used,
                    });
                }
                Err(SendFailure::Pool(crate::pool::SendError::Timeout)) => {
                    return Err(timed_out(backend, response_timeout));
                }
                Err(e) => {
                    if let Some(s) = &stats {
                        use std::sync::atomic::Ordering::Relaxed;
                        if s.too_large.load(Relaxed) {
                            return Err(ProxyError::BodyTooLarge(max_body));
                        }
                        // The client's fault: not counted against the backend.
                        if s.stalled.load(Relaxed) {
                            return Err(ProxyError::BodyTimeout(body_timeout.as_millis()));
                        }
                        if s.client_failed.load(Relaxed) {
                            return Err(ProxyError::BadBody(error_chain(&e)));
                        }
                    }
                    let kind = match &e {
                        SendFailure::Pool(p) => p.kind(),
                        SendFailure::Client(c) => classify(c),
                    };
                    crate::metrics::upstream_error(&backend.label, kind.label());
                    if matches!(kind, FailureKind::Refused | FailureKind::ConnectTimeout) {
                        up.mark_down(backend);
                    }
                    if can_retry && kind.before_send() && attempts < up.backends.len() {
                        tracing::debug!(backend = %backend.label, failure = kind.label(), "trying the next backend");
                        continue;
                    }
                    return Err(ProxyError::Upstream {
                        backend: backend.label.to_string(),
                        kind,
                        detail: error_chain(&e),
                    });
                }
            }
        }
    }
}

/// Waits for the request body to be sent whole. The backend must take it as it comes (nginx's
/// `proxy_send_timeout`, folded into `body_timeout`): a body that moves no byte for
/// `body_timeout` while the client is not the one holding it back is the backend's stall. (A
/// client that stops sending is timed by the body itself, which answers 408.)
async fn body_taken(
    mut finished: oneshot::Receiver<()>,
    stats: &RequestBodyStats,
    body_timeout: std::time::Duration,
    backend: &Backend,
) -> Result<(), ProxyError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut seen = stats.bytes.load(Relaxed);
    loop {
        tokio::select! {
            biased;
            _ = &mut finished => return Ok(()),
            _ = tokio::time::sleep(body_timeout) => {
                let now = stats.bytes.load(Relaxed);
                if now == seen && !stats.awaiting_client.load(Relaxed) {
                    crate::metrics::upstream_error(&backend.label, "timeout");
                    return Err(ProxyError::UpstreamSendTimeout {
                        backend: backend.label.to_string(),
                        timeout_ms: body_timeout.as_millis(),
                    });
                }
                seen = now;
            }
        }
    }
}

/// The answer to a backend that sent no response head in time, counted.
fn timed_out(backend: &Backend, timeout: std::time::Duration) -> ProxyError {
    crate::metrics::upstream_error(&backend.label, "timeout");
    ProxyError::UpstreamTimeout {
        backend: backend.label.to_string(),
        timeout_ms: timeout.as_millis(),
    }
}

/// A response from a backend. Its extensions carry [`UpstreamUsed`] and the request body's
/// byte count for the completion hook.
pub(crate) struct Forwarded<'a> {
    pub resp: Response<UpResp>,
    /// Borrowed from the snapshot: a reference count here is a write every worker contends for.
    pub backend: &'a Backend,
    pub used: UpstreamUsed,
}

/// A request ready for a backend: its parts for our HTTP/1.1 pool, or a `Request` for
/// hyper-util's client.
enum Sending<'a> {
    Pooled {
        pool: &'a crate::pool::Pool,
        method: Method,
        target: RequestTarget<'a>,
        headers: HeaderMap,
        appended: Option<headers::Appended<'a>>,
        body: UpstreamBody,
    },
    Client(Request<UpstreamBody>),
}

/// The request target for the pool: the client's own (parsed already), or one checked here.
enum RequestTarget<'a> {
    Checked(Cow<'a, str>),
    Parsed(PathAndQuery),
}

impl RequestTarget<'_> {
    fn as_str(&self) -> &str {
        match self {
            RequestTarget::Checked(s) => s,
            RequestTarget::Parsed(p) => p.as_str(),
        }
    }
}

/// A backend's response body, from the HTTP/1.1 pool or from hyper-util's client (HTTP/2
/// backends, WebSocket upgrades).
pub enum UpResp {
    Legacy(Incoming),
    Pooled(crate::pool::PooledBody),
}

/// Why sending failed, by path.
#[derive(Debug, thiserror::Error)]
enum SendFailure {
    #[error("{0}")]
    Pool(crate::pool::SendError),
    #[error("{0}")]
    Client(hyper_util::client::legacy::Error),
}

/// The error and its causes on one line, for the log.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}
