//! The `redlock-proxy` binary: flags, `--check-config`, the local masters it starts when none is
//! configured, authentication, shutdown on SIGTERM (blocked waits answered, drain, exit 0,
//! masters gone), and the memory one hostile connection can make it hold.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Output};
use std::time::{Duration, Instant};

use redlock_proxy::config::{Config, MasterAddr};
use support::{Conn, TempDir, error, is_null, text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_redlock-proxy");
/// Bound on starting up, on exiting after a signal, and on one-shot runs.
const WITHIN: Duration = Duration::from_secs(10);

/// The binary with `args`, run in `dir`, without a log filter from the environment.
fn bin(dir: &TempDir, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(&dir.0).env_remove("RUST_LOG");
    cmd
}

/// Runs the binary to completion (bounded).
async fn run(dir: &TempDir, args: &[&str]) -> Output {
    support::run_bounded(&mut bin(dir, args), b"", WITHIN).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[tokio::test]
async fn version_and_help() {
    let dir = TempDir::new();
    let out = run(&dir, &["--version"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "redlock-proxy 0.1.0\n");

    let out = run(&dir, &["--help"]).await;
    assert!(out.status.success(), "{out:?}");
    let help = stdout(&out);
    for flag in [
        "--config <PATH>",
        "--listen <HOST:PORT>",
        "--tls-listen <HOST:PORT>",
        "--tls-cert-file <PATH>",
        "--tls-key-file <PATH>",
        "--tls-ca-cert-file <PATH>",
        "--tls-auth-clients <no|optional|yes>",
        "REDLOCK_PROXY_TLS_LISTEN",
        "--backend <ADDR>",
        "--max-ttl-ms <N>",
        "--requirepass <PASSWORD>",
        "--check-config",
        "--help",
        "--version",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// The TLS listener's settings come from flags or their environment variables, and
/// `--check-config` reads the files, so a bad one fails the check.
#[tokio::test]
async fn tls_listener_settings_from_the_environment() {
    let dir = TempDir::new();
    let ca = support::test_ca("check CA");
    let (cert, key) = support::signed_cert(&ca, false);
    let cert = dir.write("cert.pem", &cert);
    let key = dir.write("key.pem", &key);
    let ca = dir.write("ca.pem", &ca.pem());
    let check = |env: &[(&str, &std::path::Path)]| {
        let mut cmd = bin(&dir, &["--check-config", "--backend", "127.0.0.1:7000"]);
        cmd.env("REDLOCK_PROXY_LISTEN", "none")
            .env("REDLOCK_PROXY_TLS_LISTEN", "127.0.0.1:7390")
            .env("REDLOCK_PROXY_TLS_KEY_FILE", &key)
            .env("REDLOCK_PROXY_TLS_AUTH_CLIENTS", "optional");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let mut cmd = check(&[
        ("REDLOCK_PROXY_TLS_CERT_FILE", &cert),
        ("REDLOCK_PROXY_TLS_CA_CERT_FILE", &ca),
    ]);
    let out = support::run_bounded(&mut cmd, b"", WITHIN).await;
    assert!(out.status.success(), "{out:?}");
    let shown = Config::parse(&stdout(&out)).unwrap();
    assert_eq!(shown.server.listen.0, None);
    assert_eq!(
        shown.server.tls_listen.0,
        Some("127.0.0.1:7390".parse().unwrap())
    );
    assert_eq!(
        shown.server.tls_auth_clients(),
        redlock_proxy::config::ClientAuth::Optional
    );
    // A file that holds no certificate fails the check, named.
    let mut cmd = check(&[
        ("REDLOCK_PROXY_TLS_CERT_FILE", &key),
        ("REDLOCK_PROXY_TLS_CA_CERT_FILE", &ca),
    ]);
    let out = support::run_bounded(&mut cmd, b"", WITHIN).await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(
        why.contains("key.pem") && why.contains("no PEM certificate"),
        "{why}"
    );
    // Optional client certificates need the CA.
    let out = support::run_bounded(
        &mut check(&[("REDLOCK_PROXY_TLS_CERT_FILE", &cert)]),
        b"",
        WITHIN,
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("needs tls_ca_cert_file"), "{out:?}");
}

#[tokio::test]
async fn check_config_prints_the_effective_configuration() {
    let dir = TempDir::new();
    let file = dir.write(
        "proxy.toml",
        "[redlock]\nmax_ttl_ms = 9000\nmaster_deadline_ms = 77\n\
         [backend]\nmasters = [\"127.0.0.1:7000\", \"redis://:pw@127.0.0.1:7001/2\"]\n",
    );
    let out = run(
        &dir,
        &[
            "--check-config",
            "--config",
            file.to_str().unwrap(),
            "--max-ttl-ms",
            "1234",
            "--listen",
            "127.0.0.1:7002",
            "--requirepass",
            "hunter2",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    assert!(
        !text.contains("hunter2"),
        "the password is printed:\n{text}"
    );
    assert!(
        !text.contains(":pw@"),
        "a master's password is printed:\n{text}"
    );
    let shown = Config::parse(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    // Flags win over the file; what the flags leave alone comes from the file.
    assert_eq!(shown.redlock.max_ttl_ms, 1234);
    assert_eq!(shown.redlock.master_deadline_ms, 77);
    assert_eq!(shown.server.listen, "127.0.0.1:7002".parse().unwrap());
    assert_eq!(shown.server.requirepass, "***");
    assert_eq!(shown.backend.masters.len(), 2);
    assert_eq!(shown.backend.masters[0], MasterAddr::local(7000));
    assert_eq!(
        (shown.backend.masters[1].port, shown.backend.masters[1].db),
        (7001, 2)
    );

    // No file and no flags: the defaults, and a note that local masters would be started.
    let out = run(&dir, &["--check-config"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(
        Config::parse(&text).unwrap().to_toml(),
        Config::default().to_toml()
    );
    assert!(
        text.contains("# no masters configured: 3 local redis-server masters will be started"),
        "{text}"
    );
}

#[tokio::test]
async fn config_toml_in_the_working_directory_is_the_default() {
    let dir = TempDir::new();
    dir.write("config.toml", "[redlock]\nmax_ttl_ms = 4321\n");
    let out = run(&dir, &["--check-config"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        Config::parse(&stdout(&out)).unwrap().redlock.max_ttl_ms,
        4321
    );
}

#[tokio::test]
async fn invalid_configurations_exit_1_and_say_why() {
    let dir = TempDir::new();
    let file = dir.write("typo.toml", "[redlock]\nmax_ttl_mss = 5000\n");
    let out = run(
        &dir,
        &["--check-config", "--config", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("unknown field `max_ttl_mss`"),
        "{}",
        stderr(&out)
    );

    let out = run(&dir, &["--check-config", "--max-ttl-ms", "1"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("redlock.max_ttl_ms must be at least 4 ms"),
        "{}",
        stderr(&out)
    );

    let missing = dir.0.join("missing.toml");
    let out = run(
        &dir,
        &["--check-config", "--config", missing.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    // A malformed flag is a usage error (clap's exit code 2).
    let out = run(&dir, &["--check-config", "--backend", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("bad master address \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn missing_redis_server_exits_1_with_a_remedy() {
    let dir = TempDir::new();
    let file = dir.write(
        "proxy.toml",
        "[embedded]\nredis_server = \"/nonexistent/redis-server\"\n",
    );
    let port = support::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = run(
        &dir,
        &["--config", file.to_str().unwrap(), "--listen", &listen],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/redis-server not found"), "{err}");
    assert!(err.contains("apt-get install"), "{err}");
    assert!(err.contains("--backend"), "{err}");
}

/// The binary serving on a free loopback port; killed if the test ends early.
struct Running {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Running {
    /// Starts the binary with `args` plus `--listen`, and waits until it answers.
    async fn start(dir: TempDir, args: &[&str]) -> Running {
        let cmd = bin(&dir, args);
        Running::start_cmd(dir, cmd).await
    }

    /// Starts `cmd` (the binary, or a program that runs it in its own process) plus
    /// `--listen`, and waits until it answers.
    async fn start_cmd(dir: TempDir, mut cmd: Command) -> Running {
        let (child, addr) = support::spawn_listening(&mut cmd, &dir);
        let mut running = Running { child, addr, dir };
        running.wait_ready().await;
        running
    }

    /// Polls connect + PING until a reply (PONG, or NOAUTH when a password is required).
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited before serving: {status}\n{}", self.stderr());
            }
            if answers(self.addr).await {
                return;
            }
            assert!(
                started.elapsed() < WITHIN,
                "no reply to PING within {WITHIN:?}\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    /// The process's peak resident set so far (`VmHWM`), in bytes.
    fn peak_rss(&self) -> u64 {
        status_kib(self, "VmHWM") * 1024
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id().expect("still running")).unwrap();
        // SAFETY: kill(2) on our own child with a valid signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    async fn exit_status(&mut self) -> ExitStatus {
        match tokio::time::timeout(WITHIN, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "still running {WITHIN:?} after the signal\n{}",
                self.stderr()
            ),
        }
    }

    /// Waits (bounded) until the listener is closed.
    async fn wait_refused(&self) {
        let started = Instant::now();
        while TcpStream::connect(self.addr).await.is_ok() {
            assert!(started.elapsed() < WITHIN, "still accepting connections");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn answers(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n") {
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        Some(buf[0] == b'+' || buf[0] == b'-')
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}

/// `field:value` lines of the proxy's INFO `section`.
async fn info(c: &mut Conn, section: &str) -> Vec<(String, String)> {
    let text = text(&c.call(&["INFO", section]).await);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(f, v)| (f.to_owned(), v.to_owned()))
        .collect()
}

fn field<'a>(info: &'a [(String, String)], name: &str) -> &'a str {
    info.iter()
        .find(|(f, _)| f == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {info:?}"))
}

/// Polls INFO until every master has a connection up and votes.
async fn wait_masters_up(c: &mut Conn, n: usize) {
    let started = Instant::now();
    let n = n.to_string();
    loop {
        let i = info(c, "masters").await;
        if field(&i, "masters_up") == n && field(&i, "masters_voting") == n {
            return;
        }
        assert!(started.elapsed() < WITHIN, "masters not up: {i:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `--config` and `--backend` flags for running the binary over `masters`, with `extra` TOML
/// appended to the file.
fn backend_args(
    dir: &TempDir,
    masters: &[redlock_proxy::embedded::RedisServer],
    extra: &str,
) -> Vec<String> {
    // The harness started these masters moments ago, empty. Declared persistent, they vote at
    // once instead of sitting out the restart quarantine of max-ttl-ms.
    let file = dir.write(
        "proxy.toml",
        &format!("[backend]\npersistent_masters = true\n{extra}"),
    );
    let mut args = vec!["--config".to_owned(), file.to_str().unwrap().to_owned()];
    for m in masters {
        args.extend(["--backend".to_owned(), m.addr().to_string()]);
    }
    args
}

#[tokio::test]
async fn embedded_masters_serve_and_go_away_on_sigterm() {
    let mut p = Running::start(TempDir::new(), &[]).await;
    let mut c = Conn::connect(p.addr).await;
    wait_masters_up(&mut c, 3).await;
    let token = text(&c.call(&["LOCK", "k", "5000"]).await);
    assert!(is_token(&token), "{token}");

    let masters = info(&mut c, "masters").await;
    assert_eq!(field(&masters, "masters"), "3");
    assert_eq!(field(&masters, "quorum"), "2");
    let ports: Vec<u16> = (0..3)
        .map(|i| {
            let line = field(&masters, &format!("master{i}"));
            assert!(line.contains(",state=up,"), "{line}");
            let addr = line
                .strip_prefix("addr=127.0.0.1:")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("{line}"));
            addr.parse().unwrap()
        })
        .collect();
    let log = p.stderr();
    assert!(
        log.contains(&format!(
            "no backend configured: started 3 local redis-server masters on 127.0.0.1 ports {ports:?}"
        )),
        "{log}"
    );

    p.signal(libc::SIGTERM);
    let status = p.exit_status().await;
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    // The proxy reaps its masters before it exits, so they are gone now, not eventually.
    for port in ports {
        let gone = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await;
        assert!(
            gone.is_err(),
            "master on port {port} still accepts connections"
        );
    }
    assert!(TcpStream::connect(p.addr).await.is_err());
}

#[tokio::test]
async fn sigterm_finishes_commands_in_flight() {
    let m = support::masters(3);
    let dir = TempDir::new();
    // Long enough that the LOCKs below are surely still waiting when the signal arrives.
    let args = backend_args(&dir, &m, "[redlock]\nmaster_deadline_ms = 1500\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Running::start(dir, &args).await;
    let mut probe = Conn::connect(p.addr).await;
    wait_masters_up(&mut probe, 3).await;

    // Two of three masters frozen: every LOCK waits out its deadline, then fails NOQUORUM.
    m[1].pause();
    m[2].pause();
    let mut c = Conn::connect(p.addr).await;
    let batch: String = (0..100)
        .map(|i| {
            let key = format!("inflight:{i:03}");
            format!(
                "*3\r\n$4\r\nLOCK\r\n${}\r\n{key}\r\n$4\r\n5000\r\n",
                key.len()
            )
        })
        .collect();
    let commands =
        |i: &[(String, String)]| -> u64 { field(i, "total_commands_processed").parse().unwrap() };
    let before = commands(&info(&mut probe, "stats").await);
    let sent = Instant::now();
    c.send(batch.as_bytes()).await;
    // Signal only once the proxy has read and dispatched all 100 (each INFO counts itself).
    let mut polls = 0;
    loop {
        polls += 1;
        let now = commands(&info(&mut probe, "stats").await);
        if now - before - polls >= 100 {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "LOCKs not dispatched"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.signal(libc::SIGTERM);
    p.wait_refused().await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited with commands in flight"
    );
    for i in 0..100 {
        let reply = c.reply().await;
        assert_eq!(
            error(&reply),
            "NOQUORUM 1 of 3 masters answered, 2 needed",
            "reply {i}"
        );
    }
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    assert!(c.closed().await, "connection left open after the drain");
    let status = p.exit_status().await;
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    m[1].resume();
    m[2].resume();
}

#[tokio::test]
async fn sigterm_right_after_a_pipelined_batch() {
    let m = support::masters(3);
    let dir = TempDir::new();
    let args = backend_args(&dir, &m, "");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Running::start(dir, &args).await;
    let mut c = Conn::connect(p.addr).await;
    wait_masters_up(&mut c, 3).await;
    let batch: String = (0..100)
        .map(|i| {
            let key = format!("batch:{i:03}");
            format!(
                "*3\r\n$4\r\nLOCK\r\n${}\r\n{key}\r\n$4\r\n5000\r\n",
                key.len()
            )
        })
        .collect();
    c.send(batch.as_bytes()).await;
    p.signal(libc::SIGTERM);
    for i in 0..100 {
        match c.reply().await {
            redis_protocol::resp3::types::OwnedFrame::BlobString { data, .. } => {
                assert!(is_token(std::str::from_utf8(&data).unwrap()), "reply {i}")
            }
            other => assert!(error(&other).starts_with("NOQUORUM "), "reply {i}"),
        }
    }
    assert!(c.closed().await);
    let status = p.exit_status().await;
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
}

#[tokio::test]
async fn requirepass_flag_requires_auth() {
    let m = support::masters(3);
    let dir = TempDir::new();
    let mut args = vec!["--requirepass".to_owned(), "secret".to_owned()];
    args.extend(backend_args(&dir, &m, ""));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Running::start(dir, &args).await;

    let mut c = Conn::connect(p.addr).await;
    c.roundtrip(
        &["LOCK", "k", "5000"],
        b"-NOAUTH Authentication required.\r\n",
    )
    .await;
    c.roundtrip(&["PING"], b"-NOAUTH Authentication required.\r\n")
        .await;
    c.roundtrip(
        &["AUTH", "wrong"],
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    c.roundtrip(&["AUTH", "secret"], b"+OK\r\n").await;
    wait_masters_up(&mut c, 3).await;
    let token = text(&c.call(&["LOCK", "k", "5000"]).await);
    assert!(is_token(&token), "{token}");
    // HELLO 3 AUTH authenticates too.
    let mut c3 = Conn::connect(p.addr).await;
    let hello = c3.call(&["HELLO", "3", "AUTH", "default", "secret"]).await;
    assert!(
        matches!(hello, redis_protocol::resp3::types::OwnedFrame::Map { .. }),
        "{hello:?}"
    );
    c3.roundtrip(&["LOCK", "k", "5000"], b"_\r\n").await;

    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_status().await.code(), Some(0), "{}", p.stderr());
}

/// A field of the process's `/proc/<pid>/status`, in KiB (`VmRSS`: resident now; `VmHWM`: the
/// peak so far).
fn status_kib(p: &Running, field: &str) -> u64 {
    let pid = p.child.id().expect("still running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Whether the peer closed `s` within the bound (EOF or reset), reading past any replies.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let drain = async {
        let mut chunk = [0u8; 4096];
        while let Ok(1..) = s.read(&mut chunk).await {}
    };
    tokio::time::timeout(WITHIN, drain).await.is_ok()
}

#[tokio::test]
async fn strangers_cannot_make_the_proxy_buffer_their_requests() {
    let m = support::masters(1);
    let dir = TempDir::new();
    let mut args = vec!["--requirepass".to_owned(), "secret".to_owned()];
    args.extend(backend_args(&dir, &m, ""));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Running::start(dir, &args).await;
    let rss_before = status_kib(&p, "VmRSS");
    let peak_before = status_kib(&p, "VmHWM");
    // 1023 KiB of a request within every authenticated cap, never finished: 200 connections.
    let mut request = b"*2\r\n$524288\r\n".to_vec();
    request.resize(request.len() + 512 * 1024, b'a');
    request.extend_from_slice(b"\r\n$524288\r\n");
    request.resize(1023 * 1024, b'a');
    let request = std::sync::Arc::new(request);
    let senders: Vec<_> = (0..200)
        .map(|_| {
            let request = request.clone();
            let addr = p.addr;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                // Refused on its header, the rest of it meets a closed connection.
                let _ = s.write_all(&request).await;
                s
            })
        })
        .collect();
    let mut streams = Vec::new();
    for sender in senders {
        let sent = tokio::time::timeout(WITHIN, sender).await;
        streams.push(sent.expect("written within the bound").unwrap());
    }
    let peak = status_kib(&p, "VmHWM");
    let grown = peak.saturating_sub(rss_before.max(peak_before));
    println!(
        "proxy RSS before {rss_before} KiB (peak {peak_before} KiB); peak after 200 strangers \
         {peak} KiB: +{grown} KiB"
    );
    assert!(
        grown < 16 * 1024,
        "200 unauthenticated partial requests grew the proxy's peak RSS by {grown} KiB"
    );
    for (i, s) in streams.iter_mut().enumerate() {
        assert!(closed_by_peer(s).await, "connection {i} left open");
    }
}

#[tokio::test]
async fn protected_mode_refuses_a_public_address_without_a_password() {
    let dir = TempDir::new();
    // Refused before binding or starting masters: nothing listens, nothing is sent.
    let out = run(&dir, &["--listen", "0.0.0.0:0"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    for needle in ["protected mode", "requirepass", "--protected-mode no"] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
    // Both ways out, checked without serving.
    let out = run(
        &dir,
        &[
            "--check-config",
            "--listen",
            "0.0.0.0:0",
            "--protected-mode",
            "no",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(!Config::parse(&stdout(&out)).unwrap().server.protected_mode);
    let mut cmd = bin(&dir, &["--check-config", "--listen", "0.0.0.0:0"]);
    cmd.env("REDLOCK_PROXY_REQUIREPASS", "pr0tect3d");
    let out = support::run_bounded(&mut cmd, b"", WITHIN).await;
    assert!(out.status.success(), "{out:?}");
    assert!(!stdout(&out).contains("pr0tect3d"), "{}", stdout(&out));
}

#[tokio::test]
async fn the_open_files_limit_is_raised_and_running_out_is_logged_rarely() {
    let m = support::masters(1);
    let dir = TempDir::new();
    let args = backend_args(&dir, &m, "");
    // A soft limit of 64 under a hard one of 128, as a service manager might leave them.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=64:128")
        .arg(BIN)
        .args(&args)
        .current_dir(&dir.0)
        .env_remove("RUST_LOG");
    let p = Running::start_cmd(dir, cmd).await;
    let pid = p.child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(fields[3..5], ["128", "128"], "{open_files}");
    let log = p.stderr();
    assert!(
        log.contains("open-files limit raised from 64 to 128"),
        "{log}"
    );
    assert!(
        log.contains("the open-files limit is 128, below the 10066"),
        "{log}"
    );

    // More clients than descriptors: accepts fail while the rest wait in the backlog.
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(TcpStream::connect(p.addr).await.unwrap());
    }
    let started = Instant::now();
    while !p.stderr().contains("accept failed") {
        assert!(started.elapsed() < WITHIN, "no accept failure logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second more of failing: a retry every 50 ms, one line.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = p.stderr();
    let lines = log.matches("accept failed").count();
    assert_eq!(lines, 1, "{log}");
    assert!(log.contains("Too many open files"), "{log}");
}

#[tokio::test]
async fn secrets_come_from_the_environment_and_files_and_are_never_shown() {
    // Masters whose passwords hold '/' and '@'.
    let m = support::masters(2);
    for (master, password) in m.iter().zip(["u/r@l1", "f/i@le2"]) {
        let mut admin = Conn::connect(master.socket_addr()).await;
        admin
            .roundtrip(&["CONFIG", "SET", "requirepass", password], b"+OK\r\n")
            .await;
    }
    let (url_master, file_master) = (&m[0], &m[1]);
    let dir = TempDir::new();
    let file = dir.write("master-password", "f/i@le2\n");
    let config = dir.write(
        "proxy.toml",
        "[backend]\npersistent_masters = true\n[log]\nlevel = \"debug\"\n",
    );
    let url = format!("redis://:u%2Fr%40l1@127.0.0.1:{}", url_master.port());
    let plain = format!("127.0.0.1:{}", file_master.port());
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--backend",
        &url,
        "--backend",
        &plain,
        "--backend-password-file",
        file.to_str().unwrap(),
    ];
    let out = support::run_bounded(
        bin(&dir, &[&args[..], &["--check-config"]].concat())
            .env("REDLOCK_PROXY_REQUIREPASS", "e/n@v3"),
        b"",
        WITHIN,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let shown = stdout(&out);
    let mut cmd = bin(&dir, &args);
    cmd.env("REDLOCK_PROXY_REQUIREPASS", "e/n@v3");
    let mut p = Running::start_cmd(dir, cmd).await;
    let mut c = Conn::connect(p.addr).await;
    c.roundtrip(&["AUTH", "e/n@v3"], b"+OK\r\n").await;
    wait_masters_up(&mut c, 2).await;
    assert!(is_token(&text(&c.call(&["LOCK", "k", "5000"]).await)));
    let masters = text(&c.call(&["INFO", "masters"]).await);
    let pid = p.child.id().unwrap();
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .into_owned();
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_status().await.code(), Some(0), "{}", p.stderr());
    let log = p.stderr();
    assert!(log.contains("DEBUG"), "the log is at debug level:\n{log}");
    for secret in ["u/r@l1", "u%2Fr%40l1", "f/i@le2", "e/n@v3"] {
        for (what, text) in [
            ("--check-config", &shown),
            ("INFO", &masters),
            ("the log", &log),
        ] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
    for secret in ["f/i@le2", "e/n@v3"] {
        assert!(!cmdline.contains(secret), "{secret} on the command line");
    }
}

/// The binary over `masters`, and a connection to it once every master votes.
async fn serving(masters: &[redlock_proxy::embedded::RedisServer]) -> (Running, Conn) {
    let dir = TempDir::new();
    let args = backend_args(&dir, masters, "");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Running::start(dir, &args).await;
    let mut c = Conn::connect(p.addr).await;
    wait_masters_up(&mut c, masters.len()).await;
    (p, c)
}

/// How many of `masters` hold `key`.
async fn held_by(masters: &[redlock_proxy::embedded::RedisServer], key: &str) -> usize {
    let mut n = 0;
    for m in masters {
        let mut c = Conn::connect(m.addr().host_port().parse().unwrap()).await;
        n += usize::from(support::int(&c.call(&["EXISTS", key]).await) == 1);
    }
    n
}

/// Waits (bounded) until `want` of `masters` hold `key`.
async fn wait_held_by(masters: &[redlock_proxy::embedded::RedisServer], key: &str, want: usize) {
    let started = Instant::now();
    while held_by(masters, key).await != want {
        assert!(
            started.elapsed() < WITHIN,
            "{key} not on {want} masters within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Issue row 1: one connection blocked on `LOCK ... WAIT` pipelines 1000 × `ECHO` of 512 KiB
/// and reads nothing. Every reply held behind the blocked one counts against the client's
/// output limit: past the soft mark the proxy stops reading the connection, so its peak RSS
/// stays far below the half gigabyte the pipeline asks for; once the wait ends and the client
/// reads, the replies come in order.
#[tokio::test]
async fn replies_held_behind_a_blocked_wait_are_bounded() {
    let m = support::masters(3);
    let (p, mut holder) = serving(&m).await;
    let token = text(&holder.call(&["LOCK", "k", "30000"]).await);
    let mut attacker = Conn::connect(p.addr).await;
    attacker
        .send_cmd(&["LOCK", "k", "30000", "WAIT", "30000"])
        .await;
    wait_held_by(&m, &support::marker_key("k"), 3).await;
    const ARG: usize = 512 * 1024;
    let mut echo = format!("*2\r\n$4\r\nECHO\r\n${ARG}\r\n").into_bytes();
    echo.resize(echo.len() + ARG, b'x');
    echo.extend_from_slice(b"\r\n");
    // A write that makes no progress for this long: the proxy has stopped reading.
    const STALLED: Duration = Duration::from_secs(2);
    let mut sent = 0;
    while sent < 1000 {
        match tokio::time::timeout(STALLED, attacker.stream.write_all(&echo)).await {
            Ok(written) => written.expect("the proxy closed the connection"),
            Err(_) => break,
        }
        sent += 1;
    }
    let peak = p.peak_rss();
    eprintln!(
        "peak RSS {} MB after {sent} ECHOs of 512 KiB behind a blocked WAIT",
        peak >> 20
    );
    assert!(peak < 300 << 20, "peak RSS {} MB", peak >> 20);
    assert!(sent < 1000, "the proxy read the whole pipeline");
    // The wait ends; the client reads: the token, then the echoes in order.
    holder.roundtrip(&["UNLOCK", "k", &token], b":1\r\n").await;
    assert!(is_token(&text(&attacker.reply().await)));
    for _ in 0..sent.min(3) {
        let echoed = text(&attacker.reply().await);
        assert!(echoed.len() == ARG && echoed.bytes().all(|b| b == b'x'));
    }
}

/// Issue row 8: SIGTERM while a client waits in `LOCK ... WAIT`. It gets its null at once, not
/// a close after the grace period; its waiting marker leaves the masters; then the proxy
/// drains and exits 0.
#[tokio::test]
async fn sigterm_answers_blocked_waits_at_once() {
    let m = support::masters(3);
    let (mut p, mut holder) = serving(&m).await;
    text(&holder.call(&["LOCK", "k", "30000"]).await);
    let mut waiter = Conn::connect(p.addr).await;
    waiter
        .send_cmd(&["LOCK", "k", "30000", "WAIT", "20000"])
        .await;
    let marker = &support::marker_key("k");
    wait_held_by(&m, marker, 3).await;
    p.signal(libc::SIGTERM);
    let signalled = Instant::now();
    assert!(is_null(&waiter.reply().await));
    // The grace period is 5 s; the answer does not wait for it.
    let answered = signalled.elapsed();
    assert!(
        answered < Duration::from_secs(1),
        "answered after {answered:?}"
    );
    assert_eq!(held_by(&m, marker).await, 0, "the waiting marker stayed");
    assert!(waiter.closed().await);
    assert_eq!(p.exit_status().await.code(), Some(0), "{}", p.stderr());
}
