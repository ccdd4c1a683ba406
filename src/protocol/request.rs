//! Decoding client requests: RESP multibulk arrays and inline commands.
//!
//! The rules and error texts follow Redis 7.0 (`processMultibulkBuffer`,
//! `processInlineBuffer`, `sdssplitargs`), with two stricter checks: the two
//! bytes after a bulk payload must be CRLF, and inline commands obey the same
//! argument count and size caps as multibulk ones.

use std::fmt;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

/// Default cap on the number of arguments in one request.
pub const DEFAULT_MAX_ARGS: usize = 1024;
/// Default cap on the size of one argument, in bytes.
pub const DEFAULT_MAX_BULK_BYTES: usize = 512 * 1024;
/// Default cap on the length of an inline command line, in bytes.
pub const DEFAULT_MAX_INLINE_BYTES: usize = 64 * 1024;

/// Longest `*<n>` or `$<n>` header line accepted before its CR, as Redis's
/// `PROTO_INLINE_MAX_SIZE`.
const MAX_HEADER_LINE: usize = 64 * 1024;

/// Caps on what one request may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one request (command name included).
    pub max_args: usize,
    /// Largest single argument, in bytes.
    pub max_bulk_bytes: usize,
    /// Longest inline command line, in bytes, without its line ending.
    pub max_inline_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: DEFAULT_MAX_ARGS,
            max_bulk_bytes: DEFAULT_MAX_BULK_BYTES,
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
        }
    }
}

/// A malformed request stream; its `Display` is Redis's error text without
/// the leading `ERR `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A `*<n>` count that is not a number or exceeds `max_args`.
    InvalidMultibulkLength,
    /// A `$<n>` length that is not a number, negative, or exceeds `max_bulk_bytes`.
    InvalidBulkLength,
    /// Something other than `$` where a bulk header was expected.
    ExpectedDollar(u8),
    /// A bulk payload not followed by CRLF.
    MissingBulkTerminator,
    /// An inline line longer than `max_inline_bytes`, or with more or larger
    /// arguments than the caps allow.
    TooBigInlineRequest,
    /// A `*` header line over 64 KiB.
    TooBigMultibulkCount,
    /// A `$` header line over 64 KiB.
    TooBigBulkCount,
    /// An inline quote left open, or a closing quote followed by a non-space.
    UnbalancedQuotes,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            ParseError::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            ParseError::InvalidBulkLength => f.write_str("invalid bulk length"),
            ParseError::ExpectedDollar(b) => write!(f, "expected '$', got '{}'", char::from(*b)),
            ParseError::MissingBulkTerminator => f.write_str("expected CRLF after bulk data"),
            ParseError::TooBigInlineRequest => f.write_str("too big inline request"),
            ParseError::TooBigMultibulkCount => f.write_str("too big mbulk count string"),
            ParseError::TooBigBulkCount => f.write_str("too big bulk count string"),
            ParseError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Decode one request from the front of `buf`.
///
/// - `Ok(None)`: the request is incomplete and `buf` is untouched; call again
///   when more bytes have arrived.
/// - `Ok(Some(argv))`: one request, whose bytes have been removed from the
///   front of `buf`. Multibulk arguments share the request's buffer. An empty
///   `argv` means there is nothing to run and nothing to reply (an empty or
///   blank inline line, `*0`, `*-1`).
/// - `Err(e)`: the stream is malformed; reply `-ERR {e}` and close the
///   connection. `buf` is then unspecified.
///
/// The outcome depends only on the bytes, never on how they were split into
/// reads: a prefix of a stream decodes to `Ok(None)` or to what the whole
/// stream decodes to.
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ParseError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => decode_multibulk(buf, limits),
        Some(_) => decode_inline(buf, limits),
    }
}

/// Which header line is being read, to pick the matching errors.
#[derive(Clone, Copy)]
enum Header {
    Multibulk,
    Bulk,
}

impl Header {
    fn invalid(self) -> ParseError {
        match self {
            Header::Multibulk => ParseError::InvalidMultibulkLength,
            Header::Bulk => ParseError::InvalidBulkLength,
        }
    }

