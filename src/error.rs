//! Request-level errors and the one table that maps them to status codes.
//!
//! The handler returns `Result<Response, ProxyError>`; the outer layer logs the error once and
//! turns it into a short response with [`ProxyError::status`]. The hyper service itself never
//! fails, so one bad request never takes a connection's other streams down with it.

use http::StatusCode;

use crate::path::PathError;
use crate::upstream::FailureKind;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the Host header is not a valid host name")]
    BadHost,
    /// RFC 9112 §3.2: more than one Host field is a 400. Routing on one while a backend reads
    /// the other is a way around host-based rules; nginx refuses it too.
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("no site is configured for this host")]
    NoSite,
    #[error("no route of this site matches the path")]
    NoRoute,
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    #[error(
        "the path contains an encoded slash, backslash or NUL, which this route refuses (set allow_encoded_slashes = true on the route to allow them)"
    )]
    AmbiguousPath,
    #[error("this connection's TLS server name belongs to another site")]
    Misdirected,
    #[error("the request headers are larger than the route allows")]
    HeadersTooLarge,
    #[error("the request body is larger than max_body ({0} bytes)")]
    BodyTooLarge(u64),
    /// The client's body broke off or was malformed while it was streamed to the backend (nginx
    /// answers 400 "client sent invalid chunked body"; it reads the body before connecting).
    #[error("the request body was cut short or malformed: {0}")]
    BadBody(String),
    /// The client stopped sending its body mid-way (nginx's `client_body_timeout`: 408).
    #[error("the client sent no request body bytes for {0} ms (body_timeout)")]
    BodyTimeout(u128),
    #[error("every backend of the route is cooling off after failures")]
    NoBackend,
    #[error("backend {backend}: {kind}: {detail}", kind = .kind.label())]
    Upstream {
        backend: String,
        kind: FailureKind,
        detail: String,
    },
    #[error("backend {backend}: no response headers within {timeout_ms} ms")]
    UpstreamTimeout { backend: String, timeout_ms: u128 },
    /// nginx's `proxy_send_timeout`: the backend stopped taking the request body.
    #[error("backend {backend}: took no request body bytes for {timeout_ms} ms (body_timeout)")]
    UpstreamSendTimeout { backend: String, timeout_ms: u128 },
    #[error("the upstream answered an upgrade without switching protocols")]
    UpgradeRefused,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The one error → status table (pinned by a unit test).
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            MissingHost | BadHost | DuplicateHost | BadPath(_) | AmbiguousPath | BadBody(_) => {
                StatusCode::BAD_REQUEST
            }
            NoSite | NoRoute => StatusCode::NOT_FOUND,
            Misdirected => StatusCode::MISDIRECTED_REQUEST,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Upstream {
                kind: FailureKind::ConnectTimeout,
                ..
            }
            | UpstreamTimeout { .. }
            | UpstreamSendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Upstream { .. } | UpgradeRefused => StatusCode::BAD_GATEWAY,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short body a client sees (no backend addresses: those are for the log).
    pub fn public_message(&self) -> &'static str {
        use ProxyError::*;
        match self {
            MissingHost => "the request has no Host header",
            BadHost => "the Host header is not valid",
            DuplicateHost => "the request has more than one Host header",
            NoSite => "no site is configured for this host",
            NoRoute => "no route matches this path",
            BadPath(PathError::AboveRoot) => "the path climbs above /",
            BadPath(_) => "the path is not valid",
            AmbiguousPath => "the path contains an encoded slash, backslash or NUL",
            Misdirected => "this host is not served on this TLS connection",
            HeadersTooLarge => "the request headers are too large",
            BodyTooLarge(_) => "the request body is too large",
            BadBody(_) => "the request body was cut short or malformed",
            BodyTimeout(_) => "the request body stopped arriving",
            NoBackend => "no backend is available",
            Upstream {
                kind: FailureKind::ConnectTimeout,
                ..
            }
            | UpstreamTimeout { .. }
            | UpstreamSendTimeout { .. } => "the backend did not answer in time",
            Upstream { .. } | UpgradeRefused => "the backend could not be reached",
            Internal(_) => "internal error",
        }
    }

    /// Whether this is the client's fault (logged at debug) or ours/the backend's (warn).
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(kind: FailureKind) -> ProxyError {
        ProxyError::Upstream {
            backend: "http://b".into(),
            kind,
            detail: String::new(),
        }
    }

    #[test]
    fn status_table() {
        let cases: Vec<(ProxyError, u16)> = vec![
            (ProxyError::MissingHost, 400),
            (ProxyError::BadHost, 400),
            (ProxyError::DuplicateHost, 400),
            (ProxyError::BadPath(PathError::AboveRoot), 400),
            (ProxyError::AmbiguousPath, 400),
            (ProxyError::BadBody(String::new()), 400),
            (ProxyError::BodyTimeout(60_000), 408),
            (ProxyError::NoSite, 404),
            (ProxyError::NoRoute, 404),
            (ProxyError::Misdirected, 421),
            (ProxyError::HeadersTooLarge, 431),
            (ProxyError::BodyTooLarge(1), 413),
            (ProxyError::NoBackend, 503),
            (upstream(FailureKind::Refused), 502),
            (upstream(FailureKind::Reset), 502),
            (upstream(FailureKind::Tls), 502),
            (upstream(FailureKind::Dns), 502),
            (upstream(FailureKind::ConnectTimeout), 504),
            (
                ProxyError::UpstreamTimeout {
                    backend: "b".into(),
                    timeout_ms: 1,
                },
                504,
            ),
            (
                ProxyError::UpstreamSendTimeout {
                    backend: "b".into(),
                    timeout_ms: 1,
                },
                504,
            ),
            (ProxyError::UpgradeRefused, 502),
            (ProxyError::Internal("x".into()), 500),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
        }
    }
}
