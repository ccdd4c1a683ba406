//! The lock scripts of common client libraries, known by SHA1, each served as the matching
//! quorum operation with the reply that library expects. Scripts are recognised only by the
//! hash of their exact body — never by guessing — so an unknown script is refused rather than
//! misread. Scripts the proxy cannot honour safely (python-redis-lock's `reset_all`, the
//! versions of libraries whose scripts differ in ways that matter) are known too, and refused
//! with an error that names the library and what to use instead.
//!
//! redis-semaphore's counting `Semaphore` and `MultiSemaphore` map onto `PERMITS`: their
//! holders are known by the identifier the library gives, so each of their scripts (and the
//! plain `ZREM` that releases a `Semaphore`, see `zrem`) finds the permit by that name.
//!
//! Redisson's reentrant lock has a room of its own, `redisson`.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;

use super::redisson::{self, Fence, Taken, Unlock};
use super::{Client, Outcome, Shared, parse_int, parse_ttl_ms, ttl_ms_in_range};
use crate::error::Error;
use crate::locks::{self, Acquire, Locks, MAX_PERMITS};
use crate::protocol::Reply;

/// What a known script does, as a lock operation, and so the reply it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// KEYS[1], ARGV token: compare-and-delete → 1/0.
    Release,
    /// KEYS[1], ARGV token: compare-and-delete → 1, 0 (held by another), -1 (not held).
    ReleaseOrMissing,
    /// KEYS[1], ARGV token, ms: set the TTL if held → 1/0.
    Extend,
    /// KEYS[1], ARGV token, ms, "0" (add to the remaining TTL) or "1" (replace it) → 1/0.
    ExtendAddOrReplace,
    /// KEYS[1], ARGV token, ms: extend if held with the token, else take it if free → 1/0.
    ExtendOrAcquire,
    /// As `ExtendOrAcquire`, but held by another → -1 (RedLock.net).
    ExtendOrAcquireElseConflict,
    /// KEYS..., ARGV token, ms: take every key or none → #KEYS / 0.
    AcquireAll,
    /// KEYS..., ARGV token, ms: extend every key or none → #KEYS / 0.
    ExtendAll,
    /// KEYS..., ARGV token: release each key held with the token → how many.
    ReleaseAll,
    /// KEYS[1] and anything, ARGV anything: release whoever holds it → 1/0.
    ForceRelease,
    /// python-redis-lock UNLOCK: KEYS lock, signal; ARGV token, signal ms → 0 released, 1 not.
    SignalRelease,
    /// python-redis-lock EXTEND: KEYS lock, signal; ARGV token, seconds → 0, 1 not held.
    ExtendSeconds,
    /// KEYS[1], ARGV token: the validity left in ms when held with the token, else 0.
    ValidityOrZero,
    /// aioredlock SET_LOCK: KEYS[1], ARGV token, ms: extend or take → +OK, else `-ERROR`.
    AioSet,
    /// aioredlock UNSET_LOCK: KEYS[1], ARGV token → 1 released, +OK not held, else `-ERROR`.
    AioUnset,
    /// aioredlock GET_LOCK_TTL: KEYS[1], ARGV token → seconds left, else `-ERROR`.
    AioTtl,
    /// redlock-rb LOCK: KEYS[1], ARGV token, ms, "yes"|"no" (may take a free lock) → +OK / nil.
    RbLock,
    /// redlock-rb PTTL: KEYS[1] → [token, ms left] or [nil, -2].
    RbPttl,
    /// Redisson tryLock: KEYS name [, fence key]; ARGV lease ms, owner → nil taken, or the
    /// holder's ms left. `fenced`: a first hold takes a fence (FencedLock's plain `lock()`).
    RedissonLock { fenced: bool },
    /// Redisson FencedLock's lockAndGetToken: KEYS name, fence key; ARGV lease ms, owner →
    /// [-1, fence] or [ms left, -1].
    RedissonLockFence,
    /// Redisson unlock: KEYS name, channel [, latch]; ARGV 0, lease ms, owner, ... → nil not
    /// held by the owner, 0 still held (one hold fewer), 1 released. `free_is_released`: the
    /// oldest script answers 1 for a lock nobody holds.
    RedissonUnlock { free_is_released: bool },
    /// Redisson renewal: KEYS name; ARGV lease ms, owner → 1/0.
    RedissonRenew,
    /// Redisson batched renewal: KEYS names; ARGV lease ms, owners → [1/0 per name].
    RedissonRenewAll,
    /// redis-semaphore's counting semaphores. `Semaphore` (not `multi`): KEYS[1], ARGV limit,
    /// identifier, lock timeout ms, the client's time (unused); `MultiSemaphore` (`multi`):
    /// ARGV limit, permits, identifier, lock timeout ms, time. The acquire (`refresh` `None`)
    /// → 1 taken, 0 not; the refresh → 1 extended, 0 not held, and before 5.3.1
    /// (`Some(true)`) it also takes what the identifier does not hold.
    Semaphore { multi: bool, refresh: Option<bool> },
    /// redis-semaphore MultiSemaphore release: KEYS[1], ARGV permits, identifier → how many
    /// permits were released.
    MultiRelease,
    /// Known, and refused: the proxy cannot honour it. The text says why and what to use.
    Refused(&'static str),
}

