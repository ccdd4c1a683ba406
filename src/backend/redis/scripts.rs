//! The Lua scripts that make the proxy's operations on a master atomic (release, extend,
//! inspect, fences), each with its SHA1 for `EVALSHA`.

use std::sync::LazyLock;

/// A Lua script the proxy runs on the masters, with its SHA1 for `EVALSHA`.
#[derive(Debug)]
pub struct Script {
    /// The Lua source.
    pub body: &'static str,
    /// Lowercase hex SHA1 of `body`, as `SCRIPT LOAD` returns it.
    pub sha: String,
}

impl Script {
    fn new(body: &'static str) -> Script {
        Script {
            body,
            sha: sha1_smol::Sha1::from(body).digest().to_string(),
        }
    }
}

/// Deletes `KEYS[1]` only if it holds `ARGV[1]` (the token): 1 when deleted. When some proxy has a
/// waiter for the key (its waiting marker `KEYS[2]` exists), the release is published on channel
/// `ARGV[2]` with command `ARGV[3]` (`PUBLISH`, or `SPUBLISH` on a cluster node) so waiters on
/// every proxy wake; without waiters nothing is published, and no proxy reads a message per
/// release. An announcement that fails (a cluster node whose channel's slot just moved away)
/// does not fail the release: waiters also retry on a timer.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) \
         if redis.call('EXISTS', KEYS[2]) == 1 then redis.pcall(ARGV[3], ARGV[2], KEYS[1]) end \
         return 1 else return 0 end",
    )
});

/// Names proxy `ARGV[2]` among the waiters in the waiting marker `KEYS[1]` (a hash, one field
/// per proxy with a waiter) and keeps the marker for at least `ARGV[1]` ms (never shortens it).
/// A marker left as a plain string by an older proxy is replaced: that proxy's waiters then
/// wake by their timers until it marks again.
pub static MARK_WAITING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('TYPE', KEYS[1]).ok == 'string' then redis.call('DEL', KEYS[1]) end \
         redis.call('HSET', KEYS[1], ARGV[2], '1') \
         if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then \
         redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return 1",
    )
});

/// Takes proxy `ARGV[1]` out of the waiting marker `KEYS[1]`: it has no waiter for the lock any
/// more. The last one out removes the marker (Redis deletes an empty hash), so releases stop
/// being published. A string marker (an older proxy's) is left to expire.
pub static UNMARK_WAITING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('TYPE', KEYS[1]).ok == 'hash' then redis.call('HDEL', KEYS[1], ARGV[1]) end \
         return 1",
    )
});

/// Sets `KEYS[1]`'s TTL to `ARGV[2]` ms only if it holds `ARGV[1]`: 1 when extended.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// Replaces `KEYS[1]`'s token `ARGV[1]` with `ARGV[2]` and sets its TTL to `ARGV[3]` ms, only if
/// it holds `ARGV[1]`: 1 when swapped.
pub static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
         redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end",
    )
});

/// `KEYS[1]`'s value and PTTL read atomically, or nil when the key is absent.
pub static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local v = redis.call('GET', KEYS[1]) if not v then return false end return {v, redis.call('PTTL', KEYS[1])}",
    )
});

/// The fence counter `KEYS[1]`, or the floor `KEYS[2]` (on a cluster node, `ARGV[1]`: see
/// [`Names::sharded`](crate::backend::Names::sharded)) when that is higher (0 when both absent).
pub static READ_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "return math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), \
         tonumber(redis.call('GET', KEYS[2] or ARGV[1]) or '0'))",
    )
});

/// Takes lock `KEYS[1]` with token `ARGV[1]` for `ARGV[2]` ms together with fence `ARGV[3]`, only if the
/// lock is free and the fence is greater than every fence `KEYS[2]` has seen and than the floor
/// `KEYS[3]`: 1 when taken, 0 when held, -1 when the fence is stale. Without the run marker
/// `KEYS[4]` (the master was flushed, or sits out a quarantine) it takes nothing and answers
/// [`NO_MARKER`]. On a cluster node the floor and the marker, the node's own names in another
/// slot, come as `ARGV[4]` and `ARGV[5]` instead (see
/// [`Names::sharded`](crate::backend::Names::sharded)).
pub static ACQUIRE_FENCED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[4] or ARGV[5]) == 0 then return -2 end \
         if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end \
         if math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), \
         tonumber(redis.call('GET', KEYS[3] or ARGV[4]) or '0')) >= tonumber(ARGV[3]) then return -1 end \
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) redis.call('SET', KEYS[2], ARGV[3]) \
         return 1",
    )
});

