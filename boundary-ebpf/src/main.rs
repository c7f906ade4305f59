//! Boundary's kernel programs. "Only what we know" leaves a session:
//!
//! - cgroup sock_addr hooks (connect4/6, sendmsg4/6) allow a connection or datagram only when
//!   the destination's longest matching prefix grants its port and protocol;
//! - cgroup sock_create allows only TCP, MPTCP and UDP inet sockets;
//! - BPF LSM (attached per cgroup, so it never touches the rest of the host) allows only
//!   AF_UNIX, AF_NETLINK and those inet sockets, and refuses bpf() and new user namespaces;
//! - cgroup setsockopt refuses the options that change where a packet goes (source routing,
//!   routing headers, IPsec policies, transparent proxying, TCP repair);
//! - cgroup_skb egress is the second line: every packet's real destination (IP header) must be
//!   granted, and packets with IPv4 options, an IPv6 routing header or another transport are
//!   dropped, whatever path they took (control messages, MPTCP subflows, ...).
//!
//! - port 53 (TCP and UDP, any address) is redirected to the session's DNS proxy, and its
//!   replies made to look like they came from the nameserver asked ([`dns`]).
//!
//! One loaded set of programs and maps serves every session of an agent: the programs are
//! attached to each session's cgroup, and find the session in the cgroup local storage of
//! that attachment (`SLOT`: the session's slot + 1, written by the agent right after it
//! attaches). The attachment, not the calling task, names the session: a socket's programs
//! are its cgroup's, whoever calls (a kernel worker opening an MPTCP subflow, a process that
//! received the socket), and a cgroup below a session's runs the session's programs with the
//! session's storage. Every per-session map is indexed by the slot or has it in its keys (the
//! allow tries' keys start with it). Storage that holds no slot yet is denied everything
//! (fail closed).
//!
//! Every decision is reported through ring buffers: denials always (egress ones rate-limited
//! per destination, with the suppressed ones counted), allows deduplicated per (process,
//! destination) and time window. Entry points only translate the context into a [`Record`]
//! and the verdict into a return code.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_uid, bpf_ktime_get_coarse_ns,
            bpf_ktime_get_ns, bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, lsm_cgroup, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, SockoptContext},
};
// Deprecated in favour of BPF_MAP_TYPE_CGRP_STORAGE, which is keyed by a cgroup the program
// must name; this one is the storage of the attachment that runs, which is what we need.
#[allow(deprecated)]
use aya_ebpf::maps::CgroupStorage;
use boundary_common::*;

mod dns;

/// Prefixes of all sessions together (entries are allocated as they are inserted).
const MAX_PREFIXES: u32 = 1 << 20;

/// Keys: the session's slot (big-endian, 32 bits of prefix) then the address, so one
/// longest-prefix lookup stays inside the session's own entries.
#[map]
static ALLOW_V4: LpmTrie<[u8; 8], Grants> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 20], Grants> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
/// Per slot.
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(MAX_SESSIONS, 0);
/// Per attachment (cgroup and attach type): the slot of the session whose cgroup it is, + 1
/// (0: not written yet).
#[allow(deprecated)]
#[map]
static SLOT: CgroupStorage<u32> = CgroupStorage::new();
/// Denials get their own ring buffer so that a flood of allowed connections can never
/// crowd them out. Sizes are set by the loader (one set serves every session of an agent).
#[map]
static DENY_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static ALLOW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
/// `LOST_*` and `SUPPRESSED_*` counters (boundary-common), per slot (and one row for
/// [`SLOT_UNKNOWN`]), so that every session's own count stays exact.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries((MAX_SESSIONS + 1) * LOST_SLOTS, 0);
/// Per slot (and one row for [`SLOT_UNKNOWN`]) and CPU: records written in the current window
/// (the fair share of a nearly full ring, see [`over_share`]).
#[map]
static RING_SHARE: PerCpuArray<RingShare> = PerCpuArray::with_max_entries(MAX_SESSIONS + 1, 0);
/// Cgroups (by id) whose processes pass untouched: a confined existing cgroup's own control
/// processes (whole-workspace mode). Consulted only when `Settings::exempt` is set.
#[map]
static EXEMPT: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);
/// Allow-event dedup: last event per (tgid, hook, destination, port, protocol), in a
/// direct-mapped per-CPU cache: an inlined array lookup and a compare, no hashing helper and
/// no shared cache line on the connect path.
#[map]
static ALLOW_SEEN: PerCpuArray<DedupSlot> = PerCpuArray::with_max_entries(ALLOW_SEEN_SLOTS, 0);
/// Egress deny-event rate limit: last event per (destination, port, protocol, reason).
#[map]
static EGRESS_SEEN: LruHashMap<DedupKey, DedupValue> = LruHashMap::with_max_entries(1_024, 0);

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// `bpf_ringbuf_submit` / `bpf_ringbuf_query` flags (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
/// Pending bytes in ALLOW_EVENTS above which a submit wakes the agent.
const ALLOW_WAKEUP_BYTES: u64 = 1 << 18;

