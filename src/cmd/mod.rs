//! Commands: one file each (parse argv → call the lock service → reply), and [`COMMANDS`], the
//! one table that maps names to them. A command never touches a socket and never names a
//! backend: it gets the argv, the connection's [`Client`] state and the process-wide [`Shared`]
//! state, and returns an [`Outcome`]. [`reply`] is the one place a command's result, value or
//! [`Error`], becomes the reply the client gets.

mod auth;
mod blpop;
mod client;
mod command;
mod config;
mod del;
mod echo;
mod eval;
mod exists;
mod extend;
mod get;
mod hello;
mod hget;
mod info;
mod lock;
mod lock_scripts;
mod lockttl;
pub mod metrics;
mod ping;
mod pttl;
mod quit;
mod redisson;
mod reset;
mod script;
mod select;
mod set;
pub mod subscribe;
mod unlock;
mod wait;
mod zrem;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::config::Config;
use crate::error::Error;
use crate::locks::{Locks, LocksSession};
use crate::protocol::{Protocol, Reply};
use crate::redlock::quorum::MIN_TTL_MS;
use crate::stats::Stats;

/// Every command the proxy answers, in the order `COMMAND` lists them.
pub static COMMANDS: &[&Spec] = &[
    &lock::SPEC,
    &unlock::SPEC,
    &extend::SPEC,
    &lockttl::SPEC,
    &set::SPEC,
    &get::SPEC,
    &pttl::PTTL,
    &pttl::TTL,
    &exists::SPEC,
    &del::SPEC,
    &zrem::SPEC,
    &eval::EVALSHA,
    &eval::EVAL,
    &script::SPEC,
    &blpop::SPEC,
    &hget::HGET,
    &hget::HEXISTS,
    &wait::WAIT,
    &wait::WAITAOF,
    &subscribe::SUBSCRIBE,
    &subscribe::UNSUBSCRIBE,
    &subscribe::SSUBSCRIBE,
    &subscribe::SUNSUBSCRIBE,
    &subscribe::PSUBSCRIBE,
    &hello::SPEC,
    &auth::SPEC,
    &select::SPEC,
    &client::SPEC,
    &ping::SPEC,
    &echo::SPEC,
    &quit::SPEC,
    &reset::SPEC,
    &info::SPEC,
    &config::SPEC,
    &command::SPEC,
];

/// A command's name, arity, documentation (for `COMMAND` and `COMMAND DOCS`) and handler.
#[derive(Debug)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis convention: N means exactly N arguments including the name, -N means at least N.
    pub arity: i32,
    /// Flags as `COMMAND` reports them.
    pub flags: &'static [&'static str],
    /// Position of the key argument, 0 when there is none.
    pub key_pos: i32,
    /// Documentation group.
    pub group: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Time complexity, as `COMMAND DOCS` reports it.
    pub complexity: &'static str,
    /// The arguments, for `COMMAND DOCS` (redis-cli hints and `help`).
    pub args: &'static [ArgDoc],
    /// Runs before authentication (AUTH, HELLO, QUIT).
    pub no_auth: bool,
    /// The handler; arity is already checked.
    pub run: Handler,
}

/// One documented argument.
#[derive(Debug)]
pub struct ArgDoc {
    /// Name shown in hints.
    pub name: &'static str,
    /// Redis argument type: `key`, `string` or `integer` (no `block`: redis-cli 7.0 needs
    /// nested arguments for those and crashes without them).
    pub kind: &'static str,
    /// May be left out.
    pub optional: bool,
    /// May repeat.
    pub multiple: bool,
}

impl ArgDoc {
    /// A required argument.
    pub const fn new(name: &'static str, kind: &'static str) -> ArgDoc {
        ArgDoc {
            name,
            kind,
            optional: false,
            multiple: false,
        }
    }

    /// An optional argument.
    pub const fn optional(name: &'static str, kind: &'static str) -> ArgDoc {
        ArgDoc {
            name,
            kind,
            optional: true,
            multiple: false,
        }
    }

    /// An argument that may repeat; `optional` when it may also be left out.
    pub const fn many(name: &'static str, kind: &'static str, optional: bool) -> ArgDoc {
        ArgDoc {
            name,
            kind,
            optional,
            multiple: true,
        }
    }
}

