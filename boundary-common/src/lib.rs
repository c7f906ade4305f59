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
/// Rule id of the implicit allowance of the configured nameservers on port 53.
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

/// Address families as the kernel numbers them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

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

/// Per-session settings, index 0 of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub mode: u32,
    /// Non-zero: also report allowed connections (deny events are always reported).
    pub report_allows: u32,
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
    pub _pad: u8,
    /// IP protocol number as the socket was created.
    pub ip_protocol: u32,
    /// IPv4 in the first four bytes, or IPv6; network byte order.
    pub addr: [u8; 16],
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data with explicit padding fields, valid for any bit pattern.
    unsafe impl aya::Pod for super::PortGrant {}
    unsafe impl aya::Pod for super::Grants {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Event {}
}
