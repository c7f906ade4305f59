//! Loads the eBPF programs once per agent, keeps each session's share of their maps in step
//! with its compiled policy, and attaches them to each session's cgroup (a fresh one, or an
//! existing one in whole-workspace mode).
//!
//! One [`ProgramSet`] (programs, maps, two event rings) serves every session of an agent: a
//! session is a slot in it ([`Enforcer`]). The programs are attached to each session's cgroup
//! and find the slot in the cgroup local storage of their attachment (`SLOT`, written here
//! right after attaching): the session is the one whose cgroup the socket or process is in
//! (or below), whoever makes the call. Settings, counters and dedup state are indexed by the
//! slot, and the allow tries' keys start with it, so one longest-prefix lookup never leaves
//! the session's own entries. An attachment whose storage holds no slot denies everything.
//! Starting a session costs a slot, its map entries and one bpf link per hook on its cgroup;
//! the verifier runs once per agent.
//!
//! Fail closed: the attachments are bpf links pinned on bpffs, so they outlive the agent. If
//! the agent is killed, the wrapped processes stay confined by the last policy it installed;
//! only an explicit [`Enforcer::detach`] (after the session's processes are gone) removes them.
//! Each session's directory `PIN_ROOT/<session>` holds its links and a pin of every map of
//! its set, so a restarted agent reopens the set from any of its sessions with
//! [`Enforcer::adopt`] (policy, settings, exemptions and unread events included) without a
//! moment in which the session is unconfined; sessions adopted from one set share one
//! reopened handle (and one reader of its rings). A slot is reused only after its session's
//! entries are removed, its cgroup id unregistered, and a quarantine longer than any dedup
//! window has passed.
//!
//! The programs (boundary-ebpf): sock_addr hooks (connect4/6, sendmsg4/6), sock_create (inet
//! allowlist), setsockopt (routing options), cgroup_skb egress (every packet's real
//! destination), and BPF LSM attached per cgroup (`lsm_cgroup`: socket family allowlist,
//! bpf(), user namespaces), which only ever applies to the session's own processes.
//!
//! The LSM programs load only where the kernel accepts BPF_PROG_TYPE_LSM (the BPF LSM active,
//! and no hardening that refuses BTF-attached program types: some kernels answer EPERM to all
//! of them, which a one-syscall probe detects before the kernel's BTF is parsed). Without
//! them [`Enforcer::has_lsm`] is false, a warning says so, and the session's
//! [`SyscallFilter`] (seccomp, installed by the command itself before exec) holds the same
//! lines for socket families, bpf() and user namespaces, without events.

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, VecDeque};
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
// Deprecated in favour of BPF_MAP_TYPE_CGRP_STORAGE, which is keyed by cgroup alone; the
// programs need the storage of the attachment that runs (see boundary-ebpf).
#[allow(deprecated)]
use aya::maps::cgroup_storage::{CgroupStorage, CgroupStorageKey};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, RingBuf};
use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, LsmCgroup};
use aya::{Btf, Ebpf, EbpfLoader};
use boundary_common::{
    Grants, PortGrant, Settings, LOST_ALLOW, LOST_DENY, LOST_SLOTS, MAX_GRANTS, MAX_SESSIONS,
    SUPPRESSED_ALLOW, SUPPRESSED_EGRESS,
};

use crate::error::{Error, Result};
use crate::policy::{CompiledPolicy, PrefixEntry};

mod seccomp;
pub use seccomp::{supervise, supervise_async, Refusal, SyscallFilter};

/// The compiled eBPF object, built by build.rs from boundary-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/boundary.bpf.o"));

/// Where bpffs is mounted, and the directory of Boundary's pinned links under it.
pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/boundary";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SECURITYFS: &str = "/sys/kernel/security";

/// Set to `1` to run without the BPF LSM programs even where the kernel accepts them.
pub const ENV_WITHOUT_LSM: &str = "BOUNDARY_WITHOUT_LSM";

/// Each event ring of a set that serves one session (single-shot `boundary run`).
pub const RING_BYTES_ONE_SESSION: u32 = 1 << 20;
/// Each event ring of an agent's set, shared by all its sessions.
pub const RING_BYTES_SHARED: u32 = 8 << 20;

/// How long a released slot rests before it is handed out again: longer than the allow dedup
/// window and the egress rate limit, so no record of the old session can fold into the new.
const SLOT_QUARANTINE: Duration = Duration::from_secs(2);

/// How each program is loaded and attached; the `u32` of each is its `enum bpf_attach_type`
/// (uapi/linux/bpf.h), which keys its attachment's `SLOT` storage.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SockAddr(u32),
    Sock,
    Sockopt,
    Egress,
    /// BPF LSM attached to a cgroup, on the named LSM hook.
    Lsm(&'static str),
}

impl Kind {
    fn attach_type(self) -> u32 {
        const BPF_CGROUP_INET_EGRESS: u32 = 1;
        const BPF_CGROUP_INET_SOCK_CREATE: u32 = 2;
        const BPF_LSM_CGROUP: u32 = 43;
        match self {
            Kind::SockAddr(t) => t,
            Kind::Sock => BPF_CGROUP_INET_SOCK_CREATE,
            Kind::Sockopt => BPF_CGROUP_SETSOCKOPT,
            Kind::Egress => BPF_CGROUP_INET_EGRESS,
            Kind::Lsm(_) => BPF_LSM_CGROUP,
        }
    }
}