/// A command handler.
pub type Handler = fn(Vec<Bytes>, &mut Client, &Arc<Shared>) -> Result<Outcome, Error>;

/// A reply still being computed (it waits on the masters); [`reply`] turns its result into
/// what the client gets.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Result<Reply, Error>> + Send>>;

/// What running a command gives the session.
pub enum Outcome {
    /// The reply, ready now.
    Reply(Reply),
    /// The reply, once the masters have answered.
    Later(ReplyFuture),
    /// Send this reply, then close the connection (QUIT).
    Close(Reply),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Reply(r) => f.debug_tuple("Reply").field(r).finish(),
            Outcome::Later(_) => f.write_str("Later(..)"),
            Outcome::Close(r) => f.debug_tuple("Close").field(r).finish(),
        }
    }
}

impl Outcome {
    /// A reply that waits on `fut`. A command that got a future from the lock service maps it
    /// (`FutureExt::map`) rather than awaiting it in an `async` block: the block would hold it
    /// twice, captured and awaited, and the whole is moved into the box at full size.
    pub fn later(fut: impl Future<Output = Result<Reply, Error>> + Send + 'static) -> Outcome {
        Outcome::Later(Box::pin(fut))
    }
}

impl From<Reply> for Outcome {
    fn from(r: Reply) -> Outcome {
        Outcome::Reply(r)
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The lock service.
    pub locks: Arc<Locks>,
    /// Counters for `INFO`.
    pub stats: Stats,
    /// When the proxy started.
    pub started: Instant,
    /// Random identity of this process, as Redis's `run_id`.
    pub run_id: String,
    /// Port the proxy listens on, for `INFO`.
    pub port: u16,
    next_client_id: AtomicU64,
    /// Each command's latency and outcomes, for the metrics listener.
    pub requests: crate::metrics::Requests,
}

impl Shared {
    /// State for a proxy listening on `port`.
    pub fn new(config: Config, locks: Arc<Locks>, port: u16) -> Shared {
        let run_id = format!(
            "{}{}",
            String::from_utf8_lossy(&crate::redlock::token::generate()),
            &String::from_utf8_lossy(&crate::redlock::token::generate())[..8]
        );
        Shared {
            config,
            locks,
            stats: Stats::default(),
            started: Instant::now(),
            run_id,
            port,
            next_client_id: AtomicU64::new(1),
            requests: crate::metrics::Requests::new(metrics::labels()),
        }
    }

    /// A new connection's id.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// `requirepass` is set.
    pub fn auth_required(&self) -> bool {
        !self.config.server.requirepass.is_empty()
    }
}

/// One connection's state.
#[derive(Debug)]
pub struct Client {
    /// Id, as `CLIENT ID` reports it.
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// Protocol its replies are encoded in (HELLO switches it).
    pub proto: Protocol,
    /// Passed AUTH, or no password is configured.
    pub authenticated: bool,
    /// Failed AUTHs on this connection; at `max_auth_failures` it is closed.
    pub auth_failures: u32,
    /// Set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Bytes>,
    /// Set by `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Bytes>,
    /// Set by `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Bytes>,
    /// Selected database: locks in different databases are distinct.
    pub db: u32,
    /// Its handle on the lock service, with the locks kept alive while it lives
    /// (`LOCK ... SESSION`).
    pub locks: LocksSession,
    /// The lock channels it listens on (`SUBSCRIBE`), and their messages.
    pub subscriptions: subscribe::Subscriptions,
}

impl Client {
    /// A fresh connection from `addr`.
    pub fn new(id: u64, addr: SocketAddr, shared: &Shared) -> Client {
        Client {
            id,
            addr,
            proto: Protocol::Resp2,
            authenticated: !shared.auth_required(),
            auth_failures: 0,
            name: None,
            lib_name: None,
            lib_ver: None,
            db: 0,
            locks: LocksSession::with_limits(
                shared.locks.clone(),
                crate::locks::Limits {
                    session_locks: shared.config.server.max_session_locks_per_client,
                    waits: shared.config.server.max_waits_per_client,
                },
            ),
            subscriptions: subscribe::Subscriptions::default(),
        }
    }