/// A library script the proxy answers.
#[derive(Debug)]
pub struct Known {
    /// Lowercase hex SHA1 of the script body.
    pub sha: &'static str,
    /// Which library sends it, and which script, for error messages.
    pub library: &'static str,
    op: Op,
}

const fn known(sha: &'static str, library: &'static str, op: Op) -> Known {
    Known { sha, library, op }
}

const RESET_ALL: &str = "python-redis-lock's reset_all() is not supported by the proxy: it \
     would have to scan every master for lock:*; reset each lock with Lock.reset() (or DEL \
     lock:<name>)";
const OLD_PRL: &str = "python-redis-lock before 3.6 is not supported by the proxy: upgrade to \
     3.6 or later (4.0.1 is tested)";
const OLD_POTTERY: &str = "pottery before 1.0.5 is not supported by the proxy: upgrade to 1.0.5 \
     or later (3.0.1 is tested)";

/// Every known script; SHA1s as measured over the bytes the libraries send (`docs/clients.md`
/// lists the versions).
pub const KNOWN: &[Known] = &[
    known(
        "c3f8721cbb97f72bc19e972846bd7aaf91901658",
        "redis-py Lock release",
        Op::Release,
    ),
    known(
        "a4e8783852e6b949f9ef3a97212805108459a890",
        "redis-py Lock extend",
        Op::ExtendAddOrReplace,
    ),
    known(
        "1cac51482acf5858da00f6d685d68f886cd6b6b2",
        "redis-py Lock reacquire",
        Op::Extend,
    ),
    known(
        "96da70f7716f27d278a5218544df37fd8b0a5e4c",
        "node-redlock v5 acquire",
        Op::AcquireAll,
    ),
    known(
        "aed6f382e410db8ba7926d4e5e9aab410bf2a78a",
        "node-redlock v5 extend",
        Op::ExtendAll,
    ),
    known(
        "e4612211c9f8f51c257e26e056b0a654b3187242",
        "node-redlock v5 release",
        Op::ReleaseAll,
    ),
    known(
        "e5a322e2634ef59a516e8ea150cb085afafee684",
        "node-redlock v4 lock",
        Op::AcquireAll,
    ),
    known(
        "ce46f80993d5dac20dd066eb301a4e37994bdbed",
        "node-redlock v4 extend",
        Op::ExtendAll,
    ),
    known(
        "0f0f23b9048b36752b5be114f357ba083449f908",
        "node-redlock v4 unlock",
        Op::ReleaseAll,
    ),
    // redsync (Go)
    known(
        "e950836ed1e694540c503ef9972b8de518044d3b",
        "redsync deleteScript",
        Op::ReleaseOrMissing,
    ),
    known(
        "00583931c4e4d483f6233879c133c71ed5393f9d",
        "redsync deleteScript (before v4.12)",
        Op::Release,
    ),
    known(
        "d75bb8b5bd13532ddedd17762e772346e39b321e",
        "redsync touchScript",
        Op::Extend,
    ),
    known(
        "53692746b44cae854b8dfa32b177218bbe40baee",
        "redsync touchScript (v1.2 to v3)",
        Op::Extend,
    ),
    known(
        "b6b55c439e02c6f52ffb8be7ec8c0d0ac816ea79",
        "redsync touchWithSetNXScript",
        Op::ExtendOrAcquire,
    ),
    // Redisson (Java)
    known(
        "149c5a8bf18676fd99e9e6e24923bd64d9b62f94",
        "Redisson RLock tryLock",
        Op::RedissonLock { fenced: false },
    ),
    known(
        "dad0f8d619e548e04f21fb48d50be5034df3adae",
        "Redisson RLock tryLock (3.12.3 to 3.18)",
        Op::RedissonLock { fenced: false },
    ),
    known(
        "9401052d872adfd0179ef8c8e8c028512707629a",
        "Redisson RLock tryLock (before 3.12.3)",
        Op::RedissonLock { fenced: false },
    ),
    known(
        "46b5551ba403d6152a7a6eca122e08728d6c8c66",
        "Redisson FencedLock lock",
        Op::RedissonLock { fenced: true },
    ),
    known(
        "49babb5a1e6a0c5f188c2ae62b93b51cdfd63e45",
        "Redisson FencedLock lockAndGetToken",
        Op::RedissonLockFence,
    ),
    known(
        "6866459238a13a701d42f4971f12d9f3a50e2442",
        "Redisson RLock unlock",
        Op::RedissonUnlock {
            free_is_released: false,
        },
    ),
    known(
        "778cea8aada230ae060b432fc333adaec85f2f4c",
        "Redisson RLock unlock (3.22 to 3.23)",
        Op::RedissonUnlock {
            free_is_released: false,
        },
    ),
    known(
        "3ffe249c16dee540ac8ab32e39bd408626b9aff7",
        "Redisson RLock unlock (3.10.6 to 3.21)",
        Op::RedissonUnlock {
            free_is_released: false,
        },
    ),
    known(
        "93cfc048f82624d1670a310aa0ad58918c0824a5",
        "Redisson RLock unlock (before 3.10.6)",
        Op::RedissonUnlock {
            free_is_released: true,
        },
    ),
    known(
        "8e19a1ddbdee9138df9f32a480c57addab4353d1",
        "Redisson RLock watchdog renewal",
        Op::RedissonRenew,
    ),
    known(
        "6a3d31570dc6f4b0bd32bcdc8e75667747c6f635",
        "Redisson RLock watchdog renewal (batched)",
        Op::RedissonRenewAll,
    ),
    known(
        "605e338249a7a1d40df83b04f7658354f883b41b",
        "Redisson RLock forceUnlock",
        Op::ForceRelease,
    ),
    known(
        "7e9c80b3d786b95d5d4aaf8fd73adb9775fa6fb1",
        "Redisson RLock forceUnlock (before 3.22)",
        Op::ForceRelease,
    ),
    // python-redis-lock
    known(
        "90da91872223f85eb1376a17e3c4df21ace8c54b",
        "python-redis-lock UNLOCK",
        Op::SignalRelease,
    ),
    known(
        "fed16109024d968d9496e4140fe1355bac05ebff",
        "python-redis-lock EXTEND",
        Op::ExtendSeconds,
    ),
    known(
        "afbc8014508f92e446b56567e8ba600e811c1bd5",
        "python-redis-lock RESET",
        Op::ForceRelease,
    ),
    known(
        "b121d3548d693116c3851b63befe947e49f28c7c",
        "python-redis-lock RESET_ALL",
        Op::Refused(RESET_ALL),
    ),
    known(
        "ae7cc25ea7f8e1bf59f60e7e4d68ebf4c24a97ad",
        "python-redis-lock UNLOCK (3.4 to 3.5)",
        Op::Refused(OLD_PRL),
    ),
    known(
        "347d641ef9f9783e6ce66686792cd09e0a388ea0",
        "python-redis-lock RESET (3.4 to 3.5)",
        Op::Refused(OLD_PRL),
    ),
    known(
        "2e1257df468c334a0dcc2ca4577c3c13f32fce24",
        "python-redis-lock EXTEND (3.0 to 3.5)",
        Op::Refused(OLD_PRL),
    ),
    // pottery
    known(
        "f5f7bd3a3aa4a63c507c1155c5ea1219b350d992",
        "pottery Redlock locked",
        Op::ValidityOrZero,
    ),
    known(
        "ba015a80261b616e7a62d35df0b8e3edbe6c9414",
        "pottery Redlock extend",
        Op::Extend,
    ),
    known(
        "a4aada0b36710970eedaaaeec4a6b7d8c78c4f80",
        "pottery Redlock release",
        Op::Release,
    ),
    known(
        "f458acd98fe495b8e4ff97c0f53f745f2c4aa252",
        "pottery Redlock (1.0.0 to 1.0.4)",
        Op::Refused(OLD_POTTERY),
    ),
    known(
        "307044d49c8f033fbb885e9e0f1b7fe9e0e60675",
        "pottery Redlock (1.0.0 to 1.0.4)",
        Op::Refused(OLD_POTTERY),
    ),
    known(
        "d141b64a0a43e66a8576edaea6123638c0d74b31",
        "pottery Redlock (1.0.0 to 1.0.4)",
        Op::Refused(OLD_POTTERY),
    ),
    // aioredlock
    known(
        "c75a9bf1538efcdb1f383acc3e273c5089d57e58",
        "aioredlock SET_LOCK",
        Op::AioSet,
    ),
    known(
        "241e4ca540a1cc4ec1f32d9eb9f879e607d7e6e5",
        "aioredlock UNSET_LOCK",
        Op::AioUnset,
    ),
    known(
        "f908d3f43dbcabc68fc0c9ecaf1fa4a285ecdb0a",
        "aioredlock GET_LOCK_TTL",
        Op::AioTtl,
    ),
    // redis-semaphore (Node.js)
    known(
        "594683e49a64ebaf975caf5f8079a1d097c438f1",
        "redis-semaphore Mutex refresh",
        Op::Extend,
    ),
    known(
        "15c8f9866a66624fdde522d8ee86a463c6a7b821",
        "redis-semaphore Mutex refresh (before 5.3.1)",
        Op::ExtendOrAcquire,
    ),
    known(
        "7157921a7cc7cfba979acf6d63f073151df17d12",
        "redis-semaphore Mutex release",
        Op::Release,
    ),
    known(
        "43ebdb49120d170e08af560cb4e46e36f8585936",
        "redis-semaphore Semaphore acquire",
        Op::Semaphore {
            multi: false,
            refresh: None,
        },
    ),
    known(
        "999a49a1d07671a8027165641001f5bad44608b3",
        "redis-semaphore Semaphore refresh",
        Op::Semaphore {
            multi: false,
            refresh: Some(false),
        },
    ),
    known(
        "e30ad491f44e8ff122037a52cb0b0148234a6a4e",
        "redis-semaphore Semaphore refresh (before 5.3.1)",
        Op::Semaphore {
            multi: false,
            refresh: Some(true),
        },
    ),
    known(
        "10c1c2e05e7c48aa5824d227b8c51abcde87b18e",
        "redis-semaphore MultiSemaphore acquire",
        Op::Semaphore {
            multi: true,
            refresh: None,
        },
    ),
    known(
        "2327bcdc5edb5b8687f6d19b5e1f42b815ebddab",
        "redis-semaphore MultiSemaphore refresh",
        Op::Semaphore {
            multi: true,
            refresh: Some(false),
        },
    ),
    known(
        "fbd0699b47ff9ffcd58dcfc4937c5373669018f4",
        "redis-semaphore MultiSemaphore refresh (before 5.3.1)",
        Op::Semaphore {
            multi: true,
            refresh: Some(true),
        },
    ),
    known(
        "0bd1010c98f1ddd70a6024fd374489a8ea3d2c12",
        "redis-semaphore MultiSemaphore release",
        Op::MultiRelease,
    ),
    // redlock-rb (Ruby)
    known(
        "ceb2b2062e40c51a2b3963fd078bc71f11bdc65c",
        "redlock-rb LOCK_SCRIPT",
        Op::RbLock,
    ),
    known(
        "a90bf4be8a6e440e3cc24540eb2f9ff1e16fbcc3",
        "redlock-rb LOCK_SCRIPT (before 1.2.2)",
        Op::RbLock,
    ),
    known(
        "8e4905cee18e7c3188d10f2b8b170e403baed34f",
        "redlock-rb UNLOCK_SCRIPT",
        Op::Release,
    ),
    known(
        "963db4d9f0ccfdb859098be0b29f8b41dc02ed97",
        "redlock-rb UNLOCK_SCRIPT (before 1.2.2)",
        Op::Release,
    ),
    known(
        "78d2ca48a6dc9ef6892059792a3a0c5237733d64",
        "redlock-rb PTTL_SCRIPT",
        Op::RbPttl,
    ),
    known(
        "cd1ae9bb543136ebc0a80a277cd59a7cec83b296",
        "redlock-rb PTTL_SCRIPT (before 1.2.2)",
        Op::RbPttl,
    ),
    // RedLock.net: its scripts as stored (LF) and as a Windows build may embed them (CRLF).
    known(
        "18b2a577dbe847b16bebde190d69a1613d68e60e",
        "RedLock.net Unlock.lua",
        Op::Release,
    ),
    known(
        "cb0427378f700ddb2f0e9394dbb0a40bd6dba04a",
        "RedLock.net Unlock.lua (CRLF)",
        Op::Release,
    ),
    known(
        "9f614a785a5f9ae8c6396c6b4bf94d2087342603",
        "RedLock.net Extend.lua",
        Op::ExtendOrAcquireElseConflict,
    ),
    known(
        "3e7c6bf3e080bb97a92e77362149c26252b98212",
        "RedLock.net Extend.lua (CRLF)",
        Op::ExtendOrAcquireElseConflict,
    ),
];

