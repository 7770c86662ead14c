//! Header rules for proxied requests and responses.
//!
//! Pure functions over `HeaderMap`, each one a rule an operator can name:
//! - hop-by-hop headers never cross the proxy (RFC 9110 §7.6.1), the names listed in
//!   `Connection` removed *before* `Connection` itself, `TE: trailers` kept (gRPC needs it);
//! - `X-Forwarded-*` and `X-Real-IP` believed only from trusted proxies, otherwise replaced
//!   (an untrusted client must not choose the IP an app rate-limits on);
//! - header names with `_` dropped on app routes, as nginx does: Rack, WSGI and CGI turn `-` and
//!   `_` into the same variable, so `X_Forwarded_For` would override the real `X-Forwarded-For`;
//! - `Clerk-Secret-Key` and `Clerk-Proxy-Url` from clients are removed on every route;
//! - the per-route `set`/`add`/`remove` operations.
//!
//! Nothing here allocates per request beyond the values it writes, and nothing can panic on a
//! header a client controls (non-UTF-8 values are handled as bytes).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static CLERK_SECRET_KEY: HeaderName = HeaderName::from_static("clerk-secret-key");
pub static CLERK_PROXY_URL: HeaderName = HeaderName::from_static("clerk-proxy-url");
pub static CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");

/// The fixed hop-by-hop set (RFC 9110 §7.6.1, plus the non-standard `Keep-Alive` and
/// `Proxy-Connection` that old clients still send).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Matched as text (a length switch, then one comparison), not as nine `HeaderName`
    // comparisons: this runs for every field of every request and response.
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Forwarding headers that only a trusted proxy may set; from anyone else they are dropped
/// (the ones we set ourselves are then written fresh). Static names: no parsing per request.
pub static UNTRUSTED_FORWARDING: [HeaderName; 8] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("true-client-ip"),
];

/// What [`strip_hop_by_hop`] found before removing it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HopInfo {
    /// `TE` listed `trailers`; the caller re-adds `TE: trailers` upstream.
    pub te_trailers: bool,
    /// `Connection: upgrade` together with an `Upgrade` header (RFC 9110 §7.8).
    pub upgrade: Option<HeaderValue>,
}

/// True when a comma-separated header value lists `token` (case-insensitive, whitespace trimmed).
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Removes every header whose name `pred` selects. Most requests carry none of them (one pass
/// over the names, no hashing) and the rest one or two: a pass per removal costs less than
/// collecting the names into a list (an allocation).
fn remove_where(headers: &mut HeaderMap, pred: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|k| pred(k)).cloned() {
        headers.remove(&name);
    }
}

/// Removes hop-by-hop headers: every name listed in `Connection` (RFC 9110 §7.6.1) and the
/// fixed set, in one removal pass.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> HopInfo {
    strip(headers, false)
}

/// As [`strip_hop_by_hop`], for an app route's response: `Trailer` stays. RFC 9110 §6.6.2 makes
/// it end to end (only RFC 2616 listed it as hop-by-hop), and hyper, when it serves an
/// HTTP/1.1 client connection (`server::serve_http`), sends only the trailer fields a response
/// declares in it.
pub fn strip_hop_by_hop_keep_trailer(headers: &mut HeaderMap) -> HopInfo {
    strip(headers, true)
}

fn strip(headers: &mut HeaderMap, keep_trailer: bool) -> HopInfo {
    let hop = |k: &HeaderName| is_hop_by_hop(k) && !(keep_trailer && k == header::TRAILER);
    if !headers.keys().any(hop) {
        return HopInfo::default();
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| has_token(v, "trailers"));
    let mut listed: Vec<HeaderName> = Vec::new();
    let (mut close_listed, mut upgrade_listed) = (false, false);
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            // `close` (sent by every `Connection: close` client), `upgrade` and `keep-alive`
            // (both in the fixed set) are matched as text: no name parsed and allocated.
            if token.eq_ignore_ascii_case(b"close") {
                close_listed = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                upgrade_listed = true;
            } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                if let Ok(name) = HeaderName::from_bytes(token) {
                    listed.push(name);
                }
            }
        }
    }
    let info = HopInfo {
        te_trailers,
        upgrade: upgrade_listed
            .then(|| headers.get(header::UPGRADE).cloned())
            .flatten(),
    };
    // RFC 9112 §6.3 rule 3: Transfer-Encoding overrides Content-Length, and a message framed
    // both ways must not be forwarded with its Content-Length (the body we send is the decoded
    // one, framed anew).
    let reframed = headers.contains_key(header::TRANSFER_ENCODING);
    remove_where(headers, |k| {
        hop(k)
            || (close_listed && k.as_str() == "close")
            || listed.contains(k)
            || (reframed && k == header::CONTENT_LENGTH)
    });
    info
}

