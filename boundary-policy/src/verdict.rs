//! The verdict of a policy on one destination or one DNS question, as a session enforcing it
//! would decide: what Bridge's `policy simulate` replays stored events against.
//!
//! A connection is judged the way the kernel judges it: the longest prefix entry covering the
//! address, with the grants of every shorter prefix pushed down into it (see [`compile`]), and
//! the addresses of a domain rule being those the session learned for its names. An event
//! carries the names its agent knew for the address (`boundary.destination.domains`), so the
//! host entry is built from exactly those names, with the same `rule_nets`/`push_down`/`merge`
//! code the agent compiles its maps with. A DNS question is judged the way the DNS proxy judges
//! it: by name alone ([`Policy::match_domain`]).
//!
//! [`compile`]: crate::compile

use std::collections::BTreeSet;
use std::net::IpAddr;

use boundary_common::RULE_DNS;
use ipnet::IpNet;

use crate::{entries, lookup, push_down, rule_nets, CompileError, DomainPattern, Policy};

/// The port the kernel redirects to the session's DNS proxy, whatever the address.
pub const DNS_PORT: u16 = 53;

/// What a session enforcing the policy would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by this rule: a 1-based rule id, `RULE_LOOPBACK` or `RULE_DNS`.
    Allow { rule: u32 },
    /// No rule allows it (in audit mode: reported as `would_deny`).
    Deny,
}

