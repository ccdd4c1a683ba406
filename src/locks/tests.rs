//! The lock service over in-memory masters, on tokio's paused clock: what each operation returns
//! and counts, waiting in line, and session locks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::backend::mem::{MemMaster, Mode};

const DEADLINE: Duration = Duration::from_millis(50);

fn service(n: usize) -> (Arc<LockService<MemMaster>>, Vec<MemMaster>) {
    let masters: Vec<MemMaster> = (0..n).map(|_| MemMaster::new()).collect();
    let service = LockService::new(masters.clone(), DEADLINE, "redlock:");
    (Arc::new(service), masters)
}

/// The name of `key`'s lock in database `db` under the service's prefix.
fn service_key(db: u32, key: &str) -> Bytes {
    keys::Schema::new("redlock:").key(db, key.as_bytes())
}

fn token(t: &'static str) -> Bytes {
    Bytes::from_static(t.as_bytes())
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn operations_use_the_schema_and_count_once() {
    let (locks, masters) = service(3);
    let how = Acquire::once(1_000);
    let granted = locks.acquire(2, b"k", token("a"), how).await.unwrap();
    assert_eq!(granted.map(|g| g.token), Some(token("a")));
    // Stored under the schema's name for database 2, on every master.
    assert!(
        masters
            .iter()
            .all(|m| m.holder(&service_key(2, "k")) == Some(token("a")))
    );
    assert_eq!(locks.acquire(2, b"k", token("b"), how).await, Ok(None));
    // Another database is another lock.
    assert!(
        locks
            .acquire(0, b"k", token("b"), how)
            .await
            .unwrap()
            .is_some()
    );
    let holder = locks.inspect(2, b"k").await.unwrap().unwrap();
    assert_eq!(holder.token, token("a"));
    assert!(locks.extend(2, b"k", b"a", 2_000).await.unwrap());
    assert!(!locks.extend(2, b"k", b"b", 2_000).await.unwrap());
    assert!(!locks.release(2, b"k", b"b").await.unwrap());
    assert!(locks.release(2, b"k", b"a").await.unwrap());
    assert_eq!(locks.inspect(2, b"k").await, Ok(None));
    let s = locks.stats();
    assert_eq!(
        (
            count(&s.granted),
            count(&s.refused),
            count(&s.extended),
            count(&s.released)
        ),
        (2, 1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn failures_are_typed() {
    let (locks, masters) = service(3);
    masters[0].set_mode(Mode::Down);
    masters[1].set_mode(Mode::Down);
    let err = locks
        .acquire(0, b"k", token("a"), Acquire::once(1_000))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::Masters(LockError::NoQuorum {
            answered: 1,
            needed: 2,
            total: 3
        })
    );
    assert!(matches!(
        locks.release(0, b"k", b"a").await,
        Err(Error::Masters(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn force_release_takes_whatever_token_a_quorum_holds() {
    let (locks, _) = service(3);
    let how = Acquire::once(1_000);
    locks.acquire(0, b"k", token("a"), how).await.unwrap();
    assert_eq!(locks.force_release(0, b"k").await, Ok(true));
    assert_eq!(locks.force_release(0, b"k").await, Ok(false));
}

#[tokio::test(start_paused = true)]
async fn all_or_none_undoes_what_it_took() {
    let (locks, _) = service(3);
    let how = Acquire::once(1_000);
    locks.acquire(0, b"b", token("other"), how).await.unwrap();
    let keys = [Bytes::from("a"), Bytes::from("b")];
    assert_eq!(
        locks.acquire_all(0, &keys, &token("t"), 1_000).await,
        Ok(false)
    );
    // "a" was taken, then released again.
    assert_eq!(locks.inspect(0, b"a").await, Ok(None));
    locks.release(0, b"b", b"other").await.unwrap();
    assert_eq!(
        locks.acquire_all(0, &keys, &token("t"), 1_000).await,
        Ok(true)
    );
    assert_eq!(locks.extend_all(0, &keys, b"t", 2_000).await, Ok(true));
    assert_eq!(locks.release_all(0, &keys, b"t").await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_order_and_leave_no_queue_behind() {
    let (locks, _) = service(3);
    let hold = Acquire::once(10_000);
    locks.acquire(0, b"k", token("holder"), hold).await.unwrap();
    let waiting = Acquire {
        wait: Some(Duration::from_secs(5)),
        ..hold
    };
    let first = tokio::spawn({
        let locks = locks.clone();
        async move { locks.acquire(0, b"k", token("first"), waiting).await }
    });
    // The first waiter is in line before the second joins.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = tokio::spawn({
        let locks = locks.clone();
        async move { locks.acquire(0, b"k", token("second"), waiting).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(locks.waiting_keys(), 1);
    let released_at = tokio::time::Instant::now();
    assert!(locks.release(0, b"k", b"holder").await.unwrap());
    let first = first
        .await
        .unwrap()
        .unwrap()
        .expect("first in line gets it");
    assert_eq!(first.token, token("first"));
    // Woken by the release itself, not by a timer.
    assert!(released_at.elapsed() < Duration::from_millis(10));
    locks.release(0, b"k", b"first").await.unwrap();
    let second = second.await.unwrap().unwrap().expect("then the second");
    assert_eq!(second.token, token("second"));
    assert_eq!(locks.waiting_keys(), 0);
    // A wait that runs out is a refusal, counted once however often it tried.
    let refused_before = count(&locks.stats().refused);
    let short = Acquire {
        wait: Some(Duration::from_millis(100)),
        ..hold
    };
    assert_eq!(locks.acquire(0, b"k", token("late"), short).await, Ok(None));
    assert_eq!(count(&locks.stats().refused), refused_before + 1);
    assert_eq!(locks.waiting_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn session_locks_live_with_the_connection() {
    let (locks, masters) = service(3);
    let session = Session::new(locks.clone());
    let how = Acquire {
        session: true,
        ..Acquire::once(300)
    };
    let grant = session
        .lock(0, Bytes::from("k"), how)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(&locks.stats().session_locks), 1);
    // Kept alive well past its TTL.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        locks.inspect(0, b"k").await.unwrap().map(|h| h.token),
        Some(grant.token.clone())
    );
    // Closing the connection releases it.
    session.close().await;
    assert_eq!(locks.inspect(0, b"k").await, Ok(None));
    assert!(
        masters
            .iter()
            .all(|m| m.holder(&service_key(0, "k")).is_none())
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_lock_is_reported_not_acted_on() {
    let (locks, masters) = service(3);
    let session = Session::new(locks.clone());
    let how = Acquire {
        session: true,
        ..Acquire::once(300)
    };
    let key = Bytes::from("k");
    let grant = session.lock(0, key.clone(), how).await.unwrap().unwrap();
    masters[0].set_mode(Mode::Down);
    masters[1].set_mode(Mode::Down);
    // The next extension misses a quorum.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&locks.stats().session_locks_lost), 1);
    let lost = Error::LockLost { key: key.clone() };
    assert_eq!(
        session
            .extend(0, key.clone(), grant.token.clone(), 300)
            .await,
        Err(lost.clone())
    );
    assert_eq!(session.inspect(0, key.clone()).await, Err(lost.clone()));
    assert_eq!(
        session.release(0, key.clone(), grant.token.clone()).await,
        Err(lost)
    );
    // Reported once: the connection no longer keeps it.
    masters[0].set_mode(Mode::Healthy);
    assert!(session.inspect(0, key).await.is_ok());
}

/// Takes `key` in database 0 with `t` as `how` says: true when granted.
async fn takes(locks: &LockService<MemMaster>, key: &[u8], t: &'static str, how: Acquire) -> bool {
    let granted = locks.acquire(0, key, token(t), how).await;
    granted.unwrap().is_some()
}

#[tokio::test(start_paused = true)]
async fn swap_replaces_only_the_token_it_names() {
    let (locks, masters) = service(3);
    let how = Acquire::once(1_000);
    assert!(takes(&locks, b"k", "1:o", how).await);
    assert!(!locks.swap(0, b"k", b"1:x", b"2:x", 5_000).await.unwrap());
    assert!(locks.swap(0, b"k", b"1:o", b"2:o", 5_000).await.unwrap());
    assert!(
        masters
            .iter()
            .all(|m| m.holder(&service_key(0, "k")) == Some(token("2:o")))
    );
    // The new TTL, and never a lock where there was none.
    assert!(locks.inspect(0, b"k").await.unwrap().unwrap().validity_ms > 1_000);
    assert!(!locks.swap(0, b"free", b"1:o", b"2:o", 5_000).await.unwrap());
    assert_eq!(locks.inspect(0, b"free").await, Ok(None));
}

#[tokio::test(start_paused = true)]
async fn a_watcher_wakes_on_release_and_takes_nothing() {
    let (locks, _) = service(3);
    let how = Acquire::once(10_000);
    assert!(takes(&locks, b"k", "a", how).await);
    let session = Session::new(locks.clone());
    let started = tokio::time::Instant::now();
    let free = tokio::spawn(session.await_free(0, Bytes::from_static(b"k"), None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!free.is_finished());
    assert!(locks.release(0, b"k", b"a").await.unwrap());
    assert!(free.await.unwrap().unwrap());
    // Woken by the release, long before the lock's expiry.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(locks.waiting_keys(), 0);
    // Held until its end: the wait runs out.
    assert!(takes(&locks, b"k", "b", how).await);
    let wait = Some(Duration::from_millis(300));
    assert!(
        !session
            .await_free(0, Bytes::from_static(b"k"), wait)
            .await
            .unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_watcher_hears_each_release() {
    let (locks, _) = service(3);
    let session = Session::new(locks.clone());
    let heard = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let counter = heard.clone();
    let (watch, ready) = session
        .watch_releases(0, Bytes::from_static(b"k"), stop.clone(), move || {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    let watching = tokio::spawn(watch);
    ready.ready().await;
    for (i, t) in ["a", "b"].into_iter().enumerate() {
        let how = Acquire::once(10_000);
        assert!(takes(&locks, b"k", t, how).await);
        assert!(locks.release(0, b"k", t.as_bytes()).await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(&heard), i as u64 + 1);
    }
    stop.cancel();
    watching.await.unwrap();
    assert_eq!(locks.waiting_keys(), 0);
}