/// `BPF_CGROUP_INET4_CONNECT`: the attachment whose storage `adopt` reads the slot from.
const ATTACH_CONNECT4: u32 = 10;

/// Every program, by its name in the object (the pin of its link has the same name).
const PROGRAMS: [(&str, Kind); 14] = [
    ("connect4", Kind::SockAddr(ATTACH_CONNECT4)),
    ("connect6", Kind::SockAddr(11)),
    ("sendmsg4", Kind::SockAddr(14)),
    ("sendmsg6", Kind::SockAddr(15)),
    // DNS replies from the session's proxy, shown as coming from the nameserver asked.
    ("recvmsg4", Kind::SockAddr(19)),
    ("recvmsg6", Kind::SockAddr(20)),
    ("getpeername4", Kind::SockAddr(29)),
    ("getpeername6", Kind::SockAddr(30)),
    ("sock_create", Kind::Sock),
    ("setsockopt", Kind::Sockopt),
    ("egress", Kind::Egress),
    ("lsm_socket_create", Kind::Lsm("socket_create")),
    ("lsm_bpf", Kind::Lsm("bpf")),
    ("lsm_userns_create", Kind::Lsm("userns_create")),
];

/// Every map of a set, pinned under each session's directory by its name in the object.
const MAPS: [&str; 11] = [
    "ALLOW_V4",
    "ALLOW_V6",
    "SETTINGS",
    "SLOT",
    "DENY_EVENTS",
    "ALLOW_EVENTS",
    "LOST",
    "EXEMPT",
    "ALLOW_SEEN",
    "EGRESS_SEEN",
    "DNS_ORIGIN",
];

/// Keys of the allow tries: the slot (32 bits of prefix), then the address.
type KeyV4 = [u8; 8];
type KeyV6 = [u8; 20];

#[allow(deprecated)]
/// The maps a session's handle writes (behind one lock: sessions write them from their own
/// tasks, each only its own slot's entries).
struct SetMaps {
    allow_v4: LpmTrie<MapData, KeyV4, Grants>,
    allow_v6: LpmTrie<MapData, KeyV6, Grants>,
    settings: Array<MapData, Settings>,
    /// Per attachment: slot + 1.
    slot: CgroupStorage<MapData, u32>,
    lost: PerCpuArray<MapData, u64>,
    exempt: HashMap<MapData, u64, u8>,
}

/// Which slots are free. Only the process that loaded a set hands out its slots; a set
/// reopened from pins serves only the sessions it already has.
struct Slots {
    owned: bool,
    next: u32,
    released: VecDeque<(u32, Instant)>,
}

/// One loaded copy of the programs and their maps, shared by the sessions of an agent.
pub struct ProgramSet {
    /// The loaded object, to attach its programs to new sessions; `None` for a set reopened
    /// from pins (its programs live on in its sessions' links).
    ebpf: Mutex<Option<Ebpf>>,
    maps: Mutex<SetMaps>,
    /// A second handle on each map, pinned into every session's directory.
    map_handles: Vec<(&'static str, MapData)>,
    slots: Mutex<Slots>,
    lsm: bool,
    /// The kernel's id of the set's `SETTINGS` map: names the set.
    id: u32,
}

/// Sets reopened from pins in this process, by id: sessions adopted from one set share it.
static REOPENED: Mutex<Option<StdHashMap<u32, Weak<ProgramSet>>>> = Mutex::new(None);

/// One session's share of a [`ProgramSet`]: its slot, its cgroup's links, and what it
/// installed in the maps.
pub struct Enforcer {
    set: Arc<ProgramSet>,
    slot: u32,
    /// What `SETTINGS[slot]` holds (with the loader's own `exempt` flag).
    current: Settings,
    installed_v4: BTreeMap<(Ipv4Addr, u8), Grants>,
    installed_v6: BTreeMap<(Ipv6Addr, u8), Grants>,
    /// Cgroups this session exempts.
    exempted: BTreeSet<u64>,
    /// Names of the session's pinned links. No fd is held on them while the session runs
    /// (hundreds of sessions would mean thousands of fds): the pins keep them attached.
    links: Vec<&'static str>,
    pin_dir: Option<PathBuf>,
    lsm: bool,
}

/// The two event rings of a set, handed to the event reader. Every record names its slot.
pub struct Rings {
    pub deny: RingBuf<MapData>,
    pub allow: RingBuf<MapData>,
}

impl ProgramSet {
    /// Loads and verifies the programs, with event rings of `ring_bytes` each (a power of
    /// two, at least a page). Nothing is attached yet.
    pub fn load(ring_bytes: u32) -> Result<(Arc<ProgramSet>, Rings)> {
        // No CO-RE relocations are needed (the programs only touch stable program contexts
        // and LSM hook arguments), so the object is loaded without the kernel's BTF; only the
        // LSM programs need it, for the ids of their hooks, and it is dropped right after.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_max_entries("DENY_EVENTS", ring_bytes)
            .map_max_entries("ALLOW_EVENTS", ring_bytes)
            .load(OBJECT)
            .map_err(|e| Error::Ebpf(format!("{e:#}")))?;
        for (name, kind) in PROGRAMS {
            let result = match kind {
                Kind::SockAddr(_) => program_mut::<CgroupSockAddr>(&mut ebpf, name)?.load(),
                Kind::Sock => program_mut::<CgroupSock>(&mut ebpf, name)?.load(),
                Kind::Sockopt => program_mut::<CgroupSockopt>(&mut ebpf, name)?.load(),
                Kind::Egress => program_mut::<CgroupSkb>(&mut ebpf, name)?.load(),
                Kind::Lsm(_) => continue,
            };
            result
                .map_err(|e| Error::Ebpf(format!("verifier rejected `{name}`: {}", chain(&e))))?;
        }
        let lsm = load_lsm(&mut ebpf)?;
        let mut map_handles = Vec::with_capacity(MAPS.len());
        for name in MAPS {
            map_handles.push((name, second_handle(&ebpf, name)?));
        }
        let rings = Rings {
            deny: take_map(&mut ebpf, "DENY_EVENTS")?,
            allow: take_map(&mut ebpf, "ALLOW_EVENTS")?,
        };
        let maps = SetMaps {
            allow_v4: take_map(&mut ebpf, "ALLOW_V4")?,
            allow_v6: take_map(&mut ebpf, "ALLOW_V6")?,
            settings: take_map(&mut ebpf, "SETTINGS")?,
            slot: take_map(&mut ebpf, "SLOT")?,
            lost: take_map(&mut ebpf, "LOST")?,
            exempt: take_map(&mut ebpf, "EXEMPT")?,
        };
        let id = map_handles
            .iter()
            .find(|(name, _)| *name == "SETTINGS")
            .map(|(_, data)| map_id(data))
            .expect("SETTINGS is in MAPS")?;
        let set = ProgramSet {
            ebpf: Mutex::new(Some(ebpf)),
            maps: Mutex::new(maps),
            map_handles,
            slots: Mutex::new(Slots {
                owned: true,
                next: 0,
                released: VecDeque::new(),
            }),
            lsm,
            id,
        };
        Ok((Arc::new(set), rings))
    }

