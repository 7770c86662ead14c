//! Metric names, their descriptions, and cheap per-route handles.
//!
//! Every metric name is a constant here and is described once at start-up ([`describe`]).
//! Labels are bounded: site names and route ids come from the config, upstreams from the config's
//! URLs, never a raw path or Host from a request.
//!
//! The request path must not hash label sets per request, nor write what other workers write:
//! each route keeps its own handles, created on its first request, and each worker tallies its
//! requests on its own, handed to the registry in bursts and before every scrape
//! ([`RouteMetrics`]). Gauges that describe the current snapshot (backend health, requests in
//! flight, certificate expiry, config generation) are computed when `/metrics` is scraped.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use ::metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use http::{Method, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::worker::{PerWorker, lock};

pub const REQUESTS: &str = "gatehouse_requests_total";
pub const REQUEST_DURATION: &str = "gatehouse_request_duration_seconds";
pub const REQUEST_BYTES: &str = "gatehouse_request_bytes_total";
pub const RESPONSE_BYTES: &str = "gatehouse_response_bytes_total";
pub const UPSTREAM_ERRORS: &str = "gatehouse_upstream_errors_total";
pub const UPSTREAM_OPEN_CONNECTIONS: &str = "gatehouse_upstream_open_connections";
pub const UPSTREAM_ACTIVE_REQUESTS: &str = "gatehouse_upstream_active_requests";
pub const BACKEND_UP: &str = "gatehouse_backend_up";
pub const OPEN_CONNECTIONS: &str = "gatehouse_open_connections";
pub const CONNECTIONS: &str = "gatehouse_connections_total";
pub const PARKED_CONNECTIONS: &str = "gatehouse_parked_connections";
pub const TLS_HANDSHAKES: &str = "gatehouse_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "gatehouse_tls_handshake_failures_total";
pub const CERT_EXPIRY: &str = "gatehouse_certificate_expiry_seconds";
pub const CONFIG_GENERATION: &str = "gatehouse_config_generation";
pub const CONFIG_LAST_RELOAD: &str = "gatehouse_config_last_reload_timestamp_seconds";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "gatehouse_config_last_reload_success";
pub const CONFIG_RELOAD_ERRORS: &str = "gatehouse_config_reload_errors_total";
pub const CONFIG_RELOAD_DURATION: &str = "gatehouse_config_reload_duration_seconds";
pub const CLERK_REQUESTS: &str = "gatehouse_clerk_requests_total";
pub const CLERK_ERRORS: &str = "gatehouse_clerk_errors_total";
pub const ACCESS_LOG_DROPPED: &str = "gatehouse_access_log_dropped_total";

/// Latency buckets (seconds): nginx-class proxies answer in well under a millisecond, apps in
/// tens to hundreds of milliseconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder once per process and returns its handle. Later calls (tests
/// that start several gateways) get the same handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if ::metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Starts [`spawn_upkeep`] once per process.
pub fn spawn_upkeep_once(handle: PrometheusHandle) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if !STARTED.swap(true, Ordering::SeqCst) {
        spawn_upkeep(handle);
    }
}

