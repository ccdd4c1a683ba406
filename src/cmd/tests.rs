//! The command layer over in-memory masters, with no socket: what the commands answer, what
//! is counted as an error reply, and (in `fuzz`) that any request gets a well-formed answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::backend::Member;
use crate::backend::mem::{MemMaster, Mode};

#[test]
fn names_are_unique_lowercase_and_found_in_any_case() {
    let mut names: Vec<&str> = COMMANDS.iter().map(|s| s.name).collect();
    assert!(
        names
            .iter()
            .all(|n| n.chars().all(|c| !c.is_ascii_uppercase()))
    );
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), COMMANDS.len());
    assert_eq!(lookup(b"LoCk").map(|s| s.name), Some("lock"));
    assert!(lookup(b"lockx").is_none());
}

#[test]
fn arity_follows_redis_convention() {
    assert!(arity_ok(3, 3));
    assert!(!arity_ok(3, 4));
    assert!(arity_ok(-2, 2));
    assert!(arity_ok(-2, 5));
    assert!(!arity_ok(-2, 1));
}

#[test]
fn integers_parse_strictly() {
    assert_eq!(parse_int(b"5000").unwrap(), 5000);
    assert_eq!(parse_int(b"-1").unwrap(), -1);
    for bad in [
        &b""[..],
        b"-",
        b"+5",
        b" 5",
        b"5 ",
        b"1e3",
        b"5.0",
        b"007",
        b"-0",
        b"99999999999999999999",
        b"\xff",
    ] {
        assert_eq!(parse_int(bad), Err(Error::NotInteger), "{bad:?}");
    }
}

/// A proxy's shared state over three in-memory masters, and the masters.
fn proxy() -> (Arc<Shared>, Vec<MemMaster>) {
    let masters: Vec<MemMaster> = (0..3).map(|_| MemMaster::new()).collect();
    let members = masters.iter().cloned().map(Member::Mem).collect();
    let locks = Arc::new(Locks::new(members, Duration::from_millis(50), "redlock:"));
    (Arc::new(Shared::new(Config::default(), locks, 0)), masters)
}

/// Runs one command to its reply, as the session would.
async fn send(client: &mut Client, shared: &Arc<Shared>, args: &[&str]) -> Reply {
    let argv = args.iter().map(|a| Bytes::from(a.to_string())).collect();
    match dispatch(argv, client, shared) {
        Outcome::Reply(r) | Outcome::Close(r) => r,
        Outcome::Later(fut) => reply(fut.await, &shared.stats),
    }
}

fn counted(shared: &Shared) -> (u64, u64) {
    let s = &shared.stats;
    (
        s.error_replies.load(Ordering::Relaxed),
        s.noquorum.load(Ordering::Relaxed),
    )
}

