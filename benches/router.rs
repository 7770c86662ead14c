//! Router lookup cost: 1 site against 10,000 sites, 100 routes per site.
//! `cargo bench --bench router`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::router::{HostPattern, HostTable, PathMatch, RouteTable, normalize_host};

fn tables(sites: usize) -> (HostTable, Vec<RouteTable<usize>>) {
    let mut hosts = HostTable::default();
    let mut routes = Vec::with_capacity(sites);
    for i in 0..sites {
        hosts
            .insert(&HostPattern::Exact(format!("site{i}.example.com")), i)
            .unwrap();
        hosts
            .insert(&HostPattern::Wildcard(format!("preview{i}.example.com")), i)
            .unwrap();
        let mut t = RouteTable::default();
        for r in 0..100 {
            t.insert(&PathMatch::prefix(&format!("/r{r}")), r).unwrap();
        }
        t.insert(&PathMatch::prefix("/"), 1000).unwrap();
        t.insert(&PathMatch::Exact("/healthz".into()), 1001)
            .unwrap();
        routes.push(t);
    }
    (hosts, routes)
}

fn lookup(c: &mut Criterion) {
    for sites in [1usize, 10_000] {
        let (hosts, routes) = tables(sites);
        let host = format!("site{}.example.com", sites / 2);
        let wild = format!("pr-7.preview{}.example.com", sites / 2);
        c.bench_function(
            &format!("route lookup, {sites} sites, exact host, prefix /r57"),
            |b| {
                b.iter(|| {
                    let h = normalize_host(black_box(&host)).unwrap();
                    let site = hosts.lookup(&h).unwrap();
                    black_box(routes[site].lookup(black_box("/r57/items/42")))
                })
            },
        );
        c.bench_function(
            &format!("route lookup, {sites} sites, wildcard host, fallback /"),
            |b| {
                b.iter(|| {
                    let h = normalize_host(black_box(&wild)).unwrap();
                    let site = hosts.lookup(&h).unwrap();
                    black_box(routes[site].lookup(black_box("/some/deep/page")))
                })
            },
        );
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
