//! What a session's DNS proxy let through: the names it answered, the addresses they had, and
//! until when. The session's policy task merges this book with the resolver's when it
//! compiles the policy, and connection events name the domain this session resolved to reach
//! an address ([`ResolvedNames`]). Pure data, no I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::policy::AddressBook;

/// An allowed answer on its way to the program: the policy task installs its addresses, then
/// says so on `installed`, and only then does the proxy release the answer.
#[derive(Debug)]
pub struct Learned {
    /// The name the program asked.
    pub asked: String,
    /// Every name of the answer (the asked name and its CNAME targets), all allowed.
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// How long the addresses are current (already clamped to the policy's TTL bounds); the
    /// grace period follows.
    pub ttl: Duration,
    pub installed: oneshot::Sender<()>,
}

/// Address → the name this session last resolved to reach it (shared with the event enricher).
pub type ResolvedNames = Arc<RwLock<HashMap<IpAddr, String>>>;

/// The proxy's record of a session.
#[derive(Debug, Default)]
pub struct LearnedNames {
    book: AddressBook,
    /// name → when its addresses stop being current (they enter their grace period).
    current_until: HashMap<String, Instant>,
    resolved: ResolvedNames,
}

impl LearnedNames {
    /// The handle connection events read.
    pub fn resolved(&self) -> ResolvedNames {
        self.resolved.clone()
    }

    /// The addresses to allow, in the resolver's [`AddressBook`] form.
    pub fn book(&self) -> &AddressBook {
        &self.book
    }

    /// Records an allowed answer. Returns whether the addresses to allow changed.
    pub fn record(&mut self, learned: &Learned, now: Instant, grace: Duration) -> bool {
        let mut changed = false;
        for name in &learned.names {
            changed |= self.book.update(name, &learned.ips, now, grace);
            self.current_until.insert(name.clone(), now + learned.ttl);
        }
        let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
        for ip in &learned.ips {
            resolved.insert(canonical(*ip), learned.asked.clone());
        }
        changed
    }

    /// Moves names whose TTL ran out into their grace period and drops addresses whose grace
    /// period is over. Returns whether the addresses to allow changed.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> bool {
        let mut changed = false;
        let due: Vec<String> = self
            .current_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.current_until.remove(&name);
            changed |= self.book.update(&name, &[], now, grace);
        }
        if self.book.expire(now) {
            changed = true;
            let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
            resolved.retain(|ip, _| !self.book.domains_for(*ip).is_empty());
        }
        changed
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DomainPattern;

    fn learned(name: &str, ip: &str, ttl: u64) -> Learned {
        Learned {
            asked: name.into(),
            names: vec![name.into()],
            ips: vec![ip.parse().unwrap()],
            ttl: Duration::from_secs(ttl),
            installed: oneshot::channel().0,
        }
    }

    #[test]
    fn answers_stay_current_for_their_ttl_then_their_grace_period() {
        let mut l = LearnedNames::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        assert!(l.record(&learned("a.x.test", "127.0.0.9", 5), t0, grace));
        // The same answer again changes nothing (no recompilation).
        assert!(!l.record(&learned("a.x.test", "127.0.0.9", 5), t0, grace));
        let wild = DomainPattern::parse("*.x.test").unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(l.book().addresses_matching(&wild), vec![ip]);
        assert_eq!(
            l.resolved().read().unwrap().get(&ip).map(String::as_str),
            Some("a.x.test")
        );
        assert!(!l.expire(t0 + Duration::from_secs(4), grace));
        // TTL over: in its grace period, still allowed.
        l.expire(t0 + Duration::from_secs(5), grace);
        assert_eq!(l.book().addresses_matching(&wild), vec![ip]);
        // Grace over: gone, and no longer named.
        assert!(l.expire(t0 + Duration::from_secs(8), grace));
        assert!(l.book().addresses_matching(&wild).is_empty());
        assert!(l.resolved().read().unwrap().get(&ip).is_none());
    }
}