#[tokio::test(start_paused = true)]
async fn lock_commands_answer_from_the_masters() {
    let (shared, _) = proxy();
    let mut client = Client::new(1, "127.0.0.1:9".parse().unwrap(), &shared);
    let Reply::Bulk(token) = send(&mut client, &shared, &["LOCK", "k", "1000"]).await else {
        panic!("a token");
    };
    let token = std::str::from_utf8(&token).unwrap().to_owned();
    assert_eq!(
        send(&mut client, &shared, &["LOCK", "k", "1000"]).await,
        Reply::Null
    );
    assert!(matches!(
        send(&mut client, &shared, &["LOCKTTL", "k"]).await,
        Reply::Integer(ms) if ms > 900
    ));
    assert_eq!(
        send(&mut client, &shared, &["UNLOCK", "k", &token]).await,
        Reply::Integer(1)
    );
    let set = ["SET", "k", "mine", "PX", "1000", "NX"];
    assert_eq!(send(&mut client, &shared, &set).await, Reply::ok());
    assert_eq!(
        send(&mut client, &shared, &["GET", "k"]).await,
        Reply::Bulk(Bytes::from("mine"))
    );
    assert_eq!(
        send(&mut client, &shared, &["DEL", "k", "other"]).await,
        Reply::Integer(1)
    );
    assert_eq!(
        send(&mut client, &shared, &["EXISTS", "k"]).await,
        Reply::Integer(0)
    );
    assert_eq!(counted(&shared), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn only_errors_a_client_sees_are_counted() {
    let (shared, masters) = proxy();
    let mut client = Client::new(1, "127.0.0.1:9".parse().unwrap(), &shared);
    masters[0].set_mode(Mode::Down);
    masters[1].set_mode(Mode::Down);
    // One reply for three keys that each failed: one error.
    let del = send(&mut client, &shared, &["DEL", "a", "b", "c"]).await;
    assert!(
        matches!(&del, Reply::Error(e) if e.starts_with("NOQUORUM ")),
        "{del:?}"
    );
    assert_eq!(counted(&shared), (1, 1));
    // A wait whose first attempts fail but that is granted in the end is no error.
    let wait = dispatch(
        ["LOCK", "w", "1000", "WAIT", "5000"]
            .iter()
            .map(|a| Bytes::from(a.to_string()))
            .collect(),
        &mut client,
        &shared,
    );
    let Outcome::Later(granted) = wait else {
        panic!("LOCK waits on the masters");
    };
    let granted = tokio::spawn(granted);
    tokio::time::sleep(Duration::from_millis(300)).await;
    masters[0].set_mode(Mode::Healthy);
    let granted = reply(granted.await.unwrap(), &shared.stats);
    assert!(matches!(granted, Reply::Bulk(_)), "{granted:?}");
    assert_eq!(counted(&shared), (1, 1));
}

/// Whatever a client sends, dispatch answers without panicking, and the answer encodes in both
/// protocols. The masters are in memory, one of the three down, so lock commands are decided by
/// the other two and come back at once.
mod fuzz {
    use std::time::Duration;

    use proptest::prelude::*;

    use bytes::BytesMut;

    use super::*;
    use crate::backend::Member;
    use crate::backend::mem::{MemMaster, Mode};

    fn argv() -> impl Strategy<Value = Vec<Bytes>> {
        let names: Vec<&'static str> = COMMANDS.iter().map(|s| s.name).collect();
        let name = prop_oneof![
            proptest::sample::select(names).prop_map(|n| n.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        let word = prop_oneof![
            Just(b"NX".to_vec()),
            Just(b"PX".to_vec()),
            Just(b"EX".to_vec()),
            Just(b"WAIT".to_vec()),
            Just(b"SESSION".to_vec()),
            Just(b"FENCE".to_vec()),
            Just(b"AUTH".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"0".to_vec()),
            Just(b"5".to_vec()),
            Just(b"99999999999999999999999".to_vec()),
            Just(b"c3f8721cbb97f72bc19e972846bd7aaf91901658".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        (name, proptest::collection::vec(word, 0..7))
            .prop_map(|(name, args)| std::iter::once(name).chain(args).map(Bytes::from).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn any_request_gets_a_well_formed_reply(requests in proptest::collection::vec(argv(), 1..6)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let down = MemMaster::new();
                down.set_mode(Mode::Down);
                let masters = vec![
                    Member::Mem(MemMaster::new()),
                    Member::Mem(MemMaster::new()),
                    Member::Mem(down),
                ];
                let locks = Arc::new(Locks::new(masters, Duration::from_millis(5), "redlock:"));
                let shared = Arc::new(Shared::new(Config::default(), locks, 0));
                let mut client = Client::new(1, "127.0.0.1:9".parse().unwrap(), &shared);
                for argv in requests {
                    let answer = match dispatch(argv, &mut client, &shared) {
                        Outcome::Reply(r) | Outcome::Close(r) => r,
                        Outcome::Later(fut) => {
                            let result = tokio::time::timeout(Duration::from_secs(5), fut)
                                .await
                                .expect("a lock command answers within its deadlines");
                            reply(result, &shared.stats)
                        }
                    };
                    let mut out = BytesMut::new();
                    answer.encode(Protocol::Resp2, &mut out);
                    answer.encode(Protocol::Resp3, &mut out);
                    assert!(!out.is_empty());
                }
                client.close().await;
            });
        }
    }
}
