//! Boundary's own DNS proxy: the only nameserver a confined program can reach.
//!
//! The kernel programs redirect every TCP and UDP connect or datagram to port 53 of a session
//! (whatever address it names) to that session's [`DnsProxy`], on 127.0.0.1 (and ::1) at an
//! ephemeral port, and make its replies look like they came from the nameserver the program
//! asked. The proxy
//! - answers a name only when the policy allows it (exact names and `*.` wildcards, any
//!   port): it forwards the query unchanged to the session's upstream nameservers (UDP, with
//!   TCP when the answer is truncated; TCP queries over TCP), checks that every name of the
//!   answer (its CNAME chain) is allowed too, and **before** releasing the answer has the
//!   session's policy task install the answer's addresses in the kernel maps (so the program
//!   can connect the moment it has the answer), for max(TTL, `dns.min_ttl`) plus
//!   `dns.grace_period`;
//! - answers anything else itself, NXDOMAIN (or REFUSED, `dns.refuse_with`), without a packet
//!   leaving the host: a denied name can neither be resolved nor used to carry data out;
//! - reports each refusal as a `boundary.dns` event (and each allowed name once per TTL); in
//!   audit mode it forwards everything and reports `would_deny`.
//!
//! [`answer`] is the pure part (what to do with a query, whether an answer is acceptable),
//! [`learned`] the per-session record of what the proxy let through, [`proxy`] the sockets.

pub mod answer;
pub mod learned;
pub mod proxy;

pub use learned::{Learned, LearnedNames};
pub use proxy::{DnsProxy, ProxyContext, RunningProxy};
