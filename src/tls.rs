//! TLS: certificates per site chosen by SNI, the listener handshake, and upstream client configs.
//!
//! One `ServerConfig` lives for the whole process. Its certificate resolver asks the *current*
//! snapshot for a certificate on every handshake, so a reload swaps certificates by swapping the
//! snapshot; the `ServerConfig`, its session cache and its ticketer survive, and with them TLS
//! session resumption (rpxy had to bolt on a shared ticketer because it rebuilds the config).
//!
//! Resolution order: exact SNI name, then the longest wildcard, then the default site's
//! certificate. When nothing matches, the handshake fails with the `unrecognized_name` alert
//! (RFC 6066 §3), which tells a client "wrong server" rather than a generic failure.
//!
//! Crypto provider: aws-lc-rs. It is rustls' default, the fastest of the two for ECDSA P-256 and
//! RSA handshakes, and builds from source with only a C compiler (no cmake, no Go) on current
//! versions, which is what a fresh CI machine has. It is installed once at start-up.
//!
//! This module must not decide routing: it asks a [`CertSource`] for certificates.

use std::io::{self, Read as _};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::router::HostPattern;

/// The process-wide crypto provider (see the module docs for why aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Installs [`provider`] as rustls' default, for libraries that ask for the default.
/// Harmless when called twice.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

/// A certificate chain and key, loaded and checked.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// DNS names the leaf covers (SANs, or the CN when there are none).
    pub names: Vec<String>,
}

impl LoadedCert {
    /// Expiry as `YYYY-MM-DD HH:MM:SS UTC`.
    pub fn not_after_text(&self) -> String {
        format_unix(self.not_after)
    }

    /// Seconds until expiry (negative when expired).
    pub fn seconds_left(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.not_after - now
    }

    /// True when a name of the certificate covers `host` (RFC 6125 §6.4.3: a wildcard covers
    /// exactly one label).
    pub fn covers(&self, host: &HostPattern) -> bool {
        self.names.iter().any(|n| name_covers(n, host))
    }
}

fn name_covers(cert_name: &str, host: &HostPattern) -> bool {
    let cert_name = cert_name.to_ascii_lowercase();
    match host {
        HostPattern::Exact(h) => {
            if cert_name == *h {
                return true;
            }
            match (cert_name.strip_prefix("*."), h.split_once('.')) {
                (Some(suffix), Some((_, rest))) => suffix == rest,
                _ => false,
            }
        }
        HostPattern::Wildcard(suffix) => cert_name.strip_prefix("*.") == Some(suffix.as_str()),
    }
}

/// Loads a PEM chain and a PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC) and checks they match.
pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, String> {
    let cert_pem =
        read_limited(cert_path).map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?;
    let key_pem =
        read_limited(key_path).map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain ({e})", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key ({e})", key_path.display()))?;
    certified(chain, key).map_err(|e| {
        format!(
            "{} and {} do not go together: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Reads a certificate or key file, refusing anything implausibly large (a mistyped path
/// pointing at a disk image should not be read into memory).
fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(4 * 1024 * 1024)
        .read_to_end(&mut out)?;
    Ok(out)
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<LoadedCert, String> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err("the private key does not match the certificate".into());
        }
        Err(e) => return Err(format!("the certificate cannot be parsed: {e}")),
    }
    let (not_after, names) = leaf_info(&ck.cert[0])?;
    Ok(LoadedCert {
        key: Arc::new(ck),
        not_after,
        names,
    })
}

fn leaf_info(der: &CertificateDer<'_>) -> Result<(i64, Vec<String>), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((not_after, names))
}

/// Makes a self-signed certificate for `hosts` (ECDSA P-256) with rcgen.
pub fn self_signed(hosts: &[HostPattern]) -> Result<LoadedCert, String> {
    let mut names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    if names.is_empty() {
        names.push("localhost".into());
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    certified(vec![made.cert.der().clone()], key)
}

fn format_unix(secs: i64) -> String {
    // Civil-from-days (Howard Hinnant), to avoid a date crate for one line of output.
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Where the resolver gets certificates: the current snapshot.
pub trait CertSource: Send + Sync + std::fmt::Debug {
    fn cert_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>>;
}

#[derive(Debug)]
struct Resolver(Arc<dyn CertSource>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.cert_for(hello.server_name())
    }
}

/// The one `ServerConfig` of the process: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`,
/// stateless session tickets plus the in-memory session cache.
pub fn server_config(source: Arc<dyn CertSource>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(source)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

/// Why a handshake did not complete. The label is the metric's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no ClientHello before the deadline")]
    Timeout,
    #[error("no certificate for server name {0:?}")]
    UnknownName(Option<String>),
    #[error("client closed the connection")]
    Eof,
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl HandshakeError {
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::UnknownName(_) => "unrecognized_name",
            HandshakeError::Eof => "eof",
            HandshakeError::Tls(_) => "protocol",
            HandshakeError::Io(_) => "io",
        }
    }
}

