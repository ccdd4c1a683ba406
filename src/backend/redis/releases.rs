//! The subscription to the release channel on one master, which passes the key of each release
//! announced there on to the proxy's waiters. A notification lost while the subscription is
//! down only delays waiters: they also retry on a timer.

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
        loop {
            while let Some(frame) = client::decode_reply(&mut buf)? {
                if let Frame::Array(parts) = frame
                    && let [Frame::BulkString(kind), _, Frame::BulkString(key)] = &parts[..]
                    && &kind[..] == b"message"
                {
                    let _ = self.released.send(key.clone());
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
        let reply = round_trip(&mut stream, &mut buf, &[b"SUBSCRIBE", channel]).await?;
        // An error (an ACL that denies the channel) must not pass for a subscription that then
        // hears nothing: the attempt fails, is retried, and says why in the debug log.
        match &reply {
            Frame::Array(parts)
                if matches!(&parts[..], [Frame::BulkString(kind), Frame::BulkString(c), _]
                    if &kind[..] == b"subscribe" && c == channel) => {}
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
