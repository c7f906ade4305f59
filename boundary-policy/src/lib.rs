//! The policy: what `config.yaml` says, validated (the [`parse`] submodule), matched against
//! names, and compiled into kernel prefix entries. No I/O beyond reading the file in
//! [`load`], and nothing here knows how names are resolved: the addresses come in an
//! [`AddressBook`] filled by whoever resolves them.
//!
//!
//! Compilation turns rules plus the addresses their domains currently resolve to into
//! longest-prefix-match entries. Each entry carries the port grants of its own rules *and* of
//! every shorter prefix that covers it ("push-down"), so a single trie lookup in the kernel
//! decides, whatever the number of rules.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use boundary_common::{MAX_GRANTS, PROTO_TCP, PROTO_UDP, RULE_DNS, RULE_LOOPBACK};
use ipnet::IpNet;

mod error;
pub use error::{CompileError, ConfigError, Problem};

type Result<T, E = CompileError> = std::result::Result<T, E>;

mod addresses;
pub mod parse;
mod verdict;

pub use addresses::AddressBook;
pub use parse::{load, parse};
pub use verdict::{Verdict, DNS_PORT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what the allowlist does not allow.
    #[default]
    Enforce,
    /// Allow everything, report what enforce mode would deny as `would_deny`.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Where and how domains are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// `None`: the nameservers of /etc/resolv.conf.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// `None`: /etc/hosts.
    pub hosts_file: Option<PathBuf>,
    /// Deprecated and without effect: every query goes through the session's DNS proxy, no
    /// program reaches a nameserver itself. `Some` when the config still says it (warned).
    pub allow_nameservers: Option<bool>,
    /// What the DNS proxy answers for a name the policy does not allow.
    pub refuse_with: RefuseWith,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long an address stays allowed after its name stopped resolving to it.
    pub grace_period: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: None,
            hosts_file: None,
            allow_nameservers: None,
            refuse_with: RefuseWith::NxDomain,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace_period: Duration::from_secs(300),
        }
    }
}

/// `dns.refuse_with`: the DNS proxy's answer to a name the policy does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefuseWith {
    /// "No such name": programs give up at once.
    #[default]
    NxDomain,
    /// "The server refuses": some resolvers then try the next nameserver.
    Refused,
}

/// A domain rule's name: exact, or every sub-domain of a suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    /// `github.com`
    Exact(String),
    /// `*.npmjs.org` is stored as `npmjs.org`; matches `a.npmjs.org`, `a.b.npmjs.org`, not
    /// `npmjs.org` itself.
    Wildcard(String),
}

