//! The routes file exactly as written: serde structs that mirror the TOML, nothing more.
//!
//! Every table denies unknown keys, so a typo (`upsteam = ...`) is an error with a position rather
//! than a silently ignored line. Values that can be wrong in ways serde cannot see (URLs, hosts,
//! durations) stay strings wrapped in [`Spanned`] here; the typed layer in `config/mod.rs` parses
//! them and reports every problem with its position. This module must not do I/O or validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    pub clerk: Option<Spanned<RawClerk>>,
    #[serde(default, rename = "site")]
    pub sites: Vec<Spanned<RawSite>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub http: Option<Spanned<OneOrMany>>,
    pub https: Option<Spanned<OneOrMany>>,
    pub admin: Option<Spanned<String>>,
    pub trusted_proxies: Option<Spanned<OneOrMany>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub tls_handshake_timeout: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub max_request_header_bytes: Option<Spanned<RawSize>>,
    pub max_body: Option<Spanned<RawSize>>,
    pub max_connections: Option<Spanned<i64>>,
    pub workers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub access_log_format: Option<Spanned<String>>,
    pub access_log_query: Option<bool>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawClerk {
    pub publishable_key: Option<Spanned<RawSecret>>,
    pub secret_key: Option<Spanned<RawSecret>>,
    pub fapi_url: Option<Spanned<String>>,
    pub public_url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: Option<Spanned<String>>,
    pub hosts: Option<Spanned<OneOrMany>>,
    pub default: Option<bool>,
    pub tls: Option<Spanned<RawTls>>,
    pub redirect_https: Option<Spanned<RawRedirectHttps>>,
    pub hsts: Option<Spanned<String>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub id: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub exact: Option<Spanned<String>>,

    // Targets: exactly one of these.
    pub upstream: Option<Spanned<OneOrMany>>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub respond: Option<Spanned<RawRespond>>,
    pub clerk: Option<Spanned<RawClerkRoute>>,
    #[serde(rename = "static")]
    pub static_files: Option<Spanned<RawStatic>>,

    // Proxy options.
    pub strip_prefix: Option<bool>,
    pub host: Option<Spanned<String>>,
    pub tls_verify: Option<bool>,
    pub tls_ca: Option<Spanned<String>>,
    pub http2: Option<bool>,
    pub websocket: Option<bool>,
    pub allow_encoded_slashes: Option<bool>,
    pub allow_underscore_headers: Option<bool>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_request_header_bytes: Option<Spanned<RawSize>>,
    pub max_body: Option<Spanned<RawSize>>,
    pub request_headers: Option<Spanned<RawHeaderOps>>,
    pub response_headers: Option<Spanned<RawHeaderOps>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub to: Spanned<String>,
    pub status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<Spanned<i64>>,
    #[serde(default)]
    pub body: String,
    pub content_type: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    pub root: Spanned<String>,
    pub index: Option<Spanned<OneOrMany>>,
    pub fallback: Option<Spanned<String>>,
    pub allow_symlinks: Option<bool>,
    pub precompressed: Option<bool>,
    pub cache_control: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsFiles {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `tls = "self-signed"` or `tls = { cert = "...", key = "..." }`.
#[derive(Debug)]
pub enum RawTls {
    Keyword(String),
    Files(RawTlsFiles),
}

impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTls;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"self-signed\" or a table { cert = \"...\", key = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTls, E> {
                Ok(RawTls::Keyword(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTls, A::Error> {
                RawTlsFiles::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawTls::Files)
            }
        }
        d.deserialize_any(V)
    }
}

/// `redirect_https = true` (308) or a status code (`301` to keep what certbot's nginx block did).
#[derive(Debug, Clone, Copy)]
pub enum RawRedirectHttps {
    On(bool),
    Status(i64),
}

impl<'de> Deserialize<'de> for RawRedirectHttps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRedirectHttps;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a redirect status (301, 302, 307, 308)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawRedirectHttps, E> {
                Ok(RawRedirectHttps::On(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawRedirectHttps, E> {
                Ok(RawRedirectHttps::Status(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `clerk = true`, `clerk = false`, or a table of per-route overrides.
#[derive(Debug)]
pub enum RawClerkRoute {
    Enabled(bool),
    Overrides(RawClerk),
}

impl<'de> Deserialize<'de> for RawClerkRoute {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawClerkRoute;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a table of [clerk] keys")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawClerkRoute, E> {
                Ok(RawClerkRoute::Enabled(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawClerkRoute, A::Error> {
                RawClerk::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawClerkRoute::Overrides)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a secret comes from: `{ env = "NAME" }`, `{ file = "path" }`, or a literal string.
#[derive(Clone, PartialEq, Eq)]
pub enum RawSecret {
    Literal(String),
    Env(String),
    File(String),
}

/// Never print a literal secret, not even in a debug dump of the raw config.
impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSecret::Literal(_) => f.write_str("Literal(<redacted>)"),
            RawSecret::Env(name) => write!(f, "Env({name:?})"),
            RawSecret::File(path) => write!(f, "File({path:?})"),
        }
    }
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"NAME\" }, { file = \"path\" }, or a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let secret = match key.as_str() {
                        "env" => RawSecret::Env(value),
                        "file" => RawSecret::File(value),
                        other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                    };
                    if found.replace(secret).is_some() {
                        return Err(de::Error::custom("give either `env` or `file`, not both"));
                    }
                }
                found.ok_or_else(|| {
                    de::Error::custom("expected `env = \"NAME\"` or `file = \"path\"`")
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A size written as `"32KiB"` or as a plain number of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSize {
    Text(String),
    Bytes(i64),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"32KiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string or a list of strings (`http = "127.0.0.1:80"` or `http = ["...", "..."]`).
#[derive(Debug, Clone)]
pub enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl OneOrMany {
    /// Each value with its own span where the file gives one, else the span of the whole value.
    pub fn items(&self, whole: std::ops::Range<usize>) -> Vec<(String, std::ops::Range<usize>)> {
        match self {
            OneOrMany::One(s) => vec![(s.clone(), whole)],
            OneOrMany::Many(v) => v.iter().map(|s| (s.get_ref().clone(), s.span())).collect(),
        }
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    out.push(item);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}
