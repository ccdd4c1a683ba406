//! The wire: exact bytes for RESP2 and RESP3, inline commands, pipelining order, caps,
//! authentication and the connection commands clients send on connect.

mod support;

use support::{Conn, error, int, is_null, text};

#[tokio::test]
async fn ping_echo_inline_and_empty_lines() {
    let m = support::masters(1);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    c.roundtrip(&["ping", "hi"], b"$2\r\nhi\r\n").await;
    c.roundtrip(&["ECHO", "x y"], b"$3\r\nx y\r\n").await;
    // redis-benchmark's inline PING, and redis-cli --pipe's bare empty line: no reply for it.
    c.send(b"PING\r\n\r\n\nPING \"a b\"\r\n").await;
    c.expect(b"+PONG\r\n$3\r\na b\r\n").await;
    c.roundtrip(
        &["PING", "a", "b"],
        b"-ERR wrong number of arguments for 'ping' command\r\n",
    )
    .await;
    p.stop().await;
}

#[tokio::test]
async fn lock_replies_in_both_protocols() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let token = text(&c.call(&["LOCK", "k", "5000"]).await);
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );

    // Held: null, never an error.
    c.roundtrip(&["LOCK", "k", "5000"], b"$-1\r\n").await;
    // HELLO 3 in the middle of a pipeline changes only the replies after it.
    c.send_cmd(&["LOCK", "k", "5000"]).await;
    c.send_cmd(&["HELLO", "3"]).await;
    c.send_cmd(&["LOCK", "k", "5000"]).await;
    c.expect(b"$-1\r\n").await;
    c.expect(b"%7\r\n$6\r\nserver\r\n$13\r\nredlock-proxy\r\n$7\r\nversion\r\n")
        .await;
    let _version = c.reply().await;
    c.expect(b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n").await;
    let _id = c.reply().await;
    c.expect(
        b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
    )
    .await;
    c.expect(b"_\r\n").await;
    c.roundtrip(&["LOCKTTL", "nope"], b":-2\r\n").await;
    let ttl = int(&c.call(&["LOCKTTL", "k"]).await);
    assert!((4_000..=5_000 - 52).contains(&ttl), "validity {ttl}");
    c.roundtrip(&["EXTEND", "k", "bad", "5000"], b":0\r\n")
        .await;
    c.roundtrip(&["EXTEND", "k", &token, "20000"], b":1\r\n")
        .await;
    let ttl = int(&c.call(&["LOCKTTL", "k"]).await);
    assert!(ttl > 5_000 && ttl <= 20_000 - 202, "validity {ttl}");
    c.roundtrip(&["UNLOCK", "k", "bad"], b":0\r\n").await;
    c.roundtrip(&["UNLOCK", "k", &token], b":1\r\n").await;
    c.roundtrip(&["UNLOCK", "k", &token], b":0\r\n").await;
    c.roundtrip(&["HELLO", "2"], b"*14\r\n$6\r\nserver\r\n")
        .await;
    for _ in 0..13 {
        c.reply().await;
    }
    c.roundtrip(&["LOCKTTL", "k"], b":-2\r\n").await;
    p.stop().await;
}