impl DomainPattern {
    /// Parses `github.com`, `*.npmjs.org`, `GitHub.com.` (case and trailing dot are ignored).
    pub fn parse(text: &str) -> std::result::Result<DomainPattern, String> {
        let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower.clone()),
        };
        if lower == "*" {
            return Err("`*` alone would allow every name; list the domains instead".into());
        }
        if name.contains('*') {
            return Err(format!(
                "`{text}`: `*` is only allowed as the whole first label, as in *.example.com"
            ));
        }
        validate_hostname(&name).map_err(|m| format!("`{text}`: {m}"))?;
        Ok(if wild {
            DomainPattern::Wildcard(name)
        } else {
            DomainPattern::Exact(name)
        })
    }

    /// Whether `name` (any case, optional trailing dot) is matched.
    pub fn matches(&self, name: &str) -> bool {
        // Names from the address book are already lower case without the dot: no copy then.
        let owned;
        let name = if name.ends_with('.') || name.bytes().any(|b| b.is_ascii_uppercase()) {
            owned = name.trim_end_matches('.').to_ascii_lowercase();
            owned.as_str()
        } else {
            name
        };
        match self {
            DomainPattern::Exact(d) => name == *d,
            DomainPattern::Wildcard(suffix) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

fn validate_hostname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty domain".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("every label must have 1 to 63 characters".into());
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "`{label}` has characters other than letters, digits, - and _"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Domain(DomainPattern),
    Net(IpNet),
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position in the allowlist; 0 means "no rule".
    pub id: u32,
    /// The rule as written in the config (mapping rules are shown in `key=value` form).
    pub text: String,
    pub target: Target,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    /// `PROTO_TCP | PROTO_UDP` bits.
    pub protocols: u8,
    /// HTTP methods and paths, enforced at the domain level until the HTTP layer exists.
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    /// Line in the config file.
    pub line: usize,
}

impl Rule {
    pub fn allows_port(&self, port: Option<u16>) -> bool {
        match port {
            None => true,
            Some(p) => self.ports.is_empty() || self.ports.iter().any(|r| r.lo <= p && p <= r.hi),
        }
    }
}

/// `log_max_file_size` when the config does not say: 64 MiB.
pub const DEFAULT_LOG_MAX_FILE_SIZE: u64 = 64 << 20;
/// `log_max_files` when the config does not say.
pub const DEFAULT_LOG_MAX_FILES: u32 = 4;
/// `log_summary_interval` when the config does not say.
pub const DEFAULT_SUMMARY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `name:` in the config, by default the file stem.
    pub name: String,
    pub mode: Mode,
    /// Default `true`: local services (a language server, a dev database) keep working.
    pub allow_loopback: bool,
    pub log_dir: Option<PathBuf>,
    pub log_level: String,
    /// Event files rotate at this size (`log_max_file_size`).
    pub log_max_file_size: u64,
    /// Rotated event files kept per sink (`log_max_files`); the oldest goes first.
    pub log_max_files: u32,
    /// Identical decisions within this interval are written once, then as one summary
    /// (`log_summary_interval`; zero: every decision in full).
    pub log_summary_interval: std::time::Duration,
    pub rules: Vec<Rule>,
    pub dns: DnsSettings,
    /// The file it was loaded from.
    pub source: Option<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            name: String::new(),
            mode: Mode::Enforce,
            allow_loopback: true,
            log_dir: None,
            log_level: "warn".into(),
            log_max_file_size: DEFAULT_LOG_MAX_FILE_SIZE,
            log_max_files: DEFAULT_LOG_MAX_FILES,
            log_summary_interval: DEFAULT_SUMMARY_INTERVAL,
            rules: Vec::new(),
            dns: DnsSettings::default(),
            source: None,
        }
    }
}

impl Policy {
    /// The rule's text for events: the rule as written, `loopback`, `dns`, or `None`.
    pub fn rule_text(&self, id: u32) -> Option<&str> {
        match id {
            0 => None,
            RULE_LOOPBACK => Some("loopback"),
            RULE_DNS => Some("dns"),
            id => self.rules.get(id as usize - 1).map(|r| r.text.as_str()),
        }
    }

    /// Things the user should know once, at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let http: Vec<&str> = self
            .rules
            .iter()
            .filter(|r| !r.methods.is_empty() || !r.paths.is_empty())
            .map(|r| r.text.as_str())
            .collect();
        if !http.is_empty() {
            out.push(format!(
                "method= and path= are enforced at the domain level for now (every method and path \
                 of the domain is allowed): {}",
                http.join("; ")
            ));
        }
        if self.dns.allow_nameservers.is_some() {
            out.push(
                "dns.allow_nameservers is deprecated and has no effect: every DNS query of the \
                 session goes through boundary's DNS proxy, which answers only allowed names"
                    .to_string(),
            );
        }
        out
    }

    /// Exact domains to resolve up front.
    pub fn exact_domains(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .iter()
            .filter_map(|r| match &r.target {
                Target::Domain(DomainPattern::Exact(d)) => Some(d.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The first rule that allows `name` on `port` (any port when `None`), by name alone.
    pub fn match_domain(&self, name: &str, port: Option<u16>) -> Option<&Rule> {
        self.rules.iter().find(|r| match &r.target {
            Target::Domain(p) => p.matches(name) && r.allows_port(port),
            Target::Net(_) => false,
        })
    }
}

/// One port grant of a prefix entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortGrant {
    pub lo: u16,
    pub hi: u16,
    pub protocols: u8,
    pub rule_id: u32,
}

/// One longest-prefix-match entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixEntry<A> {
    pub addr: A,
    pub prefix_len: u8,
    pub grants: Vec<PortGrant>,
}

/// What goes into the kernel tries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub v4: Vec<PrefixEntry<Ipv4Addr>>,
    pub v6: Vec<PrefixEntry<Ipv6Addr>>,
}

