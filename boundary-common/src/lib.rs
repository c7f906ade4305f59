//! Byte layouts shared by the Boundary eBPF programs and the agent.
//!
//! Everything the kernel and user side exchange (map keys and values, the event record,
//! verdict codes) is defined here once, `#[repr(C)]`, so both sides agree on every byte.
//! With the `user` feature the types implement `aya::Pod` for use in userspace maps.
#![no_std]

/// Most port grants one prefix can carry. The policy compiler merges ranges to fit.
pub const MAX_GRANTS: usize = 16;

/// Rule id meaning "no rule matched".
pub const RULE_NONE: u32 = 0;
/// Rule id of the implicit loopback allowance (`allow_loopback: true`).
pub const RULE_LOOPBACK: u32 = u32::MAX;
/// Rule id of the implicit allowance of the session's own DNS proxy (where port 53 goes).
pub const RULE_DNS: u32 = u32::MAX - 1;

/// Protocol bits of a [`PortGrant`].
pub const PROTO_TCP: u8 = 1;
pub const PROTO_UDP: u8 = 2;

/// Event actions.
pub const ACTION_ALLOW: u8 = 0;
pub const ACTION_DENY: u8 = 1;
/// Audit mode: the connection went through but enforce mode would have denied it.
pub const ACTION_WOULD_DENY: u8 = 2;

/// Which hook produced an event.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
pub const HOOK_SOCK_CREATE: u8 = 5;
/// BPF LSM `socket_create`: a socket family, type or protocol outside the allowlist (AF_PACKET,
/// AF_VSOCK, AF_XDP, AF_ALG, ... or a raw, ping, UDP-Lite inet socket). `family`,
/// `sock_type` and `ip_protocol` say which.
pub const HOOK_LSM_SOCKET: u8 = 6;
/// cgroup setsockopt: an option that changes where packets go (IP_OPTIONS, IPV6_RTHDR, ...).
/// `ip_protocol` holds the level and `detail` the option name.
pub const HOOK_SETSOCKOPT: u8 = 7;
/// cgroup_skb egress: a packet whose real destination (IP header) no grant allows, or that
/// carries IPv4 options, an IPv6 routing header, or a transport other than TCP/UDP. `reason`
/// says which; `count` includes the events suppressed by the per-destination rate limit.
pub const HOOK_EGRESS: u8 = 8;
/// BPF LSM `bpf`: the bpf() syscall from inside the session. `detail` holds the command.
pub const HOOK_BPF: u8 = 9;
/// BPF LSM `userns_create`: a new user namespace from inside the session.
pub const HOOK_USERNS: u8 = 10;

/// Why a decision was a denial (`Event::reason`). 0 for allow events and sock_addr denials.
pub const REASON_POLICY: u8 = 0;
/// The socket family, type or protocol is not on the allowlist.
pub const REASON_SOCKET_KIND: u8 = 1;
/// A socket option that changes routing, or TCP repair.
pub const REASON_SOCKET_OPTION: u8 = 2;
/// An IPv4 packet with IP options (source routing).
pub const REASON_IP_OPTIONS: u8 = 3;
/// An IPv6 packet with a routing header.
pub const REASON_ROUTING_HEADER: u8 = 4;
/// A transport other than TCP or UDP.
pub const REASON_PROTOCOL: u8 = 5;
/// A non-first fragment or unparsable header chain (the destination port cannot be checked).
pub const REASON_MALFORMED: u8 = 6;
/// An operation a session may never perform (bpf(), user namespaces).
pub const REASON_FORBIDDEN: u8 = 7;

/// Address families as the kernel numbers them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Sessions one program set serves at once: every per-session map is indexed (or its keys
/// prefixed) by a slot below this.
pub const MAX_SESSIONS: u32 = 1024;
/// `Event::slot` of a decision in a cgroup no session owns (denied: fail closed). Its `LOST`
/// counters sit at this index too.
pub const SLOT_UNKNOWN: u32 = MAX_SESSIONS;

/// Indexes of the `LOST` per-CPU counters, per slot: counter `i` of slot `s` is at
/// `s * LOST_SLOTS + i`.
pub const LOST_DENY: u32 = 0;
pub const LOST_ALLOW: u32 = 1;
/// Allow events folded into an earlier one by the in-kernel dedup (not lost: counted in the
/// next event of the same key, `Event::count`).
pub const SUPPRESSED_ALLOW: u32 = 2;
/// Egress deny events held back by the per-destination rate limit (the packets were dropped).
pub const SUPPRESSED_EGRESS: u32 = 3;
pub const LOST_SLOTS: u32 = 4;

/// Default allow-event dedup window (`Settings::allow_window_ms == 0`).
pub const DEFAULT_ALLOW_WINDOW_MS: u32 = 1_000;
/// One egress deny event per (destination, port, protocol) per this many nanoseconds.
pub const EGRESS_EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// `Settings::mode` values.
pub const MODE_ENFORCE: u32 = 0;
pub const MODE_AUDIT: u32 = 1;

/// Ports `lo..=hi` on the protocols in `protocols`, granted by rule `rule_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortGrant {
    pub lo: u16,
    pub hi: u16,
    pub protocols: u8,
    pub _pad: [u8; 3],
    pub rule_id: u32,
}

/// Value of the allow tries: the grants of the longest matching prefix. The compiler has
/// already pushed the grants of covering, shorter prefixes down into it, so one lookup decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grants {
    pub count: u32,
    pub grants: [PortGrant; MAX_GRANTS],
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            count: 0,
            grants: [PortGrant::default(); MAX_GRANTS],
        }
    }
}