const AF_UNIX: u32 = 1;
const AF_NETLINK: u32 = 16;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// `SOCK_TYPE_MASK`: the type without SOCK_NONBLOCK / SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u32 = 0xf;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_MPTCP: u32 = 262;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;

/// What a decision is about; becomes an [`Event`].
struct Record {
    family: u8,
    addr: [u8; 16],
    port: u16,
    protocol: u8,
    ip_protocol: u32,
    hook: u8,
    sock_type: u8,
    reason: u8,
    detail: u32,
}

impl Record {
    const fn empty(hook: u8, reason: u8) -> Record {
        Record {
            family: 0,
            addr: [0; 16],
            port: 0,
            protocol: 0,
            ip_protocol: 0,
            hook,
            sock_type: 0,
            reason,
            detail: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------
// sock_addr: the first line, at connect() and sendmsg()

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    if dns::redirect4(&ctx) {
        return ALLOW;
    }
    sock_addr(&record_v4(&ctx, HOOK_CONNECT4))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    if dns::redirect4(&ctx) {
        return ALLOW;
    }
    sock_addr(&record_v4(&ctx, HOOK_SENDMSG4))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    if dns::redirect6(&ctx) {
        return ALLOW;
    }
    sock_addr(&record_v6(&ctx, HOOK_CONNECT6))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    if dns::redirect6(&ctx) {
        return ALLOW;
    }
    sock_addr(&record_v6(&ctx, HOOK_SENDMSG6))
}

#[inline(always)]
fn sock_addr(rec: &Record) -> i32 {
    let Some(slot) = session_slot() else {
        report(
            rec,
            Decision {
                slot: SLOT_UNKNOWN,
                action: ACTION_DENY,
                rule_id: RULE_NONE,
                count: 1,
            },
            Who::Current,
        );
        return DENY;
    };
    let s = settings(slot);
    if exempt_current(&s) {
        return ALLOW;
    }
    let rule = lookup(slot, rec);
    let action = if rule != RULE_NONE {
        ACTION_ALLOW
    } else if s.mode == MODE_AUDIT {
        ACTION_WOULD_DENY
    } else {
        ACTION_DENY
    };
    if action == ACTION_ALLOW {
        if s.report_allows != 0 {
            if let Some(count) = allow_dedup(slot, rec, &s) {
                report(
                    rec,
                    Decision {
                        slot: slot,
                        action: action,
                        rule_id: rule,
                        count: count,
                    },
                    Who::Current,
                );
            }
        }
    } else {
        report(
            rec,
            Decision {
                slot: slot,
                action: action,
                rule_id: rule,
                count: 1,
            },
            Who::Current,
        );
    }
    verdict(action != ACTION_DENY)
}

fn transport(ctx: &bpf_sock_addr) -> (u8, u32) {
    let ip_protocol = ctx.protocol;
    let protocol = match (ctx.type_, ip_protocol) {
        (SOCK_STREAM, 0 | IPPROTO_TCP | IPPROTO_MPTCP) => PROTO_TCP,
        (SOCK_DGRAM, 0 | IPPROTO_UDP) => PROTO_UDP,
        _ => 0,
    };
    (protocol, ip_protocol)
}

fn record_v4(ctx: &SockAddrContext, hook: u8) -> Record {
    // SAFETY: the kernel hands a valid bpf_sock_addr to sock_addr programs.
    let sa = unsafe { &*ctx.sock_addr };
    let mut rec = Record::empty(hook, REASON_POLICY);
    let ip = sa.user_ip4.to_ne_bytes();
    rec.addr[0] = ip[0];
    rec.addr[1] = ip[1];
    rec.addr[2] = ip[2];
    rec.addr[3] = ip[3];
    let (protocol, ip_protocol) = transport(sa);
    rec.family = AF_INET;
    rec.port = u16::from_be(sa.user_port as u16);
    rec.protocol = protocol;
    rec.ip_protocol = ip_protocol;
    rec
}

fn record_v6(ctx: &SockAddrContext, hook: u8) -> Record {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    // Four 32-bit loads: the only access width the kernel allows on user_ip6.
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let (protocol, ip_protocol) = transport(sa);
    let mut rec = Record::empty(hook, REASON_POLICY);
    rec.port = u16::from_be(sa.user_port as u16);
    rec.protocol = protocol;
    rec.ip_protocol = ip_protocol;
    // ::ffff:a.b.c.d is an IPv4 destination in disguise: judge it by the IPv4 policy.
    if words[0] == 0 && words[1] == 0 && words[2] == u32::from_be(0x0000_ffff) {
        let ip = words[3].to_ne_bytes();
        rec.addr[0] = ip[0];
        rec.addr[1] = ip[1];
        rec.addr[2] = ip[2];
        rec.addr[3] = ip[3];
        rec.family = AF_INET;
        return rec;
    }
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        rec.addr[i * 4] = b[0];
        rec.addr[i * 4 + 1] = b[1];
        rec.addr[i * 4 + 2] = b[2];
        rec.addr[i * 4 + 3] = b[3];
        i += 1;
    }
    rec.family = AF_INET6;
    rec
}

// ---------------------------------------------------------------------------------------
// Socket creation: an allowlist, twice (cgroup sock_create for inet, LSM for every family)

/// TCP, MPTCP and UDP: the only inet sockets a session may create.
#[inline(always)]
fn inet_kind_allowed(sock_type: u32, protocol: u32) -> bool {
    matches!(
        (sock_type & SOCK_TYPE_MASK, protocol),
        (SOCK_STREAM, 0 | IPPROTO_TCP | IPPROTO_MPTCP) | (SOCK_DGRAM, 0 | IPPROTO_UDP)
    )
}

/// Raw, ping (ICMP), UDP-Lite, SCTP, ... inet sockets are refused at creation.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock to sock_create programs.
    let (family, sock_type, ip_protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    if inet_kind_allowed(sock_type, ip_protocol) {
        return ALLOW;
    }
    let mut rec = Record::empty(HOOK_SOCK_CREATE, REASON_SOCKET_KIND);
    rec.family = family as u8;
    rec.sock_type = sock_type as u8;
    rec.ip_protocol = ip_protocol;
    refuse(&rec)
}

/// Every socket family the inet hooks never see: only AF_UNIX, AF_NETLINK (glibc's
/// getaddrinfo asks NETLINK_ROUTE for the interfaces) and the inet allowlist pass.
#[lsm_cgroup(hook = "socket_create")]
pub fn lsm_socket_create(ctx: LsmContext) -> i32 {
    let family: u32 = ctx.arg(0);
    let sock_type: u32 = ctx.arg(1);
    let protocol: u32 = ctx.arg(2);
    let kern: u32 = ctx.arg(3);
    if kern != 0 {
        // Sockets the kernel creates for itself (MPTCP subflows, ...).
        return ALLOW;
    }
    let allowed = match family {
        AF_UNIX | AF_NETLINK => true,
        2 | 10 => inet_kind_allowed(sock_type, protocol),
        _ => false,
    };
    if allowed {
        return ALLOW;
    }
    let Some(slot) = session_slot() else {
        return refuse_unknown(&Record::empty(HOOK_LSM_SOCKET, REASON_SOCKET_KIND));
    };
    let s = settings(slot);
    // In audit mode the inet socket is created and cgroup sock_create reports it; one event.
    if (family == 2 || family == 10) && s.mode == MODE_AUDIT {
        return ALLOW;
    }
    let mut rec = Record::empty(HOOK_LSM_SOCKET, REASON_SOCKET_KIND);
    rec.family = family as u8;
    rec.sock_type = (sock_type & SOCK_TYPE_MASK) as u8;
    rec.ip_protocol = protocol;
    refuse_with(slot, &rec, &s)
}

/// No bpf() from inside: no loading, attaching, detaching or reading pinned objects. Only the
/// command (argument 0) is read: the hook's later arguments differ between kernel versions.
#[lsm_cgroup(hook = "bpf")]
pub fn lsm_bpf(ctx: LsmContext) -> i32 {
    let cmd: u32 = ctx.arg(0);
    let mut rec = Record::empty(HOOK_BPF, REASON_FORBIDDEN);
    rec.detail = cmd;
    refuse(&rec)
}

/// No new user namespaces: they would hand the process every capability inside them.
#[lsm_cgroup(hook = "userns_create")]
pub fn lsm_userns_create(_ctx: LsmContext) -> i32 {
    refuse(&Record::empty(HOOK_USERNS, REASON_FORBIDDEN))
}

// ---------------------------------------------------------------------------------------
// setsockopt: options that change where packets go

const SOL_IP: i32 = 0;
const SOL_SOCKET: i32 = 1;
const SOL_TCP: i32 = 6;
const SOL_UDP: i32 = 17;
const SOL_IPV6: i32 = 41;

/// Options refused inside a session, by level.
#[inline(always)]
fn routing_option(level: i32, optname: i32) -> bool {
    match level {
        // IP_HDRINCL, IP_OPTIONS (LSRR/SSRR), IP_IPSEC_POLICY, IP_XFRM_POLICY, IP_TRANSPARENT
        SOL_IP => matches!(optname, 3 | 4 | 16 | 17 | 19),
        // IPV6_ADDRFORM, IPV6_2292HOPOPTS/DSTOPTS/RTHDR/PKTOPTIONS, IPV6_IPSEC_POLICY,
        // IPV6_XFRM_POLICY, IPV6_HOPOPTS, IPV6_RTHDRDSTOPTS, IPV6_RTHDR, IPV6_DSTOPTS,
        // IPV6_TRANSPARENT
        SOL_IPV6 => matches!(
            optname,
            1 | 3 | 4 | 5 | 6 | 34 | 35 | 54 | 55 | 57 | 59 | 75
        ),
        // TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS, TCP_REPAIR_WINDOW:
        // a repaired socket is established without a handshake the egress check would see.
        SOL_TCP => matches!(optname, 19 | 20 | 21 | 22 | 29),
        // SO_MARK: policy routing by firewall mark.
        SOL_SOCKET => optname == 36,
        // UDP_ENCAP
        SOL_UDP => optname == 100,
        _ => false,
    }
}

#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sockopt (and its socket) to sockopt programs.
    let (level, optname) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    if !routing_option(level, optname) {
        return ALLOW;
    }
    let (family, sock_type) = unsafe {
        let sk = (*ctx.sockopt).__bindgen_anon_1.sk;
        ((*sk).family, (*sk).type_)
    };
    let mut rec = Record::empty(HOOK_SETSOCKOPT, REASON_SOCKET_OPTION);
    rec.family = family as u8;
    rec.sock_type = sock_type as u8;
    rec.ip_protocol = level as u32;
    rec.detail = optname as u32;
    refuse(&rec)
}

