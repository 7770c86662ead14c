//! The runtime snapshot: everything a request needs, built once from a [`Config`] and swapped in
//! whole.
//!
//! A [`Snapshot`] holds the host table, every site's route table, the upstream pools and the
//! certificates; [`Shared`] holds the current one behind an `ArcSwap`. A request loads it once
//! (`load_full`) and uses that one view to the end, so a reload can never show it half of two
//! configs, and a reload costs the request path nothing but that one atomic load.
//!
//! Building is the expensive part (clients, self-signed certificates) and happens off the request
//! path; it reuses what the previous snapshot had where nothing changed. This module must not
//! parse config text or touch sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderValue;
use rustls::sign::CertifiedKey;

use crate::config::{
    ClerkConfig, Config, RedirectConfig, RespondConfig, RouteOptions, StaticConfig, StaticFallback,
    TargetConfig, TlsSource, UpstreamConfig, defaults,
};
use crate::headers::TrustedProxies;
use crate::metrics::RouteMetrics;
use crate::router::{HostPattern, HostTable, PathMatch, RouteTable};
use crate::tls::{CertSource, LoadedCert};
use crate::upstream::{Backend, ClientCache, ClientProfile, Upstream};

/// What a matched route does.
#[derive(Debug)]
pub enum Target {
    Upstream(Arc<Upstream>),
    Redirect(RedirectConfig),
    Respond(RespondConfig),
    Clerk(Arc<ClerkTarget>),
    Static(Arc<StaticTarget>),
}

/// A Clerk route: its resolved keys and the client to FAPI.
#[derive(Debug)]
pub struct ClerkTarget {
    pub config: ClerkConfig,
    pub upstream: Upstream,
}

/// A static-files route and where its misses go.
#[derive(Debug)]
pub struct StaticTarget {
    pub config: StaticConfig,
    pub fallback: Option<Arc<Route>>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    pub site: Arc<str>,
    pub matcher: PathMatch,
    pub target: Target,
    pub options: RouteOptions,
    pub metrics: RouteMetrics,
}

/// A compiled site.
#[derive(Debug)]
pub struct Site {
    pub name: Arc<str>,
    pub hosts: Vec<HostPattern>,
    pub routes: RouteTable<Arc<Route>>,
    pub redirect_https: Option<http::StatusCode>,
    pub hsts: Option<HeaderValue>,
    pub cert: Option<Arc<LoadedCert>>,
    pub self_signed: bool,
}

/// One immutable version of the configuration, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub hosts: HostTable,
    pub sites: Vec<Site>,
    pub trusted: TrustedProxies,
    /// The port of the first https listener, for `redirect_https` (omitted from URLs when 443).
    pub https_port: Option<u16>,
}