impl Verdict {
    pub fn is_allow(self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }

    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow { .. } => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl Policy {
    /// The verdict on a connection (or datagram) to `addr:port` over `protocol` (`PROTO_TCP`
    /// or `PROTO_UDP`), `domains` being the names the session learned for `addr` (from its
    /// resolver or its DNS proxy). Costs one pass over the rules: no full compile.
    ///
    /// Err: the address's entry would need more port grants than the kernel's map holds (the
    /// agent refuses such a policy as a whole).
    pub fn verdict(
        &self,
        addr: IpAddr,
        port: u16,
        protocol: u8,
        domains: &[impl AsRef<str>],
    ) -> Result<Verdict, CompileError> {
        if port == DNS_PORT {
            // Every port-53 connect and datagram goes to the session's DNS proxy, which then
            // judges the name (see `dns_verdict`).
            return Ok(Verdict::Allow { rule: RULE_DNS });
        }
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        let host = IpNet::from(addr);
        let named = |pattern: &DomainPattern| -> Vec<IpAddr> {
            if domains.iter().any(|d| pattern.matches(d.as_ref())) {
                vec![addr]
            } else {
                Vec::new()
            }
        };
        let covers = |net: &IpNet| net.contains(&host);
        let mut nets = rule_nets(self, &[], &named, &covers);
        // The address gets an entry of its own even when no rule names it exactly, so that
        // push-down gives it the grants of every prefix covering it: one lookup decides.
        nets.entry(host).or_default();
        push_down(&mut nets);
        let compiled = entries(nets, Some(&BTreeSet::from([host])))?;
        Ok(match lookup(&compiled, addr, port, protocol) {
            Some(rule) => Verdict::Allow { rule },
            None => Verdict::Deny,
        })
    }

    /// The DNS proxy's verdict on a question for `name`: answered only if a domain rule names
    /// it (on any port).
    pub fn dns_verdict(&self, name: &str) -> Verdict {
        match self.match_domain(name, None) {
            Some(rule) => Verdict::Allow { rule: rule.id },
            None => Verdict::Deny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, parse, AddressBook};
    use boundary_common::{PROTO_TCP, PROTO_UDP, RULE_LOOPBACK};
    use proptest::prelude::*;

    fn policy(yaml: &str) -> Policy {
        parse("t.yaml", yaml).unwrap()
    }

    const NONE: &[&str] = &[];

    #[test]
    fn a_domain_rule_allows_the_address_only_through_the_names_learned_for_it() {
        let p = policy("allow_loopback: false\nallowlist:\n  - \"domain=*.github.com port=443\"\n");
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            p.verdict(ip, 443, PROTO_TCP, &["api.github.com"]).unwrap(),
            Verdict::Allow { rule: 1 }
        );
        assert_eq!(p.verdict(ip, 443, PROTO_TCP, NONE).unwrap(), Verdict::Deny);
        assert_eq!(
            p.verdict(ip, 80, PROTO_TCP, &["api.github.com"]).unwrap(),
            Verdict::Deny
        );
        assert_eq!(
            p.verdict(ip, 443, PROTO_TCP, &["github.com"]).unwrap(),
            Verdict::Deny,
            "a wildcard does not match the apex"
        );
    }

    #[test]
    fn covering_networks_loopback_protocols_and_mapped_addresses_decide_as_in_the_kernel() {
        let p = policy(
            "allowlist:\n  - \"cidr=10.0.0.0/8 port=443\"\n  - \"ip=10.1.2.3 port=22\"\n  - \"cidr=2001:db8::/32 port=53-60 proto=udp\"\n",
        );
        let v = |ip: &str, port, proto| p.verdict(ip.parse().unwrap(), port, proto, NONE).unwrap();
        assert_eq!(v("10.1.2.3", 443, PROTO_TCP), Verdict::Allow { rule: 1 });
        assert_eq!(v("10.1.2.3", 22, PROTO_TCP), Verdict::Allow { rule: 2 });
        assert_eq!(v("10.9.9.9", 22, PROTO_TCP), Verdict::Deny);
        assert_eq!(
            v("::ffff:10.9.9.9", 443, PROTO_TCP),
            Verdict::Allow { rule: 1 }
        );
        assert_eq!(v("2001:db8::1", 54, PROTO_UDP), Verdict::Allow { rule: 3 });
        assert_eq!(v("2001:db8::1", 54, PROTO_TCP), Verdict::Deny);
        assert_eq!(
            v("127.0.0.5", 8080, PROTO_TCP),
            Verdict::Allow {
                rule: RULE_LOOPBACK
            }
        );
        assert_eq!(
            v("192.0.2.1", 53, PROTO_UDP),
            Verdict::Allow { rule: RULE_DNS }
        );
    }

    #[test]
    fn dns_questions_are_judged_by_name_alone() {
        let p =
            policy("allowlist:\n  - \"domain=*.npmjs.org port=443\"\n  - \"cidr=10.0.0.0/8\"\n");
        assert_eq!(
            p.dns_verdict("registry.npmjs.org."),
            Verdict::Allow { rule: 1 }
        );
        assert_eq!(p.dns_verdict("npmjs.org"), Verdict::Deny);
        assert_eq!(p.dns_verdict("evil.example"), Verdict::Deny);
    }

    proptest! {
        /// The verdict is what the full compile the agent installs would decide for the same
        /// address book: one code path, two entry points.
        #[test]
        fn verdict_agrees_with_a_full_compile_and_lookup(
            rules in proptest::collection::vec((0u8..4, 0u8..4, 0u16..3, any::<bool>()), 0..8),
            last in 0u8..4,
            port in prop_oneof![Just(22u16), Just(80), Just(443), Just(8443)],
            udp in any::<bool>(),
            named in proptest::collection::vec(0u8..3, 0..3),
        ) {
            let names = ["a.test", "b.a.test", "c.test"];
            let ports = ["", " port=443", " port=80-8443"];
            let mut yaml = String::from("allow_loopback: false\nallowlist:\n");
            for (kind, octet, p, proto) in &rules {
                let proto = if *proto { " proto=udp" } else { "" };
                let target = match kind {
                    0 => format!("cidr=10.{octet}.0.0/16"),
                    1 => format!("ip=10.0.0.{octet}"),
                    2 => format!("domain={}", names[*octet as usize % 3]),
                    _ => "domain=*.a.test".to_string(),
                };
                yaml.push_str(&format!("  - \"{target}{}{proto}\"\n", ports[*p as usize]));
            }
            let p = policy(&yaml);
            let ip: IpAddr = format!("10.0.0.{last}").parse().unwrap();
            let domains: Vec<&str> = named.iter().map(|i| names[*i as usize]).collect();
            let mut book = AddressBook::default();
            for d in &domains {
                book.insert_static(d, ip);
            }
            let proto = if udp { PROTO_UDP } else { PROTO_TCP };
            let full = compile(&p, &book, &[]).unwrap();
            let expected = match lookup(&full, ip, port, proto) {
                Some(rule) => Verdict::Allow { rule },
                None => Verdict::Deny,
            };
            prop_assert_eq!(p.verdict(ip, port, proto, &domains).unwrap(), expected);
        }
    }
}