// ---------------------------------------------------------------------------------------
// egress: the second line, every packet's real destination

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    let Some(slot) = session_slot() else {
        let rec = Record::empty(HOOK_EGRESS, REASON_POLICY);
        report(
            &rec,
            Decision {
                slot: SLOT_UNKNOWN,
                action: ACTION_DENY,
                rule_id: RULE_NONE,
                count: 1,
            },
            Who::Packet(&ctx),
        );
        return DENY;
    };
    let s = settings(slot);
    if s.exempt != 0 {
        // SAFETY: valid skb.
        let id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
        // SAFETY: read-only lookup of a plain value.
        if unsafe { EXEMPT.get(&id) }.is_some() {
            return ALLOW;
        }
    }
    // SAFETY: valid skb; `protocol` is the L3 protocol in network byte order.
    let l3 = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16) as u32;
    let mut rec = Record::empty(HOOK_EGRESS, REASON_POLICY);
    let check = match l3 {
        ETH_P_IP => match fast_v4(&ctx, &mut rec) {
            Some(check) => check,
            None => parse_v4(&ctx, &mut rec),
        },
        ETH_P_IPV6 => match fast_v6(&ctx, &mut rec) {
            Some(check) => check,
            None => parse_v6(&ctx, &mut rec),
        },
        // Not IP (nothing else leaves through inet sockets).
        _ => return ALLOW,
    };
    match check {
        Check::Pass => ALLOW,
        Check::Destination => {
            if lookup(slot, &rec) != RULE_NONE {
                ALLOW
            } else {
                egress_refuse(&ctx, slot, &rec, &s)
            }
        }
        Check::Refuse => egress_refuse(&ctx, slot, &rec, &s),
    }
}

