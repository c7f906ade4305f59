//! Loads the eBPF programs, keeps their maps in step with the compiled policy, and attaches
//! them to a session cgroup (a fresh one, or an existing one in whole-workspace mode).
//!
//! Fail closed: the attachments are bpf links pinned on bpffs, so they outlive the agent. If
//! the agent is killed, the wrapped processes stay confined by the last policy it installed;
//! only an explicit [`Enforcer::detach`] (after the session's processes are gone) removes them.
//! The session's maps are pinned beside its links, so a restarted agent reopens them with
//! [`Enforcer::adopt`] (policy, settings, exemptions and unread events included) without a
//! moment in which the session is unconfined.
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

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, LsmCgroup};
use aya::{Btf, Ebpf, EbpfLoader};
use boundary_common::{
    Grants, PortGrant, Settings, LOST_ALLOW, LOST_DENY, MAX_GRANTS, SUPPRESSED_ALLOW,
    SUPPRESSED_EGRESS,
};

use crate::error::{Error, Result};
use crate::policy::{CompiledPolicy, PrefixEntry};

mod seccomp;
pub use seccomp::{supervise, Refusal, SyscallFilter};

/// The compiled eBPF object, built by build.rs from boundary-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/boundary.bpf.o"));

/// Where bpffs is mounted, and the directory of Boundary's pinned links under it.
pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/boundary";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SECURITYFS: &str = "/sys/kernel/security";

/// Set to `1` to run without the BPF LSM programs even where the kernel accepts them.
pub const ENV_WITHOUT_LSM: &str = "BOUNDARY_WITHOUT_LSM";

/// How each program is loaded and attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SockAddr,
    Sock,
    Sockopt,
    Egress,
    /// BPF LSM attached to a cgroup, on the named LSM hook.
    Lsm(&'static str),
}

/// Every program, by its name in the object (the pin of its link has the same name).
const PROGRAMS: [(&str, Kind); 14] = [
    ("connect4", Kind::SockAddr),
    ("connect6", Kind::SockAddr),
    ("sendmsg4", Kind::SockAddr),
    ("sendmsg6", Kind::SockAddr),
    // DNS replies from the session's proxy, shown as coming from the nameserver asked.
    ("recvmsg4", Kind::SockAddr),
    ("recvmsg6", Kind::SockAddr),
    ("getpeername4", Kind::SockAddr),
    ("getpeername6", Kind::SockAddr),
    ("sock_create", Kind::Sock),
    ("setsockopt", Kind::Sockopt),
    ("egress", Kind::Egress),
    ("lsm_socket_create", Kind::Lsm("socket_create")),
    ("lsm_bpf", Kind::Lsm("bpf")),
    ("lsm_userns_create", Kind::Lsm("userns_create")),
];

/// Every map, pinned under the session's directory by its name in the object.
const MAPS: [&str; 9] = [
    "ALLOW_V4",
    "ALLOW_V6",
    "SETTINGS",
    "DENY_EVENTS",
    "ALLOW_EVENTS",
    "LOST",
    "EXEMPT",
    "ALLOW_SEEN",
    "EGRESS_SEEN",
];

