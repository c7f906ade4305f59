//! Loads the eBPF programs, keeps their maps in step with the compiled policy, and attaches
//! them to a session cgroup.
//!
//! Fail closed: the attachments are bpf links pinned on bpffs, so they outlive the agent. If
//! the agent is killed, the wrapped processes stay confined by the last policy it installed;
//! only an explicit [`Enforcer::detach`] (after the session's processes are gone) removes them.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{CgroupSock, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use boundary_common::{Grants, PortGrant, Settings, MAX_GRANTS};

use crate::error::{Error, Result};
use crate::policy::{CompiledPolicy, PrefixEntry};

/// The compiled eBPF object, built by build.rs from boundary-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/boundary.bpf.o"));

/// Where bpffs is mounted, and the directory of Boundary's pinned links under it.
pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/boundary";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Sock-addr programs and the hook each one attaches to (the ELF section names them).
const SOCK_ADDR_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
const SOCK_PROGRAMS: [&str; 1] = ["sock_create"];

/// One loaded copy of the programs with its own maps: one per session, so that sessions
/// with different policies never share state.
pub struct Enforcer {
    ebpf: Ebpf,
    allow_v4: LpmTrie<MapData, [u8; 4], Grants>,
    allow_v6: LpmTrie<MapData, [u8; 16], Grants>,
    lost: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    installed_v4: BTreeMap<(Ipv4Addr, u8), Grants>,
    installed_v6: BTreeMap<(Ipv6Addr, u8), Grants>,
    pins: Vec<PinnedLink>,
    pin_dir: Option<PathBuf>,
}

/// The two event rings, handed to the event reader.
pub struct Rings {
    pub deny: RingBuf<MapData>,
    pub allow: RingBuf<MapData>,
}

impl Enforcer {
    /// Loads and verifies the programs. Nothing is attached yet.
    pub fn load(settings: Settings) -> Result<(Enforcer, Rings)> {
        // No CO-RE relocations are needed (the programs only touch the stable sock_addr and
        // sock contexts), so the kernel's BTF is not parsed: that alone would cost ~30 MB.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(|e| Error::Ebpf(format!("{e:#}")))?;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|e| Error::Ebpf(format!("verifier rejected `{name}`: {}", chain(&e))))?;
        }
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSock = program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|e| Error::Ebpf(format!("verifier rejected `{name}`: {}", chain(&e))))?;
        }
        let mut settings_map: Array<MapData, Settings> = take_map(&mut ebpf, "SETTINGS")?;
        settings_map
            .set(0, settings, 0)
            .map_err(|e| Error::Ebpf(format!("writing SETTINGS: {e}")))?;
        let rings = Rings {
            deny: take_map(&mut ebpf, "DENY_EVENTS")?,
            allow: take_map(&mut ebpf, "ALLOW_EVENTS")?,
        };
        let enforcer = Enforcer {
            allow_v4: take_map(&mut ebpf, "ALLOW_V4")?,
            allow_v6: take_map(&mut ebpf, "ALLOW_V6")?,
            lost: take_map(&mut ebpf, "LOST")?,
            settings: settings_map,
            installed_v4: BTreeMap::new(),
            installed_v6: BTreeMap::new(),
            pins: Vec::new(),
            pin_dir: None,
            ebpf,
        };
        Ok((enforcer, rings))
    }

    /// Switches mode (enforce/audit) or event reporting; takes effect at the next connect.
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        self.settings
            .set(0, settings, 0)
            .map_err(|e| Error::Ebpf(format!("writing SETTINGS: {e}")))
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

    /// Attaches every program to `cgroup` and pins the links under `PIN_ROOT/<session>`.
    pub fn attach(&mut self, cgroup: &impl AsFd, session: &str) -> Result<()> {
        ensure_bpffs()?;
        let dir = Path::new(PIN_ROOT).join(session);
        fs::create_dir_all(&dir).map_err(|source| Error::File {
            path: dir.clone(),
            source,
        })?;
        self.pin_dir = Some(dir.clone());
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let link = program
                .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                .and_then(|id| program.take_link(id))
                .map_err(|e| attach_error(name, &e))?;
            self.pin(
                FdLink::try_from(link).map_err(|e| attach_error(name, &e))?,
                &dir,
                name,
            )?;
        }
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSock = program_mut(&mut self.ebpf, name)?;
            let link = program
                .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                .and_then(|id| program.take_link(id))
                .map_err(|e| attach_error(name, &e))?;
            self.pin(
                FdLink::try_from(link).map_err(|e| attach_error(name, &e))?,
                &dir,
                name,
            )?;
        }
        Ok(())
    }

    fn pin(&mut self, link: FdLink, dir: &Path, name: &str) -> Result<()> {
        let path = dir.join(name);
        let pinned = link
            .pin(&path)
            .map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
        self.pins.push(pinned);
        Ok(())
    }

    /// Events the kernel could not queue because a ring was full: (deny, allow), summed over CPUs.
    pub fn lost(&self) -> (u64, u64) {
        let sum = |i: u32| {
            self.lost
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        (sum(0), sum(1))
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
