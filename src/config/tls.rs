//! The `[mqtt.tls]` table: its PEM files read and the rustls client config built from them.
//!
//! Both at load, so that a bad file is a config error, not a reconnect loop. rustls with the
//! ring provider; the server name is checked against the configured host, and there is no way
//! to turn verification off.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::error::{Problem, bad};
use super::raw::{At, CONFIG_MAX, RawTls};
use super::{Secret, TlsConfig};

/// Which `[mqtt.tls]` file a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsFile {
    CaFile,
    ClientCert,
    ClientKey,
}

/// Why the TLS files cannot be used: the message, and the file at fault (`None`: the setup as
/// a whole, such as no system roots).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
struct TlsError {
    file: Option<TlsFile>,
    msg: String,
}

impl TlsError {
    fn in_file(file: TlsFile, msg: impl Into<String>) -> TlsError {
        TlsError {
            file: Some(file),
            msg: msg.into(),
        }
    }

    fn general(msg: impl Into<String>) -> TlsError {
        TlsError {
            file: None,
            msg: msg.into(),
        }
    }
}

pub(super) fn validate_tls(raw: At<RawTls>) -> Result<TlsConfig, Problem> {
    let table = raw.span();
    let raw = raw.into_inner();
    let read = |key: &str, p: &At<PathBuf>| {
        crate::sensor::read_bounded(p.get_ref(), CONFIG_MAX)
            .map(String::into_bytes)
            .map_err(|e| {
                Problem::new(
                    p.span(),
                    format!("tls.{key} {}: {e}", p.get_ref().display()),
                )
            })
    };
    let ca = raw
        .ca_file
        .as_ref()
        .map(|p| read("ca_file", p))
        .transpose()?;
    let client = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => {
            let pem = String::from_utf8(read("client_key", key)?)
                .map_err(|_| Problem::new(key.span(), "tls.client_key is not a PEM file"))?;
            Some((read("client_cert", cert)?, Secret(pem)))
        }
        (None, None) => None,
        (cert, key) => {
            let at = cert.as_ref().or(key.as_ref()).map_or(table, |p| p.span());
            return bad(
                at,
                "tls needs both `client_cert` and `client_key` for a client certificate",
            );
        }
    };
    let rustls = client_config(ca.as_deref(), client.as_ref()).map_err(|e| {
        // At the file at fault, when there is one and it is given; else at the table.
        let file = match e.file {
            Some(TlsFile::CaFile) => raw.ca_file.as_ref(),
            Some(TlsFile::ClientCert) => raw.client_cert.as_ref(),
            Some(TlsFile::ClientKey) => raw.client_key.as_ref(),
            None => None,
        };
        let at = file.map_or(table.clone(), At::span);
        Problem::new(at, e.msg)
    })?;
    Ok(TlsConfig { ca, client, rustls })
}

/// Builds the rustls client config: the CA from `ca_file` (PEM), or the system's roots;
/// a client certificate chain and key (PEM) for mutual TLS.
fn client_config(
    ca: Option<&[u8]>,
    client: Option<&(Vec<u8>, Secret)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    TlsError::in_file(
                        TlsFile::CaFile,
                        format!("tls.ca_file is not a PEM certificate file: {e}"),
                    )
                })?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::in_file(TlsFile::CaFile, format!("tls.ca_file: {e}")))?;
            }
            if roots.is_empty() {
                return Err(TlsError::in_file(
                    TlsFile::CaFile,
                    "tls.ca_file holds no certificate",
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::general(
                    "no system CA certificates found: install ca-certificates or set tls.ca_file",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::general(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    TlsError::in_file(
                        TlsFile::ClientCert,
                        format!("tls.client_cert is not a PEM certificate file: {e}"),
                    )
                })?;
            if chain.is_empty() {
                return Err(TlsError::in_file(
                    TlsFile::ClientCert,
                    "tls.client_cert holds no certificate",
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.0.as_bytes()).map_err(|e| {
                TlsError::in_file(
                    TlsFile::ClientKey,
                    format!("tls.client_key holds no usable private key: {e}"),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError::in_file(
                    TlsFile::ClientCert,
                    format!("tls.client_cert and client_key do not go together: {e}"),
                )
            })?
        }
    };
    Ok(Arc::new(config))
}
