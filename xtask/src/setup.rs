//! Idempotent installation of everything the project needs on a fresh Debian 12 machine.
//!
//! Each piece is checked first and installed only when missing, so running this on every
//! `cargo xtask test` costs well under a second once the machine is prepared.

use crate::shell::{self, output, step};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// bpf-linker must be built against the same LLVM as the pinned nightly (docs/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// The eBPF crate's toolchain file: the one place the nightly is pinned.
const TOOLCHAIN_FILE: &str = "boundary-ebpf/rust-toolchain.toml";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What building and running Boundary and Bridge needs.
    Demo,
    /// Plus what the test suites need.
    Tests,
}

impl Scope {
    pub fn from_flag(for_tests: bool) -> Scope {
        if for_tests {
            Scope::Tests
        } else {
            Scope::Demo
        }
    }
}

pub fn run(scope: Scope) -> Result<()> {
    step("setup: Debian packages, the pinned nightly and its rust-src, bpf-linker")?;
    debian_packages(scope)?;
    let nightly = Nightly::pinned()?;
    nightly.install()?;
    bpf_linker(&nightly)?;
    if scope == Scope::Tests {
        python_venv()?;
    }
    Ok(())
}

fn debian_packages(scope: Scope) -> Result<()> {
    let mut wanted = vec!["curl", "iproute2", "python3", "ca-certificates"];
    if scope == Scope::Tests {
        // chromium: the audit page's browser tests (driven by playwright, never a browser
        // download of its own).
        wanted.extend([
            "postgresql",
            "python3-venv",
            "dnsutils",
            "nodejs",
            "chromium",
        ]);
    }
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install -y {}` or run this as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        shell::run(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// The nightly named in the eBPF crate's rust-toolchain.toml.
pub struct Nightly {
    /// e.g. `nightly-2026-05-20`.
    channel: String,
    /// The first line of its `rustc -vV`, from the comment `# rustc: ...` in the same file.
    rustc: Option<String>,
}

impl Nightly {
    fn pinned() -> Result<Nightly> {
        let path = shell::workspace_root().join(TOOLCHAIN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let channel = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("channel"))
            .filter_map(|rest| rest.trim().strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .find(|v| !v.is_empty())
            .with_context(|| format!("{}: no `channel = \"...\"`", path.display()))?;
        let rustc = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("# rustc:"))
            .map(|v| format!("rustc {}", v.trim()));
        Ok(Nightly { channel, rustc })
    }

    fn rustc_version(&self) -> Option<String> {
        output(
            Command::new("rustc")
                .arg(format!("+{}", self.channel))
                .arg("-vV"),
        )
    }

    /// The pinned nightly with rust-src. When the generic `nightly` toolchain already is that
    /// exact build (its `rustc -V` is the one the toolchain file records), it is registered
    /// under the pinned name instead of downloading it again.
    fn install(&self) -> Result<()> {
        if self.rustc_version().is_none() {
            let generic = output(Command::new("rustc").args(["+nightly", "-V"]));
            let same = match (&generic, &self.rustc) {
                (Some(g), Some(want)) => g.trim() == want,
                _ => false,
            };
            if same {
                self.link_generic_nightly()?;
            } else {
                eprintln!("installing the pinned toolchain {}", self.channel);
                shell::run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    &self.channel,
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]))?;
            }
        }
        let installed = output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            &self.channel,
            "--installed",
        ]))
        .with_context(|| format!("the toolchain {} is not usable", self.channel))?;
        if installed.lines().any(|l| l.starts_with("rust-src")) {
            return Ok(());
        }
        shell::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &self.channel,
        ]))
    }

    /// `$RUSTUP_HOME/toolchains/<channel>-<host>` as a symlink to the generic nightly's
    /// directory: the layout rustup itself reads for an installed dated toolchain.
    fn link_generic_nightly(&self) -> Result<()> {
        let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("cannot run `rustc +nightly`")?;
        let sysroot = PathBuf::from(sysroot.trim());
        let generic = sysroot
            .file_name()
            .and_then(|n| n.to_str())
            .context("the nightly's sysroot has no name")?;
        let host = generic
            .strip_prefix("nightly-")
            .context("the generic nightly's directory is not nightly-<host>")?;
        let link = sysroot
            .parent()
            .context("the nightly's sysroot has no parent")?
            .join(format!("{}-{host}", self.channel));
        eprintln!(
            "the installed nightly is {}: registering it as {}",
            self.channel,
            link.display()
        );
        std::os::unix::fs::symlink(&sysroot, &link)
            .with_context(|| format!("linking {}", link.display()))
    }

    /// The toolchain's shared libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
    fn libllvm(&self) -> Result<(PathBuf, String)> {
        let sysroot = output(
            Command::new("rustc")
                .arg(format!("+{}", self.channel))
                .args(["--print", "sysroot"]),
        )
        .with_context(|| format!("cannot run `rustc +{}`", self.channel))?;
        let lib = Path::new(sysroot.trim()).join("lib");
        for entry in
            std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with("libLLVM.so.") {
                return Ok((lib, name));
            }
        }
        bail!("no libLLVM.so.* in {}", lib.display())
    }
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

