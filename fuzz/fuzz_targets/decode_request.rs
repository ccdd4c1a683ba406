//! Request decoding on arbitrary bytes: no panic, caps always hold, and the
//! outcome does not depend on how the bytes are split into reads.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use redlock_proxy::protocol::{Limits, ParseError, decode};

/// Limits small enough for random input to hit every cap.
const TINY: Limits = Limits {
    max_args: 3,
    max_bulk_bytes: 8,
    max_inline_bytes: 16,
    unauthenticated: false,
};

/// Appends `chunks` one by one, decoding until `None` or an error after each;
/// returns the requests in order, then the error that ended the stream.
fn decode_stream(chunks: [&[u8]; 2], limits: &Limits) -> Vec<Result<Vec<Bytes>, ParseError>> {
    let mut buf = BytesMut::new();
    let mut outcome = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decode(&mut buf, limits) {
                Ok(Some(argv)) => {
                    let consumed = before.len() - buf.len();
                    assert!(consumed > 0, "a request consumes bytes");
                    assert!(argv.len() <= limits.max_args);
                    assert!(argv.iter().all(|arg| arg.len() <= limits.max_bulk_bytes));
                    if before.first() != Some(&b'*') {
                        let total: usize = argv.iter().map(Bytes::len).sum();
                        assert!(total <= limits.max_inline_bytes);
                        assert!(consumed <= limits.max_inline_bytes + 2);
                    }
                    outcome.push(Ok(argv));
                }
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete request leaves the buffer");
                    break;
                }
                Err(e) => {
                    outcome.push(Err(e));
                    return outcome;
                }
            }
        }
    }
    outcome
}

fuzz_target!(|data: &[u8]| {
    for limits in [Limits::default(), TINY, Limits::default().unauthenticated()] {
        let whole = decode_stream([data, &[]], &limits);
        let at = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
        let (head, tail) = data.split_at(at);
        assert_eq!(decode_stream([head, tail], &limits), whole);
    }
});
