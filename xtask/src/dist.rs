//! `cargo xtask dist`: release binaries without debug info, and one Debian package each for the
//! agent (`boundary`) and the gateway (`llm-bridge`).
//!
//! The packages are plain `dpkg-deb --build` runs over a tree staged here, so nothing has to be
//! downloaded: what goes where, with which mode, is the `PackageSpec` list below, and the
//! maintainer scripts, units and default configs are files under `packaging/`. Owners are all
//! root in the archive (`--root-owner-group`); what belongs to the `llm-bridge` user is handed
//! over by its postinst, which also creates that user. Output: `<target dir>/dist/*.deb`.

use crate::setup::{self, Scope};
use crate::shell::{self, capture, step};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MAINTAINER: &str = "AI governance maintainers <ai-governance@example.com>";
const HOMEPAGE: &str = "https://github.com/example/ai-governance";

/// Lintian's complaints that are decisions, not mistakes: (package, or every one; the tag).
const LINTIAN_OVERRIDES: &[(Option<&str>, &str)] = &[
    // The YAML parser is yaml-rust2, pure Rust; lintian recognises libyaml's error strings.
    (None, "embedded-library libyaml *"),
    // Debug info is stripped; the symbol table stays on purpose (backtraces, profilers).
    (None, "unstripped-binary-or-object *"),
    // No debhelper: the scripts call systemctl only when systemd runs (/run/systemd/system).
    (None, "maintainer-script-calls-systemctl *"),
    // Event files are audit records: root only. bridge.yaml may hold provider keys.
    (
        Some("boundary"),
        "non-standard-dir-perm 0750 != 0755 [var/log/boundary/]",
    ),
    (
        Some("llm-bridge"),
        "non-standard-file-perm 0640 != 0644 [etc/llm-bridge/bridge.yaml]",
    ),
    // --help is the manual.
    (None, "no-manual-page *"),
];

/// What `cargo xtask dist` produced.
pub struct Dist {
    /// `<target dir>/release`, where the unstripped binaries (and fake-upstream) are.
    pub release_dir: PathBuf,
    pub packages: Vec<PathBuf>,
}

/// One file of a package: where it comes from, where it goes, its mode.
struct Item {
    source: Source,
    dest: &'static str,
    mode: u32,
}

enum Source {
    /// A release binary, stripped of debug info on the way.
    Binary(&'static str),
    /// A file of the repository.
    Repo(&'static str),
    /// Text generated here.
    Text(String),
}

struct PackageSpec {
    name: &'static str,
    /// The crate whose version the package takes.
    crate_name: &'static str,
    section: &'static str,
    summary: &'static str,
    description: &'static str,
    /// Packages the maintainer scripts need, beyond the binary's shared libraries.
    depends: &'static [&'static str],
    items: Vec<Item>,
    /// Directories shipped empty, with their mode.
    dirs: &'static [(&'static str, u32)],
    /// Edited by the admin; dpkg keeps their edits on upgrade.
    conffiles: &'static [&'static str],
}

