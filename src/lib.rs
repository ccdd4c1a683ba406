//! # redlock-proxy
//!
//! A TCP server that speaks the Redis protocol (RESP2 and RESP3) and grants distributed locks
//! with the Redlock algorithm over several independent Redis masters. Unmodified Redis clients
//! send `LOCK key ttl-ms` and `UNLOCK key token`; the proxy does the quorum work.
//!
//! ## Map (layers call downward only; `tests/layers.rs` checks it)
//!
//! ```text
//! main.rs        flags → validated Config → logging → local masters if none → serve until signal
//! cli.rs         the command line, over the configuration file
//! logging.rs     text or JSON log lines; SIGHUP reloads the filter
//! embedded/      mod.rs: local redis-server masters (the default, and the tests' masters);
//!                forward.rs: a switchable loopback TCP forwarder, the stand-in for a DNS name
//!                that a failover moves (the tests' and the torture tool's)
//!        │
//! server/        mod.rs: accept loop, connection limit, TCP keepalive, shutdown and drain;
//!                session.rs: one connection: pipelined reads, concurrent dispatch, in-order
//!                replies, the caps before AUTH, the idle and authentication deadlines;
//!                metrics.rs: the HTTP listener for operators (/metrics, /healthz, /readyz)
//!        │
//! cmd/           one file per command (parse argv → call the lock service → reply); mod.rs: the
//!                one name → command table, dispatch, per-connection Client and process-wide
//!                Shared state, and `reply`, where results and errors become replies;
//!                lock_scripts.rs: client libraries' lock scripts known by SHA1; redisson.rs:
//!                Redisson's reentrant lock, its hold count in the token;
//!                blpop.rs, subscribe.rs: the libraries' own waits (a signal list, a lock
//!                channel), fed by the proxy's release announcements;
//!                metrics.rs: each request's command, latency and outcome, counted
//! error.rs       typed errors of a command and their Redis-style error replies
//!        │
//! locks/         the lock service, generic over Master; mod.rs: acquire / release / extend /
//!                swap / inspect / force-release of mutexes, read/write locks and semaphores,
//!                typed results and errors, counters;
//!                keys.rs: the key schema, every name the proxy writes on a master;
//!                waiters.rs: LOCK ... WAIT queues and release watchers; session.rs: a
//!                connection's handle, and its LOCK ... SESSION keepers; tests.rs: the service over in-memory masters
//!        │
//! redlock/       mod.rs: one Redlock round over N masters (acquire, fenced acquire, release,
//!                extend, inspect, fence repair); counted.rs: the rounds of semaphore permits
//!                (n slot mutexes) and read locks; quorum.rs: the arithmetic (pure,
//!                property-tested); ballot.rs: one round's votes; token.rs: lock tokens, and
//!                what a token holds;
//!                tests.rs, sim.rs (tests): in-memory masters, deterministic simulation
//!        │
//! backend/       mod.rs: the Master trait (the test seam), what a vote asks, Votes, Names;
//!                member.rs: Member, a master, a cluster or one in memory behind one type;
//!                redis/: a Redis master over multiplexed, batched connections (mod.rs: the
//!                handle; link.rs: one connection, with reconnect; master.rs: the operations
//!                and votes; identity.rs: run, quarantine, health checks and the run marker;
//!                releases.rs: the subscription
//!                that announces releases; scripts.rs: the Lua scripts sent to masters;
//!                tls.rs: TLS to rediss:// masters, the client configuration and the stream;
//!                cluster.rs: a member that is a Redis Cluster, routed by slot to one
//!                RedisMaster per master node);
//!                mem.rs: a master's data in memory (Keyspace) and MemMaster over it
//!
//! protocol/      pure RESP codec: request.rs (requests in), reply.rs (replies out),
//!                client.rs (commands out, replies in: for masters and the tools)
//! config.rs      sections with named defaults, validated once at load
//! stats.rs       the server's counters for INFO; LogLimit, for events a client can repeat
//! metrics.rs     lock-free latency histograms and per-command counters, read at scrape time
//!
//! bin/lockbench/ the load generator; bin/torture/ the fault-injection tool and its history
//!                checker: binaries of this crate that talk RESP through protocol::client
//! ```
//!
//! A `LOCK` goes: `server::session::run` reads and decodes it → `cmd::dispatch` → `lock::run`
//! parses it → `locks::Session::lock` → `LockService::acquire` names it (`locks::keys`) →
//! `Redlock::lock_with_token` casts it to every master and counts the ballot → the reply comes
//! back through `cmd::reply`.
//!
//! Start with `redlock/quorum.rs` for the safety rules, `server/session.rs` for the wire.

pub mod backend;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod embedded;
pub mod error;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod redlock;
pub mod server;
pub mod stats;
