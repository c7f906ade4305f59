//! `config.yaml`: parsed once, with positions, into a validated [`Policy`].
//!
//! The YAML is read into a small tree that remembers the line and column of every node, so each
//! problem is reported as `FILE:LINE:COL: FIELD: message`. Every problem in the file is
//! collected before giving up: a user fixes their config in one pass, not one error at a time.
//!
//! Two rule forms are accepted in `allowlist`, and may be mixed:
//! - Coder Boundary's string form, unchanged: `"method=GET,HEAD domain=api.github.com"`,
//!   extended with `port=`, `proto=`, `cidr=` and `ip=` keys;
//! - a mapping: `{domain: github.com, ports: [443, "8000-8100"], protocol: tcp}`,
//!   `{cidr: 10.0.0.0/8}`, `{ip: 192.0.2.7, port: 53, protocol: udp}`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::{DnsSettings, DomainPattern, Mode, Policy, PortRange, Rule, Target};
pub use crate::error::{ConfigError, Problem};
use boundary_common::{PROTO_TCP, PROTO_UDP};

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Policy, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.clone(),
        problems: vec![Problem {
            line: 0,
            col: 0,
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    let mut policy = parse(&name, &text)?;
    if policy.name.is_empty() {
        policy.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "default".into());
    }
    policy.source = Some(path.to_path_buf());
    Ok(policy)
}

/// Parses and validates config text; `source_name` is used in error messages.
pub fn parse(source_name: &str, text: &str) -> Result<Policy, ConfigError> {
    let mut errors = Errors {
        file: source_name.to_string(),
        problems: Vec::new(),
    };
    let root = match read_tree(text) {
        Ok(root) => root,
        Err((line, col, message)) => {
            errors.add(Pos { line, col }, "(yaml)", message);
            return Err(errors.into_error());
        }
    };
    let policy = build_policy(root, &mut errors);
    if errors.problems.is_empty() {
        Ok(policy)
    } else {
        Err(errors.into_error())
    }
}

// ---------------------------------------------------------------------------------------------
// A YAML tree with positions.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    line: usize,
    col: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Null,
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    pos: Pos,
}

impl Node {
    fn describe(&self) -> &'static str {
        match self.kind {
            Kind::Scalar(_) => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Null => "nothing",
        }
    }
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<(Node, Option<Node>)>,
    root: Option<Node>,
}

impl TreeBuilder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((parent, pending_key)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push((key, node)),
                },
                _ => unreachable!("only collections are pushed"),
            },
        }
    }
}

fn pos(mark: &Marker) -> Pos {
    // The scanner counts lines from 1 and columns from 0.
    Pos {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = pos(&mark);
        match ev {
            Event::Scalar(value, style, _, _) => {
                let plain = matches!(style, yaml_rust2::scanner::TScalarStyle::Plain);
                let kind = if plain && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Kind::Null
                } else {
                    Kind::Scalar(value)
                };
                self.push_value(Node { kind, pos: at });
            }
            Event::SequenceStart(..) => self.stack.push((
                Node {
                    kind: Kind::Seq(Vec::new()),
                    pos: at,
                },
                None,
            )),
            Event::MappingStart(..) => self.stack.push((
                Node {
                    kind: Kind::Map(Vec::new()),
                    pos: at,
                },
                None,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            Event::Alias(_) => self.push_value(Node {
                kind: Kind::Null,
                pos: at,
            }),
            _ => {}
        }
    }
}

fn read_tree(text: &str) -> Result<Node, (usize, usize, String)> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| {
        let m = e.marker();
        (m.line(), m.col() + 1, e.info().to_string())
    })?;
    Ok(builder.root.unwrap_or(Node {
        kind: Kind::Null,
        pos: Pos { line: 1, col: 1 },
    }))
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Errors {
    file: String,
    problems: Vec<Problem>,
}

impl Errors {
    fn add(&mut self, at: Pos, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: at.line,
            col: at.col,
            field: field.into(),
            message: message.into(),
        });
    }

    fn into_error(self) -> ConfigError {
        ConfigError {
            file: self.file,
            problems: self.problems,
        }
    }
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "mode",
    "allow_loopback",
    "allowlist",
    "log_dir",
    "log_level",
    "log_max_file_size",
    "log_max_files",
    "log_summary_interval",
    "dns",
];
const DNS_KEYS: &[&str] = &[
    "nameservers",
    "hosts_file",
    "allow_nameservers",
    "refuse_with",
    "min_ttl",
    "max_ttl",
    "grace_period",
];
const RULE_MAP_KEYS: &[&str] = &[
    "domain", "cidr", "ip", "ports", "port", "protocol", "proto", "methods", "method", "paths",
    "path",
];
const RULE_STRING_KEYS: &[&str] = &["domain", "cidr", "ip", "port", "proto", "method", "path"];