/// Drops header names containing `_` (nginx's `underscores_in_headers off`).
pub fn drop_underscore_headers(headers: &mut HeaderMap) {
    remove_where(headers, |k| k.as_str().bytes().any(|b| b == b'_'));
}

/// Removes `Clerk-Secret-Key` and `Clerk-Proxy-Url` sent by a client: only the Clerk route may
/// set them, and an app backend must never see a secret it did not expect.
pub fn drop_clerk_headers(headers: &mut HeaderMap) {
    remove_where(headers, |k| k == CLERK_SECRET_KEY || k == CLERK_PROXY_URL);
}

/// The set of peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

/// The end user's address: the socket peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy (nginx's `real_ip_recursive on`).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for value in values.iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_forwarded_ip(entry) else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return client;
            }
        }
    }
    client
}

/// Parses one `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
pub fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split(']').next()?.parse::<IpAddr>().ok();
    }
    e.rsplit_once(':')
        .and_then(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().ok())
        .map(IpAddr::V4)
}

/// What the proxy knows about the hop it received the request on.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    pub peer: IpAddr,
    /// The peer's address as text, written once per connection (formatting an address per
    /// request showed up in profiles).
    pub peer_text: &'a str,
    pub peer_trusted: bool,
    pub client_ip: IpAddr,
    /// `http` or `https`: the listener's scheme.
    pub proto: &'static str,
    /// The Host the client asked for, as received.
    pub host: &'a HeaderValue,
}

/// An address as text, held inline: `X-Forwarded-For` and `X-Real-IP` are written from it, and
/// a `HeaderValue` was an allocation per new connection. An IPv4-mapped IPv6 address is
/// written as IPv4.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; IP_TEXT_MAX],
    len: u8,
}

/// 39 bytes is the longest IPv6 text; 45 allows its IPv4-embedded forms.
const IP_TEXT_MAX: usize = 45;

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; IP_TEXT_MAX],
            len: 0,
        };
        match ip.to_canonical() {
            // IPv4 by hand: `Display` goes through the formatting machinery, which was 1.3k
            // instructions per new connection (callgrind, scenario 3 of bench/README.md).
            IpAddr::V4(v4) => text.len = write_v4(&mut text.buf, v4) as u8,
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut out = &mut text.buf[..];
                if write!(out, "{v6}").is_ok() {
                    text.len = (IP_TEXT_MAX - out.len()) as u8;
                }
            }
        }
        text
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, hex digits, `.` and `:` are written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("unknown")
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Dotted-decimal IPv4 into the start of `buf` (15 bytes at most); returns the length.
fn write_v4(buf: &mut [u8; IP_TEXT_MAX], ip: std::net::Ipv4Addr) -> usize {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

/// Writes `X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP` and, when a prefix was stripped,
/// `X-Forwarded-Prefix`. From a trusted peer the chain is extended and existing values kept;
/// from anyone else every forwarding header is replaced.
pub fn set_forwarding_headers(headers: &mut HeaderMap, hop: &Hop<'_>, stripped: Option<&str>) {
    let peer = hop.peer.to_canonical();
    if hop.peer_trusted {
        let mut chain = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(s) = v.to_str() {
                let s = s.trim();
                if !s.is_empty() {
                    if !chain.is_empty() {
                        chain.push_str(", ");
                    }
                    chain.push_str(s);
                }
            }
        }
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        chain.push_str(hop.peer_text);
        insert_str(headers, &X_FORWARDED_FOR, &chain);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) && !hop.host.is_empty() {
            headers.insert(&X_FORWARDED_HOST, hop.host.clone());
        }
        if !headers.contains_key(&X_REAL_IP) {
            if hop.client_ip == peer {
                insert_str(headers, &X_REAL_IP, hop.peer_text);
            } else {
                insert_str(headers, &X_REAL_IP, IpText::new(hop.client_ip).as_str());
            }
        }
        if let Some(prefix) = stripped {
            let combined = match headers
                .get(&X_FORWARDED_PREFIX)
                .and_then(|v| v.to_str().ok())
            {
                Some(outer) => format!("{}{prefix}", outer.trim_end_matches('/')),
                None => prefix.to_owned(),
            };
            insert_str(headers, &X_FORWARDED_PREFIX, &combined);
        }
    } else {
        untrusted_forwarding(headers, hop, stripped).append_to(headers);
    }
}