    fn too_big(self) -> ParseError {
        match self {
            Header::Multibulk => ParseError::TooBigMultibulkCount,
            Header::Bulk => ParseError::TooBigBulkCount,
        }
    }
}

fn decode_multibulk(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ParseError> {
    let data: &[u8] = buf;
    let Some((count, pos)) = read_header(data, 0, Header::Multibulk)? else {
        return Ok(None);
    };
    if count <= 0 {
        buf.advance(pos);
        return Ok(Some(Vec::new()));
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= limits.max_args)
        .ok_or(ParseError::InvalidMultibulkLength)?;

    // The frame can only be split off, and arguments sliced from it, once
    // all of it has arrived: a first walk checks that without allocating, so
    // the argument list is sized by a count its bytes have backed.
    let Some(end) = walk_bulks(data, pos, count, limits, |_| {})? else {
        return Ok(None);
    };
    let frame = buf.split_to(end).freeze();
    let mut argv = Vec::with_capacity(count);
    let again = walk_bulks(&frame, pos, count, limits, |range| {
        argv.push(frame.slice(range))
    });
    debug_assert_eq!(again, Ok(Some(end)));
    Ok(Some(argv))
}

/// Walks `count` bulk strings starting at `pos`, passing each payload's
/// range to `on_bulk`, and returns the position after the last one.
fn walk_bulks(
    data: &[u8],
    mut pos: usize,
    count: usize,
    limits: &Limits,
    mut on_bulk: impl FnMut(Range<usize>),
) -> Result<Option<usize>, ParseError> {
    for _ in 0..count {
        match data.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(ParseError::ExpectedDollar(other)),
        }
        let Some((len, start)) = read_header(data, pos, Header::Bulk)? else {
            return Ok(None);
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= limits.max_bulk_bytes)
            .ok_or(ParseError::InvalidBulkLength)?;
        let end = start
            .checked_add(len)
            .ok_or(ParseError::InvalidBulkLength)?;
        let Some(terminator) = data.get(end..end.saturating_add(2)) else {
            return Ok(None);
        };
        if terminator != b"\r\n" {
            return Err(ParseError::MissingBulkTerminator);
        }
        on_bulk(start..end);
        pos = end + 2;
    }
    Ok(Some(pos))
}

/// Reads the `*<n>\r\n` or `$<n>\r\n` line whose prefix byte is at `at`,
/// returning the number and the position after the line.
///
/// Like Redis, the number ends at the first CR, and a line over
/// [`MAX_HEADER_LINE`] is refused whether or not its CR has arrived.
fn read_header(data: &[u8], at: usize, kind: Header) -> Result<Option<(i64, usize)>, ParseError> {
    let rest = data.get(at..).unwrap_or_default();
    let window = rest.get(..MAX_HEADER_LINE + 1).unwrap_or(rest);
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if rest.len() > MAX_HEADER_LINE {
            Err(kind.too_big())
        } else {
            Ok(None)
        };
    };
    let value = rest.get(1..cr).and_then(parse_int).ok_or(kind.invalid())?;
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((value, at + cr + 2))),
        Some(_) => Err(kind.invalid()),
    }
}

/// Parses a decimal integer the way Redis's `string2ll` does: an optional
/// `-`, then digits without leading zeros; no `+`, no spaces, no overflow.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', digits @ ..] => (true, digits),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

fn decode_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ParseError> {
    // The cap excludes the line ending, which may be two bytes.
    let longest = limits.max_inline_bytes.saturating_add(2);
    let data: &[u8] = buf;
    let window = data.get(..longest).unwrap_or(data);
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if data.len() >= longest {
            Err(ParseError::TooBigInlineRequest)
        } else {
            Ok(None)
        };
    };
    let line = data.get(..newline).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limits.max_inline_bytes {
        return Err(ParseError::TooBigInlineRequest);
    }
    let argv = split_args(line, limits)?;
    buf.advance(newline + 1);
    Ok(Some(argv))
}