    /// Reopens the set pinned in a session's directory (maps only), or the handle this
    /// process already has on it. The rings come with the first opening only: one reader per
    /// ring.
    fn reopen(dir: &Path) -> Result<(Arc<ProgramSet>, Option<Rings>)> {
        let settings_data = open_pinned(dir, "SETTINGS")?;
        let id = map_id(&settings_data)?;
        let mut reopened = REOPENED.lock().unwrap();
        let reopened = reopened.get_or_insert_with(StdHashMap::new);
        reopened.retain(|_, set| set.strong_count() > 0);
        if let Some(set) = reopened.get(&id).and_then(Weak::upgrade) {
            return Ok((set, None));
        }
        let typed_pin = |name: &str| -> Result<Map> {
            Map::from_map_data(open_pinned(dir, name)?)
                .map_err(|e| Error::Ebpf(format!("map `{name}`: {e}")))
        };
        let maps = SetMaps {
            allow_v4: typed(typed_pin("ALLOW_V4")?, "ALLOW_V4")?,
            allow_v6: typed(typed_pin("ALLOW_V6")?, "ALLOW_V6")?,
            settings: typed(
                Map::from_map_data(settings_data)
                    .map_err(|e| Error::Ebpf(format!("map `SETTINGS`: {e}")))?,
                "SETTINGS",
            )?,
            slot: typed(typed_pin("SLOT")?, "SLOT")?,
            lost: typed(typed_pin("LOST")?, "LOST")?,
            exempt: typed(typed_pin("EXEMPT")?, "EXEMPT")?,
        };
        let rings = Rings {
            deny: typed(typed_pin("DENY_EVENTS")?, "DENY_EVENTS")?,
            allow: typed(typed_pin("ALLOW_EVENTS")?, "ALLOW_EVENTS")?,
        };
        let mut map_handles = Vec::with_capacity(MAPS.len());
        for name in MAPS {
            if let Ok(data) = open_pinned(dir, name) {
                map_handles.push((name, data));
            }
        }
        let lsm = PROGRAMS
            .iter()
            .any(|(name, kind)| matches!(kind, Kind::Lsm(_)) && dir.join(name).exists());
        let set = Arc::new(ProgramSet {
            ebpf: Mutex::new(None),
            maps: Mutex::new(maps),
            map_handles,
            slots: Mutex::new(Slots {
                owned: false,
                next: MAX_SESSIONS,
                released: VecDeque::new(),
            }),
            lsm,
            id,
        });
        reopened.insert(id, Arc::downgrade(&set));
        Ok((set, Some(rings)))
    }

    /// The kernel's id of this set (of its `SETTINGS` map).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A new session in this set: a free slot with `settings` and no grant (everything
    /// denied). Nothing is attached yet.
    pub fn session(self: &Arc<Self>, settings: Settings) -> Result<Enforcer> {
        let slot = self.take_slot()?;
        let current = Settings {
            exempt: 0,
            ..settings
        };
        let mut enforcer = Enforcer {
            set: self.clone(),
            slot,
            current,
            installed_v4: BTreeMap::new(),
            installed_v6: BTreeMap::new(),
            exempted: BTreeSet::new(),
            links: Vec::new(),
            pin_dir: None,
            lsm: self.lsm,
        };
        if let Err(e) = enforcer.write_settings(current) {
            self.release_slot(slot);
            return Err(e);
        }
        Ok(enforcer)
    }