fn build_policy(root: Node, errors: &mut Errors) -> Policy {
    let mut policy = Policy::default();
    let entries = match root.kind {
        Kind::Map(entries) => entries,
        Kind::Null => {
            errors.add(
                root.pos,
                "(root)",
                "the config is empty; it needs at least `allowlist:`",
            );
            return policy;
        }
        _ => {
            errors.add(
                root.pos,
                "(root)",
                format!("expected a mapping of settings, found {}", root.describe()),
            );
            return policy;
        }
    };
    let mut seen_allowlist = false;
    for (key, value) in entries {
        let Some(name) = scalar(&key) else {
            errors.add(key.pos, "(root)", "keys must be plain names");
            continue;
        };
        match name.as_str() {
            "name" => {
                if let Some(s) = expect_string(&value, "name", errors) {
                    policy.name = s;
                }
            }
            "mode" => match scalar(&value).as_deref() {
                Some("enforce") => policy.mode = Mode::Enforce,
                Some("audit") => policy.mode = Mode::Audit,
                _ => errors.add(value.pos, "mode", "must be `enforce` or `audit`"),
            },
            "allow_loopback" => {
                if let Some(b) = expect_bool(&value, "allow_loopback", errors) {
                    policy.allow_loopback = b;
                }
            }
            "log_dir" => {
                if let Some(s) = expect_string(&value, "log_dir", errors) {
                    policy.log_dir = Some(PathBuf::from(s));
                }
            }
            "log_level" => match scalar(&value).as_deref() {
                Some(l @ ("error" | "warn" | "info" | "debug" | "trace")) => {
                    policy.log_level = l.to_string()
                }
                _ => errors.add(
                    value.pos,
                    "log_level",
                    "must be one of error, warn, info, debug, trace",
                ),
            },
            "log_max_file_size" => match scalar(&value).as_deref().map(parse_size) {
                Some(Some(n)) if n >= MIN_LOG_FILE_SIZE => policy.log_max_file_size = n,
                Some(Some(_)) => errors.add(
                    value.pos,
                    "log_max_file_size",
                    "must be at least 4KiB (one file holds at least a few events)",
                ),
                _ => errors.add(
                    value.pos,
                    "log_max_file_size",
                    "expected a size such as 64MiB, 500KB, 1GiB or 1048576 (bytes)",
                ),
            },
            "log_max_files" => match scalar(&value).map(|s| s.trim().parse::<u32>()) {
                Some(Ok(n)) if n <= MAX_LOG_FILES => policy.log_max_files = n,
                _ => errors.add(
                    value.pos,
                    "log_max_files",
                    format!(
                        "expected how many rotated files to keep, 0 to {MAX_LOG_FILES} (0: a full file starts over)"
                    ),
                ),
            },
            "log_summary_interval" => match scalar(&value).as_deref().map(parse_interval) {
                Some(Some(d)) if d <= Duration::from_secs(3600) => {
                    policy.log_summary_interval = d
                }
                _ => errors.add(
                    value.pos,
                    "log_summary_interval",
                    "expected a duration up to 1h such as 1s, 500ms or 0 (0: never summarise)",
                ),
            },
            "allowlist" => {
                seen_allowlist = true;
                policy.rules = build_rules(value, errors);
            }
            "dns" => policy.dns = build_dns(value, errors),
            other => errors.add(
                key.pos,
                shown_key(other),
                unknown_key(other, TOP_LEVEL_KEYS),
            ),
        }
    }
    if !seen_allowlist {
        errors.add(
            root.pos,
            "allowlist",
            "missing; list what the boundary allows, e.g. `allowlist: [\"domain=github.com\"]` (an empty list denies everything)",
        );
    }
    policy
}