/// A completed handshake.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    /// The SNI name, lowercased (for the Host/SNI consistency check).
    pub sni: Option<String>,
    pub h2: bool,
}

/// Runs the server handshake on `tcp` under one deadline covering every step (tokio-rustls
/// warns that separate timeouts per step let a slow client stretch the total).
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    source: &dyn CertSource,
    deadline: Duration,
) -> Result<Accepted, HandshakeError> {
    match tokio::time::timeout(deadline, accept_inner(tcp, config, source)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout),
    }
}

async fn accept_inner(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
    source: &dyn CertSource,
) -> Result<Accepted, HandshakeError> {
    // Read the ClientHello ourselves so that an unknown name gets `unrecognized_name`; rustls'
    // resolver can only refuse with `access_denied`.
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; 4096];
    let accepted = loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(HandshakeError::Eof);
        }
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            acceptor.read_tls(&mut rd)?;
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(a)) => break a,
            Err((err, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write(&mut out);
                let _ = tcp.write_all(&out).await;
                return Err(err.into());
            }
        }
    };
    let sni = accepted
        .client_hello()
        .server_name()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    if source.cert_for(sni.as_deref()).is_none() {
        // TLS alert record: type 21, version 3.3, length 2, fatal (2), unrecognized_name (112).
        let _ = tcp.write_all(&[21, 3, 3, 0, 2, 2, 112]).await;
        let _ = tcp.shutdown().await;
        return Err(HandshakeError::UnknownName(sni));
    }
    let stream = tokio_rustls::StartHandshake::from_parts(accepted, tcp)
        .into_stream(config)
        .await?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok(Accepted { stream, sni, h2 })
}

/// Root certificates of the system, loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for err in &found.errors {
                tracing::warn!(error = %err, "while loading the system's root certificates");
            }
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system root certificates found: https backends will fail verification (install ca-certificates)");
            }
            Arc::new(store)
        })
        .clone()
}

/// A client config for `https://` backends. `extra_ca` adds a private CA (PEM) to the system
/// roots; `verify = false` turns verification off (the route's `tls_verify = false`).
/// ALPN is left empty: hyper-rustls sets it from the protocols the connector enables.
pub fn client_config(verify: bool, extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let cfg = if verify {
        let mut roots = (*system_roots()).clone();
        if let Some(path) = extra_ca {
            let pem =
                read_limited(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("{}: not a PEM certificate ({e})", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate ({e})", path.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("{}: holds no certificate", path.display()));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// `tls_verify = false`: accept any certificate but still check handshake signatures, so the
/// connection is at least encrypted to whoever answered.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(h: &str) -> HostPattern {
        HostPattern::Exact(h.into())
    }

    #[test]
    fn an_exact_cert_name_covers_the_same_host() {
        assert!(name_covers("app.example.com", &exact("app.example.com")));
        assert!(!name_covers("app.example.com", &exact("www.example.com")));
    }

    #[test]
    fn a_wildcard_cert_covers_one_label_only_rfc6125_6_4_3() {
        assert!(name_covers("*.example.com", &exact("a.example.com")));
        assert!(!name_covers("*.example.com", &exact("a.b.example.com")));
        assert!(!name_covers("*.example.com", &exact("example.com")));
    }

    #[test]
    fn a_wildcard_cert_covers_a_wildcard_host() {
        assert!(name_covers(
            "*.preview.example.com",
            &HostPattern::Wildcard("preview.example.com".into())
        ));
    }

    #[test]
    fn self_signed_certs_cover_their_hosts() {
        let c = self_signed(&[exact("a.test"), HostPattern::Wildcard("b.test".into())]).unwrap();
        assert!(c.covers(&exact("a.test")));
        assert!(c.covers(&exact("x.b.test")));
        assert!(c.seconds_left() > 0);
    }

    #[test]
    fn unix_times_format_as_utc_dates() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
