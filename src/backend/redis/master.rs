//! The [`Master`] operations on a Redis master: the command each one sends and what its reply
//! means, votes counted straight into a round's ballot, and sending a script's request again
//! when the master lost its scripts.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::future::Either;

use super::link::ReplyTo;
use super::scripts::{self, Script};
use super::{Inner, RedisMaster};
use crate::backend::{
    Ask, BackendError, FENCE_PAGE, FencePage, HeldAs, KeyState, Master, Take, Votes,
};
use crate::protocol::client::{self, Frame};

use client::command as encode;

/// A request that runs a script, kept to be sent again on its connection if the master lost
/// its scripts.
#[derive(Debug)]
struct ScriptRequest {
    script: &'static Script,
    /// The connection it goes to.
    home: usize,
    request: Bytes,
}

/// How a request's reply comes.
#[derive(Debug, Clone, Copy)]
enum Sent {
    /// Its reply counts only if the run marker exists after it: the connection checks once
    /// per batch (`Link::carry`). A script doing both would cost the master 8.8 µs a call
    /// against `SET NX PX`'s 2.6 µs (Redis 7.0.15, `redis-benchmark -P 16`, commandstats).
    Checked,
    /// A script, sent again if the master lost it.
    Script(&'static Script),
}

impl Sent {
    fn checked(self) -> bool {
        matches!(self, Sent::Checked)
    }
}

/// One master's part in a vote. Dropped without an answer (connection lost, request never
/// sent), it counts as failed, so a round never waits for a reply that cannot come.
#[derive(Debug)]
pub(super) struct Vote {
    ballot: Option<Arc<dyn Votes>>,
    counts: bool,
    master: Arc<Inner>,
    /// For a script, its request once written (empty before), to send again if the master
    /// lost its scripts.
    script: Option<ScriptRequest>,
}

impl Vote {
    /// Keeps the written request when a retry may need it.
    pub(super) fn written(&mut self, bytes: Bytes) {
        if let Some(script) = &mut self.script {
            script.request = bytes;
        }
    }

    /// Counts `answer` (a failure already counted in the master's statistics).
    fn finish(mut self, answer: Result<bool, BackendError>) {
        if let Some(ballot) = self.ballot.take() {
            ballot.record(self.counts, answer);
        }
    }

