//! The proxy's decisions on DNS messages, with the wire format left to hickory-proto: what a
//! query asks, the refusal the proxy answers itself, and whether an upstream answer may reach
//! the program (every name of its CNAME chain allowed) with the addresses it carries. Pure.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::svcb::SvcParamValue;
use hickory_proto::rr::rdata::HTTPS;
use hickory_proto::rr::{RData, RecordType};

use crate::policy::RefuseWith;

/// What a query asks.
#[derive(Debug, Clone)]
pub struct Question {
    pub message: Message,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub qtype: RecordType,
}

impl Question {
    /// Parses a query. `Err` carries the reply for a message the proxy will not forward
    /// (FORMERR for garbage, NOTIMP for other opcodes, REFUSED for several questions), or
    /// `None` when nothing can be answered (not even a header).
    pub fn parse(bytes: &[u8]) -> Result<Question, Option<Vec<u8>>> {
        let message = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                if bytes.len() < 2 {
                    return Err(None);
                }
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return Err(reply.to_vec().ok());
            }
        };
        let meta = &message.metadata;
        if meta.message_type != MessageType::Query {
            return Err(None);
        }
        if meta.op_code != OpCode::Query {
            return Err(Some(error_reply(&message, ResponseCode::NotImp)));
        }
        if message.queries.len() != 1 {
            return Err(Some(error_reply(&message, ResponseCode::Refused)));
        }
        let query = &message.queries[0];
        let name = normalize(&query.name().to_ascii());
        let qtype = query.query_type();
        Ok(Question {
            message,
            name,
            qtype,
        })
    }

    /// The answer the proxy gives itself to a name the policy does not allow.
    pub fn refusal(&self, refuse_with: RefuseWith) -> Vec<u8> {
        error_reply(
            &self.message,
            match refuse_with {
                RefuseWith::NxDomain => ResponseCode::NXDomain,
                RefuseWith::Refused => ResponseCode::Refused,
            },
        )
    }

    /// SERVFAIL: no upstream answered.
    pub fn server_failure(&self) -> Vec<u8> {
        error_reply(&self.message, ResponseCode::ServFail)
    }

    /// The largest UDP reply the asker accepts (512 without EDNS).
    pub fn max_udp_payload(&self) -> usize {
        match &self.message.edns {
            Some(e) => usize::from(e.max_payload().max(512)),
            None => 512,
        }
    }
}

/// `name` in lower case without the trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A reply with `code`, the question copied, and EDNS answered when it was asked.
fn error_reply(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut reply = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.checking_disabled = query.metadata.checking_disabled;
    reply.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        reply.set_edns(edns);
    }
    reply.to_vec().unwrap_or_default()
}

/// What an upstream answer says, judged against the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judged {
    /// Every name of the answer: the owners of its records, the CNAME targets and the
    /// HTTPS/SVCB target names.
    pub names: Vec<String>,
    /// The first name of the answer the policy does not allow, if any: the answer is refused.
    pub forbidden: Option<String>,
    /// The A and AAAA addresses of the answer section, and the HTTPS/SVCB address hints.
    pub ips: Vec<IpAddr>,
    /// The smallest TTL of the answer section's records (0 when it has none).
    pub ttl: u32,
    pub truncated: bool,
}

