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
/// Most arguments in one request before the connection has authenticated: Redis's cap since
/// CVE-2021-32675, enough for `AUTH` and `HELLO 3 AUTH user pass SETNAME name`.
pub const UNAUTHENTICATED_MAX_ARGS: usize = 10;
/// Largest argument before the connection has authenticated, in bytes (Redis's cap).
pub const UNAUTHENTICATED_MAX_BULK_BYTES: usize = 16 * 1024;

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
    /// The connection has not authenticated: a count or length over the caps gets Redis's
    /// `unauthenticated` errors, so the client learns why.
    pub unauthenticated: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: DEFAULT_MAX_ARGS,
            max_bulk_bytes: DEFAULT_MAX_BULK_BYTES,
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
            unauthenticated: false,
        }
    }
}

impl Limits {
    /// These limits for a connection that has not authenticated: at most
    /// [`UNAUTHENTICATED_MAX_ARGS`] arguments of [`UNAUTHENTICATED_MAX_BULK_BYTES`] each, so a
    /// stranger can make the proxy buffer a few hundred KiB at most, never a whole request.
    pub fn unauthenticated(self) -> Limits {
        Limits {
            max_args: self.max_args.min(UNAUTHENTICATED_MAX_ARGS),
            max_bulk_bytes: self.max_bulk_bytes.min(UNAUTHENTICATED_MAX_BULK_BYTES),
            max_inline_bytes: self.max_inline_bytes,
            unauthenticated: true,
        }
    }

    fn too_many_args(&self) -> ParseError {
        if self.unauthenticated {
            ParseError::UnauthenticatedMultibulkLength
        } else {
            ParseError::InvalidMultibulkLength
        }
    }

    fn too_long_arg(&self) -> ParseError {
        if self.unauthenticated {
            ParseError::UnauthenticatedBulkLength
        } else {
            ParseError::InvalidBulkLength
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
    /// A `*<n>` count over the cap for a connection that has not authenticated.
    UnauthenticatedMultibulkLength,
    /// A `$<n>` length over the cap for a connection that has not authenticated.
    UnauthenticatedBulkLength,
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
            ParseError::UnauthenticatedMultibulkLength => {
                f.write_str("unauthenticated multibulk length")
            }
            ParseError::UnauthenticatedBulkLength => f.write_str("unauthenticated bulk length"),
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
        .ok_or_else(|| limits.too_many_args())?;

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
        let len = usize::try_from(len).map_err(|_| ParseError::InvalidBulkLength)?;
        if len > limits.max_bulk_bytes {
            return Err(limits.too_long_arg());
        }
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
mod tests;