    /// Counts the master's reply, first loading the script and repeating the request (on a task
    /// of its own) if the master lost its scripts.
    pub(super) fn answer(mut self, frame: Frame) {
        let reply = as_result(frame);
        if let Err(BackendError::NoScript(_)) = reply
            && let Some(again) = self.script.take()
            && !again.request.is_empty()
        {
            let again = RedisMaster(self.master.clone(), false).load_and_resend(again);
            tokio::spawn(async move { self.finish(expect_bool(again.await)) });
            return;
        }
        let answer = expect_bool(reply);
        if answer.is_err() {
            self.master.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(answer);
    }
}

impl Drop for Vote {
    fn drop(&mut self) {
        if let Some(ballot) = self.ballot.take() {
            self.master.failures.fetch_add(1, Ordering::Relaxed);
            ballot.record(self.counts, Err(BackendError::Disconnected));
        }
    }
}

/// A master's error reply as an error; NOSCRIPT told apart, since loading the script and asking
/// again can still succeed.
pub(super) fn as_result(frame: Frame) -> Result<Frame, BackendError> {
    match frame {
        Frame::Error(e) if e.starts_with("NOSCRIPT") => Err(BackendError::NoScript(e.to_string())),
        Frame::Error(e) => Err(BackendError::Reply(e.to_string())),
        other => Ok(other),
    }
}

fn expect_bool(frame: Result<Frame, BackendError>) -> Result<bool, BackendError> {
    match wrong_type_is_absent(frame)? {
        Frame::Integer(scripts::NO_MARKER) => Err(BackendError::Reply(
            "the run marker is missing: flushed or quarantined, no vote".into(),
        )),
        Frame::Integer(n) => Ok(n == 1),
        Frame::SimpleString(s) if &s[..] == b"OK" => Ok(true),
        Frame::Null => Ok(false),
        other => Err(BackendError::Unexpected(format!("{other:?}"))),
    }
}

/// A token check against a key used by another kind (a read lock's set, a semaphore's count)
/// fails in Redis with `WRONGTYPE`: the key does not hold the token, which is the answer.
fn wrong_type_is_absent(frame: Result<Frame, BackendError>) -> Result<Frame, BackendError> {
    match frame {
        Err(BackendError::Reply(e)) if e.starts_with("WRONGTYPE") => Ok(Frame::Null),
        other => other,
    }
}

/// The kind a script names (`exclusive`, `shared`, `permits` with its count).
fn held_as(kind: &[u8], count: i64) -> Result<HeldAs, BackendError> {
    match kind {
        b"exclusive" => Ok(HeldAs::Exclusive),
        b"shared" => Ok(HeldAs::Shared),
        b"permits" => Ok(HeldAs::Permits(u32::try_from(count).unwrap_or(0))),
        other => Err(BackendError::Unexpected(format!(
            "the lock key holds a Redis {}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// A counted acquire's answer, `{code, kind, slot or count}` (see [`scripts::ACQUIRE_PERMIT`]).
fn expect_take(frame: Result<Frame, BackendError>) -> Result<Take, BackendError> {
    let items = match frame? {
        Frame::Integer(scripts::NO_MARKER) => {
            return expect_bool(Ok(Frame::Integer(scripts::NO_MARKER))).map(|_| Take::Held);
        }
        Frame::Array(items) => items,
        other => return Err(BackendError::Unexpected(format!("{other:?}"))),
    };
    match &items[..] {
        [Frame::Integer(1), _, Frame::Integer(slot)] => u32::try_from(*slot)
            .map(Take::Taken)
            .map_err(|_| BackendError::Unexpected(slot.to_string())),
        [Frame::Integer(0), _, _] => Ok(Take::Held),
        [
            Frame::Integer(-3),
            Frame::BulkString(kind),
            Frame::Integer(n),
        ] => held_as(kind, *n).map(Take::Conflict),
        _ => Err(BackendError::Unexpected(format!("{items:?}"))),
    }
}

fn expect_count(frame: Frame) -> Result<u64, BackendError> {
    match frame {
        Frame::Integer(n) => u64::try_from(n).map_err(|_| BackendError::Unexpected(n.to_string())),
        other => Err(BackendError::Unexpected(format!("{other:?}"))),
    }
}

impl RedisMaster {
    /// Queues `args` on the connection that owns `key` (so one key's requests stay in order)
    /// and returns the reply's future. Queuing happens now; failing to queue fails at once.
    fn call(
        &self,
        key: &[u8],
        args: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        self.send(self.home(key), encode(args))
    }

    /// Runs a script by SHA, falling back to sending its body once if the master lost it.
    fn eval(
        &self,
        script: &'static Script,
        key: &[u8],
        argv: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        self.eval_keys(script, &[key], argv)
    }

    /// Runs a script with several keys; the first one picks the connection.
    fn eval_keys(
        &self,
        script: &'static Script,
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        self.eval_on(keys[0], script, keys, argv)
    }

    /// Runs a script on the connection of `owner` (whose requests it must stay in order with).
    fn eval_on(
        &self,
        owner: &[u8],
        script: &'static Script,
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        let mut num = itoa::Buffer::new();
        let numkeys = num.format(keys.len()).as_bytes();
        let mut args: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + argv.len());
        args.extend([b"EVALSHA".as_slice(), script.sha.as_bytes(), numkeys]);
        args.extend_from_slice(keys);
        args.extend_from_slice(argv);
        self.send_script(self.home(owner), script, encode(&args))
    }

    /// Sends `request`, which runs `script`, on connection `home`; if the master lost its
    /// scripts, sends it again once they are loaded — nothing is copied unless that happens.
    fn send_script(
        &self,
        home: usize,
        script: &'static Script,
        request: Bytes,
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        let first = self.send(home, request.clone());
        let this = self.clone();
        async move {
            match first.await {
                Err(BackendError::NoScript(_)) => {
                    let again = ScriptRequest {
                        script,
                        home,
                        request,
                    };
                    this.load_and_resend(again).await
                }
                other => other,
            }
        }
    }

    /// For a master that lost its scripts (a restart, `SCRIPT FLUSH`): loads the script on the
    /// request's connection and sends the same request once more.
    fn load_and_resend(
        &self,
        again: ScriptRequest,
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        let this = self.clone();
        async move {
            let load = encode(&[b"SCRIPT", b"LOAD", again.script.body.as_bytes()]);
            this.send(again.home, load).await?;
            this.send(again.home, again.request).await
        }
    }

    /// The command that asks this master `ask`, and how its reply comes. Votes
    /// ([`Master::cast`]) and the operations that return a future send the same bytes.
    fn command(&self, ask: Ask<'_>) -> (Bytes, Sent) {
        let (mut ttl, mut f) = (itoa::Buffer::new(), itoa::Buffer::new());
        match ask {
            Ask::Acquire { key, token, ttl_ms } => {
                let ttl = ttl.format(ttl_ms).as_bytes();
                let set = encode(&[b"SET", key, token, b"NX", b"PX", ttl]);
                (set, Sent::Checked)
            }
            Ask::Release { key, marker, token } => {
                let script = &*scripts::RELEASE;
                let channel = &self.0.names.release_channel[..];
                let publish = self.publish();
                let sha = script.sha.as_bytes();
                let args: [&[u8]; 8] =
                    [b"EVALSHA", sha, b"2", key, marker, token, channel, publish];
                (encode(&args), Sent::Script(script))
            }
            Ask::Extend { key, token, ttl_ms } => {
                let script = &*scripts::EXTEND;
                let ttl = ttl.format(ttl_ms).as_bytes();
                let sha = script.sha.as_bytes();
                let args: [&[u8]; 6] = [b"EVALSHA", sha, b"1", key, token, ttl];
                (encode(&args), Sent::Script(script))
            }
            Ask::Swap {
                key,
                token,
                new_token,
                ttl_ms,
            } => {
                let script = &*scripts::SWAP;
                let ttl = ttl.format(ttl_ms).as_bytes();
                let sha = script.sha.as_bytes();
                let args: [&[u8]; 7] = [b"EVALSHA", sha, b"1", key, token, new_token, ttl];
                (encode(&args), Sent::Script(script))
            }
            Ask::AcquireFenced {
                key,
                fence_key,
                token,
                ttl_ms,
                fence,
            } => {
                let script = &*scripts::ACQUIRE_FENCED;
                let floor = &self.0.names.fence_floor[..];
                let run = &self.0.names.run_marker[..];
                let (ttl, fence) = (ttl.format(ttl_ms).as_bytes(), f.format(fence).as_bytes());
                let sha = script.sha.as_bytes();
                // On a cluster node the node's own names are arguments, not keys.
                let args: [&[u8]; 10] = if self.0.names.sharded {
                    [
                        b"EVALSHA", sha, b"2", key, fence_key, token, ttl, fence, floor, run,
                    ]
                } else {
                    [
                        b"EVALSHA", sha, b"4", key, fence_key, floor, run, token, ttl, fence,
                    ]
                };
                (encode(&args), Sent::Script(script))
            }
        }
    }

    /// How releases are announced: `SPUBLISH` on a cluster node's sharded channel, else `PUBLISH`.
    fn publish(&self) -> &'static [u8] {
        if self.0.names.sharded {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        }
    }

    /// Sends `ask` on its key's connection; its yes or no.
    fn ask(&self, ask: Ask<'_>) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let home = self.home(ask.key());
        let reply = match self.command(ask) {
            (request, Sent::Script(script)) => {
                Either::Left(self.send_script(home, script, request))
            }
            (request, sent) => Either::Right(self.send_checked(home, request, sent.checked())),
        };
        async move { expect_bool(reply.await) }
    }

    /// Queues a vote (`request`, which runs `script` if any): its answer goes straight into
    /// `ballot`.
    fn cast_request(
        &self,
        home_key: &[u8],
        request: Bytes,
        sent: Sent,
        ballot: &Arc<dyn Votes>,
        counts: bool,
    ) {
        let home = self.home(home_key);
        let script = match sent {
            Sent::Script(script) => Some(ScriptRequest {
                script,
                home,
                request: Bytes::new(),
            }),
            _ => None,
        };
        let vote = Vote {
            ballot: Some(ballot.clone()),
            counts,
            master: self.0.clone(),
            script,
        };
        // A refusal drops the vote, which counts it as failed.
        let _ = self.queue(home, request, ReplyTo::Vote(vote), sent.checked());
    }

    /// One `SCAN` page of fence keys from `cursor` (empty: the first); the keys, and where the
    /// next page starts (`None` after the last).
    async fn scan_fence_keys(
        &self,
        cursor: Bytes,
    ) -> Result<(Vec<Bytes>, Option<Bytes>), BackendError> {
        let pattern = &self.0.names.fence_pattern;
        let cursor = if cursor.is_empty() {
            Bytes::from_static(b"0")
        } else {
            cursor
        };
        let mut count = itoa::Buffer::new();
        let count = count.format(FENCE_PAGE).as_bytes();
        let page = self
            .call(
                pattern,
                &[b"SCAN", &cursor, b"MATCH", pattern, b"COUNT", count],
            )
            .await?;
        let Frame::Array(parts) = page else {
            return Err(BackendError::Unexpected(format!("{page:?}")));
        };
        let [Frame::BulkString(next), Frame::Array(keys)] = &parts[..] else {
            return Err(BackendError::Unexpected(format!("{parts:?}")));
        };
        let keys = keys
            .iter()
            .filter_map(|k| match k {
                Frame::BulkString(k) => Some(k.clone()),
                _ => None,
            })
            .collect();
        Ok((keys, (&next[..] != b"0").then(|| next.clone())))
    }

    /// One page of the fence sweep (see [`scripts::SWEEP_FENCES`]).
    async fn sweep_page(
        self,
        cursor: Bytes,
        expire_ms: u64,
    ) -> Result<Option<Bytes>, BackendError> {
        let (keys, next) = self.scan_fence_keys(cursor).await?;
        if !keys.is_empty() {
            let floor_key = &self.0.names.fence_floor;
            let mut all: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
            all.push(floor_key);
            let mut ms = itoa::Buffer::new();
            let ms = ms.format(expire_ms).as_bytes();
            self.eval_on(floor_key, &scripts::SWEEP_FENCES, &all, &[ms])
                .await?;
        }
        Ok(next)
    }

    /// One page of fence counters: `SCAN` from `cursor` over the fence pattern, then `MGET` of
    /// the keys it returned and the floor.
    async fn scan_fences(self, cursor: Bytes) -> Result<FencePage, BackendError> {
        let pattern = self.0.names.fence_pattern.clone();
        let floor_key = self.0.names.fence_floor.clone();
        let (keys, next) = self.scan_fence_keys(cursor).await?;
        let mut values = if self.0.names.sharded {
            // A node's counters sit in many slots: one `GET` each, all in one batch.
            let gets = keys
                .iter()
                .chain([&floor_key])
                .map(|k| self.call(k, &[b"GET", k]));
            futures_util::future::try_join_all(gets).await?
        } else {
            let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 2);
            args.push(b"MGET");
            args.extend(keys.iter().map(|k| &k[..]));
            args.push(&floor_key);
            let Frame::Array(values) = self.call(&pattern, &args).await? else {
                return Err(BackendError::Unexpected("MGET answered no array".into()));
            };
            values
        };
        let number = |v: &Frame| match v {
            Frame::BulkString(v) => std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()),
            _ => None,
        };
        let floor = values.pop().as_ref().and_then(number).unwrap_or(0);
        let counters = keys
            .into_iter()
            .zip(&values)
            .filter_map(|(key, value)| Some((key, number(value)?)))
            .collect();
        Ok(FencePage {
            counters,
            floor,
            next,
        })
    }
}

impl RedisMaster {
    /// [`Master::raise_fences`] on a cluster node, whose counters sit in many slots: one raise
    /// per counter and one for the floor, all queued at once.
    fn raise_each(
        &self,
        counters: &[(Bytes, u64)],
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let mut n = itoa::Buffer::new();
        let floor_key = self.0.names.fence_floor.clone();
        let raises: Vec<_> = counters
            .iter()
            .map(|(key, fence)| (&key[..], *fence))
            .chain([(&floor_key[..], floor)])
            .map(|(key, fence)| {
                self.eval(&scripts::RAISE_FENCE, key, &[n.format(fence).as_bytes()])
            })
            .collect();
        async move {
            futures_util::future::try_join_all(raises).await?;
            Ok(())
        }
    }
}

impl Master for RedisMaster {
    fn votes(&self) -> bool {
        self.0.votes()
    }

    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::Acquire { key, token, ttl_ms })
    }

