//! The subscription to the release channel on one master, which passes the key of each release
//! announced there on to the proxy's waiters. A notification lost while the subscription is
//! down only delays waiters: they also retry on a timer. On a Redis Cluster node it is a sharded
//! subscription (`SSUBSCRIBE`) to the node's own channel, which its releases `SPUBLISH` to: a
//! message goes to that node's subscribers only, not over the cluster bus to every node.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Inner;
use super::link::{LinkError, READ_CHUNK, Reconnect, dial, make_room, round_trip};
use super::tls::Stream;
use crate::protocol::client::{self, Frame};

/// Keeps the subscription, through [`reconnecting`](super::link::reconnecting).
pub(super) struct Relay {
    master: Arc<Inner>,
    released: mpsc::UnboundedSender<Bytes>,
    shutdown: CancellationToken,
}

impl Relay {
    pub(super) fn new(
        master: Arc<Inner>,
        released: mpsc::UnboundedSender<Bytes>,
        shutdown: CancellationToken,
    ) -> Relay {
        Relay {
            master,
            released,
            shutdown,
        }
    }

    /// Passes each released key on, until the subscription breaks.
    async fn relay(&self, mut stream: Stream, mut buf: BytesMut) -> Result<Infallible, LinkError> {
        let (message, unsubscribed): (&[u8], &[u8]) = if self.master.names.sharded {
            (b"smessage", b"sunsubscribe")
        } else {
            (b"message", b"unsubscribe")
        };
        loop {
            while let Some(frame) = client::decode_reply(&mut buf)? {
                let Frame::Array(parts) = frame else {
                    continue;
                };
                match &parts[..] {
                    [Frame::BulkString(kind), _, Frame::BulkString(key)] if kind == message => {
                        let _ = self.released.send(key.clone());
                    }
                    // A cluster node drops the subscription when the channel's slot moves
                    // away: subscribe again, where the slot map says.
                    [Frame::BulkString(kind), ..] if kind == unsubscribed => {
                        return Err(LinkError::Closed);
                    }
                    _ => {}
                }
            }
            make_room(&mut buf);
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}

impl Reconnect for Relay {
    type Open = (Stream, BytesMut);

    async fn open(&mut self) -> Result<Self::Open, LinkError> {
        let mut stream = dial(&self.master).await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let channel = &self.master.names.release_channel;
        let (command, kind): (&[u8], &[u8]) = if self.master.names.sharded {
            (b"SSUBSCRIBE", b"ssubscribe")
        } else {
            (b"SUBSCRIBE", b"subscribe")
        };
        let reply = round_trip(&mut stream, &mut buf, &[command, channel]).await?;
        // An error (an ACL that denies the channel) must not pass for a subscription that then
        // hears nothing: the attempt fails, is retried, and says why in the debug log.
        match &reply {
            Frame::Array(parts)
                if matches!(&parts[..], [Frame::BulkString(k), Frame::BulkString(c), _]
                    if k == kind && c == channel) => {}
            _ => {
                return Err(LinkError::Handshake {
                    step: "SUBSCRIBE",
                    reply,
                });
            }
        }
        Ok((stream, buf))
    }

    async fn serve(&mut self, (stream, buf): Self::Open) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            // Dialled again with the master's other connections, so it follows a failover.
            _ = self.master.redial.notified() => {}
            ended = self.relay(stream, buf) => {
                let Err(e) = ended;
                debug!(master = %self.master.addr, "release subscription ended: {e}");
            }
        }
    }

    /// At debug level only: a master that cannot be reached is reported by its own connections.
    fn failed(&mut self, e: LinkError) {
        debug!(master = %self.master.addr, "release subscription failed: {e}");
    }
}
