//! The Redlock core against fake masters, on tokio's paused clock so delays are exact.

use std::time::Duration;

use super::*;
use crate::backend::Master;
use crate::backend::mem::{MemMaster, Mode};

const DEADLINE: Duration = Duration::from_millis(50);

fn cluster(n: usize) -> (Redlock<MemMaster>, Vec<MemMaster>) {
    let masters: Vec<MemMaster> = (0..n).map(|_| MemMaster::new()).collect();
    (Redlock::new(masters.clone(), DEADLINE), masters)
}

#[tokio::test(start_paused = true)]
async fn grant_refuse_release_regrant() {
    let (rl, masters) = cluster(3);
    let g = rl.lock(&key(b"k"), 10_000).await.unwrap().expect("granted");
    assert_eq!(g.validity_ms, 10_000 - 102);
    assert!(
        masters
            .iter()
            .all(|m| m.holder(b"k") == Some(g.token.clone()))
    );
    assert_eq!(rl.lock(&key(b"k"), 10_000).await.unwrap(), None);
    assert!(!rl.unlock(&key(b"k"), b"wrong").await.unwrap());
    assert!(rl.unlock(&key(b"k"), &g.token).await.unwrap());
    assert!(masters.iter().all(|m| m.holder(b"k").is_none()));
    assert!(rl.lock(&key(b"k"), 10_000).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn one_master_down_still_grants_two_down_is_no_quorum() {
    let (rl, masters) = cluster(3);
    masters[0].set_mode(Mode::Down);
    let g = rl
        .lock(&key(b"k"), 1_000)
        .await
        .unwrap()
        .expect("granted with 2 of 3");
    assert!(rl.unlock(&key(b"k"), &g.token).await.unwrap());
    masters[1].set_mode(Mode::Down);
    let err = rl.lock(&key(b"k"), 1_000).await.unwrap_err();
    assert_eq!(
        err,
        LockError::NoQuorum {
            answered: 1,
            needed: 2,
            total: 3
        }
    );
    assert_eq!(err.to_string(), "1 of 3 masters answered, 2 needed");
    // The lone SET that landed was undone.
    assert_eq!(masters[2].holder(b"k"), None);
    assert!(matches!(
        rl.unlock(&key(b"k"), b"t").await,
        Err(LockError::NoQuorum { .. })
    ));
    let seen = rl.inspect(b"k").await;
    assert!(matches!(seen, Err(LockError::NoQuorum { .. })), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hung_master_costs_nothing_when_the_rest_agree() {
    let (rl, masters) = cluster(3);
    masters[2].set_mode(Mode::Hung);
    let start = Instant::now();
    assert!(rl.lock(&key(b"k"), 1_000).await.unwrap().is_some());
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn two_hung_masters_cost_exactly_the_deadline() {
    let (rl, masters) = cluster(3);
    masters[1].set_mode(Mode::Hung);
    masters[2].set_mode(Mode::Hung);
    let start = Instant::now();
    let err = rl.lock(&key(b"k"), 1_000).await.unwrap_err();
    assert_eq!(start.elapsed(), DEADLINE);
    assert!(matches!(err, LockError::NoQuorum { answered: 1, .. }));
    assert_eq!(masters[0].holder(b"k"), None, "released after the failure");
}

#[tokio::test(start_paused = true)]
async fn refused_acquire_releases_what_it_set() {
    let (rl, masters) = cluster(3);
    masters[0].put(b"k", b"other", Duration::from_secs(10));
    masters[1].put(b"k", b"other", Duration::from_secs(10));
    assert_eq!(rl.lock(&key(b"k"), 1_000).await.unwrap(), None);
    assert_eq!(masters[2].holder(b"k"), None);
    assert_eq!(masters[0].holder(b"k").as_deref(), Some(&b"other"[..]));
}

#[tokio::test(start_paused = true)]
async fn slow_quorum_is_too_late_not_granted() {
    let (rl, masters) = cluster(3);
    for m in &masters {
        m.set_mode(Mode::Slow(Duration::from_micros(7_500)));
    }
    let err = rl.lock(&key(b"k"), 10).await.unwrap_err();
    assert_eq!(
        err,
        LockError::TooLate {
            elapsed_ms: 8,
            ttl_ms: 10
        }
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(masters.iter().all(|m| m.holder(b"k").is_none()));
    // One millisecond faster, and validity is positive.
    for m in &masters {
        m.set_mode(Mode::Slow(Duration::from_millis(7)));
    }
    let g = rl.lock(&key(b"k2"), 10).await.unwrap().expect("granted");
    assert_eq!(g.validity_ms, 1);
}

#[tokio::test(start_paused = true)]
async fn slower_than_the_deadline_never_counts() {
    let (rl, masters) = cluster(3);
    for m in &masters {
        m.set_mode(Mode::Slow(DEADLINE + Duration::from_millis(1)));
    }
    let err = rl.lock(&key(b"k"), 10_000).await.unwrap_err();
    assert!(matches!(err, LockError::NoQuorum { answered: 0, .. }));
}

#[tokio::test(start_paused = true)]
async fn extend_needs_the_token_and_a_quorum() {
    let (rl, masters) = cluster(3);
    let g = rl.lock(&key(b"k"), 1_000).await.unwrap().unwrap();
    assert_eq!(rl.extend(b"k", b"nope", 5_000).await.unwrap(), None);
    assert_eq!(
        rl.extend(b"k", &g.token, 5_000).await.unwrap(),
        Some(5_000 - 52)
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        masters[0].holder(b"k"),
        Some(g.token.clone()),
        "outlived its first TTL"
    );
    masters[0].set_mode(Mode::Down);
    masters[1].set_mode(Mode::Down);
    assert!(matches!(
        rl.extend(b"k", &g.token, 5_000).await,
        Err(LockError::NoQuorum { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn inspect_reports_what_a_quorum_holds() {
    let (rl, masters) = cluster(3);
    assert_eq!(rl.inspect(b"k").await.unwrap(), None);
    let g = rl.lock(&key(b"k"), 10_000).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (token, ttl) = rl.inspect(b"k").await.unwrap().unwrap();
    assert_eq!(token, g.token);
    assert_eq!(ttl, 9_000 - 92);
    // Only one master holds a different token: no quorum agrees on it.
    masters[0].put(b"j", b"t", Duration::from_secs(5));
    assert_eq!(rl.inspect(b"j").await.unwrap(), None);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rl.inspect(b"k").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_quarantined_master_gets_requests_but_no_vote() {
    let (rl, masters) = cluster(3);
    masters[0].set_votes(false);
    let g = rl
        .lock(&key(b"k"), 1_000)
        .await
        .unwrap()
        .expect("two voters agree");
    assert_eq!(
        masters[0].holder(b"k"),
        Some(g.token.clone()),
        "it still holds the lock"
    );
    masters[1].set_mode(Mode::Down);
    assert!(matches!(
        rl.lock(&key(b"j"), 1_000).await,
        Err(LockError::NoQuorum { answered: 1, .. })
    ));
    assert!(matches!(
        rl.extend(b"k", &g.token, 1_000).await,
        Err(LockError::NoQuorum { .. })
    ));
    // Its view of a key does not count either.
    let seen = rl.inspect(b"k").await;
    assert!(matches!(seen, Err(LockError::NoQuorum { .. })), "{seen:?}");
    masters[1].set_mode(Mode::Healthy);
    assert!(rl.unlock(&key(b"k"), &g.token).await.unwrap());
    assert_eq!(masters[0].holder(b"k"), None, "released there too");
}

#[tokio::test(start_paused = true)]
async fn fences_strictly_increase_across_holders() {
    let (rl, masters) = cluster(3);
    let mut last = 0;
    for _ in 0..5 {
        let (g, fence) = rl
            .lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
            .await
            .unwrap()
            .expect("free");
        assert!(fence > last, "{fence} after {last}");
        last = fence;
        // Held: no fence is handed out.
        assert_eq!(
            rl.lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
                .await
                .unwrap(),
            None
        );
        assert!(rl.unlock(&key(b"k"), &g.token).await.unwrap());
    }
    assert!(masters.iter().all(|m| m.fence(b"f") == last));
    // One master down: the other two still order the fences.
    masters[0].set_mode(Mode::Down);
    let (_, fence) = rl
        .lock_fenced(&key(b"j"), b"f", token::generate(), 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fence, last + 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_master_gets_its_fences_back_before_they_count() {
    let (rl, masters) = cluster(3);
    for _ in 0..3 {
        let (g, _) = rl
            .lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
            .await
            .unwrap()
            .unwrap();
        rl.unlock(&key(b"k"), &g.token).await.unwrap();
    }
    masters[0].restart_empty();
    assert_eq!(masters[0].fence(b"f"), 0);
    // The next fenced acquire repairs it from the other two first.
    let (g, fence) = rl
        .lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fence, 4);
    assert_eq!(masters[0].fence(b"f"), 4);
    assert!(!masters[0].fences_lost());
    rl.unlock(&key(b"k"), &g.token).await.unwrap();
    // Another one restarts, and the third goes down: the repaired master and the restarted one
    // are all that is left. Unrepaired, the restarted one's reads do not count, so nothing is
    // granted below 5 — the repair from a majority needs the third back.
    masters[1].restart_empty();
    masters[2].set_mode(Mode::Down);
    assert!(matches!(
        rl.lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
            .await,
        Err(LockError::NoQuorum { answered: 1, .. })
    ));
    masters[2].set_mode(Mode::Healthy);
    let (_, fence) = rl
        .lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fence, 5);
    assert_eq!(masters[1].fence(b"f"), 5);
}

#[tokio::test(start_paused = true)]
async fn fences_keep_increasing_when_every_master_lost_them() {
    let (rl, masters) = cluster(3);
    let mut last = 0;
    for _ in 0..3 {
        let (g, fence) = rl
            .lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
            .await
            .unwrap()
            .unwrap();
        last = fence;
        rl.unlock(&key(b"k"), &g.token).await.unwrap();
    }
    masters.iter().for_each(MemMaster::restart_empty);
    // No majority kept a counter: the floor from the wall clock takes over.
    let (g, fence) = rl
        .lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
        .await
        .unwrap()
        .unwrap();
    assert!(fence > last, "{fence} after {last}");
    assert!(masters.iter().all(|m| !m.fences_lost()));
    rl.unlock(&key(b"k"), &g.token).await.unwrap();
    let (_, next) = rl
        .lock_fenced(&key(b"k"), b"f", token::generate(), 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next, fence + 1);
}
