//! Gatehouse: an HTTP gateway driven by one TOML routes file.
//!
//! It maps domains and path prefixes to app backends (reverse proxy), to redirects, fixed
//! responses, static files, or a built-in proxy for Clerk's Frontend API; serves a certificate per
//! domain; and swaps in a new version of the file when it changes, without dropping a request.
//!
//! # Layout
//!
//! The request path reads top to bottom:
//!
//! - [`server`]: listeners and connections (accept, TLS handshake, HTTP/1.1 and HTTP/2, client
//!   timeouts, graceful drain), with [`h1_server`], our HTTP/1.1 path for requests without a body,
//!   and [`h2_stall`], which resets an HTTP/2 stream whose client stopped taking it;
//! - [`proxy`]: the service: host → site → path → route → target → response fixups;
//! - [`router`] and [`path`]: pure lookup and path normalization;
//! - [`headers`]: pure header rules (hop-by-hop, forwarding, trust);
//! - [`upstream`]: clients and backend choice; [`pool`] and [`h1`]: our HTTP/1.1 upstream
//!   connections and their framing; [`clerk`], [`static_files`]: the other
//!   targets; [`body`]: body types; [`error`]: errors and their status codes;
//! - [`worker`]: state kept once per worker, so that no worker writes a cache line another
//!   worker writes on the request path.
//!
//! Around it: [`config`] (the file → a typed `Config`), [`state`] (a `Config` → the immutable
//! `Snapshot` requests read), [`gateway`] (start, reload, shutdown), [`tls`] (certificates and
//! handshakes), [`cli`] (commands).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
// The crate's readers are its developers: module docs link to the private items that do the
// work, and `cargo doc --document-private-items` resolves them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod clerk;
pub mod clerk_setup;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod h1;
pub mod h1_server;
pub mod h2_stall;
pub mod headers;
pub mod metrics;
pub mod nginx;
pub mod park;
pub mod path;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod state;
pub mod static_files;
pub mod systemd;
pub mod template;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use gateway::{Gateway, Options};