fn build_dns(node: Node, errors: &mut Errors) -> DnsSettings {
    let mut dns = DnsSettings::default();
    let entries = match node.kind {
        Kind::Map(entries) => entries,
        Kind::Null => return dns,
        _ => {
            errors.add(node.pos, "dns", "expected a mapping");
            return dns;
        }
    };
    for (key, value) in entries {
        let name = scalar(&key).unwrap_or_default();
        let field = format!("dns.{name}");
        match name.as_str() {
            "nameservers" => {
                let mut servers = Vec::new();
                for item in items(value, &field, errors) {
                    match scalar(&item).as_deref().map(parse_nameserver) {
                        Some(Some(addr)) => servers.push(addr),
                        _ => errors.add(
                            item.pos,
                            &field,
                            "expected an IP address, optionally with :port",
                        ),
                    }
                }
                dns.nameservers = Some(servers);
            }
            "hosts_file" => {
                dns.hosts_file = expect_string(&value, &field, errors).map(PathBuf::from)
            }
            "allow_nameservers" => {
                if let Some(b) = expect_bool(&value, &field, errors) {
                    dns.allow_nameservers = Some(b);
                }
            }
            "refuse_with" => match scalar(&value).as_deref() {
                Some("nxdomain") => dns.refuse_with = super::RefuseWith::NxDomain,
                Some("refused") => dns.refuse_with = super::RefuseWith::Refused,
                _ => errors.add(value.pos, &field, "expected nxdomain or refused"),
            },
            "min_ttl" | "max_ttl" | "grace_period" => {
                match scalar(&value).as_deref().map(parse_duration) {
                    Some(Some(d)) => match name.as_str() {
                        "min_ttl" => dns.min_ttl = d,
                        "max_ttl" => dns.max_ttl = d,
                        _ => dns.grace_period = d,
                    },
                    _ => errors.add(
                        value.pos,
                        &field,
                        "expected a duration such as 30, 30s, 5m or 1h",
                    ),
                }
            }
            other => errors.add(
                key.pos,
                format!("dns.{}", shown_key(other)),
                unknown_key(other, DNS_KEYS),
            ),
        }
    }
    if dns.min_ttl > dns.max_ttl {
        errors.add(
            node.pos,
            "dns.min_ttl",
            "must not be larger than dns.max_ttl",
        );
    }
    dns
}

fn build_rules(node: Node, errors: &mut Errors) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (index, item) in items(node, "allowlist", errors).into_iter().enumerate() {
        let field = format!("allowlist[{index}]");
        let mut at = item.pos;
        let parsed = match &item.kind {
            Kind::Scalar(text) => parse_rule_string(text).map(|r| (r, text.clone())),
            Kind::Map(entries) => parse_rule_map(entries, &field, errors).map_err(|(p, pos)| {
                at = pos;
                p
            }),
            _ => Err(RuleProblem::new(
                "",
                format!(
                    "expected a rule such as \"domain=github.com\" or a mapping, found {}",
                    item.describe()
                ),
            )),
        };
        match parsed {
            Ok((mut draft, text)) => {
                draft.id = rules.len() as u32 + 1;
                draft.text = text;
                draft.line = item.pos.line;
                rules.push(draft);
            }
            Err(p) => {
                let field = if p.key.is_empty() {
                    field
                } else {
                    format!("{field}.{}", p.key)
                };
                errors.add(at, field, p.message);
            }
        }
    }
    rules
}

/// A problem inside one rule, before it gets a position.
#[derive(Debug)]
struct RuleProblem {
    key: String,
    message: String,
}

impl RuleProblem {
    fn new(key: &str, message: impl Into<String>) -> Self {
        RuleProblem {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Default)]
struct RuleParts {
    domain: Option<String>,
    cidr: Option<String>,
    ip: Option<String>,
    ports: Option<String>,
    proto: Option<String>,
    methods: Option<String>,
    paths: Option<String>,
}

/// Parses Coder Boundary's `key=value key=value` form (plus our `port=`, `proto=`, `cidr=`, `ip=`).
fn parse_rule_string(text: &str) -> Result<Rule, RuleProblem> {
    let mut parts = RuleParts::default();
    if text.trim().is_empty() {
        return Err(RuleProblem::new("", "empty rule"));
    }
    for token in text.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            return Err(RuleProblem::new(
                "",
                format!(
                    "`{}` is not key=value (rules look like \"domain=github.com port=443\")",
                    shown_key(token)
                ),
            ));
        };
        let slot = match key {
            "domain" => &mut parts.domain,
            "cidr" => &mut parts.cidr,
            "ip" => &mut parts.ip,
            "port" => &mut parts.ports,
            "proto" => &mut parts.proto,
            "method" => &mut parts.methods,
            "path" => &mut parts.paths,
            other => {
                return Err(RuleProblem::new(
                    &shown_key(other),
                    unknown_key(other, RULE_STRING_KEYS),
                ))
            }
        };
        if slot.is_some() {
            return Err(RuleProblem::new(key, "given twice in one rule"));
        }
        if value.is_empty() {
            return Err(RuleProblem::new(key, "has no value"));
        }
        *slot = Some(value.to_string());
    }
    finish_rule(parts)
}