#[tokio::test]
async fn bad_arguments_get_redis_worded_errors_and_the_connection_lives() {
    let m = support::masters(1);
    let p = support::proxy_with(&m, |c| c.redlock.max_ttl_ms = 10_000).await;
    let mut c = p.conn().await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["LOCK", "k"],
            "-ERR wrong number of arguments for 'lock' command\r\n",
        ),
        (&["lock", "k", "1000", "2"], "-ERR syntax error\r\n"),
        (
            &["UNLOCK", "k"],
            "-ERR wrong number of arguments for 'unlock' command\r\n",
        ),
        (
            &["EXTEND", "k", "t"],
            "-ERR wrong number of arguments for 'extend' command\r\n",
        ),
        (
            &["LOCKTTL"],
            "-ERR wrong number of arguments for 'lockttl' command\r\n",
        ),
        (
            &["LOCK", "k", "abc"],
            "-ERR value is not an integer or out of range\r\n",
        ),
        (
            &["LOCK", "k", "1.5"],
            "-ERR value is not an integer or out of range\r\n",
        ),
        (
            &["LOCK", "k", "99999999999999999999"],
            "-ERR value is not an integer or out of range\r\n",
        ),
        (
            &["LOCK", "k", "0"],
            "-ERR invalid expire time in 'lock' command: ttl-ms must be between 4 and 10000\r\n",
        ),
        (
            &["LOCK", "k", "-5"],
            "-ERR invalid expire time in 'lock' command: ttl-ms must be between 4 and 10000\r\n",
        ),
        (
            &["LOCK", "k", "3"],
            "-ERR invalid expire time in 'lock' command: ttl-ms must be between 4 and 10000\r\n",
        ),
        (
            &["LOCK", "k", "10001"],
            "-ERR invalid expire time in 'lock' command: ttl-ms must be between 4 and 10000\r\n",
        ),
        (
            &["EXTEND", "k", "t", "0"],
            "-ERR invalid expire time in 'extend' command: ttl-ms must be between 4 and 10000\r\n",
        ),
        (
            &["NOPE", "a", "b"],
            "-ERR unknown command 'NOPE', with args beginning with: 'a' 'b' \r\n",
        ),
        (
            &["CLIENT", "MAINT_NOTIFICATIONS", "ON"],
            "-ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP.\r\n",
        ),
        (
            &["CLIENT", "SETNAME", "a b"],
            "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
        ),
        (
            &["CLIENT", "SETINFO", "FOO", "x"],
            "-ERR Unrecognized option 'FOO'\r\n",
        ),
        (&["SELECT", "16"], "-ERR DB index is out of range\r\n"),
        (
            &["SELECT", "x"],
            "-ERR value is not an integer or out of range\r\n",
        ),
        (&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n"),
        (
            &["HELLO", "x"],
            "-ERR Protocol version is not an integer or out of range\r\n",
        ),
        (
            &["HELLO", "3", "FOO"],
            "-ERR Syntax error in HELLO option 'FOO'\r\n",
        ),
        (
            &["CONFIG", "SET", "save", ""],
            "-ERR CONFIG SET is not supported: the proxy is configured by its config file and flags\r\n",
        ),
        (
            &["AUTH", "x"],
            "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
        ),
    ];
    for (args, expected) in cases {
        c.roundtrip(args, expected.as_bytes()).await;
    }
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    p.stop().await;
}

#[tokio::test]
async fn pipelined_replies_keep_request_order() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(
            format!("*3\r\n$4\r\nLOCK\r\n$5\r\nk{i:04}\r\n$4\r\n5000\r\n").as_bytes(),
        );
        batch.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n$5\r\ne{i:04}\r\n").as_bytes());
    }
    c.send(&batch).await;
    for i in 0..200 {
        let token = c.reply().await;
        assert_eq!(text(&token).len(), 32, "LOCK {i}");
        c.expect(format!("$5\r\ne{i:04}\r\n").as_bytes()).await;
    }
    // Every one of those keys is now held.
    c.send(&batch[..batch.len() / 2]).await;
    for i in 0..100 {
        assert!(is_null(&c.reply().await), "LOCK {i} again");
        c.expect(format!("$5\r\ne{i:04}\r\n").as_bytes()).await;
    }
    p.stop().await;
}

#[tokio::test]
async fn malformed_frames_close_only_that_connection() {
    let m = support::masters(1);
    let p = support::proxy_with(&m, |c| {
        c.server.max_args = 8;
        c.server.max_arg_bytes = 64;
        c.server.max_inline_bytes = 64;
        c.server.max_request_bytes = 256;
    })
    .await;
    let mut bystander = p.conn().await;
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n$x\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*9\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$65\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n:1\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"PING \"unclosed\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (bytes, expected) in cases {
        p.refuses(bytes, expected).await;
    }
    // A long inline line without a newline.
    let mut c = p.conn().await;
    c.send(&[b'A'; 100]).await;
    c.expect(b"-ERR Protocol error: too big inline request\r\n")
        .await;
    assert!(c.closed().await);
    // A request whose arguments are each allowed but together too large.
    let mut c = p.conn().await;
    c.send(b"*6\r\n").await;
    for _ in 0..5 {
        c.send(b"$60\r\n").await;
        c.send(&[b'a'; 60]).await;
        c.send(b"\r\n").await;
    }
    c.expect(b"-ERR Protocol error: request larger than 256 bytes\r\n")
        .await;
    assert!(c.closed().await);
    bystander.roundtrip(&["PING"], b"+PONG\r\n").await;
    p.stop().await;
}