/// One loaded copy of the programs with its own maps: one per session, so that sessions
/// with different policies never share state.
pub struct Enforcer {
    /// The loaded object; `None` for an adopted session (its programs live on in its links).
    ebpf: Option<Ebpf>,
    allow_v4: LpmTrie<MapData, [u8; 4], Grants>,
    allow_v6: LpmTrie<MapData, [u8; 16], Grants>,
    lost: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    exempt: HashMap<MapData, u64, u8>,
    /// What `SETTINGS` holds (with the loader's own `exempt` flag).
    current: Settings,
    /// A second handle on each map, pinned by `attach`.
    map_handles: Vec<(&'static str, MapData)>,
    installed_v4: BTreeMap<(Ipv4Addr, u8), Grants>,
    installed_v6: BTreeMap<(Ipv6Addr, u8), Grants>,
    pins: Vec<PinnedLink>,
    pin_dir: Option<PathBuf>,
    lsm: bool,
}

/// The two event rings, handed to the event reader.
pub struct Rings {
    pub deny: RingBuf<MapData>,
    pub allow: RingBuf<MapData>,
}

impl Enforcer {
    /// Loads and verifies the programs. Nothing is attached yet.
    pub fn load(settings: Settings) -> Result<(Enforcer, Rings)> {
        // No CO-RE relocations are needed (the programs only touch stable program contexts
        // and LSM hook arguments), so the object is loaded without the kernel's BTF; only the
        // LSM programs need it, for the ids of their hooks, and it is dropped right after.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(|e| Error::Ebpf(format!("{e:#}")))?;
        for (name, kind) in PROGRAMS {
            let result = match kind {
                Kind::SockAddr => program_mut::<CgroupSockAddr>(&mut ebpf, name)?.load(),
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
        let mut settings_map: Array<MapData, Settings> = take_map(&mut ebpf, "SETTINGS")?;
        let current = Settings {
            exempt: 0,
            ..settings
        };
        settings_map
            .set(0, current, 0)
            .map_err(|e| Error::Ebpf(format!("writing SETTINGS: {e}")))?;
        let rings = Rings {
            deny: take_map(&mut ebpf, "DENY_EVENTS")?,
            allow: take_map(&mut ebpf, "ALLOW_EVENTS")?,
        };
        let enforcer = Enforcer {
            allow_v4: take_map(&mut ebpf, "ALLOW_V4")?,
            allow_v6: take_map(&mut ebpf, "ALLOW_V6")?,
            lost: take_map(&mut ebpf, "LOST")?,
            exempt: take_map(&mut ebpf, "EXEMPT")?,
            settings: settings_map,
            current,
            map_handles,
            installed_v4: BTreeMap::new(),
            installed_v6: BTreeMap::new(),
            pins: Vec::new(),
            pin_dir: None,
            lsm,
            ebpf: Some(ebpf),
        };
        Ok((enforcer, rings))
    }

    /// Reopens a running session from its pins under `PIN_ROOT/<session>`: its links stay
    /// attached throughout (the session is never unconfined), its maps are the live ones, and
    /// the returned rings hold whatever events were not read yet. `apply` then diffs against
    /// what the maps hold.
    pub fn adopt(session: &str) -> Result<(Enforcer, Rings)> {
        let dir = Path::new(PIN_ROOT).join(session);
        if !dir.is_dir() {
            return Err(Error::Ebpf(format!(
                "no pinned session at {} (nothing to adopt)",
                dir.display()
            )));
        }
        let open = |name: &str| -> Result<Map> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| Error::Ebpf(format!("opening {}: {}", path.display(), chain(&e))))?;
            Map::from_map_data(data).map_err(|e| Error::Ebpf(format!("map `{name}`: {e}")))
        };
        fn typed<M>(map: Map, name: &str) -> Result<M>
        where
            M: TryFrom<Map>,
            M::Error: std::fmt::Display,
        {
            M::try_from(map).map_err(|e| Error::Ebpf(format!("map `{name}`: {e}")))
        }
        let mut pins = Vec::new();
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
            let link = PinnedLink::from_pin(&path)
                .map_err(|e| Error::Ebpf(format!("opening {}: {}", path.display(), chain(&e))))?;
            lsm |= matches!(kind, Kind::Lsm(_));
            pins.push(link);
        }
        if pins.is_empty() {
            return Err(Error::Ebpf(format!(
                "no pinned links in {} (nothing to adopt)",
                dir.display()
            )));
        }
        let mut map_handles = Vec::with_capacity(MAPS.len());
        for name in MAPS {
            let path = dir.join(name);
            if let Ok(data) = MapData::from_pin(&path) {
                map_handles.push((name, data));
            }
        }
        let allow_v4: LpmTrie<MapData, [u8; 4], Grants> = typed(open("ALLOW_V4")?, "ALLOW_V4")?;
        let allow_v6: LpmTrie<MapData, [u8; 16], Grants> = typed(open("ALLOW_V6")?, "ALLOW_V6")?;
        let settings: Array<MapData, Settings> = typed(open("SETTINGS")?, "SETTINGS")?;
        let current = settings
            .get(&0, 0)
            .map_err(|e| Error::Ebpf(format!("reading SETTINGS: {e}")))?;
        let mut installed_v4 = BTreeMap::new();
        for item in allow_v4.iter() {
            let (key, grants) = item.map_err(|e| Error::Ebpf(format!("reading ALLOW_V4: {e}")))?;
            installed_v4.insert((Ipv4Addr::from(key.data()), key.prefix_len() as u8), grants);
        }
        let mut installed_v6 = BTreeMap::new();
        for item in allow_v6.iter() {
            let (key, grants) = item.map_err(|e| Error::Ebpf(format!("reading ALLOW_V6: {e}")))?;
            installed_v6.insert((Ipv6Addr::from(key.data()), key.prefix_len() as u8), grants);
        }
        let rings = Rings {
            deny: typed(open("DENY_EVENTS")?, "DENY_EVENTS")?,
            allow: typed(open("ALLOW_EVENTS")?, "ALLOW_EVENTS")?,
        };
        let enforcer = Enforcer {
            ebpf: None,
            allow_v4,
            allow_v6,
            lost: typed(open("LOST")?, "LOST")?,
            exempt: typed(open("EXEMPT")?, "EXEMPT")?,
            settings,
            current,
            map_handles,
            installed_v4,
            installed_v6,
            pins,
            pin_dir: Some(dir),
            lsm,
        };
        Ok((enforcer, rings))
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
        self.settings
            .set(0, settings, 0)
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
        let have: BTreeSet<u64> = self.exempt.keys().filter_map(|k| k.ok()).collect();
        for id in want.difference(&have) {
            self.exempt
                .insert(id, 1, 0)
                .map_err(|e| Error::Ebpf(format!("exempting cgroup {id}: {e}")))?;
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
            self.exempt
                .remove(id)
                .map_err(|e| Error::Ebpf(format!("removing exemption of cgroup {id}: {e}")))?;
        }
        Ok(())
    }

