//! Replies and their RESP2 / RESP3 encodings.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// Reply text: usually a static literal, sometimes formatted.
pub type Str = Cow<'static, str>;

/// The protocol version a connection speaks, switched by `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, what every connection starts with.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// One reply; RESP3-only kinds fall back to their RESP2 shapes.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Simple string, `+OK`.
    Status(Str),
    /// Error with its prefix, e.g. `ERR unknown command 'x'`.
    Error(Str),
    /// Integer, `:42`.
    Integer(i64),
    /// Binary-safe string.
    Bulk(Bytes),
    /// Absent value: RESP2 `$-1`, RESP3 `_`.
    Null,
    /// Absent array, as blocking pops answer a timeout: RESP2 `*-1`, RESP3 `_`.
    NullArray,
    /// Out-of-band data (pub/sub messages): RESP3 push, RESP2 array.
    Push(Vec<Reply>),
    /// Several replies to one command, back to back (`SUBSCRIBE` of several channels).
    Sequence(Vec<Reply>),
    /// Array of replies.
    Array(Vec<Reply>),
    /// Key/value pairs: RESP3 map, RESP2 flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
    /// Unordered collection: RESP3 set, RESP2 array.
    Set(Vec<Reply>),
    /// Text for humans: RESP3 verbatim `txt`, RESP2 bulk string.
    Verbatim(Bytes),
    /// Boolean: RESP3 `#t`/`#f`, RESP2 `:1`/`:0`.
    Bool(bool),
}

impl Reply {
    /// The `+OK` status.
    pub fn ok() -> Reply {
        Reply::Status(Cow::Borrowed("OK"))
    }

    /// An error reply; `text` starts with its prefix, e.g. `ERR ...`.
    pub fn error(text: impl Into<Str>) -> Reply {
        Reply::Error(text.into())
    }

    /// A bulk string reply.
    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends this reply's encoding in `proto` to `out`.
    ///
    /// Status and error texts have any CR or LF replaced by a space, since
    /// those would end the line early and desynchronise the client.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Reply::Status(text) => put_line(out, b'+', text),
            Reply::Error(text) => put_line(out, b'-', text),
            Reply::Integer(n) => {
                out.put_u8(b':');
                put_decimal(out, n.is_negative(), n.unsigned_abs());
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(data) => put_bulk(out, data),
            Reply::Null if resp3 => out.put_slice(b"_\r\n"),
            Reply::Null => out.put_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NullArray => out.put_slice(b"*-1\r\n"),
            Reply::Push(items) => put_items(out, if resp3 { b'>' } else { b'*' }, items, proto),
            Reply::Sequence(replies) => {
                for reply in replies {
                    reply.encode(proto, out);
                }
            }
            Reply::Array(items) => put_items(out, b'*', items, proto),
            Reply::Set(items) => put_items(out, if resp3 { b'~' } else { b'*' }, items, proto),
            Reply::Map(pairs) => {
                if resp3 {
                    put_header(out, b'%', pairs.len());
                } else {
                    put_header(out, b'*', pairs.len().saturating_mul(2));
                }
                for (key, value) in pairs {
                    key.encode(proto, out);
                    value.encode(proto, out);
                }
            }
            Reply::Verbatim(text) if resp3 => {
                put_header(out, b'=', text.len() + 4);
                out.put_slice(b"txt:");
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(text) => put_bulk(out, text),
            Reply::Bool(b) if resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Bool(b) => out.put_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
        }
    }
}

fn put_line(out: &mut BytesMut, prefix: u8, text: &str) {
    out.put_u8(prefix);
    for (i, part) in text
        .as_bytes()
        .split(|&b| b == b'\r' || b == b'\n')
        .enumerate()
    {
        if i > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(part);
    }
    out.put_slice(b"\r\n");
}

fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    put_header(out, b'$', data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn put_items(out: &mut BytesMut, prefix: u8, items: &[Reply], proto: Protocol) {
    put_header(out, prefix, items.len());
    for item in items {
        item.encode(proto, out);
    }
}

fn put_header(out: &mut BytesMut, prefix: u8, len: usize) {
    out.put_u8(prefix);
    put_decimal(out, false, len as u64);
    out.put_slice(b"\r\n");
}

/// Writes a number in decimal through a stack buffer, without allocating.
fn put_decimal(out: &mut BytesMut, negative: bool, mut magnitude: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if negative {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(reply: &Reply, proto: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(proto, &mut out);
        out.to_vec()
    }

    /// Checks the encoding in RESP2 and in RESP3.
    fn check(reply: Reply, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            String::from_utf8_lossy(&encoded(&reply, Protocol::Resp2)),
            String::from_utf8_lossy(resp2),
            "{reply:?} in RESP2"
        );
        assert_eq!(
            String::from_utf8_lossy(&encoded(&reply, Protocol::Resp3)),
            String::from_utf8_lossy(resp3),
            "{reply:?} in RESP3"
        );
    }

    /// Same encoding in both protocols.
    fn check_both(reply: Reply, bytes: &[u8]) {
        check(reply, bytes, bytes);
    }

    #[test]
    fn null_array_and_push() {
        check(Reply::NullArray, b"*-1\r\n", b"_\r\n");
        check_both(
            Reply::Sequence(vec![Reply::Integer(1), Reply::Integer(2)]),
            b":1\r\n:2\r\n",
        );
        check(
            Reply::Push(vec![Reply::bulk("message"), Reply::Integer(1)]),
            b"*2\r\n$7\r\nmessage\r\n:1\r\n",
            b">2\r\n$7\r\nmessage\r\n:1\r\n",
        );
    }

    #[test]
    fn status_and_error() {
        check_both(Reply::ok(), b"+OK\r\n");
        check_both(Reply::Status("QUEUED".into()), b"+QUEUED\r\n");
        check_both(
            Reply::error("ERR unknown command 'x'"),
            b"-ERR unknown command 'x'\r\n",
        );
        check_both(
            Reply::error(String::from("NOQUORUM 1 of 3\r\nsecond\nthird\r")),
            b"-NOQUORUM 1 of 3  second third \r\n",
        );
        check_both(Reply::Status("a\nb".into()), b"+a b\r\n");
        check_both(Reply::error(""), b"-\r\n");
    }

    #[test]
    fn integers() {
        check_both(Reply::Integer(0), b":0\r\n");
        check_both(Reply::Integer(5000), b":5000\r\n");
        check_both(Reply::Integer(-1), b":-1\r\n");
        check_both(Reply::Integer(i64::MAX), b":9223372036854775807\r\n");
        check_both(Reply::Integer(i64::MIN), b":-9223372036854775808\r\n");
    }

    #[test]
    fn bulks() {
        check_both(Reply::bulk("token"), b"$5\r\ntoken\r\n");
        check_both(Reply::bulk(""), b"$0\r\n\r\n");
        check_both(
            Reply::bulk(vec![0u8, b'\r', b'\n', 0xff]),
            b"$4\r\n\0\r\n\xff\r\n",
        );
        check_both(Reply::bulk(String::from("s")), b"$1\r\ns\r\n");
        check_both(Reply::bulk(Bytes::from_static(b"b")), b"$1\r\nb\r\n");
        check_both(
            Reply::bulk(vec![b'x'; 1234]),
            &[&b"$1234\r\n"[..], &[b'x'; 1234], b"\r\n"].concat(),
        );
    }

    #[test]
    fn resp3_only_kinds_and_their_resp2_shapes() {
        check(Reply::Null, b"$-1\r\n", b"_\r\n");
        check(Reply::Bool(true), b":1\r\n", b"#t\r\n");
        check(Reply::Bool(false), b":0\r\n", b"#f\r\n");
        check(
            Reply::Verbatim(Bytes::from("hi\r\n")),
            b"$4\r\nhi\r\n\r\n",
            b"=8\r\ntxt:hi\r\n\r\n",
        );
        check(
            Reply::Verbatim(Bytes::new()),
            b"$0\r\n\r\n",
            b"=4\r\ntxt:\r\n",
        );
        check(
            Reply::Set(vec![Reply::Integer(1)]),
            b"*1\r\n:1\r\n",
            b"~1\r\n:1\r\n",
        );
        check(
            Reply::Map(vec![(Reply::bulk("k"), Reply::Integer(7))]),
            b"*2\r\n$1\r\nk\r\n:7\r\n",
            b"%1\r\n$1\r\nk\r\n:7\r\n",
        );
    }

    #[test]
    fn empty_collections() {
        check_both(Reply::Array(vec![]), b"*0\r\n");
        check(Reply::Set(vec![]), b"*0\r\n", b"~0\r\n");
        check(Reply::Map(vec![]), b"*0\r\n", b"%0\r\n");
    }

    #[test]
    fn nested_collections() {
        let hello = Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redlock")),
            (Reply::bulk("proto"), Reply::Integer(3)),
            (
                Reply::bulk("modules"),
                Reply::Array(vec![Reply::Set(vec![Reply::Null, Reply::Bool(true)])]),
            ),
        ]);
        check(
            Reply::Array(vec![hello, Reply::error("ERR x"), Reply::ok()]),
            b"*3\r\n*6\r\n$6\r\nserver\r\n$7\r\nredlock\r\n$5\r\nproto\r\n:3\r\n\
              $7\r\nmodules\r\n*1\r\n*2\r\n$-1\r\n:1\r\n-ERR x\r\n+OK\r\n",
            b"*3\r\n%3\r\n$6\r\nserver\r\n$7\r\nredlock\r\n$5\r\nproto\r\n:3\r\n\
              $7\r\nmodules\r\n*1\r\n~2\r\n_\r\n#t\r\n-ERR x\r\n+OK\r\n",
        );
    }

    #[test]
    fn encoding_appends() {
        let mut out = BytesMut::from(&b"+OK\r\n"[..]);
        Reply::Integer(1).encode(Protocol::Resp3, &mut out);
        assert_eq!(&out[..], b"+OK\r\n:1\r\n");
    }

    #[test]
    fn constructors() {
        assert_eq!(Reply::ok(), Reply::Status("OK".into()));
        assert!(Reply::error("ERR x").is_error());
        assert!(Reply::error(format!("ERR {}", 1)).is_error());
        assert!(!Reply::ok().is_error());
        assert!(!Reply::bulk("ERR").is_error());
        assert_eq!(Protocol::default(), Protocol::Resp2);
    }

    /// Reads one reply off the front of `input`, accepting only the types
    /// `proto` allows.
    fn read(input: &mut &[u8], proto: Protocol) -> Reply {
        let end = input
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a CRLF-terminated line");
        let (line, rest) = input.split_at(end);
        *input = &rest[2..];
        let (&kind, text) = line.split_first().expect("a type byte");
        let text = std::str::from_utf8(text).expect("UTF-8 line");
        let number = || text.parse::<i64>().expect("a number");
        let count = || usize::try_from(number()).expect("a count");
        let mut payload = |len: usize| {
            let (data, rest) = input.split_at(len);
            assert_eq!(&rest[..2], b"\r\n");
            *input = &rest[2..];
            Bytes::copy_from_slice(data)
        };
        let resp3 = proto == Protocol::Resp3;
        match kind {
            b'+' => Reply::Status(text.to_owned().into()),
            b'-' => Reply::Error(text.to_owned().into()),
            b':' => Reply::Integer(number()),
            b'$' if !resp3 && text == "-1" => Reply::Null,
            b'$' => Reply::Bulk(payload(count())),
            b'*' => Reply::Array((0..count()).map(|_| read(input, proto)).collect()),
            b'_' if resp3 && text.is_empty() => Reply::Null,
            b'#' if resp3 => Reply::Bool(match text {
                "t" => true,
                "f" => false,
                other => panic!("boolean {other:?}"),
            }),
            b'=' if resp3 => {
                let data = payload(count());
                assert_eq!(&data[..4], b"txt:");
                Reply::Verbatim(data.slice(4..))
            }
            b'~' if resp3 => Reply::Set((0..count()).map(|_| read(input, proto)).collect()),
            b'%' if resp3 => Reply::Map(
                (0..count())
                    .map(|_| (read(input, proto), read(input, proto)))
                    .collect(),
            ),
            other => panic!("type byte {:?} in {proto:?}", char::from(other)),
        }
    }

    /// What `reply` should read back as in `proto`.
    fn expected(reply: &Reply, proto: Protocol) -> Reply {
        let resp3 = proto == Protocol::Resp3;
        let all = |items: &[Reply]| items.iter().map(|r| expected(r, proto)).collect();
        let flat = |text: &str| text.replace(['\r', '\n'], " ").into();
        match reply {
            Reply::Status(text) => Reply::Status(flat(text)),
            Reply::Error(text) => Reply::Error(flat(text)),
            Reply::Array(items) => Reply::Array(all(items)),
            Reply::Set(items) if resp3 => Reply::Set(all(items)),
            Reply::Set(items) => Reply::Array(all(items)),
            Reply::Map(pairs) if resp3 => Reply::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (expected(k, proto), expected(v, proto)))
                    .collect(),
            ),
            Reply::Map(pairs) => Reply::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [expected(k, proto), expected(v, proto)])
                    .collect(),
            ),
            Reply::Verbatim(text) if !resp3 => Reply::Bulk(text.clone()),
            Reply::Bool(b) if !resp3 => Reply::Integer(i64::from(*b)),
            other => other.clone(),
        }
    }

    fn reply_tree() -> impl Strategy<Value = Reply> {
        let text = "[a-zA-Z0-9 '\r\n\u{e9}\u{1f512}]{0,12}";
        let bytes = || prop::collection::vec(any::<u8>(), 0..24);
        let leaf = prop_oneof![
            text.prop_map(|s| Reply::Status(s.into())),
            text.prop_map(Reply::error),
            any::<i64>().prop_map(Reply::Integer),
            bytes().prop_map(Reply::bulk),
            Just(Reply::Null),
            bytes().prop_map(|b| Reply::Verbatim(b.into())),
            any::<bool>().prop_map(Reply::Bool),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Reply::Array),
                prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Reply::Map),
                prop::collection::vec(inner, 0..6).prop_map(Reply::Set),
            ]
        })
    }

    proptest! {
        #[test]
        fn encodings_read_back(reply in reply_tree()) {
            for proto in [Protocol::Resp2, Protocol::Resp3] {
                let bytes = encoded(&reply, proto);
                let mut input = &bytes[..];
                prop_assert_eq!(read(&mut input, proto), expected(&reply, proto));
                prop_assert!(input.is_empty(), "{} bytes left", input.len());
            }
        }
    }
}