    fn take_slot(&self) -> Result<u32> {
        let mut slots = self.slots.lock().unwrap();
        if !slots.owned {
            return Err(Error::Ebpf(
                "a program set reopened from pins takes no new session".into(),
            ));
        }
        if let Some(&(slot, since)) = slots.released.front() {
            if since.elapsed() >= SLOT_QUARANTINE {
                slots.released.pop_front();
                return Ok(slot);
            }
        }
        if slots.next < MAX_SESSIONS {
            slots.next += 1;
            return Ok(slots.next - 1);
        }
        Err(Error::Ebpf(format!(
            "{MAX_SESSIONS} sessions are running (or just ended): no free slot"
        )))
    }

    fn release_slot(&self, slot: u32) {
        let mut slots = self.slots.lock().unwrap();
        if slots.owned {
            slots.released.push_back((slot, Instant::now()));
        }
    }
}

impl Enforcer {
    /// A set of its own with one session in it (single-shot `boundary run`, tests): loads and
    /// verifies the programs. Nothing is attached yet.
    pub fn load(settings: Settings) -> Result<(Enforcer, Rings)> {
        let (set, rings) = ProgramSet::load(RING_BYTES_ONE_SESSION)?;
        Ok((set.session(settings)?, rings))
    }

    /// Reopens a running session from its pins under `PIN_ROOT/<session>` (its cgroup is
    /// `cgroup`): its links stay attached throughout (the session is never unconfined), its
    /// maps are the live ones. The rings (with whatever events were not read yet) come with
    /// the first session adopted from a set, `None` with the others of the same set. `apply`
    /// then diffs against what the maps hold.
    pub fn adopt(session: &str, cgroup: &Path) -> Result<(Enforcer, Option<Rings>)> {
        let dir = Path::new(PIN_ROOT).join(session);
        let cgroup_id = cgroup_id(cgroup)?;
        let mut links = Vec::new();
        let mut lsm = false;
        for (name, kind) in PROGRAMS {
            let path = dir.join(name);
            if !path.exists() {
                // A session pinned by an older agent without this program stays confined by
                // the programs it has.
                tracing::warn!(
                    session,
                    program = name,
                    "adopted session lacks this program"
                );
                continue;
            }
            lsm |= matches!(kind, Kind::Lsm(_));
            links.push(name);
        }
        if links.is_empty() {
            return Err(Error::Ebpf(format!(
                "no pinned links in {} (nothing to adopt)",
                dir.display()
            )));
        }
        let (set, rings) = ProgramSet::reopen(&dir)?;
        let (slot, current, installed_v4, installed_v6, exempted) = {
            let maps = set.maps.lock().unwrap();
            let stored = maps
                .slot
                .get(CgroupStorageKey::new(cgroup_id, ATTACH_CONNECT4), 0)
                .map_err(|e| {
                    Error::Ebpf(format!(
                        "session {session}: no slot stored for its cgroup {}: {e}",
                        cgroup.display()
                    ))
                })?;
            if stored == 0 || stored > MAX_SESSIONS {
                return Err(Error::Ebpf(format!(
                    "session {session}: its cgroup {} holds no slot (it denies everything)",
                    cgroup.display()
                )));
            }
            let slot = stored - 1;
            let current = maps
                .settings
                .get(&slot, 0)
                .map_err(|e| Error::Ebpf(format!("reading SETTINGS: {e}")))?;
            let prefix = slot.to_be_bytes();
            let mut installed_v4 = BTreeMap::new();
            for item in maps.allow_v4.iter() {
                let (key, grants) =
                    item.map_err(|e| Error::Ebpf(format!("reading ALLOW_V4: {e}")))?;
                let data = key.data();
                if data[..4] == prefix && key.prefix_len() >= 32 {
                    let addr: [u8; 4] = data[4..].try_into().expect("4 bytes");
                    installed_v4.insert(
                        (Ipv4Addr::from(addr), (key.prefix_len() - 32) as u8),
                        grants,
                    );
                }
            }
            let mut installed_v6 = BTreeMap::new();
            for item in maps.allow_v6.iter() {
                let (key, grants) =
                    item.map_err(|e| Error::Ebpf(format!("reading ALLOW_V6: {e}")))?;
                let data = key.data();
                if data[..4] == prefix && key.prefix_len() >= 32 {
                    let addr: [u8; 16] = data[4..].try_into().expect("16 bytes");
                    installed_v6.insert(
                        (Ipv6Addr::from(addr), (key.prefix_len() - 32) as u8),
                        grants,
                    );
                }
            }
            // Exemptions belong to the whole-workspace session, which has a set of its own.
            let exempted = maps.exempt.keys().filter_map(|k| k.ok()).collect();
            (slot, current, installed_v4, installed_v6, exempted)
        };
        let enforcer = Enforcer {
            set,
            slot,
            current,
            installed_v4,
            installed_v6,
            exempted,
            links,
            pin_dir: Some(dir),
            lsm,
        };
        Ok((enforcer, rings))
    }

    /// The set this session belongs to.
    pub fn set(&self) -> &Arc<ProgramSet> {
        &self.set
    }

    /// The session's slot in its set (what its events carry).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Switches mode (enforce/audit) or event reporting; takes effect at the next connect.
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        self.write_settings(Settings {
            exempt: self.current.exempt,
            dns_ip4: self.current.dns_ip4,
            dns_port4: self.current.dns_port4,
            dns_port6: self.current.dns_port6,
            ..settings
        })
    }

    /// Where port 53 goes from now on: the session's DNS proxy (`v6_port` 0: no proxy on ::1).
    /// [`Enforcer::set_settings`] keeps it.
    pub fn set_dns_proxy(&mut self, v4: std::net::SocketAddrV4, v6_port: u16) -> Result<()> {
        self.write_settings(Settings {
            dns_ip4: u32::from_ne_bytes(v4.ip().octets()),
            dns_port4: v4.port(),
            dns_port6: v6_port,
            ..self.current
        })
    }

