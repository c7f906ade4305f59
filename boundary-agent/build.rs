//! Builds the eBPF programs (boundary-ebpf) with the pinned nightly toolchain and bpf-linker,
//! and hands the object to the agent, which embeds it with `include_bytes!`.
//!
//! The eBPF crate is its own workspace (target `bpfel-unknown-none`, `build-std`), so it is
//! built by a nested `rustup run <pinned nightly> cargo build` (the channel of
//! boundary-ebpf/rust-toolchain.toml) with the outer cargo's environment removed: flags meant
//! for the host (RUSTFLAGS, clippy's wrapper) must not leak into it. Its target dir is `bpf/`
//! inside the outer one (CARGO_TARGET_DIR respected). `BOUNDARY_EBPF_OBJECT=/path/to/object`
//! skips the build and uses that file.

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

    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
        .join("bpf");
    let channel = pinned_channel(&ebpf.join("rust-toolchain.toml"))?;
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &channel,
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
        .with_context(|| format!("running `rustup run {channel} cargo build` for boundary-ebpf"))?;
    if !status.success() {
        bail!(
            "building the eBPF programs with {channel} failed ({status}); install what they \
             need with `cargo xtask setup` (the pinned nightly, its rust-src, bpf-linker), or \
             point BOUNDARY_EBPF_OBJECT at a prebuilt object"
        );
    }
    Ok(target_dir.join("bpfel-unknown-none/release/boundary"))
}

/// `channel = "..."` of the eBPF crate's rust-toolchain.toml.
fn pinned_channel(file: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .find(|v| !v.is_empty())
        .with_context(|| format!("{}: no `channel = \"...\"`", file.display()))
}
