//! The masters behind the proxy. [`Master`] is the seam between the Redlock core and I/O: the
//! core only ever calls these operations, so tests run it against in-memory fakes with
//! injected delays and failures, and production runs it against [`redis::RedisMaster`].

pub mod mem;
mod member;
pub mod redis;

pub use member::Member;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// Why one master did not give an answer. Each counts as "no vote" for that master; none of them
/// proves the request was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No connection to the master is up.
    #[error("master is down")]
    Down,
    /// Too many requests are already waiting on the master; refused without sending.
    #[error("master is overloaded: too many requests pending")]
    Overloaded,
    /// The connection broke before the reply arrived.
    #[error("connection lost before the reply")]
    Disconnected,
    /// The master answered with an error.
    #[error("master replied with an error: {0}")]
    Reply(String),
    /// The master answered NOSCRIPT: it lost its scripts (a restart, `SCRIPT FLUSH`), so loading
    /// the script and asking again can still succeed.
    #[error("master replied with an error: {0}")]
    NoScript(String),
    /// The master answered with something the operation does not expect.
    #[error("unexpected reply from master: {0}")]
    Unexpected(String),
}

/// What one master reports about a lock key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The token stored under the key.
    pub token: Bytes,
    /// Remaining time-to-live in milliseconds; `None` when the key has no expiry.
    pub pttl_ms: Option<u64>,
}

/// Which primitive a lock key on a master is used by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldAs {
    /// A mutex, or a read/write lock's writer: the key holds one token.
    Exclusive,
    /// A read/write lock's readers: the key holds a set of tokens, each with its expiry.
    Shared,
    /// A counting semaphore of this many permits: the key holds the count, its slots the tokens.
    Permits(u32),
}

/// One master's answer to a counted acquire (a permit, or a read lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Taken: the slot a permit took (0 for a read lock).
    Taken(u32),
    /// Not taken: every slot is held, or a writer holds the key or waits for it.
    Held,
    /// Not taken: the key is in use as another kind.
    Conflict(HeldAs),
}

/// The token a permit holds on slot `slot` of a semaphore of `permits`: the acquire's `base`
/// with the slot and the count, so the token alone names its slot (the masters' scripts
/// compose the same text).
pub fn permit_token(base: &[u8], slot: u32, permits: u32) -> Bytes {
    let (mut s, mut n) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (s, n) = (s.format(slot).as_bytes(), n.format(permits).as_bytes());
    Bytes::from([base, b":", s, b":", n].concat())
}

/// What a master is asked in a vote: each answers yes or no.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// [`Master::acquire`].
    Acquire {
        /// Lock key.
        key: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// [`Master::release`].
    Release {
        /// Lock key.
        key: &'a [u8],
        /// The lock's waiting marker (see [`Master::mark_waiting`]).
        marker: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
    },
    /// [`Master::extend`].
    Extend {
        /// Lock key.
        key: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// [`Master::swap`].
    Swap {
        /// Lock key.
        key: &'a [u8],
        /// The token it must hold.
        token: &'a [u8],
        /// The token it holds after.
        new_token: &'a [u8],
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// [`Master::acquire_fenced`].
    AcquireFenced {
        /// Lock key.
        key: &'a [u8],
        /// Fence counter key.
        fence_key: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
        /// TTL in ms.
        ttl_ms: u64,
        /// The fence to take.
        fence: u64,
    },
}

impl Ask<'_> {
    /// The lock key asked about.
    pub fn key(&self) -> &[u8] {
        match *self {
            Ask::Acquire { key, .. }
            | Ask::Release { key, .. }
            | Ask::Extend { key, .. }
            | Ask::Swap { key, .. }
            | Ask::AcquireFenced { key, .. } => key,
        }
    }
}

/// The names the proxy keeps on every master besides each lock's own keys, chosen by the layer
/// above (see `locks::keys`): the backend writes and reads them but names nothing itself.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// What every name starts with (the configured key prefix, without braces).
    pub prefix: Bytes,
    /// Set on a Redis Cluster node (see [`Names::on_node`]): releases are announced with
    /// `SPUBLISH` on the node's own sharded channel, and the node's own names (marker, lineage,
    /// floor) are not declared as a script's keys, since they sit in another slot than the
    /// lock's (Redis 7 lets a script without flags touch keys of any slot of its own node).
    pub sharded: bool,
    /// The pub/sub channel releases of waited-for locks are announced on.
    pub release_channel: Bytes,
    /// `SCAN` pattern matching every fence counter.
    pub fence_pattern: Bytes,
    /// The floor under every fence counter, raised when counters had to be rebuilt with no
    /// majority that kept them.
    pub fence_floor: Bytes,
    /// The run marker: the `run_id` of the run the master's data was written in, present only
    /// while the master may vote. Every acquire checks it atomically (a flush takes it away,
    /// and the vote fails); the lineage check finds it naming another run (a promoted replica,
    /// a restored snapshot) or missing, and quarantines the master.
    pub run_marker: Bytes,
    /// The quarantine recorded on the master, `"<run_id> <end in the master's ms>"`, so every
    /// proxy holds it out until the same end.
    pub lineage: Bytes,
}