/// Compiles the policy with the addresses currently known for its domains. `dns_proxy`: the
/// session's DNS proxy (where the kernel redirects port 53), granted on its own port.
pub fn compile(
    policy: &Policy,
    book: &AddressBook,
    dns_proxy: &[SocketAddr],
) -> Result<CompiledPolicy> {
    compile_books(policy, &[book], dns_proxy)
}

/// [`compile`] with the addresses of several books (the resolver's and the DNS proxy's),
/// without merging them first.
pub fn compile_books(
    policy: &Policy,
    books: &[&AddressBook],
    dns_proxy: &[SocketAddr],
) -> Result<CompiledPolicy> {
    let domain_addrs = |pattern: &DomainPattern| -> Vec<IpAddr> {
        books
            .iter()
            .flat_map(|b| b.addresses_matching(pattern))
            .collect()
    };
    let mut nets = rule_nets(policy, dns_proxy, &domain_addrs, &|_| true);
    push_down(&mut nets);
    entries(nets, None)
}

/// The entries [`compile_books`] would produce for the host prefixes of `ips` (those that
/// have one), without compiling everything: what a name the DNS proxy learned changes. A host
/// prefix covers no other entry, so the rest of the compiled policy stays as it is.
pub fn compile_hosts(
    policy: &Policy,
    books: &[&AddressBook],
    dns_proxy: &[SocketAddr],
    ips: &[IpAddr],
) -> Result<CompiledPolicy> {
    let targets: std::collections::BTreeSet<IpNet> =
        ips.iter().map(|ip| IpNet::from(*ip)).collect();
    let domain_addrs = |pattern: &DomainPattern| -> Vec<IpAddr> {
        ips.iter()
            .filter(|ip| {
                books
                    .iter()
                    .any(|b| b.names_with(**ip).any(|n| pattern.matches(n)))
            })
            .copied()
            .collect()
    };
    let covers = |net: &IpNet| targets.iter().any(|t| net.contains(t));
    let mut nets = rule_nets(policy, dns_proxy, &domain_addrs, &covers);
    push_down(&mut nets);
    entries(nets, Some(&targets))
}

