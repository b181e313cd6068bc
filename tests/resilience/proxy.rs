//! A loopback TCP proxy in front of the shared broker: cutting it is a
//! network loss for one daemon only (sockets reset, no AMQP close frame,
//! reconnects refused) while the broker itself stays up for everyone else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Cancelled to drop every proxied connection of the current generation.
    links: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (o, l, s, up) = (
            open.clone(),
            links.clone(),
            stop.clone(),
            upstream.to_string(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                if !o.load(Ordering::SeqCst) {
                    // Dropped at once: the client sees its connect fail.
                    continue;
                }
                let cut = l.lock().expect("links").clone();
                let up = up.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&up).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                    // Dropping both sockets here is the network loss.
                });
            }
        });
        Proxy {
            addr,
            open,
            links,
            stop,
        }
    }

    /// Drops every live connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut links = self.links.lock().expect("links");
        links.cancel();
        *links = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.links.lock().map(|l| l.cancel()).unwrap_or(());
    }
}
