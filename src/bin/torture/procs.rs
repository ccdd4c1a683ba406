//! The proxy processes under test and the run's scratch directory. Every child is killed when
//! its handle drops (also while a panic unwinds) and, on Linux, when the thread that spawned it
//! dies, so a killed torture run leaves nothing behind.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use redlock_proxy::embedded::free_port;
use redlock_proxy::embedded::{answers_ping, die_with_parent, kill_child};

/// How long a starting proxy gets to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Fresh ports to try when another process takes the one picked first.
const PORT_ATTEMPTS: usize = 5;

/// The run's scratch directory: the proxies' configuration and logs. Removed at the end unless
/// the user asked to keep it.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// `dir` when given (kept afterwards), else a fresh directory under the system temp dir.
    pub fn new(dir: Option<PathBuf>) -> std::io::Result<RunDir> {
        let (path, keep) = match dir {
            Some(p) => (p, true),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let name = format!("redlock-torture-{}-{nanos}", std::process::id());
                (std::env::temp_dir().join(name), false)
            }
        };
        std::fs::create_dir_all(&path)?;
        Ok(RunDir { path, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What every proxy of the run shares.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// The `redlock-proxy` executable.
    pub program: PathBuf,
    /// The generated configuration file.
    pub config: PathBuf,
    /// The members' `--backend` addresses.
    pub backends: Vec<String>,
    /// `--max-ttl-ms`.
    pub max_ttl_ms: u64,
}

/// Writes the configuration file the proxies share; listen address, masters and max TTL go on
/// the command line.
pub fn write_config(
    dir: &Path,
    persistent_masters: bool,
    fence_idle_ms: Option<u64>,
) -> std::io::Result<PathBuf> {
    // Short reconnect delays so a restarted master is back in the game within a lock's
    // lifetime: that is when the restart hazard bites.
    let mut text = String::from(
        "[server]\n\
         shutdown_grace_ms = 500\n\
         [redlock]\n\
         master_deadline_ms = 50\n",
    );
    if let Some(ms) = fence_idle_ms {
        text.push_str(&format!("fence_idle_ms = {ms}\n"));
    }
    text.push_str(
        "[backend]\n\
         connect_timeout_ms = 500\n\
         reconnect_min_ms = 20\n\
         reconnect_max_ms = 200\n",
    );
    if persistent_masters {
        // The operator's promise that masters fsync every write: disables restart quarantine.
        // The masters here persist nothing, so the promise is false on purpose.
        text.push_str("persistent_masters = true\n");
    }
    text.push_str("[log]\nlevel = \"info\"\n");
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One `redlock-proxy` child process on a fixed loopback port.
#[derive(Debug)]
pub struct ProxyProc {
    pub index: usize,
    spec: ProxySpec,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl ProxyProc {
    /// Starts proxy number `index` on a free port and waits until it answers `PING`.
    pub fn start(index: usize, spec: &ProxySpec, dir: &Path) -> Result<ProxyProc, String> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let mut p = ProxyProc {
                index,
                spec: spec.clone(),
                port,
                log: dir.join(format!("proxy-{index}.log")),
                child: None,
            };
            match p.spawn() {
                Ok(()) => return Ok(p),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The address clients connect to; the same across restarts.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether the process is running (as far as this handle knows).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same port and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.arg("--config")
            .arg(&self.spec.config)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--max-ttl-ms", &self.spec.max_ttl_ms.to_string()]);
        for b in &self.spec.backends {
            cmd.args(["--backend", b]);
        }
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run {} ({e}); build it with `cargo build --bins`",
                self.spec.program.display()
            )
        })?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "proxy {} exited at start ({status}); log: {}",
                        self.index,
                        log_tail(&self.log)
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot watch proxy {}: {e}", self.index)),
            }
            if answers_ping(self.addr()) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "proxy {} gave no PONG within {READY_WITHIN:?}; log: {}",
                    self.index,
                    log_tail(&self.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().last().map(str::to_owned))
        .unwrap_or_default()
}
