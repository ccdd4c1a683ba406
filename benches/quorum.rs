//! The Redlock core's own cost per lock: `lock` + `unlock` through [`Redlock`] over in-memory
//! masters that answer at once, so what is measured is the quorum path (token generation,
//! fan-out, vote counting, validity arithmetic) without sockets or a real Redis.

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use redlock_proxy::backend::mem::Keyspace;
use redlock_proxy::backend::{BackendError, KeyState, Master};
use redlock_proxy::redlock::Redlock;
use tokio::time::Instant;

/// The proxy's default per-master deadline; never reached here, as every master answers at once.
const DEADLINE: Duration = Duration::from_millis(50);
const TTL_MS: u64 = 5000;
/// Distinct keys cycled through, so the maps behave like a busy master's, not a one-key one.
const KEYS: usize = 1024;

/// An in-memory master, each operation applied and answered when called.
#[derive(Debug, Default)]
struct MemMaster {
    data: Arc<Mutex<Keyspace>>,
    /// Never answers (a hung master): its futures stay pending.
    hung: bool,
}

type Answer<T> = futures_util::future::Either<Ready<Result<T, BackendError>>, Pending<T>>;
type Pending<T> = std::future::Pending<Result<T, BackendError>>;

impl MemMaster {
    fn hung() -> Self {
        MemMaster {
            hung: true,
            ..Self::default()
        }
    }

    fn answer<T>(&self, op: impl FnOnce(&mut Keyspace, Instant) -> T) -> Answer<T> {
        if self.hung {
            return futures_util::future::Either::Right(std::future::pending());
        }
        let mut data = self.data.lock().expect("bench master lock");
        futures_util::future::Either::Left(ready(Ok(op(&mut data, Instant::now()))))
    }

    fn put(&self, key: &[u8], token: &[u8]) {
        let mut data = self.data.lock().expect("bench master lock");
        data.put(key, token, Instant::now() + Duration::from_secs(3600));
    }
}

/// When a key set at `now` for `ttl_ms` expires.
fn after(now: Instant, ttl_ms: u64) -> Instant {
    now + Duration::from_millis(ttl_ms)
}

impl Master for MemMaster {
    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.answer(|m, now| m.acquire(key, token, after(now, ttl_ms), now))
    }

    fn release(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.answer(|m, now| m.release(key, token, now))
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.answer(|m, now| m.extend(key, token, after(now, ttl_ms), now))
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        self.answer(|m, now| m.inspect(key, now))
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        self.answer(|m, _| m.read_fence(fence_key))
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.answer(|m, now| {
            m.acquire_fenced(key, fence_key, token, after(now, ttl_ms), fence, now)
        })
    }

    fn raise_fence(
        &self,
        fence_key: &[u8],
        fence: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        self.answer(|m, _| m.raise_fence(fence_key, fence))
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        self.answer(|m, _| m.raise_fence_floor(floor))
    }

    fn fences(
        &self,
    ) -> impl Future<Output = Result<Vec<(Bytes, u64)>, BackendError>> + Send + use<> {
        self.answer(|m, _| m.fences())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // The vote's deadline timer needs the time driver; one thread, as a session task runs.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("bench runtime")
}

fn key_names() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("key:{i:06}").into_bytes())
        .collect()
}

/// `iters` rounds of `op` on one runtime entry, so `block_on`'s own cost is not measured.
fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            op(i).await;
        }
        start.elapsed()
    })
}

fn bench_lock_unlock(c: &mut Criterion) {
    let rt = runtime();
    let keys = key_names();
    let mut group = c.benchmark_group("quorum");
    for (name, masters) in [
        ("lock_unlock/3_masters", [false, false, false].as_slice()),
        ("lock_unlock/5_masters", &[false; 5]),
        ("lock_unlock/3_masters_1_hung", &[false, false, true]),
    ] {
        let masters: Vec<MemMaster> = masters
            .iter()
            .map(|&hung| {
                if hung {
                    MemMaster::hung()
                } else {
                    MemMaster::default()
                }
            })
            .collect();
        let redlock = Redlock::new(masters, DEADLINE);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(&rt, iters, |i| {
                    let key = &keys[i as usize % KEYS];
                    let redlock = &redlock;
                    async move {
                        let grant = redlock
                            .lock(key, TTL_MS)
                            .await
                            .expect("quorum answers")
                            .expect("key is free");
                        let released = redlock.unlock(key, &grant.token).await;
                        assert_eq!(released, Ok(true));
                        black_box(grant);
                    }
                })
            })
        });
    }

    // Contention: every master already holds the key, so LOCK is refused and then released on
    // every master (the failure cleanup), as for a null reply.
    let masters: Vec<MemMaster> = (0..3).map(|_| MemMaster::default()).collect();
    for m in &masters {
        for key in &keys {
            m.put(key, b"someone-else");
        }
    }
    let redlock = Redlock::new(masters, DEADLINE);
    group.bench_function("lock_refused/3_masters", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, |i| {
                let key = &keys[i as usize % KEYS];
                let redlock = &redlock;
                async move {
                    let outcome = redlock.lock(key, TTL_MS).await;
                    assert_eq!(outcome, Ok(None));
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_lock_unlock);
criterion_main!(benches);
