//! Test harness: real `redis-server` masters on free loopback ports (killed on drop), a proxy
//! in-process on `127.0.0.1:0`, and a raw RESP connection for asserting exact bytes. Every wait
//! is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod cluster;

use redlock_proxy::config::{Config, MasterAddr};
use redlock_proxy::embedded::{self, RedisServer};
use redlock_proxy::server::{Listeners, Proxy};

/// How long any single reply may take in a test before it fails.
pub const REPLY_WITHIN: Duration = Duration::from_secs(5);
/// How long a new proxy may take to have all its (just started) masters voting. Longer than a
/// reply: when test binaries run side by side on a loaded machine, a proxy's first connects and
/// script loads queue behind everything else.
pub const MASTERS_WITHIN: Duration = Duration::from_secs(20);

/// The name of client key `key`'s lock on the masters (default prefix, database 0).
pub fn lock_key(key: &str) -> String {
    let schema = redlock_proxy::locks::keys::Schema::new("redlock:");
    String::from_utf8(schema.key(0, key.as_bytes()).to_vec()).unwrap()
}

/// The name of client key `key`'s waiting marker on the masters.
pub fn marker_key(key: &str) -> String {
    let schema = redlock_proxy::locks::keys::Schema::new("redlock:");
    String::from_utf8(schema.lock(0, key.as_bytes()).marker.to_vec()).unwrap()
}

/// The name of client key `key`'s fence counter on the masters.
pub fn fence_key(key: &str) -> String {
    let schema = redlock_proxy::locks::keys::Schema::new("redlock:");
    String::from_utf8(schema.fence(0, key.as_bytes()).to_vec()).unwrap()
}

/// Starts `n` real masters.
pub fn masters(n: usize) -> Vec<RedisServer> {
    embedded::start_masters(n, "redis-server").expect("redis-server must be installed")
}

/// A proxy over `masters`, after `tweak` has adjusted the test configuration.
pub async fn proxy_with(masters: &[RedisServer], tweak: impl FnOnce(&mut Config)) -> TestProxy {
    let live = masters.iter().all(|m| m.pid().is_some());
    proxy_on(masters.iter().map(RedisServer::addr).collect(), live, tweak).await
}

/// A proxy over the members `addrs` (masters or clusters), after `tweak` has adjusted the test
/// configuration; it waits for them all to vote when they are `live` and trusted as new.
pub async fn proxy_on(
    addrs: Vec<MasterAddr>,
    live: bool,
    tweak: impl FnOnce(&mut Config),
) -> TestProxy {
    let mut config = Config::default();
    config.backend.masters = addrs;
    config.server.shutdown_grace_ms = 2_000;
    // The harness just started these masters: they hold nothing yet.
    config.backend.fresh_at_start = true;
    // Proxies, masters and tests share two cores; the default 50 ms per-master deadline leaves
    // little headroom when a test binary runs many at once. Tests of deadlines set their own.
    config.redlock.master_deadline_ms = 250;
    tweak(&mut config);
    config.validate().expect("test config is valid");
    // Only masters the proxy trusts as new can be expected to vote at once.
    let trusted = config.backend.fresh_at_start;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // A TLS listener too when the tweak names one (`127.0.0.1:0` for any free port).
    let tls = match config.server.tls_listen.0 {
        Some(addr) => Some(TcpListener::bind(addr).await.unwrap()),
        None => None,
    };
    let listeners = Listeners {
        plain: Some(listener),
        tls,
    };
    let proxy = Proxy::start_with(config, listeners).unwrap();
    if trusted && live {
        assert!(
            proxy.wait_for_masters(MASTERS_WITHIN).await,
            "masters did not come up within {MASTERS_WITHIN:?}"
        );
    }
    TestProxy {
        addr: proxy.local_addr(),
        tls_addr: proxy.tls_addr(),
        proxy: Some(proxy),
    }
}

/// A proxy over `masters` with the default test configuration.
pub async fn proxy(masters: &[RedisServer]) -> TestProxy {
    proxy_with(masters, |_| {}).await
}

/// Lets `LOCK ... SESSION` take TTLs down to 100 ms, for tests that watch a session lock
/// outlive its TTL or lose it quickly.
pub fn short_sessions(config: &mut Config) {
    config.redlock.session_min_ttl = 100;
}