enum Check {
    /// Nothing to check (a TCP segment after the handshake's SYN).
    Pass,
    /// Look the destination up in the allow tries.
    Destination,
    /// Refuse: `rec.reason` says why.
    Refuse,
}

/// The common case without a helper call: a TCP or UDP packet whose headers are in the linear
/// part of the skb (always, for locally generated ones), IPv4 without options. None: take the
/// careful path.
#[inline(always)]
fn fast_v4(ctx: &SkBuffContext, rec: &mut Record) -> Option<Check> {
    // SAFETY: valid skb; the packet bytes are read only after the bounds check the verifier
    // also demands.
    unsafe {
        let data = (*ctx.skb.skb).data as usize;
        let end = (*ctx.skb.skb).data_end as usize;
        if data + 34 > end {
            return None;
        }
        let h = data as *const u8;
        // IHL 5, no fragment offset, TCP or UDP; anything else goes the careful way.
        if *h != 0x45 || *h.add(6) & 0x1f != 0 || *h.add(7) != 0 {
            return None;
        }
        let proto = *h.add(9) as u32;
        let l4 = h.add(20);
        if proto == IPPROTO_TCP {
            // Only a connection's first SYN decides anything (see `transport_check`).
            if *l4.add(13) & 0x12 != 0x02 {
                return Some(Check::Pass);
            }
            rec.protocol = PROTO_TCP;
        } else if proto == IPPROTO_UDP {
            rec.protocol = PROTO_UDP;
        } else {
            return None;
        }
        rec.family = AF_INET;
        rec.ip_protocol = proto;
        rec.addr[0] = *h.add(16);
        rec.addr[1] = *h.add(17);
        rec.addr[2] = *h.add(18);
        rec.addr[3] = *h.add(19);
        rec.port = u16::from_be_bytes([*l4.add(2), *l4.add(3)]);
        Some(Check::Destination)
    }
}

