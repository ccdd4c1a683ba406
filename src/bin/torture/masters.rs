//! The masters the proxies are given. Without failover each is one `redis-server` that the
//! proxies reach directly. With failover each stands for a managed Redis behind one DNS name:
//! a primary, a replica of it, and a [`Forwarder`] (the name) that the proxies connect through
//! and that a failover switches to the promoted replica; the old primary then comes back empty
//! as the new one's replica, so the roles swap and the master can fail over again.
//!
//! Servers are started from the main thread only (see `procs`); every command sent to one is
//! bounded by short timeouts.

use std::time::{Duration, Instant};

use redlock_proxy::embedded::RedisServer;
use redlock_proxy::embedded::forward::Forwarder;
use redlock_proxy::protocol::client::Frame;
use tokio::runtime::Handle;

use crate::conn::Conn;

/// How long a new replica gets to report its link to its primary up.
pub const SYNC_WITHIN: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Every server of a replicated master starts a replica's full sync at once, instead of
/// waiting Redis 7's default 5 s for more replicas to share the transfer: a rejoined replica is
/// ready for the next failover soon.
const REPLICATED: &[&str] = &["--repl-diskless-sync-delay", "0"];

/// One master as the proxies see it.
#[derive(Debug)]
pub struct Master {
    /// The server the proxies reach.
    pub primary: RedisServer,
    /// With failover: the replica that takes over, and the address that moves.
    standby: Option<Standby>,
}

#[derive(Debug)]
struct Standby {
    /// Replicates `primary`; down between a failover and its rejoin.
    replica: RedisServer,
    /// Where the proxies connect; forwards to the primary.
    forwarder: Forwarder,
    /// The runtime the forwarder runs on, which also carries the commands sent to the servers.
    rt: Handle,
}

impl Master {
    /// Starts a master: a lone server, or (with `failover`, the runtime for the forwarder) a
    /// primary and a replica of it behind a forwarder. The replica may still be syncing: see
    /// [`Master::wait_in_sync`].
    pub fn start(program: &str, failover: Option<&Handle>) -> Result<Master, String> {
        let server = |args| RedisServer::start_with(program, args).map_err(|e| e.to_string());
        let Some(rt) = failover else {
            return Ok(Master {
                primary: server(&[])?,
                standby: None,
            });
        };
        let primary = server(REPLICATED)?;
        let standby = Standby {
            replica: server(REPLICATED)?,
            forwarder: rt.block_on(Forwarder::start(primary.socket_addr())),
            rt: rt.clone(),
        };
        standby.follow(&primary)?;
        Ok(Master {
            primary,
            standby: Some(standby),
        })
    }

    /// The port the proxies connect to: the forwarder's, or the lone server's.
    pub fn port(&self) -> u16 {
        match &self.standby {
            Some(s) => s.forwarder.addr().port(),
            None => self.primary.port(),
        }
    }

    /// Its ports, for the log: `6000` alone, `6000 → 6001 (replica 6002)` with failover.
    pub fn describe(&self) -> String {
        match &self.standby {
            Some(s) => format!(
                "{} → {} (replica {})",
                self.port(),
                self.primary.port(),
                s.replica.port()
            ),
            None => self.port().to_string(),
        }
    }

    /// Whether it can fail over now: its replica runs, replicates the current primary, and
    /// reports the link up. (A primary streams to a new replica only from its first
    /// acknowledgement, up to a second later; writes meanwhile reach it late, or are lost in a
    /// failover, which only adds to the lag.)
    pub fn replica_in_sync(&self) -> bool {
        let Some(s) = &self.standby else {
            return false;
        };
        if s.replica.pid().is_none() {
            return false;
        }
        let Ok(Frame::BulkString(info)) = s.command(&s.replica, &[b"INFO", b"replication"]) else {
            return false;
        };
        let info = String::from_utf8_lossy(&info);
        let has = |line: &str| info.lines().any(|l| l.trim() == line);
        has("role:slave")
            && has(&format!("master_port:{}", self.primary.port()))
            && has("master_link_status:up")
    }

    /// Waits until the replica (if any) is in sync, polling every 20 ms for at most `within`.
    pub fn wait_in_sync(&self, within: Duration) -> Result<(), String> {
        if self.standby.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        for _ in 0..100_000 {
            if self.replica_in_sync() {
                return Ok(());
            }
            if started.elapsed() > within {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "the replica of master {} did not sync within {within:?}",
            self.describe()
        ))
    }

    /// Makes the replica lag from now on: freezes it (SIGSTOP) and has the primary drop its
    /// link (`CLIENT KILL TYPE replica`). Freezing alone would not do: the kernel keeps
    /// receiving what the primary sends, and the thawed replica would apply all of it. After
    /// the cut the primary sends nothing more, and the frozen replica cannot reconnect.
    pub fn lag(&mut self) -> Result<(), String> {
        let s = self.standby.as_ref().ok_or("no replica")?;
        s.replica.pause();
        s.command(&self.primary, &[b"CLIENT", b"KILL", b"TYPE", b"replica"])
            .map(drop)
    }

    /// Ends a lag without failing over: the thawed replica reconnects to its primary by itself
    /// and catches up.
    pub fn unlag(&mut self) {
        if let Some(s) = &self.standby {
            s.replica.resume();
        }
    }

    /// The failover: SIGKILL the primary (what it did not replicate is lost), thaw the
    /// replica, `REPLICAOF NO ONE` on it, and move the address to it, which drops every
    /// connection through the forwarder. The roles swap: the old primary, down, is the replica
    /// now, until [`Master::rejoin`]. The address moves even when the promotion fails: a
    /// replica behind it does not vote, and the proxies see that.
    pub fn promote(&mut self) -> Result<(), String> {
        let s = self.standby.as_mut().ok_or("no replica")?;
        self.primary.kill();
        s.replica.resume();
        let promoted = s.command(&s.replica, &[b"REPLICAOF", b"NO", b"ONE"]);
        s.forwarder.switch(s.replica.socket_addr());
        std::mem::swap(&mut self.primary, &mut s.replica);
        promoted.map(drop)
    }

    /// Starts the old primary again, empty, on its port, as a replica of the new primary.
    pub fn rejoin(&mut self) -> Result<(), String> {
        let s = self.standby.as_mut().ok_or("no replica")?;
        s.replica.restart().map_err(|e| e.to_string())?;
        s.follow(&self.primary)
    }
}

impl Standby {
    /// `REPLICAOF` the primary on the replica.
    fn follow(&self, primary: &RedisServer) -> Result<(), String> {
        let port = primary.port().to_string();
        self.command(
            &self.replica,
            &[b"REPLICAOF", b"127.0.0.1", port.as_bytes()],
        )
        .map(drop)
    }

    /// Sends one command to `server` on a new connection and returns its reply; an error reply
    /// is an error. Called from the main thread, outside the runtime.
    fn command(&self, server: &RedisServer, args: &[&[u8]]) -> Result<Frame, String> {
        let addr = server.socket_addr();
        let reply = self.rt.block_on(async {
            let mut conn = Conn::connect(addr, CONNECT_TIMEOUT).await?;
            conn.call(args, REPLY_TIMEOUT).await
        });
        match reply {
            Ok(Frame::Error(e)) => Err(format!("{addr}: {e}")),
            Ok(frame) => Ok(frame),
            Err(e) => Err(format!("{addr}: {e}")),
        }
    }
}
