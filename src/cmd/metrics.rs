//! What [`dispatch`](super::dispatch) counts of each request for the Prometheus listener: its
//! command (a `LOCK ... WAIT` apart, since its latency is the wait), how long its reply took,
//! and, for the commands that take, release or extend a lock, how it ended.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;

use super::{COMMANDS, ReplyFuture, Shared, Spec};
use crate::error::Error;
use crate::metrics::Outcome;
use crate::protocol::Reply;

/// The label of `LOCK ... WAIT`, counted after the table's commands.
const LOCK_WAIT: &str = "lock_wait";

/// Commands whose outcome is counted: they take, release or extend locks.
const LOCK_COMMANDS: &[&str] = &[
    "lock", LOCK_WAIT, "unlock", "extend", "set", "del", "eval", "evalsha",
];

/// The `command` label of each index a request is counted under: the table's commands in order,
/// then `lock_wait`.
pub fn labels() -> Vec<&'static str> {
    COMMANDS.iter().map(|s| s.name).chain([LOCK_WAIT]).collect()
}

/// Whether the outcome of the command labelled `label` is counted.
pub fn is_lock_command(label: &str) -> bool {
    LOCK_COMMANDS.contains(&label)
}

/// A request on its way: which command, and since when.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timer {
    index: usize,
    started: Instant,
}

impl Timer {
    /// Starts timing a request of `spec` with arguments `argv`.
    pub(super) fn start(spec: &'static Spec, argv: &[Bytes]) -> Timer {
        // Options follow the key and TTL; the key itself may be called WAIT.
        let waits =
            spec.name == "lock" && argv.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"WAIT"));
        let index = if waits {
            COMMANDS.len()
        } else {
            COMMANDS
                .iter()
                .position(|s| std::ptr::eq(*s, spec))
                .unwrap_or(COMMANDS.len())
        };
        Timer {
            index,
            started: Instant::now(),
        }
    }

    /// Counts the reply, ready now, that ended as `outcome`.
    pub(super) fn done(self, shared: &Shared, outcome: Outcome) {
        shared
            .requests
            .observe(self.index, self.started.elapsed(), outcome);
    }

    /// `fut`, counted when it gives its reply.
    pub(super) fn later(self, fut: ReplyFuture, shared: &Arc<Shared>) -> ReplyFuture {
        let shared = shared.clone();
        Box::pin(fut.map(move |result| {
            self.done(&shared, outcome(&result));
            result
        }))
    }
}

/// How a lock command's result says it ended.
pub fn outcome(result: &Result<Reply, Error>) -> Outcome {
    match result {
        Ok(reply) => of_reply(reply),
        Err(e) => of_error(e),
    }
}

/// How a lock command's reply says it ended: a token, `OK` or a positive count is done; a null
/// or a zero, refused for the lock's state; an error reply, `NOQUORUM` or another.
pub fn of_reply(reply: &Reply) -> Outcome {
    match reply {
        Reply::Error(text) if text.starts_with("NOQUORUM") => Outcome::NoQuorum,
        Reply::Error(_) => Outcome::Error,
        Reply::Null | Reply::Bool(false) => Outcome::Held,
        Reply::Integer(n) if *n <= 0 => Outcome::Held,
        _ => Outcome::Granted,
    }
}

/// The outcome of a command that failed with `e`.
pub fn of_error(e: &Error) -> Outcome {
    if e.is_noquorum() {
        Outcome::NoQuorum
    } else {
        Outcome::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn replies_are_classified_as_the_outcome_label_says() {
        let cases = [
            (Ok(Reply::bulk("0123456789abcdef")), Outcome::Granted),
            (Ok(Reply::ok()), Outcome::Granted),
            (Ok(Reply::Integer(1)), Outcome::Granted),
            (
                Ok(Reply::Array(vec![Reply::bulk("t"), Reply::Integer(7)])),
                Outcome::Granted,
            ),
            (Ok(Reply::Null), Outcome::Held),
            (Ok(Reply::Integer(0)), Outcome::Held),
            (
                Ok(Reply::error("NOQUORUM 1 of 3 masters answered")),
                Outcome::NoQuorum,
            ),
            (Ok(Reply::error("ERR nope")), Outcome::Error),
            (Err(Error::NotInteger), Outcome::Error),
        ];
        for (result, want) in cases {
            assert_eq!(outcome(&result), want, "{result:?}");
        }
    }

    #[test]
    fn lock_wait_is_told_apart_by_its_option_not_its_key() {
        let argv = |args: &[&str]| -> Vec<Bytes> {
            args.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect()
        };
        let lock = super::super::lookup(b"lock").unwrap();
        let label = |args: &[&str]| labels()[Timer::start(lock, &argv(args)).index];
        assert_eq!(label(&["LOCK", "k", "1000", "wait", "10"]), "lock_wait");
        assert_eq!(label(&["LOCK", "WAIT", "1000"]), "lock");
        assert_eq!(label(&["LOCK", "k", "1000", "FENCE"]), "lock");
        let unlock = super::super::lookup(b"UNLOCK").unwrap();
        assert_eq!(
            labels()[Timer::start(unlock, &argv(&["UNLOCK", "k", "t"])).index],
            "unlock"
        );
    }
}
