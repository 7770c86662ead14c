//! Opens N keep-alive connections to a proxy, sends one request on each, and holds them open
//! until stdin closes: the benchmark reads the proxy's memory meanwhile.
//! Usage: `bench_idle 127.0.0.1:8080 10000 [Host]`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .expect("an address")
        .parse()
        .expect("an address");
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let host = args.next().unwrap_or_else(|| "bench.local".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let mut held = Vec::with_capacity(n);
        let mut failed = 0;
        for _ in 0..n {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(mut s) => {
                    if s.write_all(request.as_bytes()).await.is_err() {
                        failed += 1;
                        continue;
                    }
                    let mut buf = [0u8; 512];
                    match s.read(&mut buf).await {
                        Ok(k) if k > 0 => held.push(s),
                        _ => failed += 1,
                    }
                }
                Err(_) => failed += 1,
            }
        }
        println!("open {} failed {}", held.len(), failed);
        // Hold until the caller closes stdin.
        let mut stdin = tokio::io::stdin();
        let mut b = [0u8; 1];
        let _ = stdin.read(&mut b).await;
        drop(held);
    });
}