/// Raises fence counter `KEYS[1]` to `ARGV[1]` unless it is already that high (repair).
pub static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then \
         redis.call('SET', KEYS[1], ARGV[1]) end return 1",
    )
});

/// Raises each fence counter `KEYS[i]` to `ARGV[i]` and the floor, the last key, to the last
/// argument, each unless it is already that high (a repair: one page of another master's
/// counters in one call).
pub static RAISE_FENCES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "for i = 1, #KEYS do \
         if tonumber(redis.call('GET', KEYS[i]) or '0') < tonumber(ARGV[i]) then \
         redis.call('SET', KEYS[i], ARGV[i]) end end return 1",
    )
});

/// The fence sweep, for one page of counters `KEYS[1..n-1]` with the floor `KEYS[n]`:
/// raises the floor to the highest of them, then gives each counter that has no expiry one of
/// `ARGV[1]` ms. Atomic, so every counter given an expiry is at or under the floor when it
/// gets it; a counter written later (`SET`, by a fenced acquire or a repair) loses its
/// expiry and waits for the next sweep. So a counter only vanishes with the floor above it.
pub static SWEEP_FENCES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local n = #KEYS local top = tonumber(redis.call('GET', KEYS[n]) or '0') \
         for i = 1, n - 1 do top = math.max(top, tonumber(redis.call('GET', KEYS[i]) or '0')) end \
         redis.call('SET', KEYS[n], string.format('%d', top)) \
         for i = 1, n - 1 do if redis.call('PTTL', KEYS[i]) == -1 then \
         redis.call('PEXPIRE', KEYS[i], ARGV[1]) end end return 1",
    )
});

/// Which primitive uses `KEYS[1]`: `{kind, count}` (`exclusive`, `shared`, or `permits` with
/// the semaphore's count), nil when it is free.
pub static HELD_AS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local t = redis.call('TYPE', KEYS[1]).ok \
         if t == 'none' then return false end \
         if t == 'hash' then return {'permits', tonumber(redis.call('HGET', KEYS[1], 'permits')) or 0} end \
         if t == 'zset' then return {'shared', 0} end \
         if t == 'string' then return {'exclusive', 0} end \
         return {t, 0}",
    )
});

/// A permit of the semaphore `KEYS[1]` of `ARGV[3]` permits, whose slots are the next `ARGV[3]`
/// keys: the first free slot from `ARGV[4]` on takes token `ARGV[1]:<slot>:<count>` for
/// `ARGV[2]` ms, and the count at `KEYS[1]` (a hash) lives at least as long. `{1, 'taken', slot}`;
/// `{0, 'full', 0}` when every slot is held; `{-3, kind, count}` when `KEYS[1]` is in use as
/// another kind or count; [`NO_MARKER`] without the run marker, the last key (on a cluster node
/// `ARGV[5]`, as in [`ACQUIRE_FENCED`]). Each slot is an ordinary lock key: taken with `SET NX`,
/// freed by its token.
pub static ACQUIRE_PERMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', ARGV[5] or KEYS[tonumber(ARGV[3]) + 2]) == 0 then return -2 end \
         local t = redis.call('TYPE', KEYS[1]).ok \
         if t == 'hash' then local m = redis.call('HGET', KEYS[1], 'permits') \
         if m ~= ARGV[3] then return {-3, 'permits', tonumber(m) or 0} end \
         elseif t == 'string' then return {-3, 'exclusive', 0} \
         elseif t == 'zset' then return {-3, 'shared', 0} \
         elseif t ~= 'none' then return {-3, t, 0} end \
         local n = tonumber(ARGV[3]) \
         for j = 0, n - 1 do local i = (tonumber(ARGV[4]) + j) % n \
         if redis.call('SET', KEYS[2 + i], ARGV[1] .. ':' .. i .. ':' .. ARGV[3], 'NX', 'PX', ARGV[2]) then \
         redis.call('HSET', KEYS[1], 'permits', ARGV[3]) \
         if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
         return {1, 'taken', i} end end \
         return {0, 'full', 0}",
    )
});