/// As [`fast_v4`] for IPv6 without extension headers.
#[inline(always)]
fn fast_v6(ctx: &SkBuffContext, rec: &mut Record) -> Option<Check> {
    // SAFETY: as in `fast_v4`.
    unsafe {
        let data = (*ctx.skb.skb).data as usize;
        let end = (*ctx.skb.skb).data_end as usize;
        if data + 54 > end {
            return None;
        }
        let h = data as *const u8;
        let proto = *h.add(6) as u32;
        let l4 = h.add(40);
        if proto == IPPROTO_TCP {
            if *l4.add(13) & 0x12 != 0x02 {
                return Some(Check::Pass);
            }
            rec.protocol = PROTO_TCP;
        } else if proto == IPPROTO_UDP {
            rec.protocol = PROTO_UDP;
        } else {
            return None;
        }
        rec.family = AF_INET6;
        rec.ip_protocol = proto;
        let mut i = 0;
        while i < 16 {
            rec.addr[i] = *h.add(24 + i);
            i += 1;
        }
        rec.port = u16::from_be_bytes([*l4.add(2), *l4.add(3)]);
        Some(Check::Destination)
    }
}

fn parse_v4(ctx: &SkBuffContext, rec: &mut Record) -> Check {
    let Ok(h) = ctx.load::<[u8; 20]>(0) else {
        rec.reason = REASON_MALFORMED;
        return Check::Refuse;
    };
    rec.family = AF_INET;
    rec.addr[0] = h[16];
    rec.addr[1] = h[17];
    rec.addr[2] = h[18];
    rec.addr[3] = h[19];
    rec.ip_protocol = h[9] as u32;
    if h[0] & 0x0f != 5 {
        // IP options: LSRR/SSRR source routing among them.
        rec.reason = REASON_IP_OPTIONS;
        return Check::Refuse;
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        rec.reason = REASON_MALFORMED;
        return Check::Refuse;
    }
    transport_check(ctx, rec, 20)
}

fn parse_v6(ctx: &SkBuffContext, rec: &mut Record) -> Check {
    let Ok(h) = ctx.load::<[u8; 40]>(0) else {
        rec.reason = REASON_MALFORMED;
        return Check::Refuse;
    };
    rec.family = AF_INET6;
    let mut i = 0;
    while i < 16 {
        rec.addr[i] = h[24 + i];
        i += 1;
    }
    let mut next = h[6];
    let mut offset: u32 = 40;
    let mut hops = 0;
    // Hop-by-hop and destination options are walked; a routing header is refused.
    while hops < 6 {
        match next {
            0 | 60 => {
                let Ok(ext) = ctx.load::<[u8; 2]>(offset as usize) else {
                    rec.reason = REASON_MALFORMED;
                    return Check::Refuse;
                };
                next = ext[0];
                offset += (ext[1] as u32 + 1) * 8;
            }
            43 => {
                rec.ip_protocol = 43;
                rec.reason = REASON_ROUTING_HEADER;
                return Check::Refuse;
            }
            44 => {
                let Ok(ext) = ctx.load::<[u8; 4]>(offset as usize) else {
                    rec.reason = REASON_MALFORMED;
                    return Check::Refuse;
                };
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    rec.reason = REASON_MALFORMED;
                    return Check::Refuse;
                }
                next = ext[0];
                offset += 8;
            }
            _ => break,
        }
        offset &= 0x3ff;
        hops += 1;
    }
    rec.ip_protocol = next as u32;
    if matches!(next, 0 | 60 | 43 | 44) {
        rec.reason = REASON_MALFORMED;
        return Check::Refuse;
    }
    transport_check(ctx, rec, offset)
}