/// A proxy for tests that restart masters: it reconnects within 10–100 ms, and a restarted
/// master's quarantine (`max_ttl_ms`) lasts 1 s.
pub async fn proxy_for_restarts(masters: &[RedisServer]) -> TestProxy {
    proxy_with(masters, |c| {
        c.redlock.max_ttl_ms = 1_000;
        c.backend.reconnect_min_ms = 10;
        c.backend.reconnect_max_ms = 100;
    })
    .await
}

/// Three masters and two proxies over them, for clients whose locks one proxy takes and the
/// other must see.
pub struct Cluster {
    pub a: TestProxy,
    pub b: TestProxy,
    _masters: Vec<RedisServer>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let masters = masters(3);
        // Client compatibility is under test, not latency: on a loaded machine the in-process
        // proxies can be descheduled past the default 50 ms master deadline (NOQUORUM).
        let deadline = |c: &mut Config| c.redlock.master_deadline_ms = 1_000;
        let a = proxy_with(&masters, deadline).await;
        let b = proxy_with(&masters, deadline).await;
        Cluster {
            a,
            b,
            _masters: masters,
        }
    }
}

/// A running in-process proxy.
pub struct TestProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where TLS clients connect, if the configuration names a TLS listener.
    pub tls_addr: Option<SocketAddr>,
    proxy: Option<Proxy>,
}

impl TestProxy {
    /// The proxy itself.
    pub fn inner(&self) -> &Proxy {
        self.proxy.as_ref().unwrap()
    }

    /// A raw connection to it.
    pub async fn conn(&self) -> Conn {
        Conn::connect(self.addr).await
    }

    /// Sends `bytes` on a new connection and asserts the proxy answers exactly `expected`, then
    /// closes it.
    pub async fn refuses(&self, bytes: &[u8], expected: &str) {
        let mut c = self.conn().await;
        c.send(bytes).await;
        c.expect(expected.as_bytes()).await;
        assert!(c.closed().await, "open after {expected}");
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Waits (bounded, about 5 s) until `INFO masters` contains `line` (e.g. `masters_up:3`).
    pub async fn wait_for_masters_line(&self, line: &str) {
        let mut c = self.conn().await;
        let want = format!("{line}\r\n");
        let mut info = String::new();
        for _ in 0..500 {
            info = flatten(&c.call(&["INFO", "masters"]).await);
            if info.contains(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("INFO masters never showed {line:?}; last:\n{info}");
    }

    /// Graceful shutdown.
    pub async fn stop(mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown(Duration::from_secs(2)).await;
        }
    }
}

/// A raw client connection.
pub struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Writes one command as a RESP array.
    pub async fn send_cmd(&mut self, args: &[&str]) {
        let mut out = String::new();
        out.push_str(&format!("*{}\r\n", args.len()));
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.send(out.as_bytes()).await;
    }

    /// Reads exactly `expected.len()` bytes and asserts they are `expected`.
    pub async fn expect(&mut self, expected: &[u8]) {
        while self.buf.len() < expected.len() {
            self.fill().await;
        }
        let got = self.buf.split_to(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "unexpected bytes from the proxy"
        );
    }

    /// Sends `args` and asserts the exact reply bytes.
    pub async fn roundtrip(&mut self, args: &[&str], expected: &[u8]) {
        self.send_cmd(args).await;
        self.expect(expected).await;
    }

    /// Reads one whole reply (RESP2 or RESP3).
    pub async fn reply(&mut self) -> OwnedFrame {
        loop {
            // RESP2's nulls, which the RESP3 decoder does not know.
            if self.buf.starts_with(b"$-1\r\n") || self.buf.starts_with(b"*-1\r\n") {
                let _ = self.buf.split_to(5);
                return OwnedFrame::Null;
            }
            match decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    let _ = self.buf.split_to(used);
                    return frame;
                }
                Ok(None) => {}
                // The decoder can mistake a cut-off frame for a streamed one; more bytes tell.
                Err(e) => assert!(
                    !self.buf.ends_with(b"\r\n"),
                    "invalid RESP: {e:?} in {:?}",
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ),
            }
            self.fill().await;
        }
    }

    /// Sends `args` and reads the reply.
    pub async fn call(&mut self, args: &[&str]) -> OwnedFrame {
        self.send_cmd(args).await;
        self.reply().await
    }

    /// True when the proxy closes the connection (within the reply deadline), with nothing
    /// more to read.
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(REPLY_WITHIN, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ) && self.buf.is_empty()
    }

    async fn fill(&mut self) {
        let n = tokio::time::timeout(REPLY_WITHIN, self.stream.read_buf(&mut self.buf))
            .await
            .expect("reply within the deadline")
            .unwrap();
        assert!(n > 0, "proxy closed the connection; had {:?}", self.buf);
    }
}

