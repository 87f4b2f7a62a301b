//! The client side of TLS (feature `client`): what a client needs to reach a switch that
//! listens with TLS 1.3, read from PEM files: the certificate authority that signed the
//! switch's certificate, the name the switch's certificate carries, and for mutual TLS the
//! client's own certificate and key (the certificate's first DNS name is the identity the
//! switch maps to roles). rustls with the `ring` provider; no system trust store is read, so a
//! client trusts exactly the authority it is given. The same configuration reaches a switch's
//! QUIC port (`Client::connect_quic`), where it is offered with the ALPN `QUIC_ALPN`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// The application protocol a QUIC connection to the switch names (RFC 9001 requires one): the
/// native frames of PROTOCOL.md, version 1, on every bidirectional stream.
pub const QUIC_ALPN: &[u8] = b"pinswitch/1";

/// A TLS client configuration, cheap to clone (connections share it).
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the authority in `ca_pem`, expects the switch's certificate to name
    /// `server_name`, and presents `identity` (certificate chain PEM, private key PEM) when
    /// given.
    pub fn from_pem_files(
        ca_pem: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca_pem)? {
            roots.add(cert).map_err(|error| invalid(ca_pem, &error.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| io::Error::other(error.to_string()))?
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert_pem, key_pem)) => builder
                .with_client_auth_cert(read_certs(cert_pem)?, read_key(key_pem)?)
                .map_err(|error| invalid(cert_pem, &error.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        let config = Arc::new(config);
        Ok(TlsClient { connector: TlsConnector::from(config.clone()), config, server_name })
    }

    /// The configuration for QUIC: the same trust and identity, offering `QUIC_ALPN`.
    pub fn quic_config(&self) -> rustls::ClientConfig {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![QUIC_ALPN.to_vec()];
        config
    }

    /// The name the switch's certificate must carry.
    pub fn server_name_str(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    pub(crate) fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    pub(crate) fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| invalid(path, &error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(path, &error.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| invalid(path, &error.to_string()))
}

fn invalid(path: &Path, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
}
