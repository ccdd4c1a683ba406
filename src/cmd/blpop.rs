//! `BLPOP lock-signal:<name> timeout`: python-redis-lock's wait for a held lock. The library
//! pushes to its signal list when it releases, and its waiters pop from it; the proxy stores no
//! lists, so the pop waits instead for the lock `lock:<name>` to be free — released through
//! any proxy (releases are announced while someone waits) or expired — and answers as the pop
//! of the signal would: `[key, "1"]`, or a null array when the timeout (seconds; 0: none) runs
//! out. Every other list is refused: nothing would ever feed it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

/// python-redis-lock's signal list of lock `lock:<name>` is `lock-signal:<name>`.
const SIGNAL: &[u8] = b"lock-signal:";
const LOCK: &[u8] = b"lock:";

pub const SPEC: Spec = Spec {
    name: "blpop",
    arity: 3,
    flags: &["write", "blocking"],
    key_pos: 1,
    group: "list",
    summary: "python-redis-lock's wait: blocks until the lock of a lock-signal:<name> key is free",
    complexity: "O(N) where N is the number of masters, per look",
    args: &[ArgDoc::new("key", "key"), ArgDoc::new("timeout", "string")],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let signal = argv[1].clone();
    let Some(name) = signal.strip_prefix(SIGNAL) else {
        return Err(Error::Request(
            "the proxy serves BLPOP only on python-redis-lock's signal keys \
             (lock-signal:<name>): it stores locks, not lists"
                .into(),
        ));
    };
    let wait = parse_timeout(&argv[2])?;
    let lock = Bytes::from([LOCK, name].concat());
    let free = client.locks.await_free(client.db, lock, wait);
    Ok(Outcome::later(async move {
        Ok(if free.await? {
            Reply::Array(vec![Reply::Bulk(signal), Reply::bulk("1")])
        } else {
            Reply::NullArray
        })
    }))
}

/// A blocking timeout in seconds, as Redis takes it (a float; 0 waits without limit).
fn parse_timeout(arg: &[u8]) -> Result<Option<Duration>, Error> {
    let seconds: f64 = std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| s.is_finite())
        .ok_or_else(|| Error::Request("timeout is not a float or out of range".into()))?;
    if seconds < 0.0 {
        return Err(Error::Request("timeout is negative".into()));
    }
    Ok((seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_redis_takes_them() {
        assert_eq!(parse_timeout(b"0").unwrap(), None);
        assert_eq!(
            parse_timeout(b"1.5").unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_timeout(b"30").unwrap(), Some(Duration::from_secs(30)));
        assert!(
            parse_timeout(b"-1")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(parse_timeout(b"x").is_err());
        assert!(parse_timeout(b"inf").is_err());
    }
}