fn transport_check(ctx: &SkBuffContext, rec: &mut Record, offset: u32) -> Check {
    match rec.ip_protocol {
        IPPROTO_TCP => {
            rec.protocol = PROTO_TCP;
            let Ok(t) = ctx.load::<[u8; 14]>(offset as usize) else {
                rec.reason = REASON_MALFORMED;
                return Check::Refuse;
            };
            rec.port = u16::from_be_bytes([t[2], t[3]]);
            // A TCP flow's destination is fixed by its first SYN; what follows (and every
            // reply of a passive socket, SYN-ACK included) goes where that SYN went.
            if t[13] & 0x12 == 0x02 {
                Check::Destination
            } else {
                Check::Pass
            }
        }
        IPPROTO_UDP => {
            rec.protocol = PROTO_UDP;
            let Ok(u) = ctx.load::<[u8; 4]>(offset as usize) else {
                rec.reason = REASON_MALFORMED;
                return Check::Refuse;
            };
            rec.port = u16::from_be_bytes([u[2], u[3]]);
            Check::Destination
        }
        _ => {
            rec.reason = REASON_PROTOCOL;
            Check::Refuse
        }
    }
}

/// Drops (enforce) or passes (audit) a packet, with a deny event at most once per
/// destination and second; the others are counted, never silently dropped.
fn egress_refuse(ctx: &SkBuffContext, slot: u32, rec: &Record, s: &Settings) -> i32 {
    let audit = s.mode == MODE_AUDIT;
    let action = if audit {
        ACTION_WOULD_DENY
    } else {
        ACTION_DENY
    };
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = DedupKey {
        tgid: 0,
        port: rec.port,
        family: rec.family,
        protocol: rec.ip_protocol as u8,
        hook: HOOK_EGRESS,
        _pad: [rec.reason, 0, 0],
        addr: rec.addr,
        slot,
    };
    let count = match EGRESS_SEEN.get_ptr_mut(&key) {
        Some(v) => {
            // SAFETY: a value of this map, valid while the program runs.
            let v = unsafe { &mut *v };
            if now.wrapping_sub(v.last_ns) < EGRESS_EVENT_INTERVAL_NS {
                atomic_add_u32(&mut v.suppressed);
                count_slot(slot, SUPPRESSED_EGRESS);
                return verdict(audit);
            }
            let n = v.suppressed;
            v.suppressed = 0;
            v.last_ns = now;
            n + 1
        }
        None => {
            let _ = EGRESS_SEEN.insert(
                &key,
                &DedupValue {
                    last_ns: now,
                    suppressed: 0,
                    _pad: 0,
                },
                0,
            );
            1
        }
    };
    report(
        rec,
        Decision {
            slot: slot,
            action: action,
            rule_id: RULE_NONE,
            count: count,
        },
        Who::Packet(ctx),
    );
    verdict(audit)
}

// ---------------------------------------------------------------------------------------
// Shared pieces

/// The verifier insists on a return value of exactly 0 or 1 (TOOLCHAIN.md), so the bool is
/// masked explicitly instead of trusting LLVM's byte spill.
#[inline(always)]
fn verdict(allow: bool) -> i32 {
    (allow as i32) & 1
}

#[inline(always)]
fn settings(slot: u32) -> Settings {
    match SETTINGS.get(slot) {
        Some(s) => *s,
        None => Settings::default(),
    }
}

/// The session whose cgroup this attachment belongs to. None: not written yet.
#[inline(always)]
fn session_slot() -> Option<u32> {
    #[allow(deprecated)]
    let ptr = SLOT.get_ptr_mut();
    // SAFETY: bpf_get_local_storage never fails; the value lives as long as the attachment.
    let stored = unsafe { *ptr };
    if stored == 0 || stored > MAX_SESSIONS {
        return None;
    }
    Some(stored - 1)
}

#[inline(always)]
fn exempt_current(s: &Settings) -> bool {
    if s.exempt == 0 {
        return false;
    }
    // SAFETY: plain helper; read-only lookup.
    let id = unsafe { bpf_get_current_cgroup_id() };
    unsafe { EXEMPT.get(&id) }.is_some()
}

/// Denies (enforce) or reports a would-deny (audit) for a non-packet hook.
#[inline(always)]
fn refuse(rec: &Record) -> i32 {
    match session_slot() {
        Some(slot) => refuse_with(slot, rec, &settings(slot)),
        None => refuse_unknown(rec),
    }
}

/// A cgroup no session owns: denied, whatever the mode.
#[inline(always)]
fn refuse_unknown(rec: &Record) -> i32 {
    report(
        rec,
        Decision {
            slot: SLOT_UNKNOWN,
            action: ACTION_DENY,
            rule_id: RULE_NONE,
            count: 1,
        },
        Who::Current,
    );
    DENY
}