    /// Makes the kernel tries equal `compiled`: adds and changes first, then removes, so an
    /// address that stays allowed is never briefly denied.
    pub fn apply(&mut self, compiled: &CompiledPolicy) -> Result<()> {
        let want_v4 = to_map(&compiled.v4)?;
        let want_v6 = to_map(&compiled.v6)?;
        for (&(addr, len), grants) in &want_v4 {
            if self.installed_v4.get(&(addr, len)) != Some(grants) {
                self.allow_v4
                    .insert(&Key::new(u32::from(len), addr.octets()), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
            }
        }
        for (&(addr, len), grants) in &want_v6 {
            if self.installed_v6.get(&(addr, len)) != Some(grants) {
                self.allow_v6
                    .insert(&Key::new(u32::from(len), addr.octets()), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
            }
        }
        for &(addr, len) in self.installed_v4.keys() {
            if !want_v4.contains_key(&(addr, len)) {
                self.allow_v4
                    .remove(&Key::new(u32::from(len), addr.octets()))
                    .map_err(|e| Error::Compile(format!("removing {addr}/{len}: {e}")))?;
            }
        }
        for &(addr, len) in self.installed_v6.keys() {
            if !want_v6.contains_key(&(addr, len)) {
                self.allow_v6
                    .remove(&Key::new(u32::from(len), addr.octets()))
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
        for ((addr, len), grants) in to_map(&entries.v4)? {
            if self.installed_v4.get(&(addr, len)) != Some(&grants) {
                self.allow_v4
                    .insert(&Key::new(u32::from(len), addr.octets()), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
                self.installed_v4.insert((addr, len), grants);
            }
        }
        for ((addr, len), grants) in to_map(&entries.v6)? {
            if self.installed_v6.get(&(addr, len)) != Some(&grants) {
                self.allow_v6
                    .insert(&Key::new(u32::from(len), addr.octets()), grants, 0)
                    .map_err(|e| Error::Compile(format!("inserting {addr}/{len}: {e}")))?;
                self.installed_v6.insert((addr, len), grants);
            }
        }
        Ok(())
    }

    /// Attaches every program to `cgroup` and pins the links and maps under
    /// `PIN_ROOT/<session>`. `cgroup` may be a fresh session cgroup or an existing one
    /// (whole-workspace mode: see [`Enforcer::set_exempt`]); the programs apply to it and
    /// every cgroup below it.
    pub fn attach(&mut self, cgroup: &impl AsFd, session: &str) -> Result<()> {
        ensure_bpffs()?;
        let dir = Path::new(PIN_ROOT).join(session);
        fs::create_dir_all(&dir).map_err(|source| Error::File {
            path: dir.clone(),
            source,
        })?;
        self.pin_dir = Some(dir.clone());
        // Maps first: whoever finds the links pinned can also find the maps.
        for (name, data) in &self.map_handles {
            let path = dir.join(name);
            data.pin(&path)
                .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
        }
        let Some(ebpf) = self.ebpf.as_mut() else {
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
                Kind::SockAddr => {
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
                    raw_links.push((name, link));
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
            links.push((name, link));
        }
        if lsm_failed {
            self.lsm = false;
        }
        for (name, link) in links {
            let path = dir.join(name);
            let pinned = link
                .pin(&path)
                .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
            self.pins.push(pinned);
        }
        for (name, link) in raw_links {
            let path = dir.join(name);
            bpf_obj_pin(link.as_fd(), &path)
                .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
            let pinned = PinnedLink::from_pin(&path)
                .map_err(|e| Error::Ebpf(format!("reopening {}: {}", path.display(), chain(&e))))?;
            self.pins.push(pinned);
        }
        Ok(())
    }

    /// Events the kernel could not queue because a ring was full: (deny, allow), summed over CPUs.
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

    fn counter(&self, slot: u32) -> u64 {
        self.lost
            .get(&slot, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Whether the BPF LSM programs are part of this enforcer (socket families, bpf(), user
    /// namespaces).
    pub fn has_lsm(&self) -> bool {
        self.lsm
    }

    /// Unpins and detaches. Call only once the session's processes are gone.
    pub fn detach(mut self) -> Result<()> {
        for pinned in self.pins.drain(..) {
            pinned
                .unpin()
                .map_err(|e| Error::Ebpf(format!("unpinning: {e}")))?;
        }
        if let Some(dir) = self.pin_dir.take() {
            remove_pin_dir(&dir);
        }
        Ok(())
    }
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