/// The known script with this SHA1 (hex, any case).
pub fn by_sha(sha: &[u8]) -> Option<&'static Known> {
    KNOWN
        .iter()
        .find(|k| k.sha.as_bytes().eq_ignore_ascii_case(sha))
}

/// Lowercase hex SHA1 of a script body, as `SCRIPT LOAD` returns it.
pub fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// Refusal of a script the proxy does not know.
pub fn unknown_body(body: &[u8]) -> Error {
    Error::Request(format!(
        "only the lock scripts of known client libraries are supported (redis-py Lock, \
         node-redlock, redsync, Redisson RLock and FencedLock, python-redis-lock, pottery, \
         aioredlock, redis-semaphore Mutex, Semaphore and MultiSemaphore, redlock-rb, \
         RedLock.net; see docs/clients.md); this script's sha1 is {}",
        sha1_hex(body)
    ))
}

/// Refusal of a known script the proxy cannot honour, or `None` for one it runs.
pub fn refusal(script: &Known) -> Option<Error> {
    match script.op {
        Op::Refused(why) => Some(Error::Request(why.into())),
        _ => None,
    }
}

/// How many keys and arguments a script takes.
struct Shape {
    keys: usize,
    /// More keys are allowed (all lock keys).
    more_keys: bool,
    args: std::ops::RangeInclusive<usize>,
    text: &'static str,
}