/// From a peer that is not trusted: removes every forwarding field the client sent and returns
/// ours, to be written after the client's fields.
///
/// The map path inserts them ([`Appended::append_to`]); the HTTP/1.1 upstream path writes them
/// straight into the request head ([`crate::h1::encode_request_head`]): four inserts into the
/// map, each hashing its name and cloning its value, were 5% of a small request's
/// instructions (callgrind, scenario 1 of bench/README.md). Either way the backend gets the
/// same fields.
pub fn untrusted_forwarding<'a>(
    headers: &mut HeaderMap,
    hop: &Hop<'a>,
    stripped: Option<&'a str>,
) -> Appended<'a> {
    remove_where(headers, is_forwarding);
    Appended {
        peer: hop.peer_text,
        proto: hop.proto,
        host: hop.host,
        prefix: stripped.filter(|p| is_field_value(p.as_bytes())),
    }
}

/// What `HeaderValue` accepts (RFC 9110 §5.5: visible characters, spaces and tabs, obs-text),
/// checked without making one.
fn is_field_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// Every field [`untrusted_forwarding`] replaces: the ones we write and the ones only a
/// trusted proxy may set. Matched as text, as [`is_hop_by_hop`] is.
fn is_forwarding(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-forwarded-for" | "x-real-ip" | "x-forwarded-proto" | "x-forwarded-host"
    ) || UNTRUSTED_FORWARDING.contains(name)
}

/// The forwarding fields of a request from a peer that is not trusted (see
/// [`untrusted_forwarding`]), borrowed from the connection and the request.
#[derive(Debug, Clone, Copy)]
pub struct Appended<'a> {
    peer: &'a str,
    proto: &'static str,
    /// Empty when the client sent no Host (HTTP/1.0): then no `X-Forwarded-Host`.
    host: &'a HeaderValue,
    /// Checked to be a valid field value when made.
    prefix: Option<&'a str>,
}

impl Appended<'_> {
    /// Each field, name and value, in the order they are written.
    pub fn each(&self, mut field: impl FnMut(&HeaderName, &[u8])) {
        field(&X_FORWARDED_FOR, self.peer.as_bytes());
        field(&X_REAL_IP, self.peer.as_bytes());
        field(&X_FORWARDED_PROTO, self.proto.as_bytes());
        if !self.host.is_empty() {
            field(&X_FORWARDED_HOST, self.host.as_bytes());
        }
        if let Some(prefix) = self.prefix {
            field(&X_FORWARDED_PREFIX, prefix.as_bytes());
        }
    }

    /// Into a map that [`untrusted_forwarding`] cleared of them, for a request that goes out
    /// as `http` types (HTTP/2, upgrades) or whose route edits its fields.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        // The same fields as `each` (a test holds them to it).
        if let Ok(peer) = HeaderValue::from_str(self.peer) {
            headers.append(&X_FORWARDED_FOR, peer.clone());
            headers.append(&X_REAL_IP, peer);
        }
        headers.append(&X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
        if !self.host.is_empty() {
            headers.append(&X_FORWARDED_HOST, self.host.clone());
        }
        if let Some(Ok(prefix)) = self.prefix.map(HeaderValue::from_str) {
            headers.append(&X_FORWARDED_PREFIX, prefix);
        }
    }
}

