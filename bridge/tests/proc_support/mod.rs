//! Processes the end-to-end tests start (`llm-bridge`, `fake-upstream`): killed when dropped,
//! signalled, waited for; and loopback ports to give them.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed on drop so a failing test leaves no process behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends `sig` (`-TERM`, `-STOP`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// SIGTERM (what systemd and container runtimes send).
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// The exit status, within 30 s.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until something listens on 127.0.0.1:`port`; fails with `log` if `child` exits
/// first or nothing listens within 30 s.
pub fn wait_listening(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "exited early ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "nothing listening on 127.0.0.1:{port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
