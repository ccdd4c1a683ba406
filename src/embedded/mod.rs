//! Local `redis-server` masters: what the proxy runs when no backend is configured, and what the
//! tests run against. Each is a real process on a free loopback port with persistence off,
//! started and checked ready by answering `PING`, and killed when its handle drops (or, on
//! Linux, when the thread that started it exits: start and restart masters from a thread that
//! outlives them, see [`die_with_parent`]). [`forward`] puts a server behind an address that
//! can be moved to another one, as a failover does.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::config::MasterAddr;

pub mod forward;

/// How long a starting `redis-server` gets to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How many free ports to try when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// Why a local master could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The executable is not there.
    #[error(
        "{program} not found. Install it (Debian/Ubuntu: `apt-get install -y redis-server`), \
         or name existing masters with --backend HOST:PORT or [backend] masters in config.toml"
    )]
    NotInstalled {
        /// The program looked for.
        program: String,
    },
    /// It started but did not become ready.
    #[error("redis-server on port {port} did not start: {why}")]
    Failed {
        /// The port it was given.
        port: u16,
        /// What went wrong, with the end of its log.
        why: String,
    },
    /// Spawning or the file system failed.
    #[error("cannot start redis-server: {0}")]
    Io(#[from] std::io::Error),
}

/// One local `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    program: PathBuf,
    /// Extra arguments, given again at every restart.
    args: Vec<String>,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `program` on a free loopback port and waits until it answers.
    pub fn start(program: &str) -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_with(program, &[])
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments (`--name value` pairs), which
    /// every restart passes again.
    pub fn start_with(program: &str, args: &[&str]) -> Result<RedisServer, EmbeddedError> {
        let program = find_program(program).ok_or_else(|| EmbeddedError::NotInstalled {
            program: program.to_owned(),
        })?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut server = RedisServer {
                program: program.clone(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                port,
                dir: scratch_dir(port)?,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address as a master of the proxy.
    pub fn addr(&self) -> MasterAddr {
        MasterAddr::local(self.port)
    }

    /// Its socket address on loopback.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it at once (SIGKILL) and reaps it. Nothing is persisted, so its locks are gone.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same port, empty, after [`RedisServer::kill`].
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.kill();
        self.spawn()
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    fn spawn(&mut self) -> Result<(), EmbeddedError> {
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(&self.program);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let addr = self.socket_addr();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(self.failed(format!("it exited ({status})"), &log));
            }
            if answers_ping(addr) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.failed(format!("no PONG within {READY_WITHIN:?}"), &log));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn failed(&self, why: String, log: &Path) -> EmbeddedError {
        let tail = std::fs::read_to_string(log)
            .ok()
            .and_then(|text| text.lines().last().map(str::to_owned))
            .unwrap_or_default();
        EmbeddedError::Failed {
            port: self.port,
            why: format!("{why}; log: {tail}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `n` masters.
pub fn start_masters(n: usize, program: &str) -> Result<Vec<RedisServer>, EmbeddedError> {
    (0..n).map(|_| RedisServer::start(program)).collect()
}

/// `program` itself when it is a path, else the first match on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A port the OS just had free on loopback.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn scratch_dir(port: u16) -> std::io::Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "redlock-proxy-{}-{}-{port}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// SIGKILLs the process in `child`, if any, and reaps it, so no zombie is left.
pub fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// True when a server at `addr` answers an inline `PING` with `+PONG` (bounded by short
/// connect and read timeouts).
pub fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    conn.write_all(b"PING\r\n").is_ok()
        && conn.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Has the kernel kill the child when the *thread* that spawns it exits (Linux). Spawn from a
/// thread that lives as long as the child should — the main thread, or a test's own thread —
/// never from a pool thread that may retire early.
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it only asks the
    // kernel to kill the child when the thread that spawned it exits.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Elsewhere children are only killed by their handles' `Drop`.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_: &mut Command) {}
