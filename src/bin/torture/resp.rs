//! A tiny RESP2 client: one request at a time, every call bounded by a timeout. It knows the
//! reply shapes the lock commands use (status, error, integer, bulk, null, and the flat array
//! of `LOCK ... FENCE`); anything else is reported as invalid data rather than parsed.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line accepted; the proxy's longest (an error message) is far shorter.
const MAX_LINE: usize = 64 * 1024;
/// Largest bulk reply accepted; tokens are 32 bytes.
const MAX_BULK: usize = 1024 * 1024;
/// Longest array accepted; `LOCK ... FENCE` replies with two elements.
const MAX_ARRAY: usize = 16;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Status(String),
    /// `-text`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` bytes, or `$-1` (null; also `*-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` elements, none of them arrays.
    Array(Vec<Reply>),
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Connects within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply, all within `timeout`. After an error the
    /// connection's state is unknown: drop it.
    pub async fn call(&mut self, args: &[&[u8]], timeout: Duration) -> io::Result<Reply> {
        tokio::time::timeout(timeout, self.round_trip(args))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))?
    }

    async fn round_trip(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line().await?;
        if let Some(count) = line.strip_prefix(b"*") {
            let n: i64 = String::from_utf8_lossy(count).parse().map_err(invalid)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = usize::try_from(n).map_err(invalid)?;
            if n > MAX_ARRAY {
                return Err(invalid("array reply too long"));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let line = self.read_line().await?;
                items.push(self.read_scalar(line).await?);
            }
            return Ok(Reply::Array(items));
        }
        self.read_scalar(line).await
    }

    /// A non-array reply whose first line is `line`.
    async fn read_scalar(&mut self, line: Vec<u8>) -> io::Result<Reply> {
        let (kind, rest) = line.split_at(1);
        let text = || String::from_utf8_lossy(rest).into_owned();
        match kind[0] {
            b'+' => Ok(Reply::Status(text())),
            b'-' => Ok(Reply::Error(text())),
            b':' => text().parse().map(Reply::Int).map_err(invalid),
            b'$' => {
                let len: i64 = text().parse().map_err(invalid)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).map_err(invalid)?;
                if len > MAX_BULK {
                    return Err(invalid("bulk reply too large"));
                }
                let mut body = vec![0u8; len + 2];
                self.stream.read_exact(&mut body).await?;
                if !body.ends_with(b"\r\n") {
                    return Err(invalid("bulk reply without CRLF"));
                }
                body.truncate(len);
                Ok(Reply::Bulk(Some(body)))
            }
            other => Err(invalid(format!(
                "unexpected reply type {:?}",
                char::from(other)
            ))),
        }
    }

    /// One CRLF-terminated line without its terminator; never empty.
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if !line.ends_with(b"\r\n") || line.len() < 3 {
            return Err(invalid("malformed reply line"));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}
