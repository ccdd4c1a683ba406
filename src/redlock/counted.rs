//! Rounds for the two counted primitives, over the same masters as the mutex.
//!
//! A **semaphore** of n permits is n slot keys, each an ordinary Redlock mutex: a permit is a
//! quorum of masters that gave the *same* slot to one token. Each master takes the first free
//! slot from an offset the round chose (one script, so free permits cost one round, not n);
//! masters that answered another slot are freed at once. Two holders of one slot would be two
//! holders of one mutex, which Redlock's quorum intersection excludes; so at most n permits are
//! held at any time, whatever the masters' individual counts.
//!
//! A **read/write lock** keeps its readers in a set at the lock key; a writer takes the key
//! with the mutex's own `SET NX`, which fails where the set exists, and a reader's script fails
//! where the writer's token is. One master decides reader against writer in one step, so a
//! reader's quorum and a writer's quorum, which share a master, cannot both be granted.
//!
//! Both count only the answers of masters that may vote, as every round does.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use super::quorum::{self, Tally, Verdict};
use super::{LockError, LockKey, Redlock};
use crate::backend::{BackendError, HeldAs, Master, Take, permit_token};

/// Rounds a permit acquire may take when masters answer with different slots (each round
/// frees what the last one took): more would only spend the TTL on a contended key.
const PERMIT_ROUNDS: usize = 3;

/// What a counted acquire got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    /// Granted: the token the holder uses (a permit's names its slot), and its validity.
    Granted {
        /// The holder's token.
        token: Bytes,
        /// Validity left, in ms.
        validity_ms: u64,
    },
    /// Not granted: every permit is held, or a writer holds the key or waits for it.
    Held,
    /// Not granted: a quorum of masters use the key as another kind.
    Conflict(HeldAs),
}

/// The answers that came in time: for each, whether its master votes, and the answer.
type Answers<T> = Vec<(bool, T)>;