    fn write_settings(&mut self, settings: Settings) -> Result<()> {
        self.set
            .maps
            .lock()
            .unwrap()
            .settings
            .set(self.slot, settings, 0)
            .map_err(|e| Error::Ebpf(format!("writing SETTINGS: {e}")))?;
        self.current = settings;
        Ok(())
    }

    /// Lets the processes of these cgroups (ids as [`cgroup_id`] returns them) through every
    /// program untouched: a confined existing cgroup's own control processes in
    /// whole-workspace mode. Replaces the previous set. The match is on the exact cgroup a
    /// process (or a packet's socket) is in, not its ancestors.
    pub fn set_exempt(&mut self, cgroup_ids: &[u64]) -> Result<()> {
        let want: BTreeSet<u64> = cgroup_ids.iter().copied().collect();
        let have = self.exempted.clone();
        for id in want.difference(&have) {
            self.set
                .maps
                .lock()
                .unwrap()
                .exempt
                .insert(id, 1, 0)
                .map_err(|e| Error::Ebpf(format!("exempting cgroup {id}: {e}")))?;
            self.exempted.insert(*id);
        }
        // The flag goes up after the first insert and down before the last removal, so the
        // programs never consult a half-written set with the wrong flag.
        let flag = u32::from(!want.is_empty());
        if flag != self.current.exempt {
            self.write_settings(Settings {
                exempt: flag,
                ..self.current
            })?;
        }
        for id in have.difference(&want) {
            self.set
                .maps
                .lock()
                .unwrap()
                .exempt
                .remove(id)
                .map_err(|e| Error::Ebpf(format!("removing exemption of cgroup {id}: {e}")))?;
            self.exempted.remove(id);
        }
        Ok(())
    }

