//! Deterministic simulation of the Redlock core: simulated masters on tokio's paused clock, with
//! requests delayed or lost on the way there, replies delayed or lost on the way back, master
//! clocks that run up to 1% fast or slow, and three ways for a master to lose keys it granted,
//! each with the rule the proxy applies against it (see [`Rules`]):
//!
//! - a restart that loses every key and breaks the connections: the new run is quarantined;
//! - a failover to a replica that had not yet received the last few ms of writes (a copy of the
//!   master's keyspace as it was then), which breaks the connections too: the new run is
//!   quarantined;
//! - a flush (`FLUSHALL`) that loses every key behind live connections: from that instant the
//!   master answers no to every acquire, since the proxy checks its run marker with each vote.
//!
//! Contending clients record every hold as the interval from the grant to its release, or to
//! the end of its validity; the properties: no two holds of one key overlap, and at each grant
//! a quorum of masters keeps the key from anyone else for at least the validity reported
//! (holding the token, or, having lost it, held out by a rule).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::quorum::quorum;
use super::{Redlock, Taker, key};
use crate::backend::mem::Keyspace;
use crate::backend::{BackendError, FencePage, HeldAs, KeyState, Master, Take};

const DEADLINE: Duration = Duration::from_millis(10);
const MAX_TTL_MS: u64 = 300;
/// The most a failover's replica lags behind its master.
const MAX_LAG_MS: u64 = 100;

/// A small deterministic generator, so a schedule is fully given by its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The proxy's rule against each way of losing keys; each can be switched off to show the
/// properties fail without it.
#[derive(Debug, Clone, Copy)]
struct Rules {
    /// A restarted master does not vote for [`MAX_TTL_MS`]: the proxy sees its new run_id on
    /// the new connection before any vote.
    restart: bool,
    /// A replica promoted in a failover does not vote for [`MAX_TTL_MS`], for the same reason.
    failover: bool,
    /// A flushed master answers no to every acquire for [`MAX_TTL_MS`] from the flush: the
    /// proxy checks its run marker with each acquire vote, so the very next vote sees it gone.
    flush: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            restart: true,
            failover: true,
            flush: true,
        }
    }
}

impl Rules {
    /// Every rule on but those `off` switches off.
    fn all_but(off: impl FnOnce(&mut Rules)) -> Rules {
        let mut rules = Rules::default();
        off(&mut rules);
        rules
    }
}

/// A way a master loses keys it granted.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// It restarts without persistence: every key is lost and its connections break.
    Restart,
    /// A replica that had not received the last `lag_ms` of its writes takes over: its keyspace
    /// goes back to what it was then, and its connections break.
    Failover { lag_ms: u64 },
    /// `FLUSHALL`: every key is lost, and the connections stay up.
    Flush,
}

/// Copies of a master's keyspace, each from an instant a request or fault changed it, going
/// back at least [`MAX_LAG_MS`], so a failover can find what a lagging replica holds. A keyspace
/// holds one lock key and few fence counters here, so a copy per change costs little.
#[derive(Debug)]
struct History(VecDeque<(Instant, Keyspace)>);

impl History {
    fn new(now: Instant) -> Self {
        History(VecDeque::from([(now, Keyspace::new())]))
    }

    /// Records `data` as it is at `now`, and forgets copies no failover can ask for any more.
    fn record(&mut self, now: Instant, data: &Keyspace) {
        self.0.push_back((now, data.clone()));
        // Keep the newest copy from before the lag horizon: it is the keyspace as of then. Each
        // pass drops one copy, so the loop ends at the latest when one is left.
        let horizon = now.checked_sub(Duration::from_millis(MAX_LAG_MS));
        while self.0.len() > 1 && horizon.is_some_and(|h| self.0[1].0 <= h) {
            self.0.pop_front();
        }
    }

    /// The keyspace as it was `lag` before `now`: the newest copy not after then (or the oldest
    /// kept, when then is before the simulation began).
    fn behind(&self, now: Instant, lag: Duration) -> Keyspace {
        let then = now.checked_sub(lag);
        let newest = self
            .0
            .iter()
            .rev()
            .find(|(t, _)| then.is_some_and(|then| *t <= then));
        newest.unwrap_or(&self.0[0]).1.clone()
    }
}

