//! Governance: groups of users, and limits attached to the whole bridge, a group, a template, a
//! user or a key. Today's limit is the model policy: allowed and denied models (exact names or
//! `*` globs) and aliases (`claude-default` → a pinned model).
//!
//! Limits live in the store, so every replica enforces the same ones; each replica keeps a
//! snapshot in memory, reloaded every [`REFRESH`], so a request never waits for the database
//! and a store outage keeps the last snapshot in force. With no limits set, a request costs one
//! read of an empty snapshot.
//!
//! **Which limit applies**: each setting (the allow list, the deny list, each alias) is taken
//! from the most specific scope that sets it: key, then user, then template, then the user's
//! groups, then global. Groups are one level: when several of the user's groups set a list, the
//! lists are joined. A model is refused when it matches the deny list, or when an allow list
//! applies and it matches none of it; aliases are resolved first, and the model they name is
//! the one checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::{Store, Value};

/// How often each replica reloads limits and group members from the store.
pub const REFRESH: Duration = Duration::from_secs(5);

/// What a limit is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Scope {
    Global,
    Group(String),
    Template(String),
    User(String),
    Key(String),
}

impl Scope {
    fn kind(&self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Group(_) => "group",
            Scope::Template(_) => "template",
            Scope::User(_) => "user",
            Scope::Key(_) => "key",
        }
    }

    fn name(&self) -> &str {
        match self {
            Scope::Global => "",
            Scope::Group(n) | Scope::Template(n) | Scope::User(n) | Scope::Key(n) => n,
        }
    }

    fn from_parts(kind: &str, name: String) -> Option<Scope> {
        Some(match kind {
            "global" => Scope::Global,
            "group" => Scope::Group(name),
            "template" => Scope::Template(name),
            "user" => Scope::User(name),
            "key" => Scope::Key(name),
            _ => return None,
        })
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => write!(f, "global"),
            other => write!(f, "{} {}", other.kind(), other.name()),
        }
    }
}

/// The limits set on one scope. `None`: not set here (a less specific scope decides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_models: Option<Vec<String>>,
    /// Model name a client sends → the model Bridge asks the provider for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, String>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.allow_models.is_none() && self.deny_models.is_none() && self.aliases.is_empty()
    }
}

/// Who is asking: the facts the scopes are matched against.
#[derive(Debug, Clone, Default)]
pub struct Requester<'a> {
    pub user: &'a str,
    pub key_id: Option<&'a str>,
    pub template: Option<&'a str>,
}

/// A model policy decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward, asking the provider for `model` (differs from the request's when an alias
    /// applied).
    Allow { model: String },
    /// Refuse, with a message naming the policy.
    Deny { message: String },
}

/// One line of `limits explain`: a setting, its value and the scope it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    pub setting: String,
    pub value: String,
    pub from: Vec<Scope>,
}

/// The limits and group members every replica holds in memory.
#[derive(Debug, Default)]
struct Snapshot {
    limits: HashMap<Scope, Limits>,
    groups_of: HashMap<String, BTreeSet<String>>,
}

/// The settings that apply to one requester, resolved.
#[derive(Debug, Default)]
struct Resolved {
    allow: Option<(Vec<String>, Vec<Scope>)>,
    deny: Option<(Vec<String>, Vec<Scope>)>,
    aliases: BTreeMap<String, (String, Scope)>,
}

impl Snapshot {
    /// The scopes that apply to `who`, most specific level first; groups share one level.
    fn levels(&self, who: &Requester) -> Vec<Vec<Scope>> {
        let mut levels = Vec::with_capacity(5);
        if let Some(k) = who.key_id {
            levels.push(vec![Scope::Key(k.to_string())]);
        }
        levels.push(vec![Scope::User(who.user.to_string())]);
        if let Some(t) = who.template {
            levels.push(vec![Scope::Template(t.to_string())]);
        }
        let groups = self
            .groups_of
            .get(who.user)
            .map(|g| g.iter().map(|g| Scope::Group(g.clone())).collect())
            .unwrap_or_default();
        levels.push(groups);
        levels.push(vec![Scope::Global]);
        levels
    }