/// Per-session settings: the `SETTINGS` array, indexed by the session's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub mode: u32,
    /// Non-zero: also report allowed connections (deny events are always reported).
    pub report_allows: u32,
    /// Allow events are deduplicated per (process, hook, destination, port, protocol): one
    /// event per window, whose `count` says how many connections it stands for. 0 means
    /// [`DEFAULT_ALLOW_WINDOW_MS`]; 1 is effectively "every connection". Denials are never
    /// deduplicated by this.
    pub allow_window_ms: u32,
    /// Non-zero when the `EXEMPT` map holds cgroups (set by the loader, not by callers:
    /// `Enforcer::set_settings` keeps the loader's value).
    pub exempt: u32,
    /// The session's DNS proxy, where every TCP/UDP connect or datagram to port 53 is
    /// redirected: its IPv4 address (network byte order) and port (host order). Port 0: no
    /// proxy yet, port 53 is judged like any other port (and nothing grants it).
    pub dns_ip4: u32,
    pub dns_port4: u16,
    /// The proxy's port on ::1; 0: IPv6 nameservers go to the IPv4 proxy as ::ffff:a.b.c.d.
    pub dns_port6: u16,
}

/// Where a socket meant to send its DNS query before the redirect (`DNS_ORIGIN`, keyed by
/// socket cookie): recvmsg and getpeername put it back as the source of the proxy's replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrigin {
    /// `AF_INET` (addr\[0\] holds the address) or `AF_INET6` (all four words, as in
    /// `bpf_sock_addr::user_ip6`).
    pub family: u32,
    /// As in `bpf_sock_addr::user_port`: network byte order in the low 16 bits.
    pub port: u32,
    pub addr: [u32; 4],
}

/// One decision, written by the kernel to a ring buffer.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    pub pid_tgid: u64,
    pub uid_gid: u64,
    pub cgroup_id: u64,
    pub rule_id: u32,
    /// Host byte order.
    pub port: u16,
    pub action: u8,
    /// `PROTO_TCP`, `PROTO_UDP` or 0 for anything else.
    pub protocol: u8,
    pub family: u8,
    pub hook: u8,
    /// Socket type for sock_create events (SOCK_RAW = 3, ...).
    pub sock_type: u8,
    /// `REASON_*`: why a denial was one (0 for allows and policy denials).
    pub reason: u8,
    /// IP protocol number as the socket was created.
    pub ip_protocol: u32,
    /// IPv4 in the first four bytes, or IPv6; network byte order.
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    /// Decisions this record stands for: 1, plus identical ones suppressed since the previous
    /// record of the same key (allow dedup window, egress deny rate limit).
    pub count: u32,
    /// Hook-specific: setsockopt option name, bpf() command; 0 otherwise.
    pub detail: u32,
    /// The session (slot) the decision belongs to, or [`SLOT_UNKNOWN`]: the agent routes the
    /// record to that session's sinks.
    pub slot: u32,
    pub _pad: u32,
}

/// Key of the allow-event dedup LRU map and of the egress deny rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupKey {
    /// Process (tgid) for allow dedup; 0 for the egress rate limit.
    pub tgid: u32,
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    pub hook: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
    /// The session's slot: sessions never share a record (the key stays 32 bytes with no
    /// implicit padding: the kernel side compares and hashes it as four u64 words).
    pub slot: u32,
}

/// Value of the dedup maps: when the last event of the key was written, and how many were
/// suppressed since.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupValue {
    pub last_ns: u64,
    pub suppressed: u32,
    pub _pad: u32,
}

/// One slot of the allow-event dedup cache (`ALLOW_SEEN`, a per-CPU array indexed by a hash
/// of the key): the last key seen in this slot on this CPU, when its event was written, and
/// how many were suppressed since. A collision just replaces the slot: one more event, never
/// one fewer (the replaced slot's suppressed count then appears only in the per-CPU total,
/// `SUPPRESSED_ALLOW`, which stays exact).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupSlot {
    pub key: DedupKey,
    pub last_ns: u64,
    pub suppressed: u32,
    pub _pad: u32,
}

/// A session's use of the event rings on one CPU (`RING_SHARE`, per slot): records written
/// since `since_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingShare {
    pub since_ns: u64,
    pub written: u32,
    pub _pad: u32,
}

/// While a ring is more than half full, each session may add at most this many records per
/// CPU and [`RING_SHARE_WINDOW_NS`]; the rest of its records are counted lost (for it alone).
/// A session that floods the rings thus cannot take the other half from the others.
pub const RING_SHARE_RECORDS: u32 = 256;
pub const RING_SHARE_WINDOW_NS: u64 = 100_000_000;

/// Slots of the allow-event dedup cache, per CPU (a power of two; 48 KiB per CPU).
pub const ALLOW_SEEN_SLOTS: u32 = 1024;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data with explicit padding fields, valid for any bit pattern.
    unsafe impl aya::Pod for super::PortGrant {}
    unsafe impl aya::Pod for super::Grants {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::DedupKey {}
    unsafe impl aya::Pod for super::DedupValue {}
    unsafe impl aya::Pod for super::DedupSlot {}
    unsafe impl aya::Pod for super::DnsOrigin {}
    unsafe impl aya::Pod for super::RingShare {}
}

const _: () = assert!(core::mem::size_of::<DedupKey>() == 32);
const _: () = assert!(core::mem::size_of::<Event>() == 96);