fn parse_rule_map(
    entries: &[(Node, Node)],
    field: &str,
    errors: &mut Errors,
) -> Result<(Rule, String), (RuleProblem, Pos)> {
    let mut parts = RuleParts::default();
    let mut text = Vec::new();
    let mut key_pos: Vec<(&'static str, Pos)> = Vec::new();
    let first = entries
        .first()
        .map(|(k, _)| k.pos)
        .unwrap_or(Pos { line: 0, col: 0 });
    for (key, value) in entries {
        let name = scalar(key).unwrap_or_default();
        let joined = match &value.kind {
            Kind::Scalar(s) => s.clone(),
            Kind::Seq(items) => items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(","),
            _ => {
                errors.add(
                    value.pos,
                    format!("{field}.{name}"),
                    "expected a value or a list of values",
                );
                continue;
            }
        };
        let (slot, canonical) = match name.as_str() {
            "domain" => (&mut parts.domain, "domain"),
            "cidr" => (&mut parts.cidr, "cidr"),
            "ip" => (&mut parts.ip, "ip"),
            "ports" | "port" => (&mut parts.ports, "port"),
            "protocol" | "proto" => (&mut parts.proto, "proto"),
            "methods" | "method" => (&mut parts.methods, "method"),
            "paths" | "path" => (&mut parts.paths, "path"),
            other => {
                return Err((
                    RuleProblem::new(&shown_key(other), unknown_key(other, RULE_MAP_KEYS)),
                    key.pos,
                ))
            }
        };
        if slot.is_some() {
            return Err((RuleProblem::new(&name, "given twice in one rule"), key.pos));
        }
        text.push(format!("{canonical}={joined}"));
        key_pos.push((canonical, value.pos));
        *slot = Some(joined);
    }
    let rule = finish_rule(parts).map_err(|p| {
        let at = key_pos
            .iter()
            .find(|(k, _)| *k == p.key)
            .map(|(_, pos)| *pos)
            .unwrap_or(first);
        (p, at)
    })?;
    Ok((rule, text.join(" ")))
}

fn finish_rule(parts: RuleParts) -> Result<Rule, RuleProblem> {
    let targets = [&parts.domain, &parts.cidr, &parts.ip]
        .iter()
        .filter(|t| t.is_some())
        .count();
    if targets == 0 {
        return Err(RuleProblem::new(
            "",
            "a rule needs a destination: domain=, cidr= or ip=",
        ));
    }
    if targets > 1 {
        return Err(RuleProblem::new(
            "",
            "a rule has exactly one destination: domain=, cidr= or ip= (write two rules)",
        ));
    }
    let target = if let Some(d) = &parts.domain {
        Target::Domain(DomainPattern::parse(d).map_err(|m| RuleProblem::new("domain", m))?)
    } else if let Some(c) = &parts.cidr {
        let net: IpNet = c.parse().map_err(|_| {
            RuleProblem::new(
                "cidr",
                format!("`{c}` is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32"),
            )
        })?;
        if net.trunc() != net {
            return Err(RuleProblem::new(
                "cidr",
                format!("`{c}` has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        Target::Net(net)
    } else {
        let ip_text = parts.ip.as_deref().unwrap_or_default();
        let ip: IpAddr = ip_text.parse().map_err(|_| {
            RuleProblem::new("ip", format!("`{ip_text}` is not an IPv4 or IPv6 address"))
        })?;
        Target::Net(IpNet::from(ip))
    };
    let ports = match &parts.ports {
        None => Vec::new(),
        Some(p) => parse_ports(p).map_err(|m| RuleProblem::new("port", m))?,
    };
    let protocols = match parts.proto.as_deref() {
        None => PROTO_TCP | PROTO_UDP,
        Some(p) => parse_protocols(p).map_err(|m| RuleProblem::new("proto", m))?,
    };
    let methods = split_list(parts.methods.as_deref());
    for m in &methods {
        if !m.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(RuleProblem::new(
                "method",
                format!("`{m}` is not an HTTP method"),
            ));
        }
    }
    let methods = methods
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    let paths = split_list(parts.paths.as_deref());
    for p in &paths {
        if !p.starts_with('/') {
            return Err(RuleProblem::new("path", format!("`{p}` must start with /")));
        }
    }
    Ok(Rule {
        id: 0,
        text: String::new(),
        target,
        ports,
        protocols,
        methods,
        paths,
        line: 0,
    })
}

fn split_list(value: Option<&str>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `443`, `8000-8100`, `80,443,8000-8100`.
pub fn parse_ports(text: &str) -> Result<Vec<PortRange>, String> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| -> Result<u16, String> {
            match s.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "`{part}` is not a port (1-65535) or range (8000-8100)"
                )),
                Ok(p) => Ok(p),
            }
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(format!("`{part}`: the range's start is after its end"));
        }
        ranges.push(PortRange { lo, hi });
    }
    if ranges.is_empty() {
        return Err("no ports given".into());
    }
    Ok(ranges)
}

