//! TLS fixtures: a test CA made in the test, certificates it issues, and clients that trust
//! it. An edge serves TLS with `EdgeConfig::tls`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::tls::{ClientConfig, RootCertStore};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};

use super::Edge;

/// A certificate authority generated for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, written as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The leaf certificate, to compare with what a server presents.
    pub der: CertificateDer<'static>,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "epochgate test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// The CA certificate as a PEM file in `dir` (for curl's `--cacert`).
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A server certificate for `127.0.0.1` and `localhost`, named `name`, valid from
    /// 2020 on, written as `{name}.pem` and `{name}.key` in `dir`.
    pub fn issue(&self, name: &str, dir: &Path) -> CertFiles {
        self.issue_with(name, dir, |_| {})
    }

    /// As [`TestCa::issue`], expired since 2021.
    pub fn issue_expired(&self, name: &str, dir: &Path) -> CertFiles {
        self.issue_with(name, dir, |params| {
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(
        &self,
        name: &str,
        dir: &Path,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> CertFiles {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        CertFiles {
            cert_file,
            key_file,
            der: cert.der().clone(),
        }
    }

    /// A rustls client configuration that trusts this CA and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        pingora::tls::install_default_crypto_provider();
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Opens a TLS connection to `addr` (verified against this CA as `127.0.0.1`).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(self.client_config(alpn));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.expect("TLS handshake")
    }
}

/// `https://127.0.0.1:PORT{path}` of the edge's TLS listener.
pub fn https_url(edge: &Edge, path: &str) -> String {
    format!("https://{}{path}", edge.proxy)
}
