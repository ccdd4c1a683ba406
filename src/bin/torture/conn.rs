//! One connection to a proxy: one request at a time, every call bounded by a timeout, replies
//! decoded by the crate's client codec under a size cap.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use redlock_proxy::protocol::client::{self, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest reply accepted; tokens are 32 bytes, and the longest reply, an error message, is far
/// shorter than this.
const MAX_REPLY: usize = 1024 * 1024;

/// One connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Connects within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(512),
        })
    }

    /// Sends one command and reads its reply, all within `timeout`. After an error the
    /// connection's state is unknown: drop it.
    pub async fn call(&mut self, args: &[&[u8]], timeout: Duration) -> io::Result<Frame> {
        tokio::time::timeout(timeout, self.round_trip(args))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))?
    }

    async fn round_trip(&mut self, args: &[&[u8]]) -> io::Result<Frame> {
        self.stream.write_all(&client::command(args)).await?;
        loop {
            // One request at a time: all that is buffered is this request's reply.
            if self.buf.len() > MAX_REPLY {
                return Err(invalid("reply too large"));
            }
            if let Some(reply) = client::decode_reply(&mut self.buf).map_err(invalid)? {
                return Ok(reply);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
        }
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}
