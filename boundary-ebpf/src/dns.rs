//! DNS redirect: every TCP or UDP connect or datagram to port 53, whatever the address (the
//! resolv.conf nameserver, `dig @1.2.3.4`, a hard-coded server), goes to the session's own DNS
//! proxy instead (`Settings::dns_ip4`/`dns_port4`, `::1`/`dns_port6`), which answers only the
//! names the policy allows. The address the program asked is kept per socket (`DNS_ORIGIN`,
//! by socket cookie) and put back as the source of the replies (recvmsg4/6) and as the peer
//! (getpeername4/6), so that resolvers that check where an answer came from (glibc, musl,
//! c-ares, Go) accept it.
//!
//! Fail closed: if the agent is gone, port 53 still goes to the dead proxy's address, where
//! nothing answers.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map},
    maps::LruHashMap,
    programs::SockAddrContext,
};
use boundary_common::{DnsOrigin, Settings, AF_INET, AF_INET6};

use crate::{exempt_current, session_slot, settings, ALLOW};

/// One entry per socket that asked a nameserver recently (least recently used ones go).
#[map]
static DNS_ORIGIN: LruHashMap<u64, DnsOrigin> = LruHashMap::with_max_entries(16_384, 0);

/// Port 53 as `bpf_sock_addr::user_port` holds it (network byte order).
const DNS_PORT: u32 = 53u16.to_be() as u32;
/// ::ffff:0:0/96, the third word of an IPv4-mapped IPv6 address (network byte order).
const V4_MAPPED: u32 = 0x0000_ffffu32.to_be();
/// ::1, the last word (network byte order).
const V6_LOOPBACK_LAST: u32 = 1u32.to_be();

#[inline(always)]
fn be_port(port: u16) -> u32 {
    port.to_be() as u32
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, origin: &DnsOrigin) {
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let _ = DNS_ORIGIN.insert(&cookie, origin, 0);
}

/// The session's settings when it has a DNS proxy (and the caller is not exempt). A cgroup no
/// session owns gets no redirect: its connect is then denied like any other.
#[inline(always)]
fn proxy_settings() -> Option<Settings> {
    let s = settings(session_slot()?);
    if s.dns_port4 == 0 || exempt_current(&s) {
        return None;
    }
    Some(s)
}

/// connect4 / sendmsg4: true when the destination was port 53 and now is the proxy.
#[inline(always)]
pub fn redirect4(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel hands a valid, writable bpf_sock_addr to connect4/sendmsg4.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_port != DNS_PORT {
        return false;
    }
    let Some(s) = proxy_settings() else {
        return false;
    };
    remember(
        ctx,
        &DnsOrigin {
            family: AF_INET as u32,
            port: sa.user_port,
            addr: [sa.user_ip4, 0, 0, 0],
        },
    );
    sa.user_ip4 = s.dns_ip4;
    sa.user_port = be_port(s.dns_port4);
    true
}

/// connect6 / sendmsg6: as [`redirect4`]; a v4-mapped nameserver goes to the IPv4 proxy (as
/// ::ffff:a.b.c.d), a native IPv6 one to the proxy on ::1.
#[inline(always)]
pub fn redirect6(ctx: &SockAddrContext) -> bool {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_port != DNS_PORT {
        return false;
    }
    let Some(s) = proxy_settings() else {
        return false;
    };
    // Four 32-bit accesses: the only width the kernel allows on user_ip6.
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    remember(
        ctx,
        &DnsOrigin {
            family: AF_INET6 as u32,
            port: sa.user_port,
            addr: words,
        },
    );
    let mapped = words[0] == 0 && words[1] == 0 && words[2] == V4_MAPPED;
    if mapped || s.dns_port6 == 0 {
        sa.user_ip6[0] = 0;
        sa.user_ip6[1] = 0;
        sa.user_ip6[2] = V4_MAPPED;
        sa.user_ip6[3] = s.dns_ip4;
        sa.user_port = be_port(s.dns_port4);
    } else {
        sa.user_ip6[0] = 0;
        sa.user_ip6[1] = 0;
        sa.user_ip6[2] = 0;
        sa.user_ip6[3] = V6_LOOPBACK_LAST;
        sa.user_port = be_port(s.dns_port6);
    }
    true
}

/// recvmsg4 / getpeername4: the proxy's address back to the nameserver the program asked.
#[inline(always)]
fn restore4(ctx: &SockAddrContext) {
    let Some(slot) = session_slot() else {
        return;
    };
    let s = settings(slot);
    if s.dns_port4 == 0 {
        return;
    }
    // SAFETY: the kernel hands a valid, writable bpf_sock_addr to recvmsg4/getpeername4.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_port != be_port(s.dns_port4) || sa.user_ip4 != s.dns_ip4 {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: read-only lookup of a plain value.
    if let Some(origin) = unsafe { DNS_ORIGIN.get(&cookie) } {
        if origin.family == AF_INET as u32 {
            sa.user_ip4 = origin.addr[0];
            sa.user_port = origin.port;
        }
    }
}

/// recvmsg6 / getpeername6: as [`restore4`], for the proxy on ::1 or ::ffff:127.0.0.1.
#[inline(always)]
fn restore6(ctx: &SockAddrContext) {
    let Some(slot) = session_slot() else {
        return;
    };
    let s = settings(slot);
    if s.dns_port4 == 0 {
        return;
    }
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let port = sa.user_port;
    let from_v4_proxy = words[0] == 0
        && words[1] == 0
        && words[2] == V4_MAPPED
        && words[3] == s.dns_ip4
        && port == be_port(s.dns_port4);
    let from_v6_proxy = s.dns_port6 != 0
        && words[0] == 0
        && words[1] == 0
        && words[2] == 0
        && words[3] == V6_LOOPBACK_LAST
        && port == be_port(s.dns_port6);
    if !from_v4_proxy && !from_v6_proxy {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: read-only lookup of a plain value.
    if let Some(origin) = unsafe { DNS_ORIGIN.get(&cookie) } {
        if origin.family == AF_INET6 as u32 {
            sa.user_ip6[0] = origin.addr[0];
            sa.user_ip6[1] = origin.addr[1];
            sa.user_ip6[2] = origin.addr[2];
            sa.user_ip6[3] = origin.addr[3];
            sa.user_port = origin.port;
        } else if from_v4_proxy {
            // An IPv6 socket's datagram to ::ffff:a.b.c.d passes sendmsg4, not sendmsg6.
            sa.user_ip6[0] = 0;
            sa.user_ip6[1] = 0;
            sa.user_ip6[2] = V4_MAPPED;
            sa.user_ip6[3] = origin.addr[0];
            sa.user_port = origin.port;
        }
    }
}

// recvmsg and getpeername programs must return 1: they may rewrite, never refuse.

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx);
    ALLOW
}
