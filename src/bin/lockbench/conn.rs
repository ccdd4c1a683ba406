//! One connection to the server: connect (and AUTH), buffered writes, and replies decoded by
//! the crate's client codec under a size cap.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use redlock_proxy::backend::redis::{MasterTls, Stream};
use redlock_proxy::protocol::client::{self, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;
use tokio::time::timeout;

/// Deadline for one connect (and its AUTH).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before reconnecting after a broken connection, so a dead server is not hammered.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Longest reply accepted; the lock commands' replies are far shorter.
const MAX_REPLY: usize = 64 * 1024;
/// Room made in the read buffer before each read, so a read is never a few bytes.
const READ_CHUNK: usize = 16 * 1024;

/// Set once from `--tls-ca-cert-file`: every connection is TLS, verified against that CA.
pub static TLS: OnceLock<MasterTls> = OnceLock::new();

/// The first address `addr` (HOST:PORT) resolves to.
pub async fn resolve(addr: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(addr).await.ok()?.next()
}

#[derive(Debug)]
pub struct Conn {
    pub stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    /// Connects, and authenticates with `password` when there is one, within
    /// [`CONNECT_TIMEOUT`] each.
    pub async fn open(addr: SocketAddr, password: Option<&str>) -> io::Result<Conn> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let stream = match TLS.get() {
            None => Stream::Plain(stream),
            Some(tls) => timeout(CONNECT_TIMEOUT, tls.connect(stream))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??,
        };
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(4 * 1024),
        };
        if let Some(password) = password {
            let reply = timeout(
                CONNECT_TIMEOUT,
                conn.round_trip(&[b"AUTH", password.as_bytes()]),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "AUTH timed out"))??;
            if !matches!(reply, Frame::SimpleString(_)) {
                return Err(io::Error::other("AUTH refused"));
            }
        }
        Ok(conn)
    }

    /// Queues one command; [`Conn::flush`] sends what is queued.
    pub fn push(&mut self, args: &[&[u8]]) {
        client::encode_command(&mut self.wbuf, args);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads whatever the server has sent next; an error when it closed the connection.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(())
    }

    /// The next reply among the bytes read so far, if they hold a whole one.
    pub fn next_reply(&mut self) -> io::Result<Option<Frame>> {
        split_reply(&mut self.rbuf)
    }

    /// Sends one command and reads its reply (no other request in flight), within `within`.
    /// After an error the connection's state is unknown: drop it.
    pub async fn call(&mut self, args: &[&[u8]], within: Duration) -> io::Result<Frame> {
        timeout(within, self.round_trip(args))
            .await
            .map_err(no_reply)?
    }

    /// The next reply, within `within`.
    pub async fn reply(&mut self, within: Duration) -> io::Result<Frame> {
        timeout(within, self.read_one()).await.map_err(no_reply)?
    }

    async fn round_trip(&mut self, args: &[&[u8]]) -> io::Result<Frame> {
        self.push(args);
        self.flush().await?;
        self.read_one().await
    }

    async fn read_one(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(reply) = self.next_reply()? {
                return Ok(reply);
            }
            self.fill().await?;
        }
    }
}

fn no_reply(_: Elapsed) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no reply in time")
}

/// Splits the first whole reply off `buf`. A reply longer than [`MAX_REPLY`] is refused,
/// whole or still arriving (then it is all that is left in `buf`), rather than buffered on.
fn split_reply(buf: &mut BytesMut) -> io::Result<Option<Frame>> {
    let before = buf.len();
    let reply = client::decode_reply(buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let len = match reply {
        Some(_) => before - buf.len(),
        None => before,
    };
    if len > MAX_REPLY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_replies_split_off_and_long_ones_are_refused() {
        let mut buf = BytesMut::from(&b"$4\r\nabcd\r\n*2\r\n$2\r\nab\r\n:17\r\n$4\r\nab"[..]);
        assert!(matches!(split_reply(&mut buf), Ok(Some(Frame::BulkString(t))) if t == "abcd"));
        assert!(matches!(split_reply(&mut buf), Ok(Some(Frame::Array(a))) if a.len() == 2));
        assert!(matches!(split_reply(&mut buf), Ok(None)));
        let mut long = BytesMut::from(format!("${}\r\n", MAX_REPLY * 2).as_bytes());
        long.resize(MAX_REPLY + 64, b'x');
        assert!(split_reply(&mut long).is_err());
        let mut whole = BytesMut::from(format!("${MAX_REPLY}\r\n").as_bytes());
        whole.resize(whole.len() + MAX_REPLY, b'x');
        whole.extend_from_slice(b"\r\n");
        assert!(split_reply(&mut whole).is_err());
        assert!(split_reply(&mut BytesMut::from(&b"?\r\n"[..])).is_err());
    }
}