    fn release(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::Release { key, marker, token })
    }

    fn mark_waiting(
        &self,
        key: &[u8],
        marker: &[u8],
        waiter: &[u8],
        ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let mut ttl = itoa::Buffer::new();
        // On the lock key's connection: it reaches the master before the attempt that follows.
        let reply = self.eval_on(
            key,
            &scripts::MARK_WAITING,
            &[marker],
            &[ttl.format(ms).as_bytes(), waiter],
        );
        async move { reply.await.map(|_| ()) }
    }

    fn unmark_waiting(
        &self,
        key: &[u8],
        marker: &[u8],
        waiter: &[u8],
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        // On the lock key's connection too: it cannot overtake a mark sent before it.
        let reply = self.eval_on(key, &scripts::UNMARK_WAITING, &[marker], &[waiter]);
        async move { reply.await.map(|_| ()) }
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::Extend { key, token, ttl_ms })
    }

    fn swap(
        &self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::Swap {
            key,
            token,
            new_token,
            ttl_ms,
        })
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        let reply = self.eval(&scripts::INSPECT, key, &[]);
        async move {
            match wrong_type_is_absent(reply.await)? {
                Frame::Null => Ok(None),
                Frame::Array(items) => match &items[..] {
                    [Frame::BulkString(token), Frame::Integer(pttl)] => Ok(Some(KeyState {
                        token: token.clone(),
                        pttl_ms: u64::try_from(*pttl).ok(),
                    })),
                    _ => Err(BackendError::Unexpected(format!("{items:?}"))),
                },
                other => Err(BackendError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        let floor = &self.0.names.fence_floor[..];
        let reply = if self.0.names.sharded {
            self.eval_keys(&scripts::READ_FENCE, &[fence_key], &[floor])
        } else {
            self.eval_keys(&scripts::READ_FENCE, &[fence_key, floor], &[])
        };
        async move { expect_count(reply.await?) }
    }

    fn held_as(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<HeldAs>, BackendError>> + Send + use<> {
        // A refused LOCK asks this: `TYPE` costs the master a small part of what a script does,
        // and only a semaphore's key needs the script, for its count.
        let home = self.home(key);
        let typed = self.send(home, encode(&[b"TYPE", key]));
        let (this, key) = (self.clone(), Bytes::copy_from_slice(key));
        async move {
            match typed.await? {
                Frame::SimpleString(t) | Frame::BulkString(t) => match &t[..] {
                    b"none" => return Ok(None),
                    b"string" => return Ok(Some(HeldAs::Exclusive)),
                    b"zset" => return Ok(Some(HeldAs::Shared)),
                    _ => {}
                },
                other => return Err(BackendError::Unexpected(format!("{other:?}"))),
            }
            match this.eval(&scripts::HELD_AS, &key, &[]).await? {
                Frame::Null => Ok(None),
                Frame::Array(items) => match &items[..] {
                    [Frame::BulkString(kind), Frame::Integer(n)] => held_as(kind, *n).map(Some),
                    _ => Err(BackendError::Unexpected(format!("{items:?}"))),
                },
                other => Err(BackendError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    fn acquire_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        ttl_ms: u64,
        offset: u32,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        let run = &self.0.names.run_marker[..];
        let mut keys: Vec<&[u8]> = Vec::with_capacity(2 + slots.len());
        keys.push(key);
        keys.extend(slots.iter().map(|s| &s[..]));
        let (mut ttl, mut n, mut o) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        let mut argv = vec![
            base,
            ttl.format(ttl_ms).as_bytes(),
            n.format(slots.len()).as_bytes(),
            o.format(offset).as_bytes(),
        ];
        // On a cluster node the run marker sits in another slot: an argument, not a key.
        if self.0.names.sharded {
            argv.push(run);
        } else {
            keys.push(run);
        }
        let reply = self.eval_on(key, &scripts::ACQUIRE_PERMIT, &keys, &argv);
        async move { expect_take(reply.await) }
    }

    fn release_permit(
        &self,
        key: &[u8],
        marker: &[u8],
        slots: &[Bytes],
        base: &[u8],
        keep: Option<u32>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let mut keys: Vec<&[u8]> = Vec::with_capacity(2 + slots.len());
        keys.extend([key, marker]);
        keys.extend(slots.iter().map(|s| &s[..]));
        let (mut n, mut k) = (itoa::Buffer::new(), itoa::Buffer::new());
        let keep = keep.map_or(-1, i64::from);
        let argv = [
            base,
            n.format(slots.len()).as_bytes(),
            k.format(keep).as_bytes(),
            &self.0.names.release_channel[..],
            self.publish(),
        ];
        let reply = self.eval_on(key, &scripts::RELEASE_PERMIT, &keys, &argv);
        async move { expect_bool(reply.await) }
    }

    fn extend_permit(
        &self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let mut ttl = itoa::Buffer::new();
        let argv = [token, ttl.format(ttl_ms).as_bytes()];
        let reply = self.eval_on(key, &scripts::EXTEND_PERMIT, &[key, slot], &argv);
        async move { expect_bool(reply.await) }
    }

    fn extend_named_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        names: &[Bytes],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send + use<> {
        let mut keys: Vec<&[u8]> = Vec::with_capacity(1 + slots.len());
        keys.push(key);
        keys.extend(slots.iter().map(|s| &s[..]));
        let (mut ttl, mut n) = (itoa::Buffer::new(), itoa::Buffer::new());
        let mut argv = vec![
            ttl.format(ttl_ms).as_bytes(),
            n.format(slots.len()).as_bytes(),
        ];
        argv.extend(names.iter().map(|s| &s[..]));
        let reply = self.eval_on(key, &scripts::EXTEND_NAMED_PERMIT, &keys, &argv);
        async move {
            match reply.await? {
                Frame::Integer(-1) => Ok(None),
                Frame::Integer(slot) => u32::try_from(slot)
                    .map(Some)
                    .map_err(|_| BackendError::Unexpected(slot.to_string())),
                other => Err(BackendError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    fn acquire_shared(
        &self,
        key: &[u8],
        writers: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        let run = &self.0.names.run_marker[..];
        let mut ttl = itoa::Buffer::new();
        let ttl = ttl.format(ttl_ms).as_bytes();
        let reply = if self.0.names.sharded {
            let argv = [token, ttl, run];
            self.eval_on(key, &scripts::ACQUIRE_SHARED, &[key, writers], &argv)
        } else {
            let argv = [token, ttl];
            self.eval_on(key, &scripts::ACQUIRE_SHARED, &[key, writers, run], &argv)
        };
        async move { expect_take(reply.await) }
    }

    fn release_shared(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let argv = [token, &self.0.names.release_channel[..], self.publish()];
        let reply = self.eval_keys(&scripts::RELEASE_SHARED, &[key, marker], &argv);
        async move { expect_bool(reply.await) }
    }

    fn extend_shared(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let mut ttl = itoa::Buffer::new();
        let reply = self.eval(
            &scripts::EXTEND_SHARED,
            key,
            &[token, ttl.format(ttl_ms).as_bytes()],
        );
        async move { expect_bool(reply.await) }
    }

    fn token_pttl(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send + use<> {
        let reply = self.eval(&scripts::TOKEN_PTTL, key, &[token]);
        async move {
            match reply.await? {
                Frame::Integer(ms) => Ok(u64::try_from(ms).ok()),
                other => Err(BackendError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::AcquireFenced {
            key,
            fence_key,
            token,
            ttl_ms,
            fence,
        })
    }

    fn raise_fences(
        &self,
        counters: &[(Bytes, u64)],
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        if self.0.names.sharded {
            return Either::Left(self.raise_each(counters, floor));
        }
        let floor_key = &self.0.names.fence_floor[..];
        let mut keys: Vec<&[u8]> = counters.iter().map(|(k, _)| &k[..]).collect();
        keys.push(floor_key);
        let mut numbers: Vec<itoa::Buffer> = vec![itoa::Buffer::new(); counters.len() + 1];
        let values: Vec<u64> = counters.iter().map(|(_, f)| *f).chain([floor]).collect();
        let argv: Vec<&[u8]> = numbers
            .iter_mut()
            .zip(&values)
            .map(|(buf, v)| buf.format(*v).as_bytes())
            .collect();
        // On the floor's connection: one page's raises are one request, in order.
        let reply = self.eval_on(floor_key, &scripts::RAISE_FENCES, &keys, &argv);
        Either::Right(async move { reply.await.map(|_| ()) })
    }

    fn fence_page(
        &self,
        cursor: &[u8],
    ) -> impl Future<Output = Result<FencePage, BackendError>> + Send + use<> {
        self.clone().scan_fences(Bytes::copy_from_slice(cursor))
    }

    fn sweep_fences(
        &self,
        cursor: &[u8],
        expire_ms: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, BackendError>> + Send + use<> {
        self.clone()
            .sweep_page(Bytes::copy_from_slice(cursor), expire_ms)
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let mut f = itoa::Buffer::new();
        let reply = self.eval(
            &scripts::RAISE_FENCE,
            &self.0.names.fence_floor,
            &[f.format(floor).as_bytes()],
        );
        async move { reply.await.map(|_| ()) }
    }

    fn cast(&self, ask: Ask<'_>, ballot: &Arc<dyn Votes>, counts: bool) {
        let (request, sent) = self.command(ask);
        self.cast_request(ask.key(), request, sent, ballot, counts);
    }

    fn fences_lost(&self) -> bool {
        self.0.fences_lost()
    }

    fn fences_repaired(&self) {
        self.0.fences_repaired();
    }
}