#[tokio::test]
async fn random_garbage_never_takes_the_proxy_down() {
    use rand::{Rng, RngExt};
    let m = support::masters(1);
    let p = support::proxy(&m).await;
    let mut rng = rand::rng();
    for _ in 0..100 {
        let mut c = p.conn().await;
        let len = rng.random_range(1..512);
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        if rng.random_bool(0.5) {
            junk[0] = *b"*$+:-\r\n".get(rng.random_range(0..7)).unwrap();
        }
        use tokio::io::AsyncWriteExt;
        let _ = c.stream.write_all(&junk).await;
        drop(c);
    }
    let mut c = p.conn().await;
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    p.stop().await;
}

#[tokio::test]
async fn password_gates_everything_but_auth_hello_and_quit() {
    let m = support::masters(1);
    let p = support::proxy_with(&m, |c| c.server.requirepass = "s3cret".into()).await;
    let mut c = p.conn().await;
    c.roundtrip(
        &["LOCK", "k", "1000"],
        b"-NOAUTH Authentication required.\r\n",
    )
    .await;
    c.roundtrip(&["PING"], b"-NOAUTH Authentication required.\r\n")
        .await;
    // Redis's order: unknown command and arity come before authentication.
    c.roundtrip(
        &["NOPE"],
        b"-ERR unknown command 'NOPE', with args beginning with: \r\n",
    )
    .await;
    c.roundtrip(&["HELLO", "3"], b"-NOAUTH Authentication required.\r\n")
        .await;
    c.roundtrip(
        &["AUTH", "wrong"],
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    c.roundtrip(
        &["AUTH", "bob", "s3cret"],
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    c.roundtrip(&["AUTH", "s3cret"], b"+OK\r\n").await;
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    c.roundtrip(&["RESET"], b"+RESET\r\n").await;
    c.roundtrip(&["PING"], b"-NOAUTH Authentication required.\r\n")
        .await;
    c.roundtrip(&["AUTH", "default", "s3cret"], b"+OK\r\n")
        .await;
    c.roundtrip(&["PING"], b"+PONG\r\n").await;

    let mut c = p.conn().await;
    let hello = support::flatten(
        &c.call(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me"])
            .await,
    );
    assert!(hello.contains("proto 3"), "{hello}");
    c.roundtrip(&["CLIENT", "GETNAME"], b"$2\r\nme\r\n").await;
    c.roundtrip(&["LOCKTTL", "k"], b":-2\r\n").await;

    let mut c = p.conn().await;
    c.roundtrip(&["QUIT"], b"+OK\r\n").await;
    assert!(c.closed().await);
    p.stop().await;
}

#[tokio::test]
async fn connection_commands_clients_send_on_connect() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    c.roundtrip(&["CLIENT", "GETNAME"], b"$-1\r\n").await;
    c.roundtrip(&["CLIENT", "SETNAME", "worker-1"], b"+OK\r\n")
        .await;
    c.roundtrip(&["client", "getname"], b"$8\r\nworker-1\r\n")
        .await;
    c.roundtrip(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"], b"+OK\r\n")
        .await;
    c.roundtrip(&["CLIENT", "SETINFO", "lib-ver", "8.1.0"], b"+OK\r\n")
        .await;
    let id = int(&c.call(&["CLIENT", "ID"]).await);
    assert!(id > 0);
    let info = text(&c.call(&["CLIENT", "INFO"]).await);
    assert!(
        info.contains("name=worker-1") && info.contains("lib-name=redis-py"),
        "{info}"
    );
    c.roundtrip(&["SELECT", "0"], b"+OK\r\n").await;
    c.roundtrip(
        &["CONFIG", "GET", "save"],
        b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n",
    )
    .await;
    c.roundtrip(
        &["CONFIG", "GET", "appendonly"],
        b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n",
    )
    .await;
    c.roundtrip(&["CONFIG", "GET", "nothing-like-it"], b"*0\r\n")
        .await;
    let info = text(&c.call(&["INFO"]).await);
    for needle in [
        "# Server\r\n",
        "redis_version:",
        "# Clients\r\nconnected_clients:",
        "# Stats\r\n",
        "loading:0",
        "# Masters\r\nmasters:3\r\nquorum:2\r\nmasters_up:3\r\n",
        "master2:addr=127.0.0.1:",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle:?}:\n{info}");
    }
    let only = text(&c.call(&["INFO", "masters"]).await);
    assert!(
        only.starts_with("# Masters\r\n") && !only.contains("# Server"),
        "{only}"
    );
    assert_eq!(text(&c.call(&["INFO", "nonesuch"]).await), "");
    let count = int(&c.call(&["COMMAND", "COUNT"]).await);
    assert_eq!(count, 35);
    let docs = c.call(&["COMMAND", "DOCS", "lock"]).await;
    let rendered = support::flatten(&docs);
    for needle in [
        "lock",
        "summary",
        "arguments",
        "ttl-ms",
        "integer",
        "key_spec_index",
    ] {
        assert!(
            rendered.contains(needle),
            "COMMAND DOCS lacks {needle}: {rendered}"
        );
    }
    let all = c.call(&["COMMAND"]).await;
    assert!(support::flatten(&all).contains("lockttl"));
    assert!(
        error(&c.call(&["COMMAND", "NOPE"]).await)
            .starts_with("ERR unknown subcommand 'NOPE'. Try COMMAND HELP.")
    );
    p.stop().await;
}

#[tokio::test]
async fn databases_keep_locks_apart() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    assert_eq!(text(&c.call(&["LOCK", "k", "5000"]).await).len(), 32);
    c.roundtrip(&["SELECT", "1"], b"+OK\r\n").await;
    assert_eq!(text(&c.call(&["LOCK", "k", "5000"]).await).len(), 32);
    c.roundtrip(&["LOCK", "k", "5000"], b"$-1\r\n").await;
    c.roundtrip(&["RESET"], b"+RESET\r\n").await;
    c.roundtrip(&["LOCK", "k", "5000"], b"$-1\r\n").await;
    p.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_with_an_error() {
    let m = support::masters(1);
    let p = support::proxy_with(&m, |c| c.server.max_clients = 1).await;
    let mut first = p.conn().await;
    first.roundtrip(&["PING"], b"+PONG\r\n").await;
    let mut second = p.conn().await;
    second
        .expect(b"-ERR max number of clients reached\r\n")
        .await;
    assert!(second.closed().await);
    first.roundtrip(&["PING"], b"+PONG\r\n").await;
    drop(first);
    // The slot frees when the first client leaves (bounded wait for the close to be seen).
    let deadline = tokio::time::Instant::now() + support::REPLY_WITHIN;
    loop {
        let mut third = Conn::connect(p.addr).await;
        third.send_cmd(&["PING"]).await;
        if support::flatten(&third.reply().await) == "PONG" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    p.stop().await;
}

#[tokio::test]
async fn many_small_requests_for_large_replies_all_arrive_in_order() {
    let m = support::masters(1);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let mut batch = Vec::new();
    for i in 0..400 {
        batch.extend_from_slice(b"COMMAND DOCS\r\n");
        batch.extend_from_slice(format!("ECHO m{i}\r\n").as_bytes());
    }
    c.send(&batch).await;
    for i in 0..400 {
        assert!(support::flatten(&c.reply().await).contains("ttl-ms"));
        assert_eq!(text(&c.reply().await), format!("m{i}"));
    }
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    p.stop().await;
}

#[tokio::test]
async fn a_reply_past_the_hard_output_mark_closes_only_that_connection() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| {
        c.server.client_output_soft_bytes = 64 * 1024;
        c.server.client_output_hard_bytes = 256 * 1024;
    })
    .await;
    let mut holder = p.conn().await;
    let token = text(&holder.call(&["LOCK", "k", "10000"]).await);
    // Below the soft mark a request is read and run; its reply, held behind a blocked wait,
    // takes the queue past the hard mark.
    let mut c = p.conn().await;
    c.send_cmd(&["LOCK", "k", "10000", "WAIT", "5000"]).await;
    c.send_cmd(&["ECHO", &"y".repeat(300 * 1024)]).await;
    assert!(c.closed().await, "still open past the hard mark");
    let stats = support::flatten(&holder.call(&["INFO", "stats"]).await);
    assert!(
        stats.contains("client_output_buffer_limit_disconnections:1\r\n"),
        "{stats}"
    );
    // The departed waiter took nothing: the lock is the holder's, and free once released.
    holder.roundtrip(&["UNLOCK", "k", &token], b":1\r\n").await;
    assert_eq!(text(&holder.call(&["LOCK", "k", "1000"]).await).len(), 32);
    p.stop().await;
}
