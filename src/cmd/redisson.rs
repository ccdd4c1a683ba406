//! Redisson's reentrant lock (`RLock`, `FencedLock`) on a Redlock lock. Redisson keeps a hash
//! at the lock's name with one field, the owner `<uuid>:<threadId>`, counting its holds; here
//! the count lives in the lock's token, `<count>:<owner>`, and changes only by a quorum swap, so
//! the lock is never free between two holds of its owner. Another owner is told how long the
//! lock is still held, as Redisson's scripts answer with the hash's PTTL.

use bytes::Bytes;

use crate::error::Error;
use crate::locks::{self, Acquire, Locks};
use crate::protocol::Reply;

/// A Redisson lock's token: its owner (`<uuid>:<threadId>`) and how many times it holds it.
pub(super) fn token(count: u64, owner: &[u8]) -> Bytes {
    let mut token = count.to_string().into_bytes();
    token.push(b':');
    token.extend_from_slice(owner);
    token.into()
}

/// How many times `owner` holds a lock whose token is `token`; `None` when someone else does.
pub(super) fn holds(token: &[u8], owner: &[u8]) -> Option<u64> {
    let colon = token.iter().position(|&b| b == b':')?;
    let (count, rest) = (&token[..colon], &token[colon + 1..]);
    if rest != owner {
        return None;
    }
    std::str::from_utf8(count).ok()?.parse().ok()
}

/// Whether a Redisson acquire takes a fence, and what its reply says of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fence {
    None,
    /// Taken with a first hold, not reported (FencedLock's plain `lock()`).
    Silent,
    /// Taken and reported (FencedLock's `lockAndGetToken()`).
    Token,
}

/// What a Redisson acquire got.
pub(super) enum Taken {
    /// Held by the owner now; the fence when one was reported.
    Yes(i64),
    /// Held by someone else, for about this many ms more.
    HeldFor(i64),
}

/// What Redisson's clients wait when a lock is held but no quorum agrees on its holder (an
/// acquire or a swap that missed a quorum, until it expires): they retry after it.
const REDISSON_UNSETTLED_MS: i64 = 100;

/// Redisson's tryLock: a first hold takes the lock with token `1:<owner>` (and a fence when
/// asked); the owner's next holds raise the count by a quorum swap, so the lock stays held
/// throughout.
pub(super) async fn lock(
    locks: &Locks,
    db: u32,
    key: &[u8],
    owner: &[u8],
    lease: u64,
    fence: Fence,
) -> Result<Taken, Error> {
    let held_for = |h: Option<locks::Holder>| match h {
        Some(h) => Taken::HeldFor(i64::try_from(h.validity_ms).unwrap_or(i64::MAX)),
        None => Taken::HeldFor(REDISSON_UNSETTLED_MS),
    };
    match locks.inspect(db, key).await? {
        None => {
            let how = Acquire {
                fence: fence != Fence::None,
                ..Acquire::once(lease)
            };
            let token = token(1, owner);
            match locks.acquire(db, key, token, how).await? {
                Some(granted) => {
                    let fence = granted.fence.map_or(-1, |f| i64::try_from(f).unwrap_or(-1));
                    Ok(Taken::Yes(fence))
                }
                None => Ok(held_for(locks.inspect(db, key).await?)),
            }
        }
        Some(holder) => match holds(&holder.token, owner) {
            Some(_) if fence == Fence::Token => Err(Error::Request(
                "Redisson FencedLock taken again by its holder: the proxy grants a fence only \
                 with a first hold; unlock it first, or use lock() for a reentrant hold"
                    .into(),
            )),
            Some(count) => {
                let more = token(count + 1, owner);
                if swap_or_undo(locks, db, key, &holder.token, &more, lease).await? {
                    Ok(Taken::Yes(-1))
                } else {
                    Ok(held_for(locks.inspect(db, key).await?))
                }
            }
            None => Ok(held_for(Some(holder))),
        },
    }
}

/// How a Redisson unlock answers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unlock {
    /// A lock nobody holds counts as released (the oldest script).
    pub free_is_released: bool,
    /// The lease left to a lock still held.
    pub lease: u64,
}

/// Redisson's unlock by `owner`: one hold fewer (by a quorum swap), or the release when it was
/// the last; the answer is kept in `latch` (key, ms), itself a lock, for a retry to find.
pub(super) async fn unlock(
    locks: &Locks,
    db: u32,
    key: &[u8],
    owner: &[u8],
    how: Unlock,
    latch: Option<(Bytes, u64)>,
) -> Result<Reply, Error> {
    let latched = async {
        match &latch {
            Some((latch, _)) => locks.inspect(db, latch).await,
            None => Ok(None),
        }
    };
    let (holder, latched) = futures_util::join!(locks.inspect(db, key), latched);
    if let Some(latched) = latched? {
        if let Some(answer) = std::str::from_utf8(&latched.token)
            .ok()
            .and_then(|t| t.parse().ok())
        {
            return Ok(Reply::Integer(answer));
        }
    }
    let answer = match holder? {
        None => how.free_is_released.then_some(1),
        Some(holder) => match holds(&holder.token, owner) {
            None => None,
            Some(count) if count > 1 => {
                let fewer = token(count - 1, owner);
                let swapped = swap_or_undo(locks, db, key, &holder.token, &fewer, how.lease);
                swapped.await?.then_some(0)
            }
            // The release is announced: Redisson's subscribers hear "0" from the proxy.
            Some(_) => locks.release(db, key, &holder.token).await?.then_some(1),
        },
    };
    let Some(answer) = answer else {
        return Ok(Reply::Null);
    };
    if let Some((latch, ms)) = latch {
        // Only a retry reads it: failing to keep it costs that retry a nil, never a lock.
        let token = Bytes::from(answer.to_string());
        let _ = locks.acquire(db, &latch, token, Acquire::once(ms)).await;
    }
    Ok(Reply::Integer(answer))
}

/// Swaps `key`'s token `from` for `to` (a Redisson hold count changing); when no quorum did
/// in time, puts `from` back where `to` landed, so the count the client was told stands.
async fn swap_or_undo(
    locks: &Locks,
    db: u32,
    key: &[u8],
    from: &[u8],
    to: &[u8],
    lease: u64,
) -> Result<bool, Error> {
    if locks.swap(db, key, from, to, lease).await? {
        return Ok(true);
    }
    // Best effort: a master that keeps `to` still keeps everyone else out until it expires.
    let _ = locks.swap(db, key, to, from, lease).await;
    Ok(false)
}

/// Redisson's watchdog: extends `key` to `lease` if `owner` holds it.
pub(super) async fn renew(
    locks: &Locks,
    db: u32,
    key: &[u8],
    owner: &[u8],
    lease: u64,
) -> Result<bool, Error> {
    match locks.inspect(db, key).await? {
        Some(h) if holds(&h.token, owner).is_some() => {
            Ok(locks.extend(db, key, &h.token, lease).await?)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redisson_tokens_count_the_owners_holds() {
        let t = token(2, b"8f1c:1");
        assert_eq!(&t[..], b"2:8f1c:1");
        assert_eq!(holds(&t, b"8f1c:1"), Some(2));
        assert_eq!(holds(&t, b"8f1c:2"), None);
        assert_eq!(holds(b"plain-token", b"8f1c:1"), None);
        assert_eq!(holds(b"x:8f1c:1", b"8f1c:1"), None);
    }
}