/// Every rule's prefixes and their own grants (before push-down), for the prefixes `keep`
/// accepts; `domain_addrs` says which addresses a domain rule's pattern stands for.
fn rule_nets(
    policy: &Policy,
    dns_proxy: &[SocketAddr],
    domain_addrs: &dyn Fn(&DomainPattern) -> Vec<IpAddr>,
    keep: &dyn Fn(&IpNet) -> bool,
) -> BTreeMap<IpNet, Vec<PortGrant>> {
    let mut nets: BTreeMap<IpNet, Vec<PortGrant>> = BTreeMap::new();
    let mut add = |net: IpNet, ports: &[PortRange], protocols: u8, rule_id: u32| {
        let net = net.trunc();
        if !keep(&net) {
            return;
        }
        let grants = nets.entry(net).or_default();
        if ports.is_empty() {
            grants.push(PortGrant {
                lo: 1,
                hi: u16::MAX,
                protocols,
                rule_id,
            });
        }
        for r in ports {
            grants.push(PortGrant {
                lo: r.lo,
                hi: r.hi,
                protocols,
                rule_id,
            });
        }
    };
    let all = PROTO_TCP | PROTO_UDP;
    if policy.allow_loopback {
        add(
            "127.0.0.0/8".parse().expect("literal"),
            &[],
            all,
            RULE_LOOPBACK,
        );
        add("::1/128".parse().expect("literal"), &[], all, RULE_LOOPBACK);
    }
    for proxy in dns_proxy {
        let port = proxy.port();
        add(
            IpNet::from(proxy.ip()),
            &[PortRange { lo: port, hi: port }],
            all,
            RULE_DNS,
        );
    }
    for rule in &policy.rules {
        match &rule.target {
            Target::Net(net) => add(*net, &rule.ports, rule.protocols, rule.id),
            Target::Domain(pattern) => {
                for ip in domain_addrs(pattern) {
                    add(IpNet::from(ip), &rule.ports, rule.protocols, rule.id);
                }
            }
        }
    }
    nets
}

/// Merges each prefix's grants and turns them into entries (only the prefixes in `only`).
fn entries(
    nets: BTreeMap<IpNet, Vec<PortGrant>>,
    only: Option<&std::collections::BTreeSet<IpNet>>,
) -> Result<CompiledPolicy> {
    let mut out = CompiledPolicy::default();
    for (net, grants) in nets {
        if only.is_some_and(|only| !only.contains(&net)) {
            continue;
        }
        let grants = merge(grants).map_err(|n| {
            CompileError(format!(
                "{net} would need {n} port grants (at most {MAX_GRANTS}); merge its rules' ports"
            ))
        })?;
        match net {
            IpNet::V4(n) => out.v4.push(PrefixEntry {
                addr: n.addr(),
                prefix_len: n.prefix_len(),
                grants,
            }),
            IpNet::V6(n) => out.v6.push(PrefixEntry {
                addr: n.addr(),
                prefix_len: n.prefix_len(),
                grants,
            }),
        }
    }
    Ok(out)
}

/// Adds to every entry the grants of each shorter entry that covers it.
fn push_down(nets: &mut BTreeMap<IpNet, Vec<PortGrant>>) {
    let keys: Vec<IpNet> = nets.keys().copied().collect();
    // Only prefix lengths that some entry has can cover anything: look up just those (a few,
    // instead of up to 128 per entry; the DNS proxy recompiles with every new name).
    let lengths: std::collections::BTreeSet<(bool, u8)> = keys
        .iter()
        .map(|n| (n.addr().is_ipv4(), n.prefix_len()))
        .collect();
    for net in &keys {
        let mut inherited = Vec::new();
        let family = net.addr().is_ipv4();
        for len in lengths
            .iter()
            .filter(|(f, l)| *f == family && *l < net.prefix_len())
            .map(|(_, l)| *l)
        {
            let parent = IpNet::new(net.addr(), len)
                .expect("shorter prefix is valid")
                .trunc();
            if let Some(g) = nets.get(&parent) {
                inherited.extend_from_slice(g);
            }
        }
        if !inherited.is_empty() {
            nets.get_mut(net).expect("key exists").extend(inherited);
        }
    }
}

/// Sorts, removes duplicates and merges overlapping ranges with the same protocols (keeping
/// the rule written first); if they still do not fit, adjacent ranges are merged too.
/// Err(n): still n grants.
fn merge(mut grants: Vec<PortGrant>) -> std::result::Result<Vec<PortGrant>, usize> {
    grants.sort_by_key(|g| (g.protocols, g.lo, g.hi, g.rule_id));
    grants.dedup_by(|b, a| a.protocols == b.protocols && a.lo == b.lo && a.hi == b.hi);
    // Merging only when needed keeps every grant naming the exact rule that allows it.
    let mut merged = grants;
    for gap in [0, 1] {
        if merged.len() > MAX_GRANTS {
            merged = collapse(merged, gap);
        }
    }
    if merged.len() > MAX_GRANTS {
        return Err(merged.len());
    }
    // Lowest rule id first so that events name the first matching rule of the config.
    merged.sort_by_key(|g| (g.rule_id, g.lo));
    Ok(merged)
}