    fn resolve(&self, who: &Requester) -> Resolved {
        let mut r = Resolved::default();
        for level in self.levels(who) {
            let set: Vec<(&Scope, &Limits)> = level
                .iter()
                .filter_map(|s| self.limits.get(s).map(|l| (s, l)))
                .collect();
            let join = |pick: fn(&Limits) -> Option<&Vec<String>>| {
                let from: Vec<&(&Scope, &Limits)> =
                    set.iter().filter(|(_, l)| pick(l).is_some()).collect();
                (!from.is_empty()).then(|| {
                    let mut all: Vec<String> = from
                        .iter()
                        .flat_map(|(_, l)| pick(l).unwrap().clone())
                        .collect();
                    all.dedup();
                    (all, from.iter().map(|(s, _)| (*s).clone()).collect())
                })
            };
            if r.allow.is_none() {
                r.allow = join(|l| l.allow_models.as_ref());
            }
            if r.deny.is_none() {
                r.deny = join(|l| l.deny_models.as_ref());
            }
            for (scope, l) in &set {
                for (alias, target) in &l.aliases {
                    r.aliases
                        .entry(alias.clone())
                        .or_insert_with(|| (target.clone(), (*scope).clone()));
                }
            }
        }
        r
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The governance a gateway enforces: a snapshot of the store's limits, refreshed.
#[derive(Debug)]
pub struct Governance {
    store: Store,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Governance {
    /// Loads the limits once (the gateway does not start without them).
    pub async fn load(store: Store) -> Result<Arc<Governance>, Error> {
        let snapshot = load_snapshot(&store).await?;
        Ok(Arc::new(Governance {
            store,
            snapshot: RwLock::new(Arc::new(snapshot)),
        }))
    }

    /// Reloads every [`REFRESH`] until the gateway stops; a failed reload keeps the last
    /// snapshot (and says so once per outage).
    pub fn spawn_refresh(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(gov) = me.upgrade() else { return };
                match load_snapshot(&gov.store).await {
                    Ok(s) => {
                        if failing {
                            tracing::info!("limits reloaded from the store again");
                        }
                        failing = false;
                        *gov.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot reload limits; the last ones stay in force");
                        }
                        failing = true;
                    }
                }
            }
        });
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `who` may use `model`, and which model to ask the provider for.
    pub fn decide(&self, who: &Requester, model: &str) -> Decision {
        let snap = self.current();
        if snap.limits.is_empty() {
            return Decision::Allow {
                model: model.to_string(),
            };
        }
        decide_with(&snap, who, model)
    }

    /// What applies to `who` and why; with a model, the decision for it too.
    pub fn explain(
        &self,
        who: &Requester,
        model: Option<&str>,
    ) -> (Vec<Applied>, Option<Decision>) {
        let snap = self.current();
        let r = snap.resolve(who);
        let mut out = Vec::new();
        out.push(Applied {
            setting: "groups".into(),
            value: snap
                .groups_of
                .get(who.user)
                .map(|g| g.iter().cloned().collect::<Vec<_>>().join(", "))
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| "(none)".into()),
            from: vec![],
        });
        for (name, list) in [("allow_models", &r.allow), ("deny_models", &r.deny)] {
            out.push(match list {
                Some((l, from)) => Applied {
                    setting: name.into(),
                    value: l.join(", "),
                    from: from.clone(),
                },
                None => Applied {
                    setting: name.into(),
                    value: if name == "allow_models" {
                        "(not set: any model)".into()
                    } else {
                        "(not set)".into()
                    },
                    from: vec![],
                },
            });
        }
        for (alias, (target, from)) in &r.aliases {
            out.push(Applied {
                setting: format!("alias {alias}"),
                value: target.clone(),
                from: vec![from.clone()],
            });
        }
        (out, model.map(|m| decide_with(&snap, who, m)))
    }
}

fn decide_with(snap: &Snapshot, who: &Requester, requested: &str) -> Decision {
    let r = snap.resolve(who);
    let (model, via) = match r.aliases.get(requested) {
        Some((target, scope)) => (target.clone(), Some(scope)),
        None => (requested.to_string(), None),
    };
    let named = match via {
        Some(scope) => format!("model {model:?} (alias {requested:?} of {scope})"),
        None => format!("model {model:?}"),
    };
    if let Some((deny, from)) = &r.deny {
        if let Some(p) = deny.iter().find(|p| glob_match(p, &model)) {
            return Decision::Deny {
                message: format!(
                    "{named} is not allowed for {}: it matches {p:?} in deny_models of {} (see `llm-bridge limits explain`)",
                    who.user,
                    scopes_text(from)
                ),
            };
        }
    }
    if let Some((allow, from)) = &r.allow {
        if !allow.iter().any(|p| glob_match(p, &model)) {
            return Decision::Deny {
                message: format!(
                    "{named} is not allowed for {}: allow_models of {} permits only {}",
                    who.user,
                    scopes_text(from),
                    allow.join(", ")
                ),
            };
        }
    }
    Decision::Allow { model }
}

