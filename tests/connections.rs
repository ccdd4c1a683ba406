//! Connections the proxy ends by itself: TCP keepalive on every client socket, the idle
//! timeout, the authentication deadline, Redis's caps on requests before AUTH, and a client that
//! keeps guessing the password. Each reproduces what a careless or hostile client did and
//! asserts the bound.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{Conn, REPLY_WITHIN, error, text};

/// `ss`'s line for the proxy's end of `c` (source port: the proxy's, peer port: ours), with
/// its timer (`-o`).
async fn proxy_side_socket(proxy: std::net::SocketAddr, c: &Conn) -> String {
    let ours = c.stream.local_addr().unwrap().port();
    let filter = format!("( sport = :{} and dport = :{ours} )", proxy.port());
    let out = support::run_bounded(
        tokio::process::Command::new("ss").args(["-tnoH", "state", "established", &filter]),
        b"",
        REPLY_WITHIN,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn keepalive_is_on_every_client_socket() {
    let m = support::masters(1);
    let p = support::proxy_with(&m, |c| c.server.tcp_keepalive_secs = 100).await;
    let mut c = p.conn().await;
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    let line = proxy_side_socket(p.addr, &c).await;
    // The first probe is due within the configured 100 s: "timer:(keepalive,1min39sec,0)".
    let timer = line
        .split("timer:(keepalive,")
        .nth(1)
        .unwrap_or_else(|| panic!("no keepalive timer on the proxy's socket: {line:?}"));
    assert!(
        timer.starts_with("1min") || timer.starts_with("59sec"),
        "keepalive due in {timer}"
    );
    p.stop().await;

    // 0 turns it off.
    let p = support::proxy_with(&m, |c| c.server.tcp_keepalive_secs = 0).await;
    let mut c = p.conn().await;
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    let line = proxy_side_socket(p.addr, &c).await;
    assert!(!line.is_empty() && !line.contains("keepalive"), "{line:?}");
    p.stop().await;
}

/// Polls (bounded) until `LOCK key` is granted on `c`: the session that held it is gone.
async fn lock_when_free(c: &mut Conn, key: &str) -> String {
    for _ in 0..250 {
        let reply = c.call(&["LOCK", key, "10000"]).await;
        if !support::is_null(&reply) {
            return text(&reply);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{key} still held after 5 s");
}

#[tokio::test]
async fn silent_and_unauthenticated_connections_are_closed_and_their_session_locks_freed() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| {
        c.server.requirepass = "pw".into();
        c.server.idle_timeout_ms = 400;
        c.server.auth_timeout_ms = 400;
    })
    .await;
    let started = Instant::now();
    // A client that took a SESSION lock, then went silent (its host vanished, say).
    let mut holder = p.conn().await;
    holder.roundtrip(&["AUTH", "pw"], b"+OK\r\n").await;
    let token = text(&holder.call(&["LOCK", "held", "10000", "SESSION"]).await);
    assert_eq!(token.len(), 32);
    // A stranger that never authenticates, however busy it keeps the connection.
    let mut stranger = p.conn().await;
    let mut closed = false;
    for _ in 0..100 {
        if stranger.stream.write_all(b"PING\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut reply = [0u8; 64];
        match tokio::time::timeout(REPLY_WITHIN, stranger.stream.read(&mut reply)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => panic!("no reply to PING within {REPLY_WITHIN:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the stranger was not closed while it kept talking");
    assert!(holder.closed().await, "the silent holder was not closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}"
    );

    // The holder's close path ran: its SESSION lock is released, not kept alive.
    let mut next = p.conn().await;
    next.roundtrip(&["AUTH", "pw"], b"+OK\r\n").await;
    let second = lock_when_free(&mut next, "held").await;
    assert_ne!(second, token);
    let stats = text(&next.call(&["INFO", "stats"]).await);
    assert!(stats.contains("timed_out_clients:2\r\n"), "{stats}");
    p.stop().await;
}

#[tokio::test]
async fn strangers_may_send_only_small_requests() {
    let m = support::masters(1);
    let p = support::proxy_with(&m, |c| c.server.requirepass = "pw".into()).await;
    let cases: &[(&[u8], &str)] = &[
        (
            b"*11\r\n",
            "-ERR Protocol error: unauthenticated multibulk length\r\n",
        ),
        // Refused on the header: the 512 KiB it announces never has to arrive.
        (
            b"*2\r\n$4\r\nAUTH\r\n$524288\r\n",
            "-ERR Protocol error: unauthenticated bulk length\r\n",
        ),
    ];
    for (bytes, expected) in cases {
        p.refuses(bytes, expected).await;
    }
    // After AUTH the configured caps apply again.
    let mut c = p.conn().await;
    c.roundtrip(&["AUTH", "pw"], b"+OK\r\n").await;
    let big = "x".repeat(64 * 1024);
    assert_eq!(text(&c.call(&["ECHO", &big]).await), big);
    p.stop().await;
}

#[tokio::test]
async fn a_password_guesser_is_counted_and_closed_early() {
    let m = support::masters(1);
    let p = support::proxy_with(&m, |c| c.server.requirepass = "pw".into()).await;
    let guesser = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut rx, mut tx) = guesser.into_split();
    let guesses = b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n".repeat(100_000);
    let started = Instant::now();
    // The proxy closes while most of these are still unsent: the write may fail.
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(&guesses).await;
    });
    let mut replies = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = rx.read(&mut chunk).await {
            replies.extend_from_slice(&chunk[..n]);
        }
    };
    let closed = tokio::time::timeout(REPLY_WITHIN, read_all).await.is_ok();
    let _ = writer.await;
    let answered = String::from_utf8_lossy(&replies)
        .matches("WRONGPASS")
        .count();
    assert!(
        closed,
        "still open after {answered} WRONGPASS replies in {REPLY_WITHIN:?}"
    );
    assert!(
        answered <= 10,
        "{answered} WRONGPASS replies before the close"
    );
    let mut admin = p.conn().await;
    admin.roundtrip(&["AUTH", "pw"], b"+OK\r\n").await;
    let stats = text(&admin.call(&["INFO", "stats"]).await);
    assert!(stats.contains("acl_access_denied_auth:10\r\n"), "{stats}");
    println!("closed after 10 failed AUTHs in {:?}", started.elapsed());

    // RESET does not give a guesser a fresh allowance; HELLO ... AUTH counts too.
    let mut c = p.conn().await;
    for _ in 0..5 {
        let reply = c.call(&["AUTH", "nope"]).await;
        assert!(error(&reply).starts_with("WRONGPASS"));
    }
    c.roundtrip(&["RESET"], b"+RESET\r\n").await;
    for _ in 0..4 {
        let reply = c.call(&["HELLO", "3", "AUTH", "default", "nope"]).await;
        assert!(error(&reply).starts_with("WRONGPASS"));
    }
    let last = c.call(&["AUTH", "nope"]).await;
    assert!(error(&last).starts_with("WRONGPASS"));
    assert!(c.closed().await, "open after 10 failures around a RESET");
    p.stop().await;
}