const fn shape(keys: usize, args: usize, text: &'static str) -> Shape {
    Shape {
        keys,
        more_keys: false,
        args: args..=args,
        text,
    }
}

fn shape_of(op: Op) -> Shape {
    match op {
        Op::Release | Op::ReleaseOrMissing | Op::ValidityOrZero | Op::AioUnset | Op::AioTtl => {
            shape(1, 1, "1 key and a token")
        }
        Op::Extend | Op::ExtendOrAcquire | Op::ExtendOrAcquireElseConflict | Op::AioSet => {
            shape(1, 2, "1 key, a token and a TTL")
        }
        Op::ExtendAddOrReplace => shape(1, 3, "1 key, a token, a TTL and 0 or 1"),
        Op::AcquireAll | Op::ExtendAll => Shape {
            more_keys: true,
            ..shape(1, 2, "keys, a token and a TTL")
        },
        Op::ReleaseAll => Shape {
            more_keys: true,
            ..shape(1, 1, "keys and a token")
        },
        Op::ForceRelease => Shape {
            keys: 2,
            more_keys: false,
            args: 0..=2,
            text: "the lock's key and its channel or signal key",
        },
        Op::SignalRelease => shape(2, 2, "the lock and signal keys, a token and a signal TTL"),
        Op::ExtendSeconds => shape(2, 2, "the lock and signal keys, a token and seconds"),
        Op::RbLock => shape(1, 3, "1 key, a token, a TTL and yes or no"),
        Op::RbPttl => shape(1, 0, "1 key"),
        Op::RedissonLock { fenced: false } | Op::RedissonRenew => {
            shape(1, 2, "the lock's name, a lease time and the owner")
        }
        Op::RedissonLock { fenced: true } | Op::RedissonLockFence => shape(
            2,
            2,
            "the lock's name and token keys, a lease time and the owner",
        ),
        Op::RedissonUnlock { .. } => Shape {
            keys: 2,
            more_keys: true,
            args: 3..=5,
            text: "the lock's name and channel, 0, a lease time and the owner",
        },
        Op::RedissonRenewAll => Shape {
            more_keys: true,
            ..shape(1, 2, "lock names, a lease time and an owner per name")
        },
        Op::Semaphore { multi: false, .. } => shape(
            1,
            4,
            "the semaphore's key, its limit, an identifier, a lock timeout and the time",
        ),
        Op::Semaphore { multi: true, .. } => shape(
            1,
            5,
            "the semaphore's key, its limit, a number of permits, an identifier, a lock timeout \
             and the time",
        ),
        Op::MultiRelease => shape(
            1,
            2,
            "the semaphore's key, a number of permits and an identifier",
        ),
        Op::Refused(_) => shape(0, 0, ""),
    }
}