/// `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The value of an ASCII hex digit (callers check `is_ascii_hexdigit`).
fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Splits an inline line into arguments like Redis's `sdssplitargs`.
///
/// Unlike C strings, a NUL byte is an ordinary character here instead of
/// silently ending the line.
fn split_args(line: &[u8], limits: &Limits) -> Result<Vec<Bytes>, ParseError> {
    enum Mode {
        Bare,
        Double,
        Single,
    }

    let mut argv = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).copied().is_some_and(is_space) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(argv);
        }
        if argv.len() >= limits.max_args {
            return Err(ParseError::TooBigInlineRequest);
        }
        let mut arg = Vec::new();
        let mut mode = Mode::Bare;
        loop {
            let rest = line.get(i..).unwrap_or_default();
            match mode {
                Mode::Bare => match rest {
                    [] => break,
                    // A bare token ends at these only, not at every `isspace`
                    // byte, exactly as in Redis.
                    [b' ' | b'\n' | b'\r' | b'\t', ..] => {
                        i += 1;
                        break;
                    }
                    [b'"', ..] => mode = Mode::Double,
                    [b'\'', ..] => mode = Mode::Single,
                    [b, ..] => arg.push(*b),
                },
                Mode::Double => match rest {
                    [] => return Err(ParseError::UnbalancedQuotes),
                    [b'\\', b'x', hi, lo, ..]
                        if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() =>
                    {
                        arg.push(hex_value(*hi) << 4 | hex_value(*lo));
                        i += 3;
                    }
                    [b'\\', escaped, ..] => {
                        arg.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => *other,
                        });
                        i += 1;
                    }
                    [b'"', rest @ ..] => {
                        closing_quote(rest)?;
                        i += 1;
                        break;
                    }
                    [b, ..] => arg.push(*b),
                },
                Mode::Single => match rest {
                    [] => return Err(ParseError::UnbalancedQuotes),
                    [b'\\', b'\'', ..] => {
                        arg.push(b'\'');
                        i += 1;
                    }
                    [b'\'', rest @ ..] => {
                        closing_quote(rest)?;
                        i += 1;
                        break;
                    }
                    [b, ..] => arg.push(*b),
                },
            }
            i += 1;
        }
        if arg.len() > limits.max_bulk_bytes {
            return Err(ParseError::TooBigInlineRequest);
        }
        argv.push(Bytes::from(arg));
    }
}