/// How often histogram samples are drained into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Drains histogram samples into their buckets; the exporter needs this called regularly.
///
/// On a thread of its own, not a task: a drain works through every request's duration since the
/// last one (about 2 ms for 5 s at 50k requests per second, `perf`), and as a task it ran on the
/// main runtime, which with one worker is the serving one, so every connection stalled for it
/// (bench/README.md, scenario 1's p99.9). Every second rather than every five, so that the
/// samples waiting in between stay small.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("gatehouse-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics thread; latency histograms are drained only when /metrics is read");
    }
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "Requests answered, by site, route, method class and status class"
    );
    describe_histogram!(
        REQUEST_DURATION,
        ::metrics::Unit::Seconds,
        "Time from request head to the last response byte"
    );
    describe_counter!(
        REQUEST_BYTES,
        ::metrics::Unit::Bytes,
        "Request body bytes received from clients"
    );
    describe_counter!(
        RESPONSE_BYTES,
        ::metrics::Unit::Bytes,
        "Response body bytes sent to clients"
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        "Failed upstream calls, by upstream and kind (refused, connect_timeout, timeout, reset, tls, dns, error; body: a response body broken off after its head)"
    );
    describe_gauge!(
        UPSTREAM_OPEN_CONNECTIONS,
        "Open connections to an upstream (active and idle in the pool)"
    );
    describe_gauge!(
        UPSTREAM_ACTIVE_REQUESTS,
        "Requests in flight to an upstream; idle pooled connections = open - active"
    );
    describe_gauge!(
        BACKEND_UP,
        "1 when a backend is in rotation, 0 while it is cooling off after a failure"
    );
    describe_gauge!(
        OPEN_CONNECTIONS,
        "Open client connections, by listener and protocol (h1, h2, websocket)"
    );
    describe_counter!(CONNECTIONS, "Client connections accepted, by listener");
    describe_gauge!(
        PARKED_CONNECTIONS,
        "Idle HTTP/1.1 keep-alive connections held as bare sockets (counted in open connections too)"
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes completed, by negotiated protocol"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by reason"
    );
    describe_gauge!(
        CERT_EXPIRY,
        ::metrics::Unit::Seconds,
        "Seconds until a site's certificate expires"
    );
    describe_gauge!(
        CONFIG_GENERATION,
        "Generation of the configuration being served"
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD,
        ::metrics::Unit::Seconds,
        "Unix time of the last reload attempt"
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        "1 when the last reload attempt succeeded"
    );
    describe_counter!(
        CONFIG_RELOAD_ERRORS,
        "Reload attempts refused (the previous configuration kept serving)"
    );
    describe_histogram!(
        CONFIG_RELOAD_DURATION,
        ::metrics::Unit::Seconds,
        "Time to validate and swap in a configuration"
    );
    describe_counter!(
        CLERK_REQUESTS,
        "Requests sent to Clerk's Frontend API, by route and status class"
    );
    describe_counter!(CLERK_ERRORS, "Clerk proxy errors, by route and error code");
    describe_counter!(
        ACCESS_LOG_DROPPED,
        "Access log lines dropped because the writer fell behind"
    );
}

/// `GET`, `POST`, ... or `other`: a bounded method label.
pub fn method_class(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn status_class(s: StatusCode) -> usize {
    ((s.as_u16() / 100).clamp(1, 5) - 1) as usize
}

pub fn status_label(s: StatusCode) -> &'static str {
    STATUSES[status_class(s)]
}

struct Handles {
    requests: [[OnceLock<Counter>; 5]; 8],
    duration: [[OnceLock<Histogram>; 5]; 8],
    bytes_in: Counter,
    bytes_out: Counter,
}

/// One route's metrics.
///
/// A request is recorded in its worker's own [`Pending`] tally, not in the registry: the
/// registry's counters and histograms are shared by all workers, and updating them per request
/// made every worker write the same cache lines (on two workers, recording in them directly
/// cost 14% of the proxy's user CPU; bench/README.md). A tally is handed over every
/// [`FLUSH_AT`] requests, when `/metrics` is read ([`flush_all`]), and when the route goes away
/// with its snapshot, so no request goes uncounted and a scrape sees every finished request.
#[derive(Default)]
pub struct RouteMetrics {
    site: Arc<str>,
    route: Arc<str>,
    /// Made on the route's first request: a table of 10,000 sites keeps none for idle routes.
    tallies: OnceLock<Arc<Tallies>>,
}

struct Tallies {
    site: Arc<str>,
    route: Arc<str>,
    handles: OnceLock<Box<Handles>>,
    workers: PerWorker<Mutex<Pending>>,
}

/// Requests a worker has recorded and not yet handed to the registry.
#[derive(Default)]
struct Pending {
    requests: [[u64; 5]; 8],
    bytes_in: u64,
    bytes_out: u64,
    /// Method class, status class, seconds.
    durations: Vec<(u8, u8, f64)>,
}

