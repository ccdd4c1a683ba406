//! Lock tokens: 128 bits from the thread-local CSPRNG, as 32 lowercase hex characters so they
//! print cleanly in every client.

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

#[cfg(test)]
mod tests {
    use super::*;

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
