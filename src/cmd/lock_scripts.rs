//! The lock scripts of common client libraries, known by SHA1, each served as the matching
//! quorum operation. Scripts are recognised only by the hash of their exact body — never by
//! guessing — so an unknown script is refused rather than misread.

use std::sync::Arc;

use bytes::Bytes;

use super::{Client, Outcome, Shared, parse_ttl_ms};
use crate::error::Error;
use crate::locks;
use crate::protocol::Reply;

/// What a known script does, as a lock operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// KEYS[1], ARGV token: compare-and-delete → 1/0.
    Release,
    /// KEYS[1], ARGV token, ms, "0" (add to the remaining TTL) or "1" (replace it) → 1/0.
    ExtendAddOrReplace,
    /// KEYS[1], ARGV token, ms: set the TTL if held → 1/0.
    Reacquire,
    /// KEYS..., ARGV token, ms: take every key or none → #KEYS / 0.
    AcquireAll,
    /// KEYS..., ARGV token, ms: extend every key or none → #KEYS / 0.
    ExtendAll,
    /// KEYS..., ARGV token: release each key held with the token → how many.
    ReleaseAll,
}

/// A library script the proxy answers.
#[derive(Debug)]
pub struct Known {
    /// Lowercase hex SHA1 of the script body.
    pub sha: &'static str,
    /// Which library sends it, for error messages.
    pub library: &'static str,
    op: Op,
}

/// Every known script; SHA1s as measured over the bytes the libraries send.
pub const KNOWN: &[Known] = &[
    Known {
        sha: "c3f8721cbb97f72bc19e972846bd7aaf91901658",
        library: "redis-py Lock release",
        op: Op::Release,
    },
    Known {
        sha: "a4e8783852e6b949f9ef3a97212805108459a890",
        library: "redis-py Lock extend",
        op: Op::ExtendAddOrReplace,
    },
    Known {
        sha: "1cac51482acf5858da00f6d685d68f886cd6b6b2",
        library: "redis-py Lock reacquire",
        op: Op::Reacquire,
    },
    Known {
        sha: "96da70f7716f27d278a5218544df37fd8b0a5e4c",
        library: "node-redlock v5 acquire",
        op: Op::AcquireAll,
    },
    Known {
        sha: "aed6f382e410db8ba7926d4e5e9aab410bf2a78a",
        library: "node-redlock v5 extend",
        op: Op::ExtendAll,
    },
    Known {
        sha: "e4612211c9f8f51c257e26e056b0a654b3187242",
        library: "node-redlock v5 release",
        op: Op::ReleaseAll,
    },
    Known {
        sha: "e5a322e2634ef59a516e8ea150cb085afafee684",
        library: "node-redlock v4 lock",
        op: Op::AcquireAll,
    },
    Known {
        sha: "ce46f80993d5dac20dd066eb301a4e37994bdbed",
        library: "node-redlock v4 extend",
        op: Op::ExtendAll,
    },
    Known {
        sha: "0f0f23b9048b36752b5be114f357ba083449f908",
        library: "node-redlock v4 unlock",
        op: Op::ReleaseAll,
    },
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
         node-redlock); this script's sha1 is {}",
        sha1_hex(body)
    ))
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
    let shape = |keys_ok: bool, nargs: usize, expected: &str| {
        if keys_ok && args.len() == nargs {
            Ok(())
        } else {
            Err(Error::Request(format!(
                "the {} script takes {expected}",
                script.library
            )))
        }
    };
    let single = keys.len() == 1;
    let many = !keys.is_empty();
    let ttl = |i: usize| parse_ttl_ms(&args[i], cmd, shared);
    let (db, locks) = (client.db, client.locks.service().clone());
    let n = i64::try_from(keys.len()).unwrap_or(i64::MAX);
    let outcome = match script.op {
        Op::Release => {
            shape(single, 1, "1 key and a token")?;
            Outcome::later(async move {
                integer(locks.release(db, &keys[0], &args[0]).await.map(i64::from))
            })
        }
        Op::Reacquire => {
            shape(single, 2, "1 key, a token and a TTL")?;
            let ttl_ms = ttl(1)?;
            Outcome::later(async move {
                let extended = locks.extend(db, &keys[0], &args[0], ttl_ms).await;
                integer(extended.map(i64::from))
            })
        }
        Op::ExtendAddOrReplace => {
            shape(single, 3, "1 key, a token, a TTL and 0 or 1")?;
            let ms = ttl(1)?;
            let replace = match &args[2][..] {
                b"1" => true,
                b"0" => false,
                _ => {
                    return Err(Error::Request(format!(
                        "the {} script's last argument must be 0 or 1",
                        script.library
                    )));
                }
            };
            let max = shared.config.redlock.max_ttl_ms;
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
        Op::AcquireAll => {
            shape(many, 2, "keys, a token and a TTL")?;
            let ttl_ms = ttl(1)?;
            Outcome::later(async move {
                let all = locks.acquire_all(db, &keys, &args[0], ttl_ms).await;
                integer(all.map(|all| if all { n } else { 0 }))
            })
        }
        Op::ExtendAll => {
            shape(many, 2, "keys, a token and a TTL")?;
            let ttl_ms = ttl(1)?;
            Outcome::later(async move {
                let all = locks.extend_all(db, &keys, &args[0], ttl_ms).await;
                integer(all.map(|all| if all { n } else { 0 }))
            })
        }
        Op::ReleaseAll => {
            shape(many, 1, "keys and a token")?;
            Outcome::later(async move {
                let released = locks.release_all(db, &keys, &args[0]).await;
                integer(released.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
            })
        }
    };
    Ok(outcome)
}

fn integer(r: Result<i64, locks::Error>) -> Result<Reply, Error> {
    Ok(Reply::Integer(r?))
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
}
