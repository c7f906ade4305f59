//! `policy simulate`: the stored decisions of a template replayed against a candidate policy.
//!
//! Each kernel decision on a destination (address, port, transport, and the names the agent
//! knew for the address) and each DNS question is judged again with
//! [`boundary_policy::Policy::verdict`] / [`dns_verdict`], the code the agent itself builds
//! its kernel maps and DNS answers from, and compared with what was decided then (`allow`,
//! or `deny`/`would_deny`). Identical decisions are judged once. Events that no allowlist
//! decides (socket types, system calls, session events) are not replayed and are counted as
//! skipped.
//!
//! [`dns_verdict`]: boundary_policy::Policy::dns_verdict

use std::collections::HashMap;
use std::net::IpAddr;

use boundary_common::{PROTO_TCP, PROTO_UDP};
use boundary_policy::{Policy, Verdict};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value as Json;

use super::query::{export, EventFilter};
use crate::error::Error;
use crate::store::Store;

/// What was judged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Subject {
    Connection {
        address: IpAddr,
        port: u16,
        transport: &'static str,
        domains: Vec<String>,
    },
    Dns {
        name: String,
        /// The CNAME target that made the proxy refuse an allowed name.
        refused_name: Option<String>,
    },
}

/// One decision that the candidate would decide the other way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `connection` or `dns`.
    pub kind: &'static str,
    /// What was decided (`allow`, or `deny` for deny and would_deny) and what the candidate
    /// decides.
    pub from: &'static str,
    pub to: &'static str,
    /// The destination's first domain, or the DNS question.
    pub domain: Option<String>,
    pub destination: Option<String>,
    pub port: Option<u16>,
    pub transport: Option<&'static str>,
    /// Decisions (sum of `boundary.event.count`) and stored events.
    pub count: u64,
    pub events: u64,
    /// The candidate's rule that allows it (for deny → allow).
    pub rule: Option<String>,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Simulation {
    /// Changes, most decisions first.
    pub changes: Vec<Change>,
    /// Events replayed, and the decisions they stand for.
    pub replayed_events: u64,
    pub replayed_decisions: u64,
    /// Decisions the candidate decides the same way.
    pub unchanged_decisions: u64,
    /// Events not replayed (no destination, another transport, no allow/deny action).
    pub skipped_events: u64,
}

/// Replays the decisions and DNS questions stored for `template` since `since` against
/// `candidate`.
pub async fn simulate(
    store: &Store,
    template: &str,
    since: Option<DateTime<Utc>>,
    candidate: &Policy,
) -> Result<Simulation, Error> {
    let mut seen: HashMap<(Subject, bool), (u64, u64)> = HashMap::new();
    let mut sim = Simulation::default();
    for name in ["boundary.decision", "boundary.dns"] {
        let filter = EventFilter {
            template: Some(template.to_string()),
            since,
            event_name: Some(name.to_string()),
            ..EventFilter::default()
        };
        export(store, &filter, |row| {
            let allowed = match row.action.as_deref() {
                Some("allow") => true,
                Some("deny" | "would_deny") => false,
                _ => {
                    sim.skipped_events += 1;
                    return Ok(());
                }
            };
            let Some(subject) = subject(&row.body) else {
                sim.skipped_events += 1;
                return Ok(());
            };
            let entry = seen.entry((subject, allowed)).or_default();
            entry.0 += row.count;
            entry.1 += 1;
            Ok(())
        })
        .await?;
    }
    for ((subject, allowed), (count, events)) in seen {
        sim.replayed_events += events;
        sim.replayed_decisions += count;
        let verdict = match &subject {
            Subject::Connection {
                address,
                port,
                transport,
                domains,
            } => {
                let proto = if *transport == "udp" {
                    PROTO_UDP
                } else {
                    PROTO_TCP
                };
                candidate
                    .verdict(*address, *port, proto, domains)
                    .map_err(|e| Error::Config(format!("candidate policy: {e}")))?
            }
            Subject::Dns { name, refused_name } => match candidate.dns_verdict(name) {
                // The proxy refuses an answer whose CNAME chain leaves the allowlist.
                Verdict::Allow { .. }
                    if refused_name
                        .as_deref()
                        .is_some_and(|n| !candidate.dns_verdict(n).is_allow()) =>
                {
                    Verdict::Deny
                }
                v => v,
            },
        };
        if verdict.is_allow() == allowed {
            sim.unchanged_decisions += count;
            continue;
        }
        let rule = match verdict {
            Verdict::Allow { rule } => Some(rule_text(candidate, rule)),
            Verdict::Deny => None,
        };
        let old = if allowed { "allow" } else { "deny" };
        sim.changes.push(match subject {
            Subject::Connection {
                address,
                port,
                transport,
                domains,
            } => Change {
                kind: "connection",
                from: old,
                to: verdict.as_str(),
                domain: domains.into_iter().next(),
                destination: Some(address.to_string()),
                port: Some(port),
                transport: Some(transport),
                count,
                events,
                rule,
            },
            Subject::Dns { name, .. } => Change {
                kind: "dns",
                from: old,
                to: verdict.as_str(),
                domain: Some(name),
                destination: None,
                port: None,
                transport: None,
                count,
                events,
                rule,
            },
        });
    }
    sim.changes.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| {
            (&a.domain, &a.destination, a.port).cmp(&(&b.domain, &b.destination, b.port))
        })
    });
    Ok(sim)
}

fn rule_text(policy: &Policy, rule: u32) -> String {
    match rule {
        boundary_common::RULE_LOOPBACK => "loopback (allow_loopback: true)".into(),
        boundary_common::RULE_DNS => "the session's DNS proxy (port 53)".into(),
        id => match policy.rules.get(id as usize - 1) {
            Some(r) => format!("rule {id} `{}` (line {})", r.text, r.line),
            None => format!("rule {id}"),
        },
    }
}

/// What an event asks, from its JSON; `None` if no allowlist decides it.
fn subject(body: &str) -> Option<Subject> {
    let v: Json = serde_json::from_str(body).ok()?;
    let s = |k: &str| v.get(k).and_then(Json::as_str);
    match s("event.name")? {
        "boundary.decision" => {
            let address: IpAddr = s("destination.address")?.parse().ok()?;
            let port = u16::try_from(v.get("destination.port")?.as_u64()?).ok()?;
            let transport = match s("network.transport")? {
                "tcp" => "tcp",
                "udp" => "udp",
                _ => return None,
            };
            let mut domains: Vec<String> = v
                .get("boundary.destination.domains")
                .and_then(Json::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Json::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            domains.sort();
            domains.dedup();
            Some(Subject::Connection {
                address,
                port,
                transport,
                domains,
            })
        }
        "boundary.dns" => Some(Subject::Dns {
            name: s("dns.question.name")?.to_string(),
            refused_name: s("boundary.dns.refused_name").map(str::to_string),
        }),
        _ => None,
    }
}
