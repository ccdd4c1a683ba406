//! The Redlock core's own cost per lock: `lock` + `unlock` through [`Redlock`] over in-memory
//! masters that answer at once, so what is measured is the quorum path (token generation,
//! fan-out, vote counting, validity arithmetic) without sockets or a real Redis.

use std::collections::HashMap;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use redlock_proxy::backend::{BackendError, KeyState, Master};
use redlock_proxy::redlock::Redlock;

/// The proxy's default per-master deadline; never reached here, as every master answers at once.
const DEADLINE: Duration = Duration::from_millis(50);
const TTL_MS: u64 = 5000;
/// Distinct keys cycled through, so the maps behave like a busy master's, not a one-key one.
const KEYS: usize = 1024;

/// An in-memory master: a map of key → (token, expiry), each operation applied and answered
/// when called. Expiry is checked on access, as Redis does lazily.
#[derive(Debug, Clone, Default)]
struct MemMaster {
    keys: Arc<Mutex<HashMap<Bytes, (Bytes, Instant)>>>,
    /// Fence counters, for fenced locks.
    fences: Arc<Mutex<HashMap<Bytes, u64>>>,
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

    fn answer<T>(&self, op: impl FnOnce(&mut HashMap<Bytes, (Bytes, Instant)>) -> T) -> Answer<T> {
        if self.hung {
            return futures_util::future::Either::Right(std::future::pending());
        }
        let mut keys = self.keys.lock().expect("bench master lock");
        futures_util::future::Either::Left(ready(Ok(op(&mut keys))))
    }

    fn answer_fences<T>(&self, op: impl FnOnce(&mut HashMap<Bytes, u64>) -> T) -> Answer<T> {
        if self.hung {
            return futures_util::future::Either::Right(std::future::pending());
        }
        let mut fences = self.fences.lock().expect("bench master lock");
        futures_util::future::Either::Left(ready(Ok(op(&mut fences))))
    }

    fn put(&self, key: &[u8], token: &[u8]) {
        self.keys.lock().expect("bench master lock").insert(
            Bytes::copy_from_slice(key),
            (
                Bytes::copy_from_slice(token),
                Instant::now() + Duration::from_secs(3600),
            ),
        );
    }
}

fn live<'a>(
    keys: &'a HashMap<Bytes, (Bytes, Instant)>,
    key: &[u8],
    now: Instant,
) -> Option<&'a Bytes> {
    keys.get(key).filter(|(_, exp)| *exp > now).map(|(t, _)| t)
}

impl Master for MemMaster {
    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.answer(|keys| {
            let now = Instant::now();
            if live(keys, key, now).is_some() {
                return false;
            }
            let expiry = now + Duration::from_millis(ttl_ms);
            keys.insert(
                Bytes::copy_from_slice(key),
                (Bytes::copy_from_slice(token), expiry),
            );
            true
        })
    }

    fn release(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.answer(|keys| {
            let held = live(keys, key, Instant::now()).is_some_and(|t| t == token);
            held && keys.remove(key).is_some()
        })
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.answer(|keys| {
            let now = Instant::now();
            match keys.get_mut(key) {
                Some((t, exp)) if *exp > now && t == token => {
                    *exp = now + Duration::from_millis(ttl_ms);
                    true
                }
                _ => false,
            }
        })
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        self.answer(|keys| {
            let now = Instant::now();
            keys.get(key)
                .filter(|(_, exp)| *exp > now)
                .map(|(token, exp)| KeyState {
                    token: token.clone(),
                    pttl_ms: Some(u64::try_from((*exp - now).as_millis()).unwrap_or(u64::MAX)),
                })
        })
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        self.answer_fences(|f| f.get(fence_key).copied().unwrap_or(0))
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let stale = self
            .fences
            .lock()
            .expect("bench master lock")
            .get(fence_key)
            .copied()
            .unwrap_or(0)
            >= fence;
        let taken = !stale && {
            let mut keys = self.keys.lock().expect("bench master lock");
            let now = Instant::now();
            live(&keys, key, now).is_none() && {
                keys.insert(
                    Bytes::copy_from_slice(key),
                    (
                        Bytes::copy_from_slice(token),
                        now + Duration::from_millis(ttl_ms),
                    ),
                );
                true
            }
        };
        self.answer_fences(|f| {
            if taken {
                f.insert(Bytes::copy_from_slice(fence_key), fence);
            }
            taken
        })
    }

    fn raise_fence(
        &self,
        fence_key: &[u8],
        fence: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        self.answer_fences(|f| {
            let seen = f.entry(Bytes::copy_from_slice(fence_key)).or_default();
            *seen = (*seen).max(fence);
        })
    }

    fn raise_fence_floor(
        &self,
        _floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        // These masters never restart, so no repair ever raises a floor.
        self.answer_fences(|_| ())
    }

    fn fences(
        &self,
    ) -> impl Future<Output = Result<Vec<(Bytes, u64)>, BackendError>> + Send + use<> {
        self.answer_fences(|f| f.iter().map(|(k, v)| (k.clone(), *v)).collect())
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
        ("lock_unlock/3_masters", vec![MemMaster::default(); 3]),
        ("lock_unlock/5_masters", vec![MemMaster::default(); 5]),
        (
            "lock_unlock/3_masters_1_hung",
            vec![
                MemMaster::default(),
                MemMaster::default(),
                MemMaster::hung(),
            ],
        ),
    ] {
        // Distinct maps per master (vec! clones share the Arc).
        let masters: Vec<MemMaster> = masters
            .into_iter()
            .map(|m| MemMaster {
                keys: Arc::default(),
                fences: Arc::default(),
                hung: m.hung,
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