fn bpf_linker(nightly: &Nightly) -> Result<()> {
    let (lib, soname) = nightly.libllvm()?;
    let linker = cargo_bin("bpf-linker");
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let cache = home.join(".cache/boundary");
    // What the linker was built for: the exact nightly build and the linker's own version. A
    // new pin, even one with the same LLVM soname, rebuilds it.
    let stamp = cache.join("bpf-linker.stamp");
    let wanted = format!(
        "bpf-linker {BPF_LINKER_VERSION} {BPF_LINKER_LLVM_FEATURE}\n{}",
        nightly
            .rustc_version()
            .with_context(|| format!("cannot run `rustc +{} -vV`", nightly.channel))?
    );
    // Outside the checkout: the linker keeps loading libLLVM through this prefix after the
    // clone it was built from is gone.
    let prefix = cache.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    if let Some(ldd) = output(Command::new("ldd").arg(&linker)) {
        let version = output(Command::new(&linker).arg("--version")).unwrap_or_default();
        let loads = ldd.contains(&soname)
            && !ldd.contains("not found")
            && version.contains(BPF_LINKER_VERSION);
        let stamped = std::fs::read_to_string(&stamp).ok();
        if loads && stamped.as_deref() == Some(wanted.as_str()) {
            return Ok(());
        }
        // A linker built before the stamp existed is kept when the library it loads is the
        // pinned toolchain's very file.
        let same_file = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
        if loads && stamped.is_none() && same_file(&prefix_lib.join(&soname), &lib.join(&soname)) {
            std::fs::create_dir_all(&cache)?;
            std::fs::write(&stamp, &wanted)?;
            return Ok(());
        }
    }
    eprintln!(
        "building bpf-linker {BPF_LINKER_VERSION} against {soname} of {} (about a minute)",
        nightly.channel
    );
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so".to_string(), soname.clone()] {
        let path = prefix_lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib.join(&soname), &path)?;
    }
    let _ = std::fs::remove_file(&stamp);
    shell::run(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp, &wanted)?;
    Ok(())
}

fn python_venv() -> Result<()> {
    let root = shell::workspace_root();
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    let requirements = root.join("bridge/tests/sdk/requirements.txt");
    let ready = output(Command::new(&python).args([
        "-c",
        "import anthropic, openai, google.genai, pytest, playwright",
    ]))
    .is_some();
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&requirements).unwrap_or_default();
    if ready && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    eprintln!(
        "creating the Python venv with the official SDKs in {}",
        venv.display()
    );
    if !python.exists() {
        shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    shell::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
    )?;
    std::fs::write(stamp, wanted)?;
    Ok(())
}
