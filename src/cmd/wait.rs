//! `WAIT numreplicas timeout` and `WAITAOF numlocal numreplicas timeout`: refused. Redisson's
//! sentinel, cluster and replicated modes probe them and follow every script with `WAIT`; the
//! proxy has no replicas to wait for (a quorum of masters already holds every lock it grants),
//! and a made-up count of acknowledgements would be a silent wrong answer.

use super::{ArgDoc, Spec};
use crate::error::Error;

const REFUSAL: &str = "the proxy has no replicas to wait for: every lock it grants is already \
     held by a quorum of masters. Redisson sends WAIT in its sentinel, cluster and replicated \
     modes: configure it with useSingleServer() and the proxy's address";

pub const WAIT: Spec = Spec {
    name: "wait",
    arity: 3,
    flags: &["blocking"],
    key_pos: 0,
    group: "generic",
    summary: "Refused: the proxy has no replicas (use Redisson's single-server mode)",
    complexity: "O(1)",
    args: &[
        ArgDoc::new("numreplicas", "integer"),
        ArgDoc::new("timeout", "integer"),
    ],
    no_auth: false,
    run: |_, _, _| Err(Error::Request(REFUSAL.into())),
};

pub const WAITAOF: Spec = Spec {
    name: "waitaof",
    arity: 4,
    args: &[
        ArgDoc::new("numlocal", "integer"),
        ArgDoc::new("numreplicas", "integer"),
        ArgDoc::new("timeout", "integer"),
    ],
    ..WAIT
};