/// Frees every slot `KEYS[3..]` of the semaphore `KEYS[1]` (of `ARGV[2]` permits) that holds a
/// permit of `ARGV[1]`, except slot `ARGV[3]` (-1: none kept). The count at `KEYS[1]` then
/// expires with the latest slot still held, or goes with the last. Published on `ARGV[4]`
/// (with command `ARGV[5]`, as [`RELEASE`]) when the waiting marker `KEYS[2]` exists. 1 when a
/// slot was freed.
pub static RELEASE_PERMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local n = tonumber(ARGV[2]) local keep = tonumber(ARGV[3]) local freed = 0 \
         for i = 0, n - 1 do \
         if i ~= keep and redis.call('GET', KEYS[3 + i]) == ARGV[1] .. ':' .. i .. ':' .. ARGV[2] then \
         redis.call('DEL', KEYS[3 + i]) freed = 1 end end \
         if freed == 0 then return 0 end \
         if redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HGET', KEYS[1], 'permits') == ARGV[2] then \
         local top = -2 for i = 0, n - 1 do top = math.max(top, redis.call('PTTL', KEYS[3 + i])) end \
         if top > 0 then redis.call('PEXPIRE', KEYS[1], top) else redis.call('DEL', KEYS[1]) end end \
         if redis.call('EXISTS', KEYS[2]) == 1 then redis.pcall(ARGV[5], ARGV[4], KEYS[1]) end \
         return 1",
    )
});

/// Sets slot `KEYS[2]`'s TTL to `ARGV[2]` ms if it holds `ARGV[1]`, and the semaphore's count
/// `KEYS[1]` to at least as long: 1 when extended.
pub static EXTEND_PERMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end \
         redis.call('PEXPIRE', KEYS[2], ARGV[2]) \
         if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
         return 1",
    )
});

/// Sets the TTL of the slot among `KEYS[2..]` (a semaphore of `ARGV[2]` permits) that holds a
/// permit taken under any of the names `ARGV[3..]` (`<name>:<slot>:<count>`) to `ARGV[1]` ms,
/// and the count `KEYS[1]` to at least as long: the slot extended, -1 when none holds one.
pub static EXTEND_NAMED_PERMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "for i = 0, tonumber(ARGV[2]) - 1 do local v = redis.call('GET', KEYS[2 + i]) \
         if v then for j = 3, #ARGV do if v == ARGV[j] .. ':' .. i .. ':' .. ARGV[2] then \
         redis.call('PEXPIRE', KEYS[2 + i], ARGV[1]) \
         if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
         return i end end end end \
         return -1",
    )
});

/// Adds reader `ARGV[1]` to the read lock `KEYS[1]` (a sorted set: token → expiry in the
/// master's ms) for `ARGV[2]` ms, after dropping expired readers; the set lives as long as its
/// latest reader. `{1, 'taken', 0}`; `{0, 'exclusive', 0}` when a writer holds the key (a
/// string) and `{0, 'writer', 0}` while the writers' waiting marker `KEYS[2]` names one;
/// `{-3, 'permits', count}` for a semaphore; [`NO_MARKER`] without the run marker `KEYS[3]`
/// (on a cluster node `ARGV[3]`, as in [`ACQUIRE_FENCED`]).
/// A writer takes the key with `SET NX`, which fails while the set exists: one master decides
/// reader against writer in one step.
pub static ACQUIRE_SHARED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         if redis.call('EXISTS', KEYS[3] or ARGV[3]) == 0 then return -2 end \
         local t = redis.call('TYPE', KEYS[1]).ok \
         if t == 'string' then return {0, 'exclusive', 0} end \
         if t == 'hash' then return {-3, 'permits', tonumber(redis.call('HGET', KEYS[1], 'permits')) or 0} end \
         if t ~= 'none' and t ~= 'zset' then return {-3, t, 0} end \
         if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 'writer', 0} end \
         local c = redis.call('TIME') local now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000) \
         redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
         redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) \
         if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
         return {1, 'taken', 0}",
    )
});

/// Takes reader `ARGV[1]` out of the read lock `KEYS[1]`; the set then expires with its latest
/// live reader, or goes with the last. Published on `ARGV[2]` when the waiting marker `KEYS[2]`
/// exists (with command `ARGV[3]`, as [`RELEASE`]). 1 when it was a live reader.
pub static RELEASE_SHARED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then return 0 end \
         local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) if not s then return 0 end \
         local c = redis.call('TIME') local now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000) \
         redis.call('ZREM', KEYS[1], ARGV[1]) \
         redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
         local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES') \
         if #top == 0 then redis.call('DEL', KEYS[1]) \
         else redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(top[2]) - now)) end \
         if redis.call('EXISTS', KEYS[2]) == 1 then redis.pcall(ARGV[3], ARGV[2], KEYS[1]) end \
         if tonumber(s) > now then return 1 end return 0",
    )
});