fn specs() -> Vec<PackageSpec> {
    let copyright = |name: &str| {
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: {name}\nSource: {HOMEPAGE}\n\n\
             Files: *\nCopyright: 2026 the AI governance authors\nLicense: Apache-2.0\n \
             On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n"
        )
    };
    vec![
        PackageSpec {
            name: "boundary",
            crate_name: "boundary-agent",
            section: "admin",
            summary: "kernel-enforced egress policy for AI agents (agent and CLI)",
            description:
                "Boundary confines a command and everything it spawns to the destinations\n\
                a policy allows, with eBPF programs attached to a cgroup v2, and reports every\n\
                decision as an audit event. This package holds the `boundary` command, the\n\
                agent daemon's systemd unit (boundary-agent.service), a default policy that\n\
                allows loopback only, and a container entrypoint for workspace images.",
            depends: &[],
            items: vec![
                Item {
                    source: Source::Binary("boundary"),
                    dest: "usr/bin/boundary",
                    mode: 0o755,
                },
                Item {
                    source: Source::Repo("packaging/entrypoint.sh"),
                    dest: "usr/sbin/boundary-entrypoint",
                    mode: 0o755,
                },
                Item {
                    source: Source::Repo("packaging/boundary-agent.service"),
                    dest: "lib/systemd/system/boundary-agent.service",
                    mode: 0o644,
                },
                Item {
                    source: Source::Repo("packaging/deb/boundary/config.yaml"),
                    dest: "etc/boundary/config.yaml",
                    mode: 0o644,
                },
                Item {
                    source: Source::Repo("packaging/coder/boundary.tf"),
                    dest: "usr/share/doc/boundary/examples/coder/boundary.tf",
                    mode: 0o644,
                },
                Item {
                    source: Source::Repo("examples/regulated-enterprise.yaml"),
                    dest: "usr/share/doc/boundary/examples/regulated-enterprise.yaml",
                    mode: 0o644,
                },
                Item {
                    source: Source::Repo("examples/ai-tool-standardization.yaml"),
                    dest: "usr/share/doc/boundary/examples/ai-tool-standardization.yaml",
                    mode: 0o644,
                },
                Item {
                    source: Source::Repo("examples/autonomous-agents.yaml"),
                    dest: "usr/share/doc/boundary/examples/autonomous-agents.yaml",
                    mode: 0o644,
                },
                Item {
                    source: Source::Text(copyright("boundary")),
                    dest: "usr/share/doc/boundary/copyright",
                    mode: 0o644,
                },
            ],
            dirs: &[("var/log/boundary", 0o750)],
            conffiles: &["/etc/boundary/config.yaml"],
        },
        PackageSpec {
            name: "llm-bridge",
            crate_name: "bridge",
            section: "net",
            summary: "governed LLM gateway: provider keys, per-user tokens, usage records",
            description:
                "Bridge sits between AI agents and the Anthropic and OpenAI APIs. It holds\n\
                the provider keys, authenticates each user with a bridge token, streams answers\n\
                back byte for byte and records who used which model with which prompt, tools\n\
                and tokens, at what cost (SQLite or PostgreSQL). This package holds the\n\
                `llm-bridge` command, the llm-bridge.service unit running it as the system\n\
                user llm-bridge, and /etc/llm-bridge/bridge.yaml.",
            depends: &["adduser"],
            items: vec![
                Item {
                    source: Source::Binary("llm-bridge"),
                    dest: "usr/bin/llm-bridge",
                    mode: 0o755,
                },
                Item {
                    source: Source::Repo("packaging/llm-bridge.service"),
                    dest: "lib/systemd/system/llm-bridge.service",
                    mode: 0o644,
                },
                Item {
                    source: Source::Repo("packaging/deb/llm-bridge/bridge.yaml"),
                    dest: "etc/llm-bridge/bridge.yaml",
                    // Group llm-bridge is set by the postinst, once the group exists.
                    mode: 0o640,
                },
                Item {
                    source: Source::Repo("examples/bridge.yaml"),
                    dest: "usr/share/doc/llm-bridge/examples/bridge.yaml",
                    mode: 0o644,
                },
                Item {
                    source: Source::Text(copyright("llm-bridge")),
                    dest: "usr/share/doc/llm-bridge/copyright",
                    mode: 0o644,
                },
            ],
            // /var/lib/llm-bridge is made by the postinst: it must belong to a user that
            // does not exist when dpkg unpacks.
            dirs: &[],
            conffiles: &["/etc/llm-bridge/bridge.yaml"],
        },
    ]
}

