//! TLS on both sides, against real processes.
//!
//! To the masters: three `redis-server`s that listen only on a TLS port, with a certificate
//! from a CA made at test time, the default user off and an ACL user whose password holds a
//! `/`. The proxy binary, given `rediss://` URLs and the CA, locks through them; given another
//! CA it refuses them, and with a wrong password or a user without the permissions it needs, it
//! says why in its log and in `INFO masters`.
//!
//! To the clients: the proxy's TLS listener serves `redis-cli --tls` and the `redis` crate,
//! requires client certificates when given a CA, and swaps its certificate on SIGHUP while
//! open connections keep theirs.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Conn, TempDir, flatten, signed_cert, test_ca, text};

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
    /// A client certificate the CA signed.
    client_cert: String,
    client_key: String,
    /// Another CA, and a server certificate for 127.0.0.1 it signed.
    stranger: String,
    stranger_cert: String,
    stranger_key: String,
    _dir: TempDir,
}

fn path(p: PathBuf) -> String {
    p.to_str().unwrap().to_owned()
}

fn pki() -> Pki {
    let dir = TempDir::new();
    let ca_issuer = test_ca("redlock-proxy test CA");
    let stranger = test_ca("some other CA");
    let (cert, key) = signed_cert(&ca_issuer, false);
    let (client_cert, client_key) = signed_cert(&ca_issuer, true);
    let (stranger_cert, stranger_key) = signed_cert(&stranger, false);
    Pki {
        ca: path(dir.write("ca.pem", &ca_issuer.pem())),
        cert: path(dir.write("server.pem", &cert)),
        key: path(dir.write("server.key", &key)),
        client_cert: path(dir.write("client.pem", &client_cert)),
        client_key: path(dir.write("client.key", &client_key)),
        stranger: path(dir.write("stranger.pem", &stranger.pem())),
        stranger_cert: path(dir.write("stranger-server.pem", &stranger_cert)),
        stranger_key: path(dir.write("stranger-server.key", &stranger_key)),
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

/// A TLS connection to `port` on 127.0.0.1, trusting the CAs in `cas` and presenting
/// `client` (certificate and key files) if given; `None` if the handshake fails. Bounded.
async fn tls_dial(
    port: u16,
    cas: &[&str],
    client: Option<(&str, &str)>,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let dial = async {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
        };
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        connector.connect(name, tcp).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(5), dial)
        .await
        .ok()
        .flatten()
}

/// Sends `PING` over `tls`, reads the one-line reply and returns its first byte (`+`, or `-`
/// for an error such as `NOAUTH`), or `None` if the connection fails. Bounded.
async fn ping(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Option<u8> {
    let exchange = async {
        tls.write_all(b"PING\r\n").await.ok()?;
        tls.flush().await.ok()?;
        let mut line = Vec::new();
        while line.last() != Some(&b'\n') {
            line.push(tls.read_u8().await.ok()?);
        }
        Some(line[0])
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// True when a TLS handshake with the server on `port`, verified against `ca`, succeeds and a
/// `PING` gets a reply (`NOAUTH`, with the default user off, is a reply). Bounded.
async fn answers_over_tls(port: u16, ca: &str) -> bool {
    match tls_dial(port, &[ca], None).await {
        Some(mut tls) => matches!(ping(&mut tls).await, Some(b'+' | b'-')),
        None => false,
    }
}

/// The proxy binary on free loopback ports, its log in a file; killed on drop.
struct Proxy {
    child: tokio::process::Child,
    /// The plain listener's address, or the TLS one's when there is no plain listener.
    addr: SocketAddr,
    /// The TLS listener's, when there is one.
    tls: Option<SocketAddr>,
    dir: TempDir,
}

impl Proxy {
    /// Starts the binary with `args` and waits (bounded) until it accepts connections.
    async fn start(args: &[String]) -> Proxy {
        Proxy::spawn(args, None).await
    }

    /// Starts it with a TLS listener on a free port too, and the plain listener if `plain`,
    /// else `--listen none`.
    async fn start_tls(args: &[String], plain: bool) -> Proxy {
        let tls = SocketAddr::from((Ipv4Addr::LOCALHOST, support::free_port()));
        let mut args = args.to_vec();
        args.extend(["--tls-listen".to_owned(), tls.to_string()]);
        Proxy::spawn(&args, Some((tls, plain))).await
    }

    async fn spawn(args: &[String], tls: Option<(SocketAddr, bool)>) -> Proxy {
        let dir = TempDir::new();
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .arg("--new-deployment")
            .current_dir(&dir.0)
            .env_remove("RUST_LOG");
        let (mut child, addr) = match tls {
            Some((tls, false)) => (
                support::spawn_logged(cmd.args(["--listen", "none"]), &dir),
                tls,
            ),
            _ => support::spawn_listening(&mut cmd, &dir),
        };
        let tls = tls.map(|(addr, _)| addr);
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
        Proxy {
            child,
            addr,
            tls,
            dir,
        }
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
    // Unless verification is turned off, which works and says so.
    let mut insecure: Vec<String> = servers
        .iter()
        .flat_map(|s| ["--backend".to_owned(), s.url("app", PASSWORD_IN_URL)])
        .collect();
    insecure.push("--backend-tls-insecure".to_owned());
    let p = Proxy::start(&insecure).await;
    p.wait_info("masters_voting:3", |i| i.contains("masters_voting:3\r\n"))
        .await;
    let log = p.log();
    assert!(
        log.contains("WARN") && log.contains("certificates are NOT verified"),
        "{log}"
    );
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

/// `redis-cli -h 127.0.0.1 -p port` with `tls` options and `cmd`; its stdout and stderr,
/// trimmed, and whether it exited 0. Bounded.
async fn redis_cli(port: u16, tls: &[&str], cmd: &[&str]) -> (String, bool) {
    let run = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(tls)
        .args(cmd)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WITHIN, run)
        .await
        .expect("redis-cli finished")
        .expect("redis-cli is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text.trim().to_owned(), out.status.success())
}

/// A `redis` crate connection to the TLS listener on `port`, trusting `pki`'s CA, with the
/// client certificate if `certified`.
async fn redis_crate(
    port: u16,
    pki: &Pki,
    certified: bool,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let read = |p: &str| std::fs::read(p).unwrap();
    let certs = redis::TlsCertificates {
        client_tls: certified.then(|| redis::ClientTlsConfig {
            client_cert: read(&pki.client_cert),
            client_key: read(&pki.client_key),
        }),
        root_cert: Some(read(&pki.ca)),
    };
    let client = redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}/"), certs)?;
    tokio::time::timeout(WITHIN, client.get_multiplexed_async_connection())
        .await
        .expect("the connection attempt ended")
}

/// LOCK, held, UNLOCK through a `redis` crate connection.
async fn lock_cycle(c: &mut redis::aio::MultiplexedConnection, key: &str) {
    let token: String = redis::cmd("LOCK")
        .arg(key)
        .arg(10_000)
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(token.len(), 32, "{token}");
    let held: Option<String> = redis::cmd("LOCK")
        .arg(key)
        .arg(10_000)
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(held, None);
    let released: i64 = redis::cmd("UNLOCK")
        .arg(key)
        .arg(&token)
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(released, 1);
}

/// Masters' flags plus the TLS listener's certificate.
fn listener_args(servers: &[TlsRedis], pki: &Pki) -> Vec<String> {
    let mut args = args(servers, "app", PASSWORD_IN_URL, &pki.ca);
    args.extend(["--tls-cert-file".to_owned(), pki.cert.clone()]);
    args.extend(["--tls-key-file".to_owned(), pki.key.clone()]);
    args
}

/// Retries `LOCK` through `c` (bounded) until the masters vote.
async fn wait_voting(c: &mut redis::aio::MultiplexedConnection) {
    let started = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("masters")
            .query_async(c)
            .await
            .unwrap();
        if info.contains("masters_voting:3\r\n") {
            return;
        }
        assert!(started.elapsed() < WITHIN, "masters never voted:\n{info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn clients_lock_through_the_tls_listener() {
    let pki = pki();
    let servers = three(&pki).await;
    let p = Proxy::start_tls(&listener_args(&servers, &pki), true).await;
    p.wait_info("masters_voting:3", |i| i.contains("masters_voting:3\r\n"))
        .await;
    let port = p.tls.unwrap().port();
    let tls = ["--tls", "--cacert", pki.ca.as_str()];
    let (token, ok) = redis_cli(port, &tls, &["LOCK", "orders:42", "10000"]).await;
    assert!(ok && token.len() == 32, "{token}\n{}", p.log());
    let (held, ok) = redis_cli(port, &tls, &["LOCK", "orders:42", "10000"]).await;
    assert!(ok && held.is_empty(), "{held}");
    let (released, ok) = redis_cli(port, &tls, &["UNLOCK", "orders:42", &token]).await;
    assert!(ok && released == "1", "{released}");

    let mut c = redis_crate(port, &pki, false).await.unwrap();
    lock_cycle(&mut c, "orders:43").await;
    // Pipelined beyond one TLS record, both ways: every reply comes back, in order.
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("ECHO").arg(format!("{i:0>40}"));
    }
    let echoed: Vec<String> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(echoed.len(), 2000);
    assert!(
        echoed
            .iter()
            .enumerate()
            .all(|(i, e)| *e == format!("{i:0>40}"))
    );

    // The plain listener serves beside it; clear text on the TLS port is a failed handshake,
    // counted.
    let mut plain = Conn::connect(p.addr).await;
    assert_eq!(text(&plain.call(&["PING"]).await), "PONG");
    let mut stray = TcpStream::connect(p.tls.unwrap()).await.unwrap();
    stray.write_all(b"PING\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WITHIN, stray.read_to_end(&mut rest)).await;
    let started = Instant::now();
    loop {
        let stats = text(&plain.call(&["INFO", "stats"]).await);
        if stats.contains("tls_handshake_failures:1\r\n") {
            break;
        }
        assert!(started.elapsed() < WITHIN, "{stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.log().contains("TLS handshake failed"), "{}", p.log());
}

#[tokio::test]
async fn client_certificates_are_required_with_a_ca() {
    let pki = pki();
    let servers = three(&pki).await;
    let mut args = listener_args(&servers, &pki);
    args.extend(["--tls-ca-cert-file".to_owned(), pki.ca.clone()]);
    // TLS only: no plain listener.
    let p = Proxy::start_tls(&args, false).await;
    let port = p.addr.port();
    let mut c = redis_crate(port, &pki, true).await.unwrap();
    wait_voting(&mut c).await;
    lock_cycle(&mut c, "orders:44").await;
    let with_cert = [
        "--tls",
        "--cacert",
        &pki.ca,
        "--cert",
        &pki.client_cert,
        "--key",
        &pki.client_key,
    ];
    let (token, ok) = redis_cli(port, &with_cert, &["LOCK", "orders:45", "10000"]).await;
    assert!(ok && token.len() == 32, "{token}\n{}", p.log());
    // Without a certificate: refused, by redis-cli and by the redis crate.
    let without = ["--tls", "--cacert", pki.ca.as_str()];
    let (out, _) = redis_cli(port, &without, &["LOCK", "orders:46", "10000"]).await;
    assert!(
        out.len() != 32 && !out.is_empty(),
        "a client without a certificate got: {out:?}"
    );
    // A certificate from a CA the proxy does not trust: refused too.
    let stranger = [
        "--tls",
        "--cacert",
        &pki.ca,
        "--cert",
        &pki.stranger_cert,
        "--key",
        &pki.stranger_key,
    ];
    let (out, _) = redis_cli(port, &stranger, &["LOCK", "orders:46", "10000"]).await;
    assert!(
        out.len() != 32 && !out.is_empty(),
        "a client with a stranger's certificate got: {out:?}"
    );
    let refused = match redis_crate(port, &pki, false).await {
        Err(_) => true,
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_err(),
    };
    assert!(refused, "the redis crate got in without a certificate");
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!info.contains("tls_handshake_failures:0\r\n"), "{info}");
    assert!(p.log().contains("TLS handshake failed"), "{}", p.log());

    // `optional`: with or without a certificate.
    args.extend(["--tls-auth-clients".to_owned(), "optional".to_owned()]);
    let p = Proxy::start_tls(&args, false).await;
    let mut c = redis_crate(p.addr.port(), &pki, false).await.unwrap();
    wait_voting(&mut c).await;
    lock_cycle(&mut c, "orders:47").await;
    let mut c = redis_crate(p.addr.port(), &pki, true).await.unwrap();
    lock_cycle(&mut c, "orders:48").await;
}

/// The first certificate in a PEM file.
fn first_cert(path: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

/// The certificate the server presented on `tls`.
fn presented(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_keeps_open_connections() {
    let pki = pki();
    let servers = three(&pki).await;
    let files = TempDir::new();
    let cert = path(files.write("cert.pem", &std::fs::read_to_string(&pki.cert).unwrap()));
    let key = path(files.write("key.pem", &std::fs::read_to_string(&pki.key).unwrap()));
    let mut args = args(&servers, "app", PASSWORD_IN_URL, &pki.ca);
    args.extend(["--tls-cert-file".to_owned(), cert.clone()]);
    args.extend(["--tls-key-file".to_owned(), key.clone()]);
    let p = Proxy::start_tls(&args, true).await;
    let port = p.tls.unwrap().port();
    let both = [pki.ca.as_str(), pki.stranger.as_str()];
    let mut old = tls_dial(port, &both, None).await.expect("handshake");
    assert_eq!(presented(&old), first_cert(&pki.cert));
    assert_eq!(ping(&mut old).await, Some(b'+'));

    let hangup = |p: &Proxy| {
        let pid = p.child.id().unwrap() as libc::pid_t;
        // SAFETY: sends a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    let wait_log = |p: &Proxy, what: &str, times: usize| {
        let started = Instant::now();
        loop {
            if p.log().matches(what).count() >= times {
                return;
            }
            assert!(started.elapsed() < WITHIN, "no {what:?} in\n{}", p.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::fs::copy(&pki.stranger_cert, &cert).unwrap();
    std::fs::copy(&pki.stranger_key, &key).unwrap();
    hangup(&p);
    wait_log(&p, "the TLS listener re-read", 1);
    let new = tls_dial(port, &both, None).await.expect("handshake");
    assert_eq!(presented(&new), first_cert(&pki.stranger_cert));
    // A client that trusts only the old CA no longer gets in; the old connection lives on.
    assert!(tls_dial(port, &[&pki.ca], None).await.is_none());
    assert_eq!(ping(&mut old).await, Some(b'+'));

    // A bad file: the certificate in force stays, and the log says why.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    hangup(&p);
    wait_log(&p, "keeps its previous certificate", 1);
    assert!(p.log().contains("no PEM certificate"), "{}", p.log());
    let again = tls_dial(port, &both, None).await.expect("handshake");
    assert_eq!(presented(&again), first_cert(&pki.stranger_cert));
    assert_eq!(ping(&mut old).await, Some(b'+'));
}

/// A TLS client that stops reading cannot hold its connection open once the session ends
/// (here by `idle_timeout_ms`): closing TLS is a write, and it is bounded.
#[tokio::test]
async fn a_tls_client_that_stops_reading_is_closed() {
    let dir = TempDir::new();
    let ca = test_ca("close CA");
    let (cert, key) = signed_cert(&ca, false);
    let ca_file = path(dir.write("ca.pem", &ca.pem()));
    let cert_file = path(dir.write("cert.pem", &cert));
    let key_file = path(dir.write("key.pem", &key));
    let masters = support::masters(3);
    let p = support::proxy_with(&masters, |c| {
        c.server.tls_listen = "127.0.0.1:0".parse().unwrap();
        c.server.tls_cert_file = cert_file.clone();
        c.server.tls_key_file = key_file.clone();
        c.server.idle_timeout_ms = 300;
    })
    .await;
    let mut tls = tls_dial(p.tls_addr.unwrap().port(), &[&ca_file], None)
        .await
        .expect("handshake");
    // Replies of about 8 MB in all, never read: the socket buffers fill and the proxy's
    // writes block.
    let request = "*2\r\n$4\r\nECHO\r\n$65536\r\n".to_owned() + &"x".repeat(65536) + "\r\n";
    for _ in 0..128 {
        let write = tls.write_all(request.as_bytes());
        if tokio::time::timeout(Duration::from_secs(1), write)
            .await
            .is_err()
        {
            break;
        }
    }
    let mut plain = p.conn().await;
    let started = Instant::now();
    loop {
        let clients = text(&plain.call(&["INFO", "clients"]).await);
        if clients.contains("connected_clients:1\r\n") {
            break;
        }
        assert!(started.elapsed() < WITHIN, "still connected:\n{clients}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tls);
}