/// Inserts a value built from strings that came from valid header values or from us; falls back
/// to dropping the header rather than panicking if it somehow is not a valid value.
fn insert_str(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Per-route header edits, compiled at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies `remove`, then `set` (replacing every value), then `add` (appending).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "192.168.1.254",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            // The longest IPv6 text: 39 bytes.
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: IpAddr = text.parse().unwrap();
            assert_eq!(IpText::new(addr).as_str(), text, "{text}");
        }
    }

    #[test]
    fn an_ipv4_mapped_address_is_written_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(IpText::new(mapped).as_str(), "10.0.0.7");
    }

    #[test]
    fn every_field_named_in_connection_is_removed_close_and_keep_alive_included() {
        // RFC 9110 §7.6.1: each connection option names a field to remove, even `close`.
        let mut h = map(&[
            ("connection", "Close, Keep-Alive, x-secret"),
            ("close", "odd but listed"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "dropped"),
            ("x-kept", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        for gone in ["connection", "close", "keep-alive", "x-secret"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h.get("x-kept").unwrap(), "kept");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn fixed_hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("user-agent", "curl"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("user-agent"));
    }

    #[test]
    fn content_length_beside_transfer_encoding_is_removed_rfc9112_6_3() {
        let mut h = map(&[
            ("content-length", "100"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop_keep_trailer(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn content_length_alone_stays() {
        let mut h = map(&[("content-length", "100"), ("connection", "keep-alive")]);
        strip_hop_by_hop_keep_trailer(&mut h);
        assert_eq!(h.get("content-length").unwrap(), "100");
    }

    #[test]
    fn an_app_response_keeps_trailer_rfc9110_6_6_2() {
        let mut h = map(&[
            ("trailer", "grpc-status"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
        ]);
        strip_hop_by_hop_keep_trailer(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("trailer").unwrap(), "grpc-status");
    }

    #[test]
    fn trailer_listed_in_connection_goes_even_from_an_app_response() {
        let mut h = map(&[("connection", "trailer"), ("trailer", "x")]);
        strip_hop_by_hop_keep_trailer(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn headers_listed_in_connection_are_removed_rfc9110_7_6_1() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("x-other", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("x-custom-hop"));
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn connection_tokens_are_case_insensitive_and_trimmed() {
        let mut h = map(&[("connection", " X-A ,,x-b"), ("x-a", "1"), ("x-b", "2")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn several_connection_headers_all_count() {
        let mut h = map(&[
            ("connection", "x-a"),
            ("connection", "x-b"),
            ("x-a", "1"),
            ("x-b", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn garbage_connection_tokens_do_not_panic() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"\xff\xfe, (bad)").unwrap(),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn te_trailers_is_reported_for_reinsertion() {
        let mut h = map(&[("te", "gzip, trailers")]);
        assert!(strip_hop_by_hop(&mut h).te_trailers);
        assert!(!h.contains_key("te"));
        let mut h = map(&[("te", "gzip")]);
        assert!(!strip_hop_by_hop(&mut h).te_trailers);
    }

    #[test]
    fn an_upgrade_needs_connection_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            strip_hop_by_hop(&mut h).upgrade,
            Some(HeaderValue::from_static("websocket"))
        );
        let mut h = map(&[("upgrade", "websocket")]);
        assert_eq!(strip_hop_by_hop(&mut h).upgrade, None);
    }

    #[test]
    fn underscore_headers_are_dropped() {
        let mut h = map(&[
            ("x_forwarded_for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        drop_underscore_headers(&mut h);
        assert!(!h.contains_key("x_forwarded_for"));
        assert!(h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn clerk_headers_from_clients_are_dropped() {
        let mut h = map(&[
            ("clerk-secret-key", "sk_live_x"),
            ("clerk-proxy-url", "https://evil"),
        ]);
        drop_clerk_headers(&mut h);
        assert!(h.is_empty());
    }

    static HOST: HeaderValue = HeaderValue::from_static("app.example.com");

    fn hop(peer: &str, trusted_peer: bool, client: &str) -> Hop<'static> {
        Hop {
            peer: ip(peer),
            peer_text: Box::leak(Box::new(IpText::new(ip(peer)))).as_str(),
            peer_trusted: trusted_peer,
            client_ip: ip(client),
            proto: "http",
            host: &HOST,
        }
    }

    #[test]
    fn untrusted_peer_replaces_forwarding_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.com"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarding_headers(&mut h, &hop("10.0.0.1", false, "10.0.0.1"), None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["x-real-ip"], "10.0.0.1");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn trusted_peer_extends_the_chain_and_keeps_values() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example.com"),
        ]);
        set_forwarding_headers(&mut h, &hop("127.0.0.1", true, "2.2.2.2"), None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "public.example.com");
        assert_eq!(h["x-real-ip"], "2.2.2.2");
    }

    /// The fields as the HTTP/1.1 head writer gets them.
    fn written(a: &Appended<'_>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        a.each(|n, v| out.push((n.to_string(), String::from_utf8_lossy(v).into_owned())));
        out
    }

    fn in_map(h: &HeaderMap) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn appended_fields_are_the_same_written_or_in_a_map() {
        static NO_HOST: HeaderValue = HeaderValue::from_static("");
        let mut no_host = hop("10.0.0.1", false, "10.0.0.1");
        no_host.host = &NO_HOST;
        for (hop, prefix) in [
            (hop("10.0.0.1", false, "10.0.0.1"), None),
            (hop("::1", false, "::1"), Some("/api")),
            (no_host, Some("/x")),
        ] {
            let mut h = HeaderMap::new();
            let a = untrusted_forwarding(&mut h, &hop, prefix);
            a.append_to(&mut h);
            assert_eq!(written(&a), in_map(&h), "{hop:?} {prefix:?}");
        }
    }

    #[test]
    fn untrusted_forwarding_removes_what_the_client_sent_and_keeps_the_rest() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.com"),
            ("x-forwarded-prefix", "/evil"),
            ("forwarded", "for=6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        let a = untrusted_forwarding(&mut h, &hop("10.0.0.1", false, "10.0.0.1"), None);
        assert_eq!(in_map(&h), [("accept".to_owned(), "*/*".to_owned())]);
        assert_eq!(
            written(&a),
            [
                ("x-forwarded-for", "10.0.0.1"),
                ("x-real-ip", "10.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "app.example.com"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn a_prefix_that_is_not_a_field_value_is_not_announced() {
        let mut h = HeaderMap::new();
        let a = untrusted_forwarding(&mut h, &hop("10.0.0.1", false, "10.0.0.1"), Some("/a\nb"));
        assert!(!written(&a).iter().any(|(n, _)| n == "x-forwarded-prefix"));
    }

    #[test]
    fn stripped_prefix_is_announced() {
        let mut h = HeaderMap::new();
        set_forwarding_headers(&mut h, &hop("10.0.0.1", false, "10.0.0.1"), Some("/api"));
        assert_eq!(h["x-forwarded-prefix"], "/api");
    }

    #[test]
    fn untrusted_prefix_is_not_kept() {
        let mut h = map(&[("x-forwarded-prefix", "/evil")]);
        set_forwarding_headers(&mut h, &hop("10.0.0.1", false, "10.0.0.1"), None);
        assert!(!h.contains_key("x-forwarded-prefix"));
    }

    #[test]
    fn client_ip_is_the_peer_when_untrusted() {
        let h = map(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted(&[])), ip("10.0.0.1"));
    }

    #[test]
    fn client_ip_walks_back_over_trusted_hops() {
        let h = map(&[("x-forwarded-for", "9.9.9.9, 1.1.1.1, 10.0.0.2")]);
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("1.1.1.1"));
    }

    #[test]
    fn client_ip_stops_at_garbage() {
        let h = map(&[("x-forwarded-for", "not-an-ip, 10.0.0.2")]);
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("10.0.0.2"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_nets() {
        let t = trusted(&["127.0.0.1/32"]);
        assert!(t.contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn forwarded_ip_entries_may_carry_ports() {
        assert_eq!(parse_forwarded_ip(" 1.2.3.4:5678 "), Some(ip("1.2.3.4")));
        assert_eq!(
            parse_forwarded_ip("[2001:db8::1]:80"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_forwarded_ip("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_forwarded_ip("unknown"), None);
    }

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let ops = HeaderOps {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("set"),
            )],
            add: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("added"),
            )],
            remove: vec![HeaderName::from_static("x-c")],
        };
        let mut h = map(&[
            ("x-a", "old1"),
            ("x-a", "old2"),
            ("x-b", "kept"),
            ("x-c", "gone"),
        ]);
        ops.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().count(), 1);
        assert_eq!(h["x-a"], "set");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-c"));
    }

    #[test]
    fn set_cookie_values_stay_separate_through_header_ops() {
        let ops = HeaderOps {
            add: vec![(header::SET_COOKIE, HeaderValue::from_static("c=3"))],
            ..Default::default()
        };
        let mut h = map(&[("set-cookie", "a=1"), ("set-cookie", "b=2")]);
        strip_hop_by_hop(&mut h);
        ops.apply(&mut h);
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
    }
}