impl Names {
    /// The names of one Redis Cluster node: the node's own names (release channel, fence floor,
    /// run marker, lineage) with the hash tag `tag` after the prefix, which the caller picks so
    /// that its slot is one the node owns; lock names are unchanged.
    pub fn on_node(&self, tag: &[u8]) -> Names {
        let tagged = |name: &Bytes| {
            let suffix = &name[self.prefix.len()..];
            Bytes::from([&self.prefix[..], b"{", tag, b"}", suffix].concat())
        };
        Names {
            prefix: self.prefix.clone(),
            sharded: true,
            release_channel: tagged(&self.release_channel),
            fence_pattern: self.fence_pattern.clone(),
            fence_floor: tagged(&self.fence_floor),
            run_marker: tagged(&self.run_marker),
            lineage: tagged(&self.lineage),
        }
    }
}

/// Counters a master holds per page of a fence scan: a repair holds one page in memory and
/// sends it in one request, so any number of counters is copied in bounded steps.
pub const FENCE_PAGE: usize = 512;

/// One page of a master's fence counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FencePage {
    /// Fence key and counter, at most about [`FENCE_PAGE`] of them.
    pub counters: Vec<(Bytes, u64)>,
    /// The master's fence floor.
    pub floor: u64,
    /// Where the next page starts; `None` after the last.
    pub next: Option<Bytes>,
}

/// An answer to a vote that is still to come.
pub type Pending = Pin<Box<dyn Future<Output = Result<bool, BackendError>> + Send>>;

/// Where a master puts its answer to one round of votes (the Redlock core's ballot). `counts`
/// is false for a master that may not vote (quarantine): its answer counts as failed.
pub trait Votes: std::fmt::Debug + Send + Sync + 'static {
    /// Counts one master's answer, now.
    fn record(&self, counts: bool, answer: Result<bool, BackendError>);

    /// Adds an answer that the round's task polls until it comes.
    fn add(&self, counts: bool, answer: Pending);
}

/// One master's health, as `INFO` shows it.
#[derive(Debug, Clone)]
pub struct MasterStatus {
    /// Where it is (password masked).
    pub addr: String,
    /// At least one connection is up.
    pub up: bool,
    /// Connections up.
    pub conns_up: usize,
    /// Connections configured.
    pub conns: usize,
    /// Requests queued or awaiting a reply.
    pub pending: usize,
    /// Requests sent since start.
    pub requests: u64,
    /// Requests that got no usable answer.
    pub failures: u64,
    /// Successful reconnects after a connection was lost.
    pub reconnects: u64,
    /// Unix time of the last up/down change.
    pub changed_at: u64,
    /// The current run's id, once connected.
    pub run_id: Option<String>,
    /// Milliseconds before a quarantine lets it vote again; `None` when none holds it out.
    pub quarantine_left_ms: Option<u64>,
    /// What else holds it out (`replica`, `evicting`), until that changes.
    pub held_out: Option<&'static str>,
    /// The rule holding it out now: a quarantine's (`restarted`, `new-run`, `flushed`,
    /// `foreign-data`, `unmarked`, `recorded`) or `held_out`'s.
    pub reason: Option<&'static str>,
    /// Why the last attempt to connect failed (a refused password, an untrusted certificate),
    /// until a connection opens.
    pub last_error: Option<String>,
}

