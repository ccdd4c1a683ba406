//! Lock tokens: 128 bits from the thread-local CSPRNG, as 32 lowercase hex characters so they
//! print cleanly in every client. A read lock's token adds `:s`; a permit's adds its slot and
//! the semaphore's count (`:<slot>:<count>`, see [`crate::backend::permit_token`]), so
//! `UNLOCK`, `EXTEND` and `LOCKTTL` know from the token alone what it holds.

use bytes::Bytes;
use rand::Rng;

/// Length of a generated token, in bytes of text.
pub const TOKEN_LEN: usize = 32;

/// A fresh, unguessable token.
pub fn generate() -> Bytes {
    let mut raw = [0u8; TOKEN_LEN / 2];
    rand::rng().fill_bytes(&mut raw);
    let mut text = Vec::with_capacity(TOKEN_LEN);
    for b in raw {
        text.push(HEX[usize::from(b >> 4)]);
        text.push(HEX[usize::from(b & 0x0f)]);
    }
    Bytes::from(text)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What a token holds, read from its form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// A mutex or a writer: any token not of the two forms below.
    Exclusive,
    /// A read lock: a generated token with `:s`.
    Shared,
    /// A permit: a generated token (`base`) with its slot and the semaphore's count.
    Permit {
        /// The acquire's own token, shared by every slot it may have taken.
        base: Bytes,
        /// The slot it holds.
        slot: u32,
        /// The semaphore's count.
        permits: u32,
    },
}

/// A read lock's token: a fresh one with `:s`.
pub fn shared() -> Bytes {
    Bytes::from([&generate()[..], b":s"].concat())
}

/// What `token` holds.
pub fn holds(token: &Bytes) -> Holds {
    let generated = |t: &[u8]| t.len() == TOKEN_LEN && t.iter().all(|c| HEX.contains(c));
    if token.len() <= TOKEN_LEN + 1 || token[TOKEN_LEN] != b':' || !generated(&token[..TOKEN_LEN]) {
        return Holds::Exclusive;
    }
    let rest = &token[TOKEN_LEN + 1..];
    if rest == b"s" {
        return Holds::Shared;
    }
    let number = |t: &[u8]| {
        let canonical = !t.is_empty() && (t == b"0" || t[0] != b'0');
        canonical
            .then(|| std::str::from_utf8(t).ok()?.parse::<u32>().ok())
            .flatten()
    };
    let mut parts = rest.splitn(2, |c| *c == b':');
    match (parts.next().and_then(number), parts.next().and_then(number)) {
        (Some(slot), Some(permits)) if slot < permits => Holds::Permit {
            base: token.slice(..TOKEN_LEN),
            slot,
            permits,
        },
        _ => Holds::Exclusive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_says_what_it_holds() {
        let base = generate();
        assert_eq!(holds(&base), Holds::Exclusive);
        assert_eq!(holds(&shared()), Holds::Shared);
        let permit = crate::backend::permit_token(&base, 3, 4);
        assert_eq!(
            holds(&permit),
            Holds::Permit {
                base: base.clone(),
                slot: 3,
                permits: 4
            }
        );
        for other in ["x:s", "uuid:1:2", "", ":s"] {
            assert_eq!(holds(&Bytes::from(other)), Holds::Exclusive, "{other}");
        }
        for odd in [":4:4", ":01:4", ":1:", ":1:4:5", ":s:"] {
            let t = Bytes::from([&base[..], odd.as_bytes()].concat());
            assert_eq!(holds(&t), Holds::Exclusive, "{odd}");
        }
    }

    #[test]
    fn tokens_are_hex_and_distinct() {
        let tokens: std::collections::HashSet<Bytes> = (0..1000).map(|_| generate()).collect();
        assert_eq!(tokens.len(), 1000);
        for t in &tokens {
            assert_eq!(t.len(), TOKEN_LEN);
            assert!(
                t.iter()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }
}