pub fn run() -> Result<Dist> {
    setup::run(Scope::Demo)?;
    let meta = shell::metadata()?;
    let target = PathBuf::from(
        meta["target_directory"]
            .as_str()
            .context("`cargo metadata` reported no target_directory")?,
    );
    // fake-upstream comes along (same crate, one build): the install test puts it upstream.
    let release_dir = shell::build_release_binaries()?;
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let out = target.join("dist");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    step("Debian packages")?;
    let mut packages = Vec::new();
    for spec in specs() {
        let version = crate_version(&meta, spec.crate_name)?;
        packages.push(build_package(&spec, &version, &arch, &release_dir, &out)?);
    }
    for deb in &packages {
        capture(Command::new("dpkg-deb").arg("--info").arg(deb))
            .with_context(|| format!("{} is not a valid package", deb.display()))?;
        if shell::output(Command::new("lintian").arg("--version")).is_some() {
            // Advice, not a gate: lintian is not on every build machine.
            let _ = Command::new("lintian")
                .args(["--tag-display-limit", "0"])
                .arg(deb)
                .status();
        }
    }
    println!();
    for deb in &packages {
        let size = std::fs::metadata(deb)?.len();
        println!("{}  {}", deb.display(), human(size));
    }
    Ok(Dist {
        release_dir,
        packages,
    })
}

fn crate_version(meta: &serde_json::Value, name: &str) -> Result<String> {
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["version"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no crate {name} in `cargo metadata`"))
}

fn build_package(
    spec: &PackageSpec,
    version: &str,
    arch: &str,
    release_dir: &Path,
    out: &Path,
) -> Result<PathBuf> {
    let root = shell::workspace_root();
    let stage = out.join("stage").join(spec.name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("removing the old {}", stage.display()))?;
    }
    let mut depends: Vec<String> = Vec::new();
    for item in &spec.items {
        let dest = stage.join(item.dest);
        std::fs::create_dir_all(dest.parent().expect("a file under a directory"))?;
        match &item.source {
            Source::Binary(name) => {
                let built = release_dir.join(name);
                // Debug info is most of a release binary; symbol names stay for backtraces
                // and profilers.
                shell::run(
                    Command::new("objcopy")
                        .arg("--strip-debug")
                        .arg(&built)
                        .arg(&dest),
                )?;
                for dep in shared_library_depends(&built)? {
                    if !depends.contains(&dep) {
                        depends.push(dep);
                    }
                }
            }
            Source::Repo(path) => {
                std::fs::copy(root.join(path), &dest)
                    .with_context(|| format!("copying {path} into the package"))?;
            }
            Source::Text(text) => std::fs::write(&dest, text)?,
        }
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(item.mode))?;
    }
    // Debian wants a changelog in every package, and lintian is told once, here, which of its
    // complaints are choices (see `LINTIAN_OVERRIDES`).
    let doc = stage.join("usr/share/doc").join(spec.name);
    std::fs::create_dir_all(&doc)?;
    let date = capture(Command::new("date").arg("-R"))?;
    let changelog = format!(
        "{} ({version}) unstable; urgency=medium\n\n  * Built by `cargo xtask dist`.\n\n -- {MAINTAINER}  {}\n",
        spec.name,
        date.trim()
    );
    std::fs::write(doc.join("changelog"), changelog)?;
    shell::run(
        Command::new("gzip")
            .args(["-9n", "-f"])
            .arg(doc.join("changelog")),
    )?;
    std::fs::set_permissions(
        doc.join("changelog.gz"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let overrides = stage.join("usr/share/lintian/overrides");
    std::fs::create_dir_all(&overrides)?;
    let mut text = String::new();
    for (package, tag) in LINTIAN_OVERRIDES {
        if package.is_none_or(|p| p == spec.name) {
            writeln!(text, "{}: {tag}", spec.name)?;
        }
    }
    std::fs::write(overrides.join(spec.name), text)?;
    std::fs::set_permissions(
        overrides.join(spec.name),
        std::fs::Permissions::from_mode(0o644),
    )?;
    for (dir, mode) in spec.dirs {
        let path = stage.join(dir);
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
    }
    // Directories dpkg creates on the way are 0755 whatever the umask was.
    set_dir_modes(&stage, spec.dirs)?;
    depends.extend(spec.depends.iter().map(|d| d.to_string()));

    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    for script in ["postinst", "prerm", "postrm"] {
        let from = root.join("packaging/deb").join(spec.name).join(script);
        if from.exists() {
            let to = debian.join(script);
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let mut conffiles = String::new();
    for c in spec.conffiles {
        writeln!(conffiles, "{c}")?;
    }
    std::fs::write(debian.join("conffiles"), conffiles)?;
    std::fs::write(debian.join("md5sums"), md5sums(&stage)?)?;
    let mut control = format!(
        "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {}\nDepends: {}\nSection: {}\nPriority: optional\nHomepage: {HOMEPAGE}\n\
         Description: {}\n",
        spec.name,
        installed_size_kib(&stage)?,
        depends.join(", "),
        spec.section,
        spec.summary,
    );
    for line in spec.description.lines() {
        let line = line.trim();
        control.push(' ');
        control.push_str(if line.is_empty() { "." } else { line });
        control.push('\n');
    }
    std::fs::write(debian.join("control"), control)?;
    for file in ["control", "conffiles", "md5sums"] {
        std::fs::set_permissions(debian.join(file), std::fs::Permissions::from_mode(0o644))?;
    }

    let deb = out.join(format!("{}_{version}_{arch}.deb", spec.name));
    shell::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb)
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(deb)
}

/// Every staged directory not listed with a mode of its own gets 0755.
fn set_dir_modes(dir: &Path, listed: &[(&str, u32)]) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            let listed_here = listed.iter().any(|(d, _)| path.ends_with(d));
            if !listed_here {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
            set_dir_modes(&path, listed)?;
        }
    }
    Ok(())
}