async fn load_snapshot(store: &Store) -> Result<Snapshot, Error> {
    let mut snap = Snapshot::default();
    for r in store
        .query("SELECT scope_kind, scope, settings FROM limits", vec![])
        .await?
    {
        let Some(scope) = Scope::from_parts(&r[0].text(), r[1].text()) else {
            continue;
        };
        let limits: Limits = serde_json::from_str(&r[2].text())
            .map_err(|e| Error::Store(format!("limits of {scope}: {e}")))?;
        if !limits.is_empty() {
            snap.limits.insert(scope, limits);
        }
    }
    for r in store
        .query("SELECT group_name, user_name FROM group_members", vec![])
        .await?
    {
        snap.groups_of
            .entry(r[1].text())
            .or_default()
            .insert(r[0].text());
    }
    Ok(snap)
}

// ---- administration (the CLI) ----

/// The limits set on `scope` (empty when none).
pub async fn limits_of(store: &Store, scope: &Scope) -> Result<Limits, Error> {
    let rows = store
        .query(
            "SELECT settings FROM limits WHERE scope_kind = $1 AND scope = $2",
            vec![
                Value::Text(Some(scope.kind().into())),
                Value::Text(Some(scope.name().into())),
            ],
        )
        .await?;
    match rows.first() {
        Some(r) => serde_json::from_str(&r[0].text()).map_err(|e| Error::Store(e.to_string())),
        None => Ok(Limits::default()),
    }
}

/// Replaces the limits of `scope` (removes the row when they are empty).
pub async fn set_limits(
    store: &Store,
    scope: &Scope,
    limits: &Limits,
    by: &str,
) -> Result<(), Error> {
    let params = |extra: Vec<Value>| {
        let mut p = vec![
            Value::Text(Some(scope.kind().into())),
            Value::Text(Some(scope.name().into())),
        ];
        p.extend(extra);
        p
    };
    if limits.is_empty() {
        store
            .execute(
                "DELETE FROM limits WHERE scope_kind = $1 AND scope = $2",
                params(vec![]),
            )
            .await?;
        return Ok(());
    }
    let settings = serde_json::to_string(limits).map_err(|e| Error::Store(e.to_string()))?;
    store
        .execute(
            "INSERT INTO limits (scope_kind, scope, settings, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (scope_kind, scope) DO UPDATE SET settings = excluded.settings, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            params(vec![
                Value::Text(Some(settings)),
                Value::Int(Some(Utc::now().timestamp_micros())),
                Value::Text(Some(by.into())),
            ]),
        )
        .await?;
    Ok(())
}

/// Every scope with limits, with who set them last and when.
pub async fn all_limits(
    store: &Store,
) -> Result<Vec<(Scope, Limits, String, chrono::DateTime<Utc>)>, Error> {
    let rows = store
        .query(
            "SELECT scope_kind, scope, settings, updated_by, updated_at FROM limits ORDER BY scope_kind, scope",
            vec![],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let Some(scope) = Scope::from_parts(&r[0].text(), r[1].text()) else {
            continue;
        };
        let limits = serde_json::from_str(&r[2].text()).map_err(|e| Error::Store(e.to_string()))?;
        let at = chrono::DateTime::from_timestamp_micros(r[4].int()).unwrap_or_default();
        out.push((scope, limits, r[3].text(), at));
    }
    Ok(out)
}

/// Adds users to a group (creating it); returns how many were not members yet.
pub async fn add_members(store: &Store, group: &str, users: &[String]) -> Result<u64, Error> {
    let mut added = 0;
    for u in users {
        added += store
            .execute(
                "INSERT INTO group_members (group_name, user_name, added_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_name, user_name) DO NOTHING",
                vec![
                    Value::Text(Some(group.into())),
                    Value::Text(Some(u.clone())),
                    Value::Int(Some(Utc::now().timestamp_micros())),
                ],
            )
            .await?;
    }
    Ok(added)
}

/// Removes users from a group; returns how many were members.
pub async fn remove_members(store: &Store, group: &str, users: &[String]) -> Result<u64, Error> {
    let mut removed = 0;
    for u in users {
        removed += store
            .execute(
                "DELETE FROM group_members WHERE group_name = $1 AND user_name = $2",
                vec![
                    Value::Text(Some(group.into())),
                    Value::Text(Some(u.clone())),
                ],
            )
            .await?;
    }
    Ok(removed)
}

