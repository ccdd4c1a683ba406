//! Compatibility suite: real client libraries (redis-py, node-redlock, ioredis, node-redis, and
//! the lock libraries python-redis-lock, pottery, aioredlock and redis-semaphore), at the
//! versions pinned in `tests/compat/` (`requirements.txt`, `package.json`,
//! `package-lock.json`), run against two proxies over the
//! same three masters, so a lock taken through one proxy must be seen and refused through the
//! other. Each client script asserts its own outcomes and prints `ok <check>` per check; the
//! tests here also require every expected check, the pinned version and a clean exit.
//!
//! Raw RESP tests cover what no library sends here: every lock-shaped SET form, and every known
//! lock script by SHA1 and by body, with the bodies taken from the installed libraries.
//!
//! The clients are installed once into `target/` (a Python venv and an npm folder) and reused
//! while the pin files are unchanged. Installing needs python3 with venv support, node and npm
//! (`tools/install-deps`) and the PyPI and npm registries: without them the tests fail.

mod support;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis_protocol::resp3::types::OwnedFrame;
use redlock_proxy::config::Config;
use support::{Conn, TestProxy};
use tokio::io::AsyncReadExt;

/// Pinned client versions: must match the pin files and `docs/clients.md`.
const REDIS_PY: &str = "8.1.0";
const IOREDIS: &str = "6.0.0";
const NODE_REDIS: &str = "6.3.1";
const REDLOCK5: &str = "5.0.0-beta.2";
const REDLOCK4: &str = "4.2.0";
const PYTHON_REDIS_LOCK: &str = "4.0.1";
const POTTERY: &str = "3.0.1";
const AIOREDLOCK: &str = "0.7.3";
const REDIS_SEMAPHORE: &str = "5.8.0";

/// `[redlock] default_ttl_ms` of the test proxies: the TTL of `SET key token NX`.
fn default_ttl_ms() -> i64 {
    Config::default().redlock.default_ttl_ms() as i64
}

/// Bound on one install step (venv creation, pip install, npm ci).
const INSTALL_WITHIN: Duration = Duration::from_secs(300);
/// Bound on one client script run.
const SCRIPT_WITHIN: Duration = Duration::from_secs(60);

/// The library lock scripts the proxy knows (README, drop-in commands), as the dump scripts name
/// them, with the SHA1 of the exact body each library sends.
const KNOWN_SCRIPTS: &[(&str, &str)] = &[
    (
        "redis-py-release",
        "c3f8721cbb97f72bc19e972846bd7aaf91901658",
    ),
    (
        "redis-py-extend",
        "a4e8783852e6b949f9ef3a97212805108459a890",
    ),
    (
        "redis-py-reacquire",
        "1cac51482acf5858da00f6d685d68f886cd6b6b2",
    ),
    (
        "redis-py-asyncio-release",
        "c3f8721cbb97f72bc19e972846bd7aaf91901658",
    ),
    (
        "redis-py-asyncio-extend",
        "a4e8783852e6b949f9ef3a97212805108459a890",
    ),
    (
        "redis-py-asyncio-reacquire",
        "1cac51482acf5858da00f6d685d68f886cd6b6b2",
    ),
    (
        "redlock5-acquire",
        "96da70f7716f27d278a5218544df37fd8b0a5e4c",
    ),
    (
        "redlock5-extend",
        "aed6f382e410db8ba7926d4e5e9aab410bf2a78a",
    ),
    (
        "redlock5-release",
        "e4612211c9f8f51c257e26e056b0a654b3187242",
    ),
    ("redlock4-lock", "e5a322e2634ef59a516e8ea150cb085afafee684"),
    (
        "redlock4-extend",
        "ce46f80993d5dac20dd066eb301a4e37994bdbed",
    ),
    (
        "redlock4-unlock",
        "0f0f23b9048b36752b5be114f357ba083449f908",
    ),
];

/// The SHA1 of a user-written compare-and-delete one-liner: not a library script.
const USER_SCRIPT_SHA: &str = "e9f69f2beb755be68b5e456ee2ce9aadfbc4ebf4";

// ---------------------------------------------------------------------------------------------
// Installing the clients

/// The client scripts and pin files.
fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

/// Where the clients are installed: under `target/`, never in the source tree.
fn install_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat")
}

/// The venv's python with the pinned redis-py, installed on first use. Blocks: call it before
/// starting anything the test's runtime must drive.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(install_python) {
        Ok(p) => p,
        Err(e) => panic!("redis-py could not be installed: {e}"),
    }
}

