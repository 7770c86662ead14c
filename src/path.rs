//! Request-path normalization for routing.
//!
//! Routing must see the path the backend will see, or `/public/../admin` reaches the admin
//! backend through the public route's rules. So the router matches on a normalized form:
//! percent-encoded unreserved characters decoded (RFC 3986 §2.3, §6.2.2.2), repeated slashes merged
//! (nginx's `merge_slashes on`), and dot segments resolved (RFC 3986 §5.2.4). A path that climbs
//! above `/` is an error (400), not clamped, because no honest client sends one.
//!
//! Encoded separators (`%2F`, `%5C`), a raw backslash and NUL are left as they are but flagged:
//! backends disagree about whether `%2F` splits a segment and whether `\` is `/`, which is how
//! path-confusion attacks slip past prefix rules. App routes refuse flagged paths unless the route
//! opts in; the Clerk route forwards them as Clerk's own proxy does.
//!
//! This module is pure: no I/O, no allocation when the path is already normal.

use std::borrow::Cow;

/// A path ready for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    pub path: Cow<'a, str>,
    /// The raw path contains `%2F`, `%5C`, `\` or `%00`.
    pub ambiguous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotOrigin,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path climbs above `/`")]
    AboveRoot,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when the raw path has an encoded or raw separator, or NUL, that backends read differently.
pub fn is_ambiguous(raw: &str) -> bool {
    scan(raw.as_bytes()).ambiguous
}

/// What one pass over a raw path finds.
struct Scan {
    ambiguous: bool,
    /// An escape, an empty segment or a dot segment: the path must be rewritten.
    needs_work: bool,
}

/// One pass instead of one per pattern: this runs on every request (six substring searches were
/// 3% of a small request's instructions under callgrind).
fn scan(b: &[u8]) -> Scan {
    let mut s = Scan {
        ambiguous: false,
        needs_work: false,
    };
    let at = |i: usize| b.get(i).copied();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => s.ambiguous = true,
            b'%' => {
                s.needs_work = true;
                if matches!(
                    (at(i + 1), at(i + 2).map(|x| x.to_ascii_uppercase())),
                    (Some(b'2'), Some(b'F')) | (Some(b'5'), Some(b'C')) | (Some(b'0'), Some(b'0'))
                ) {
                    s.ambiguous = true;
                }
            }
            // `//`, `/.` and `/..` as whole segments.
            b'/' => match (at(i + 1), at(i + 2), at(i + 3)) {
                (Some(b'/'), _, _) => s.needs_work = true,
                (Some(b'.'), None | Some(b'/'), _) => s.needs_work = true,
                (Some(b'.'), Some(b'.'), None | Some(b'/')) => s.needs_work = true,
                _ => {}
            },
            _ => {}
        }
    }
    s
}

/// Normalizes `raw` (the path part of the request target, without the query).
pub fn normalize(raw: &str) -> Result<NormalizedPath<'_>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOrigin);
    }
    let Scan {
        ambiguous,
        needs_work,
    } = scan(bytes);
    // Fast path: nothing to decode, no empty or dot segments.
    if !needs_work {
        return Ok(NormalizedPath {
            path: Cow::Borrowed(raw),
            ambiguous,
        });
    }

    // Step 1: decode unreserved escapes; keep the rest (uppercased, RFC 3986 §6.2.2.1).
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            if is_unreserved(v) {
                decoded.push(v);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }

    // Step 2: merge slashes and resolve dot segments.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            b"" => {
                if n == last {
                    trailing_slash = true;
                }
            }
            b"." => {
                if n == last {
                    trailing_slash = true;
                }
            }
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if n == last {
                    trailing_slash = true;
                }
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        // Only ASCII bytes were decoded, so this is still valid UTF-8 wherever `raw` was.
        path.push_str(std::str::from_utf8(seg).map_err(|_| PathError::BadEscape)?);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(NormalizedPath {
        path: Cow::Owned(path),
        ambiguous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        normalize(raw).unwrap().path.into_owned()
    }

    #[test]
    fn the_single_pass_scan_agrees_with_the_pattern_definitions() {
        for raw in [
            "/",
            "/a",
            "/a/b/",
            "//",
            "/a//b",
            "/.",
            "/a/.",
            "/./a",
            "/.a",
            "/a/.b",
            "/..",
            "/a/..",
            "/../a",
            "/..a",
            "/a/..b",
            "/...",
            "/a%41",
            "/a%2f",
            "/a%2Fb",
            "/%5c",
            "/%5C",
            "/%00",
            "/%0",
            "/%",
            "/a\\b",
            "/a?b",
            "/a/b/c.txt",
        ] {
            let work = raw.contains('%')
                || ["//", "/./", "/../"].iter().any(|p| raw.contains(p))
                || raw.ends_with("/.")
                || raw.ends_with("/..");
            let ambiguous = raw.contains('\\')
                || ["%2f", "%5c", "%00"]
                    .iter()
                    .any(|p| raw.to_ascii_lowercase().contains(p));
            let s = scan(raw.as_bytes());
            assert_eq!((s.needs_work, s.ambiguous), (work, ambiguous), "{raw}");
        }
    }

    #[test]
    fn a_normal_path_is_borrowed_unchanged() {
        let n = normalize("/api/v1/users").unwrap();
        assert!(matches!(n.path, Cow::Borrowed("/api/v1/users")));
        assert!(!n.ambiguous);
    }

    #[test]
    fn dot_dot_is_resolved_rfc3986_5_2_4() {
        assert_eq!(norm("/api/../admin"), "/admin");
        assert_eq!(norm("/a/b/../../c"), "/c");
    }

    #[test]
    fn single_dots_are_removed() {
        assert_eq!(norm("/./api/./x"), "/api/x");
    }

    #[test]
    fn encoded_dots_are_decoded_then_resolved() {
        assert_eq!(norm("/api/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/api/.%2E/admin"), "/admin");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(norm("//api///x"), "/api/x");
    }

    #[test]
    fn a_trailing_slash_is_kept() {
        assert_eq!(norm("/api/x/"), "/api/x/");
        assert_eq!(norm("/api/x/.."), "/api/");
    }

    #[test]
    fn climbing_above_root_is_an_error() {
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
        assert_eq!(
            normalize("/api/../../etc/passwd"),
            Err(PathError::AboveRoot)
        );
        assert_eq!(normalize("/%2e%2e/x"), Err(PathError::AboveRoot));
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept_uppercase() {
        assert_eq!(norm("/%7Euser/%61"), "/~user/a");
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/caf%c3%a9"), "/caf%C3%A9");
    }

    #[test]
    fn malformed_escapes_are_errors() {
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
    }

    #[test]
    fn the_path_must_be_origin_form() {
        assert_eq!(normalize("*"), Err(PathError::NotOrigin));
        assert_eq!(normalize(""), Err(PathError::NotOrigin));
    }

    #[test]
    fn encoded_slash_backslash_and_nul_are_flagged() {
        for raw in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/a\\b", "/a%00b"] {
            assert!(normalize(raw).unwrap().ambiguous, "{raw}");
        }
    }

    #[test]
    fn ordinary_escapes_are_not_flagged() {
        for raw in ["/a%20b", "/caf%C3%A9", "/a%25"] {
            assert!(!normalize(raw).unwrap().ambiguous, "{raw}");
        }
    }
}