#[derive(Debug)]
struct SimState {
    rng: Rng,
    /// Keys expire at the real time this master's clock rate gives them (see [`expiry`]).
    data: Keyspace,
    history: History,
    /// Parts per thousand its clock runs fast (positive) or slow (negative), within 1%.
    skew_permille: i64,
    /// Until then it does not vote: its answers are not counted.
    quarantined_until: Option<Instant>,
    /// Until then it refuses every acquire, even one sent before (see [`Rules::flush`]).
    refuses_until: Option<Instant>,
    rules: Rules,
    loss_percent: u64,
    /// Bumped by each restart or failover: answers from an earlier run never arrive (its
    /// connections died).
    epoch: u64,
}

impl SimState {
    fn refuses(&self, now: Instant) -> bool {
        self.refuses_until.is_some_and(|u| now < u)
    }
}

/// A simulated master: each request is applied after a random delay (or lost), and answered
/// after another (or the answer lost).
#[derive(Debug, Clone)]
struct SimMaster(Arc<Mutex<SimState>>);

impl SimMaster {
    fn new(seed: u64, skew_permille: i64, loss_percent: u64, rules: Rules) -> Self {
        SimMaster(Arc::new(Mutex::new(SimState {
            rng: Rng(seed | 1),
            data: Keyspace::new(),
            history: History::new(Instant::now()),
            skew_permille,
            quarantined_until: None,
            refuses_until: None,
            rules,
            loss_percent,
            epoch: 0,
        })))
    }

    /// Suffers `fault` now, and the rule against it where that rule is on.
    fn suffer(&self, fault: Fault) {
        let mut s = self.0.lock().unwrap();
        let now = Instant::now();
        let held_out = Some(now + Duration::from_millis(MAX_TTL_MS));
        match fault {
            Fault::Restart => {
                s.data.clear();
                s.epoch += 1;
                if s.rules.restart {
                    s.quarantined_until = held_out;
                }
            }
            Fault::Failover { lag_ms } => {
                s.data = s.history.behind(now, Duration::from_millis(lag_ms));
                s.epoch += 1;
                if s.rules.failover {
                    s.quarantined_until = held_out;
                }
            }
            Fault::Flush => {
                s.data.clear();
                if s.rules.flush {
                    s.refuses_until = held_out;
                }
            }
        }
        let SimState { history, data, .. } = &mut *s;
        history.record(now, data);
    }

    /// Real time for which it will not let anyone else take `key`: while it holds `token`, or
    /// while a rule holds it out (it lost the key, but cannot vote for another holder).
    fn covers_for(&self, key: &[u8], token: &[u8]) -> Duration {
        let s = self.0.lock().unwrap();
        let now = Instant::now();
        let held = s
            .data
            .get(key, now)
            .filter(|(t, _)| *t == token)
            .map_or(Duration::ZERO, |(_, exp)| exp - now);
        let held_out = [s.quarantined_until, s.refuses_until]
            .into_iter()
            .flatten()
            .map(|u| u.saturating_duration_since(now))
            .max()
            .unwrap_or(Duration::ZERO);
        held.max(held_out)
    }

    fn request<T, F>(
        &self,
        op: F,
    ) -> impl Future<Output = Result<T, BackendError>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&mut SimState, Instant) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let (apply_in, reply_in, lost_there, lost_back, epoch) = {
            let mut s = self.0.lock().unwrap();
            let loss = s.loss_percent;
            let epoch = s.epoch;
            let r = &mut s.rng;
            (
                Duration::from_micros(r.below(8_000)),
                Duration::from_micros(r.below(8_000)),
                r.chance(loss),
                r.chance(loss),
                epoch,
            )
        };
        let state = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(apply_in).await;
            if lost_there {
                return;
            }
            let result = {
                let mut s = state.lock().unwrap();
                if s.epoch != epoch {
                    return;
                }
                let now = Instant::now();
                let result = op(&mut s, now);
                let SimState { history, data, .. } = &mut *s;
                history.record(now, data);
                result
            };
            tokio::time::sleep(reply_in).await;
            if !lost_back && state.lock().unwrap().epoch == epoch {
                let _ = tx.send(result);
            }
        });
        async move { rx.await.map_err(|_| BackendError::Disconnected) }
    }
}

