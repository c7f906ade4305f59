//! What the Boundary test suites share: a listener that proves a negative.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A TCP listener on `ip` that answers like HTTP and counts every byte it receives: a
/// "blocked" destination is proven blocked when it received nothing.
pub struct Counted {
    pub port: u16,
    bytes: Arc<AtomicUsize>,
}

impl Counted {
    pub fn start(ip: &str) -> Counted {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicUsize::new(0));
        let count = bytes.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let count = count.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = s.read(&mut buf) {
                        count.fetch_add(n, Ordering::SeqCst);
                    }
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
                });
            }
        });
        Counted { port, bytes }
    }

    pub fn received(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}
