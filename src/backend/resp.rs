//! The few RESP pieces the backend side needs: encoding a command, decoding a master's reply
//! (through `redis-protocol`), and the scripts that make release, extend and inspect atomic.

use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
pub use redis_protocol::resp2::types::BytesFrame as Frame;

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

/// Splits one complete reply off the front of `buf`, if there is one.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    match decode_bytes_mut(buf) {
        Ok(Some((frame, _, _))) => Ok(Some(frame)),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A Lua script the proxy runs on the masters, with its SHA1 for `EVALSHA`.
#[derive(Debug)]
pub struct Script {
    /// The Lua source.
    pub body: &'static str,
    /// Lowercase hex SHA1 of `body`, as `SCRIPT LOAD` returns it.
    pub sha: String,
}

impl Script {
    fn new(body: &'static str) -> Script {
        Script {
            body,
            sha: sha1_smol::Sha1::from(body).digest().to_string(),
        }
    }
}

/// Deletes `KEYS[1]` only if it holds `ARGV[1]` (the token): 1 when deleted. When some proxy has a
/// waiter for the key (its waiting marker `KEYS[2]` exists), the release is published on channel
/// `ARGV[2]` so waiters on every proxy wake; without waiters nothing is published, and no proxy
/// reads a message per release.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) \
         if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[2], KEYS[1]) end \
         return 1 else return 0 end",
    )
});

/// Keeps the waiting marker `KEYS[1]` for at least `ARGV[1]` ms (never shortens it).
pub static MARK_WAITING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then \
         redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end return 1",
    )
});

/// Sets `KEYS[1]`'s TTL to `ARGV[2]` ms only if it holds `ARGV[1]`: 1 when extended.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// `KEYS[1]`'s value and PTTL read atomically, or nil when the key is absent.
pub static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local v = redis.call('GET', KEYS[1]) if not v then return false end return {v, redis.call('PTTL', KEYS[1])}",
    )
});

/// The fence counter `KEYS[1]`, or the floor `KEYS[2]` when that is higher (0 when both absent).
pub static READ_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "return math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), \
         tonumber(redis.call('GET', KEYS[2]) or '0'))",
    )
});

/// Takes lock `KEYS[1]` with token `ARGV[1]` for `ARGV[2]` ms together with fence `ARGV[3]`, only if the
/// lock is free and the fence is greater than every fence `KEYS[2]` has seen and than the floor
/// `KEYS[3]`: 1 when taken, 0 when held, -1 when the fence is stale.
pub static ACQUIRE_FENCED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end \
         if math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), \
         tonumber(redis.call('GET', KEYS[3]) or '0')) >= tonumber(ARGV[3]) then return -1 end \
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) redis.call('SET', KEYS[2], ARGV[3]) \
         return 1",
    )
});

/// Raises fence counter `KEYS[1]` to `ARGV[1]` unless it is already that high (repair).
pub static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then \
         redis.call('SET', KEYS[1], ARGV[1]) end return 1",
    )
});

/// Every script, for loading on connect.
pub fn all_scripts() -> [&'static Script; 7] {
    [
        &RELEASE,
        &MARK_WAITING,
        &EXTEND,
        &INSPECT,
        &READ_FENCE,
        &ACQUIRE_FENCED,
        &RAISE_FENCE,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
    }

    #[test]
    fn script_shas_are_sha1_of_the_body() {
        assert_eq!(
            Script::new("return 1").sha,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
        assert_ne!(RELEASE.sha, EXTEND.sha);
    }
}
