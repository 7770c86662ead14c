//! The benchmark's upstream: a small, fast HTTP/1.1 server that nginx and Gatehouse both proxy
//! to, so the comparison measures the proxies and not the app.
//!
//! `GET /` answers "hello\n"; `GET /bytes/N` answers N bytes; any request body is read and
//! counted. Usage: `bench_upstream 127.0.0.1:18080 [threads]`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18080".into())
        .parse()
        .expect("an address");
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let big64k = Bytes::from(vec![b'x'; 64 * 1024]);
        let big1m = Bytes::from(vec![b'y'; 1024 * 1024]);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (b64, b1m) = (big64k.clone(), big1m.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (b64, b1m) = (b64.clone(), b1m.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let mut n = 0usize;
                        let mut body = req.into_body();
                        while let Some(Ok(f)) = body.frame().await {
                            if let Some(d) = f.data_ref() {
                                n += d.len();
                            }
                        }
                        let out = match path.as_str() {
                            "/bytes/65536" => b64,
                            "/bytes/1048576" => b1m,
                            "/upload" => Bytes::from(format!("{n}\n")),
                            _ => Bytes::from_static(b"hello\n"),
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(out)))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}
