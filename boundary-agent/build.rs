//! Builds the eBPF programs (boundary-ebpf) with the nightly toolchain and bpf-linker, and
//! hands the object to the agent, which embeds it with `include_bytes!`.
//!
//! The eBPF crate is its own workspace (target `bpfel-unknown-none`, `build-std`), so it is
//! built by a nested `rustup run nightly cargo build` with the outer cargo's environment
//! removed: flags meant for the host (RUSTFLAGS, clippy's wrapper, the target dir) must not
//! leak into it. `BOUNDARY_EBPF_OBJECT=/path/to/object` skips the build and uses that file.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=BOUNDARY_EBPF_OBJECT");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let object = match env::var_os("BOUNDARY_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => build_ebpf()?,
    };
    std::fs::copy(&object, out.join("boundary.bpf.o"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

fn build_ebpf() -> Result<PathBuf> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("workspace root")?;
    let ebpf = root.join("boundary-ebpf");
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "rust-toolchain.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("boundary-common/src").display()
    );

    let target_dir = root.join("target/bpf");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(&ebpf);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTDOC"
            || key == "DEBUG"
            || key == "OPT_LEVEL"
            || key == "PROFILE"
            || key == "TARGET"
            || key == "HOST"
            || key == "NUM_JOBS"
            || key == "OUT_DIR"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    // `cargo install` puts bpf-linker here; build scripts may run with a reduced PATH.
    if let Some(home) = env::var_os("HOME") {
        let bin = Path::new(&home).join(".cargo/bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        paths.push(bin);
        cmd.env("PATH", env::join_paths(paths)?);
    }
    let status = cmd
        .status()
        .context("running `rustup run nightly cargo build` for boundary-ebpf")?;
    if !status.success() {
        bail!(
            "building the eBPF programs failed ({status}); install what they need with \
             `cargo xtask setup` (nightly rust-src and bpf-linker), or point \
             BOUNDARY_EBPF_OBJECT at a prebuilt object"
        );
    }
    Ok(target_dir.join("bpfel-unknown-none/release/boundary"))
}