    fn key_v4(&self, addr: Ipv4Addr, len: u8) -> Key<KeyV4> {
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&self.slot.to_be_bytes());
        data[4..].copy_from_slice(&addr.octets());
        Key::new(32 + u32::from(len), data)
    }

    fn key_v6(&self, addr: Ipv6Addr, len: u8) -> Key<KeyV6> {
        let mut data = [0u8; 20];
        data[..4].copy_from_slice(&self.slot.to_be_bytes());
        data[4..].copy_from_slice(&addr.octets());
        Key::new(32 + u32::from(len), data)
    }

    /// Makes the session's entries in the kernel tries equal `compiled`: adds and changes
    /// first, then removes, so an address that stays allowed is never briefly denied.
    pub fn apply(&mut self, compiled: &CompiledPolicy) -> Result<()> {
        let want_v4 = to_map(&compiled.v4)?;
        let want_v6 = to_map(&compiled.v6)?;
        let set = self.set.clone();
        let mut maps = set.maps.lock().unwrap();
        for (&(addr, len), grants) in &want_v4 {
            if self.installed_v4.get(&(addr, len)) != Some(grants) {
                maps.allow_v4
                    .insert(&self.key_v4(addr, len), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
            }
        }
        for (&(addr, len), grants) in &want_v6 {
            if self.installed_v6.get(&(addr, len)) != Some(grants) {
                maps.allow_v6
                    .insert(&self.key_v6(addr, len), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
            }
        }
        for &(addr, len) in self.installed_v4.keys() {
            if !want_v4.contains_key(&(addr, len)) {
                maps.allow_v4
                    .remove(&self.key_v4(addr, len))
                    .map_err(|e| Error::Compile(format!("removing {addr}/{len}: {e}")))?;
            }
        }
        for &(addr, len) in self.installed_v6.keys() {
            if !want_v6.contains_key(&(addr, len)) {
                maps.allow_v6
                    .remove(&self.key_v6(addr, len))
                    .map_err(|e| Error::Compile(format!("removing {addr}/{len}: {e}")))?;
            }
        }
        self.installed_v4 = want_v4;
        self.installed_v6 = want_v6;
        Ok(())
    }

    /// Adds or replaces the given entries only, leaving every other one as it is: the host
    /// entries of addresses the DNS proxy just learned (`policy::compile_hosts`). The next
    /// [`Enforcer::apply`] reconciles everything.
    pub fn upsert(&mut self, entries: &CompiledPolicy) -> Result<()> {
        let set = self.set.clone();
        let mut maps = set.maps.lock().unwrap();
        for ((addr, len), grants) in to_map(&entries.v4)? {
            if self.installed_v4.get(&(addr, len)) != Some(&grants) {
                maps.allow_v4
                    .insert(&self.key_v4(addr, len), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
                self.installed_v4.insert((addr, len), grants);
            }
        }
        for ((addr, len), grants) in to_map(&entries.v6)? {
            if self.installed_v6.get(&(addr, len)) != Some(&grants) {
                maps.allow_v6
                    .insert(&self.key_v6(addr, len), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
                self.installed_v6.insert((addr, len), grants);
            }
        }
        Ok(())
    }

    /// Attaches every program to `cgroup`, stores the slot in each attachment's storage (from
    /// then on its processes, and those of cgroups below it, are this session's), and pins
    /// the links and the set's maps under `PIN_ROOT/<session>`. `cgroup` may be a fresh session cgroup or an existing one
    /// (whole-workspace mode: see [`Enforcer::set_exempt`]).
    pub fn attach(&mut self, cgroup: &impl AsFd, session: &str) -> Result<()> {
        ensure_bpffs()?;
        let dir = Path::new(PIN_ROOT).join(session);
        fs::create_dir_all(&dir).map_err(|source| Error::File {
            path: dir.clone(),
            source,
        })?;
        self.pin_dir = Some(dir.clone());
        // Maps first: whoever finds the links pinned can also find the maps.
        for (name, data) in &self.set.map_handles {
            let path = dir.join(name);
            data.pin(&path)
                .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
        }
        let cgroup_id = fd_inode(cgroup.as_fd())?;
        let set = self.set.clone();
        let mut guard = set.ebpf.lock().unwrap();
        let Some(ebpf) = guard.as_mut() else {
            return Err(Error::Ebpf(
                "an adopted session is already attached; it cannot be attached again".into(),
            ));
        };
        let mut links = Vec::new();
        let mut raw_links = Vec::new();
        let mut lsm_failed = false;
        for (name, kind) in PROGRAMS {
            let cg = cgroup.as_fd();
            let link: FdLink = match kind {
                Kind::SockAddr(_) => {
                    let p: &mut CgroupSockAddr = program_mut(ebpf, name)?;
                    let id = p
                        .attach(cg, CgroupAttachMode::Single)
                        .map_err(|e| attach_error(name, &e))?;
                    FdLink::try_from(p.take_link(id).map_err(|e| attach_error(name, &e))?)
                        .map_err(|e| attach_error(name, &e))?
                }
                Kind::Sock => {
                    let p: &mut CgroupSock = program_mut(ebpf, name)?;
                    let id = p
                        .attach(cg, CgroupAttachMode::Single)
                        .map_err(|e| attach_error(name, &e))?;
                    FdLink::try_from(p.take_link(id).map_err(|e| attach_error(name, &e))?)
                        .map_err(|e| attach_error(name, &e))?
                }
                Kind::Sockopt => {
                    // aya 0.14 cannot turn a sockopt link into an FdLink (to pin it): the link
                    // is created here and pinned by hand, then reopened as a PinnedLink.
                    let p: &mut CgroupSockopt = program_mut(ebpf, name)?;
                    let prog = p.fd().map_err(|e| attach_error(name, &e))?;
                    let link = bpf_link_create(prog.as_fd(), cg, BPF_CGROUP_SETSOCKOPT)
                        .map_err(|e| attach_error(name, &e))?;
                    raw_links.push((name, kind, link));
                    continue;
                }
                Kind::Egress => {
                    let p: &mut CgroupSkb = program_mut(ebpf, name)?;
                    let id = p
                        .attach(cg, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
                        .map_err(|e| attach_error(name, &e))?;
                    FdLink::try_from(p.take_link(id).map_err(|e| attach_error(name, &e))?)
                        .map_err(|e| attach_error(name, &e))?
                }
                Kind::Lsm(_) => {
                    if !self.lsm {
                        continue;
                    }
                    let p: &mut LsmCgroup = program_mut(ebpf, name)?;
                    match p.attach(cg).and_then(|id| p.take_link(id)) {
                        Ok(link) => FdLink::from(link),
                        Err(e) => {
                            // As at load: the syscall filter holds these lines too.
                            tracing::warn!(program = name, error = %chain(&e), "a BPF LSM program did not attach: socket families, bpf() and user namespaces are confined by the syscall filter only");
                            lsm_failed = true;
                            continue;
                        }
                    }
                }
            };
            links.push((name, kind, link));
        }
        drop(guard);
        if lsm_failed {
            self.lsm = false;
        }
        // Each attachment has storage now (all zero: deny everything); the slot makes the
        // cgroup this session's.
        {
            let mut maps = self.set.maps.lock().unwrap();
            let kinds = links
                .iter()
                .map(|l| l.1)
                .chain(raw_links.iter().map(|l| l.1));
            for kind in kinds {
                let key = CgroupStorageKey::new(cgroup_id, kind.attach_type());
                maps.slot.insert(key, self.slot + 1, 0).map_err(|e| {
                    Error::Ebpf(format!("storing the session's slot in its cgroup: {e}"))
                })?;
            }
        }
        for (name, _, link) in links {
            let path = dir.join(name);
            // The pin holds the link; our fd closes here.
            link.pin(&path)
                .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
            self.links.push(name);
        }
        for (name, _, link) in raw_links {
            let path = dir.join(name);
            bpf_obj_pin(link.as_fd(), &path)
                .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
            self.links.push(name);
        }
        Ok(())
    }

    /// Events of this session the kernel could not queue because a ring was full: (deny,
    /// allow), summed over CPUs.
    pub fn lost(&self) -> (u64, u64) {
        (self.counter(LOST_DENY), self.counter(LOST_ALLOW))
    }

    /// Events deliberately folded, summed over CPUs: (allow events deduplicated into an
    /// earlier one of the same process and destination, egress deny events held back by the
    /// per-destination rate limit). Neither is lost: each later event carries the count of
    /// the ones folded into it (`Event::count`), and these totals say how many in all.
    pub fn suppressed(&self) -> (u64, u64) {
        (
            self.counter(SUPPRESSED_ALLOW),
            self.counter(SUPPRESSED_EGRESS),
        )
    }

    fn counter(&self, counter: u32) -> u64 {
        self.set
            .maps
            .lock()
            .unwrap()
            .lost
            .get(&(self.slot * LOST_SLOTS + counter), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Whether the BPF LSM programs are part of this enforcer (socket families, bpf(), user
    /// namespaces).
    pub fn has_lsm(&self) -> bool {
        self.lsm
    }

    /// Unpins and detaches, then clears the session's entries from the set's maps and frees
    /// its slot. Call only once the session's processes are gone.
    pub fn detach(mut self) -> Result<()> {
        if let Some(dir) = &self.pin_dir {
            for name in self.links.drain(..) {
                // Reopened, unpinned, then closed: closing the last reference detaches the
                // link at once (a bare unlink of the pin would leave that to a kernel worker).
                let path = dir.join(name);
                let pinned = PinnedLink::from_pin(&path).map_err(|e| {
                    Error::Ebpf(format!("opening {}: {}", path.display(), chain(&e)))
                })?;
                pinned
                    .unpin()
                    .map_err(|e| Error::Ebpf(format!("unpinning: {e}")))?;
            }
        }
        if let Some(dir) = self.pin_dir.take() {
            remove_pin_dir(&dir);
        }
        self.clear()
    }

    /// Removes everything the session put in the set's maps and frees its slot.
    fn clear(&mut self) -> Result<()> {
        let set = self.set.clone();
        {
            // The attachments' storage went with the links.
            let mut maps = set.maps.lock().unwrap();
            for &(addr, len) in self.installed_v4.keys() {
                let _ = maps.allow_v4.remove(&self.key_v4(addr, len));
            }
            for &(addr, len) in self.installed_v6.keys() {
                let _ = maps.allow_v6.remove(&self.key_v6(addr, len));
            }
            for id in &self.exempted {
                let _ = maps.exempt.remove(id);
            }
            let _ = maps.settings.set(self.slot, Settings::default(), 0);
            if let Ok(cpus) = aya::util::nr_cpus() {
                for counter in 0..LOST_SLOTS {
                    if let Ok(zeros) = PerCpuValues::try_from(vec![0u64; cpus]) {
                        let _ = maps.lost.set(self.slot * LOST_SLOTS + counter, zeros, 0);
                    }
                }
            }
        }
        self.installed_v4.clear();
        self.installed_v6.clear();
        self.exempted.clear();
        set.release_slot(self.slot);
        Ok(())
    }
}

/// A pinned map of a session's directory.
fn open_pinned(dir: &Path, name: &str) -> Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path)
        .map_err(|e| Error::Ebpf(format!("opening {}: {}", path.display(), chain(&e))))
}

fn typed<M>(map: Map, name: &str) -> Result<M>
where
    M: TryFrom<Map>,
    M::Error: std::fmt::Display,
{
    M::try_from(map).map_err(|e| Error::Ebpf(format!("map `{name}`: {e}")))
}

fn map_id(data: &MapData) -> Result<u32> {
    data.info()
        .map(|info| info.id())
        .map_err(|e| Error::Ebpf(format!("reading a map's id: {e}")))
}

/// A cgroup directory's id (its inode number), from an open fd on it.
fn fd_inode(fd: BorrowedFd) -> Result<u64> {
    nix::sys::stat::fstat(fd)
        .map(|st| st.st_ino)
        .map_err(|e| Error::Ebpf(format!("reading a cgroup's id: {e}")))
}

/// The id the kernel gives a cgroup v2 directory (its inode number): what
/// `bpf_get_current_cgroup_id` returns for processes in it, and what
/// [`Enforcer::set_exempt`] takes.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| Error::File {
            path: path.into(),
            source,
        })
}

/// Loads the BPF LSM programs when the kernel lets us: the BPF LSM must be active (securityfs
/// is mounted first if needed) and the kernel must accept BPF_PROG_TYPE_LSM programs (some
/// hardened kernels refuse every BTF-attached program type with EPERM). Returns whether they
/// are loaded. Without them, socket families other than inet, bpf() and user namespaces are
/// confined by the session's syscall filter ([`crate::loader::SyscallFilter`]) alone, and a
/// warning says so (also when the kernel rejects one of them). `BOUNDARY_WITHOUT_LSM=1` skips
/// them on purpose.
fn load_lsm(ebpf: &mut Ebpf) -> Result<bool> {
    if std::env::var(ENV_WITHOUT_LSM).is_ok_and(|v| v == "1") {
        return Ok(false);
    }
    match bpf_lsm_active() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("the BPF LSM is not active (boot with lsm=...,bpf): socket families, bpf() and user namespaces are confined by the syscall filter only");
            return Ok(false);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether the BPF LSM is active; running without the LSM programs");
            return Ok(false);
        }
    }
    // Parsing the kernel's BTF costs ~25 ms and ~8 MB of peak RSS: first ask the kernel, for
    // the price of one syscall, whether it accepts LSM programs at all.
    if kernel_refuses_lsm_programs() {
        // Once per agent, not once per session.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| tracing::warn!("the kernel refuses BPF LSM programs (EPERM): socket families, bpf() and user namespaces are confined by the syscall filter only"));
        return Ok(false);
    }
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            tracing::warn!(error = %e, "reading the kernel's BTF (/sys/kernel/btf/vmlinux) for the BPF LSM programs failed: socket families, bpf() and user namespaces are confined by the syscall filter only");
            return Ok(false);
        }
    };
    for (name, kind) in PROGRAMS {
        let Kind::Lsm(hook) = kind else { continue };
        let program: &mut LsmCgroup = program_mut(ebpf, name)?;
        if let Err(e) = program.load(hook, &btf) {
            // The syscall filter holds the same lines, so a kernel that refuses one of these
            // programs (a hook missing or shaped differently) costs events, not confinement.
            tracing::warn!(program = name, error = %chain(&e), "a BPF LSM program did not load: socket families, bpf() and user namespaces are confined by the syscall filter only");
            return Ok(false);
        }
    }
    Ok(true)
}