impl<M: Master> Redlock<M> {
    /// Asks every master `ask` at once (a quarantined one too: it keeps what it is sent) and
    /// collects the answers that arrive within `wait`, stopping as soon as `decided` says the
    /// answers so far settle it.
    async fn gather<T, F>(
        &self,
        wait: Duration,
        ask: impl Fn(&M) -> F,
        decided: impl Fn(&Answers<T>) -> bool,
    ) -> Answers<T>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        let mut pending: FuturesUnordered<_> = self
            .masters
            .iter()
            .map(|m| {
                let counts = m.votes();
                let answer = ask(m);
                async move { (counts, answer.await) }
            })
            .collect();
        let mut answers = Vec::with_capacity(self.masters.len());
        let collect = async {
            while let Some((counts, answer)) = pending.next().await {
                if let Ok(answer) = answer {
                    answers.push((counts, answer));
                    if decided(&answers) {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(wait, collect).await;
        answers
    }

    /// A yes-or-no round as a [`Tally`] of the voting masters' answers so far; a quarantined
    /// master's answer counts as failed. Once the round is over (`over`), every master that
    /// did not answer has failed too.
    fn tally(&self, answers: &Answers<bool>, over: bool) -> Tally {
        let mut tally = Tally::new(self.masters.len());
        for (counts, yes) in answers {
            match (counts, yes) {
                (true, true) => tally.yes += 1,
                (true, false) => tally.no += 1,
                (false, _) => tally.failed += 1,
            }
        }
        if over {
            tally.failed = tally.n - tally.yes - tally.no;
        }
        tally
    }

    /// Tries to take a permit of the semaphore at `lock` whose slots are `slots`, for `ttl_ms`,
    /// for `taker`: the token is the name of the round that took it ([`Taker::round`]) and the
    /// slot.
    pub async fn lock_permit(
        &self,
        lock: &LockKey,
        slots: &[Bytes],
        taker: Taker<'_>,
        ttl_ms: u64,
    ) -> Result<Counted, LockError> {
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        let q = self.quorum();
        let mut offset = taker.first_slot(count);
        let mut outcome = Ok(Counted::Held);
        for round in 0..PERMIT_ROUNDS {
            // Each round takes slots under a name of its own: a release of an earlier round's
            // slots that reaches a master late frees nothing this round took.
            let base = taker.round(round);
            let start = Instant::now();
            let n = self.masters.len();
            let answers = self
                .gather(
                    self.wait_for(ttl_ms),
                    |m| m.acquire_permit(&lock.key, slots, &base, ttl_ms, offset),
                    |answers| {
                        let best = most_taken(answers).map_or(0, |(_, c)| c);
                        best >= q || best + (n - answers.len()) < q || answers.len() == n
                    },
                )
                .await;
            let all_same = answers.len() == n
                && answers.iter().all(|(_, a)| *a == answers[0].1)
                && matches!(answers[0].1, Take::Taken(_));
            match most_taken(&answers) {
                Some((slot, taken)) if taken >= q => {
                    if !all_same {
                        self.free_permits(lock, slots, &base, Some(slot));
                    }
                    return match quorum::validity_ms(ttl_ms, start.elapsed()) {
                        Some(validity_ms) => Ok(Counted::Granted {
                            token: permit_token(&base, slot, count),
                            validity_ms,
                        }),
                        None => {
                            self.free_permits(lock, slots, &base, None);
                            Err(LockError::TooLate {
                                elapsed_ms: quorum::elapsed_ms_ceil(start.elapsed()),
                                ttl_ms,
                            })
                        }
                    };
                }
                split => {
                    // A slot may have landed where a reply was lost or fell short: free them all.
                    let none_taken = answers.len() == n && split.is_none();
                    if !none_taken {
                        self.free_permits(lock, slots, &base, None);
                    }
                    outcome = self.not_granted(&answers);
                    match split {
                        // Masters disagreed on the slot: once more, from the slot most took.
                        Some((slot, _)) if outcome == Ok(Counted::Held) => offset = slot,
                        _ => return outcome,
                    }
                }
            }
        }
        outcome
    }

    /// Sends every master the release of the slots any round of `taker`'s acquire took,
    /// and waits for nothing: for a taker that is gone before it could learn whether it was
    /// granted.
    pub fn abandon_permits(&self, lock: &LockKey, slots: &[Bytes], taker: Taker<'_>) {
        for round in 0..PERMIT_ROUNDS {
            self.free_permits(lock, slots, &taker.round(round), None);
        }
    }

    /// Sends every master the release of the read lock `token` and waits for nothing.
    pub fn abandon_shared(&self, lock: &LockKey, token: &[u8]) {
        for m in self.masters.iter() {
            drop(m.release_shared(&lock.key, &lock.marker, token));
        }
    }

    /// Sends every master the release of the slots `base` took, except `keep`, and waits for
    /// nothing: the requests are queued before this returns, ahead of anything sent after.
    fn free_permits(&self, lock: &LockKey, slots: &[Bytes], base: &[u8], keep: Option<u32>) {
        for m in self.masters.iter() {
            drop(m.release_permit(&lock.key, &lock.marker, slots, base, keep));
        }
    }

    /// A counted acquire that no quorum granted: a conflict when a quorum named one, held when
    /// a quorum answered, no quorum otherwise.
    fn not_granted(&self, answers: &Answers<Take>) -> Result<Counted, LockError> {
        let voting: Vec<Take> = answers
            .iter()
            .filter(|(c, _)| *c)
            .map(|(_, a)| *a)
            .collect();
        for conflict in voting.iter().filter(|a| matches!(a, Take::Conflict(_))) {
            if voting.iter().filter(|a| *a == conflict).count() >= self.quorum()
                && let Take::Conflict(kind) = conflict
            {
                return Ok(Counted::Conflict(*kind));
            }
        }
        if voting.len() >= self.quorum() {
            Ok(Counted::Held)
        } else {
            Err(self.no_quorum(voting.len()))
        }
    }

    /// Releases every slot of `slots` holding a permit of `base`: true when a quorum freed one.
    pub async fn unlock_permit(
        &self,
        lock: &LockKey,
        slots: &[Bytes],
        base: &[u8],
    ) -> Result<bool, LockError> {
        self.release_round(|m| m.release_permit(&lock.key, &lock.marker, slots, base, None))
            .await
    }

    /// Sets the TTL of the permit `token` on `slot` of the semaphore `key`: the validity left
    /// when a quorum extended it in time.
    pub async fn extend_permit(
        &self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, LockError> {
        self.extend_round(ttl_ms, |m| m.extend_permit(key, slot, token, ttl_ms))
            .await
    }

    /// Releases the permit a named taker holds (whichever round took it): true when a quorum
    /// freed one.
    pub async fn unlock_named_permit(
        &self,
        lock: &LockKey,
        slots: &[Bytes],
        name: &[u8],
    ) -> Result<bool, LockError> {
        let names = Taker::Named(name).rounds();
        self.release_round(|m| {
            let frees: Vec<_> = names
                .iter()
                .map(|base| m.release_permit(&lock.key, &lock.marker, slots, base, None))
                .collect();
            async move {
                let (mut freed, mut failed) = (false, None);
                for free in frees {
                    match free.await {
                        Ok(yes) => freed |= yes,
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    Some(e) if !freed => Err(e),
                    _ => Ok(freed),
                }
            }
        })
        .await
    }

    /// Sets the TTL of the permit a named taker holds on the semaphore `key` (whichever slot
    /// and round it is): the validity left when a quorum extended the same slot in time.
    pub async fn extend_named_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        name: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, LockError> {
        let names = Taker::Named(name).rounds();
        let start = Instant::now();
        let (q, n) = (self.quorum(), self.masters.len());
        let as_take = |slot: Option<u32>| slot.map_or(Take::Held, Take::Taken);
        let answers = self
            .gather(
                self.wait_for(ttl_ms),
                |m| {
                    let extended = m.extend_named_permit(key, slots, &names, ttl_ms);
                    async move { extended.await.map(as_take) }
                },
                |a| {
                    let best = most_taken(a).map_or(0, |(_, c)| c);
                    best >= q || best + (n - a.len()) < q || a.len() == n
                },
            )
            .await;
        match most_taken(&answers) {
            Some((_, extended)) if extended >= q => {
                Ok(quorum::validity_ms(ttl_ms, start.elapsed()))
            }
            _ if answers.iter().filter(|(c, _)| *c).count() >= q => Ok(None),
            _ => Err(self.no_quorum(answers.iter().filter(|(c, _)| *c).count())),
        }
    }

    /// Tries to take a read lock on `lock` for `ttl_ms` with `token`, unless a writer holds it
    /// or one named in `writers` waits for it.
    pub async fn lock_shared(
        &self,
        lock: &LockKey,
        writers: &[u8],
        token: Bytes,
        ttl_ms: u64,
    ) -> Result<Counted, LockError> {
        let start = Instant::now();
        let q = self.quorum();
        let n = self.masters.len();
        let taken = |a: &Answers<Take>| {
            a.iter()
                .filter(|(c, t)| *c && matches!(t, Take::Taken(_)))
                .count()
        };
        let answers = self
            .gather(
                self.wait_for(ttl_ms),
                |m| m.acquire_shared(&lock.key, writers, &token, ttl_ms),
                |a| taken(a) >= q || taken(a) + (n - a.len()) < q || a.len() == n,
            )
            .await;
        if taken(&answers) >= q {
            if let Some(validity_ms) = quorum::validity_ms(ttl_ms, start.elapsed()) {
                return Ok(Counted::Granted { token, validity_ms });
            }
        }
        self.abandon_shared(lock, &token);
        if taken(&answers) >= q {
            return Err(LockError::TooLate {
                elapsed_ms: quorum::elapsed_ms_ceil(start.elapsed()),
                ttl_ms,
            });
        }
        self.not_granted(&answers)
    }

    /// Releases the read lock `token` holds on `lock`: true when a quorum released it.
    pub async fn unlock_shared(&self, lock: &LockKey, token: &[u8]) -> Result<bool, LockError> {
        self.release_round(|m| m.release_shared(&lock.key, &lock.marker, token))
            .await
    }

    /// Sets the TTL of the read lock `token` holds on `key`: the validity left when a quorum
    /// extended it in time.
    pub async fn extend_shared(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, LockError> {
        self.extend_round(ttl_ms, |m| m.extend_shared(key, token, ttl_ms))
            .await
    }

    /// A read of every master: the voting masters' answers, when a quorum gave one (a
    /// quarantined master may have lost the key: its view does not count). It ends when every
    /// master answered, or earlier when `settled` says the voting answers so far decide it.
    async fn read_round<T, F>(
        &self,
        ask: impl Fn(&M) -> F,
        settled: impl Fn(&[&T]) -> bool,
    ) -> Result<Vec<T>, LockError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        let done = |a: &Answers<T>| {
            let voting: Vec<&T> = a.iter().filter(|(c, _)| *c).map(|(_, t)| t).collect();
            a.len() == self.masters.len() || settled(&voting)
        };
        let answers = self.gather(self.deadline, ask, done).await;
        let voting: Vec<T> = answers
            .into_iter()
            .filter(|(c, _)| *c)
            .map(|(_, a)| a)
            .collect();
        if voting.len() < self.quorum() {
            return Err(self.no_quorum(voting.len()));
        }
        Ok(voting)
    }

    /// A release round: every master asked `ask`; true when a quorum released (decided as
    /// soon as the answers so far settle it, as the mutex's release is).
    async fn release_round<F>(&self, ask: impl Fn(&M) -> F) -> Result<bool, LockError>
    where
        F: Future<Output = Result<bool, BackendError>>,
    {
        let decided = |a: &Answers<bool>| self.tally(a, false).is_decided();
        let answers = self.gather(self.deadline, ask, decided).await;
        self.released(self.tally(&answers, true))
    }

    /// An extension round to `ttl_ms`: the validity left when a quorum extended in time.
    async fn extend_round<F>(
        &self,
        ttl_ms: u64,
        ask: impl Fn(&M) -> F,
    ) -> Result<Option<u64>, LockError>
    where
        F: Future<Output = Result<bool, BackendError>>,
    {
        let start = Instant::now();
        let decided = |a: &Answers<bool>| self.tally(a, false).is_decided();
        let answers = self.gather(self.wait_for(ttl_ms), ask, decided).await;
        extended(
            self.tally(&answers, true).verdict(ttl_ms, start.elapsed()),
            self,
        )
    }

    /// The validity `token` has left on `key` (its token, or one of its readers) as a quorum
    /// sees it; `None` when no quorum holds it.
    pub async fn inspect_token(&self, key: &[u8], token: &[u8]) -> Result<Option<u64>, LockError> {
        let start = Instant::now();
        let voting = self
            .read_round(|m| m.token_pttl(key, token), |_| false)
            .await?;
        let pttls = voting.into_iter().flatten().collect();
        Ok(quorum::quorum_ttl_ms(
            self.masters.len(),
            pttls,
            start.elapsed(),
        ))
    }

    /// The kind a quorum of masters use `key` as; `None` when no quorum agrees on one (or it
    /// is free).
    pub async fn held_as(&self, key: &[u8]) -> Result<Option<HeldAs>, LockError> {
        let q = self.quorum();
        let agreed = |voting: &[&Option<HeldAs>]| -> Option<HeldAs> {
            voting
                .iter()
                .filter_map(|v| **v)
                .find(|k| voting.iter().filter(|v| ***v == Some(*k)).count() >= q)
        };
        // A refused plain LOCK asks this: done as soon as a quorum names one kind.
        let voting = self
            .read_round(|m| m.held_as(key), |v| agreed(v).is_some())
            .await?;
        Ok(agreed(&voting.iter().collect::<Vec<_>>()))
    }

    /// A release round's outcome: true when a quorum released, false when a quorum answered.
    pub(super) fn released(&self, tally: Tally) -> Result<bool, LockError> {
        if tally.yes >= self.quorum() {
            Ok(true)
        } else if tally.answered() >= self.quorum() {
            Ok(false)
        } else {
            Err(self.no_quorum(tally.answered()))
        }
    }
}

/// An extension round's outcome: the validity left when a quorum extended in time.
pub(super) fn extended<M: Master>(
    verdict: Verdict,
    redlock: &Redlock<M>,
) -> Result<Option<u64>, LockError> {
    match verdict {
        Verdict::Granted { validity_ms } => Ok(Some(validity_ms)),
        Verdict::Refused | Verdict::TooLate { .. } => Ok(None),
        Verdict::NoQuorum { answered } => Err(redlock.no_quorum(answered)),
    }
}

#[cfg(test)]
thread_local! {
    /// Switches the per-round names off on this thread (every round takes the first round's
    /// name), so the simulation can show what they prevent.
    pub(super) static ONE_NAME_FOR_ALL_ROUNDS: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// Whom a permit is taken for, and so the names its rounds take slots under: each round has a
/// name of its own, so a late release of an earlier round's slots frees nothing a later round
/// took.
#[derive(Debug, Clone, Copy)]
pub enum Taker<'a> {
    /// A `LOCK ... PERMITS n`: a generated token, whose last hex digit each round moves (so
    /// every name is still a generated token's form, and its permit's token says what it is).
    Token(&'a [u8]),
    /// A library's holder known by the name it gave (redis-semaphore's identifier): round r
    /// takes `<r>:<name>`, which no generated token starts with and no other name gives.
    Named(&'a [u8]),
}

impl Taker<'_> {
    /// The name round `round` takes its slots under.
    pub fn round(&self, round: usize) -> Bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        #[cfg(test)]
        let round = if ONE_NAME_FOR_ALL_ROUNDS.get() {
            0
        } else {
            round
        };
        match *self {
            Taker::Token(base) => {
                let mut name = base.to_vec();
                if let Some(last) = name.last_mut()
                    && let Some(digit) = HEX.iter().position(|h| h == last)
                {
                    *last = HEX[(digit + round) % 16];
                }
                Bytes::from(name)
            }
            Taker::Named(name) => Bytes::from([&[HEX[round % 16], b':'], name].concat()),
        }
    }

    /// The slot the first round starts from, among `count`: spread over the slots by the
    /// taker's name (a random token, or a library's identifier), so takers start apart, and a
    /// run with the same names (the simulation's) takes the same slots.
    fn first_slot(&self, count: u32) -> u32 {
        let (Taker::Token(name) | Taker::Named(name)) = *self;
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
    }

    /// The names of every round an acquire may take.
    pub fn rounds(&self) -> Vec<Bytes> {
        (0..PERMIT_ROUNDS).map(|r| self.round(r)).collect()
    }
}

/// The slot the most voting masters took, and how many took it.
fn most_taken(answers: &Answers<Take>) -> Option<(u32, usize)> {
    let mut best: Option<(u32, usize)> = None;
    for (counts, answer) in answers {
        if let (true, Take::Taken(slot)) = (counts, answer) {
            let took = answers
                .iter()
                .filter(|(c, a)| *c && *a == Take::Taken(*slot))
                .count();
            if best.is_none_or(|(_, most)| took > most) {
                best = Some((*slot, took));
            }
        }
    }
    best
}
