//! The TLS listener: the server configuration (certificate, key, and the CA that client
//! certificates must chain to), re-read on SIGHUP without touching open connections, and
//! [`Transport`], what a session needs of its connection, for plain TCP and for TLS.
//!
//! rustls does the protocol and the verification; nothing here parses certificates beyond
//! reading PEM files. The connection's kind is chosen once, at accept: a session is compiled
//! for each, so a plain connection runs exactly the code it ran before TLS existed.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use futures_util::FutureExt;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::backend::redis::{pem_certs, pem_key};
use crate::config::{ClientAuth, ServerConfig};

/// The TLS listener's configuration, swapped whole when the files are re-read. A handshake
/// takes the one in force when it starts; connections keep theirs.
pub struct ServerTls {
    files: Files,
    current: RwLock<TlsAcceptor>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files `[server] tls_*` name, or `None` without a TLS listener. The error
    /// names the file and what is wrong with it.
    pub fn new(cfg: &ServerConfig) -> Result<Option<ServerTls>, String> {
        if cfg.tls_listen.0.is_none() {
            return Ok(None);
        }
        let files = Files {
            cert: cfg.tls_cert_file.clone(),
            key: cfg.tls_key_file.clone(),
            ca: cfg.tls_ca_cert_file.clone(),
            auth: cfg.tls_auth_clients(),
        };
        let current = RwLock::new(files.load()?);
        Ok(Some(ServerTls { files, current }))
    }

    /// The configuration for a handshake starting now.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the files: new handshakes use them, open connections keep what they have. On
    /// any error nothing changes, and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = self.files.load()?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    /// The files it reads, for log lines.
    pub fn files(&self) -> String {
        let f = &self.files;
        if f.ca.is_empty() {
            format!("{} and {}", f.cert, f.key)
        } else {
            format!("{}, {} and {}", f.cert, f.key, f.ca)
        }
    }
}

/// What the listener's configuration is made from.
#[derive(Debug)]
struct Files {
    cert: String,
    key: String,
    ca: String,
    auth: ClientAuth,
}

impl Files {
    fn load(&self) -> Result<TlsAcceptor, String> {
        fn file(path: &str) -> impl Fn(String) -> String + '_ {
            move |why| format!("TLS listener: {path}: {why}")
        }
        let certs = pem_certs(&self.cert).map_err(file(&self.cert))?;
        let key = pem_key(&self.key).map_err(file(&self.key))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS listener: {e}"))?;
        let builder = match self.auth {
            ClientAuth::No => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Yes => {
                let mut roots = RootCertStore::empty();
                for cert in pem_certs(&self.ca).map_err(file(&self.ca))? {
                    roots
                        .add(cert)
                        .map_err(|e| file(&self.ca)(format!("not a usable CA certificate: {e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = if self.auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| file(&self.ca)(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS listener: {} and {}: {e}", self.cert, self.key))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Named explicitly rather than taken from the process default, so no other crate's choice of
/// provider can change or break it.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a session needs of its client's connection, beyond reading and writing: the socket
/// underneath for readiness, and, for TLS, the bytes the protocol holds between the socket
/// and the session.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// The socket, whose readiness the session waits on.
    fn tcp(&self) -> &TcpStream;

    /// Reads what has arrived into `buf` without waiting: `None` when nothing has.
    fn read_now(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        self.read_buf(buf).now_or_never()
    }

    /// Writes what the connection takes now; `WouldBlock` when it takes nothing.
    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Data was read into the connection's own buffers but not yet taken: a read would make
    /// progress though the socket may not be readable.
    fn buffered(&self) -> bool {
        false
    }

    /// Bytes the connection holds that the socket has not taken yet.
    fn unsent(&self) -> bool {
        false
    }

    /// Sends what [`Transport::unsent`] holds, as far as the socket takes it now.
    fn push_out(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

/// Most plaintext one [`Transport::read_now`] of a TLS connection takes, so one client cannot
/// make a session buffer without bound between two dispatches.
const TLS_READ_MAX: usize = 64 * 1024;

/// A client's TLS connection.
#[derive(Debug)]
pub struct TlsClient {
    stream: TlsStream<TcpStream>,
    /// The last read stopped before the connection was drained (decrypted plaintext or TLS
    /// records the socket already gave may be waiting).
    more: bool,
}

impl TlsClient {
    /// A connection whose handshake is done.
    pub fn new(stream: TlsStream<TcpStream>) -> TlsClient {
        TlsClient { stream, more: true }
    }
}

/// Polls once without being woken: the session waits on the socket's readiness instead.
fn poll_now<T>(poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    poll(&mut Context::from_waker(Waker::noop()))
}

impl Transport for TlsClient {
    fn tcp(&self) -> &TcpStream {
        self.stream.get_ref().0
    }

    /// TLS hands out plaintext a record at a time, so one read is not enough to drain what the
    /// socket gave: read until nothing is left or `TLS_READ_MAX`, and say when more may wait.
    fn read_now(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        let mut total = 0;
        self.more = false;
        loop {
            if total >= TLS_READ_MAX {
                self.more = true;
                break;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            match self.stream.read_buf(buf).now_or_never() {
                None => break,
                // The end: said once more by the next read.
                Some(Ok(0)) if total > 0 => {
                    self.more = true;
                    break;
                }
                Some(Ok(0)) => return Some(Ok(0)),
                Some(Ok(n)) => total += n,
                Some(Err(e)) if total == 0 => return Some(Err(e)),
                Some(Err(_)) => {
                    self.more = true;
                    break;
                }
            }
        }
        (total > 0).then_some(Ok(total))
    }

    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        match poll_now(|cx| Pin::new(&mut self.stream).poll_write(cx, buf)) {
            Poll::Ready(written) => written,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn buffered(&self) -> bool {
        self.more
    }

    fn unsent(&self) -> bool {
        self.stream.get_ref().1.wants_write()
    }

    fn push_out(&mut self) -> io::Result<()> {
        match poll_now(|cx| Pin::new(&mut self.stream).poll_flush(cx)) {
            Poll::Ready(flushed) => flushed,
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for TlsClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
