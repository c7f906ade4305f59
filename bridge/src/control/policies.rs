//! Boundary policies per template: append-only versions.
//!
//! A version is the YAML text exactly as pushed, its SHA-256, the template's rollout `mode`
//! (`audit` or `enforce`, which overrides the file's own `mode:`), who pushed it, when, and a
//! comment. A push is validated first with `boundary_policy::parse` and compiled with
//! `boundary_policy::compile`, the code the agent enforces with, so Bridge refuses exactly
//! what an agent would refuse; a refused policy stores nothing. Switching modes and rolling
//! back copy a version into a new one, so history is never rewritten and says who did what.
//!
//! Versions are numbered 1, 2, 3, ... per template: the next number is taken as `MAX + 1`
//! and the primary key `(template, version)` makes two concurrent pushes (two admins, two
//! replicas) fail one of them, which then retries with the next number.

use std::collections::{BTreeMap, HashMap};

use boundary_policy::Mode;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{from_micros, micros, validate_template};
use crate::error::Error;
use crate::keys::hex;
use crate::store::{Store, Value};

/// Largest policy text accepted (the agent API bounds its answers too).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Longest comment kept.
const MAX_COMMENT_CHARS: usize = 1000;

/// One stored version of a template's policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyVersion {
    pub template: String,
    pub version: i64,
    pub mode: Mode,
    pub sha256: String,
    pub yaml: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
    pub comment: String,
}

impl PolicyVersion {
    /// The ETag of this version in the agent API: `"<template>:<version>"`.
    pub fn etag(&self) -> String {
        format!("\"{}:{}\"", self.template, self.version)
    }
}

/// Why a push was refused.
#[derive(Debug)]
pub enum PushError {
    /// The policy has problems: `boundary_policy`'s messages, one per line, each
    /// `FILE:LINE:COL: FIELD: message` as `boundary validate` prints them.
    Invalid(String),
    Other(Error),
}

impl From<Error> for PushError {
    fn from(e: Error) -> Self {
        PushError::Other(e)
    }
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Invalid(m) => f.write_str(m),
            PushError::Other(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PushError {}

/// What a push, a mode switch or a rollback did.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    /// A new version.
    Created(PolicyVersion),
    /// The template's current version already has this text and mode: nothing stored (so a
    /// CI job may push on every run).
    Unchanged(PolicyVersion),
}

impl Pushed {
    pub fn version(&self) -> &PolicyVersion {
        match self {
            Pushed::Created(v) | Pushed::Unchanged(v) => v,
        }
    }
}

/// Validates a policy as the agent would load it: parse (every problem, located) and compile
/// (that it fits the kernel's maps). `source_name` names the file in messages. Returns the
/// mode the file itself asks for.
pub fn validate(source_name: &str, text: &str) -> Result<Mode, String> {
    check(source_name, text).map(|(mode, _)| mode)
}

/// [`validate`], and the warnings `boundary validate` would print for a valid policy
/// (`FILE: warning: ...`).
pub fn check(source_name: &str, text: &str) -> Result<(Mode, Vec<String>), String> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(format!(
            "{source_name}: {} bytes: a policy may have at most {MAX_POLICY_BYTES} bytes",
            text.len()
        ));
    }
    let policy = boundary_policy::parse(source_name, text).map_err(|e| e.to_string())?;
    boundary_policy::compile(&policy, &boundary_policy::AddressBook::default(), &[])
        .map_err(|e| format!("{source_name}: the policy does not fit the kernel's maps: {e}"))?;
    let warnings = policy
        .warnings()
        .into_iter()
        .map(|w| format!("{source_name}: warning: {w}"))
        .collect();
    Ok((policy.mode, warnings))
}

pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn mode_from_str(s: &str) -> Result<Mode, Error> {
    match s {
        "audit" => Ok(Mode::Audit),
        "enforce" => Ok(Mode::Enforce),
        other => Err(Error::Store(format!(
            "stored policy mode {other:?} is unknown"
        ))),
    }
}

const POLICY_COLUMNS: &str = "template, version, mode, sha256, yaml, author, created_at, comment";

fn version_from_row(r: &[Value]) -> Result<PolicyVersion, Error> {
    Ok(PolicyVersion {
        template: r[0].text(),
        version: r[1].int(),
        mode: mode_from_str(&r[2].text())?,
        sha256: r[3].text(),
        yaml: r[4].text(),
        author: r[5].text(),
        created_at: from_micros(r[6].int()),
        comment: r[7].text(),
    })
}