/// Merges same-protocol ranges that overlap (`gap` 0) or also touch (`gap` 1). The merged
/// grant names the earlier rule, which does allow part of the range.
fn collapse(mut grants: Vec<PortGrant>, gap: u16) -> Vec<PortGrant> {
    grants.sort_by_key(|g| (g.protocols, g.lo, g.hi, g.rule_id));
    let mut out: Vec<PortGrant> = Vec::with_capacity(grants.len());
    for g in grants {
        match out.last_mut() {
            Some(last)
                if last.protocols == g.protocols
                    && (g.lo <= last.hi || (gap > 0 && g.lo <= last.hi.saturating_add(gap))) =>
            {
                last.hi = last.hi.max(g.hi);
                last.rule_id = last.rule_id.min(g.rule_id);
            }
            _ => out.push(g),
        }
    }
    out
}

/// Which rule allows `ip:port` over `protocol` in `compiled` (what the kernel would decide).
pub fn lookup(compiled: &CompiledPolicy, ip: IpAddr, port: u16, protocol: u8) -> Option<u32> {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let best = |grants: &[PortGrant]| {
        grants
            .iter()
            .find(|g| g.protocols & protocol != 0 && g.lo <= port && port <= g.hi)
            .map(|g| g.rule_id)
    };
    match ip {
        IpAddr::V4(_) => compiled
            .v4
            .iter()
            .filter(|e| IpNet::new(IpAddr::V4(e.addr), e.prefix_len).is_ok_and(|n| n.contains(&ip)))
            .max_by_key(|e| e.prefix_len)
            .and_then(|e| best(&e.grants)),
        IpAddr::V6(_) => compiled
            .v6
            .iter()
            .filter(|e| IpNet::new(IpAddr::V6(e.addr), e.prefix_len).is_ok_and(|n| n.contains(&ip)))
            .max_by_key(|e| e.prefix_len)
            .and_then(|e| best(&e.grants)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use proptest::prelude::*;

    fn policy(yaml: &str) -> Policy {
        parse("t.yaml", yaml).unwrap()
    }

    #[test]
    fn wildcard_matches_subdomains_at_any_depth_but_not_the_apex() {
        let p = DomainPattern::parse("*.npmjs.org").unwrap();
        assert!(p.matches("registry.npmjs.org"));
        assert!(p.matches("a.b.NPMJS.org."));
        assert!(!p.matches("npmjs.org"));
        assert!(!p.matches("evilnpmjs.org"));
        assert!(!p.matches("npmjs.org.evil.com"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(DomainPattern::parse("*").is_err());
        assert!(DomainPattern::parse("a.*.com").is_err());
        assert!(DomainPattern::parse("exa mple.com").is_err());
        assert!(DomainPattern::parse("").is_err());
    }

    proptest! {
        #[test]
        fn wildcard_matches_exactly_the_names_ending_in_dot_suffix(
            labels in proptest::collection::vec("[a-z0-9-]{1,10}", 0..4),
            suffix in "[a-z]{1,8}\\.[a-z]{2,4}",
            other in "[a-z]{1,8}\\.[a-z]{2,4}",
        ) {
            let pattern = DomainPattern::parse(&format!("*.{suffix}")).unwrap();
            let mut name = labels.join(".");
            if !name.is_empty() { name.push('.'); }
            name.push_str(&suffix);
            prop_assert_eq!(pattern.matches(&name), !labels.is_empty());
            prop_assert_eq!(pattern.matches(&name.to_uppercase()), !labels.is_empty());
            let foreign = format!("{}.{}", labels.join("."), other);
            if other != suffix && !other.ends_with(&format!(".{suffix}")) {
                prop_assert!(!pattern.matches(&foreign));
            }
        }

        #[test]
        fn exact_pattern_matches_only_itself(name in "[a-z]{1,8}(\\.[a-z]{1,8}){1,3}", sub in "[a-z]{1,5}") {
            let p = DomainPattern::parse(&name).unwrap();
            prop_assert!(p.matches(&name));
            let dotted = format!("{name}.");
            prop_assert!(p.matches(&dotted));
            let subdomain = format!("{sub}.{name}");
            prop_assert!(!p.matches(&subdomain));
        }
    }

    #[test]
    fn compile_pushes_covering_grants_down_to_longer_prefixes() {
        let p = policy(
            "allow_loopback: false\nallowlist:\n  - \"cidr=10.0.0.0/8 port=443\"\n  - \"cidr=10.1.0.0/16 port=80\"\n",
        );
        let c = compile(&p, &AddressBook::default(), &[]).unwrap();
        assert_eq!(c.v4.len(), 2);
        let tcp = PROTO_TCP;
        assert_eq!(lookup(&c, "10.1.2.3".parse().unwrap(), 443, tcp), Some(1));
        assert_eq!(lookup(&c, "10.1.2.3".parse().unwrap(), 80, tcp), Some(2));
        assert_eq!(lookup(&c, "10.2.2.3".parse().unwrap(), 80, tcp), None);
        assert_eq!(lookup(&c, "11.0.0.1".parse().unwrap(), 443, tcp), None);
    }

    #[test]
    fn compile_adds_loopback_when_allowed_and_always_the_dns_proxy() {
        let p = policy("allowlist: []\n");
        let ns: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let c = compile(&p, &AddressBook::default(), &[ns]).unwrap();
        assert_eq!(
            lookup(&c, "127.0.0.9".parse().unwrap(), 22, PROTO_TCP),
            Some(RULE_LOOPBACK)
        );
        assert_eq!(
            lookup(&c, "::1".parse().unwrap(), 22, PROTO_TCP),
            Some(RULE_LOOPBACK)
        );
        assert_eq!(
            lookup(&c, "::ffff:127.0.0.9".parse().unwrap(), 22, PROTO_TCP),
            Some(RULE_LOOPBACK)
        );
        let p = policy("allow_loopback: false\nallowlist: []\n");
        let c = compile(&p, &AddressBook::default(), &[ns]).unwrap();
        assert_eq!(
            lookup(&c, "127.0.0.1".parse().unwrap(), 5353, PROTO_UDP),
            Some(RULE_DNS)
        );
        assert_eq!(
            lookup(&c, "127.0.0.1".parse().unwrap(), 5354, PROTO_UDP),
            None
        );
    }

    #[test]
    fn compile_respects_protocols() {
        let p =
            policy("allow_loopback: false\nallowlist:\n  - \"ip=192.0.2.1 port=53 proto=udp\"\n");
        let c = compile(&p, &AddressBook::default(), &[]).unwrap();
        assert_eq!(
            lookup(&c, "192.0.2.1".parse().unwrap(), 53, PROTO_UDP),
            Some(1)
        );
        assert_eq!(
            lookup(&c, "192.0.2.1".parse().unwrap(), 53, PROTO_TCP),
            None
        );
    }

    #[test]
    fn compile_resolves_domains_through_the_address_book_and_shares_addresses() {
        let p = policy("allow_loopback: false\nallowlist:\n  - \"domain=a.test port=80\"\n  - \"domain=b.test port=81\"\n");
        let mut book = AddressBook::default();
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        book.insert_static("a.test", ip);
        book.insert_static("b.test", ip);
        let c = compile(&p, &book, &[]).unwrap();
        assert_eq!(c.v4.len(), 1);
        assert_eq!(lookup(&c, ip, 80, PROTO_TCP), Some(1));
        assert_eq!(lookup(&c, ip, 81, PROTO_TCP), Some(2));
        assert_eq!(
            book.domains_for(ip),
            vec!["a.test".to_string(), "b.test".to_string()]
        );
    }

    #[test]
    fn compile_hosts_gives_exactly_the_host_entries_of_a_full_compile() {
        let p = policy(
            "allowlist:\n  - \"cidr=10.0.0.0/8 port=443\"\n  - \"domain=*.a.test port=80\"\n  \
             - \"domain=x.b.test port=81 proto=udp\"\n  - \"domain=*.c.test\"\n  - \"ip=10.1.2.3 port=22\"\n",
        );
        let now = std::time::Instant::now();
        let grace = Duration::from_secs(5);
        let mut resolver = AddressBook::default();
        resolver.update("x.b.test", &["10.1.2.3".parse().unwrap()], now, grace);
        let mut learned = AddressBook::default();
        let ips: Vec<IpAddr> = ["10.1.2.3", "192.0.2.1", "127.0.0.5", "::1", "2001:db8::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        learned.update("one.a.test", &ips, now, grace);
        learned.update("two.c.test", &[ips[1], ips[4]], now, grace);
        learned.update("unlisted.test", &["192.0.2.9".parse().unwrap()], now, grace);
        let books = [&resolver, &learned];
        let proxy: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let full = compile_books(&p, &books, &[proxy]).unwrap();
        let mut asked = ips.clone();
        asked.push("192.0.2.9".parse().unwrap());
        asked.push("127.0.0.1".parse().unwrap());
        let hosts = compile_hosts(&p, &books, &[proxy], &asked).unwrap();
        let host_v4: Vec<_> = full
            .v4
            .iter()
            .filter(|e| e.prefix_len == 32)
            .cloned()
            .collect();
        let host_v6: Vec<_> = full
            .v6
            .iter()
            .filter(|e| e.prefix_len == 128)
            .cloned()
            .collect();
        assert_eq!(hosts.v4, host_v4);
        assert_eq!(hosts.v6, host_v6);
        // 10.1.2.3 carries its own rules and the covering 10.0.0.0/8's.
        assert_eq!(
            lookup(&hosts, "10.1.2.3".parse().unwrap(), 443, PROTO_TCP),
            Some(1)
        );
    }

    #[test]
    fn compile_refuses_entries_with_too_many_grants() {
        let mut yaml = String::from("allow_loopback: false\nallowlist:\n");
        for i in 0..20 {
            yaml.push_str(&format!("  - \"ip=192.0.2.1 port={}\"\n", 1000 + i * 10));
        }
        let err = compile(&policy(&yaml), &AddressBook::default(), &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("192.0.2.1/32 would need 20 port grants"),
            "{err}"
        );
    }

    #[test]
    fn compile_of_ten_thousand_rules_is_fast_and_deterministic() {
        let mut yaml = String::from("allow_loopback: false\nallowlist:\n");
        for i in 0..10_000u32 {
            yaml.push_str(&format!(
                "  - \"cidr=10.{}.{}.0/24 port=443\"\n",
                i / 256,
                i % 256
            ));
        }
        let p = policy(&yaml);
        let start = std::time::Instant::now();
        let a = compile(&p, &AddressBook::default(), &[]).unwrap();
        let b = compile(&p, &AddressBook::default(), &[]).unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(a, b);
        assert_eq!(a.v4.len(), 10_000);
    }

    #[test]
    fn warns_about_http_rules_and_the_deprecated_allow_nameservers() {
        let p = policy(
            "allowlist:\n  - \"method=GET domain=api.github.com\"\n  - \"domain=*.npmjs.org\"\ndns:\n  allow_nameservers: true\n",
        );
        let w = p.warnings();
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("domain level"));
        assert!(w[1].contains("deprecated"));
    }
}