fn parse_protocols(text: &str) -> Result<u8, String> {
    let mut bits = 0;
    for p in text.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        bits |= match p.as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "any" => PROTO_TCP | PROTO_UDP,
            _ => return Err(format!("`{p}` is not tcp, udp or any")),
        };
    }
    Ok(bits)
}

fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// The smallest `log_max_file_size`.
const MIN_LOG_FILE_SIZE: u64 = 4 << 10;
/// The most `log_max_files`.
const MAX_LOG_FILES: u32 = 1000;

/// `1048576`, `500KB` (decimal), `64MiB` (binary), `1GiB`; units are case-insensitive.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A duration that may be shorter than a second: `500ms`, or anything [`parse_duration`] takes.
fn parse_interval(text: &str) -> Option<Duration> {
    match text.trim().strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => parse_duration(text),
    }
}

/// `30`, `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

// ---------------------------------------------------------------------------------------------
// Small typed readers.

fn scalar(node: &Node) -> Option<String> {
    match &node.kind {
        Kind::Scalar(s) => Some(s.clone()),
        _ => None,
    }
}

fn items(node: Node, field: &str, errors: &mut Errors) -> Vec<Node> {
    match node.kind {
        Kind::Seq(items) => items,
        Kind::Null => Vec::new(),
        _ => {
            errors.add(
                node.pos,
                field,
                format!("expected a list, found {}", node.describe()),
            );
            Vec::new()
        }
    }
}

fn expect_string(node: &Node, field: &str, errors: &mut Errors) -> Option<String> {
    let s = scalar(node);
    if s.is_none() {
        errors.add(
            node.pos,
            field,
            format!("expected a string, found {}", node.describe()),
        );
    }
    s
}

fn expect_bool(node: &Node, field: &str, errors: &mut Errors) -> Option<bool> {
    match scalar(node).as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => {
            errors.add(node.pos, field, "expected true or false");
            None
        }
    }
}

/// A key as it may appear in an error message: only what looks like a key someone typed.
/// Anything else (a line of a file that is not a policy at all, such as /etc/shadow behind a
/// symlink) is never echoed to stderr or into an event.
fn shown_key(key: &str) -> String {
    let plausible = !key.is_empty()
        && key.len() <= 40
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plausible {
        key.to_string()
    } else {
        "(not shown)".to_string()
    }
}