impl Snapshot {
    /// Builds a snapshot. `prev` lends its self-signed certificates to sites whose hosts did not
    /// change; `clients` lends its pooled connections.
    pub fn build(
        config: Arc<Config>,
        generation: u64,
        prev: Option<&Snapshot>,
        clients: &ClientCache,
    ) -> Result<Snapshot, String> {
        let mut hosts = HostTable::default();
        let mut sites = Vec::with_capacity(config.sites.len());
        let mut prev_self_signed: HashMap<&[HostPattern], &Arc<LoadedCert>> = HashMap::new();
        if let Some(p) = prev {
            for s in &p.sites {
                if let (true, Some(c)) = (s.self_signed, &s.cert) {
                    prev_self_signed.insert(&s.hosts, c);
                }
            }
        }
        for (i, sc) in config.sites.iter().enumerate() {
            for h in &sc.hosts {
                hosts
                    .insert(h, i)
                    .map_err(|other| format!("host {h} is claimed by sites {other} and {i}"))?;
            }
            if sc.default {
                hosts.set_default(i);
            }
            let name: Arc<str> = sc.name.as_str().into();
            let (cert, self_signed) = match &sc.tls {
                None => (None, false),
                Some(TlsSource::Files { loaded, .. }) => (Some(loaded.clone()), false),
                Some(TlsSource::SelfSigned) => match prev_self_signed.get(sc.hosts.as_slice()) {
                    Some(c) => (Some((*c).clone()), true),
                    None => (Some(Arc::new(crate::tls::self_signed(&sc.hosts)?)), true),
                },
            };
            // Non-static routes first, so static fallbacks can point at them.
            let mut built: HashMap<&str, Arc<Route>> = HashMap::new();
            let mut routes = RouteTable::default();
            let ordered = sc
                .routes
                .iter()
                .filter(|r| !matches!(r.target, TargetConfig::Static(_)))
                .chain(
                    sc.routes
                        .iter()
                        .filter(|r| matches!(r.target, TargetConfig::Static(_))),
                );
            for rc in ordered {
                let profile = profile_for(&rc.options);
                let upstream_for =
                    |u: &UpstreamConfig, profile: &ClientProfile| -> Result<Upstream, String> {
                        let client = clients.get(profile)?;
                        let mut backends = Vec::with_capacity(u.backends.len());
                        for b in &u.backends {
                            let pool = match profile.http2 {
                                true => None,
                                false => Some(clients.pool(profile, b)?),
                            };
                            backends.push(Arc::new(Backend::new(b.clone(), pool)));
                        }
                        Ok(Upstream::new(backends, client, defaults::BACKEND_COOL_OFF))
                    };
                let target = match &rc.target {
                    TargetConfig::Upstream(u) => {
                        Target::Upstream(Arc::new(upstream_for(u, &profile)?))
                    }
                    TargetConfig::Redirect(r) => Target::Redirect(r.clone()),
                    TargetConfig::Respond(r) => Target::Respond(r.clone()),
                    TargetConfig::Clerk(c) => {
                        let fapi = UpstreamConfig {
                            backends: vec![crate::config::BackendUrl {
                                https: c.fapi.https,
                                authority: c.fapi.authority.clone(),
                                base_path: c.fapi.base_path.clone(),
                            }],
                        };
                        Target::Clerk(Arc::new(ClerkTarget {
                            config: c.clone(),
                            upstream: upstream_for(&fapi, &clerk_profile(&rc.options))?,
                        }))
                    }
                    TargetConfig::Static(s) => {
                        let fallback = match &s.fallback {
                            StaticFallback::NotFound | StaticFallback::File(_) => None,
                            StaticFallback::Route(id) => {
                                Some(built.get(id.as_str()).cloned().ok_or_else(|| {
                                    format!("static fallback route {id} not found")
                                })?)
                            }
                            StaticFallback::Upstream(u) => Some(Arc::new(Route {
                                id: format!("{}~fallback", rc.id).into(),
                                site: name.clone(),
                                matcher: rc.matcher.clone(),
                                target: Target::Upstream(Arc::new(upstream_for(u, &profile)?)),
                                options: rc.options.clone(),
                                metrics: RouteMetrics::new(
                                    name.clone(),
                                    format!("{}~fallback", rc.id).into(),
                                ),
                            })),
                        };
                        Target::Static(Arc::new(StaticTarget {
                            config: s.clone(),
                            fallback,
                        }))
                    }
                };
                let id: Arc<str> = rc.id.as_str().into();
                let route = Arc::new(Route {
                    metrics: RouteMetrics::new(name.clone(), id.clone()),
                    id,
                    site: name.clone(),
                    matcher: rc.matcher.clone(),
                    target,
                    options: rc.options.clone(),
                });
                built.insert(rc.id.as_str(), route.clone());
                routes
                    .insert(&rc.matcher, route)
                    .map_err(|_| format!("route {} duplicates a matcher", rc.id))?;
            }
            sites.push(Site {
                name,
                hosts: sc.hosts.clone(),
                routes,
                redirect_https: sc.redirect_https,
                hsts: sc.hsts.clone(),
                cert,
                self_signed,
            });
        }
        Ok(Snapshot {
            generation,
            loaded_at: SystemTime::now(),
            trusted: config.server.trusted_proxies.clone(),
            https_port: config.server.https.first().map(|a| a.port()),
            config,
            hosts,
            sites,
        })
    }