/// The newest version of `template`, if any.
pub async fn current(store: &Store, template: &str) -> Result<Option<PolicyVersion>, Error> {
    let rows = store
        .query(
            &format!("SELECT {POLICY_COLUMNS} FROM policies WHERE template = $1 ORDER BY version DESC LIMIT 1"),
            vec![Value::Text(Some(template.into()))],
        )
        .await?;
    rows.first().map(|r| version_from_row(r)).transpose()
}

/// Version `version` of `template`, if it exists.
pub async fn get(
    store: &Store,
    template: &str,
    version: i64,
) -> Result<Option<PolicyVersion>, Error> {
    let rows = store
        .query(
            &format!("SELECT {POLICY_COLUMNS} FROM policies WHERE template = $1 AND version = $2"),
            vec![
                Value::Text(Some(template.into())),
                Value::Int(Some(version)),
            ],
        )
        .await?;
    rows.first().map(|r| version_from_row(r)).transpose()
}

/// Version `version` of `template`, or an error saying which versions exist.
pub async fn require(store: &Store, template: &str, version: i64) -> Result<PolicyVersion, Error> {
    match get(store, template, version).await? {
        Some(v) => Ok(v),
        None => match current(store, template).await? {
            Some(c) => Err(Error::Query(format!(
                "template {template:?} has no version {version} (versions 1 to {}; see `llm-bridge policy history --template {template}`)",
                c.version
            ))),
            None => Err(no_policy(template)),
        },
    }
}

fn no_policy(template: &str) -> Error {
    Error::Query(format!(
        "no policy pushed for template {template:?} (see `llm-bridge policy push`)"
    ))
}

/// Every version of `template`, oldest first.
pub async fn history(store: &Store, template: &str) -> Result<Vec<PolicyVersion>, Error> {
    let rows = store
        .query(
            &format!("SELECT {POLICY_COLUMNS} FROM policies WHERE template = $1 ORDER BY version"),
            vec![Value::Text(Some(template.into()))],
        )
        .await?;
    rows.iter().map(|r| version_from_row(r)).collect()
}

/// The newest version number of every template (what the agent API's long-poll watches).
pub async fn latest_versions(store: &Store) -> Result<HashMap<String, i64>, Error> {
    let rows = store
        .query(
            "SELECT template, CAST(MAX(version) AS BIGINT) FROM policies GROUP BY template",
            vec![],
        )
        .await?;
    Ok(rows.iter().map(|r| (r[0].text(), r[1].int())).collect())
}

/// One template in `policy list`: its current version and its agents.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TemplateSummary {
    pub template: String,
    /// `None`: agents are enrolled but no policy was pushed.
    pub version: Option<i64>,
    pub mode: Option<Mode>,
    pub sha256: Option<String>,
    pub author: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// Agents enrolled for the template (not revoked).
    pub agents: i64,
    /// Of those, how many last reported the current version applied.
    pub agents_current: i64,
}

/// Every template with a policy or an agent, by name.
pub async fn list(store: &Store) -> Result<Vec<TemplateSummary>, Error> {
    let rows = store
        .query(
            "SELECT p.template, p.version, p.mode, p.sha256, p.author, p.created_at FROM policies p \
             JOIN (SELECT template, MAX(version) AS v FROM policies GROUP BY template) m \
             ON m.template = p.template AND m.v = p.version",
            vec![],
        )
        .await?;
    let mut out: BTreeMap<String, TemplateSummary> = BTreeMap::new();
    for r in rows {
        let template = r[0].text();
        out.insert(
            template.clone(),
            TemplateSummary {
                template,
                version: Some(r[1].int()),
                mode: Some(mode_from_str(&r[2].text())?),
                sha256: r[3].opt_text(),
                author: r[4].opt_text(),
                created_at: r[5].opt_int().map(from_micros),
                agents: 0,
                agents_current: 0,
            },
        );
    }
    let agents = store
        .query(
            "SELECT template, policy_version, CAST(COUNT(*) AS BIGINT) FROM agents \
             WHERE revoked_at IS NULL GROUP BY template, policy_version",
            vec![],
        )
        .await?;
    for r in agents {
        let template = r[0].text();
        let applied = r[1].opt_int();
        let n = r[2].int();
        let t = out
            .entry(template.clone())
            .or_insert_with(|| TemplateSummary {
                template,
                version: None,
                mode: None,
                sha256: None,
                author: None,
                created_at: None,
                agents: 0,
                agents_current: 0,
            });
        t.agents += n;
        if applied.is_some() && applied == t.version {
            t.agents_current += n;
        }
    }
    Ok(out.into_values().collect())
}