/// The bulk string inside a frame, as text.
pub fn text(frame: &OwnedFrame) -> String {
    match frame {
        OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. } => {
            String::from_utf8(data.clone()).unwrap()
        }
        OwnedFrame::VerbatimString { data, .. } => String::from_utf8(data.clone()).unwrap(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// The integer inside a frame.
pub fn int(frame: &OwnedFrame) -> i64 {
    match frame {
        OwnedFrame::Number { data, .. } => *data,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// The error text inside a frame.
pub fn error(frame: &OwnedFrame) -> String {
    match frame {
        OwnedFrame::SimpleError { data, .. } => data.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Every string and number in a frame, in order, space-separated: for asserting on nested
/// replies without spelling out their structure.
pub fn flatten(frame: &OwnedFrame) -> String {
    fn walk(f: &OwnedFrame, out: &mut Vec<String>) {
        match f {
            OwnedFrame::BlobString { data, .. }
            | OwnedFrame::SimpleString { data, .. }
            | OwnedFrame::VerbatimString { data, .. } => {
                out.push(String::from_utf8_lossy(data).into_owned())
            }
            OwnedFrame::SimpleError { data, .. } => out.push(data.clone()),
            OwnedFrame::Number { data, .. } => out.push(data.to_string()),
            OwnedFrame::Null => out.push("(nil)".into()),
            OwnedFrame::Array { data, .. } | OwnedFrame::Push { data, .. } => {
                data.iter().for_each(|f| walk(f, out))
            }
            OwnedFrame::Set { data, .. } => data.iter().for_each(|f| walk(f, out)),
            OwnedFrame::Map { data, .. } => data.iter().for_each(|(k, v)| {
                walk(k, out);
                walk(v, out);
            }),
            other => out.push(format!("{other:?}")),
        }
    }
    let mut out = Vec::new();
    walk(frame, &mut out);
    out.join(" ")
}

/// True for RESP2 or RESP3 null.
pub fn is_null(frame: &OwnedFrame) -> bool {
    matches!(frame, OwnedFrame::Null)
}

/// A loopback port the OS just had free, for a child process that must be told its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a child process to completion within `within`, feeding it `stdin`. On timeout (or a
/// panic while waiting) the child is dropped, which kills it.
pub async fn run_bounded(
    cmd: &mut tokio::process::Command,
    stdin: &[u8],
    within: Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the program is installed");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Written concurrently with reading the output, so neither side's pipe can fill and stall.
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&stdin).await;
    });
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {within:?}"))
        .unwrap();
    let _ = writer.await;
    output
}

/// A scratch directory, removed on drop; also a working directory where no `config.toml` is
/// picked up by accident.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty one.
    pub fn new() -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "redlock-proxy-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to the file `name` in it; returns the file's path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Spawns `cmd` (a proxy binary) with `--listen` on a free loopback port, its stderr into
/// `stderr.log` in `dir`, killed on drop; returns it and the address it listens on.
pub fn spawn_listening(
    cmd: &mut tokio::process::Command,
    dir: &TempDir,
) -> (tokio::process::Child, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = spawn_logged(cmd.args(["--listen", &addr.to_string()]), dir);
    (child, addr)
}

/// Spawns `cmd` with its stderr into `stderr.log` in `dir`, killed on drop.
pub fn spawn_logged(cmd: &mut tokio::process::Command, dir: &TempDir) -> tokio::process::Child {
    use std::process::Stdio;
    let log = std::fs::File::create(dir.0.join("stderr.log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A certificate authority made now, for TLS tests.
pub fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for 127.0.0.1 that `issuer` signed, for a server or (`client`) for a client,
/// and its key, as PEM.
pub fn signed_cert(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    client: bool,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    if client {
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
