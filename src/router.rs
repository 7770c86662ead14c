//! Site and route lookup: Host → site, normalized path → route.
//!
//! Pure data structures, built once per config load and read without locks per request.
//! Lookup cost does not grow with the number of sites (one hash probe for an exact host, one per
//! label for wildcards) and grows with the number of *segments in the request path*, not with the
//! number of routes (one hash probe per segment), so a 10,000-site table answers as fast as a
//! 1-site one.
//!
//! Matching rules, in the order they apply:
//! - Host: case-insensitive; port and a trailing dot ignored. Exact names first, then wildcards
//!   (`*.example.com` matches `a.example.com` and `a.b.example.com`, like nginx; the longest
//!   wildcard wins), then the `default = true` site.
//! - Path: an `exact` route first, then the longest `prefix` that ends on a segment boundary:
//!   `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`. (nginx's `location /api` *does*
//!   match `/apix`; this is deliberate, see the README.)
//!
//! This module must not know what a route *does*: the payload type `T` is opaque to it.

use std::borrow::Cow;
use std::collections::HashMap;

/// A table keyed by configured names. Requests only look up, never insert, so the unkeyed fast
/// hash cannot be flooded into collisions from outside (SipHash was 3% of a small request).
type Table<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A host pattern as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `app.example.com`
    Exact(String),
    /// `*.example.com`, stored as `example.com`.
    Wildcard(String),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    /// Stored without a trailing slash; the root prefix is `/`.
    Prefix(String),
}

impl PathMatch {
    /// Normalizes a configured prefix: `/api/` and `/api` are the same route.
    pub fn prefix(p: &str) -> PathMatch {
        let trimmed = p.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        })
    }
}

impl std::fmt::Display for PathMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatch::Exact(p) => write!(f, "= {p}"),
            PathMatch::Prefix(p) => f.write_str(p),
        }
    }
}

/// The routes of one site.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: Table<Box<str>, T>,
    prefixes: Table<Box<str>, T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: Table::default(),
            prefixes: Table::default(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Adds a route; returns the payload back if the same matcher is already taken.
    pub fn insert(&mut self, m: &PathMatch, value: T) -> Result<(), T> {
        let map = match m {
            PathMatch::Exact(_) => &mut self.exact,
            PathMatch::Prefix(_) => &mut self.prefixes,
        };
        let key = match m {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p.as_str(),
        };
        if map.contains_key(key) {
            return Err(value);
        }
        map.insert(key.into(), value);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    /// Every route, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact.values().chain(self.prefixes.values())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the route for a normalized path, returning it with the prefix that matched
    /// (the whole path for an exact route).
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(&T, &'p str)> {
        if let Some(v) = self.exact.get(path) {
            return Some((v, path));
        }
        if self.prefixes.is_empty() {
            return None;
        }
        let mut end = path.len();
        if end > 1 && path.ends_with('/') {
            end -= 1;
        }
        loop {
            let candidate = if end == 0 { "/" } else { &path[..end] };
            if let Some(v) = self.prefixes.get(candidate) {
                return Some((v, candidate));
            }
            if end <= 1 {
                return None;
            }
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }
}

/// Why no site matched a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Not a valid host name (empty, bad port syntax).
    Invalid,
}

/// Host → site index.
#[derive(Debug, Clone, Default)]
pub struct HostTable {
    exact: Table<Box<str>, usize>,
    wildcard: Table<Box<str>, usize>,
    default: Option<usize>,
}

impl HostTable {
    /// Registers a pattern for site `site`; returns the site that already holds it, if any.
    pub fn insert(&mut self, pattern: &HostPattern, site: usize) -> Result<(), usize> {
        let (map, key) = match pattern {
            HostPattern::Exact(h) => (&mut self.exact, h),
            HostPattern::Wildcard(s) => (&mut self.wildcard, s),
        };
        if let Some(&other) = map.get(key.as_str()) {
            return Err(other);
        }
        map.insert(key.as_str().into(), site);
        Ok(())
    }

    pub fn set_default(&mut self, site: usize) {
        self.default = Some(site);
    }

    pub fn default_site(&self) -> Option<usize> {
        self.default
    }

    /// The site for a normalized host name (see [`normalize_host`]), without the default.
    pub fn lookup_named(&self, host: &str) -> Option<usize> {
        if let Some(&s) = self.exact.get(host) {
            return Some(s);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(&s) = self.wildcard.get(rest) {
                return Some(s);
            }
        }
        None
    }

    /// The site for a normalized host, falling back to the default site.
    pub fn lookup(&self, host: &str) -> Option<usize> {
        self.lookup_named(host).or(self.default)
    }
}

const BAD: u8 = 1;
const UPPER: u8 = 2;
const COLON: u8 = 4;

/// The class of each byte of a host name: not allowed (controls, space, `/`, `@`), uppercase,
/// or the port's colon.
static HOST_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            b':' => COLON,
            b'A'..=b'Z' => UPPER,
            b'/' | b'@' | 0..=b' ' => BAD,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// Lowercases a `Host`/`:authority` value and strips the port and a trailing dot.
/// Allocates only when the name has uppercase letters.
pub fn normalize_host(raw: &str) -> Result<Cow<'_, str>, HostError> {
    let raw = raw.trim_ascii();
    if raw.starts_with('[') {
        return normalize_ipv6_host(raw);
    }
    // One pass (this runs on every request) gathers each byte's class bits from a table: no
    // branch per byte (a `match` per byte was 12 instructions a byte, callgrind). A port is all
    // digits, so scanning it too changes neither answer.
    let seen = raw
        .bytes()
        .fold(0u8, |seen, b| seen | HOST_BYTE[usize::from(b)]);
    let (bad, upper) = (seen & BAD != 0, seen & UPPER != 0);
    // The first colon: what follows must be a port, so a second one is refused (a name holds
    // none: RFC 9110 §7.2, RFC 3986 §3.2.2).
    let colon = if seen & COLON != 0 {
        raw.bytes().position(|b| b == b':')
    } else {
        None
    };
    let name = match colon {
        Some(i) if valid_port(&raw[i + 1..]) => &raw[..i],
        Some(_) => return Err(HostError::Invalid),
        None => raw,
    };
    finish_host(name, bad, upper)
}

