//! One round's answers, counted as they arrive: a master records its answer here directly, and
//! the round's task is woken once, when the outcome is decided — not once per answer. A master
//! that only has the future-returning operations adds its futures instead, and the round's task
//! polls them (see [`Master::cast`](crate::backend::Master::cast)).

use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::backend::{BackendError, Pending, Votes};

use super::quorum::Tally;

/// The ballot of one round among a set of masters.
pub struct Ballot {
    state: Mutex<BallotState>,
}

struct BallotState {
    tally: Tally,
    waker: Option<Waker>,
    pending: Vec<(bool, Pending)>,
}

impl BallotState {
    fn count(&mut self, counts: bool, answer: Result<bool, BackendError>) {
        match (counts, answer) {
            (true, Ok(true)) => self.tally.yes += 1,
            (true, Ok(false)) => self.tally.no += 1,
            _ => self.tally.failed += 1,
        }
    }
}

impl std::fmt::Debug for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ballot")
            .field("tally", &self.tally())
            .finish_non_exhaustive()
    }
}

impl Ballot {
    /// A round among `n` masters.
    pub fn new(n: usize) -> Arc<Ballot> {
        Arc::new(Ballot {
            state: Mutex::new(BallotState {
                tally: Tally::new(n),
                waker: None,
                pending: Vec::new(),
            }),
        })
    }

    /// Resolves once the outcome is decided (see [`Tally::is_decided`]).
    pub async fn decided(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            let mut i = 0;
            while i < state.pending.len() {
                let (counts, answer) = &mut state.pending[i];
                if let Poll::Ready(answer) = answer.as_mut().poll(cx) {
                    let counts = *counts;
                    drop(state.pending.swap_remove(i));
                    state.count(counts, answer);
                } else {
                    i += 1;
                }
            }
            if state.tally.is_decided() {
                return Poll::Ready(());
            }
            match &mut state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
    }

    /// The answers so far.
    pub fn tally(&self) -> Tally {
        self.lock().tally
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BallotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Votes for Ballot {
    fn record(&self, counts: bool, answer: Result<bool, BackendError>) {
        let waker = {
            let mut state = self.lock();
            state.count(counts, answer);
            if state.tally.is_decided() {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn add(&self, counts: bool, answer: Pending) {
        self.lock().pending.push((counts, answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_ballot_is_decided_by_recorded_answers_alone() {
        let ballot = Ballot::new(3);
        let mut decided = Box::pin(ballot.decided());
        assert!((&mut decided).now_or_never().is_none());
        ballot.record(true, Ok(true));
        // A quarantined master's yes is no vote.
        ballot.record(false, Ok(true));
        assert!((&mut decided).now_or_never().is_none());
        ballot.record(true, Ok(true));
        assert!(decided.now_or_never().is_some());
        let tally = ballot.tally();
        assert_eq!((tally.yes, tally.no, tally.failed), (2, 0, 1));
    }

    #[test]
    fn a_ballot_polls_the_answers_added_to_it() {
        let ballot = Ballot::new(3);
        ballot.add(true, Box::pin(std::future::ready(Ok(false))));
        ballot.add(true, Box::pin(std::future::ready(Err(BackendError::Down))));
        let (tx, rx) = tokio::sync::oneshot::channel();
        ballot.add(
            true,
            Box::pin(async { rx.await.unwrap_or(Err(BackendError::Down)) }),
        );
        let mut decided = Box::pin(ballot.decided());
        // One no and one failure leave a quorum of yes possible only with the third.
        assert!((&mut decided).now_or_never().is_none());
        tx.send(Ok(false)).unwrap();
        assert!(decided.now_or_never().is_some());
        let tally = ballot.tally();
        assert_eq!((tally.yes, tally.no, tally.failed), (0, 2, 1));
    }
}
