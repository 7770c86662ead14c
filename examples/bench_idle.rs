//! Opens N keep-alive connections to a proxy, sends one request on each, and holds them open
//! until stdin closes: the benchmark reads the proxy's memory meanwhile.
//!
//! Usage: `bench_idle 127.0.0.1:8080 10000 [HOST [ALPN CERT]]`. With `ALPN` (`http/1.1` or `h2`)
//! and `CERT` (the proxy's certificate, PEM, trusted as the root), each connection is TLS; an
//! `h2` one sends its request through hyper's client, so it holds the state a browser's idle
//! connection holds (the preface, settings, one request's HPACK entries).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What keeps a connection open: the stream, or for h2 the request handle (its connection task
/// runs on the runtime).
type Held = Box<dyn Send>;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .expect("an address")
        .parse()
        .expect("an address");
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let host = args.next().unwrap_or_else(|| "bench.local".into());
    let tls = args.next().map(|alpn| {
        let cert = args
            .next()
            .expect("the proxy's certificate (PEM) after the ALPN");
        (alpn.clone(), client_config(&cert, &alpn))
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut held = Vec::with_capacity(n);
        let mut failed = 0;
        let mut first_error = None;
        for _ in 0..n {
            let one = match &tls {
                None => plain(addr, &host).await,
                Some((alpn, cfg)) => tls_one(addr, &host, alpn, cfg.clone()).await,
            };
            match one {
                Ok(h) => held.push(h),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            eprintln!("bench_idle: {failed} connections failed, the first: {e}");
        }
        println!("open {} failed {}", held.len(), failed);
        // Hold until the caller closes stdin.
        let mut stdin = tokio::io::stdin();
        let mut b = [0u8; 1];
        let _ = stdin.read(&mut b).await;
        drop(held);
    });
}

/// One config for every connection: its session store is shared, so a connection resumes the
/// session of one before it, as a returning browser's would.
fn client_config(cert: &str, alpn: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("a PEM certificate file") {
        roots.add(c.expect("a certificate")).expect("a usable root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    Arc::new(cfg)
}

async fn plain(addr: SocketAddr, host: &str) -> Result<Held, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    h1_request(&mut s, host).await?;
    Ok(Box::new(s))
}

async fn tls_one(
    addr: SocketAddr,
    host: &str,
    alpn: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Held, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    if alpn != "h2" {
        h1_request(&mut s, host).await?;
        return Ok(Box::new(s));
    }
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{host}/"))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(send))
}

/// One HTTP/1.1 request, its response read (one small read: the upstream's reply is short).
async fn h1_request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
) -> Result<(), String> {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    match s.read(&mut buf).await {
        Ok(k) if k > 0 => Ok(()),
        Ok(_) => Err("closed before a response".into()),
        Err(e) => Err(e.to_string()),
    }
}