/// Requests per worker tally between hand-overs: the registry's lines are then written in a
/// burst by one core, not per request by each.
const FLUSH_AT: usize = 256;

/// Every route's tallies that may hold requests: [`flush_all`] hands them over.
static LIVE: Mutex<Live> = Mutex::new(Live {
    list: Vec::new(),
    prune_at: 64,
});

struct Live {
    list: Vec<Weak<Tallies>>,
    /// The list is pruned of routes gone with their snapshots when it reaches this length (then
    /// twice what is left): without scrapes, reloads would otherwise grow it without end.
    prune_at: usize,
}

impl Live {
    fn add(&mut self, t: &Arc<Tallies>) {
        if self.list.len() >= self.prune_at {
            self.list.retain(|w| w.strong_count() > 0);
            self.prune_at = (self.list.len() * 2).max(64);
        }
        self.list.push(Arc::downgrade(t));
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish()
    }
}

impl RouteMetrics {
    pub fn new(site: Arc<str>, route: Arc<str>) -> RouteMetrics {
        RouteMetrics {
            site,
            route,
            tallies: OnceLock::new(),
        }
    }

    fn tallies(&self) -> &Tallies {
        self.tallies.get_or_init(|| {
            let t = Arc::new(Tallies {
                site: self.site.clone(),
                route: self.route.clone(),
                handles: OnceLock::new(),
                workers: PerWorker::new(Mutex::default),
            });
            lock(&LIVE).add(&t);
            t
        })
    }

    /// Records one finished request.
    pub fn record(
        &self,
        method: usize,
        status: StatusCode,
        elapsed: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let t = self.tallies();
        let (m, s) = (method.min(7), status_class(status));
        let full = {
            let mut p = lock(t.workers.local());
            p.requests[m][s] += 1;
            p.bytes_in += bytes_in;
            p.bytes_out += bytes_out;
            p.durations.push((m as u8, s as u8, elapsed.as_secs_f64()));
            (p.durations.len() >= FLUSH_AT).then(|| std::mem::take(&mut *p))
        };
        if let Some(p) = full {
            t.hand_over(p);
        }
    }
}

impl Drop for RouteMetrics {
    fn drop(&mut self) {
        if let Some(t) = self.tallies.get() {
            t.flush();
        }
    }
}

impl Tallies {
    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let labels = [
                ("site", self.site.to_string()),
                ("route", self.route.to_string()),
            ];
            Box::new(Handles {
                requests: Default::default(),
                duration: Default::default(),
                bytes_in: counter!(REQUEST_BYTES, &labels),
                bytes_out: counter!(RESPONSE_BYTES, &labels),
            })
        })
    }

    fn flush(&self) {
        for w in self.workers.iter() {
            let p = std::mem::take(&mut *lock(w));
            self.hand_over(p);
        }
    }

    /// Adds a tally to the registry's counters and histograms.
    fn hand_over(&self, p: Pending) {
        let h = self.handles();
        let labels = |m: usize, s: usize| {
            [
                ("site", self.site.to_string()),
                ("route", self.route.to_string()),
                ("method", METHODS[m].to_string()),
                ("status", STATUSES[s].to_string()),
            ]
        };
        for (m, row) in p.requests.iter().enumerate() {
            for (s, &n) in row.iter().enumerate().filter(|(_, n)| **n > 0) {
                h.requests[m][s]
                    .get_or_init(|| counter!(REQUESTS, &labels(m, s)))
                    .increment(n);
            }
        }
        for (m, s, secs) in p.durations {
            let (m, s) = (m as usize, s as usize);
            h.duration[m][s]
                .get_or_init(|| histogram!(REQUEST_DURATION, &labels(m, s)))
                .record(secs);
        }
        if p.bytes_in > 0 {
            h.bytes_in.increment(p.bytes_in);
        }
        if p.bytes_out > 0 {
            h.bytes_out.increment(p.bytes_out);
        }
    }
}

