//! Boundary's kernel programs: cgroup sock_addr hooks that allow a connection only when the
//! destination's longest matching prefix grants its port and protocol, and report every
//! decision to userspace through ring buffers.
//!
//! Entry points only translate the context into a [`Dest`] and the verdict into the return
//! code; the decision itself is in [`decide`].
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    },
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext},
};
use boundary_common::*;

const MAX_PREFIXES: u32 = 65_536;

#[map]
static ALLOW_V4: LpmTrie<[u8; 4], Grants> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], Grants> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
/// Denials get their own ring buffer so that a flood of allowed connections can never
/// crowd them out.
#[map]
static DENY_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static ALLOW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
/// Index 0: deny events lost, index 1: allow events lost (ring buffer full).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

const ALLOW: i32 = 1;

/// `bpf_ringbuf_submit` / `bpf_ringbuf_query` flags (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// A quarter of ALLOW_EVENTS.
const ALLOW_WAKEUP_BYTES: u64 = 1 << 18;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const AF_PACKET: u32 = 17;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

struct Dest {
    family: u8,
    addr: [u8; 16],
    port: u16,
    protocol: u8,
    ip_protocol: u32,
    hook: u8,
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    verdict(decide(&dest_v4(&ctx, HOOK_CONNECT4)))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(decide(&dest_v4(&ctx, HOOK_SENDMSG4)))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    verdict(decide(&dest_v6(&ctx, HOOK_CONNECT6)))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(decide(&dest_v6(&ctx, HOOK_SENDMSG6)))
}

/// Raw and packet sockets could bypass every address check: they are refused at creation.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock to sock_create programs.
    let (family, sock_type, ip_protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    if sock_type != SOCK_RAW && family != AF_PACKET {
        return ALLOW;
    }
    let dest = Dest {
        family: family as u8,
        addr: [0; 16],
        port: 0,
        protocol: 0,
        ip_protocol,
        hook: HOOK_SOCK_CREATE,
    };
    let action = if audit_mode() { ACTION_WOULD_DENY } else { ACTION_DENY };
    report(&dest, action, RULE_NONE, sock_type as u8);
    verdict(action != ACTION_DENY)
}

/// The verifier insists on a return value of exactly 0 or 1 (TOOLCHAIN.md), so the bool is
/// masked explicitly instead of trusting LLVM's byte spill.
#[inline(always)]
fn verdict(allow: bool) -> i32 {
    (allow as i32) & 1
}

fn transport(ctx: &bpf_sock_addr) -> (u8, u32) {
    let ip_protocol = ctx.protocol;
    let protocol = match (ctx.type_, ip_protocol) {
        (SOCK_STREAM, 0 | IPPROTO_TCP) => PROTO_TCP,
        (SOCK_DGRAM, 0 | IPPROTO_UDP) => PROTO_UDP,
        _ => 0,
    };
    (protocol, ip_protocol)
}

fn dest_v4(ctx: &SockAddrContext, hook: u8) -> Dest {
    // SAFETY: the kernel hands a valid bpf_sock_addr to sock_addr programs.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    let ip = sa.user_ip4.to_ne_bytes();
    addr[0] = ip[0];
    addr[1] = ip[1];
    addr[2] = ip[2];
    addr[3] = ip[3];
    let (protocol, ip_protocol) = transport(sa);
    Dest {
        family: AF_INET,
        addr,
        port: u16::from_be(sa.user_port as u16),
        protocol,
        ip_protocol,
        hook,
    }
}

fn dest_v6(ctx: &SockAddrContext, hook: u8) -> Dest {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    // Four 32-bit loads: the only access width the kernel allows on user_ip6.
    let words = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let (protocol, ip_protocol) = transport(sa);
    let port = u16::from_be(sa.user_port as u16);
    // ::ffff:a.b.c.d is an IPv4 destination in disguise: judge it by the IPv4 policy.
    if words[0] == 0 && words[1] == 0 && words[2] == u32::from_be(0x0000_ffff) {
        let mut addr = [0u8; 16];
        let ip = words[3].to_ne_bytes();
        addr[0] = ip[0];
        addr[1] = ip[1];
        addr[2] = ip[2];
        addr[3] = ip[3];
        return Dest { family: AF_INET, addr, port, protocol, ip_protocol, hook };
    }
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    Dest { family: AF_INET6, addr, port, protocol, ip_protocol, hook }
}

fn audit_mode() -> bool {
    SETTINGS.get(0).is_some_and(|s| s.mode == MODE_AUDIT)
}

/// Returns whether the connection may proceed; reports the decision.
fn decide(dest: &Dest) -> bool {
    let grants = if dest.family == AF_INET {
        let ip = [dest.addr[0], dest.addr[1], dest.addr[2], dest.addr[3]];
        ALLOW_V4.get(Key::new(32, ip))
    } else {
        ALLOW_V6.get(Key::new(128, dest.addr))
    };
    let rule = match grants {
        Some(g) => matching_rule(g, dest.port, dest.protocol),
        None => RULE_NONE,
    };
    let action = if rule != RULE_NONE {
        ACTION_ALLOW
    } else if audit_mode() {
        ACTION_WOULD_DENY
    } else {
        ACTION_DENY
    };
    report(dest, action, rule, 0);
    action != ACTION_DENY
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

fn report(dest: &Dest, action: u8, rule_id: u32, sock_type: u8) {
    let allowed = action == ACTION_ALLOW;
    if allowed && !SETTINGS.get(0).is_some_and(|s| s.report_allows != 0) {
        return;
    }
    let ring = if allowed { &ALLOW_EVENTS } else { &DENY_EVENTS };
    let Some(mut entry) = ring.reserve::<Event>(0) else {
        let slot = if allowed { 1 } else { 0 };
        if let Some(lost) = LOST.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
        return;
    };
    // SAFETY: helpers allowed in cgroup sock programs on our kernels (TOOLCHAIN.md).
    let (ktime_ns, cgroup_id) = unsafe { (bpf_ktime_get_ns(), bpf_get_current_cgroup_id()) };
    entry.write(Event {
        ktime_ns,
        pid_tgid: bpf_get_current_pid_tgid(),
        uid_gid: bpf_get_current_uid_gid(),
        cgroup_id,
        rule_id,
        port: dest.port,
        action,
        protocol: dest.protocol,
        family: dest.family,
        hook: dest.hook,
        sock_type,
        _pad: 0,
        ip_protocol: dest.ip_protocol,
        addr: dest.addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
