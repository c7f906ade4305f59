//! `boundary check`: would the policy allow this destination, and by which rule?

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use boundary_agent::error::{Error, Result};
use boundary_agent::policy::{self, Policy, Rule, Target};
use boundary_agent::resolver::{self, Resolver, ResolverConfig};
use boundary_common::{PROTO_TCP, PROTO_UDP, RULE_DNS, RULE_LOOPBACK};

/// Where the kernel redirects every query to the session's DNS proxy.
const DNS_PORT: u16 = 53;

/// Say whether CONFIG allows a destination and by which rule, as `boundary run` would decide.
///
/// A domain is matched by name first; if no domain rule names it, its addresses are checked
/// against the network rules. An IP is checked against everything the policy would install,
/// including the current addresses of its domains. Exit status: 0 allowed, 1 denied,
/// 2 error.
#[derive(clap::Args)]
pub struct Args {
    /// The policy (config.yaml).
    #[arg(short, long, env = "BOUNDARY_CONFIG", value_name = "CONFIG")]
    config: PathBuf,

    /// DOMAIN, IP, DOMAIN:PORT, IP:PORT or [IPv6]:PORT. Without a port: any port.
    #[arg(value_name = "TARGET")]
    target: String,

    /// Check UDP instead of TCP.
    #[arg(long)]
    udp: bool,

    /// Resolve names through this nameserver (IP or IP:PORT).
    #[arg(long, value_name = "IP[:PORT]")]
    dns_server: Option<SocketAddr>,

    /// Read this hosts file instead of the config's or /etc/hosts.
    #[arg(long, value_name = "FILE")]
    hosts_file: Option<PathBuf>,
}

pub fn main(args: Args) -> i32 {
    super::init_logging("error");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boundary: {e}");
            return 2;
        }
    };
    match runtime.block_on(check(&args)) {
        Ok((true, text)) => {
            println!("allow {text}");
            0
        }
        Ok((false, text)) => {
            println!("deny {text}");
            1
        }
        Err(e) => {
            eprintln!("boundary: {e}");
            2
        }
    }
}

enum Host {
    Ip(IpAddr),
    Name(String),
}

fn parse_target(text: &str) -> Result<(Host, Option<u16>)> {
    let invalid = |reason: &str| Error::InvalidTarget {
        target: text.to_string(),
        reason: reason.to_string(),
    };
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), None));
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((Host::Ip(sa.ip()), Some(sa.port())));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| invalid("the port must be 1-65535"))?;
            (h, Some(port))
        }
        None => (text, None),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(invalid(
            "expected DOMAIN, IP, DOMAIN:PORT, IP:PORT or [IPv6]:PORT",
        ));
    }
    Ok((Host::Name(host), port))
}

async fn check(args: &Args) -> Result<(bool, String)> {
    let policy = policy::load(&args.config)?;
    let (host, port) = parse_target(&args.target)?;
    let protocol = if args.udp { PROTO_UDP } else { PROTO_TCP };
    let proto = if args.udp { "udp" } else { "tcp" };
    let shown = |h: &str| match port {
        Some(p) => format!("{h}:{p}/{proto}"),
        None => format!("{h}/{proto}"),
    };
    let resolver_config =
        ResolverConfig::new(&policy.dns, args.dns_server, args.hosts_file.as_deref())?;
    if port == Some(DNS_PORT) {
        // The kernel sends every port-53 connect and datagram to the session's DNS proxy.
        let target = match &host {
            Host::Ip(ip) if ip.is_ipv6() => format!("[{ip}]"),
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        };
        return Ok((
            true,
            format!(
                "{}: redirected to boundary's DNS proxy, which answers only the names the policy \
                 allows (no program reaches a nameserver itself)",
                shown(&target)
            ),
        ));
    }
    match host {
        Host::Name(name) => {
            let naming: Vec<&Rule> = policy
                .rules
                .iter()
                .filter(|r| matches!(&r.target, Target::Domain(p) if p.matches(&name)))
                .collect();
            if let Some(rule) = naming
                .iter()
                .find(|r| r.allows_port(port) && r.protocols & protocol != 0)
            {
                return Ok((
                    true,
                    format!("{}: {}", shown(&name), describe(&policy, rule.id)),
                ));
            }
            // Rules that name it but do not apply here, or "no rule names it".
            let why = not_applying(&policy, &naming, port, protocol);
            // Not allowed by name: the kernel judges its addresses, so do the same.
            let ips = match resolver::resolve(&resolver_config, &name).await {
                Ok((ips, _)) => ips,
                Err(e) => {
                    return Ok((
                        false,
                        format!(
                            "{}: {why}, and it could not be resolved ({e})",
                            shown(&name)
                        ),
                    ))
                }
            };
            if ips.is_empty() {
                return Ok((
                    false,
                    format!("{}: {why}, and it does not resolve", shown(&name)),
                ));
            }
            let compiled = compile_all(&policy, &resolver_config).await?;
            for ip in &ips {
                if let Some(id) = allowed(&compiled, *ip, port, protocol) {
                    let dns = if naming.is_empty() {
                        "boundary's DNS proxy does not answer this name (no domain rule names it)"
                            .to_string()
                    } else {
                        format!("boundary's DNS proxy answers this name ({why})")
                    };
                    return Ok((
                        true,
                        format!(
                            "{} ({ip}): {}; by address only: {dns}",
                            shown(&name),
                            describe(&policy, id)
                        ),
                    ));
                }
            }
            let list: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
            let text = if naming.is_empty() {
                "no rule allows it".to_string()
            } else {
                format!("no rule allows it: {why}")
            };
            Ok((
                false,
                format!("{} ({}): {text}", shown(&name), list.join(", ")),
            ))
        }
        Host::Ip(ip) => {
            let compiled = compile_all(&policy, &resolver_config).await?;
            let text = if ip.is_ipv6() && port.is_some() {
                shown(&format!("[{ip}]"))
            } else {
                shown(&ip.to_string())
            };
            match allowed(&compiled, ip, port, protocol) {
                Some(id) => Ok((true, format!("{text}: {}", describe(&policy, id)))),
                None => Ok((false, format!("{text}: no rule allows it"))),
            }
        }
    }
}