/// Judges an upstream answer: `allowed` says whether the policy allows a name.
pub fn judge(response: &Message, allowed: impl Fn(&str) -> bool) -> Judged {
    let mut j = Judged {
        truncated: response.metadata.truncation,
        ..Judged::default()
    };
    let mut ttl: Option<u32> = None;
    let note = |name: String, j: &mut Judged| {
        if j.forbidden.is_none() && !allowed(&name) {
            j.forbidden = Some(name.clone());
        }
        if !j.names.contains(&name) {
            j.names.push(name);
        }
    };
    for record in &response.answers {
        note(normalize(&record.name.to_ascii()), &mut j);
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        match &record.data {
            RData::A(a) => j.ips.push(IpAddr::V4(a.0)),
            RData::AAAA(a) => j.ips.push(IpAddr::V6(a.0)),
            RData::CNAME(c) => note(normalize(&c.0.to_ascii()), &mut j),
            RData::HTTPS(HTTPS(svcb)) | RData::SVCB(svcb) => {
                // A service's target is another name the program will use (and ask for);
                // its address hints may be connected to without asking: install them.
                if !svcb.target_name.is_root() {
                    note(normalize(&svcb.target_name.to_ascii()), &mut j);
                }
                for (_, value) in &svcb.svc_params {
                    match value {
                        SvcParamValue::Ipv4Hint(h) => {
                            j.ips.extend(h.0.iter().map(|a| IpAddr::V4(a.0)))
                        }
                        SvcParamValue::Ipv6Hint(h) => {
                            j.ips.extend(h.0.iter().map(|a| IpAddr::V6(a.0)))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    j.ips.sort();
    j.ips.dedup();
    j.ttl = ttl.unwrap_or(0);
    j
}

/// The answer cut down to its header and question with the TC bit set, for a UDP asker whose
/// buffer it does not fit: the asker retries over TCP (which the kernel also redirects here).
pub fn truncated(response: &Message) -> Vec<u8> {
    response.truncate().to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Name, Record};

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[test]
    fn refusals_answer_the_question_with_nxdomain_or_refused() {
        let q = Question::parse(&query("Secret.Evil.Test.")).unwrap();
        assert_eq!(q.name, "secret.evil.test");
        assert_eq!(q.qtype, RecordType::A);
        for (how, code) in [
            (RefuseWith::NxDomain, ResponseCode::NXDomain),
            (RefuseWith::Refused, ResponseCode::Refused),
        ] {
            let reply = Message::from_vec(&q.refusal(how)).unwrap();
            assert_eq!(reply.metadata.id, q.message.metadata.id);
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(reply.metadata.response_code, code);
            assert_eq!(reply.queries, q.message.queries);
        }
    }

    #[test]
    fn https_records_name_their_target_and_their_hints_are_installed() {
        use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamKey, SVCB};
        let q = Message::from_vec(&query("svc.ok.test")).unwrap();
        let mut r = q.clone();
        r.metadata.message_type = MessageType::Response;
        let name = |n: &str| Name::from_ascii(n).unwrap();
        let svcb = |target: &str| {
            SVCB::new(
                1,
                name(target),
                vec![(
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![A::new(127, 0, 0, 9)])),
                )],
            )
        };
        r.add_answer(Record::from_rdata(
            name("svc.ok.test."),
            60,
            RData::HTTPS(HTTPS(svcb("."))),
        ));
        let ok = |n: &str| n.ends_with(".ok.test");
        let j = judge(&r, ok);
        assert_eq!(j.forbidden, None);
        assert_eq!(j.ips, vec!["127.0.0.9".parse::<IpAddr>().unwrap()]);
        r.answers[0] = Record::from_rdata(
            name("svc.ok.test."),
            60,
            RData::HTTPS(HTTPS(svcb("pool.evil.test."))),
        );
        assert_eq!(judge(&r, ok).forbidden.as_deref(), Some("pool.evil.test"));
    }

    #[test]
    fn garbage_gets_formerr_and_nothing_is_forwarded() {
        let reply = Question::parse(&[0x12, 0x34, 0xff]).unwrap_err().unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn a_cname_chain_is_allowed_only_when_every_name_is() {
        let q = Message::from_vec(&query("www.ok.test")).unwrap();
        let mut r = q.clone();
        r.metadata.message_type = MessageType::Response;
        let name = |n: &str| Name::from_ascii(n).unwrap();
        r.add_answer(Record::from_rdata(
            name("www.ok.test."),
            300,
            RData::CNAME(CNAME(name("cdn.evil.test."))),
        ));
        r.add_answer(Record::from_rdata(
            name("cdn.evil.test."),
            60,
            RData::A(A::new(127, 0, 0, 9)),
        ));
        let ok = |n: &str| n.ends_with(".ok.test");
        let j = judge(&r, ok);
        assert_eq!(j.forbidden.as_deref(), Some("cdn.evil.test"));
        assert_eq!(j.names, vec!["www.ok.test", "cdn.evil.test"]);
        assert_eq!(j.ttl, 60);
        let j = judge(&r, |n: &str| ok(n) || n.ends_with(".evil.test"));
        assert_eq!(j.forbidden, None);
        assert_eq!(j.ips, vec!["127.0.0.9".parse::<IpAddr>().unwrap()]);
    }
}
