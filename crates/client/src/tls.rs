//! The trust `https://` and `wss://` connections check the server against: the
//! system's root certificates, plus those of an optional CA file (a private CA,
//! or a test's).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::error::ClientError;

/// The system's roots, read once per process (a bench opens thousands of connections).
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "a system root certificate could not be read");
        }
        found.certs
    })
}

/// A rustls client configuration trusting the system's roots and `ca_file`'s,
/// as the client connects with; for tools that open their own sockets.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    // A system root rustls cannot parse is skipped, as browsers do.
    roots.add_parsable_certificates(native_roots().iter().cloned());
    if let Some(path) = ca_file {
        let bad = |e: &dyn std::fmt::Display| {
            ClientError::InvalidOptions(format!("ca file {}: {e}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?;
        let mut added = 0;
        for cert in certs {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad(&"no certificate in it"));
        }
    }
    if roots.is_empty() {
        return Err(ClientError::InvalidOptions(
            "no trusted root certificates: the system has none; give a CA file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::InvalidOptions(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