impl MasterStatus {
    /// Up and voting.
    pub fn votes(&self) -> bool {
        self.up && self.quarantine_left_ms.is_none() && self.held_out.is_none()
    }

    /// The state `INFO masters` shows: `down`, what holds it out, or `up`.
    pub fn state(&self) -> &'static str {
        match (self.up, self.held_out, self.quarantine_left_ms) {
            (false, _, _) => "down",
            (true, Some(why), _) => why,
            (true, None, Some(_)) => "quarantined",
            (true, None, None) => "up",
        }
    }
}

/// One Redis master, as the Redlock core sees it.
///
/// Every operation is atomic on the master. Each returns a `'static` future, and the request is
/// queued for sending when the method is called, not when the future is first polled: dropping
/// the future abandons the reply, not the request.
pub trait Master: Send + Sync + 'static {
    /// False while the master must not vote (restart quarantine). It still gets every request,
    /// so it holds the locks granted meanwhile; only its answers are not counted.
    fn votes(&self) -> bool {
        true
    }

    /// `SET key token NX PX ttl`: true when this call set the key.
    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Deletes the key if it holds `token`: true when deleted. While the key's waiting
    /// `marker` exists, the release is announced to every proxy.
    fn release(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Names `waiter` (a proxy) in `key`'s waiting `marker` and keeps the marker for the next
    /// `ms` ms (that proxy has a waiter for it), so its releases are announced to every proxy.
    /// Sent on `key`'s own path, so it reaches the master before the attempt that follows it.
    /// Without it, a release wakes only the releasing proxy's own waiters.
    fn mark_waiting(
        &self,
        _key: &[u8],
        _marker: &[u8],
        _waiter: &[u8],
        _ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<Self> {
        std::future::ready(Ok(()))
    }

    /// Takes `waiter` out of `key`'s waiting `marker`: that proxy waits for the lock no more;
    /// the marker goes when nobody does. Sent on `key`'s own path, after any mark before it.
    fn unmark_waiting(
        &self,
        _key: &[u8],
        _marker: &[u8],
        _waiter: &[u8],
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<Self> {
        std::future::ready(Ok(()))
    }

    /// Sets the key's TTL to `ttl_ms` if it holds `token`: true when extended.
    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Replaces the key's token with `new_token` and sets its TTL to `ttl_ms`, only if it holds
    /// `token`: true when swapped. (A reentrant lock counts its holds in its token.)
    fn swap(
        &self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// The key's token and remaining TTL, read atomically; `None` when the key is absent.
    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<Self>;

    /// Which primitive uses `key`; `None` when it is free.
    fn held_as(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<HeldAs>, BackendError>> + Send + use<Self>;

    /// Takes the first free slot of the semaphore `key`, whose slots are `slots` (its count),
    /// trying them from `offset` on, with [`permit_token`]`(base, slot, count)` for `ttl_ms`,
    /// and records the count at `key`. Refused, taking nothing, when `key` is in use as another
    /// kind or count, and when the run marker is missing (an error, as for every acquire).
    fn acquire_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        ttl_ms: u64,
        offset: u32,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<Self>;

    /// Frees every slot among `slots` that holds a permit of `base`, except `keep`; `key` keeps
    /// the count only while some slot is held, and expires with the last. The release is
    /// announced while the `marker` exists, as [`Master::release`]'s. True when a slot was freed.
    fn release_permit(
        &self,
        key: &[u8],
        marker: &[u8],
        slots: &[Bytes],
        base: &[u8],
        keep: Option<u32>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Sets `slot`'s TTL to `ttl_ms` if it holds `token`, and keeps the count at `key` at least
    /// that long: true when extended.
    fn extend_permit(
        &self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Sets the TTL of the slot among `slots` (a semaphore of `slots.len()` permits) that holds
    /// a permit taken under any of `names` (its token is [`permit_token`]`(name, slot, count)`)
    /// to `ttl_ms`, and keeps the count at `key` at least that long: the slot extended, `None`
    /// when no slot holds one. For a holder known only by the name it gave (a library's own
    /// identifier), whose slot the proxy did not tell it.
    fn extend_named_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        names: &[Bytes],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send + use<Self>;

    /// Adds `token` to the readers of `key` for `ttl_ms`, in one step with the checks: refused
    /// when a writer holds `key` or some writer is named in `writers` (it waits), a conflict
    /// when `key` is a semaphore, an error when the run marker is missing.
    fn acquire_shared(
        &self,
        key: &[u8],
        writers: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<Self>;

    /// Takes `token` out of the readers of `key`, announced while the `marker` exists: true when
    /// it was a live reader.
    fn release_shared(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Moves reader `token`'s expiry to `ttl_ms` from now if it is a live reader of `key`:
    /// true when extended.
    fn extend_shared(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// How long `token` still holds `key` (the key's token, or one of its readers), in ms;
    /// `None` when it does not.
    fn token_pttl(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send + use<Self>;

    /// The fence counter at `fence_key` (0 when absent).
    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<Self>;

    /// Takes `key` for `ttl_ms` with `token` and `fence` at once, only if the key is free and
    /// `fence` is greater than every fence `fence_key` has seen: true when taken.
    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Raises each counter in `counters` (fence key, fence) and the floor under them to
    /// `floor`, each unless it is already that high: one request, however many counters
    /// (a repair sends one page of another master's counters at a time).
    fn raise_fences(
        &self,
        counters: &[(Bytes, u64)],
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<Self>;

    /// One page of the fence counters the master holds, from `cursor` (empty: the first
    /// page), to repair another master from: a bounded number of counters, the floor, and
    /// where the next page starts (`None` after the last).
    fn fence_page(
        &self,
        cursor: &[u8],
    ) -> impl Future<Output = Result<FencePage, BackendError>> + Send + use<Self>;

    /// One page of the fence sweep, from `cursor` (empty: the first page): raises the floor
    /// to the highest counter of the page and gives each of its counters without an expiry
    /// one of `expire_ms`, atomically (so a counter only ever expires under the floor). Where
    /// the next page starts; `None` after the last.
    fn sweep_fences(
        &self,
        cursor: &[u8],
        expire_ms: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, BackendError>> + Send + use<Self>;

    /// Raises the floor under every fence counter to `floor` unless it is already that high.
    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<Self>;

    /// Sends `ask` and records the answer in `ballot` when it comes (or a failure, when none
    /// will), counted as a vote only if `counts`. The request is queued before this returns.
    /// The default hands the matching operation's future to the ballot.
    fn cast(&self, ask: Ask<'_>, ballot: &Arc<dyn Votes>, counts: bool) {
        let answer: Pending = match ask {
            Ask::Acquire { key, token, ttl_ms } => Box::pin(self.acquire(key, token, ttl_ms)),
            Ask::Release { key, marker, token } => Box::pin(self.release(key, marker, token)),
            Ask::Extend { key, token, ttl_ms } => Box::pin(self.extend(key, token, ttl_ms)),
            Ask::Swap {
                key,
                token,
                new_token,
                ttl_ms,
            } => Box::pin(self.swap(key, token, new_token, ttl_ms)),
            Ask::AcquireFenced {
                key,
                fence_key,
                token,
                ttl_ms,
                fence,
            } => Box::pin(self.acquire_fenced(key, fence_key, token, ttl_ms, fence)),
        };
        ballot.add(counts, answer);
    }

    /// True while the master may have lost fence counters (it restarted) and no repair has
    /// copied them back yet: its fence reads must not count.
    fn fences_lost(&self) -> bool {
        false
    }

    /// Records that its fence counters were repaired.
    fn fences_repaired(&self) {}
}
