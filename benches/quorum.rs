//! The Redlock core's own cost per lock: `lock` + `unlock` through [`Redlock`] over in-memory
//! masters that answer at once, so what is measured is the quorum path (token generation,
//! fan-out, vote counting, validity arithmetic) without sockets or a real Redis.

use std::future::Future;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use redlock_proxy::backend::mem::{MemMaster, Mode};
use redlock_proxy::locks::keys::Schema;
use redlock_proxy::redlock::{LockKey, Redlock};
use tokio::time::Instant;

/// The proxy's default per-master deadline; never reached here, as every master answers at once.
const DEADLINE: Duration = Duration::from_millis(50);
const TTL_MS: u64 = 5000;
/// Distinct keys cycled through, so the maps behave like a busy master's, not a one-key one.
const KEYS: usize = 1024;

fn runtime() -> tokio::runtime::Runtime {
    // The vote's deadline timer needs the time driver; one thread, as a session task runs.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("bench runtime")
}

fn key_names() -> Vec<LockKey> {
    let schema = Schema::new("redlock:");
    (0..KEYS)
        .map(|i| schema.lock(0, format!("key:{i:06}").as_bytes()))
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
                let master = MemMaster::new();
                if hung {
                    master.set_mode(Mode::Hung);
                }
                master
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
    let masters: Vec<MemMaster> = (0..3).map(|_| MemMaster::new()).collect();
    for m in &masters {
        for lock in &keys {
            m.put(&lock.key, b"someone-else", Duration::from_secs(3600));
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
