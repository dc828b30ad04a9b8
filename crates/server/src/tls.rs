//! TLS for HTTPS and WSS (rustls). The certificate chain and key are read at
//! start, where an error stops the server naming `tls_cert` or `tls_key`, and
//! again whenever either file changes (polled every few seconds) or the process
//! gets SIGHUP: a renewed certificate (cert-manager, certbot) needs no restart.
//! A reload that fails (say, the key is not written yet) keeps the certificate
//! in use and is tried again at the next change or poll.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::TlsFiles;

/// How often the files' modification times are checked.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Loads the certificate, starts watching its files and returns the acceptor
/// the HTTP server wraps each connection in.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certified = load(files, &provider)?;
    let resolver = Arc::new(Resolver(RwLock::new(Arc::new(certified))));
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("tls: the crypto provider offers no TLS version")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    // WebSockets upgrade over HTTP/1.1, the one protocol served.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio::spawn(watch(files.clone(), provider, resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate in use, swapped whole on reload.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| anyhow::anyhow!("tls_cert: {}: {e}", files.cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "tls_cert: {} holds no certificate", files.cert.display());
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("tls_key: {}: {e}", files.key.display()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow::anyhow!("tls_key: {}: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "tls_key: {} is not the key of {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(certified)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn watch(files: TlsFiles, provider: Arc<CryptoProvider>, resolver: Arc<Resolver>) {
    let stamp = || (modified(&files.cert), modified(&files.key));
    let mut loaded = stamp();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP; certificate files are still polled");
            None
        }
    };
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    loop {
        let forced = tokio::select! {
            _ = ticks.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = stamp();
        if now == loaded && !forced {
            continue;
        }
        match load(&files, &provider) {
            Ok(certified) => {
                *resolver.0.write() = Arc::new(certified);
                loaded = now;
                info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "TLS certificate reload failed; keeping the one in use"
                )
            }
        }
    }
}
