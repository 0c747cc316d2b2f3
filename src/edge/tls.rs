//! The proxy listener's TLS certificate: read and checked from PEM files, served through a
//! resolver that SIGHUP reloads in place without dropping a connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be used. [`CertError::key`] names the config key.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path}: unusable private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("the private key in {key_path} does not match the certificate in {cert_path}")]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
}

impl CertError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            CertError::Read { key, .. } => key,
            CertError::NoCertificate { .. } | CertError::BadCertificate { .. } => {
                "proxy.tls.cert_file"
            }
            CertError::NoKey { .. } | CertError::BadKey { .. } | CertError::KeyMismatch { .. } => {
                "proxy.tls.key_file"
            }
        }
    }
}

/// A certificate chain with its private key, checked to belong together.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub certified: Arc<CertifiedKey>,
    /// Set when the leaf certificate is expired or not yet valid: worth a warning, not a
    /// refusal (clients decide, and an operator may be mid-rotation).
    pub validity_warning: Option<String>,
}

/// Reads `cert_file` (the chain, leaf first) and `key_file`, and checks the key matches.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<LoadedCert, CertError> {
    pingora::tls::install_default_crypto_provider();
    let cert_pem = std::fs::read(cert_file).map_err(|source| CertError::Read {
        key: "proxy.tls.cert_file",
        path: cert_file.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key_file).map_err(|source| CertError::Read {
        key: "proxy.tls.key_file",
        path: key_file.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: cert_file.to_path_buf(),
            message: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    };
    let validity_warning = validity_warning(leaf, cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: key_file.to_path_buf(),
        },
        other => CertError::BadKey {
            path: key_file.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    // Installed just above (ring, as Pingora's listeners use) unless one already was.
    let Some(provider) = CryptoProvider::get_default() else {
        return Err(CertError::BadKey {
            path: key_file.to_path_buf(),
            message: "no TLS crypto provider installed".into(),
        });
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        pingora::tls::RusTlsError::InconsistentKeys(_) => CertError::KeyMismatch {
            cert_path: cert_file.to_path_buf(),
            key_path: key_file.to_path_buf(),
        },
        other => CertError::BadKey {
            path: key_file.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    Ok(LoadedCert {
        certified: Arc::new(certified),
        validity_warning,
    })
}

fn validity_warning(leaf: &CertificateDer<'_>, path: &Path) -> Result<Option<String>, CertError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| CertError::BadCertificate {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    Ok(if now > validity.not_after {
        Some(format!(
            "the certificate in {} expired on {}",
            path.display(),
            validity.not_after
        ))
    } else if now < validity.not_before {
        Some(format!(
            "the certificate in {} is not valid before {}",
            path.display(),
            validity.not_before
        ))
    } else {
        None
    })
}

/// The certificate the TLS listeners present: swapped in place on reload, so handshakes
/// after a reload get the new one while open connections carry on.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn new(cert: Arc<CertifiedKey>) -> CertStore {
        CertStore {
            current: ArcSwap::new(cert),
        }
    }

    pub fn replace(&self, cert: Arc<CertifiedKey>) {
        self.current.store(cert);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Rereads the certificate and key files on SIGHUP. A pair that fails its checks is
/// logged and the certificate in use is kept.
pub struct CertReloader {
    pub store: Arc<CertStore>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl CertReloader {
    /// One reload attempt; `Ok` once the new certificate is in use.
    pub fn reload(&self) -> Result<(), CertError> {
        let loaded = load(&self.cert_file, &self.key_file)?;
        if let Some(warning) = &loaded.validity_warning {
            log::warn!("TLS certificate reloaded, but {warning}");
        }
        self.store.replace(loaded.certified);
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, TLS certificates reload only on restart or upgrade: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    match self.reload() {
                        Ok(()) => log::info!(
                            "SIGHUP: TLS certificate reloaded from {}",
                            self.cert_file.display()
                        ),
                        Err(e) => log::error!(
                            "SIGHUP: TLS certificate not reloaded, the one in use is kept: {} ({e})",
                            e.key()
                        ),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