/// Who made a change, and why.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub author: &'a str,
    pub comment: &'a str,
}

/// Pushes `yaml` as the next version of `template` after validating it (`source_name` names
/// the file in messages). `mode`: the rollout mode; `None` keeps the template's current mode,
/// or for a first version takes the file's own `mode:`.
pub async fn push(
    store: &Store,
    template: &str,
    source_name: &str,
    yaml: &str,
    mode: Option<Mode>,
    change: Change<'_>,
) -> Result<Pushed, PushError> {
    validate_template(template).map_err(|m| PushError::Other(Error::Query(m)))?;
    let file_mode = validate(source_name, yaml).map_err(PushError::Invalid)?;
    let current = current(store, template).await?;
    let mode = mode
        .or(current.as_ref().map(|c| c.mode))
        .unwrap_or(file_mode);
    Ok(store_version(store, template, yaml, mode, current, change).await?)
}

/// A new version of `template` with the text of version `from` and `mode` (a rollback, or a
/// mode switch when `from` is the current version).
pub async fn copy_version(
    store: &Store,
    template: &str,
    from: i64,
    mode: Option<Mode>,
    change: Change<'_>,
) -> Result<Pushed, Error> {
    validate_template(template).map_err(Error::Query)?;
    let source = require(store, template, from).await?;
    let current = current(store, template).await?;
    store_version(
        store,
        template,
        &source.yaml,
        mode.unwrap_or(source.mode),
        current,
        change,
    )
    .await
}

/// A new version of the current text of `template` in `mode` (`policy enforce` / `audit`).
pub async fn set_mode(
    store: &Store,
    template: &str,
    mode: Mode,
    change: Change<'_>,
) -> Result<Pushed, Error> {
    let current = current(store, template)
        .await?
        .ok_or_else(|| no_policy(template))?;
    copy_version(store, template, current.version, Some(mode), change).await
}

async fn store_version(
    store: &Store,
    template: &str,
    yaml: &str,
    mode: Mode,
    mut current: Option<PolicyVersion>,
    change: Change<'_>,
) -> Result<Pushed, Error> {
    let sha256 = sha256_hex(yaml);
    let comment: String = change
        .comment
        .trim()
        .chars()
        .take(MAX_COMMENT_CHARS)
        .collect();
    let author = change.author.trim();
    if author.is_empty() {
        return Err(Error::Query(
            "the author of a policy change must not be empty".into(),
        ));
    }
    for _ in 0..5 {
        if let Some(c) = &current {
            if c.sha256 == sha256 && c.mode == mode {
                return Ok(Pushed::Unchanged(c.clone()));
            }
        }
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let inserted = store
            .execute(
                "INSERT INTO policies (template, version, yaml, sha256, mode, author, created_at, comment) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (template, version) DO NOTHING",
                vec![
                    Value::Text(Some(template.into())),
                    Value::Int(Some(version)),
                    Value::Text(Some(yaml.into())),
                    Value::Text(Some(sha256.clone())),
                    Value::Text(Some(mode.as_str().into())),
                    Value::Text(Some(author.into())),
                    Value::Int(Some(micros(Utc::now()))),
                    Value::Text(Some(comment.clone())),
                ],
            )
            .await?;
        if inserted == 1 {
            return require(store, template, version).await.map(Pushed::Created);
        }
        // Someone else stored this version number first: look again.
        current = self::current(store, template).await?;
    }
    Err(Error::Store(format!(
        "template {template:?}: too many concurrent policy changes; retry"
    )))
}