/// An IPv6 literal: `[::1]:8080`.
fn normalize_ipv6_host(raw: &str) -> Result<Cow<'_, str>, HostError> {
    let rest = &raw[1..];
    let close = rest.find(']').ok_or(HostError::Invalid)?;
    let after = &rest[close + 1..];
    if !(after.is_empty() || valid_port(after.strip_prefix(':').ok_or(HostError::Invalid)?)) {
        return Err(HostError::Invalid);
    }
    let name = &raw[..close + 2];
    let bad = name.bytes().any(|b| b <= b' ' || b == b'/' || b == b'@');
    finish_host(name, bad, name.bytes().any(|b| b.is_ascii_uppercase()))
}

fn finish_host(name: &str, bad: bool, upper: bool) -> Result<Cow<'_, str>, HostError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || bad {
        return Err(HostError::Invalid);
    }
    if upper {
        Ok(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(name))
    }
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(PathMatch, &'static str)]) -> RouteTable<&'static str> {
        let mut t = RouteTable::default();
        for (m, v) in routes {
            t.insert(m, *v).unwrap();
        }
        t
    }

    fn hit(t: &RouteTable<&'static str>, path: &str) -> Option<&'static str> {
        t.lookup(path).map(|(v, _)| *v)
    }

    #[test]
    fn prefix_matches_itself_with_and_without_trailing_slash() {
        let t = table(&[(PathMatch::prefix("/api"), "api")]);
        assert_eq!(hit(&t, "/api"), Some("api"));
        assert_eq!(hit(&t, "/api/"), Some("api"));
        assert_eq!(hit(&t, "/api/x/y"), Some("api"));
    }

    #[test]
    fn prefix_never_matches_inside_a_segment() {
        let t = table(&[(PathMatch::prefix("/api"), "api")]);
        assert_eq!(hit(&t, "/apix"), None);
        assert_eq!(hit(&t, "/api-v2/x"), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&[
            (PathMatch::prefix("/"), "root"),
            (PathMatch::prefix("/api"), "api"),
            (PathMatch::prefix("/api/admin"), "admin"),
        ]);
        assert_eq!(hit(&t, "/api/admin/users"), Some("admin"));
        assert_eq!(hit(&t, "/api/adminx"), Some("api"));
        assert_eq!(hit(&t, "/apix"), Some("root"));
        assert_eq!(hit(&t, "/"), Some("root"));
    }

    #[test]
    fn exact_beats_prefix() {
        let t = table(&[
            (PathMatch::prefix("/"), "root"),
            (PathMatch::Exact("/healthz".into()), "health"),
        ]);
        assert_eq!(hit(&t, "/healthz"), Some("health"));
        assert_eq!(hit(&t, "/healthz/x"), Some("root"));
    }

    #[test]
    fn exact_is_exact_about_trailing_slashes() {
        let t = table(&[(PathMatch::Exact("/healthz".into()), "health")]);
        assert_eq!(hit(&t, "/healthz/"), None);
    }

    #[test]
    fn a_configured_trailing_slash_is_the_same_prefix() {
        let t = table(&[(PathMatch::prefix("/static/"), "static")]);
        assert_eq!(hit(&t, "/static"), Some("static"));
        assert_eq!(hit(&t, "/static/app.css"), Some("static"));
    }

    #[test]
    fn the_matched_prefix_is_returned() {
        let t = table(&[(PathMatch::prefix("/api"), "api")]);
        assert_eq!(t.lookup("/api/x").map(|(_, p)| p), Some("/api"));
    }

    #[test]
    fn no_root_route_means_no_match() {
        let t = table(&[(PathMatch::prefix("/api"), "api")]);
        assert_eq!(hit(&t, "/"), None);
        assert_eq!(hit(&t, "/other"), None);
    }

    #[test]
    fn duplicate_matchers_are_refused() {
        let mut t = table(&[(PathMatch::prefix("/api"), "a")]);
        assert_eq!(t.insert(&PathMatch::prefix("/api/"), "b"), Err("b"));
    }

    fn hosts() -> HostTable {
        let mut h = HostTable::default();
        h.insert(&HostPattern::Exact("app.example.com".into()), 0)
            .unwrap();
        h.insert(&HostPattern::Wildcard("example.com".into()), 1)
            .unwrap();
        h.insert(&HostPattern::Wildcard("preview.example.com".into()), 2)
            .unwrap();
        h
    }

    #[test]
    fn exact_host_beats_wildcard() {
        assert_eq!(hosts().lookup("app.example.com"), Some(0));
    }

    #[test]
    fn wildcard_matches_any_depth_longest_first() {
        let h = hosts();
        assert_eq!(h.lookup("www.example.com"), Some(1));
        assert_eq!(h.lookup("a.b.example.com"), Some(1));
        assert_eq!(h.lookup("pr-1.preview.example.com"), Some(2));
    }

    #[test]
    fn wildcard_does_not_match_the_bare_domain() {
        assert_eq!(hosts().lookup("example.com"), None);
    }

    #[test]
    fn unknown_host_falls_back_to_default() {
        let mut h = hosts();
        assert_eq!(h.lookup("other.org"), None);
        h.set_default(7);
        assert_eq!(h.lookup("other.org"), Some(7));
    }

    #[test]
    fn duplicate_hosts_name_the_first_site() {
        let mut h = hosts();
        assert_eq!(
            h.insert(&HostPattern::Exact("app.example.com".into()), 5),
            Err(0)
        );
    }

    #[test]
    fn host_normalization_strips_port_dot_and_case() {
        let cases = [
            ("App.Example.COM", "app.example.com"),
            ("app.example.com:8080", "app.example.com"),
            ("app.example.com.", "app.example.com"),
            ("APP.example.com.:443", "app.example.com"),
            ("[::1]:8080", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn host_normalization_borrows_when_already_lowercase() {
        assert!(matches!(
            normalize_host("a.example.com"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for raw in [
            "",
            ":80",
            "a.com:x",
            "a b",
            "[::1",
            "user@host",
            "a.com:123456",
            "a/b.com",
            "a\tb.com",
            "a\u{0}b.com",
            "a.com:8:80",
        ] {
            assert_eq!(normalize_host(raw), Err(HostError::Invalid), "{raw}");
        }
    }
}
