//! TLS to `rediss://` masters: the client configuration, built once at start from the
//! `[backend] tls_*` keys and shared by every connection, and the stream a connection runs
//! over, plain or TLS, chosen once when it is dialled.
//!
//! The master's certificate is verified, against the configured CA file or else the system's
//! trusted roots: managed Redis services present certificates from public CAs, and a private
//! deployment names its own CA. Only `tls_insecure`, an explicit choice warned of at every
//! start, turns that off. rustls does the protocol and the verification; nothing
//! here parses certificates beyond reading PEM files.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{BackendConfig, MasterAddr};

/// Why the backend's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("backend TLS: {path}: {why}")]
    File {
        /// The file named.
        path: String,
        /// What was wrong with it.
        why: String,
    },
    /// rustls refused the certificates or key (a key that does not match its certificate).
    #[error("backend TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A name that can be neither a DNS name nor an IP address in a certificate.
    #[error("backend TLS: {0:?} is not a valid server name (a DNS name or an IP address)")]
    ServerName(String),
    /// No CA file was given and the system trusts no CA the proxy can read.
    #[error(
        "backend TLS: no trusted certificate authorities found on this system{0}; name the \
         masters' CA with --backend-tls-ca-cert-file"
    )]
    NoRoots(String),
}

/// What every TLS connection to the masters shares: the client configuration, and the one name
/// to check when `tls_server_name` overrides the masters' hosts.
#[derive(Debug, Clone)]
pub struct BackendTls {
    connector: Connector,
    server_name: Option<ServerName<'static>>,
}

/// The shared client configuration; shown by name only.
#[derive(Clone)]
struct Connector(TlsConnector);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl BackendTls {
    /// The client configuration for `cfg`'s masters, or `None` when none of them uses TLS (no
    /// file is read then). Every TLS master's server name is checked here, so a bad one stops
    /// the start rather than each connection.
    pub fn new(cfg: &BackendConfig) -> Result<Option<BackendTls>, TlsError> {
        if !cfg.masters.iter().any(|m| m.tls) {
            return Ok(None);
        }
        // Named explicitly rather than taken from the process default, so no other crate's
        // choice of provider can change or break it.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if cfg.tls_insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots(&cfg.tls_ca_cert_file)?)
        };
        let config = if cfg.tls_cert_file.is_empty() {
            builder.with_no_client_auth()
        } else {
            let certs = read_certs(&cfg.tls_cert_file)?;
            let key = pem_key(&cfg.tls_key_file).map_err(|why| TlsError::File {
                path: cfg.tls_key_file.clone(),
                why,
            })?;
            builder.with_client_auth_cert(certs, key)?
        };
        let server_name = match cfg.tls_server_name.as_str() {
            "" => None,
            name => Some(server_name(name)?),
        };
        let tls = BackendTls {
            connector: Connector(TlsConnector::from(Arc::new(config))),
            server_name,
        };
        for m in cfg.masters.iter().filter(|m| m.tls) {
            tls.for_master(m)?;
        }
        Ok(Some(tls))
    }

    /// What one master's connections need: the shared configuration and the name to send and
    /// check (`tls_server_name`, else the master's host).
    pub fn for_master(&self, addr: &MasterAddr) -> Result<MasterTls, TlsError> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => server_name(&addr.host)?,
        };
        Ok(MasterTls {
            connector: self.connector.clone(),
            name,
        })
    }
}

/// One master's TLS: the shared client configuration and the name its certificate must carry.
#[derive(Debug, Clone)]
pub struct MasterTls {
    connector: Connector,
    name: ServerName<'static>,
}

impl MasterTls {
    /// Runs the TLS handshake over a connected socket; the certificate is verified here.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let stream = self.connector.0.connect(self.name.clone(), tcp).await?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// `tls_insecure`: any certificate is taken as the master's. The handshake's signatures are
/// still checked (the session is encrypted to whoever holds the certificate's key); who that
/// is, is not.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// The CAs in `ca_file`, or the system's when it is empty.
fn roots(ca_file: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if !ca_file.is_empty() {
        for cert in read_certs(ca_file)? {
            roots.add(cert).map_err(|e| TlsError::File {
                path: ca_file.to_owned(),
                why: format!("not a usable CA certificate: {e}"),
            })?;
        }
        return Ok(roots);
    }
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(TlsError::NoRoots(why));
    }
    Ok(roots)
}

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certs(path).map_err(|why| TlsError::File {
        path: path.to_owned(),
        why,
    })
}

/// Every certificate in the PEM file at `path`, at least one; else why not.
pub fn pem_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`; else why not.
pub fn pem_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("no private key read: {e}"))
}

/// A connection to a master, plain or TLS. Chosen once when it is dialled; the busy path
/// ([`Link::carry`](super::link::Link)) splits each kind its own way, so a plain connection
/// runs exactly as it would without TLS support.
#[derive(Debug)]
pub enum Stream {
    /// Clear text.
    Plain(TcpStream),
    /// TLS, its handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(masters: &[&str]) -> BackendConfig {
        BackendConfig {
            masters: masters.iter().map(|m| m.parse().unwrap()).collect(),
            ..BackendConfig::default()
        }
    }

    #[test]
    fn settings_are_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("redlock-proxy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem").display().to_string();
        // No TLS master: nothing is read.
        let mut cfg = backend(&["127.0.0.1:1"]);
        cfg.tls_ca_cert_file = missing.clone();
        assert!(BackendTls::new(&cfg).unwrap().is_none());

        let mut cfg = backend(&["rediss://127.0.0.1:1"]);
        cfg.tls_ca_cert_file = missing.clone();
        let e = BackendTls::new(&cfg).unwrap_err().to_string();
        assert!(e.contains(&missing), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        cfg.tls_ca_cert_file = empty.display().to_string();
        let e = BackendTls::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");

        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        cfg.tls_ca_cert_file = ca_file.display().to_string();
        let tls = BackendTls::new(&cfg).unwrap().unwrap();
        let name = tls.for_master(&cfg.masters[0]).unwrap().name;
        assert_eq!(name, ServerName::try_from("127.0.0.1").unwrap());
        cfg.tls_server_name = "redis.internal".into();
        let tls = BackendTls::new(&cfg).unwrap().unwrap();
        let name = tls.for_master(&cfg.masters[0]).unwrap().name;
        assert_eq!(name, ServerName::try_from("redis.internal").unwrap());
        cfg.tls_server_name = "not a name".into();
        let e = BackendTls::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("not a valid server name"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