/// The npm folder with the pinned Node.js clients, installed on first use. Blocks, like
/// [`python`].
fn node_modules() -> &'static Path {
    static NODE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match NODE.get_or_init(install_node) {
        Ok(p) => p,
        Err(e) => panic!("the Node.js clients could not be installed: {e}"),
    }
}

fn install_python() -> Result<PathBuf, String> {
    let requirements = compat_dir().join("requirements.txt");
    let pins = read(&requirements)?;
    let root = install_dir();
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    // Another test binary run may be installing into the same folder.
    let _lock = FileLock::take(&root.join("venv.lock"))?;
    let venv = root.join("venv");
    let python = venv.join("bin/python");
    let marker = venv.join("pinned.txt");
    // `exists` follows the venv's symlink: a venv whose interpreter is gone is rebuilt.
    if fs::read(&marker).ok().as_ref() == Some(&pins) && python.exists() {
        return Ok(python);
    }
    remove_dir(&venv)?;
    let system = which("python3").ok_or("python3 is not installed (tools/install-deps)")?;
    bounded(
        Command::new(system).args(["-m", "venv"]).arg(&venv),
        Duration::from_secs(120),
    )
    .map_err(|e| format!("creating a venv failed (Debian needs python3-venv): {e}"))?;
    bounded(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "--timeout", "30", "--retries", "2", "-r"])
            .arg(&requirements),
        INSTALL_WITHIN,
    )
    .map_err(|e| format!("pip install from PyPI failed (is the registry reachable?): {e}"))?;
    fs::write(&marker, &pins).map_err(|e| e.to_string())?;
    Ok(python)
}

