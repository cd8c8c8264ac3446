//! The metrics server's TLS: a certificate from files (cert-manager, a mounted Secret)
//! or, when no path is given, a self-signed one made at start-up — as controller-runtime
//! does, so `--metrics-secure` works with no extra setup. Prometheus then scrapes with
//! `insecure_skip_verify` or is given the CA of the mounted certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// A client gets this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the serving certificate comes from (`--metrics-cert-path/-name/-key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    SelfSigned,
    Files { cert: PathBuf, key: PathBuf },
}

impl CertSource {
    /// Empty `dir` → self-signed; else `dir/cert_name` and `dir/key_name`.
    pub fn from_flags(dir: Option<&str>, cert_name: &str, key_name: &str) -> CertSource {
        match dir.map(str::trim).filter(|d| !d.is_empty()) {
            None => CertSource::SelfSigned,
            Some(d) => CertSource::Files {
                cert: PathBuf::from(d).join(cert_name),
                key: PathBuf::from(d).join(key_name),
            },
        }
    }
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut names = vec!["localhost".to_string()];
    if !host.is_empty() {
        names.push(host);
    }
    let certified =
        rcgen::generate_simple_self_signed(names).context("generating a self-signed cert")?;
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
    Ok((vec![certified.cert.der().clone()], key))
}

fn from_files(
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    Ok((chain, key))
}

/// TLS 1.2+ server settings, HTTP/1.1 only (`--enable-http2` is off, as upstream
/// recommends after the HTTP/2 rapid-reset advisories).
pub fn server_config(source: &CertSource) -> Result<Arc<ServerConfig>> {
    let (chain, key) = match source {
        CertSource::SelfSigned => self_signed()?,
        CertSource::Files { cert, key } => from_files(cert, key)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate does not match its key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands out those whose TLS handshake finished. Handshakes
/// run in their own tasks so a slow client never blocks the next one.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    pub async fn bind(
        addr: &str,
        config: Arc<ServerConfig>,
        shutdown: CancellationToken,
    ) -> Result<TlsListener> {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "metrics: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "metrics: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "metrics: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr: local })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor stopped (shutdown): park; graceful shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn certificates_from_files_or_self_signed() {
        assert_eq!(
            CertSource::from_flags(None, "tls.crt", "tls.key"),
            CertSource::SelfSigned
        );
        assert_eq!(
            CertSource::from_flags(Some(" "), "tls.crt", "tls.key"),
            CertSource::SelfSigned
        );
        assert!(server_config(&CertSource::SelfSigned).is_ok());

        let dir = std::env::temp_dir().join(format!("vws-metrics-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["metrics.local".into()]).unwrap();
        std::fs::write(dir.join("tls.crt"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).unwrap();
        let source = CertSource::from_flags(dir.to_str(), "tls.crt", "tls.key");
        assert!(server_config(&source).is_ok());

        // A key that is not the certificate's, and a missing file, are start-up errors.
        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        std::fs::write(dir.join("other.key"), other.signing_key.serialize_pem()).unwrap();
        let wrong = CertSource::from_flags(dir.to_str(), "tls.crt", "other.key");
        let err = format!("{:#}", server_config(&wrong).unwrap_err());
        assert!(err.contains("does not match"), "{err}");
        let missing = CertSource::from_flags(dir.to_str(), "nope.crt", "tls.key");
        let err = format!("{:#}", server_config(&missing).unwrap_err());
        assert!(err.contains("nope.crt"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