/// What `boundary run` would install right now: the policy with its domains resolved.
async fn compile_all(policy: &Policy, config: &ResolverConfig) -> Result<policy::CompiledPolicy> {
    let mut resolver = Resolver::new(policy, config.clone());
    let book = resolver.resolve_initial().await;
    // The DNS proxy's own address is the session's, not known here; port 53 is handled above.
    Ok(policy::compile(policy, &book, &[])?)
}

/// The rule allowing `ip` on `port` (or on any port when `None`).
fn allowed(
    compiled: &policy::CompiledPolicy,
    ip: IpAddr,
    port: Option<u16>,
    protocol: u8,
) -> Option<u32> {
    match port {
        Some(p) => policy::lookup(compiled, ip, p, protocol),
        None => {
            let mut candidates: Vec<u16> = compiled
                .v4
                .iter()
                .flat_map(|e| e.grants.iter().map(|g| g.lo))
                .chain(
                    compiled
                        .v6
                        .iter()
                        .flat_map(|e| e.grants.iter().map(|g| g.lo)),
                )
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            candidates
                .into_iter()
                .find_map(|p| policy::lookup(compiled, ip, p, protocol))
        }
    }
}

/// Why the rules that name a domain do not allow it on this port and protocol, e.g. "rule 2
/// `domain=github.com port=443` (config.yaml:5) names it for port 443 only"; "no rule names
/// it" when none does.
fn not_applying(policy: &Policy, naming: &[&Rule], port: Option<u16>, protocol: u8) -> String {
    if naming.is_empty() {
        return "no rule names it".into();
    }
    let reasons: Vec<String> = naming
        .iter()
        .map(|r| {
            let mut limits = Vec::new();
            if !r.allows_port(port) {
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|p| {
                        if p.lo == p.hi {
                            p.lo.to_string()
                        } else {
                            format!("{}-{}", p.lo, p.hi)
                        }
                    })
                    .collect();
                let noun = if ports.len() == 1 && !ports[0].contains('-') {
                    "port"
                } else {
                    "ports"
                };
                limits.push(format!("{noun} {}", ports.join(",")));
            }
            if r.protocols & protocol == 0 {
                limits.push(protocol_names(r.protocols));
            }
            format!(
                "{} names it for {} only",
                describe(policy, r.id),
                limits.join(" ")
            )
        })
        .collect();
    reasons.join("; ")
}

fn protocol_names(bits: u8) -> String {
    let mut names = Vec::new();
    if bits & PROTO_TCP != 0 {
        names.push("tcp");
    }
    if bits & PROTO_UDP != 0 {
        names.push("udp");
    }
    names.join("/")
}

fn describe(policy: &Policy, id: u32) -> String {
    match id {
        RULE_LOOPBACK => "loopback (allow_loopback: true)".into(),
        RULE_DNS => "the session's DNS proxy".into(),
        id => {
            let rule = &policy.rules[id as usize - 1];
            let file = policy
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("rule {id} `{}` ({file}:{})", rule.text, rule.line)
        }
    }
}
