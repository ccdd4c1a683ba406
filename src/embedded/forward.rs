//! A loopback TCP forwarder whose target can be switched: it stands for the DNS name or virtual
//! IP that a managed Redis moves to another server on failover. [`Forwarder::switch`] drops
//! every connection through it, as a moved virtual IP does; [`Forwarder::point`] sends only new
//! connections elsewhere and keeps the open ones on the old server, as a changed DNS record
//! does. New connections fail at once if nothing listens at the target. The tests and the
//! torture tool put masters behind it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running forwarder; dropping it stops it and every connection through it. Its tasks run on
/// the tokio runtime it was started in, which must outlive it.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    /// Where new connections go, and how many times open ones were dropped.
    target: watch::Sender<(SocketAddr, u64)>,
    accepting: JoinHandle<()>,
}

impl Forwarder {
    /// Forwards a free loopback port to `target`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound: the machine has none free, and nothing that needs a
    /// forwarder could run anyway.
    pub async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (tx, rx) = watch::channel((target, 0));
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut moved = rx.clone();
                let (to, drops) = *moved.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(to).await else {
                        return;
                    };
                    // Both legs carry small request/reply traffic: no batching delay.
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    // Switched, or the forwarder is gone: both ends close. Pointed elsewhere:
                    // this connection stays where it is.
                    let dropped = async {
                        while moved.changed().await.is_ok() {
                            if moved.borrow_and_update().1 != drops {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = dropped => {}
                    }
                });
            }
        });
        Forwarder {
            addr,
            target: tx,
            accepting,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `target` and drops the current ones.
    pub fn switch(&self, target: SocketAddr) {
        self.target.send_modify(|(to, drops)| {
            *to = target;
            *drops += 1;
        });
    }

    /// Sends new connections to `target`; the current ones stay with the old one.
    pub fn point(&self, target: SocketAddr) {
        self.target.send_modify(|(to, _)| *to = target);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