/// When a key set now for `ttl_ms` really expires on a master whose clock is skewed.
fn expiry(now: Instant, ttl_ms: u64, skew_permille: i64) -> Instant {
    let real_us = (ttl_ms as i64 * 1000 * (1000 - skew_permille)) / 1000;
    now + Duration::from_micros(real_us.max(0) as u64)
}

impl Master for SimMaster {
    fn votes(&self) -> bool {
        let s = self.0.lock().unwrap();
        s.quarantined_until.is_none_or(|u| Instant::now() >= u)
    }

    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, token) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(token));
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            !s.refuses(now) && s.data.acquire(&key, &token, expires, now)
        })
    }

    fn release(
        &self,
        key: &[u8],
        _marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, token) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(token));
        self.request(move |s, now| s.data.release(&key, &token, now))
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, token) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(token));
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            s.data.extend(&key, &token, expires, now)
        })
    }

    fn swap(
        &self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, token) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(token));
        let new_token = Bytes::copy_from_slice(new_token);
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            s.data.swap(&key, &token, &new_token, expires, now)
        })
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        let key = Bytes::copy_from_slice(key);
        self.request(move |s, now| s.data.inspect(&key, now))
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        let fence_key = Bytes::copy_from_slice(fence_key);
        self.request(move |s, _| s.data.read_fence(&fence_key))
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, fence_key, token) = (
            Bytes::copy_from_slice(key),
            Bytes::copy_from_slice(fence_key),
            Bytes::copy_from_slice(token),
        );
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            !s.refuses(now)
                && s.data
                    .acquire_fenced(&key, &fence_key, &token, expires, fence, now)
        })
    }

    fn raise_fences(
        &self,
        counters: &[(Bytes, u64)],
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let counters = counters.to_vec();
        self.request(move |s, _| s.data.raise_fences(&counters, floor))
    }

    fn fence_page(
        &self,
        cursor: &[u8],
    ) -> impl Future<Output = Result<FencePage, BackendError>> + Send + use<> {
        let cursor = Bytes::copy_from_slice(cursor);
        self.request(move |s, _| s.data.fence_page(&cursor))
    }

    fn sweep_fences(
        &self,
        cursor: &[u8],
        _expire_ms: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, BackendError>> + Send + use<> {
        let cursor = Bytes::copy_from_slice(cursor);
        self.request(move |s, _| s.data.sweep_fences(&cursor))
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        self.request(move |s, _| s.data.raise_fence_floor(floor))
    }

    fn mark_waiting(
        &self,
        _key: &[u8],
        marker: &[u8],
        waiter: &[u8],
        ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let (marker, waiter) = (
            Bytes::copy_from_slice(marker),
            Bytes::copy_from_slice(waiter),
        );
        self.request(move |s, now| {
            let expires = expiry(now, ms, s.skew_permille);
            s.data.mark(&marker, &waiter, expires, now)
        })
    }

    fn unmark_waiting(
        &self,
        _key: &[u8],
        marker: &[u8],
        waiter: &[u8],
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let (marker, waiter) = (
            Bytes::copy_from_slice(marker),
            Bytes::copy_from_slice(waiter),
        );
        self.request(move |s, _| s.data.unmark(&marker, &waiter))
    }

    fn held_as(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<HeldAs>, BackendError>> + Send + use<> {
        let key = Bytes::copy_from_slice(key);
        self.request(move |s, now| s.data.held_as(&key, now))
    }

    fn acquire_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        ttl_ms: u64,
        offset: u32,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        let (key, slots, base) = (
            Bytes::copy_from_slice(key),
            slots.to_vec(),
            Bytes::copy_from_slice(base),
        );
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            if s.refuses(now) {
                return Take::Held;
            }
            s.data
                .acquire_permit(&key, &slots, &base, offset, expires, now)
        })
    }

    fn release_permit(
        &self,
        key: &[u8],
        _marker: &[u8],
        slots: &[Bytes],
        base: &[u8],
        keep: Option<u32>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, slots, base) = (
            Bytes::copy_from_slice(key),
            slots.to_vec(),
            Bytes::copy_from_slice(base),
        );
        self.request(move |s, now| s.data.release_permit(&key, &slots, &base, keep, now))
    }

    fn extend_permit(
        &self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, slot, token) = (
            Bytes::copy_from_slice(key),
            Bytes::copy_from_slice(slot),
            Bytes::copy_from_slice(token),
        );
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            s.data.extend_permit(&key, &slot, &token, expires, now)
        })
    }

    fn extend_named_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        names: &[Bytes],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send + use<> {
        let (key, slots, names) = (Bytes::copy_from_slice(key), slots.to_vec(), names.to_vec());
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            s.data
                .extend_named_permit(&key, &slots, &names, expires, now)
        })
    }

    fn acquire_shared(
        &self,
        key: &[u8],
        writers: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        let (key, writers, token) = (
            Bytes::copy_from_slice(key),
            Bytes::copy_from_slice(writers),
            Bytes::copy_from_slice(token),
        );
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            if s.refuses(now) {
                return Take::Held;
            }
            s.data.acquire_shared(&key, &writers, &token, expires, now)
        })
    }

    fn release_shared(
        &self,
        key: &[u8],
        _marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, token) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(token));
        self.request(move |s, now| s.data.release_shared(&key, &token, now))
    }

    fn extend_shared(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let (key, token) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(token));
        self.request(move |s, now| {
            let expires = expiry(now, ttl_ms, s.skew_permille);
            s.data.extend_shared(&key, &token, expires, now)
        })
    }

    fn token_pttl(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send + use<> {
        let (key, token) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(token));
        self.request(move |s, now| s.data.token_pttl(&key, &token, now))
    }
}

