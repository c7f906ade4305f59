//! The README's snippets, run as a new user would paste them (`cargo xtask test` runs this).
//!
//! A fenced block is exercised when the line before it is a marker comment:
//!
//! - `<!-- readme-test: file NAME -->`: the block is written to NAME (a config the next
//!   snippets use);
//! - `<!-- readme-test: run [expect TEXT] -->`: the block runs in bash (`set -euo pipefail`),
//!   and a line of its output must start with TEXT;
//! - `<!-- readme-test: exec COMMAND [expect TEXT] -->` (no block needed): a command the prose
//!   tells the reader to run.
//!
//! All snippets share one scratch directory, in README order, with `target/release/` holding
//! the binaries under test and them on PATH, so `target/release/llm-bridge ...` and
//! `llm-bridge ...` both work. Build and install lines (`cargo ...`, `sudo install ...`) are
//! skipped: the binaries are already built. `sudo` runs the command as is (the tests run as
//! root). Whatever a snippet leaves running (`... &`) is killed with its process group.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binaries a snippet may name.
const BINARIES: &[&str] = &["boundary", "llm-bridge", "fake-upstream"];

/// Longest a snippet may run (they start servers and make a request or two).
const SNIPPET_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq)]
enum Step {
    File {
        name: String,
        body: String,
    },
    Run {
        script: String,
        expect: Option<String>,
    },
}

/// One step per marker, in README order, each with the README line it came from.
fn steps(readme: &str) -> Result<Vec<(usize, Step)>> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(marker) = lines[i]
            .trim()
            .strip_prefix("<!-- readme-test:")
            .and_then(|m| m.strip_suffix("-->"))
        else {
            i += 1;
            continue;
        };
        let at = i + 1;
        let (verb, rest) = marker.trim().split_once(' ').unwrap_or((marker.trim(), ""));
        let (arg, expect) = match rest.split_once("expect ") {
            Some((a, e)) => (a.trim(), Some(e.trim().to_string())),
            None => (rest.trim(), None),
        };
        if verb == "exec" {
            out.push((
                at,
                Step::Run {
                    script: arg.to_string(),
                    expect,
                },
            ));
            i += 1;
            continue;
        }
        let body = fenced_block(&lines, i + 1).with_context(|| {
            format!("README.md:{at}: marker `{verb}` is not followed by a fenced block")
        })?;
        out.push((
            at,
            match verb {
                "file" if !arg.is_empty() => Step::File {
                    name: arg.to_string(),
                    body,
                },
                "run" => Step::Run {
                    script: body,
                    expect,
                },
                other => bail!("README.md:{at}: unknown readme-test marker {other:?} {arg:?}"),
            },
        ));
        i += 1;
    }
    Ok(out)
}

/// The body of the fenced block that opens on line `start` (0-based).
fn fenced_block(lines: &[&str], start: usize) -> Option<String> {
    let fence = lines.get(start)?.trim();
    if !fence.starts_with("```") {
        return None;
    }
    let end = start + 1 + lines[start + 1..].iter().position(|l| l.trim() == "```")?;
    Some(
        lines[start + 1..end]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect(),
    )
}

/// The snippet as it runs here: build and install lines left out.
fn runnable(script: &str) -> String {
    script
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("cargo ") || t.starts_with("sudo install "))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

pub fn run(bin_dir: &Path) -> Result<()> {
    let root = crate::shell::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).context("README.md")?;
    let steps = steps(&readme)?;
    if steps.is_empty() {
        bail!("README.md has no readme-test markers: nothing of it would be exercised");
    }
    let scratch = Scratch::new(bin_dir)?;
    for (line, step) in steps {
        match step {
            Step::File { name, body } => {
                std::fs::write(scratch.dir.join(&name), body)
                    .with_context(|| format!("README.md:{line}: writing {name}"))?;
            }
            Step::Run { script, expect } => {
                eprintln!("--- README.md:{line}");
                let out = scratch
                    .run(&runnable(&script))
                    .with_context(|| format!("README.md:{line}: snippet failed:\n{script}"))?;
                eprint!("{out}");
                if let Some(want) = expect {
                    if !out.lines().any(|l| l.starts_with(&want)) {
                        bail!("README.md:{line}: no line of the output above starts with {want:?}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// The scratch directory the snippets share, removed on drop.
struct Scratch {
    dir: PathBuf,
    path: String,
}

impl Scratch {
    fn new(bin_dir: &Path) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("readme-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let release = dir.join("target/release");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&release)?;
        std::fs::create_dir_all(&bin)?;
        for name in BINARIES {
            let real = bin_dir.join(name);
            if !real.exists() {
                bail!("{} is not built", real.display());
            }
            symlink(&real, release.join(name))?;
            symlink(&real, bin.join(name))?;
        }
        let sudo = bin.join("sudo");
        std::fs::write(&sudo, "#!/bin/sh\nexec \"$@\"\n")?;
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755))?;
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Ok(Scratch { dir, path })
    }

    /// Runs `script` in its own process group and returns stdout and stderr together; kills
    /// the group afterwards (servers a snippet started in the background).
    fn run(&self, script: &str) -> Result<String> {
        let log = self.dir.join("snippet.log");
        let out = std::fs::File::create(&log)?;
        let mut child = Command::new("bash")
            .args(["-c", &format!("set -euo pipefail\n{script}")])
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("bash")?;
        let pgid = child.id();
        let deadline = Instant::now() + SNIPPET_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(text),
            Some(s) => bail!("{s}\n{text}"),
            None => bail!("still running after {SNIPPET_TIMEOUT:?}\n{text}"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_the_blocks_to_write_and_run() {
        let readme = "text\n<!-- readme-test: file a.yaml -->\n```yaml\nk: v\n```\n\
                      <!-- readme-test: run expect alice -->\n```sh\ncargo build\nsudo install x /y\necho alice\n```\n\
                      <!-- readme-test: exec tool check a.yaml -->\n";
        let s = steps(readme).unwrap();
        assert_eq!(
            s[0],
            (
                2,
                Step::File {
                    name: "a.yaml".into(),
                    body: "k: v\n".into()
                }
            )
        );
        let Step::Run { script, expect } = &s[1].1 else {
            panic!("{s:?}")
        };
        assert_eq!(expect.as_deref(), Some("alice"));
        assert_eq!(runnable(script), "echo alice\n");
        assert_eq!(
            s[2].1,
            Step::Run {
                script: "tool check a.yaml".into(),
                expect: None
            }
        );
    }

    #[test]
    fn a_marker_without_its_block_is_an_error_with_the_line() {
        let err = steps("<!-- readme-test: run -->\nprose\n").unwrap_err();
        assert!(err.to_string().contains("README.md:1"), "{err}");
    }
}
