//! A policy managed by a control plane: the YAML exactly as pushed (`current.yaml`) and what
//! the control plane said about it (`current.json`: template, version, SHA-256, mode).
//!
//! The two files are replaced one after the other (each atomically: temporary file, fsync,
//! rename), the text first. A reader takes the pair only when the text hashes to the SHA-256
//! in the metadata, so it never applies one version's text with another's mode; a pair caught
//! between the two renames is [`Load::Pending`] and read again a moment later.
//!
//! The template's mode (audit or enforce) overrides the file's own `mode:` without touching
//! the text: the policy is parsed as pushed, then its mode is set from the metadata.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::{Error, Result};
use crate::policy::{self, Mode, Policy};

pub const YAML: &str = "current.yaml";
pub const META: &str = "current.json";

/// What the control plane said about the policy in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Empty for the local `--config` copy the agent enforces until a policy arrives.
    #[serde(default)]
    pub template: String,
    /// 0: the local `--config` copy, not (yet) a version from the control plane.
    pub version: u64,
    pub sha256: String,
    /// The template's rollout mode; `None`: the file's own `mode:`.
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

impl Meta {
    /// The control plane's ETag for this version (`"<template>:<version>"`), if it came from one.
    pub fn etag(&self) -> Option<String> {
        (self.version > 0).then(|| format!("\"{}:{}\"", self.template, self.version))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outcome of reading the pair.
pub enum Load {
    Ready(Box<Policy>, Meta),
    /// The text does not match the metadata yet (a new version is being written).
    Pending,
}

/// The metadata path beside a managed policy's text.
pub fn meta_path(yaml: &Path) -> PathBuf {
    yaml.with_file_name(META)
}

/// Parses `text` as the policy of version `meta` (mode from the metadata).
pub fn parse(text: &str, meta: &Meta, source: &Path) -> Result<Policy> {
    let shown = if meta.version > 0 {
        format!(
            "{} (template {} version {})",
            source.display(),
            meta.template,
            meta.version
        )
    } else {
        source.display().to_string()
    };
    let mut policy = policy::parse(&shown, text)?;
    if policy.name.is_empty() {
        policy.name = if meta.template.is_empty() {
            "default".into()
        } else {
            meta.template.clone()
        };
    }
    policy.source = Some(source.to_path_buf());
    if let Some(mode) = meta.mode {
        policy.mode = mode;
    }
    Ok(policy)
}

/// Reads the policy in `yaml` and its metadata beside it.
pub fn load(yaml: &Path) -> Result<Load> {
    let meta_file = meta_path(yaml);
    let meta: Meta = match std::fs::read(&meta_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::Agent(format!("{}: not policy metadata: {e}", meta_file.display()))
        })?,
        Err(source) => {
            return Err(Error::File {
                path: meta_file,
                source,
            })
        }
    };
    let text = std::fs::read(yaml).map_err(|source| Error::File {
        path: yaml.into(),
        source,
    })?;
    if sha256_hex(&text) != meta.sha256 {
        return Ok(Load::Pending);
    }
    let text = String::from_utf8(text)
        .map_err(|_| Error::Agent(format!("{}: not UTF-8", yaml.display())))?;
    Ok(Load::Ready(Box::new(parse(&text, &meta, yaml)?), meta))
}

/// Replaces the managed policy in `dir`: the text, then the metadata (see the module doc).
pub fn save(dir: &Path, text: &str, meta: &Meta) -> Result<()> {
    write_atomically(&dir.join(YAML), text.as_bytes())?;
    let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Agent(e.to_string()))?;
    write_atomically(&dir.join(META), &json)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file whole or not at all: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_mode_overrides_the_file_and_a_mismatched_pair_waits() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name: p\nmode: enforce\nallowlist:\n  - \"ip=127.0.0.1\"\n";
        let meta = Meta {
            template: "python-dev".into(),
            version: 3,
            sha256: sha256_hex(text.as_bytes()),
            mode: Some(Mode::Audit),
            author: None,
            created_at: None,
            comment: None,
        };
        save(dir.path(), text, &meta).unwrap();
        let Load::Ready(policy, got) = load(&dir.path().join(YAML)).unwrap() else {
            panic!("pending")
        };
        assert_eq!(policy.mode, Mode::Audit);
        assert_eq!(got, meta);
        assert_eq!(meta.etag().as_deref(), Some("\"python-dev:3\""));
        // The text of the next version is in, its metadata not yet.
        write_atomically(&dir.path().join(YAML), b"name: q\n").unwrap();
        assert!(matches!(
            load(&dir.path().join(YAML)).unwrap(),
            Load::Pending
        ));
    }

    #[test]
    fn errors_name_the_template_and_version() {
        let meta = Meta {
            template: "t".into(),
            version: 7,
            sha256: String::new(),
            mode: None,
            author: None,
            created_at: None,
            comment: None,
        };
        let e = parse("allowlist: 3\n", &meta, Path::new("/s/current.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("template t version 7"), "{e}");
    }
}