/// Group → members, sorted.
pub async fn groups(store: &Store) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in store
        .query(
            "SELECT group_name, user_name FROM group_members ORDER BY group_name, user_name",
            vec![],
        )
        .await?
    {
        out.entry(r[0].text()).or_default().push(r[1].text());
    }
    Ok(out)
}

/// An explanation read straight from the store (the CLI has no running snapshot).
pub async fn explain(
    store: &Store,
    who: &Requester<'_>,
    model: Option<&str>,
) -> Result<(Vec<Applied>, Option<Decision>), Error> {
    let gov = Governance {
        store: store.clone(),
        snapshot: RwLock::new(Arc::new(load_snapshot(store).await?)),
    };
    Ok(gov.explain(who, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(entries: &[(Scope, &str)], groups: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (scope, json) in entries {
            s.limits
                .insert(scope.clone(), serde_json::from_str(json).unwrap());
        }
        for (g, u) in groups {
            s.groups_of
                .entry(u.to_string())
                .or_default()
                .insert(g.to_string());
        }
        s
    }

    fn who<'a>(user: &'a str, template: Option<&'a str>) -> Requester<'a> {
        Requester {
            user,
            key_id: Some("key_1"),
            template,
        }
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("claude-*", "claude-opus-4-8"));
        assert!(glob_match("*-mini", "gpt-5-mini"));
        assert!(glob_match("gpt-*-mini*", "gpt-4o-mini-2024-07-18"));
        assert!(glob_match("gpt-4o", "gpt-4o"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(!glob_match("claude-*", "my-claude-x"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn the_most_specific_scope_that_sets_a_list_wins() {
        let s = snap(
            &[
                (Scope::Global, r#"{"allow_models": ["claude-*", "gpt-*"]}"#),
                (
                    Scope::Group("eng".into()),
                    r#"{"deny_models": ["claude-opus-*"]}"#,
                ),
                (Scope::User("alice".into()), r#"{"deny_models": []}"#),
            ],
            &[("eng", "alice"), ("eng", "bob")],
        );
        // bob: the group's deny list applies.
        assert!(matches!(
            decide_with(&s, &who("bob", None), "claude-opus-4-8"),
            Decision::Deny { message } if message.contains("deny_models of group eng")
        ));
        // alice's own (empty) deny list is more specific than her group's.
        assert_eq!(
            decide_with(&s, &who("alice", None), "claude-opus-4-8"),
            Decision::Allow {
                model: "claude-opus-4-8".into()
            }
        );
        // The global allow list still applies to both.
        assert!(matches!(
            decide_with(&s, &who("alice", None), "llama-3"),
            Decision::Deny { message } if message.contains("allow_models of global permits only claude-*, gpt-*")
        ));
    }

    #[test]
    fn aliases_resolve_first_and_the_target_is_checked() {
        let s = snap(
            &[
                (
                    Scope::Template("python-dev".into()),
                    r#"{"aliases": {"claude-default": "claude-sonnet-4-6"}, "allow_models": ["claude-sonnet-*"]}"#,
                ),
                (
                    Scope::Global,
                    r#"{"aliases": {"claude-default": "claude-opus-4-8", "fast": "claude-haiku-4-5"}}"#,
                ),
            ],
            &[],
        );
        let t = who("carol", Some("python-dev"));
        assert_eq!(
            decide_with(&s, &t, "claude-default"),
            Decision::Allow {
                model: "claude-sonnet-4-6".into()
            }
        );
        assert!(matches!(
            decide_with(&s, &t, "fast"),
            Decision::Deny { message } if message.contains("alias \"fast\" of global")
        ));
        // Another template: the global alias.
        assert_eq!(
            decide_with(&s, &who("carol", None), "claude-default"),
            Decision::Allow {
                model: "claude-opus-4-8".into()
            }
        );
    }

    #[test]
    fn lists_of_several_groups_are_joined() {
        let s = snap(
            &[
                (Scope::Group("a".into()), r#"{"allow_models": ["gpt-*"]}"#),
                (
                    Scope::Group("b".into()),
                    r#"{"allow_models": ["claude-*"]}"#,
                ),
            ],
            &[("a", "dan"), ("b", "dan")],
        );
        for m in ["gpt-5", "claude-opus-4-8"] {
            assert!(matches!(
                decide_with(&s, &who("dan", None), m),
                Decision::Allow { .. }
            ));
        }
        assert!(matches!(
            decide_with(&s, &who("dan", None), "o3"),
            Decision::Deny { .. }
        ));
    }
}