fn refuse_with(slot: u32, rec: &Record, s: &Settings) -> i32 {
    if exempt_current(s) {
        return ALLOW;
    }
    let audit = s.mode == MODE_AUDIT;
    let action = if audit {
        ACTION_WOULD_DENY
    } else {
        ACTION_DENY
    };
    report(
        rec,
        Decision {
            slot: slot,
            action: action,
            rule_id: RULE_NONE,
            count: 1,
        },
        Who::Current,
    );
    if audit {
        ALLOW
    } else {
        DENY
    }
}

/// The rule granting `rec`'s destination, port and protocol, or RULE_NONE.
#[inline(always)]
fn lookup(slot: u32, rec: &Record) -> u32 {
    let s = slot.to_be_bytes();
    let grants = if rec.family == AF_INET {
        let key = [
            s[0],
            s[1],
            s[2],
            s[3],
            rec.addr[0],
            rec.addr[1],
            rec.addr[2],
            rec.addr[3],
        ];
        ALLOW_V4.get(Key::new(64, key))
    } else {
        let mut key = [0u8; 20];
        key[0] = s[0];
        key[1] = s[1];
        key[2] = s[2];
        key[3] = s[3];
        let mut i = 0;
        while i < 16 {
            key[4 + i] = rec.addr[i];
            i += 1;
        }
        ALLOW_V6.get(Key::new(160, key))
    };
    match grants {
        Some(g) => matching_rule(g, rec.port, rec.protocol),
        None => RULE_NONE,
    }
}

fn matching_rule(grants: &Grants, port: u16, protocol: u8) -> u32 {
    let count = grants.count as usize;
    let mut i = 0;
    while i < MAX_GRANTS {
        if i >= count {
            break;
        }
        let g = &grants.grants[i];
        if g.protocols & protocol != 0 && g.lo <= port && port <= g.hi {
            return g.rule_id;
        }
        i += 1;
    }
    RULE_NONE
}

/// Some(count) when an allow event is due (count = 1 + the ones folded into it), None when
/// an event for the same process and destination was written on this CPU within the window.
#[inline(always)]
fn allow_dedup(slot: u32, rec: &Record, s: &Settings) -> Option<u32> {
    let window_ms = if s.allow_window_ms == 0 {
        DEFAULT_ALLOW_WINDOW_MS
    } else {
        s.allow_window_ms
    };
    // Coarse time (the tick) is plenty for a window of a second, and cheaper.
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let key = DedupKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        port: rec.port,
        family: rec.family,
        protocol: rec.protocol,
        hook: rec.hook,
        _pad: [0; 3],
        addr: rec.addr,
        slot,
    };
    // The key as four words: a branch-free hash and compare (cheap to run and to verify).
    let w = key_words(&key);
    let mut h = w[0] ^ w[1].rotate_left(17) ^ w[2].rotate_left(31) ^ w[3].rotate_left(47);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    let Some(cell) = ALLOW_SEEN.get_ptr_mut((h as u32) & (ALLOW_SEEN_SLOTS - 1)) else {
        return Some(1);
    };
    // SAFETY: this CPU's slot; programs run with migration disabled.
    let cell = unsafe { &mut *cell };
    let held = key_words(&cell.key);
    let same = ((held[0] ^ w[0]) | (held[1] ^ w[1]) | (held[2] ^ w[2]) | (held[3] ^ w[3])) == 0;
    if same && now.wrapping_sub(cell.last_ns) < window_ms as u64 * 1_000_000 {
        cell.suppressed += 1;
        count_slot(slot, SUPPRESSED_ALLOW);
        return None;
    }
    let count = if same { cell.suppressed + 1 } else { 1 };
    cell.key = key;
    cell.last_ns = now;
    cell.suppressed = 0;
    Some(count)
}

#[inline(always)]
fn key_words(key: &DedupKey) -> [u64; 4] {
    // SAFETY: DedupKey is 32 bytes of plain data with no implicit padding.
    unsafe { core::ptr::read_unaligned((key as *const DedupKey).cast::<[u64; 4]>()) }
}

/// Per-key count of suppressed events. Not atomic (the bpf target has no atomic RMW in
/// Rust's core): two CPUs hitting the same key at once may lose one increment of this
/// per-key figure; the per-CPU totals of [`count_slot`] are exact.
#[inline(always)]
fn atomic_add_u32(v: &mut u32) {
    *v = v.wrapping_add(1);
}