fn install_node() -> Result<PathBuf, String> {
    let files = ["package.json", "package-lock.json"];
    let mut pins = Vec::new();
    for f in files {
        pins.extend(read(&compat_dir().join(f))?);
    }
    let root = install_dir();
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let _lock = FileLock::take(&root.join("node.lock"))?;
    let dir = root.join("node");
    let modules = dir.join("node_modules");
    let marker = dir.join("pinned.txt");
    if fs::read(&marker).ok().as_ref() == Some(&pins) && modules.is_dir() {
        return Ok(modules);
    }
    which("node").ok_or("node is not installed (tools/install-deps)")?;
    let npm = which("npm").ok_or("npm is not installed (tools/install-deps)")?;
    remove_dir(&dir)?;
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for f in files {
        fs::copy(compat_dir().join(f), dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
    }
    // `npm ci` installs exactly the lock file; no package needs an install script.
    bounded(
        Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .args(["--fetch-retries=2", "--fetch-timeout=30000"])
            .current_dir(&dir),
        INSTALL_WITHIN,
    )
    .map_err(|e| format!("npm ci from the npm registry failed (is it reachable?): {e}"))?;
    fs::write(&marker, &pins).map_err(|e| e.to_string())?;
    Ok(modules)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// An exclusive lock on a file, held until dropped, so concurrent test runs install one at a
/// time.
struct FileLock {
    _file: fs::File,
}

impl FileLock {
    fn take(path: &Path) -> Result<FileLock, String> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Whoever holds it is itself bounded by INSTALL_WITHIN per step.
        let deadline = Instant::now() + 3 * INSTALL_WITHIN;
        loop {
            // SAFETY: flock on a descriptor `file` owns and keeps open.
            let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if taken == 0 {
                return Ok(FileLock { _file: file });
            }
            if Instant::now() >= deadline {
                return Err(format!("{} stayed locked by another run", path.display()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `cmd` to completion within `within`, or kills its whole process group (pip and npm
/// start helpers). Ok(stdout) on success; otherwise the command, its status and its output.
fn bounded(cmd: &mut Command, within: Duration) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    // Drained on threads so neither pipe can fill and stall the child.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    };
    if status.is_none() {
        // SAFETY: signals the process group this function created (pgid = child pid).
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }
    let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("{shown} failed ({s}):\n{}", tail(&out, &err))),
        None => Err(format!(
            "{shown} did not finish within {within:?} and was killed:\n{}",
            tail(&out, &err)
        )),
    }
}

/// The last lines of a failed command's output, enough to see why.
fn tail(stdout: &str, stderr: &str) -> String {
    let both = format!("{stdout}\n{stderr}");
    let lines: Vec<&str> = both.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Running the client scripts

use support::Cluster;

impl Cluster {
    /// The proxies as the scripts take them.
    fn args(&self) -> Vec<String> {
        vec![
            "--a".into(),
            self.a.addr.to_string(),
            "--b".into(),
            self.b.addr.to_string(),
        ]
    }
}

/// What a client script printed.
struct ScriptOutput {
    label: String,
    success: bool,
    stdout: String,
    stderr: String,
}

impl ScriptOutput {
    fn context(&self) -> String {
        format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.label, self.stdout, self.stderr
        )
    }

    /// Asserts a clean exit, the version line and an `ok` line for every check in `checks`.
    fn assert_passed(&self, version: &str, checks: &[&str]) {
        assert!(self.success, "client script failed: {}", self.context());
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert!(
            lines.contains(&format!("version {version}").as_str()),
            "expected `version {version}`: {}",
            self.context()
        );
        for check in checks {
            assert!(
                lines.contains(&format!("ok {check}").as_str()),
                "check {check} did not pass: {}",
                self.context()
            );
        }
        assert!(
            lines.last() == Some(&"done"),
            "no `done`: {}",
            self.context()
        );
    }
}

/// Runs `program tests/compat/<script> args...` within [`SCRIPT_WITHIN`], killing it on overrun.
async fn run_script(
    program: &Path,
    script: &str,
    args: &[String],
    env: &[(&str, &Path)],
) -> ScriptOutput {
    let label = format!("{script} {}", args.join(" "));
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(compat_dir().join(script))
        .args(args)
        // Keeps __pycache__ out of the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let collect = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf).await;
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let status = tokio::time::timeout(SCRIPT_WITHIN, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let out = ScriptOutput {
        label,
        success: matches!(status, Ok(Ok(s)) if s.success()),
        stdout: stdout.await.unwrap(),
        stderr: stderr.await.unwrap(),
    };
    assert!(
        status.is_ok(),
        "client script did not finish within {SCRIPT_WITHIN:?}: {}",
        out.context()
    );
    out
}

async fn run_node(script: &str, args: &[String]) -> ScriptOutput {
    let modules = node_modules();
    let node = which("node").expect("node is installed");
    run_script(&node, script, args, &[("NODE_PATH", modules)]).await
}

// ---------------------------------------------------------------------------------------------
// redis-py

const REDIS_PY_CHECKS: &[&str] = &[
    "acquire",
    "contention_via_b",
    "pttl_ttl_exists",
    "blocking_timeout_expires",
    "extend_add",
    "extend_replace",
    "reacquire",
    "release",
    "acquire_via_b_after_release",
    "blocking_acquire",
    "context_manager",
    "default_ttl",
    "lost_lock_deleted",
    "lost_lock_expired",
    "lock_unlock_commands",
];

/// The redis-py flow in `mode` (sync or asyncio); `protocol` None keeps the client's default.
async fn redis_py(mode: &str, protocol: Option<u8>) {
    let python = python();
    let cluster = Cluster::start().await;
    let mut args = cluster.args();
    args.extend(["--mode".into(), mode.into()]);
    args.extend(["--default-ttl-ms".into(), default_ttl_ms().to_string()]);
    if let Some(p) = protocol {
        args.extend(["--protocol".into(), p.to_string()]);
    }
    let out = run_script(python, "redis_py.py", &args, &[]).await;
    out.assert_passed(&format!("redis-py {REDIS_PY}"), REDIS_PY_CHECKS);
}

#[tokio::test]
async fn redis_py_sync_default_resp3() {
    redis_py("sync", None).await;
}

#[tokio::test]
async fn redis_py_sync_resp2() {
    redis_py("sync", Some(2)).await;
}

#[tokio::test]
async fn redis_py_asyncio_default_resp3() {
    redis_py("asyncio", None).await;
}

#[tokio::test]
async fn redis_py_asyncio_resp2() {
    redis_py("asyncio", Some(2)).await;
}

/// redis-py with `ssl=True` through the proxy's TLS listener, verifying its certificate.
#[tokio::test]
async fn redis_py_over_tls() {
    let python = python();
    let dir = support::TempDir::new();
    let ca = support::test_ca("redlock-proxy test CA");
    let (cert, key) = support::signed_cert(&ca, false);
    let ca_file = dir.write("ca.pem", &ca.pem());
    let cert_file = dir.write("cert.pem", &cert);
    let key_file = dir.write("key.pem", &key);
    let masters = support::masters(3);
    let p = support::proxy_with(&masters, |c| {
        c.redlock.master_deadline_ms = 1_000;
        c.server.tls_listen = "127.0.0.1:0".parse().unwrap();
        c.server.tls_cert_file = cert_file.display().to_string();
        c.server.tls_key_file = key_file.display().to_string();
    })
    .await;
    let args = [
        "--port".to_owned(),
        p.tls_addr.unwrap().port().to_string(),
        "--ca".to_owned(),
        ca_file.display().to_string(),
    ];
    let out = run_script(python, "redis_py_tls.py", &args, &[]).await;
    out.assert_passed(REDIS_PY, &["ping", "lock_held_release", "lock_command"]);
}

// ---------------------------------------------------------------------------------------------
// Node.js

#[tokio::test]
async fn node_redlock5_with_ioredis() {
    node_modules();
    let cluster = Cluster::start().await;
    let out = run_node("redlock5.js", &cluster.args()).await;
    out.assert_passed(
        &format!("redlock {REDLOCK5} ioredis {IOREDIS}"),
        &[
            "handshake",
            "acquire",
            "refused_via_b",
            "extend",
            "release",
            "multi_resource",
            "using_auto_extension",
            "release_expired",
        ],
    );
}

#[tokio::test]
async fn node_redlock4_with_ioredis() {
    node_modules();
    let cluster = Cluster::start().await;
    let out = run_node("redlock4.js", &cluster.args()).await;
    out.assert_passed(
        &format!("redlock {REDLOCK4} ioredis {IOREDIS}"),
        &[
            "lock",
            "refused_via_b",
            "extend",
            "unlock",
            "multi_resource",
        ],
    );
}

#[tokio::test]
async fn ioredis_lock_commands() {
    node_modules();
    let cluster = Cluster::start().await;
    let out = run_node("ioredis.js", &cluster.args()).await;
    out.assert_passed(
        &format!("ioredis {IOREDIS}"),
        &[
            "handshake",
            "lock_unlock",
            "set_px_nx",
            "set_nx_ex",
            "define_command_eval_first",
            "unknown_script_refused",
        ],
    );
}

#[tokio::test]
async fn node_redis_lock_commands() {
    node_modules();
    let cluster = Cluster::start().await;
    let out = run_node("node_redis.js", &cluster.args()).await;
    out.assert_passed(
        &format!("redis {NODE_REDIS}"),
        &["handshake", "lock_unlock", "set_px_nx", "set_ex_nx"],
    );
}

// ---------------------------------------------------------------------------------------------
// The other lock libraries that install here (issue 16; the rest are replayed in locklibs.rs)

/// `tests/compat/locklibs.py --lib lib`, in `protocol` (None: redis-py's default, RESP3).
async fn python_locklib(lib: &str, protocol: Option<u8>) -> ScriptOutput {
    let python = python();
    let cluster = Cluster::start().await;
    let mut args = cluster.args();
    args.extend(["--lib".into(), lib.into()]);
    if let Some(p) = protocol {
        args.extend(["--protocol".into(), p.to_string()]);
    }
    run_script(python, "locklibs.py", &args, &[]).await
}

const PYTHON_REDIS_LOCK_CHECKS: &[&str] = &[
    "acquire",
    "contention",
    "extend",
    "not_owner",
    "reset",
    "context_manager",
    "auto_renewal",
];

async fn python_redis_lock(protocol: Option<u8>) {
    let out = python_locklib("python-redis-lock", protocol).await;
    out.assert_passed(
        &format!("python-redis-lock {PYTHON_REDIS_LOCK}"),
        PYTHON_REDIS_LOCK_CHECKS,
    );
    // Woken by the release through the other proxy (the script requires under a second; its
    // own timeout, the lock's expiry, is 20 s).
    assert!(
        out.stdout.contains("ok woken_by_release "),
        "{}",
        out.context()
    );
}

#[tokio::test]
async fn python_redis_lock_default_resp3() {
    python_redis_lock(None).await;
}

#[tokio::test]
async fn python_redis_lock_resp2() {
    python_redis_lock(Some(2)).await;
}

const POTTERY_CHECKS: &[&str] = &["acquire", "contention", "locked", "extend", "release"];

#[tokio::test]
async fn pottery_redlock_default_resp3() {
    let out = python_locklib("pottery", None).await;
    out.assert_passed(&format!("pottery {POTTERY}"), POTTERY_CHECKS);
}

#[tokio::test]
async fn pottery_redlock_resp2() {
    let out = python_locklib("pottery", Some(2)).await;
    out.assert_passed(&format!("pottery {POTTERY}"), POTTERY_CHECKS);
}

#[tokio::test]
async fn aioredlock() {
    let out = python_locklib("aioredlock", None).await;
    if let Some(skip) = out.stdout.lines().find(|l| l.starts_with("skip ")) {
        // aioredlock 0.7 runs on Python 3.11 at most.
        eprintln!("aioredlock not run: {skip}");
        return;
    }
    out.assert_passed(
        &format!("aioredlock {AIOREDLOCK}"),
        &["acquire", "contention", "extend", "release"],
    );
}

#[tokio::test]
async fn redis_semaphore() {
    node_modules();
    let cluster = Cluster::start().await;
    let out = run_node("redis_semaphore.js", &cluster.args()).await;
    out.assert_passed(
        &format!("redis-semaphore {REDIS_SEMAPHORE}"),
        &[
            "acquire",
            "contention",
            "refresh",
            "release",
            "redlock_mutex",
            "semaphore",
            "multi_semaphore",
            "redlock_semaphores",
            "semaphore_bound",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Raw RESP: SET forms, GET/PTTL/TTL/EXISTS/DEL

/// A raw connection speaking `protocol`.
async fn conn(p: &TestProxy, protocol: u8) -> Conn {
    let mut c = p.conn().await;
    if protocol == 3 {
        let hello = c.call(&["HELLO", "3"]).await;
        assert!(
            support::flatten(&hello).contains("proto 3"),
            "HELLO 3: {hello:?}"
        );
    }
    c
}

/// The exact null of `protocol`.
fn null(protocol: u8) -> &'static [u8] {
    if protocol == 3 { b"_\r\n" } else { b"$-1\r\n" }
}

/// Asserts low < the integer reply <= high.
async fn int_in(c: &mut Conn, args: &[&str], low: i64, high: i64) {
    let n = support::int(&c.call(args).await);
    assert!(
        low < n && n <= high,
        "{args:?} = {n}, not in ({low}, {high}]"
    );
}

/// Asserts an error reply that mentions `needle` (case-insensitive), and returns it.
async fn err_with(c: &mut Conn, args: &[&str], needle: &str) -> String {
    let reply = c.call(args).await;
    let text = match &reply {
        OwnedFrame::SimpleError { data, .. } => data.clone(),
        OwnedFrame::BlobError { data, .. } => String::from_utf8_lossy(data).into_owned(),
        other => panic!("{args:?}: expected an error, got {other:?}"),
    };
    assert!(
        text.to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: error {text:?} does not mention {needle:?}"
    );
    text
}

async fn set_forms(protocol: u8) {
    let cluster = Cluster::start().await;
    let mut a = conn(&cluster.a, protocol).await;
    let mut b = conn(&cluster.b, protocol).await;
    let nil = null(protocol);

    // Each lock-shaped form, then refused through the other proxy while held.
    let forms: &[(&str, &[&str], i64)] = &[
        ("k:nx-px", &["NX", "PX", "5000"], 5000),
        ("k:nx-ex", &["NX", "EX", "5"], 5000),
        ("k:px-nx", &["PX", "5000", "NX"], 5000),
        ("k:ex-nx", &["EX", "5", "NX"], 5000),
        ("k:lower", &["nx", "px", "5000"], 5000),
        ("k:nx", &["NX"], default_ttl_ms()),
    ];
    for (key, opts, ttl) in forms {
        let mut set = vec!["SET", key, "token-a"];
        set.extend_from_slice(opts);
        a.roundtrip(&set, b"+OK\r\n").await;
        set[2] = "token-b";
        b.roundtrip(&set, nil).await;
        assert_eq!(support::text(&b.call(&["GET", key]).await), "token-a");
        int_in(&mut b, &["PTTL", key], ttl - 2000, *ttl).await;
        int_in(&mut b, &["TTL", key], ttl / 1000 - 2, ttl / 1000).await;
    }

    // Not lock-shaped: refused with an error saying so, and nothing is held afterwards.
    for set in [
        &["SET", "k:plain", "v"][..],
        &["SET", "k:plain", "v", "PX", "5000"],
        &["SET", "k:plain", "v", "XX", "PX", "5000"],
        &["SET", "k:plain", "v", "NX", "PX", "5000", "GET"],
        &["SET", "k:plain", "v", "NX", "KEEPTTL"],
    ] {
        err_with(&mut a, set, "lock").await;
    }
    a.roundtrip(&["EXISTS", "k:plain"], b":0\r\n").await;
    // TTLs outside 4 ms ..= max-ttl-ms are refused like LOCK's.
    err_with(&mut a, &["SET", "k:ttl", "v", "NX", "PX", "0"], "expire").await;
    err_with(
        &mut a,
        &["SET", "k:ttl", "v", "NX", "PX", "600000"],
        "expire",
    )
    .await;
    err_with(&mut a, &["SET", "k:ttl", "v", "NX", "PX", "soon"], "").await;
    a.roundtrip(&["EXISTS", "k:ttl"], b":0\r\n").await;

    // EXISTS and DEL through the other proxy; DEL force-releases a held lock.
    b.roundtrip(&["EXISTS", "k:nx-px"], b":1\r\n").await;
    b.roundtrip(&["DEL", "k:nx-px"], b":1\r\n").await;
    a.roundtrip(&["GET", "k:nx-px"], nil).await;
    a.roundtrip(&["EXISTS", "k:nx-px"], b":0\r\n").await;
    a.roundtrip(&["PTTL", "k:nx-px"], b":-2\r\n").await;
    a.roundtrip(&["TTL", "k:nx-px"], b":-2\r\n").await;
    a.roundtrip(&["DEL", "k:nx-px"], b":0\r\n").await;
    b.roundtrip(
        &["SET", "k:nx-px", "token-b", "NX", "PX", "5000"],
        b"+OK\r\n",
    )
    .await;

    // LOCK and SET share one lock namespace.
    let token = support::text(&a.call(&["LOCK", "k:shared", "5000"]).await);
    assert_eq!(support::text(&b.call(&["GET", "k:shared"]).await), token);
    b.roundtrip(&["SET", "k:shared", "token-b", "NX", "PX", "5000"], nil)
        .await;
    b.roundtrip(&["UNLOCK", "k:shared", &token], b":1\r\n")
        .await;
    b.roundtrip(
        &["SET", "k:shared", "token-b", "NX", "PX", "5000"],
        b"+OK\r\n",
    )
    .await;
    a.roundtrip(&["LOCK", "k:shared", "5000"], nil).await;
    a.roundtrip(&["UNLOCK", "k:shared", "token-b"], b":1\r\n")
        .await;
}

#[tokio::test]
async fn set_forms_resp2() {
    set_forms(2).await;
}

#[tokio::test]
async fn set_forms_resp3() {
    set_forms(3).await;
}

// ---------------------------------------------------------------------------------------------
// Raw RESP: the lock scripts, by SHA1 and by body

/// The library script bodies, as the installed libraries send them, checked against the SHA1s
/// the proxy knows.
async fn library_scripts() -> Vec<(String, String, String)> {
    let python = python();
    let modules = node_modules();
    let node = which("node").expect("node is installed");
    let py = run_script(python, "dump_scripts.py", &[], &[]).await;
    let js = run_script(&node, "dump_scripts.js", &[], &[("NODE_PATH", modules)]).await;
    for out in [&py, &js] {
        assert!(out.success, "dumping scripts failed: {}", out.context());
    }
    assert!(
        py.stdout
            .contains(&format!("version redis-py {REDIS_PY}\n"))
    );
    assert!(
        js.stdout
            .contains(&format!("version redlock {REDLOCK5} {REDLOCK4}\n"))
    );
    let mut scripts = Vec::new();
    for line in py.stdout.lines().chain(js.stdout.lines()) {
        let Some((name, hex)) = line.split_once(' ') else {
            continue;
        };
        if name == "version" {
            continue;
        }
        let body = String::from_utf8(unhex(hex)).expect("script bodies are text");
        let sha = sha1_smol::Sha1::from(&body).digest().to_string();
        scripts.push((name.to_string(), sha, body));
    }
    for (name, want) in KNOWN_SCRIPTS {
        let (_, sha, _) = scripts
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in the installed libraries"));
        assert_eq!(sha, want, "SHA1 of {name} differs from the known one");
    }
    assert_eq!(scripts.len(), KNOWN_SCRIPTS.len(), "unexpected scripts");
    scripts
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A script sent by SHA1 (EVALSHA) or by body (EVAL).
struct Script<'s> {
    sha: &'s str,
    body: &'s str,
    by_body: bool,
}

impl Script<'_> {
    /// Runs it with `keys` and `args` and returns its integer reply: every library needs an
    /// integer, so any other reply type fails here.
    async fn int(&self, c: &mut Conn, keys: &[&str], args: &[&str]) -> i64 {
        let numkeys = keys.len().to_string();
        let mut argv = if self.by_body {
            vec!["EVAL", self.body]
        } else {
            vec!["EVALSHA", self.sha]
        };
        argv.push(&numkeys);
        argv.extend_from_slice(keys);
        argv.extend_from_slice(args);
        let reply = c.call(&argv).await;
        match reply {
            OwnedFrame::Number { data, .. } => data,
            other => panic!(
                "{} {keys:?} {args:?}: expected an integer, got {other:?}",
                &argv[0]
            ),
        }
    }
}

fn script<'s>(scripts: &'s [(String, String, String)], name: &str, by_body: bool) -> Script<'s> {
    let (_, sha, body) = scripts.iter().find(|(n, _, _)| n == name).unwrap();
    Script { sha, body, by_body }
}

/// redis-py's release, extend (add and replace) and reacquire, through both proxies.
async fn redis_py_scripts(
    a: &mut Conn,
    b: &mut Conn,
    s: &[(String, String, String)],
    by_body: bool,
) {
    let release = script(s, "redis-py-release", by_body);
    let extend = script(s, "redis-py-extend", by_body);
    let reacquire = script(s, "redis-py-reacquire", by_body);
    let key = format!("py:{by_body}");
    let k = key.as_str();
    a.roundtrip(&["SET", k, "tok", "NX", "PX", "5000"], b"+OK\r\n")
        .await;
    assert_eq!(release.int(b, &[k], &["wrong"]).await, 0);
    assert_eq!(support::text(&b.call(&["GET", k]).await), "tok");
    assert_eq!(extend.int(a, &[k], &["tok", "3000", "0"]).await, 1);
    int_in(b, &["PTTL", k], 5000, 8000).await;
    assert_eq!(extend.int(b, &[k], &["tok", "2000", "1"]).await, 1);
    int_in(a, &["PTTL", k], 0, 2000).await;
    assert_eq!(extend.int(a, &[k], &["wrong", "2000", "1"]).await, 0);
    assert_eq!(reacquire.int(b, &[k], &["tok", "4000"]).await, 1);
    int_in(a, &["PTTL", k], 2000, 4000).await;
    assert_eq!(reacquire.int(a, &[k], &["wrong", "4000"]).await, 0);
    assert_eq!(release.int(b, &[k], &["tok"]).await, 1);
    assert!(support::is_null(&a.call(&["GET", k]).await));
    assert_eq!(release.int(a, &[k], &["tok"]).await, 0);
    assert_eq!(extend.int(a, &[k], &["tok", "1000", "0"]).await, 0);
    assert_eq!(reacquire.int(a, &[k], &["tok", "1000"]).await, 0);
}

/// node-redlock's acquire, extend and release (v5 or v4 names), several keys at once.
async fn redlock_scripts(
    a: &mut Conn,
    b: &mut Conn,
    s: &[(String, String, String)],
    names: [&str; 3],
    by_body: bool,
) {
    let acquire = script(s, names[0], by_body);
    let extend = script(s, names[1], by_body);
    let release = script(s, names[2], by_body);
    let keys: Vec<String> = (1..=3)
        .map(|i| format!("{}:{by_body}:{i}", names[0]))
        .collect();
    let (k1, k2, k3) = (keys[0].as_str(), keys[1].as_str(), keys[2].as_str());
    assert_eq!(acquire.int(a, &[k1, k2], &["tok", "5000"]).await, 2);
    assert_eq!(support::text(&b.call(&["GET", k2]).await), "tok");
    assert_eq!(acquire.int(b, &[k2], &["other", "5000"]).await, 0);
    // All or nothing: a free key next to a held one is not left held.
    assert_eq!(acquire.int(b, &[k3, k1], &["other", "5000"]).await, 0);
    a.roundtrip(&["EXISTS", k3], b":0\r\n").await;
    assert_eq!(extend.int(b, &[k1, k2], &["tok", "8000"]).await, 2);
    int_in(a, &["PTTL", k2], 5000, 8000).await;
    assert_eq!(extend.int(a, &[k1, k2], &["other", "8000"]).await, 0);
    // Release counts the keys it released.
    assert_eq!(release.int(a, &[k1, k2], &["other"]).await, 0);
    assert_eq!(release.int(b, &[k1], &["tok"]).await, 1);
    assert_eq!(release.int(a, &[k1, k2], &["tok"]).await, 1);
    a.roundtrip(&["EXISTS", k2], b":0\r\n").await;
    assert_eq!(acquire.int(b, &[k1], &["other", "3000"]).await, 1);
    assert_eq!(release.int(a, &[k1], &["other"]).await, 1);
}

#[tokio::test]
async fn lock_scripts_by_sha_and_by_body() {
    let scripts = library_scripts().await;
    let cluster = Cluster::start().await;
    // One proxy spoken to in RESP2, the other in RESP3: integer replies look the same.
    let mut a = conn(&cluster.a, 2).await;
    let mut b = conn(&cluster.b, 3).await;

    // SCRIPT LOAD answers the body's SHA1; SCRIPT EXISTS knows every library script.
    for (name, sha, body) in &scripts {
        let loaded = support::text(&a.call(&["SCRIPT", "LOAD", body]).await);
        assert_eq!(&loaded, sha, "SCRIPT LOAD of {name}");
    }
    let mut exists = vec!["SCRIPT", "EXISTS"];
    exists.extend(scripts.iter().map(|(_, sha, _)| sha.as_str()));
    exists.push(USER_SCRIPT_SHA);
    let want = format!("{} 0", vec!["1"; scripts.len()].join(" "));
    assert_eq!(support::flatten(&b.call(&exists).await), want);

    for by_body in [false, true] {
        redis_py_scripts(&mut a, &mut b, &scripts, by_body).await;
        let v5 = ["redlock5-acquire", "redlock5-extend", "redlock5-release"];
        redlock_scripts(&mut a, &mut b, &scripts, v5, by_body).await;
        let v4 = ["redlock4-lock", "redlock4-extend", "redlock4-unlock"];
        redlock_scripts(&mut b, &mut a, &scripts, v4, by_body).await;
    }
}

#[tokio::test]
async fn unknown_scripts_are_refused() {
    let scripts = library_scripts().await;
    let cluster = Cluster::start().await;
    let mut c = conn(&cluster.a, 2).await;

    // Unknown SHA1: NOSCRIPT, so a library falls back to sending the body.
    let zeros = "0".repeat(40);
    for sha in [USER_SCRIPT_SHA, zeros.as_str()] {
        let e = err_with(&mut c, &["EVALSHA", sha, "1", "k", "v"], "").await;
        assert!(e.starts_with("NOSCRIPT"), "EVALSHA {sha}: {e}");
    }
    // Unknown body: an error saying only lock scripts are served, never NOSCRIPT (which would
    // send a client back to EVALSHA).
    let user = concat!(
        "if redis.call('get', KEYS[1]) == ARGV[1] then ",
        "return redis.call('del', KEYS[1]) end return 0"
    );
    // A library body with one byte more: recognised by exact body, not by resemblance.
    let (_, _, release) = scripts
        .iter()
        .find(|(n, _, _)| n == "redis-py-release")
        .unwrap();
    let altered = format!("{release} ");
    for body in [user, altered.as_str()] {
        let e = err_with(&mut c, &["EVAL", body, "1", "k", "v"], "script").await;
        assert!(!e.starts_with("NOSCRIPT"), "EVAL of an unknown body: {e}");
        assert!(
            e.to_lowercase().contains("lock"),
            "EVAL of an unknown body: {e}"
        );
        let e = err_with(&mut c, &["SCRIPT", "LOAD", body], "script").await;
        assert!(
            e.to_lowercase().contains("lock"),
            "SCRIPT LOAD of an unknown body: {e}"
        );
    }
    c.roundtrip(&["EXISTS", "k"], b":0\r\n").await;
}

// ---------------------------------------------------------------------------------------------
// Pins and documentation agree

#[test]
fn pins_match_the_documented_versions() {
    let read = |f: &str| fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap();
    let requirements = read("tests/compat/requirements.txt");
    let package = read("tests/compat/package.json");
    let lock = read("tests/compat/package-lock.json");
    let docs = read("docs/clients.md");
    assert!(requirements.contains(&format!("redis=={REDIS_PY}\n")));
    for (name, version) in [
        ("python-redis-lock", PYTHON_REDIS_LOCK),
        ("pottery", POTTERY),
        ("aioredlock", AIOREDLOCK),
    ] {
        assert!(
            requirements.contains(&format!("{name}=={version}")),
            "requirements.txt pins {name} {version}"
        );
    }
    for (name, version) in [
        ("ioredis", IOREDIS),
        ("redis", NODE_REDIS),
        ("redlock", REDLOCK5),
        ("redis-semaphore", REDIS_SEMAPHORE),
    ] {
        assert!(
            package.contains(&format!("\"{name}\": \"{version}\"")),
            "package.json pins {name} {version}"
        );
    }
    assert!(package.contains(&format!("\"redlock4\": \"npm:redlock@{REDLOCK4}\"")));
    for version in [IOREDIS, NODE_REDIS, REDLOCK5, REDLOCK4, REDIS_SEMAPHORE] {
        assert!(
            lock.contains(&format!("\"version\": \"{version}\"")),
            "package-lock.json has {version}"
        );
    }
    for version in [
        REDIS_PY,
        IOREDIS,
        NODE_REDIS,
        REDLOCK5,
        REDLOCK4,
        PYTHON_REDIS_LOCK,
        POTTERY,
        AIOREDLOCK,
        REDIS_SEMAPHORE,
    ] {
        assert!(
            docs.contains(version),
            "docs/clients.md names version {version}"
        );
    }
}
