//! The addresses the policy's names currently resolve to: filled by the resolver and by the
//! DNS proxy (one book each, compiled together), read by the compiler and by event enrichment.
//! Pure data, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::DomainPattern;

/// What every known name currently resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressBook {
    /// name → address → `None` while current, `Some(deadline)` while in its grace period.
    names: BTreeMap<String, BTreeMap<IpAddr, Option<Instant>>>,
    /// The same, by address: address → the names that have it (current or in grace).
    by_ip: BTreeMap<IpAddr, BTreeSet<String>>,
}

impl AddressBook {
    /// Adds a permanent address for `name`.
    pub fn insert_static(&mut self, name: &str, ip: IpAddr) {
        self.names
            .entry(name.to_string())
            .or_default()
            .insert(ip, None);
        self.by_ip.entry(ip).or_default().insert(name.to_string());
    }

    /// Records a fresh answer for `name`: its addresses become current, addresses it no longer
    /// has enter their grace period. Returns whether anything changed.
    pub fn update(&mut self, name: &str, ips: &[IpAddr], now: Instant, grace: Duration) -> bool {
        let entry = self.names.entry(name.to_string()).or_default();
        let before = entry.clone();
        for (ip, state) in entry.iter_mut() {
            if !ips.contains(ip) && state.is_none() {
                *state = Some(now + grace);
            }
        }
        for ip in ips {
            if entry.insert(*ip, None).is_none() {
                self.by_ip.entry(*ip).or_default().insert(name.to_string());
            }
        }
        *entry != before
    }

    /// Drops addresses whose grace period is over. Returns whether anything changed.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for (name, addrs) in self.names.iter_mut() {
            addrs.retain(|ip, state| {
                let keep = state.is_none_or(|deadline| deadline > now);
                if !keep {
                    changed = true;
                    if let Some(names) = self.by_ip.get_mut(ip) {
                        names.remove(name);
                        if names.is_empty() {
                            self.by_ip.remove(ip);
                        }
                    }
                }
                keep
            });
        }
        changed
    }

    /// Addresses of every known name the pattern matches.
    pub fn addresses_matching(&self, pattern: &DomainPattern) -> Vec<IpAddr> {
        let mut out = BTreeSet::new();
        match pattern {
            DomainPattern::Exact(name) => {
                if let Some(addrs) = self.names.get(name) {
                    out.extend(addrs.keys().copied());
                }
            }
            DomainPattern::Wildcard(_) => {
                for (name, addrs) in &self.names {
                    if pattern.matches(name) {
                        out.extend(addrs.keys().copied());
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// The names that resolve (or recently resolved) to exactly `ip`, as stored.
    pub fn names_with(&self, ip: IpAddr) -> impl Iterator<Item = &str> + '_ {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every name that resolves (or recently resolved) to `ip`, sorted.
    pub fn domains_for(&self, ip: IpAddr) -> Vec<String> {
        let ip = canonical(ip);
        self.names
            .iter()
            .filter(|(_, addrs)| addrs.contains_key(&ip))
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.names.values().all(|a| a.is_empty())
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