/// Loads a two-instruction LSM program without an attach target: a kernel that accepts the
/// program type fails it with EINVAL (no target); one that refuses the type says EPERM.
fn kernel_refuses_lsm_programs() -> bool {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_LSM: u32 = 29;
    const BPF_LSM_CGROUP: u32 = 43;
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    // union bpf_attr, prog_load: prog_type, insn_cnt, insns, license, ..., expected_attach_type
    // (byte 68); everything else zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_LSM.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_LSM_CGROUP.to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: a new fd nobody else owns.
        unsafe { libc::close(fd as i32) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn bpf_lsm_active() -> Result<bool> {
    let list = Path::new(SECURITYFS).join("lsm");
    if !list.exists() {
        nix::mount::mount(
            Some("securityfs"),
            SECURITYFS,
            Some("securityfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| Error::Ebpf(format!("mounting securityfs at {SECURITYFS}: {e}")))?;
    }
    let text = fs::read_to_string(&list).map_err(|source| Error::File { path: list, source })?;
    Ok(text.trim().split(',').any(|l| l == "bpf"))
}

/// `enum bpf_attach_type` value of cgroup setsockopt programs (uapi/linux/bpf.h).
const BPF_CGROUP_SETSOCKOPT: u32 = 22;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `bpf(BPF_LINK_CREATE)` of a program on a cgroup.
fn bpf_link_create(
    prog: BorrowedFd,
    target: BorrowedFd,
    attach_type: u32,
) -> std::io::Result<OwnedFd> {
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags; the rest zero.
    let mut attr = [0u32; 16];
    attr[0] = prog.as_raw_fd() as u32;
    attr[1] = target.as_raw_fd() as u32;
    attr[2] = attach_type;
    // SAFETY: attr is a valid, zero-padded bpf_attr for BPF_LINK_CREATE.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `bpf(BPF_OBJ_PIN)`: pins a link (or any bpf object) at `path` on bpffs.
fn bpf_obj_pin(fd: BorrowedFd, path: &Path) -> std::io::Result<()> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // union bpf_attr, obj_pin: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut attr = [0u64; 4];
    attr[0] = cpath.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    // SAFETY: attr is a valid bpf_attr for BPF_OBJ_PIN; cpath outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A second handle (a duplicated fd) on one of the object's maps, to pin it later.
fn second_handle(ebpf: &Ebpf, name: &str) -> Result<MapData> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| Error::Ebpf(format!("map `{name}` is missing from the object")))?;
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::CgroupStorage(d)
        | Map::RingBuf(d) => d,
        _ => return Err(Error::Ebpf(format!("map `{name}` has an unexpected type"))),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Ebpf(format!("duplicating the fd of map `{name}`: {e}")))?;
    MapData::from_fd(fd).map_err(|e| Error::Ebpf(format!("map `{name}`: {e}")))
}

/// Removes the pins of a session whose agent is gone (its links detach with the last pin).
pub fn remove_pin_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (many container images lack it).
pub fn ensure_bpffs() -> Result<()> {
    let path = Path::new(BPFFS);
    if statfs_type(path) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    match fs::create_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(Error::File {
                path: path.into(),
                source,
            })
        }
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        Error::Ebpf(format!(
            "mounting bpffs at {BPFFS} (to pin the programs so they outlive the agent): {e}"
        ))
    })
}