    /// The site whose certificate a TLS handshake for `sni` gets: the named site if it has a
    /// certificate, else the default site if it has one.
    pub fn tls_site(&self, sni: Option<&str>) -> Option<usize> {
        let named = sni
            .and_then(|s| crate::router::normalize_host(s).ok())
            .and_then(|h| self.hosts.lookup_named(&h));
        match named {
            Some(i) if self.sites[i].cert.is_some() => Some(i),
            _ => self
                .hosts
                .default_site()
                .filter(|&d| self.sites[d].cert.is_some()),
        }
    }

    pub fn cert_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.tls_site(sni)
            .and_then(|i| self.sites[i].cert.as_ref().map(|c| c.key.clone()))
    }

    /// Every upstream pool of this snapshot (app routes, static fallbacks, Clerk routes).
    pub fn upstreams(&self) -> Vec<&Upstream> {
        let mut out = Vec::new();
        for site in &self.sites {
            for route in site.routes.values() {
                collect_upstreams(route, &mut out);
            }
        }
        out
    }

    /// Every client profile this snapshot uses (the cache drops the others after a swap).
    pub fn client_profiles(&self) -> Vec<ClientProfile> {
        let mut out = Vec::new();
        for rc in self.config.sites.iter().flat_map(|s| &s.routes) {
            out.push(profile_for(&rc.options));
            if matches!(rc.target, TargetConfig::Clerk(_)) {
                out.push(clerk_profile(&rc.options));
            }
        }
        out
    }
}

/// The client profile of a route's upstream.
fn profile_for(o: &RouteOptions) -> ClientProfile {
    ClientProfile {
        tls_verify: o.tls_verify,
        tls_ca: o.tls_ca.clone(),
        http2: o.http2,
        connect_timeout: o.timeouts.connect,
        idle_timeout: o.timeouts.idle,
    }
}

/// Clerk's FAPI is always verified (against the system roots, plus the route's `tls_ca` for a
/// TLS-intercepting egress proxy or a test FAPI) and spoken to over HTTP/1.1.
fn clerk_profile(o: &RouteOptions) -> ClientProfile {
    ClientProfile {
        tls_verify: true,
        http2: false,
        ..profile_for(o)
    }
}

/// The current snapshot and what outlives snapshots.
pub struct Shared {
    current: ArcSwap<Snapshot>,
    pub clients: ClientCache,
    /// The access log writer, when `[log] access_log` is on.
    pub access_log: arc_swap::ArcSwapOption<crate::access_log::AccessLog>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("generation", &self.current.load().generation)
            .finish()
    }
}

impl Shared {
    pub fn new(first: Snapshot, clients: ClientCache) -> Shared {
        Shared {
            current: ArcSwap::from_pointee(first),
            clients,
            access_log: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The current snapshot. Call once per request and keep the `Arc` for the request's life.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot. Requests already running keep the one they loaded.
    pub fn store(&self, next: Arc<Snapshot>) {
        self.current.store(next);
        let profiles = self.current.load().client_profiles();
        self.clients.retain(&profiles);
    }
}

impl CertSource for Shared {
    fn cert_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.current.load().cert_for(sni)
    }
}

fn collect_upstreams<'a>(route: &'a Route, out: &mut Vec<&'a Upstream>) {
    match &route.target {
        Target::Upstream(u) => out.push(u),
        Target::Clerk(c) => out.push(&c.upstream),
        Target::Static(s) => {
            if let Some(fb) = &s.fallback {
                if matches!(fb.target, Target::Upstream(_)) {
                    collect_upstreams(fb, out);
                }
            }
        }
        Target::Redirect(_) | Target::Respond(_) => {}
    }
}