#[inline(always)]
fn count_slot(slot: u32, counter: u32) {
    let slot = if slot < MAX_SESSIONS {
        slot
    } else {
        SLOT_UNKNOWN
    };
    if let Some(c) = LOST.get_ptr_mut(slot * LOST_SLOTS + counter) {
        // SAFETY: per-CPU slot, and BPF programs run with migration disabled.
        unsafe { *c += 1 };
    }
}

/// Whose decision an event records.
enum Who<'a> {
    /// The current task made the call (socket, connect, sendmsg, setsockopt, bpf, ...).
    Current,
    /// A packet: its socket's cgroup and owner; the current task only if it belongs to that
    /// cgroup (a packet can leave from softirq context on behalf of nobody in particular).
    Packet(&'a SkBuffContext),
}

/// The outcome an event records (BPF functions take at most five arguments).
struct Decision {
    slot: u32,
    action: u8,
    rule_id: u32,
    count: u32,
}

fn report(rec: &Record, d: Decision, who: Who) {
    let Decision {
        slot,
        action,
        rule_id,
        count,
    } = d;
    let allowed = action == ACTION_ALLOW;
    let ring = if allowed { &ALLOW_EVENTS } else { &DENY_EVENTS };
    if over_share(ring, slot) {
        count_slot(slot, if allowed { LOST_ALLOW } else { LOST_DENY });
        return;
    }
    let Some(mut entry) = ring.reserve::<Event>(0) else {
        count_slot(slot, if allowed { LOST_ALLOW } else { LOST_DENY });
        return;
    };
    // SAFETY: helpers allowed in these program types on our kernels (TOOLCHAIN.md).
    let (ktime_ns, current_cgroup) = unsafe { (bpf_ktime_get_ns(), bpf_get_current_cgroup_id()) };
    let (cgroup_id, pid_tgid, uid_gid, comm) = match who {
        Who::Current => (
            current_cgroup,
            bpf_get_current_pid_tgid(),
            bpf_get_current_uid_gid(),
            bpf_get_current_comm().unwrap_or([0; 16]),
        ),
        Who::Packet(ctx) => {
            // SAFETY: valid skb.
            let (sock_cgroup, uid) = unsafe {
                (
                    bpf_skb_cgroup_id(ctx.skb.skb),
                    bpf_get_socket_uid(ctx.skb.skb),
                )
            };
            if sock_cgroup == current_cgroup {
                (
                    sock_cgroup,
                    bpf_get_current_pid_tgid(),
                    bpf_get_current_uid_gid(),
                    bpf_get_current_comm().unwrap_or([0; 16]),
                )
            } else {
                (sock_cgroup, 0, uid as u64, [0; 16])
            }
        }
    };
    entry.write(Event {
        ktime_ns,
        pid_tgid,
        uid_gid,
        cgroup_id,
        rule_id,
        port: rec.port,
        action,
        protocol: rec.protocol,
        family: rec.family,
        hook: rec.hook,
        sock_type: rec.sock_type,
        reason: rec.reason,
        ip_protocol: rec.ip_protocol,
        addr: rec.addr,
        comm,
        count,
        detail: rec.detail,
        slot,
        _pad: 0,
    });
    // Waking the agent costs the connecting thread an irq_work and a wake-up. Denials wake
    // it at once (they are rare and wanted promptly); allow events are collected by the
    // agent's periodic drain, with a wake-up only when a quarter of the ring is pending.
    let flags = if !allowed {
        0
    } else if ring.query(BPF_RB_AVAIL_DATA) > ALLOW_WAKEUP_BYTES {
        // Adaptive: the kernel wakes the agent only if it is not already reading.
        0
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// Whether this session has had its share of a ring that is more than half full: then each
/// session may add [`RING_SHARE_RECORDS`] records per CPU and window, so one that floods
/// cannot fill the other half, which stays for the rest. Its own losses are counted for it.
#[inline(always)]
fn over_share(ring: &RingBuf, slot: u32) -> bool {
    let row = if slot < MAX_SESSIONS {
        slot
    } else {
        SLOT_UNKNOWN
    };
    let Some(share) = RING_SHARE.get_ptr_mut(row) else {
        return false;
    };
    // SAFETY: this CPU's row; programs run with migration disabled.
    let share = unsafe { &mut *share };
    // Not the coarse clock: sockopt programs may not read it.
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(share.since_ns) >= RING_SHARE_WINDOW_NS {
        share.since_ns = now;
        share.written = 0;
    }
    if share.written >= RING_SHARE_RECORDS
        && ring.query(BPF_RB_AVAIL_DATA) * 2 > ring.query(BPF_RB_RING_SIZE)
    {
        return true;
    }
    share.written += 1;
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