fn files_under(dir: &Path, base: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path == base.join("DEBIAN") {
            continue;
        }
        if path.is_dir() {
            files_under(&path, base, found)?;
        } else {
            found.push(path.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    files_under(stage, stage, &mut files)?;
    capture(Command::new("md5sum").args(&files).current_dir(stage))
}

fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut files = Vec::new();
    files_under(stage, stage, &mut files)?;
    let mut bytes = 0;
    for f in files {
        bytes += std::fs::metadata(stage.join(f))?.len();
    }
    Ok(bytes.div_ceil(1024))
}

/// The packages holding the binary's shared libraries, as dpkg-shlibdeps would name them, and
/// libc6 at least at the newest glibc symbol version the binary uses.
fn shared_library_depends(binary: &Path) -> Result<Vec<String>> {
    let ldd = capture(Command::new("ldd").arg(binary))?;
    let mut depends = Vec::new();
    for line in ldd.lines() {
        let Some((_, rest)) = line.split_once("=> ") else {
            continue;
        };
        let Some(path) = rest
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        else {
            continue;
        };
        let package = owning_package(Path::new(path))
            .with_context(|| format!("which package holds {path} (needed by {binary:?})?"))?;
        if package != "libc6" && !depends.contains(&package) {
            depends.push(package);
        }
    }
    let symbols = capture(Command::new("objdump").arg("-T").arg(binary))?;
    let newest = symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            parts
        })
        .max()
        .context("no glibc symbol versions in the binary")?;
    let newest: Vec<String> = newest.iter().map(u32::to_string).collect();
    depends.insert(0, format!("libc6 (>= {})", newest.join(".")));
    Ok(depends)
}

fn owning_package(path: &Path) -> Result<String> {
    let mut candidates = vec![path.to_path_buf()];
    if let Ok(real) = path.canonicalize() {
        candidates.push(real);
    }
    // Merged /usr: dpkg may know a library by its /lib or its /usr/lib name.
    if let Ok(rest) = path.strip_prefix("/usr") {
        candidates.push(Path::new("/").join(rest));
    } else {
        candidates.push(Path::new("/usr").join(path.strip_prefix("/")?));
    }
    for candidate in candidates {
        if let Some(found) = shell::output(Command::new("dpkg").arg("-S").arg(&candidate)) {
            if let Some((package, _)) = found.lines().next().and_then(|l| l.split_once(": ")) {
                let package = package.split(':').next().unwrap_or(package);
                return Ok(package.to_string());
            }
        }
    }
    bail!("no installed package holds {}", path.display())
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}
