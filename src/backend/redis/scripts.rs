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
/// `ARGV[2]` so waiters on every proxy wake; without waiters nothing is published, and no proxy
/// reads a message per release.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) \
         if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[2], KEYS[1]) end \
         return 1 else return 0 end",
    )
});

/// Keeps the waiting marker `KEYS[1]` for at least `ARGV[1]` ms (never shortens it).
pub static MARK_WAITING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then \
         redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end return 1",
    )
});

/// Sets `KEYS[1]`'s TTL to `ARGV[2]` ms only if it holds `ARGV[1]`: 1 when extended.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// `KEYS[1]`'s value and PTTL read atomically, or nil when the key is absent.
pub static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local v = redis.call('GET', KEYS[1]) if not v then return false end return {v, redis.call('PTTL', KEYS[1])}",
    )
});

/// The fence counter `KEYS[1]`, or the floor `KEYS[2]` when that is higher (0 when both absent).
pub static READ_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "return math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), \
         tonumber(redis.call('GET', KEYS[2]) or '0'))",
    )
});

/// Takes lock `KEYS[1]` with token `ARGV[1]` for `ARGV[2]` ms together with fence `ARGV[3]`, only if the
/// lock is free and the fence is greater than every fence `KEYS[2]` has seen and than the floor
/// `KEYS[3]`: 1 when taken, 0 when held, -1 when the fence is stale.
pub static ACQUIRE_FENCED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end \
         if math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), \
         tonumber(redis.call('GET', KEYS[3]) or '0')) >= tonumber(ARGV[3]) then return -1 end \
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

/// Every script, for loading on connect.
pub fn all_scripts() -> [&'static Script; 7] {
    [
        &RELEASE,
        &MARK_WAITING,
        &EXTEND,
        &INSPECT,
        &READ_FENCE,
        &ACQUIRE_FENCED,
        &RAISE_FENCE,
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