/// Hands every route's tallies to the registry; called before `/metrics` is rendered.
pub fn flush_all() {
    let live: Vec<Arc<Tallies>> = {
        let mut live = lock(&LIVE);
        live.list.retain(|w| w.strong_count() > 0);
        live.list.iter().filter_map(Weak::upgrade).collect()
    };
    for t in live {
        t.flush();
    }
}

/// The handles for requests that matched no route.
pub fn unmatched() -> &'static RouteMetrics {
    static M: OnceLock<RouteMetrics> = OnceLock::new();
    M.get_or_init(|| RouteMetrics::new("-".into(), "-".into()))
}

/// A failed upstream call.
pub fn upstream_error(upstream: &str, kind: &'static str) {
    counter!(UPSTREAM_ERRORS, "upstream" => upstream.to_string(), "kind" => kind).increment(1);
}

/// An open client connection, counted while this guard lives.
///
/// Counted per worker and summed when `/metrics` is read ([`snapshot_gauges`]): a registry
/// gauge shared by every worker was a lock and three writes to lines both workers use, per
/// connection (scenario 3 of bench/README.md). The guard may be dropped on another worker than
/// the one that opened it: each slot's count can then go below zero, the sum stays right.
pub struct ConnGauge {
    kind: u8,
}

/// The `(listener, protocol)` labels of `gatehouse_open_connections`, in [`ConnGauge::open`]'s
/// order: plain listener first, then TLS; within each, [`ConnProtocol`]'s order.
const CONN_KINDS: [(&str, &str); 6] = [
    ("http", "h1"),
    ("http", "h2"),
    ("http", "websocket"),
    ("https", "h1"),
    ("https", "h2"),
    ("https", "websocket"),
];

/// Each worker's count of open connections, one per kind.
type OpenCounts = [AtomicI64; CONN_KINDS.len()];

fn open_conns() -> &'static PerWorker<OpenCounts> {
    static OPEN: OnceLock<PerWorker<OpenCounts>> = OnceLock::new();
    OPEN.get_or_init(|| PerWorker::new(Default::default))
}

impl std::fmt::Debug for ConnGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnGauge")
    }
}

/// What an open connection speaks, for `gatehouse_open_connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnProtocol {
    H1 = 0,
    H2 = 1,
    WebSocket = 2,
}

impl ConnGauge {
    /// Counts a connection on a TLS (`https`) or plain (`http`) listener.
    pub fn open(tls: bool, protocol: ConnProtocol) -> ConnGauge {
        let kind = usize::from(tls) * 3 + protocol as usize;
        open_conns().local()[kind].fetch_add(1, Ordering::Relaxed);
        ConnGauge { kind: kind as u8 }
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        open_conns().local()[usize::from(self.kind)].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sets `gatehouse_open_connections` from the workers' counts.
fn snapshot_open_connections() {
    for (k, (listener, protocol)) in CONN_KINDS.iter().enumerate() {
        let open: i64 = open_conns()
            .iter()
            .map(|w| w[k].load(Ordering::Relaxed))
            .sum();
        gauge!(OPEN_CONNECTIONS, "listener" => *listener, "protocol" => *protocol)
            .set(open.max(0) as f64);
    }
}

pub fn connection_accepted(listener: &'static str) {
    static HTTP: OnceLock<Counter> = OnceLock::new();
    static HTTPS: OnceLock<Counter> = OnceLock::new();
    let cell = if listener == "https" { &HTTPS } else { &HTTP };
    cell.get_or_init(|| counter!(CONNECTIONS, "listener" => listener))
        .increment(1);
}

/// The parked-connections gauge, looked up once per process.
pub fn parked() -> &'static ::metrics::Gauge {
    static G: OnceLock<::metrics::Gauge> = OnceLock::new();
    G.get_or_init(|| gauge!(PARKED_CONNECTIONS))
}

pub fn tls_handshake(ok: Result<&'static str, &'static str>) {
    match ok {
        Ok(proto) => counter!(TLS_HANDSHAKES, "protocol" => proto).increment(1),
        Err(reason) => counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1),
    }
}

