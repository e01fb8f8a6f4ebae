//! TLS for the broker connection: rustls with the ring provider; the server name is checked
//! against the configured host, and there is no way to turn verification off.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::Secret;

/// Builds the rustls client config: the CA from `ca_file` (PEM), or the system's roots;
/// a client certificate chain and key (PEM) for mutual TLS.
pub fn client_config(
    ca: Option<&[u8]>,
    client: Option<&(Vec<u8>, Secret)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| format!("tls.ca_file is not a PEM certificate file: {e}"))?;
                roots.add(cert).map_err(|e| format!("tls.ca_file: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls.ca_file holds no certificate".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found: install ca-certificates or set tls.ca_file"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls.client_cert is not a PEM certificate file: {e}"))?;
            if chain.is_empty() {
                return Err("tls.client_cert holds no certificate".into());
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.0.as_bytes())
                .map_err(|e| format!("tls.client_key holds no usable private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls.client_cert and client_key do not go together: {e}"))?
        }
    };
    Ok(Arc::new(config))
}