/// One schedule's parameters.
#[derive(Debug, Clone)]
struct Schedule {
    seed: u64,
    masters: usize,
    skews_permille: Vec<i64>,
    loss_percent: u64,
    /// When (ms after the start), to which master (modulo their number), and what.
    faults: Vec<(u64, usize, Fault)>,
    clients: usize,
    attempts: usize,
}

/// What one schedule produced.
#[derive(Debug, Default)]
struct Outcome {
    grants: usize,
    /// Pairs of holds of the key that overlap in time: the lock granted twice.
    overlaps: usize,
    violations: Vec<String>,
}

/// Runs `schedule` on a paused clock, with `rules` against its faults, and checks both
/// properties.
fn simulate(schedule: &Schedule, rules: Rules) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let masters: Vec<SimMaster> = (0..schedule.masters)
            .map(|i| {
                SimMaster::new(
                    schedule.seed.wrapping_add(i as u64 * 7919),
                    schedule.skews_permille[i],
                    schedule.loss_percent,
                    rules,
                )
            })
            .collect();
        let redlock = Arc::new(Redlock::new(masters.clone(), DEADLINE));
        let t0 = Instant::now();
        for &(at_ms, who, fault) in &schedule.faults {
            let m = masters[who % masters.len()].clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + Duration::from_millis(at_ms)).await;
                m.suffer(fault);
            });
        }
        let grants: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut clients = Vec::new();
        for c in 0..schedule.clients {
            let (redlock, masters, grants, violations) = (
                redlock.clone(),
                masters.clone(),
                grants.clone(),
                violations.clone(),
            );
            let mut rng = Rng(schedule.seed ^ ((c as u64 + 1) * 0x9e37_79b9));
            let attempts = schedule.attempts;
            clients.push(tokio::spawn(async move {
                for _ in 0..attempts {
                    let ttl = 20 + rng.below(MAX_TTL_MS - 20);
                    if let Ok(Some(g)) = redlock.lock(&key(b"k"), ttl).await {
                        let now = Instant::now();
                        let validity = Duration::from_millis(g.validity_ms);
                        let covering = masters
                            .iter()
                            .filter(|m| m.covers_for(b"k", &g.token) >= validity)
                            .count();
                        if covering < quorum(masters.len()) {
                            violations.lock().unwrap().push(format!(
                                "granted for {validity:?} but only {covering} masters hold it that long"
                            ));
                        }
                        // Work for part of the validity, then release (the hold ends when the
                        // client stops using the lock), or let it run out.
                        let work = validity.mul_f64(rng.below(100) as f64 / 100.0);
                        tokio::time::sleep(work).await;
                        if rng.chance(80) {
                            grants.lock().unwrap().push((now, Instant::now()));
                            let _ = redlock.unlock(&key(b"k"), &g.token).await;
                        } else {
                            grants.lock().unwrap().push((now, now + validity));
                        }
                    }
                    tokio::time::sleep(Duration::from_micros(rng.below(20_000))).await;
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        let mut grants = grants.lock().unwrap().clone();
        grants.sort();
        let mut found = violations.lock().unwrap().clone();
        let mut overlaps = 0;
        for pair in grants.windows(2) {
            if pair[1].0 < pair[0].1 {
                overlaps += 1;
                found.push(format!(
                    "overlapping grants: {:?} and {:?} after start",
                    (pair[0].0 - t0, pair[0].1 - t0),
                    (pair[1].0 - t0, pair[1].1 - t0)
                ));
            }
        }
        Outcome {
            grants: grants.len(),
            overlaps,
            violations: found,
        }
    })
}

/// Each kind of fault, a failover's lag drawn from 1 to [`MAX_LAG_MS`].
fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::Restart),
        (1..=MAX_LAG_MS).prop_map(|lag_ms| Fault::Failover { lag_ms }),
        Just(Fault::Flush),
    ]
}

