//! # redlock-proxy
//!
//! A TCP server that speaks the Redis protocol (RESP2 and RESP3) and grants distributed locks
//! with the Redlock algorithm over several independent Redis masters. Unmodified Redis clients
//! send `LOCK key ttl-ms` and `UNLOCK key token`; the proxy does the quorum work.
//!
//! ## Map (layers call downward only)
//!
//! ```text
//! main.rs / cli.rs / config.rs   flags → validated Config; embedded.rs starts local masters
//!        │
//! server/        accept loop, connection limit, shutdown;
//!                session.rs: pipelined reads, concurrent dispatch, in-order replies
//!        │
//! cmd/           one file per command; mod.rs holds the one name → command table,
//!                per-connection Client state and process-wide Shared state;
//!                ops.rs: the lock operations commands share (stats, NOQUORUM replies);
//!                lock_scripts.rs: client libraries' lock scripts known by SHA1;
//!                session_locks.rs: LOCK ... SESSION keepers; waiters.rs: LOCK ... WAIT
//!        │
//! redlock/       quorum.rs: the arithmetic (pure, property-tested);
//!                mod.rs: acquire / release / extend / inspect over N masters;
//!                fake.rs, sim.rs (tests): in-memory masters, deterministic simulation
//!        │
//! backend/       mod.rs: the Master trait (the test seam);
//!                redis.rs: multiplexed, batched connections with reconnect, restart
//!                quarantine, and the subscription that announces releases;
//!                resp.rs: commands, replies and the Lua scripts sent to masters;
//!                mem.rs: what those do to a master's data, in memory (for the doubles)
//!
//! protocol/      pure RESP codec (requests in, replies out), used by server and cmd
//! error.rs       typed errors and the one place they become RESP error replies
//! stats.rs       counters for INFO
//! embedded.rs    local redis-server masters (the default, and the tests' masters)
//! ```
//!
//! Start with `redlock/quorum.rs` for the safety rules, `server/session.rs` for the wire.

pub mod backend;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod embedded;
pub mod error;
pub mod protocol;
pub mod redlock;
pub mod server;
pub mod stats;