fn unknown_key(key: &str, known: &[&str]) -> String {
    if shown_key(key) != key {
        return format!(
            "an unknown key whose text is not shown (it does not look like a policy key; is \
             this a policy file?); expected one of: {}",
            known.join(", ")
        );
    }
    let best = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, _)| *d <= 2);
    match best {
        Some((_, k)) => format!("unknown key `{key}`; did you mean `{k}`?"),
        None => format!("unknown key `{key}`; expected one of: {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_echo_lines_that_are_not_policy_keys() {
        let shadow = "root:$y$j9T$abcdefghijkl$0123456789:20228:0:99999:7:::\nname: x\n";
        let err = parse("/etc/shadow", shadow).unwrap_err().to_string();
        assert!(!err.contains("root:"), "{err}");
        assert!(!err.contains("abcdefghijkl"), "{err}");
        assert!(err.contains("/etc/shadow:1:1"), "{err}");
        // Typos people make are still named.
        let err = parse("c.yaml", "allowlst: []\n").unwrap_err().to_string();
        assert!(err.contains("did you mean `allowlist`"), "{err}");
    }

    fn problems(text: &str) -> Vec<String> {
        match parse("c.yaml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(String::from).collect(),
        }
    }

    #[test]
    fn accepts_coder_boundary_syntax_unchanged() {
        let p = parse(
            "c.yaml",
            r#"
allowlist:
  - "domain=github.com"
  - "domain=*.npmjs.org"
  - "method=GET,HEAD domain=api.github.com"
  - "method=POST domain=api.example.com path=/users,/posts"
log_dir: /tmp/boundary_logs
log_level: warn
"#,
        )
        .unwrap();
        assert_eq!(p.rules.len(), 4);
        assert_eq!(p.rules[2].text, "method=GET,HEAD domain=api.github.com");
        assert_eq!(p.rules[2].methods, vec!["GET", "HEAD"]);
        assert_eq!(p.rules[3].paths, vec!["/users", "/posts"]);
        assert_eq!(
            p.rules[1].target,
            Target::Domain(DomainPattern::Wildcard("npmjs.org".into()))
        );
        assert_eq!(p.log_dir.as_deref(), Some(Path::new("/tmp/boundary_logs")));
        assert_eq!(p.mode, Mode::Enforce);
        assert!(
            p.allow_loopback,
            "loopback is allowed unless the config says otherwise"
        );
        assert_eq!(
            p.rules.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn accepts_structured_rules_with_cidrs_ports_and_protocols() {
        let p = parse(
            "c.yaml",
            r#"
name: agents
mode: audit
allow_loopback: false
allowlist:
  - cidr: 10.0.0.0/8
  - { cidr: "2001:db8::/32", ports: [443, "8000-8100"], protocol: tcp }
  - { ip: 192.0.2.7, port: 53, proto: udp }
  - "domain=registry.npmjs.org port=443"
dns:
  nameservers: ["127.0.0.1:5353"]
  grace_period: 5m
"#,
        )
        .unwrap();
        assert_eq!(p.name, "agents");
        assert_eq!(p.mode, Mode::Audit);
        assert!(!p.allow_loopback);
        assert_eq!(
            p.rules[1].ports,
            vec![
                PortRange { lo: 443, hi: 443 },
                PortRange { lo: 8000, hi: 8100 }
            ]
        );
        assert_eq!(p.rules[1].protocols, PROTO_TCP);
        assert_eq!(
            p.rules[1].text,
            "cidr=2001:db8::/32 port=443,8000-8100 proto=tcp"
        );
        assert_eq!(
            p.rules[2].target,
            Target::Net("192.0.2.7/32".parse().unwrap())
        );
        assert_eq!(p.rules[2].protocols, PROTO_UDP);
        assert_eq!(p.rules[3].ports, vec![PortRange { lo: 443, hi: 443 }]);
        assert_eq!(
            p.dns.nameservers,
            Some(vec!["127.0.0.1:5353".parse().unwrap()])
        );
        assert_eq!(p.dns.grace_period, Duration::from_secs(300));
    }

    #[test]
    fn dns_refuse_with_and_the_deprecated_allow_nameservers() {
        let p = parse(
            "c.yaml",
            "allowlist: []\ndns:\n  refuse_with: refused\n  allow_nameservers: false\n",
        )
        .unwrap();
        assert_eq!(p.dns.refuse_with, super::super::RefuseWith::Refused);
        assert_eq!(p.dns.allow_nameservers, Some(false));
        let p = parse("c.yaml", "allowlist: []\n").unwrap();
        assert_eq!(p.dns.refuse_with, super::super::RefuseWith::NxDomain);
        assert_eq!(p.dns.allow_nameservers, None);
        assert_eq!(
            problems("allowlist: []\ndns:\n  refuse_with: drop\n"),
            vec!["c.yaml:3:16: dns.refuse_with: expected nxdomain or refused"]
        );
    }

    #[test]
    fn reports_every_error_with_line_column_and_field() {
        let errs = problems(
            "mode: block\nallowlist:\n  - \"domian=github.com\"\n  - \"domain=ok.com port=99999\"\n  - cidr: 10.0.0.1/8\nlog_levl: warn\n",
        );
        assert_eq!(
            errs,
            vec![
                "c.yaml:1:7: mode: must be `enforce` or `audit`",
                "c.yaml:3:5: allowlist[0].domian: unknown key `domian`; did you mean `domain`?",
                "c.yaml:4:5: allowlist[1].port: `99999` is not a port (1-65535) or range (8000-8100)",
                "c.yaml:5:11: allowlist[2].cidr: `10.0.0.1/8` has host bits set; did you mean 10.0.0.0/8?",
                "c.yaml:6:1: log_levl: unknown key `log_levl`; did you mean `log_level`?",
            ]
        );
    }

    #[test]
    fn reports_yaml_syntax_errors_with_position() {
        let errs = problems("allowlist:\n  - \"domain=a.com\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("c.yaml:"), "{errs:?}");
        assert!(errs[0].contains("(yaml)"), "{errs:?}");
    }

    #[test]
    fn rejects_rules_without_or_with_two_destinations() {
        assert!(problems("allowlist: [\"port=443\"]")[0].contains("needs a destination"));
        assert!(problems("allowlist: [\"domain=a.com cidr=10.0.0.0/8\"]")[0]
            .contains("exactly one destination"));
    }

    #[test]
    fn log_rotation_and_summary_keys_take_human_sizes_and_durations() {
        let p = parse("c.yaml", "allowlist: []\n").unwrap();
        assert_eq!(p.log_max_file_size, 64 << 20);
        assert_eq!(p.log_max_files, 4);
        assert_eq!(p.log_summary_interval, Duration::from_secs(1));
        let p = parse(
            "c.yaml",
            "allowlist: []\nlog_max_file_size: 10MiB\nlog_max_files: 0\nlog_summary_interval: 250ms\n",
        )
        .unwrap();
        assert_eq!(p.log_max_file_size, 10 << 20);
        assert_eq!(p.log_max_files, 0);
        assert_eq!(p.log_summary_interval, Duration::from_millis(250));
        for (text, size) in [
            ("500KB", 500_000),
            ("1gib", 1 << 30),
            ("65536", 65536),
            ("8 KiB", 8192),
        ] {
            assert_eq!(parse_size(text), Some(size), "{text}");
        }
        let p = parse("c.yaml", "allowlist: []\nlog_summary_interval: 0\n").unwrap();
        assert!(p.log_summary_interval.is_zero());
    }

    #[test]
    fn bad_log_rotation_and_summary_values_are_named_with_their_position() {
        assert_eq!(
            problems(
                "allowlist: []\nlog_max_file_size: 10 parsecs\nlog_max_files: -1\nlog_summary_interval: soon\nlog_max_fils: 3\n"
            ),
            vec![
                "c.yaml:2:20: log_max_file_size: expected a size such as 64MiB, 500KB, 1GiB or 1048576 (bytes)",
                "c.yaml:3:16: log_max_files: expected how many rotated files to keep, 0 to 1000 (0: a full file starts over)",
                "c.yaml:4:23: log_summary_interval: expected a duration up to 1h such as 1s, 500ms or 0 (0: never summarise)",
                "c.yaml:5:1: log_max_fils: unknown key `log_max_fils`; did you mean `log_max_files`?",
            ]
        );
        assert_eq!(
            problems("allowlist: []\nlog_max_file_size: 1KiB\n"),
            vec!["c.yaml:2:20: log_max_file_size: must be at least 4KiB (one file holds at least a few events)"]
        );
        assert!(problems("allowlist: []\nlog_max_files: 1001\n")[0].contains("log_max_files"));
        assert!(
            problems("allowlist: []\nlog_max_file_size: 99999999999GiB\n")[0]
                .contains("log_max_file_size")
        );
        assert!(problems("allowlist: []\nlog_summary_interval: 2h\n")[0]
            .contains("log_summary_interval"));
    }

    #[test]
    fn requires_an_allowlist() {
        assert!(problems("mode: enforce\n")[0].contains("allowlist: missing"));
    }

    #[test]
    fn an_empty_allowlist_is_valid_and_denies_everything() {
        assert!(parse("c.yaml", "allowlist: []\n").unwrap().rules.is_empty());
    }
}