fn statfs_type(path: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type().0)
}

fn to_map<A: Copy + Ord>(entries: &[PrefixEntry<A>]) -> Result<BTreeMap<(A, u8), Grants>> {
    let mut out = BTreeMap::new();
    for e in entries {
        if e.grants.len() > MAX_GRANTS {
            return Err(Error::Compile(format!(
                "a prefix carries {} port grants; at most {MAX_GRANTS} fit",
                e.grants.len()
            )));
        }
        let mut grants = Grants {
            count: e.grants.len() as u32,
            ..Grants::default()
        };
        for (slot, g) in grants.grants.iter_mut().zip(&e.grants) {
            *slot = PortGrant {
                lo: g.lo,
                hi: g.hi,
                protocols: g.protocols,
                _pad: [0; 3],
                rule_id: g.rule_id,
            };
        }
        out.insert((e.addr, e.prefix_len), grants);
    }
    Ok(out)
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Ebpf(format!("program `{name}` is missing from the object")))?;
    program
        .try_into()
        .map_err(|_| Error::Ebpf(format!("program `{name}` has an unexpected type")))
}

fn take_map<M>(ebpf: &mut Ebpf, name: &str) -> Result<M>
where
    M: TryFrom<aya::maps::Map>,
    M::Error: std::fmt::Display,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Ebpf(format!("map `{name}` is missing from the object")))?;
    M::try_from(map).map_err(|e| Error::Ebpf(format!("map `{name}`: {e}")))
}

fn attach_error(name: &str, e: &dyn std::error::Error) -> Error {
    Error::Ebpf(format!("attaching `{name}`: {}", chain(e)))
}

/// An error with its causes, for the verifier log and errno behind aya's top-level message.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
