//! `SUBSCRIBE` / `SSUBSCRIBE` / `UNSUBSCRIBE` / `SUNSUBSCRIBE` on Redisson's lock channels,
//! `redisson_lock__channel:{<name>}`: Redisson's waiters listen there for the unlock of lock
//! `<name>`. The proxy relays no messages between clients; it feeds these channels itself, from
//! its own release announcements (a release through any proxy of a lock someone watches is
//! announced to every proxy), with the message Redisson's unlock publishes, `"0"`. Every other
//! channel, and every pattern, is refused: a client must not wait on a channel nobody feeds.
//!
//! The confirmations and messages are pushes (RESP3) or arrays (RESP2, where the connection
//! then takes only the subscription commands, `PING`, `QUIT` and `RESET`, as Redis's does).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

/// Redisson's lock channel prefix; the lock's name follows, in braces unless it has one.
const REDISSON_CHANNEL: &[u8] = b"redisson_lock__channel:";
/// Redisson's unlock message.
const UNLOCKED: &[u8] = b"0";
/// Messages queued for a client that does not read: past it, a message is dropped (Redisson
/// then retries when the holder's time is up, as it does without messages).
const QUEUED_MESSAGES: usize = 256;

const ARGS: &[ArgDoc] = &[ArgDoc::many("channel", "string", false)];

pub const SUBSCRIBE: Spec = Spec {
    name: "subscribe",
    arity: -2,
    flags: &["pubsub", "noscript", "loading", "stale"],
    key_pos: 0,
    group: "pubsub",
    summary: "Listens for the releases of Redisson locks (redisson_lock__channel:{name})",
    complexity: "O(N) where N is the number of channels",
    args: ARGS,
    no_auth: false,
    run: |argv, client, shared| subscribe(argv, client, shared, Kind::Plain),
};

pub const SSUBSCRIBE: Spec = Spec {
    name: "ssubscribe",
    run: |argv, client, shared| subscribe(argv, client, shared, Kind::Sharded),
    ..SUBSCRIBE
};

pub const UNSUBSCRIBE: Spec = Spec {
    name: "unsubscribe",
    arity: -1,
    summary: "Stops listening on the given channels, or on all",
    args: &[ArgDoc::many("channel", "string", true)],
    run: |argv, client, _| Ok(unsubscribe(&argv, client, Kind::Plain).into()),
    ..SUBSCRIBE
};

pub const SUNSUBSCRIBE: Spec = Spec {
    name: "sunsubscribe",
    run: |argv, client, _| Ok(unsubscribe(&argv, client, Kind::Sharded).into()),
    ..UNSUBSCRIBE
};

pub const PSUBSCRIBE: Spec = Spec {
    name: "psubscribe",
    summary: "Refused: the proxy feeds no pattern subscriptions",
    run: |_, _, _| {
        Err(Error::Request(
            "the proxy feeds no pattern subscriptions: only Redisson's lock channels \
             (SUBSCRIBE redisson_lock__channel:{name})"
                .into(),
        ))
    },
    ..SUBSCRIBE
};

/// Plain or sharded pub/sub: their subscriptions are counted apart, as in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Plain,
    Sharded,
}

impl Kind {
    fn words(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Plain => ("subscribe", "unsubscribe", "message"),
            Kind::Sharded => ("ssubscribe", "sunsubscribe", "smessage"),
        }
    }
}

/// A connection's subscriptions, and the messages waiting for it.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// Channel and kind → what stops its watchers.
    channels: HashMap<(Kind, Bytes), CancellationToken>,
    /// The messages' queue, made at the first subscription: a channel's first block of slots
    /// is over a kilobyte, which thousands of connections that never subscribe need not hold.
    mail: Option<(mpsc::Sender<Reply>, mpsc::Receiver<Reply>)>,
}

