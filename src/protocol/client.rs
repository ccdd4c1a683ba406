//! The client side of RESP, for talking to Redis servers (the masters, and the tools talking to
//! the proxy): commands out, replies in. Replies are decoded by `redis-protocol`; this is the one
//! reply decoder of the crate and its tools.

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
pub use redis_protocol::resp2::types::BytesFrame as Frame;

/// A reply stream that is not RESP2: the connection cannot be trusted further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reply: {0}")]
pub struct InvalidReply(String);

/// Appends `args` as one RESP multibulk command.
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    let mut num = itoa::Buffer::new();
    out.put_u8(b'*');
    out.put_slice(num.format(args.len()).as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        out.put_u8(b'$');
        out.put_slice(num.format(arg.len()).as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// An upper bound of what [`encode_command`] appends for `args`, to allocate once.
pub fn encoded_len(args: &[&[u8]]) -> usize {
    // "*n\r\n" plus "$len\r\n" + arg + "\r\n" each; 20 digits cover any usize.
    25 + args.iter().map(|a| a.len() + 25).sum::<usize>()
}

/// One command, encoded once, in a buffer sized once.
pub fn command(args: &[&[u8]]) -> Bytes {
    let mut bytes = BytesMut::with_capacity(encoded_len(args));
    encode_command(&mut bytes, args);
    bytes.freeze()
}

/// Splits one complete reply off the front of `buf`, if there is one.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Frame>, InvalidReply> {
    match decode_bytes_mut(buf) {
        Ok(Some((frame, _, _))) => Ok(Some(frame)),
        Ok(None) => Ok(None),
        Err(e) => Err(InvalidReply(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_multibulk() {
        let mut out = BytesMut::new();
        let args: [&[u8]; 4] = [b"SET", b"k", b"", b"NX"];
        encode_command(&mut out, &args);
        assert!(out.len() <= encoded_len(&args));
        assert_eq!(
            &out[..],
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$2\r\nNX\r\n"
        );
        assert_eq!(command(&args), out.freeze());
    }

    #[test]
    fn replies_decode_one_at_a_time() {
        let mut buf =
            BytesMut::from(&b"+OK\r\n$-1\r\n:1\r\n*2\r\n$1\r\nt\r\n:5\r\n-ERR x\r\n$3\r\nab"[..]);
        assert_eq!(
            decode_reply(&mut buf).unwrap(),
            Some(Frame::SimpleString(Bytes::from("OK")))
        );
        assert_eq!(decode_reply(&mut buf).unwrap(), Some(Frame::Null));
        assert_eq!(decode_reply(&mut buf).unwrap(), Some(Frame::Integer(1)));
        assert!(matches!(decode_reply(&mut buf).unwrap(), Some(Frame::Array(a)) if a.len() == 2));
        assert!(matches!(
            decode_reply(&mut buf).unwrap(),
            Some(Frame::Error(_))
        ));
        assert_eq!(decode_reply(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"$3\r\nab");
        assert!(decode_reply(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
    }
}
