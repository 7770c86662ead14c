//! Config loading and snapshot building: 1 site against 10,000 sites of 5 routes.
//! `cargo bench --bench config_load`

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::config;
use gatehouse::state::Snapshot;
use gatehouse::upstream::ClientCache;

/// A routes file of `sites` sites, 5 routes each.
pub fn big_config(sites: usize) -> String {
    let mut s = String::from("[server]\nhttp = \"127.0.0.1:0\"\n");
    for i in 0..sites {
        s.push_str(&format!(
            "[[site]]\nhosts = [\"site{i}.example.com\", \"www.site{i}.example.com\"]\n"
        ));
        for r in ["/api", "/static", "/admin", "/auth"] {
            s.push_str(&format!(
                "  [[site.route]]\n  prefix = \"{r}\"\n  upstream = \"http://127.0.0.1:3000\"\n"
            ));
        }
        s.push_str("  [[site.route]]\n  prefix = \"/\"\n  upstream = [\"http://127.0.0.1:8081\", \"http://127.0.0.1:8082\"]\n");
    }
    s
}

fn load(c: &mut Criterion) {
    gatehouse::tls::install_default_provider();
    let env = config::process_env();
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    for sites in [1usize, 10_000] {
        let text = big_config(sites);
        let path = Path::new("/tmp/gatehouse-bench.toml");
        g.bench_function(format!("parse + validate, {sites} sites x 5 routes"), |b| {
            b.iter(|| config::load_bytes(path, text.as_bytes(), &env).unwrap())
        });
        let cfg = Arc::new(config::load_bytes(path, text.as_bytes(), &env).unwrap());
        let clients = ClientCache::default();
        g.bench_function(format!("build snapshot, {sites} sites x 5 routes"), |b| {
            b.iter(|| Snapshot::build(cfg.clone(), 2, None, &clients).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
