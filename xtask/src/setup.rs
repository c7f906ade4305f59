//! Idempotent installation of everything the project needs on a fresh Debian 12 machine.
//!
//! Each piece is checked first and installed only when missing, so running this on every
//! `cargo xtask test` costs well under a second once the machine is prepared.

use crate::shell::{self, output, step};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// bpf-linker must be built against the same LLVM major as the nightly rustc (TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

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
    step("setup: Debian packages, rust-src, bpf-linker")?;
    debian_packages(scope)?;
    rust_src()?;
    bpf_linker()?;
    if scope == Scope::Tests {
        python_venv()?;
    }
    Ok(())
}

fn debian_packages(scope: Scope) -> Result<()> {
    let mut wanted = vec!["curl", "iproute2", "python3", "ca-certificates"];
    if scope == Scope::Tests {
        wanted.extend(["postgresql", "python3-venv", "dnsutils", "nodejs"]);
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

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the `nightly` toolchain is required (rustup toolchain install nightly)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    shell::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// The nightly's shared libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_libllvm() -> Result<(PathBuf, String)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("cannot run `rustc +nightly`")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") {
            return Ok((lib, name));
        }
    }
    bail!("no libLLVM.so.* in {}", lib.display())
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

fn bpf_linker() -> Result<()> {
    let (lib, soname) = nightly_libllvm()?;
    let linker = cargo_bin("bpf-linker");
    // Up to date when it runs and links the nightly's current libLLVM: a replaced nightly
    // changes the soname, and the old binary then fails to load.
    if let Some(ldd) = output(Command::new("ldd").arg(&linker)) {
        let version = output(Command::new(&linker).arg("--version")).unwrap_or_default();
        if ldd.contains(&soname)
            && !ldd.contains("not found")
            && version.contains(BPF_LINKER_VERSION)
        {
            return Ok(());
        }
    }
    eprintln!("building bpf-linker {BPF_LINKER_VERSION} against {soname} (about a minute)");
    // Outside the checkout: the linker keeps loading libLLVM through this prefix after the
    // clone it was built from is gone.
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let prefix = home.join(".cache/boundary/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so".to_string(), soname.clone()] {
        let path = prefix_lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib.join(&soname), &path)?;
    }
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
    )
}

fn python_venv() -> Result<()> {
    let root = shell::workspace_root();
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    let requirements = root.join("bridge/tests/sdk/requirements.txt");
    let ready = output(
        Command::new(&python).args(["-c", "import anthropic, openai, google.genai, pytest"]),
    )
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