pub fn clerk_request(route: &str, status: StatusCode) {
    counter!(CLERK_REQUESTS, "route" => route.to_string(), "status" => status_label(status))
        .increment(1);
}

pub fn clerk_error(route: &str, code: &'static str) {
    counter!(CLERK_ERRORS, "route" => route.to_string(), "code" => code).increment(1);
}

/// Records a reload attempt.
pub fn reload(ok: bool, generation: u64, took: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge!(CONFIG_LAST_RELOAD).set(now);
    gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(if ok { 1.0 } else { 0.0 });
    if ok {
        gauge!(CONFIG_GENERATION).set(generation as f64);
    } else {
        counter!(CONFIG_RELOAD_ERRORS).increment(1);
    }
    histogram!(CONFIG_RELOAD_DURATION).record(took.as_secs_f64());
}

/// The backend labels the last scrape set an in-flight count for (one set per gateway).
#[derive(Debug, Default)]
pub struct ScrapedLabels(Mutex<Vec<Arc<str>>>);

/// Sets the gauges that describe the snapshot being served; called on every scrape.
pub fn snapshot_gauges(snap: &crate::state::Snapshot, scraped: &ScrapedLabels) {
    gauge!(CONFIG_GENERATION).set(snap.generation as f64);
    snapshot_open_connections();
    for site in &snap.sites {
        if let Some(cert) = &site.cert {
            gauge!(CERT_EXPIRY, "site" => site.name.to_string()).set(cert.seconds_left() as f64);
        }
    }
    // Requests in flight are counted per worker and per backend (two upstreams may share a
    // backend URL, hence one label): the sum is taken here. A label the snapshot no longer has
    // is set to 0 once, so a removed backend does not keep its last value.
    let mut in_flight: std::collections::HashMap<Arc<str>, i64> = Default::default();
    for up in snap.upstreams() {
        let down = up.down_backends();
        for b in &up.backends {
            let is_down = down.iter().any(|d| Arc::ptr_eq(d, b));
            gauge!(BACKEND_UP, "upstream" => b.label.clone()).set(if is_down { 0.0 } else { 1.0 });
            *in_flight.entry(b.label.clone()).or_default() += b.in_flight();
        }
    }
    let mut labels = lock(&scraped.0);
    for gone in labels.iter().filter(|l| !in_flight.contains_key(*l)) {
        gauge!(UPSTREAM_ACTIVE_REQUESTS, "upstream" => gone.clone()).set(0.0);
    }
    labels.clear();
    for (label, n) in in_flight {
        gauge!(UPSTREAM_ACTIVE_REQUESTS, "upstream" => label.clone()).set(n as f64);
        labels.push(label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tallies() -> Arc<Tallies> {
        Arc::new(Tallies {
            site: "s".into(),
            route: "r".into(),
            handles: OnceLock::new(),
            workers: PerWorker::with_slots(1, Mutex::default),
        })
    }

    #[test]
    fn each_open_connection_is_counted_under_its_listener_and_protocol_labels() {
        use ConnProtocol::*;
        let table = [
            (false, H1, ("http", "h1")),
            (false, H2, ("http", "h2")),
            (false, WebSocket, ("http", "websocket")),
            (true, H1, ("https", "h1")),
            (true, H2, ("https", "h2")),
            (true, WebSocket, ("https", "websocket")),
        ];
        for (tls, protocol, labels) in table {
            let g = ConnGauge::open(tls, protocol);
            assert_eq!(
                CONN_KINDS[usize::from(g.kind)],
                labels,
                "{tls} {protocol:?}"
            );
        }
    }

    #[test]
    fn routes_gone_with_their_snapshots_leave_the_live_list() {
        let mut live = Live {
            list: Vec::new(),
            prune_at: 64,
        };
        let kept = tallies();
        live.add(&kept);
        for _ in 0..1000 {
            live.add(&tallies());
        }
        assert!(live.list.len() <= 64, "{} entries", live.list.len());
        assert!(live.list.iter().any(|w| w.ptr_eq(&Arc::downgrade(&kept))));
    }
}