impl Subscriptions {
    /// True when the connection listens on no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The next message for the client; pending while there is none.
    pub async fn next(&mut self) -> Reply {
        match &mut self.mail {
            Some((_, inbox)) => match inbox.recv().await {
                Some(message) => message,
                // Never: `self` holds a sender.
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Where the watchers of a new subscription put their messages.
    fn messages(&mut self) -> mpsc::Sender<Reply> {
        let (messages, _) = self
            .mail
            .get_or_insert_with(|| mpsc::channel(QUEUED_MESSAGES));
        messages.clone()
    }

    fn count(&self, kind: Kind) -> i64 {
        let n = self.channels.keys().filter(|(k, _)| *k == kind).count();
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    fn remove(&mut self, kind: Kind, channel: &Bytes) -> bool {
        match self.channels.remove(&(kind, channel.clone())) {
            Some(stop) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for stop in self.channels.values() {
            stop.cancel();
        }
    }
}

/// StackExchange.Redis (under RedLock.net) subscribes to its configuration channel on
/// connect, and only listens: in Redis a message comes when a client publishes a master change,
/// and through the proxy nobody can publish, so it is accepted and never fed.
const STACKEXCHANGE_CHANNEL: &[u8] = b"__Booksleeve_MasterChanged";

/// The lock names a channel speaks for: a Redisson channel's `{X}` stands for lock `X`, and for
/// lock `{X}` (a name with a brace gets no braces added); StackExchange.Redis's configuration
/// channel, none. `None` for a channel the proxy does not serve.
fn redisson_locks(channel: &[u8]) -> Option<Vec<Bytes>> {
    if channel == STACKEXCHANGE_CHANNEL {
        return Some(Vec::new());
    }
    let rest = channel.strip_prefix(REDISSON_CHANNEL)?;
    if rest.is_empty() {
        return None;
    }
    let mut names = vec![Bytes::copy_from_slice(rest)];
    if let Some(inner) = rest.strip_prefix(b"{").and_then(|r| r.strip_suffix(b"}")) {
        names.push(Bytes::copy_from_slice(inner));
    }
    Some(names)
}

fn subscribe(
    argv: Vec<Bytes>,
    client: &mut Client,
    _: &Arc<Shared>,
    kind: Kind,
) -> Result<Outcome, Error> {
    let mut named = Vec::with_capacity(argv.len() - 1);
    for channel in &argv[1..] {
        let Some(locks) = redisson_locks(channel) else {
            return Err(Error::Request(format!(
                "the proxy feeds only Redisson's lock channels (redisson_lock__channel:{{name}}), \
                 from its own releases; '{}' would never get a message",
                String::from_utf8_lossy(channel)
            )));
        };
        named.push((channel.clone(), locks));
    }
    let (subscribed, _, message) = kind.words();
    let mut replies = Vec::with_capacity(named.len());
    let mut readiness = Vec::new();
    for (channel, locks) in named {
        if !client
            .subscriptions
            .channels
            .contains_key(&(kind, channel.clone()))
        {
            let stop = CancellationToken::new();
            for lock in locks {
                let (messages, channel) = (client.subscriptions.messages(), channel.clone());
                let released = move || {
                    let push = Reply::Push(vec![
                        Reply::bulk(message),
                        Reply::Bulk(channel.clone()),
                        Reply::bulk(UNLOCKED),
                    ]);
                    // A client that does not read loses messages, not memory.
                    let _ = messages.try_send(push);
                };
                let watching = client
                    .locks
                    .watch_releases(client.db, lock, stop.clone(), released);
                match watching {
                    Ok((watch, ready)) => {
                        drop(tokio::spawn(watch));
                        readiness.push(ready.ready());
                    }
                    Err(e) => {
                        stop.cancel();
                        return Err(e.into());
                    }
                }
            }
            client
                .subscriptions
                .channels
                .insert((kind, channel.clone()), stop);
        }
        replies.push(Reply::Push(vec![
            Reply::bulk(subscribed),
            Reply::Bulk(channel),
            Reply::Integer(client.subscriptions.count(kind)),
        ]));
    }
    // Confirmed once every release from now on will be heard: a client that looks at the lock
    // after its confirmation cannot miss the release that follows.
    Ok(Outcome::later(async move {
        futures_util::future::join_all(readiness).await;
        Ok(Reply::Sequence(replies))
    }))
}

fn unsubscribe(argv: &[Bytes], client: &mut Client, kind: Kind) -> Reply {
    let (_, unsubscribed, _) = kind.words();
    let subs = &mut client.subscriptions;
    let channels: Vec<Bytes> = if argv.len() > 1 {
        argv[1..].to_vec()
    } else {
        let mut all: Vec<Bytes> = (subs.channels.keys())
            .filter(|(k, _)| *k == kind)
            .map(|(_, c)| c.clone())
            .collect();
        all.sort();
        all
    };
    if channels.is_empty() {
        return Reply::Push(vec![
            Reply::bulk(unsubscribed),
            Reply::Null,
            Reply::Integer(0),
        ]);
    }
    let replies = channels
        .into_iter()
        .map(|channel| {
            subs.remove(kind, &channel);
            Reply::Push(vec![
                Reply::bulk(unsubscribed),
                Reply::Bulk(channel),
                Reply::Integer(subs.count(kind)),
            ])
        })
        .collect();
    Reply::Sequence(replies)
}

/// Whether a RESP2 connection with subscriptions may run `name` (Redis's rule).
pub fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe"
            | "ssubscribe"
            | "psubscribe"
            | "unsubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redisson_channels_name_their_locks() {
        let names = redisson_locks(b"redisson_lock__channel:{orders}").unwrap();
        assert_eq!(names, vec![Bytes::from("{orders}"), Bytes::from("orders")]);
        let names = redisson_locks(b"redisson_lock__channel:a{b}").unwrap();
        assert_eq!(names, vec![Bytes::from("a{b}")]);
        assert!(redisson_locks(b"redisson_lock__channel:").is_none());
        assert!(redisson_locks(b"news").is_none());
        assert_eq!(redisson_locks(b"__Booksleeve_MasterChanged"), Some(vec![]));
    }
}
