//! `--idle`: connections opened and checked with a `PING` before the load, then held open and
//! silent for the whole run.

use std::net::SocketAddr;
use std::sync::Arc;

use redlock_proxy::backend::redis::Stream;
use redlock_proxy::protocol::client::Frame;
use tokio::sync::Semaphore;

use crate::args::Args;
use crate::conn::{CONNECT_TIMEOUT, Conn};

/// Idle connections opened at once; more would only overflow the server's accept backlog.
const IDLE_CONNECT_PARALLELISM: usize = 256;

#[derive(Debug)]
pub struct Idle {
    pub open: Vec<Stream>,
    pub failed: u64,
}

/// Opens `--idle` connections, each answering one PING, bounded in parallelism and time.
pub async fn open(addr: SocketAddr, args: &Arc<Args>) -> Idle {
    let gate = Arc::new(Semaphore::new(IDLE_CONNECT_PARALLELISM));
    let tasks: Vec<_> = (0..args.idle)
        .map(|_| {
            let gate = Arc::clone(&gate);
            let args = Arc::clone(args);
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                let mut conn = Conn::open(addr, args.password.as_deref()).await.ok()?;
                let ping = conn.call(&[b"PING"], CONNECT_TIMEOUT).await;
                matches!(ping, Ok(Frame::SimpleString(_))).then_some(conn.stream)
            })
        })
        .collect();
    let mut idle = Idle {
        open: Vec::with_capacity(args.idle as usize),
        failed: 0,
    };
    for task in tasks {
        match task.await {
            Ok(Some(stream)) => idle.open.push(stream),
            _ => idle.failed += 1,
        }
    }
    idle
}
