//! The request decoder against exact bytes: every form, every limit, every split point.

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
        unauthenticated: false,
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
fn strangers_get_redis_unauthenticated_caps_on_the_header() {
    let limits = Limits::default().unauthenticated();
    assert_eq!(
        feed_whole(b"*10\r\n", &limits),
        (Vec::new(), b"*10\r\n".to_vec())
    );
    assert_eq!(
        error_text(b"*11\r\n", &limits),
        "Protocol error: unauthenticated multibulk length"
    );
    // Refused on the header: the megabyte it announces need not arrive.
    assert_eq!(
        error_text(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n", &limits),
        "Protocol error: unauthenticated bulk length"
    );
    let (outcome, _) = feed_whole(b"*2\r\n$4\r\nAUTH\r\n$3\r\npw!\r\n", &limits);
    assert_eq!(outcome, [Ok(argv_of(&["AUTH", "pw!"]))]);
    assert_eq!(
        error_text(b"*1\r\n$-5\r\n", &limits),
        "Protocol error: invalid bulk length"
    );
    // Inline requests obey the same argument caps.
    let eleven = b"a b c d e f g h i j k\r\n";
    assert_eq!(
        error_text(eleven, &limits),
        "Protocol error: too big inline request"
    );
    assert_eq!(feed_whole(eleven, &Limits::default()).0.len(), 1);
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