/// Runs `script` with `keys` (in the client's database) and `args`.
pub fn run(
    script: &'static Known,
    cmd: &'static str,
    client: &Client,
    keys: Vec<Bytes>,
    args: Vec<Bytes>,
    shared: &Arc<Shared>,
) -> Result<Outcome, Error> {
    if let Some(refused) = refusal(script) {
        return Err(refused);
    }
    let shape = shape_of(script.op);
    let keys_ok = keys.len() == shape.keys || (shape.more_keys && keys.len() > shape.keys);
    let args_ok = match script.op {
        Op::RedissonRenewAll => args.len() == keys.len() + 1,
        _ => shape.args.contains(&args.len()),
    };
    if !keys_ok || !args_ok {
        return Err(Error::Request(format!(
            "the {} script takes {}",
            script.library, shape.text
        )));
    }
    let ttl = |i: usize| parse_ttl_ms(&args[i], cmd, shared);
    let (db, locks) = (client.db, client.locks.service().clone());
    let n = i64::try_from(keys.len()).unwrap_or(i64::MAX);
    let library = script.library;
    let max = shared.config.redlock.max_ttl_ms;
    let outcome = match script.op {
        Op::Release => Outcome::later(async move {
            integer(locks.release(db, &keys[0], &args[0]).await.map(i64::from))
        }),
        Op::ReleaseOrMissing => Outcome::later(async move {
            let (key, token) = (&keys[0], &args[0]);
            if locks.release(db, key, token).await? {
                return Ok(Reply::Integer(1));
            }
            Ok(Reply::Integer(match locks.inspect(db, key).await? {
                Some(_) => 0,
                None => -1,
            }))
        }),
        Op::Extend => {
            let ttl_ms = ttl(1)?;
            Outcome::later(async move {
                let extended = locks.extend(db, &keys[0], &args[0], ttl_ms).await;
                integer(extended.map(i64::from))
            })
        }
        Op::ExtendAddOrReplace => {
            let ms = ttl(1)?;
            let replace = match &args[2][..] {
                b"1" => true,
                b"0" => false,
                _ => {
                    return Err(Error::Request(format!(
                        "the {library} script's last argument must be 0 or 1"
                    )));
                }
            };
            Outcome::later(async move {
                let (key, token) = (&keys[0], &args[0]);
                let ttl_ms = if replace {
                    ms
                } else {
                    // Add to what is left: the validity a quorum sees, never more than it holds.
                    match locks.inspect(db, key).await? {
                        Some(holder) if holder.token == token => holder.validity_ms + ms,
                        _ => return Ok(Reply::Integer(0)),
                    }
                };
                if ttl_ms > max {
                    // Longer than max-ttl-ms would outlast a restarted master's quarantine.
                    return Err(Error::InvalidTtl {
                        cmd: "evalsha",
                        min: crate::redlock::quorum::MIN_TTL_MS,
                        max,
                    });
                }
                integer(locks.extend(db, key, token, ttl_ms).await.map(i64::from))
            })
        }
        Op::ExtendOrAcquire | Op::ExtendOrAcquireElseConflict => {
            let ttl_ms = ttl(1)?;
            let conflict = if script.op == Op::ExtendOrAcquire {
                0
            } else {
                -1
            };
            Outcome::later(async move {
                let taken = extend_or_acquire(&locks, db, &keys[0], &args[0], ttl_ms).await?;
                Ok(Reply::Integer(if taken { 1 } else { conflict }))
            })
        }
        Op::AcquireAll => {
            let ttl_ms = ttl(1)?;
            Outcome::later(async move {
                let all = locks.acquire_all(db, &keys, &args[0], ttl_ms).await;
                integer(all.map(|all| if all { n } else { 0 }))
            })
        }
        Op::ExtendAll => {
            let ttl_ms = ttl(1)?;
            Outcome::later(async move {
                let all = locks.extend_all(db, &keys, &args[0], ttl_ms).await;
                integer(all.map(|all| if all { n } else { 0 }))
            })
        }
        Op::ReleaseAll => Outcome::later(async move {
            let released = locks.release_all(db, &keys, &args[0]).await;
            integer(released.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
        }),
        Op::ForceRelease => Outcome::later(async move {
            integer(locks.force_release(db, &keys[0]).await.map(i64::from))
        }),
        Op::SignalRelease => Outcome::later(async move {
            // The waiters' signal is the release itself: `BLPOP` on the signal key waits for it.
            let released = locks.release(db, &keys[0], &args[0]).await?;
            Ok(Reply::Integer(if released { 0 } else { 1 }))
        }),
        Op::ExtendSeconds => {
            let seconds = parse_int(&args[1])?;
            let ttl_ms = ttl_ms_in_range(seconds.saturating_mul(1000), cmd, shared)?;
            Outcome::later(async move {
                let extended = locks.extend(db, &keys[0], &args[0], ttl_ms).await?;
                Ok(Reply::Integer(if extended { 0 } else { 1 }))
            })
        }
        Op::ValidityOrZero => Outcome::later(async move {
            let holder = locks.inspect(db, &keys[0]).await?;
            Ok(Reply::Integer(match holder {
                Some(h) if h.token == args[0] => i64::try_from(h.validity_ms).unwrap_or(i64::MAX),
                _ => 0,
            }))
        }),
        Op::AioSet => {
            let ttl_ms = ttl(1)?;
            Outcome::later(async move {
                if extend_or_acquire(&locks, db, &keys[0], &args[0], ttl_ms).await? {
                    Ok(Reply::ok())
                } else {
                    Ok(Reply::error("ERROR"))
                }
            })
        }
        Op::AioUnset => Outcome::later(async move {
            let (key, token) = (&keys[0], &args[0]);
            if locks.release(db, key, token).await? {
                return Ok(Reply::Integer(1));
            }
            Ok(match locks.inspect(db, key).await? {
                None => Reply::ok(),
                Some(_) => Reply::error("ERROR"),
            })
        }),
        Op::AioTtl => Outcome::later(async move {
            Ok(match locks.inspect(db, &keys[0]).await? {
                Some(h) if h.token == args[0] => {
                    // As Redis rounds TTL.
                    Reply::Integer(i64::try_from(h.validity_ms.div_ceil(1000)).unwrap_or(0))
                }
                _ => Reply::error("ERROR"),
            })
        }),
        Op::RbLock => {
            let ttl_ms = ttl(1)?;
            let may_take = &args[2][..] == b"yes";
            Outcome::later(async move {
                let (key, token) = (&keys[0], &args[0]);
                let taken = if may_take {
                    extend_or_acquire(&locks, db, key, token, ttl_ms).await?
                } else {
                    locks.extend(db, key, token, ttl_ms).await?
                };
                Ok(if taken { Reply::ok() } else { Reply::Null })
            })
        }
        Op::RbPttl => Outcome::later(async move {
            Ok(Reply::Array(match locks.inspect(db, &keys[0]).await? {
                Some(h) => vec![
                    Reply::Bulk(h.token),
                    Reply::Integer(i64::try_from(h.validity_ms).unwrap_or(i64::MAX)),
                ],
                None => vec![Reply::Null, Reply::Integer(-2)],
            }))
        }),
        Op::RedissonLock { fenced } => {
            let lease = ttl(0)?;
            Outcome::later(async move {
                let how = if fenced { Fence::Silent } else { Fence::None };
                let taken = redisson::lock(&locks, db, &keys[0], &args[1], lease, how).await?;
                Ok(match taken {
                    Taken::Yes(_) => Reply::Null,
                    Taken::HeldFor(ms) => Reply::Integer(ms),
                })
            })
        }
        Op::RedissonLockFence => {
            let lease = ttl(0)?;
            Outcome::later(async move {
                let how = Fence::Token;
                let taken = redisson::lock(&locks, db, &keys[0], &args[1], lease, how).await?;
                Ok(Reply::Array(match taken {
                    Taken::Yes(fence) => vec![Reply::Integer(-1), Reply::Integer(fence)],
                    Taken::HeldFor(ms) => vec![Reply::Integer(ms), Reply::Integer(-1)],
                }))
            })
        }
        Op::RedissonUnlock { free_is_released } => {
            let lease = ttl(1)?;
            // Since 3.24 the unlock names a latch, KEYS[3], kept for ARGV[5] ms: a retried
            // unlock gets the first one's answer instead of acting again.
            let latch = match (&keys[..], &args[..]) {
                ([_, _, latch], [.., timeout]) if args.len() == 5 => {
                    parse_ttl_ms(timeout, cmd, shared)
                        .ok()
                        .map(|ms| (latch.clone(), ms))
                }
                _ => None,
            };
            Outcome::later(async move {
                let (key, owner) = (&keys[0], &args[2]);
                let how = Unlock {
                    free_is_released,
                    lease,
                };
                redisson::unlock(&locks, db, key, owner, how, latch).await
            })
        }
        Op::RedissonRenew => {
            let lease = ttl(0)?;
            Outcome::later(async move {
                let renewed = redisson::renew(&locks, db, &keys[0], &args[1], lease).await?;
                Ok(Reply::Integer(i64::from(renewed)))
            })
        }
        Op::RedissonRenewAll => {
            let lease = ttl(0)?;
            Outcome::later(async move {
                let renewals = keys
                    .iter()
                    .zip(&args[1..])
                    .map(|(key, owner)| redisson::renew(&locks, db, key, owner, lease));
                let mut replies = Vec::with_capacity(keys.len());
                for renewed in join_all(renewals).await {
                    replies.push(Reply::Integer(i64::from(renewed?)));
                }
                Ok(Reply::Array(replies))
            })
        }
        Op::Semaphore { multi, refresh } => {
            let limit = limit(&args[0], library)?;
            let (names, ttl_ms) = if multi {
                (multi_names(&args[1], &args[2], limit, library)?, ttl(3)?)
            } else {
                (vec![args[1].clone()], ttl(2)?)
            };
            Outcome::later(async move {
                let taken = permits(&locks, db, &keys[0], &names, limit, ttl_ms, refresh).await?;
                Ok(Reply::Integer(i64::from(taken)))
            })
        }
        Op::MultiRelease => {
            let names = multi_names(&args[0], &args[1], MAX_PERMITS, library)?;
            Outcome::later(async move {
                let released = locks.release_named(db, &keys[0], &names).await;
                integer(released.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
            })
        }
        Op::Refused(_) => unreachable!("refused above"),
    };
    Ok(outcome)
}

fn integer(r: Result<i64, locks::Error>) -> Result<Reply, Error> {
    Ok(Reply::Integer(r?))
}

/// A redis-semaphore semaphore's limit: a `PERMITS` count the proxy keeps.
fn limit(arg: &[u8], library: &str) -> Result<u32, Error> {
    u32::try_from(parse_int(arg)?)
        .ok()
        .filter(|n| (1..=MAX_PERMITS).contains(n))
        .ok_or_else(|| {
            Error::Request(format!(
                "the {library} script's limit must be between 1 and {MAX_PERMITS} (the most \
                 permits a semaphore may have)"
            ))
        })
}

/// The holder names of a MultiSemaphore's `permits` permits (of a semaphore of at most
/// `limit`): `<identifier>_<i>`, as the library names them in its sorted set.
fn multi_names(
    permits: &[u8],
    identifier: &[u8],
    limit: u32,
    library: &str,
) -> Result<Vec<Bytes>, Error> {
    let permits = u32::try_from(parse_int(permits)?)
        .ok()
        .filter(|n| (1..=limit).contains(n))
        .ok_or_else(|| {
            Error::Request(format!(
                "the {library} script's permits must be between 1 and the limit ({limit})"
            ))
        })?;
    let mut i = itoa::Buffer::new();
    Ok((0..permits)
        .map(|n| Bytes::from([identifier, b"_", i.format(n).as_bytes()].concat()))
        .collect())
}

/// redis-semaphore's acquire (`refresh` `None`) or refresh of the permits `names` hold on the
/// semaphore of `limit` on `key`: true when they are all held for `ttl_ms` now. A refresh
/// with `or_acquire` (before 5.3.1) takes them when it holds none of them; an extension goes
/// first, since an acquire by a holder would take more permits.
async fn permits(
    locks: &Locks,
    db: u32,
    key: &[u8],
    names: &[Bytes],
    limit: u32,
    ttl_ms: u64,
    refresh: Option<bool>,
) -> Result<bool, Error> {
    if refresh.is_some() && locks.extend_named(db, key, names, limit, ttl_ms).await? {
        return Ok(true);
    }
    if refresh == Some(false) {
        return Ok(false);
    }
    Ok(locks.acquire_named(db, key, names, limit, ttl_ms).await?)
}

/// Extends `key` if it holds `token`, else takes it if it is free: true when it is held with
/// `token` for `ttl_ms` now. The extension goes first: an acquire refused because the caller
/// already holds the key would release it everywhere.
async fn extend_or_acquire(
    locks: &Locks,
    db: u32,
    key: &[u8],
    token: &Bytes,
    ttl_ms: u64,
) -> Result<bool, Error> {
    if locks.extend(db, key, token, ttl_ms).await? {
        return Ok(true);
    }
    let granted = locks
        .acquire(db, key, token.clone(), Acquire::once(ttl_ms))
        .await?;
    Ok(granted.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shas_are_lowercase_hex_and_unique() {
        let mut shas: Vec<&str> = KNOWN.iter().map(|k| k.sha).collect();
        assert!(shas.iter().all(|s| {
            s.len() == 40
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }));
        shas.sort_unstable();
        shas.dedup();
        assert_eq!(shas.len(), KNOWN.len());
        assert!(by_sha(b"C3F8721CBB97F72BC19E972846BD7AAF91901658").is_some());
        assert!(by_sha(b"e9f69f2beb755be68b5e456ee2ce9aadfbc4ebf4").is_none());
    }

    /// Every script of the libraries' catalogue (`tests/compat/locklibs-scripts.json`: exact
    /// bodies as each library sends them) is known by the SHA1 of its body.
    #[test]
    fn every_catalogued_script_is_known_by_the_sha1_of_its_body() {
        let catalogue: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/compat/locklibs-scripts.json")).unwrap();
        let entries = catalogue.as_array().unwrap();
        assert_eq!(entries.len(), 48);
        for e in entries {
            let body = e["body"].as_str().unwrap();
            let sha = sha1_hex(body.as_bytes());
            assert_eq!(sha, e["sha1"].as_str().unwrap(), "{}", e["name"]);
            assert!(
                by_sha(sha.as_bytes()).is_some(),
                "{} {}",
                e["lib"],
                e["name"]
            );
        }
    }

    #[test]
    fn refused_scripts_say_which_library_and_what_to_use() {
        let reset_all = by_sha(b"b121d3548d693116c3851b63befe947e49f28c7c").unwrap();
        let text = refusal(reset_all).unwrap().to_string();
        assert!(
            text.contains("python-redis-lock") && text.contains("Lock.reset()"),
            "{text}"
        );
        let semaphore = by_sha(b"43ebdb49120d170e08af560cb4e46e36f8585936").unwrap();
        assert!(refusal(semaphore).is_none());
        let mutex = by_sha(b"7157921a7cc7cfba979acf6d63f073151df17d12").unwrap();
        assert!(refusal(mutex).is_none());
    }
}