/// Moves reader `ARGV[1]`'s expiry to `ARGV[2]` ms from now if it is a live reader of
/// `KEYS[1]`, and the set's TTL to at least as long: 1 when extended.
pub static EXTEND_SHARED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then return 0 end \
         local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
         local c = redis.call('TIME') local now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000) \
         if not s or tonumber(s) <= now then return 0 end \
         redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1]) \
         if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
         return 1",
    )
});

/// How long `ARGV[1]` still holds `KEYS[1]` (its token, or one of its readers), in ms; -2 when
/// it does not.
pub static TOKEN_PTTL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local t = redis.call('TYPE', KEYS[1]).ok \
         if t == 'string' then if redis.call('GET', KEYS[1]) == ARGV[1] then \
         return redis.call('PTTL', KEYS[1]) end return -2 end \
         if t ~= 'zset' then return -2 end \
         local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) if not s then return -2 end \
         local c = redis.call('TIME') local now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000) \
         if tonumber(s) <= now then return -2 end return tonumber(s) - now",
    )
});

/// [`ACQUIRE_FENCED`]'s answer when the run marker is missing.
pub const NO_MARKER: i64 = -2;

/// A master's lineage, checked and recorded atomically on the master's own clock (`TIME`), so
/// every proxy reaches the same verdict and the same end of a quarantine. `KEYS[1]` is the run
/// marker, which names the run (`ARGV[1]`, the master's `run_id`) its lock data was written in
/// and exists only while the master may vote; `KEYS[2]` records a quarantine as
/// `"<run_id> <end in master ms>"`. `ARGV[2]` is max-ttl in ms; `ARGV[3]` is `0` (strict), `1`
/// (a master with no marker and no record is trusted: known new) or `2` (every master is
/// trusted: the operator says none ever loses a write). Answers `{verdict, ms left}`:
///
/// - `current`: the marker names this run (written now if a recorded quarantine just ended);
/// - `new`: no marker and no record, trusted: the marker is written;
/// - `recorded`: a quarantine of this run recorded earlier (by any proxy) still runs;
/// - `foreign`: marker or record name another run (a promoted replica, a restored snapshot);
/// - `unmarked`: neither exists (a flush, or a master nobody marked yet).
///
/// The last two start a quarantine of max-ttl from now, recorded, and delete the marker so
/// every proxy's next vote there fails at once. `redis.replicate_commands()` lets a script write
/// after `TIME` on Redis before 5; later versions ignore it.
pub static LINEAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         local t = redis.call('TIME') \
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
         local run = redis.call('GET', KEYS[1]) \
         if ARGV[3] == '2' or run == ARGV[1] then \
         if run ~= ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end return {'current', 0} end \
         local rec = redis.call('GET', KEYS[2]) \
         if rec then \
         local r, e = string.match(rec, '^(%S+) (%d+)$') \
         if r == ARGV[1] then \
         local left = tonumber(e) - now \
         if left > 0 then return {'recorded', left} end \
         redis.call('SET', KEYS[1], ARGV[1]) return {'current', 0} end end \
         if not run and not rec and ARGV[3] == '1' then \
         redis.call('SET', KEYS[1], ARGV[1]) return {'new', 0} end \
         local verdict = 'unmarked' if run or rec then verdict = 'foreign' end \
         redis.call('DEL', KEYS[1]) \
         redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. string.format('%d', now + tonumber(ARGV[2]))) \
         return {verdict, tonumber(ARGV[2])}",
    )
});

/// Every script, for loading on connect.
pub fn all_scripts() -> [&'static Script; 20] {
    [
        &RELEASE,
        &MARK_WAITING,
        &UNMARK_WAITING,
        &EXTEND,
        &SWAP,
        &INSPECT,
        &READ_FENCE,
        &ACQUIRE_FENCED,
        &RAISE_FENCE,
        &RAISE_FENCES,
        &SWEEP_FENCES,
        &HELD_AS,
        &ACQUIRE_PERMIT,
        &RELEASE_PERMIT,
        &EXTEND_PERMIT,
        &EXTEND_NAMED_PERMIT,
        &ACQUIRE_SHARED,
        &RELEASE_SHARED,
        &EXTEND_SHARED,
        &TOKEN_PTTL,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn script_shas_are_sha1_of_the_body() {
        assert_eq!(
            Script::new("return 1").sha,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
        assert_ne!(RELEASE.sha, EXTEND.sha);
    }
}