/// A closing quote must be followed by a space or the end of the line.
fn closing_quote(after: &[u8]) -> Result<(), ParseError> {
    match after.first() {
        Some(&b) if !is_space(b) => Err(ParseError::UnbalancedQuotes),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a stream decodes to: the requests in order, then the error that
    /// ended it if any.
    type Outcome = Vec<Result<Vec<Vec<u8>>, ParseError>>;

    fn argv_of(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    /// Appends `chunks` one after another, decoding as far as possible after
    /// each, until the stream ends or fails. Returns the outcome and the
    /// undecoded rest (empty after an error, where it is unspecified).
    fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limits: &Limits) -> (Outcome, Vec<u8>) {
        let mut buf = BytesMut::new();
        let mut outcome = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let before = buf.clone();
                match decode(&mut buf, limits) {
                    Ok(Some(argv)) => {
                        assert!(buf.len() < before.len(), "a request consumes bytes");
                        check_caps(&argv, &before[..before.len() - buf.len()], limits);
                        outcome.push(Ok(argv.iter().map(|a| a.to_vec()).collect()));
                    }
                    Ok(None) => {
                        assert_eq!(buf, before, "an incomplete request leaves the buffer");
                        break;
                    }
                    Err(e) => {
                        outcome.push(Err(e));
                        return (outcome, Vec::new());
                    }
                }
            }
        }
        (outcome, buf.to_vec())
    }

    fn feed_whole(stream: &[u8], limits: &Limits) -> (Outcome, Vec<u8>) {
        feed([stream], limits)
    }

    fn check_caps(argv: &[Bytes], frame: &[u8], limits: &Limits) {
        assert!(argv.len() <= limits.max_args, "{} args", argv.len());
        for arg in argv {
            assert!(
                arg.len() <= limits.max_bulk_bytes,
                "arg of {} bytes",
                arg.len()
            );
        }
        if frame.first() != Some(&b'*') {
            let line = frame
                .strip_suffix(b"\n")
                .expect("an inline request is a line");
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(line.len() <= limits.max_inline_bytes);
        }
    }

    /// Decodes exactly one request from `input`, expecting it all consumed.
    fn decode_one(input: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ParseError> {
        let mut buf = BytesMut::from(input);
        let argv = decode(&mut buf, &Limits::default())?;
        if argv.is_some() {
            assert!(buf.is_empty(), "left {:?}", buf);
        }
        Ok(argv.map(|argv| argv.iter().map(|a| a.to_vec()).collect()))
    }

    fn error_text(input: &[u8], limits: &Limits) -> String {
        let mut buf = BytesMut::from(input);
        match decode(&mut buf, limits) {
            Err(e) => e.to_string(),
            other => panic!("{input:?} decoded to {other:?}"),
        }
    }

    fn tiny_limits() -> Limits {
        Limits {
            max_args: 3,
            max_bulk_bytes: 8,
            max_inline_bytes: 16,
        }
    }

    #[test]
    fn multibulk_arguments_share_the_frame() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let argv = decode(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(argv, [&b"GET"[..], &b"key"[..]]);
        assert!(buf.is_empty());
        assert_eq!(argv[0].as_ptr() as usize, base + 8);
        assert_eq!(argv[1].as_ptr() as usize, base + 17);
    }

    #[test]
    fn binary_and_empty_bulks() {
        assert_eq!(
            decode_one(b"*3\r\n$0\r\n\r\n$4\r\n\r\n\0\xff\r\n$1\r\n*\r\n"),
            Ok(Some(vec![
                b"".to_vec(),
                b"\r\n\0\xff".to_vec(),
                b"*".to_vec()
            ]))
        );
    }

    #[test]
    fn pipelined_requests_decode_in_order() {
        let mut buf = BytesMut::from(
            &b"*1\r\n$4\r\nPING\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$4\r\nLO"[..],
        );
        let limits = Limits::default();
        let mut next = || decode(&mut buf, &limits).unwrap().map(|argv| argv.to_vec());
        assert_eq!(next(), Some(vec![Bytes::from("PING")]));
        assert_eq!(next(), Some(vec![Bytes::from("PING")]));
        assert_eq!(next(), Some(vec![Bytes::from("GET"), Bytes::from("k")]));
        assert_eq!(next(), None);
        assert_eq!(&buf[..], b"*3\r\n$4\r\nLO");
    }

    #[test]
    fn requests_with_nothing_to_run() {
        for input in [
            &b"*0\r\n"[..],
            b"*-1\r\n",
            b"*-5\r\n",
            b"\r\n",
            b"\n",
            b" \t \r\n",
            b"\x0b\x0c\n",
        ] {
            assert_eq!(decode_one(input), Ok(Some(vec![])), "{input:?}");
        }
    }

    #[test]
    fn incomplete_requests() {
        for input in [
            &b""[..],
            b"*",
            b"*2",
            b"*2\r",
            b"*2\r\n",
            b"*2\r\n$",
            b"*2\r\n$3\r",
            b"*2\r\n$3\r\nGE",
            b"*2\r\n$3\r\nGET\r",
            b"*2\r\n$3\r\nGET\r\n",
            b"PING",
            b"PING\r",
            b"\"unterminated",
        ] {
            assert_eq!(decode_one(input), Ok(None), "{input:?}");
        }
    }

    #[test]
    fn numbers_follow_redis_string2ll() {
        for bad in [
            "",
            "+1",
            " 1",
            "1 ",
            "01",
            "-0",
            "-",
            "1a",
            "0x1",
            "99999999999999999999",
        ] {
            let multibulk = format!("*{bad}\r\n");
            assert_eq!(
                decode_one(multibulk.as_bytes()),
                Err(ParseError::InvalidMultibulkLength)
            );
            let bulk = format!("*1\r\n${bad}\r\n");
            assert_eq!(
                decode_one(bulk.as_bytes()),
                Err(ParseError::InvalidBulkLength)
            );
        }
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"-9223372036854775809"), None);
        assert_eq!(decode_one(b"*-9223372036854775808\r\n"), Ok(Some(vec![])));
        assert_eq!(
            decode_one(b"*1\r\n$-1\r\n"),
            Err(ParseError::InvalidBulkLength)
        );
    }

    #[test]
    fn header_cr_must_be_followed_by_lf() {
        assert_eq!(
            decode_one(b"*1\rX"),
            Err(ParseError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_one(b"*1\r\n$3\rXfoo\r\n"),
            Err(ParseError::InvalidBulkLength)
        );
        // The number ends at the first CR, as in Redis.
        assert_eq!(
            decode_one(b"*1\n$3\r\n"),
            Err(ParseError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn non_dollar_bulk_header_fails_on_its_first_byte() {
        assert_eq!(
            decode_one(b"*1\r\n:3\r\n"),
            Err(ParseError::ExpectedDollar(b':'))
        );
        assert_eq!(
            decode_one(b"*2\r\n$1\r\na\r\nX"),
            Err(ParseError::ExpectedDollar(b'X'))
        );
    }

    #[test]
    fn bulk_payload_must_end_with_crlf() {
        assert_eq!(
            decode_one(b"*1\r\n$3\r\nfooXY"),
            Err(ParseError::MissingBulkTerminator)
        );
        assert_eq!(
            decode_one(b"*1\r\n$3\r\nfoo\rX"),
            Err(ParseError::MissingBulkTerminator)
        );
        assert_eq!(
            decode_one(b"*1\r\n$3\r\nfoo\n\r"),
            Err(ParseError::MissingBulkTerminator)
        );
    }

    #[test]
    fn caps_fail_before_waiting_for_data() {
        let limits = Limits::default();
        assert_eq!(decode_one(b"*1024\r\n"), Ok(None));
        assert_eq!(
            error_text(b"*1025\r\n", &limits),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(decode_one(b"*1\r\n$524288\r\n"), Ok(None));
        assert_eq!(
            error_text(b"*1\r\n$524289\r\n", &limits),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            decode_one(b"*1\r\n$999999999\r\n"),
            Err(ParseError::InvalidBulkLength)
        );

        let tiny = tiny_limits();
        assert_eq!(
            feed_whole(b"*3\r\n$8\r\n12345678\r\n$0\r\n\r\n$1\r\nx\r\n", &tiny).0,
            [Ok(argv_of(&["12345678", "", "x"]))]
        );
        assert_eq!(
            error_text(b"*4\r\n", &tiny),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            error_text(b"*1\r\n$9\r\n", &tiny),
            "Protocol error: invalid bulk length"
        );
    }

    #[test]
    fn overlong_header_lines() {
        let limits = Limits::default();
        let mut count = b"*".to_vec();
        count.resize(MAX_HEADER_LINE, b'1');
        assert_eq!(decode_one(&count), Ok(None));
        count.push(b'1');
        assert_eq!(
            error_text(&count, &limits),
            "Protocol error: too big mbulk count string"
        );
        // Refused the same whether or not the CR has arrived yet.
        count.extend_from_slice(b"\r\n");
        assert_eq!(decode_one(&count), Err(ParseError::TooBigMultibulkCount));

        let mut bulk = b"*1\r\n$".to_vec();
        bulk.resize(4 + MAX_HEADER_LINE, b'9');
        assert_eq!(decode_one(&bulk), Ok(None));
        bulk.push(b'9');
        assert_eq!(
            error_text(&bulk, &limits),
            "Protocol error: too big bulk count string"
        );
    }

    #[test]
    fn overlong_inline_lines() {
        let limits = Limits::default();
        let mut line = vec![b'a'; DEFAULT_MAX_INLINE_BYTES];
        assert_eq!(decode_one(&line), Ok(None));
        line.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_one(&line).unwrap().unwrap()[0].len(),
            DEFAULT_MAX_INLINE_BYTES
        );

        let mut line = vec![b'a'; DEFAULT_MAX_INLINE_BYTES + 1];
        assert_eq!(decode_one(&line), Ok(None), "may still end in CRLF");
        line.push(b'\n');
        assert_eq!(decode_one(&line), Err(ParseError::TooBigInlineRequest));
        line.insert(DEFAULT_MAX_INLINE_BYTES + 1, b'\r');
        assert_eq!(decode_one(&line), Err(ParseError::TooBigInlineRequest));
        line.truncate(DEFAULT_MAX_INLINE_BYTES + 2);
        assert_eq!(
            error_text(&line, &limits),
            "Protocol error: too big inline request"
        );
    }

    #[test]
    fn inline_requests_obey_the_argument_caps() {
        let tiny = tiny_limits();
        assert_eq!(
            feed_whole(b"a b c\n", &tiny).0,
            [Ok(argv_of(&["a", "b", "c"]))]
        );
        assert_eq!(
            feed_whole(b"a b c d\n", &tiny).0,
            [Err(ParseError::TooBigInlineRequest)]
        );
        assert_eq!(
            feed_whole(b"12345678\n", &tiny).0,
            [Ok(argv_of(&["12345678"]))]
        );
        assert_eq!(
            feed_whole(b"123456789\n", &tiny).0,
            [Err(ParseError::TooBigInlineRequest)]
        );
    }

    #[test]
    fn inline_splitting_follows_sdssplitargs() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"PING\r\n", &[b"PING"]),
            (b"SET k v\n", &[b"SET", b"k", b"v"]),
            (b"  SET\tk   v \t \r\n", &[b"SET", b"k", b"v"]),
            (b"\"a b\" 'c d'\r\n", &[b"a b", b"c d"]),
            (b"\"\" ''\n", &[b"", b""]),
            (
                b"\"\\n\\r\\t\\b\\a\\\\\\\"\\x41\\x7a\\xzz\\q'\"\n",
                &[b"\n\r\t\x08\x07\\\"Azxzzq'"],
            ),
            (b"\"\\xff\\x00\"\n", &[b"\xff\0"]),
            (b"'it\\'s' 'a\\nb\"'\n", &[b"it's", b"a\\nb\""]),
            (b"ab\"c d\" x'y'\n", &[b"abc d", b"xy"]),
            (b"a\\nb\n", &[b"a\\nb"]),
            (b"a\rb\r\r\n", &[b"a", b"b"]),
            (b"\"a\"\tb\n", &[b"a", b"b"]),
            (b"\"a\"\x0bb\n", &[b"a", b"b"]),
            (b"\x0ba\x0bb\x0c\n", &[b"a\x0bb\x0c"]),
            (b"a\0b\n", &[b"a\0b"]),
            (b"$3\r\n", &[b"$3"]),
        ];
        for (input, expected) in cases {
            let expected: Vec<Vec<u8>> = expected.iter().map(|a| a.to_vec()).collect();
            assert_eq!(
                decode_one(input),
                Ok(Some(expected)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn unbalanced_quotes() {
        for input in [
            &b"\"abc\n"[..],
            b"'abc\n",
            b"\"a\"b\n",
            b"'a'b\n",
            b"\"a\\\"\n",
            b"\"a\\\n",
            b"'a\\'\n",
            b"x \"a\n",
        ] {
            assert_eq!(
                error_text(input, &Limits::default()),
                "Protocol error: unbalanced quotes in request",
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn error_texts() {
        let cases = [
            (
                ParseError::InvalidMultibulkLength,
                "Protocol error: invalid multibulk length",
            ),
            (
                ParseError::InvalidBulkLength,
                "Protocol error: invalid bulk length",
            ),
            (
                ParseError::ExpectedDollar(b'x'),
                "Protocol error: expected '$', got 'x'",
            ),
            (
                ParseError::MissingBulkTerminator,
                "Protocol error: expected CRLF after bulk data",
            ),
            (
                ParseError::TooBigInlineRequest,
                "Protocol error: too big inline request",
            ),
            (
                ParseError::TooBigMultibulkCount,
                "Protocol error: too big mbulk count string",
            ),
            (
                ParseError::TooBigBulkCount,
                "Protocol error: too big bulk count string",
            ),
            (
                ParseError::UnbalancedQuotes,
                "Protocol error: unbalanced quotes in request",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    /// Streams of several requests, each also ending in each way a stream can end.
    fn sample_streams() -> Vec<Vec<u8>> {
        let requests: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\n\0x\r\n\
            PING\r\n\
            \r\n\
            *0\r\n\
            *4\r\n$4\r\nLOCK\r\n$16\r\nkey:000000000123\r\n$4\r\n5000\r\n$0\r\n\r\n\
            SET \"a b\" 'c' \"\\x41\"\n\
            *-1\r\n\
            \t \n\
            *1\r\n$4\r\nPING\r\n";
        let endings: &[&[u8]] = &[
            b"",
            b"*2\r\n$3\r\nGET\r\n$2\r\nk",
            b"GET k",
            b"*1\r\n$9999999\r\n",
            b"*1\r\n@",
            b"*1\r\n$1\r\nab\r\n",
            b"\"open\n",
        ];
        endings.iter().map(|end| [requests, end].concat()).collect()
    }

    #[test]
    fn split_reads_decode_like_the_whole_stream() {
        let limits = Limits::default();
        for stream in sample_streams() {
            let whole = feed_whole(&stream, &limits);
            assert!(whole.0.len() >= 9, "{whole:?}");
            for at in 0..=stream.len() {
                let (head, tail) = stream.split_at(at);
                assert_eq!(feed([head, tail], &limits), whole, "split at {at}");
            }
            assert_eq!(feed(stream.chunks(1), &limits), whole, "byte at a time");
        }
    }

    /// Bytes that are mostly protocol syntax, so that random input gets deep.
    fn protocol_noise() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            Just(b"\r\n".to_vec()),
            Just(b"*".to_vec()),
            Just(b"$".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"'".to_vec()),
            Just(b"\\".to_vec()),
            Just(b" ".to_vec()),
            Just(b"-".to_vec()),
            (0u32..12).prop_map(|n| n.to_string().into_bytes()),
            (0u32..4).prop_map(|n| format!("*{n}\r\n").into_bytes()),
            "[a-z]{0,9}".prop_map(|s| format!("${}\r\n{s}\r\n", s.len()).into_bytes()),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..10), 0..5)
                .prop_map(|argv| encode_multibulk(&argv)),
            "[a-z]{1,4}".prop_map(String::into_bytes),
        ];
        prop::collection::vec(piece, 0..80).prop_map(|pieces| pieces.concat())
    }

    fn encode_multibulk(argv: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", argv.len()).into_bytes();
        for arg in argv {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// An inline line quoting every byte as `\xHH`.
    fn encode_inline(argv: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for arg in argv {
            out.extend_from_slice(b" \"");
            for b in arg {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
            out.push(b'"');
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        #[test]
        fn random_input_respects_caps_and_read_splits(
            input in prop_oneof![protocol_noise(), prop::collection::vec(any::<u8>(), 0..200)],
            split in any::<prop::sample::Index>(),
            tiny in any::<bool>(),
        ) {
            // `feed` checks the caps, progress and untouched incomplete buffers.
            let limits = if tiny { tiny_limits() } else { Limits::default() };
            let whole = feed_whole(&input, &limits);
            let (head, tail) = input.split_at(split.index(input.len() + 1));
            prop_assert_eq!(feed([head, tail], &limits), whole);
        }

        #[test]
        fn encoded_requests_decode_back(
            argv in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
            split in any::<prop::sample::Index>(),
        ) {
            let limits = Limits::default();
            for stream in [encode_multibulk(&argv), encode_inline(&argv)] {
                let (head, tail) = stream.split_at(split.index(stream.len() + 1));
                let (outcome, rest) = feed([head, tail], &limits);
                prop_assert_eq!(outcome, vec![Ok(argv.clone())]);
                prop_assert!(rest.is_empty());
            }
        }
    }
}
