//! TLS to the masters, against real processes: three `redis-server`s that listen only on a TLS
//! port, with a certificate from a CA made at test time, the default user off and an ACL user
//! whose password holds a `/`. The proxy binary, given `rediss://` URLs and the CA, locks through
//! them; given another CA it refuses them, and with a wrong password or a user without the
//! permissions it needs, it says why in its log and in `INFO masters`.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Conn, TempDir, flatten, text};

const BIN: &str = env!("CARGO_BIN_EXE_redlock-proxy");
/// Bound on a server or the proxy starting, and on waiting for what the log or INFO says.
const WITHIN: Duration = Duration::from_secs(20);
/// The ACL user's password: a `/` must be written `%2F` in the URL.
const PASSWORD: &str = "s3cr/et";
const PASSWORD_IN_URL: &str = "s3cr%2Fet";

/// A test CA, and a server certificate it signed for 127.0.0.1, as PEM files.
struct Pki {
    ca: String,
    cert: String,
    key: String,
    /// Another CA, which signed nothing here.
    stranger: String,
    _dir: TempDir,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn path(p: PathBuf) -> String {
    p.to_str().unwrap().to_owned()
}

fn pki() -> Pki {
    let dir = TempDir::new();
    let ca_issuer = ca("redlock-proxy test CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca_issuer)
        .unwrap();
    Pki {
        ca: path(dir.write("ca.pem", &ca_issuer.pem())),
        cert: path(dir.write("server.pem", &cert.pem())),
        key: path(dir.write("server.key", &key.serialize_pem())),
        stranger: path(dir.write("stranger.pem", &ca("some other CA").pem())),
        _dir: dir,
    }
}

/// A `redis-server` listening only on a TLS port; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl TlsRedis {
    /// Starts one with user `app` (password [`PASSWORD`], every command, key and channel) and
    /// user `noscript` (the same without scripting), the default user off; waits (bounded)
    /// until it answers over TLS.
    async fn start(pki: &Pki) -> TlsRedis {
        let mut last = String::new();
        // Another process may take the free port picked before the server binds it.
        for _ in 0..5 {
            let dir = TempDir::new();
            let port = support::free_port();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--tls-cert-file", &pki.cert, "--tls-key-file", &pki.key])
                .args(["--tls-ca-cert-file", &pki.ca, "--tls-auth-clients", "no"])
                .args(["--user", "default", "off"])
                .args(["--user", "app", "on", &format!(">{PASSWORD}"), "~*", "&*"])
                .arg("+@all")
                .args(["--user", "noscript", "on", &format!(">{PASSWORD}"), "~*"])
                .args(["&*", "+@all", "-@scripting"])
                .arg("--dir")
                .arg(&dir.0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            redlock_proxy::embedded::die_with_parent(&mut cmd);
            let mut child = cmd.spawn().expect("redis-server is installed");
            let started = Instant::now();
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    last = format!("exited: {status}");
                    break;
                }
                if answers_over_tls(port, &pki.ca).await {
                    return TlsRedis {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                if started.elapsed() > WITHIN {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server on TLS port {port} did not answer within {WITHIN:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Its address for `--backend`, as `user` with `password` (percent-encoded).
    fn url(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when a TLS handshake with the server on `port`, verified against `ca`, succeeds and a
/// `PING` gets a reply (`NOAUTH`, with the default user off, is a reply). Bounded.
async fn answers_over_tls(port: u16, ca: &str) -> bool {
    {
        let probe = async {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let mut tls = connector.connect(name, tcp).await.ok()?;
            tls.write_all(b"PING\r\n").await.ok()?;
            tls.flush().await.ok()?;
            let mut reply = [0u8; 1];
            tls.read_exact(&mut reply).await.ok()?;
            Some(reply[0] == b'+' || reply[0] == b'-')
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Some(true))
        )
    }
}

/// The proxy binary on a free loopback port, its log in a file; killed on drop.
struct Proxy {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Proxy {
    /// Starts the binary with `args` and waits (bounded) until it accepts connections.
    async fn start(args: &[String]) -> Proxy {
        let dir = TempDir::new();
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .arg("--new-deployment")
            .current_dir(&dir.0)
            .env_remove("RUST_LOG");
        let (mut child, addr) = support::spawn_listening(&mut cmd, &dir);
        let started = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("exited: {status}\n{}", log_of(&dir.0));
            }
            assert!(
                started.elapsed() < WITHIN,
                "not accepting\n{}",
                log_of(&dir.0)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Proxy { child, addr, dir }
    }

    fn log(&self) -> String {
        log_of(&self.dir.0)
    }

    /// Polls `INFO masters` (bounded) until `done` accepts it; returns it.
    async fn wait_info(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let mut c = Conn::connect(self.addr).await;
        let started = Instant::now();
        loop {
            let info = text(&c.call(&["INFO", "masters"]).await);
            if done(&info) {
                return info;
            }
            assert!(
                started.elapsed() < WITHIN,
                "INFO never showed {what}:\n{info}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until every master's `last_error` in INFO holds `why`, and the log
    /// names it too; asserts none is up.
    async fn wait_refused(&mut self, why: &str) {
        let info = self
            .wait_info(why, |info| {
                info.lines()
                    .filter(|l| l.starts_with("master") && l.contains("addr="))
                    .all(|l| l.contains(why))
            })
            .await;
        assert!(info.contains("masters_up:0\r\n"), "{info}");
        let log = self.log();
        assert!(log.contains("cannot connect") && log.contains(why), "{log}");
        assert!(!log.contains(PASSWORD) && !info.contains(PASSWORD), "{log}");
        assert!(self.child.try_wait().unwrap().is_none(), "it exited\n{log}");
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// `--backend` flags for `servers` as `user`, and `--backend-tls-ca-cert-file ca`.
fn args(servers: &[TlsRedis], user: &str, password: &str, ca: &str) -> Vec<String> {
    let mut args = vec!["--backend-tls-ca-cert-file".to_owned(), ca.to_owned()];
    for s in servers {
        args.extend(["--backend".to_owned(), s.url(user, password)]);
    }
    args
}

async fn three(pki: &Pki) -> Vec<TlsRedis> {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TlsRedis::start(pki).await);
    }
    servers
}

#[tokio::test]
async fn locks_through_tls_masters_with_an_acl_user() {
    let pki = pki();
    let servers = three(&pki).await;
    let p = Proxy::start(&args(&servers, "app", PASSWORD_IN_URL, &pki.ca)).await;
    p.wait_info("masters_voting:3", |i| i.contains("masters_voting:3\r\n"))
        .await;
    let mut c = Conn::connect(p.addr).await;
    let token = text(&c.call(&["LOCK", "orders:42", "10000"]).await);
    assert_eq!(token.len(), 32, "{token}");
    let held = flatten(&c.call(&["LOCK", "orders:42", "10000"]).await);
    assert!(held == "(nil)" || held.contains("LOCKED"), "{held}");
    assert_eq!(
        flatten(&c.call(&["UNLOCK", "orders:42", &token]).await),
        "1"
    );
    let again = text(&c.call(&["LOCK", "orders:42", "10000"]).await);
    assert_eq!(again.len(), 32, "{again}");
    let info = p
        .wait_info("rediss", |i| i.contains("addr=rediss://app:***@"))
        .await;
    assert!(!info.contains(PASSWORD), "{info}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let pki = pki();
    let servers = three(&pki).await;
    let mut p = Proxy::start(&args(&servers, "app", PASSWORD_IN_URL, &pki.stranger)).await;
    p.wait_refused("TLS handshake failed: invalid peer certificate: UnknownIssuer")
        .await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_in_words() {
    let pki = pki();
    let servers = three(&pki).await;
    let mut p = Proxy::start(&args(&servers, "app", "wrong%2Fpass", &pki.ca)).await;
    p.wait_refused("AUTH refused: WRONGPASS").await;
    // A user that may log in but not load scripts: the master's NOPERM, in words.
    let mut p = Proxy::start(&args(&servers, "noscript", PASSWORD_IN_URL, &pki.ca)).await;
    p.wait_refused("SCRIPT LOAD refused: NOPERM").await;
}