/// Up to three faults at random, and sometimes two more close together on two masters: when
/// every master answered, one master losing the key cannot break a 3-master quorum alone.
fn faults() -> impl Strategy<Value = Vec<(u64, usize, Fault)>> {
    let pair = (0u64..400, 0usize..5, 0u64..30, fault(), fault()).prop_map(
        |(at_ms, who, gap_ms, first, second)| {
            // The next master, modulo their number, is always another one.
            vec![(at_ms, who, first), (at_ms + gap_ms, who + 1, second)]
        },
    );
    (
        proptest::collection::vec((0u64..400, 0usize..5, fault()), 0..=3),
        proptest::option::of(pair),
    )
        .prop_map(|(mut faults, pair)| {
            faults.extend(pair.into_iter().flatten());
            faults
        })
}

fn schedules() -> impl Strategy<Value = Schedule> {
    (
        any::<u64>(),
        prop_oneof![Just(3usize), Just(5usize)],
        proptest::collection::vec(-10i64..=10, 5),
        0u64..=15,
        faults(),
        2usize..=4,
        3usize..=8,
    )
        .prop_map(
            |(seed, masters, skews_permille, loss_percent, faults, clients, attempts)| Schedule {
                seed,
                masters,
                skews_permille,
                loss_percent,
                faults,
                clients,
                attempts,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn grants_never_overlap_and_never_overstate_validity(schedule in schedules()) {
        let outcome = simulate(&schedule, Rules::default());
        prop_assert!(outcome.violations.is_empty(), "{:?}: {:?}", schedule, outcome.violations);
    }
}

/// Three masters without clock skew or loss, four clients contending, and the faults
/// `faults(seed)`.
fn contended(seed: u64, faults: Vec<(u64, usize, Fault)>) -> Schedule {
    Schedule {
        seed,
        masters: 3,
        skews_permille: vec![0; 5],
        loss_percent: 0,
        faults,
        clients: 4,
        attempts: 6,
    }
}

/// How many seeded contended schedules, each with one fault `fault(seed)` on one master early
/// on, it takes until one grants the lock twice under `rules`; fails when none of 500 does.
fn schedules_until_double_grant(rules: Rules, fault: impl Fn(u64) -> Fault) -> usize {
    let found = (0..500u64).position(|seed| {
        let faults = vec![(10 + seed % 50, (seed % 3) as usize, fault(seed))];
        simulate(&contended(seed, faults), rules).overlaps > 0
    });
    let needed = found.expect("no double grant in 500 schedules") + 1;
    println!("{rules:?}: the first double grant came in schedule {needed}");
    needed
}

#[test]
fn the_simulation_grants_under_faults() {
    let total: usize = (0..50)
        .map(|seed| {
            let schedule = Schedule {
                seed,
                masters: 3,
                skews_permille: vec![10, -10, 0, 0, 0],
                loss_percent: 10,
                faults: vec![(50, 0, Fault::Restart)],
                clients: 3,
                attempts: 15,
            };
            simulate(&schedule, Rules::default()).grants
        })
        .sum();
    assert!(total > 100, "only {total} grants in 50 faulty schedules");
}

/// The same check without restart quarantine finds double grants: the properties can fail.
#[test]
fn without_quarantine_a_restart_grants_twice() {
    schedules_until_double_grant(Rules::all_but(|r| r.restart = false), |_| Fault::Restart);
}

/// Without the failover rule, a replica missing recent writes votes at once and grants a lock
/// a quorum still holds.
#[test]
fn without_the_failover_rule_a_failover_grants_twice() {
    schedules_until_double_grant(Rules::all_but(|r| r.failover = false), |seed| {
        Fault::Failover {
            lag_ms: 1 + seed % MAX_LAG_MS,
        }
    });
}

/// Without the flush rule, a flushed master votes at once from its empty keyspace and grants
/// a lock a quorum still holds.
#[test]
fn without_the_flush_rule_a_flush_grants_twice() {
    schedules_until_double_grant(Rules::all_but(|r| r.flush = false), |_| Fault::Flush);
}

/// With every rule on, a failover on one master and a flush on another soon after grant
/// nothing twice in contended schedules, where the same faults without their rules do.
#[test]
fn with_all_rules_a_failover_and_a_flush_grant_nothing_twice() {
    let faults = vec![
        (30, 0, Fault::Failover { lag_ms: 50 }),
        (35, 1, Fault::Flush),
    ];
    let without = Rules::all_but(|r| (r.failover, r.flush) = (false, false));
    let (mut grants, mut broken_without) = (0, 0);
    for seed in 0..100 {
        let schedule = contended(seed, faults.clone());
        let outcome = simulate(&schedule, Rules::default());
        assert!(
            outcome.violations.is_empty(),
            "seed {seed}: {:?}",
            outcome.violations
        );
        grants += outcome.grants;
        broken_without += usize::from(simulate(&schedule, without).overlaps > 0);
    }
    println!("without their rules the same faults granted twice in {broken_without} of 100");
    assert!(grants > 50, "only {grants} grants in 100 schedules");
    assert!(
        broken_without > 0,
        "the faults never mattered: no double grant without their rules"
    );
}

/// The counted primitives the simulation checks besides the mutex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// A semaphore of this many permits: at most that many holds of the key at once.
    Permits(u32),
    /// The same, its takers named as a library names its holders (redis-semaphore's
    /// identifiers): each releases by that name, whichever round and slot took it.
    NamedPermits(u32),
    /// A read/write lock, one writer to three readers: a writer's hold overlaps no other.
    ReadWrite,
}

/// Holds of one key as (start, end, exclusive): how many times `model`'s bound was broken,
/// each hold checked against the holds that started before it and were still on.
fn breaches(mut holds: Vec<(Instant, Instant, bool)>, model: Model) -> usize {
    holds.sort_by_key(|h| h.0);
    let mut breaches = 0;
    for (i, &(start, _, exclusive)) in holds.iter().enumerate() {
        let on: Vec<bool> = holds[..i]
            .iter()
            .filter(|h| h.1 > start)
            .map(|h| h.2)
            .collect();
        breaches += usize::from(match model {
            Model::Permits(n) | Model::NamedPermits(n) => on.len() >= n as usize,
            Model::ReadWrite => !on.is_empty() && (exclusive || on.iter().any(|w| *w)),
        });
    }
    breaches
}

/// Runs `schedule` with `model`'s clients on a paused clock, under `rules`: the grants, and
/// how many holds broke the model's bound.
fn simulate_counted(schedule: &Schedule, rules: Rules, model: Model) -> (usize, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let masters: Vec<SimMaster> = (0..schedule.masters)
            .map(|i| {
                SimMaster::new(
                    schedule.seed.wrapping_add(i as u64 * 7919),
                    schedule.skews_permille[i],
                    schedule.loss_percent,
                    rules,
                )
            })
            .collect();
        let redlock = Arc::new(Redlock::new(masters.clone(), DEADLINE));
        let t0 = Instant::now();
        for &(at_ms, who, fault) in &schedule.faults {
            let m = masters[who % masters.len()].clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + Duration::from_millis(at_ms)).await;
                m.suffer(fault);
            });
        }
        let holds: Arc<Mutex<Vec<(Instant, Instant, bool)>>> = Arc::default();
        let slots: Vec<Bytes> = match model {
            Model::Permits(n) | Model::NamedPermits(n) => {
                (0..n).map(|i| Bytes::from(format!("p:{i}:k"))).collect()
            }
            Model::ReadWrite => Vec::new(),
        };
        let mut clients = Vec::new();
        for c in 0..schedule.clients {
            let (redlock, holds, slots) = (redlock.clone(), holds.clone(), slots.clone());
            let mut rng = Rng(schedule.seed ^ ((c as u64 + 1) * 0x9e37_79b9));
            let attempts = schedule.attempts;
            clients.push(tokio::spawn(async move {
                let lock = key(b"k");
                for _ in 0..attempts {
                    let ttl = 20 + rng.below(MAX_TTL_MS - 20);
                    let exclusive = model == Model::ReadWrite && rng.chance(25);
                    let mut named: Option<Bytes> = None;
                    let granted = match model {
                        Model::Permits(n) | Model::NamedPermits(n) => {
                            // From the schedule's seed: the first slot tried follows the name.
                            let base = format!("{:016x}{:016x}", rng.next(), rng.next());
                            let base = Bytes::from(base);
                            named = (model != Model::Permits(n)).then(|| base.clone());
                            let taker = match &named {
                                Some(name) => Taker::Named(name),
                                None => Taker::Token(&base),
                            };
                            match redlock.lock_permit(&lock, &slots, taker, ttl).await {
                                Ok(super::Counted::Granted { token, validity_ms }) => {
                                    Some((token, validity_ms))
                                }
                                _ => None,
                            }
                        }
                        Model::ReadWrite if exclusive => match redlock.lock(&lock, ttl).await {
                            Ok(Some(g)) => Some((g.token, g.validity_ms)),
                            _ => None,
                        },
                        Model::ReadWrite => {
                            let token = super::token::shared();
                            match redlock.lock_shared(&lock, b"writers:k", token, ttl).await {
                                Ok(super::Counted::Granted { token, validity_ms }) => {
                                    Some((token, validity_ms))
                                }
                                _ => None,
                            }
                        }
                    };
                    if let Some((token, validity_ms)) = granted {
                        let now = Instant::now();
                        let validity = Duration::from_millis(validity_ms);
                        let work = validity.mul_f64(rng.below(100) as f64 / 100.0);
                        tokio::time::sleep(work).await;
                        if rng.chance(80) {
                            holds.lock().unwrap().push((now, Instant::now(), exclusive));
                            let _ = match (named, super::token::holds(&token)) {
                                (Some(name), _) => {
                                    redlock.unlock_named_permit(&lock, &slots, &name).await
                                }
                                (None, super::token::Holds::Permit { base, .. }) => {
                                    redlock.unlock_permit(&lock, &slots, &base).await
                                }
                                (None, super::token::Holds::Shared) => {
                                    redlock.unlock_shared(&lock, &token).await
                                }
                                (None, super::token::Holds::Exclusive) => {
                                    redlock.unlock(&lock, &token).await
                                }
                            };
                        } else {
                            holds.lock().unwrap().push((now, now + validity, exclusive));
                        }
                    }
                    tokio::time::sleep(Duration::from_micros(rng.below(20_000))).await;
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        let holds = holds.lock().unwrap().clone();
        (holds.len(), breaches(holds, model))
    })
}

/// Contended schedules with one fault each, for the counted models: six clients, so two
/// permits are scarce and readers meet writers.
fn contended_counted(seed: u64, fault: Fault) -> Schedule {
    Schedule {
        clients: 6,
        ..contended(seed, vec![(10 + seed % 50, (seed % 3) as usize, fault)])
    }
}

fn any_fault(seed: u64) -> Fault {
    match seed % 3 {
        0 => Fault::Restart,
        1 => Fault::Failover {
            lag_ms: 1 + seed % MAX_LAG_MS,
        },
        _ => Fault::Flush,
    }
}

/// A semaphore of two permits and a read/write lock keep their bounds under every fault kind,
/// with loss and skew, and grant plenty.
#[test]
fn permits_and_read_write_locks_keep_their_bounds_under_faults() {
    for model in [Model::Permits(2), Model::NamedPermits(2), Model::ReadWrite] {
        let mut grants = 0;
        for seed in 0..60 {
            let mut schedule = contended_counted(seed, any_fault(seed));
            schedule.loss_percent = 5;
            schedule.skews_permille = vec![10, -10, 0, 0, 0];
            let (held, broken) = simulate_counted(&schedule, Rules::default(), model);
            assert_eq!(broken, 0, "{model:?}, seed {seed}");
            grants += held;
        }
        println!("{model:?}: {grants} holds in 60 faulty schedules");
        assert!(grants > 100, "{model:?}: only {grants} holds");
    }
}

/// The same models without restart quarantine break their bounds: the checks can fail, and
/// the bounds rest on the mutex's own rules.
#[test]
fn without_quarantine_permits_and_read_write_locks_break_their_bounds() {
    let rules = Rules::all_but(|r| r.restart = false);
    for model in [Model::Permits(2), Model::ReadWrite] {
        let found = (0..500u64).position(|seed| {
            simulate_counted(&contended_counted(seed, Fault::Restart), rules, model).1 > 0
        });
        let needed = found.expect("no breach in 500 schedules") + 1;
        println!("{model:?} without quarantine: the first breach came in schedule {needed}");
    }
}

/// With one name for all of an acquire's rounds (a generated token's or a library's), a late
/// release of an earlier round frees a slot a later round was granted, and a semaphore admits
/// a third holder: the per-round names are what prevents it.
#[test]
fn without_a_name_per_round_a_semaphore_breaks_its_bound() {
    super::counted::ONE_NAME_FOR_ALL_ROUNDS.set(true);
    for model in [Model::Permits(2), Model::NamedPermits(2)] {
        let found = (0..500u64).position(|seed| {
            let mut schedule = contended_counted(seed, any_fault(seed));
            schedule.loss_percent = 5;
            schedule.skews_permille = vec![10, -10, 0, 0, 0];
            simulate_counted(&schedule, Rules::default(), model).1 > 0
        });
        let needed = found.expect("no breach in 500 schedules") + 1;
        println!("{model:?} with one name for all rounds: first breach in schedule {needed}");
    }
    super::counted::ONE_NAME_FOR_ALL_ROUNDS.set(false);
}

#[test]
fn the_breach_count_follows_each_model() {
    let t = Instant::now();
    let ms = |n| t + Duration::from_millis(n);
    let three = vec![
        (ms(0), ms(10), false),
        (ms(1), ms(10), false),
        (ms(2), ms(10), false),
    ];
    assert_eq!(breaches(three.clone(), Model::Permits(3)), 0);
    assert_eq!(breaches(three.clone(), Model::Permits(2)), 1);
    assert_eq!(breaches(three, Model::ReadWrite), 0);
    let writer = vec![
        (ms(0), ms(10), false),
        (ms(5), ms(6), true),
        (ms(10), ms(11), true),
    ];
    assert_eq!(breaches(writer, Model::ReadWrite), 1);
}