    /// Ends the connection's state: its session locks are released on every master.
    pub async fn close(&self) {
        self.locks.close().await;
    }
}

/// Even when a session ends without [`Client::close`] (a panic), nothing keeps its locks alive.
impl Drop for Client {
    fn drop(&mut self) {
        self.locks.stop_keepers();
    }
}

/// Finds a command by name, in any case.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .copied()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Runs one request. Checks follow Redis's order: unknown command, arity, authentication.
pub fn dispatch(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Outcome {
    Stats::bump(&shared.stats.commands_processed);
    let spec = lookup(&argv[0]);
    let timer = spec.map(|spec| metrics::Timer::start(spec, &argv));
    let result = match spec {
        None => Err(Error::unknown_command(&argv)),
        Some(spec) if !arity_ok(spec.arity, argv.len()) => Err(Error::WrongArity(spec.name)),
        Some(spec) if !client.authenticated && !spec.no_auth => Err(Error::NoAuth),
        Some(spec)
            if client.proto == Protocol::Resp2
                && !client.subscriptions.is_empty()
                && !subscribe::allowed_while_subscribed(spec.name) =>
        {
            Err(Error::Request(format!(
                "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context",
                spec.name
            )))
        }
        Some(spec) => (spec.run)(argv, client, shared),
    };
    let done = |outcome| {
        if let Some(timer) = timer {
            timer.done(shared, outcome);
        }
    };
    match result {
        Ok(Outcome::Reply(r)) => {
            done(metrics::of_reply(&r));
            Outcome::Reply(reply(Ok(r), &shared.stats))
        }
        Ok(Outcome::Close(r)) => {
            done(metrics::of_reply(&r));
            Outcome::Close(reply(Ok(r), &shared.stats))
        }
        Ok(Outcome::Later(fut)) => match timer {
            Some(timer) => Outcome::Later(timer.later(fut, shared)),
            None => Outcome::Later(fut),
        },
        Err(e) => {
            done(metrics::of_error(&e));
            Outcome::Reply(reply(Err(e), &shared.stats))
        }
    }
}

/// What the client gets for a command's result: the one place errors become replies, and so
/// where error replies (and `NOQUORUM`s among them) are counted — only those a client sees.
pub fn reply(result: Result<Reply, Error>, stats: &Stats) -> Reply {
    match result {
        Ok(r) => {
            if r.is_error() {
                Stats::bump(&stats.error_replies);
            }
            r
        }
        Err(e) => {
            Stats::bump(&stats.error_replies);
            if e.is_noquorum() {
                Stats::bump(&stats.noquorum);
            }
            e.into()
        }
    }
}

fn arity_ok(arity: i32, argc: usize) -> bool {
    let argc = i64::try_from(argc).unwrap_or(i64::MAX);
    let arity = i64::from(arity);
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

/// Parses a signed 64-bit integer the way Redis does (see [`crate::protocol::parse_int`]).
pub fn parse_int(arg: &[u8]) -> Result<i64, Error> {
    crate::protocol::parse_int(arg).ok_or(Error::NotInteger)
}

/// Parses a lock TTL in milliseconds for `cmd`: an integer between [`MIN_TTL_MS`] and the
/// configured maximum.
pub fn parse_ttl_ms(arg: &[u8], cmd: &'static str, shared: &Shared) -> Result<u64, Error> {
    ttl_ms_in_range(parse_int(arg)?, cmd, shared)
}

/// `ttl` if it is a lock TTL the proxy grants: between [`MIN_TTL_MS`] and the configured
/// maximum.
pub fn ttl_ms_in_range(ttl: i64, cmd: &'static str, shared: &Shared) -> Result<u64, Error> {
    let max = shared.config.redlock.max_ttl_ms;
    u64::try_from(ttl)
        .ok()
        .filter(|t| (MIN_TTL_MS..=max).contains(t))
        .ok_or(Error::InvalidTtl {
            cmd,
            min: MIN_TTL_MS,
            max,
        })
}

#[cfg(test)]
mod tests;