/// A unified diff (3 lines of context) from `a` to `b`, with `---`/`+++` headers named
/// `a_name`/`b_name`; empty when the texts are equal.
pub fn unified_diff(a_name: &str, a: &str, b_name: &str, b: &str) -> String {
    const CONTEXT: usize = 3;
    if a == b {
        return String::new();
    }
    let old: Vec<&str> = a.lines().collect();
    let new: Vec<&str> = b.lines().collect();
    let ops = diff_ops(&old, &new);
    // Each op with the old and new line index it starts at.
    let mut positioned = Vec::with_capacity(ops.len());
    let (mut o, mut n) = (0usize, 0usize);
    for op in ops {
        positioned.push((op, o, n));
        match op {
            Op::Equal => {
                o += 1;
                n += 1;
            }
            Op::Delete => o += 1,
            Op::Insert => n += 1,
        }
    }
    let changes: Vec<usize> = positioned
        .iter()
        .enumerate()
        .filter(|(_, (op, _, _))| *op != Op::Equal)
        .map(|(i, _)| i)
        .collect();
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    let mut i = 0;
    while i < changes.len() {
        let start = changes[i].saturating_sub(CONTEXT);
        let mut last = changes[i];
        while i + 1 < changes.len() && changes[i + 1] - last <= 2 * CONTEXT {
            i += 1;
            last = changes[i];
        }
        let end = (last + CONTEXT).min(positioned.len() - 1);
        let hunk = &positioned[start..=end];
        let old_len = hunk.iter().filter(|(op, _, _)| *op != Op::Insert).count();
        let new_len = hunk.iter().filter(|(op, _, _)| *op != Op::Delete).count();
        let (_, o0, n0) = hunk[0];
        // Unified diff convention: an empty range starts at the line before it.
        let range = |start: usize, len: usize| {
            if len == 0 {
                format!("{start},0")
            } else {
                format!("{},{len}", start + 1)
            }
        };
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(o0, old_len),
            range(n0, new_len)
        ));
        for (op, o, n) in hunk {
            match op {
                Op::Equal => out.push_str(&format!(" {}\n", old[*o])),
                Op::Delete => out.push_str(&format!("-{}\n", old[*o])),
                Op::Insert => out.push_str(&format!("+{}\n", new[*n])),
            }
        }
        i += 1;
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    Delete,
    Insert,
}

/// The edit script from `old` to `new` by longest common subsequence, after trimming the
/// common head and tail (policies change a few lines at a time). Beyond 25 million cells the
/// middle is shown as replaced wholesale rather than spending the memory.
fn diff_ops(old: &[&str], new: &[&str]) -> Vec<Op> {
    let head = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let tail = old[head..]
        .iter()
        .rev()
        .zip(new[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let a = &old[head..old.len() - tail];
    let b = &new[head..new.len() - tail];
    let mut ops = vec![Op::Equal; head];
    if a.len().saturating_mul(b.len()) > 25_000_000 {
        ops.extend(std::iter::repeat_n(Op::Delete, a.len()));
        ops.extend(std::iter::repeat_n(Op::Insert, b.len()));
    } else {
        // lcs[i][j]: length of the LCS of a[i..] and b[j..].
        let w = b.len() + 1;
        let mut lcs = vec![0u32; (a.len() + 1) * w];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                lcs[i * w + j] = if a[i] == b[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            if i < a.len() && j < b.len() && a[i] == b[j] {
                ops.push(Op::Equal);
                i += 1;
                j += 1;
            } else if i < a.len() && (j == b.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                ops.push(Op::Delete);
                i += 1;
            } else {
                ops.push(Op::Insert);
                j += 1;
            }
        }
    }
    ops.extend(std::iter::repeat_n(Op::Equal, tail));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unified_diff_shows_changed_lines_with_three_lines_of_context() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let b = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n";
        let d = unified_diff("t v1", a, "t v2", b);
        assert_eq!(
            d,
            "--- t v1\n+++ t v2\n@@ -2,9 +2,10 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n i\n j\n+k\n"
        );
        assert_eq!(unified_diff("x", a, "y", a), "");
        let d = unified_diff("x", "", "y", "one\n");
        assert_eq!(d, "--- x\n+++ y\n@@ -0,0 +1,1 @@\n+one\n");
        let d = unified_diff(
            "x",
            "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n",
            "y",
            "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n",
        );
        assert_eq!(
            d,
            "--- x\n+++ y\n@@ -1,3 +1,4 @@\n+0\n 1\n 2\n 3\n@@ -9,4 +10,3 @@\n 9\n 10\n 11\n-12\n"
        );
    }

    #[test]
    fn validation_reports_the_file_line_and_field_like_boundary_validate() {
        let e = validate(
            "config.yaml",
            "mode: enforce\nallowlist:\n  - domain=github.com port=99999\n",
        )
        .unwrap_err();
        assert!(e.starts_with("config.yaml:3:"), "{e}");
        assert!(e.contains("allowlist[0]"), "{e}");
        assert_eq!(
            validate("c.yaml", "mode: audit\nallowlist:\n  - domain=github.com\n"),
            Ok(Mode::Audit)
        );
        let (_, warnings) =
            check("c.yaml", "allowlist:\n  - method=GET domain=github.com\n").unwrap();
        assert!(
            warnings.len() == 1 && warnings[0].starts_with("c.yaml: warning: method= and path="),
            "{warnings:?}"
        );
    }
}
