//! Governance: groups of users, and limits attached to the whole bridge, a group, a template, a
//! user or a key: the model policy (allowed and denied models, exact names or `*` globs, and
//! aliases such as `claude-default` → a pinned model) and USD budgets per day, week or month.
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
//!
//! **Budgets** are of two kinds. A *budget* is per spender: set on a key it caps that key's
//! spend, set anywhere else it caps each user's own spend (a group's budget is the default for
//! each of its members, a user's budget overrides it; with several groups the largest wins). A
//! *shared budget* caps a scope's total: a group's members together, a template's requests, the
//! whole bridge. Spend is the recorded cost (`cost_usd`) since the start of the calendar period
//! (UTC; weeks start on Monday), read from the store by every replica at each refresh and
//! counted locally in between: replicas see each other's spend within [`REFRESH`] plus the
//! recorder's batch delay. A request is refused once a budget is used up; one that is already
//! running (a stream) finishes and is counted.
//!
//! **Rates** (requests and input/output tokens per minute, concurrent requests) are per
//! spender like budgets. Requests and tokens are counted in fixed one-minute windows, in memory
//! by each replica and written to the store in batches every 250 ms, so replicas share them
//! within one sync interval (see [`crate::rate_windows`] for the accuracy); tokens are added
//! when a request ends. Concurrent requests are counted by each replica in memory and shared
//! through leases in the store at the same interval (see [`crate::concurrency`]). When the store cannot be reached, each replica counts
//! alone (like records, rates never take the gateway down; the limits then hold per replica),
//! writes its counts once the store is back, and a warning is logged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use crate::concurrency::Concurrency;
use crate::error::Error;
use crate::rate_windows::{Admit, RateWindows, FIELDS, INPUT_TOKENS, SYNC};
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_models: Option<Vec<String>>,
    /// Model name a client sends → the model Bridge asks the provider for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, String>,
    /// USD per period for each spender (each user; the key itself on a key scope).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub budgets: BTreeMap<Period, f64>,
    /// USD per period for the scope as a whole (group, template, global).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_budgets: BTreeMap<Period, f64>,
    /// Requests, tokens and concurrency for each spender.
    #[serde(default, skip_serializing_if = "Rates::is_empty")]
    pub rates: Rates,
}

/// Rate limits of one spender; `None`: not set here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<u64>,
}

impl Rates {
    pub fn is_empty(&self) -> bool {
        *self == Rates::default()
    }

    /// The four fields by name, for resolution and display.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("requests_per_minute", self.requests_per_minute),
            ("input_tokens_per_minute", self.input_tokens_per_minute),
            ("output_tokens_per_minute", self.output_tokens_per_minute),
            ("concurrent_requests", self.concurrent_requests),
        ]
    }
}

/// The rates that apply to a request, each with whose use it counts and where it is set.
#[derive(Debug, Clone, Default)]
struct AppliedRates {
    fields: Vec<(&'static str, u64, Scope, Scope)>,
}

impl AppliedRates {
    fn get(&self, name: &str) -> Option<(u64, &Scope, &Scope)> {
        self.fields
            .iter()
            .find(|f| f.0 == name)
            .map(|(_, v, spender, set_on)| (*v, spender, set_on))
    }
}

/// A request admitted under a concurrency limit: holds its slot until dropped.
#[derive(Debug)]
pub struct Admission {
    gov: Arc<Governance>,
    spender: Option<String>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(s) = &self.spender {
            self.gov.concurrency.release(s);
        }
    }
}

/// Why a rate limit refused a request, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRefusal {
    pub message: String,
    pub retry_after_secs: u64,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.allow_models.is_none()
            && self.deny_models.is_none()
            && self.aliases.is_empty()
            && self.budgets.is_empty()
            && self.shared_budgets.is_empty()
            && self.rates.is_empty()
    }
}

/// A calendar period of a budget (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Start of the period that contains `now`.
    pub fn start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let day = now.date_naive();
        let first = match self {
            Period::Day => day,
            Period::Week => {
                day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday()))
            }
            Period::Month => day.with_day(1).unwrap_or(day),
        };
        first.and_time(NaiveTime::MIN).and_utc()
    }

    /// Start of the next period (when a used-up budget renews).
    pub fn next(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.start(now);
        match self {
            Period::Day => start + chrono::Duration::days(1),
            Period::Week => start + chrono::Duration::days(7),
            Period::Month => start
                .date_naive()
                .checked_add_months(chrono::Months::new(1))
                .map(|d| d.and_time(NaiveTime::MIN).and_utc())
                .unwrap_or(start),
        }
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
    /// Whether any scope has a budget (spend is only tracked then).
    has_budgets: bool,
    /// Whether any scope has a rate limit.
    has_rates: bool,
    /// Spend per scope and period, as of `spend_at` (plus what this replica recorded since).
    spend: std::sync::Mutex<HashMap<(Scope, Period), f64>>,
    spend_at: Option<DateTime<Utc>>,
}

impl Snapshot {
    fn spent(&self, scope: &Scope, period: Period, now: DateTime<Utc>) -> f64 {
        match self.spend_at {
            // The snapshot's spend is of another period (it rolled over since): nothing yet.
            Some(at) if period.start(at) == period.start(now) => self
                .spend
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(scope.clone(), period))
                .copied()
                .unwrap_or(0.0),
            _ => 0.0,
        }
    }

    /// The scopes whose spend a request of `who` adds to.
    fn spenders(&self, who: &Requester) -> Vec<Scope> {
        let mut out = vec![Scope::User(who.user.to_string()), Scope::Global];
        if let Some(k) = who.key_id {
            out.push(Scope::Key(k.to_string()));
        }
        if let Some(t) = who.template {
            out.push(Scope::Template(t.to_string()));
        }
        if let Some(groups) = self.groups_of.get(who.user) {
            out.extend(groups.iter().map(|g| Scope::Group(g.clone())));
        }
        out
    }

    /// The rate limits that apply to `who`: per field, the most specific level that sets it
    /// (the largest of a level).
    fn rates(&self, who: &Requester) -> AppliedRates {
        let mut out = AppliedRates::default();
        for (i, name) in [
            "requests_per_minute",
            "input_tokens_per_minute",
            "output_tokens_per_minute",
            "concurrent_requests",
        ]
        .into_iter()
        .enumerate()
        {
            for level in self.levels(who) {
                let best = level
                    .iter()
                    .filter_map(|s| Some((self.limits.get(s)?.rates.fields()[i].1?, s)))
                    .max_by_key(|(v, _)| *v);
                if let Some((v, set_on)) = best {
                    let spender = match set_on {
                        Scope::Key(k) => Scope::Key(k.clone()),
                        _ => Scope::User(who.user.to_string()),
                    };
                    out.fields.push((name, v, spender, set_on.clone()));
                    break;
                }
            }
        }
        out
    }

    /// Every budget that applies to `who`.
    fn budgets(&self, who: &Requester) -> Vec<Budget> {
        let mut out = Vec::new();
        for period in Period::ALL {
            // Per spender: the most specific level that sets one; the largest of a level.
            for level in self.levels(who) {
                let best = level
                    .iter()
                    .filter_map(|s| {
                        let usd = *self.limits.get(s)?.budgets.get(&period)?;
                        Some((usd, s))
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                if let Some((usd, set_on)) = best {
                    let spender = match set_on {
                        Scope::Key(k) => Scope::Key(k.clone()),
                        _ => Scope::User(who.user.to_string()),
                    };
                    out.push(Budget {
                        period,
                        usd,
                        spender,
                        set_on: set_on.clone(),
                        shared: false,
                    });
                    break;
                }
            }
            // Shared: every scope of the request that has one.
            for level in self.levels(who) {
                for s in level {
                    if let Some(usd) = self
                        .limits
                        .get(&s)
                        .and_then(|l| l.shared_budgets.get(&period))
                    {
                        out.push(Budget {
                            period,
                            usd: *usd,
                            spender: s.clone(),
                            set_on: s,
                            shared: true,
                        });
                    }
                }
            }
        }
        out
    }
}

/// A budget that applies to a request.
#[derive(Debug, Clone)]
struct Budget {
    period: Period,
    usd: f64,
    /// Whose spend it caps.
    spender: Scope,
    /// Where it is set.
    set_on: Scope,
    /// A scope's total rather than each spender's own.
    shared: bool,
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
pub struct Governance {
    store: Store,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Requests in flight per spender under a concurrency limit, shared with the other
    /// replicas through leases in the store every [`SYNC`].
    concurrency: Concurrency,
    /// Per-minute counts, synced with the store every [`crate::rate_windows::SYNC`].
    windows: RateWindows,
    /// Budget fractions that raise a notice, and who hears of it besides the log.
    notices: std::sync::OnceLock<(Vec<f64>, Notify)>,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Governance {
    /// Loads the limits once (the gateway does not start without them).
    pub async fn load(store: Store) -> Result<Arc<Governance>, Error> {
        let snapshot = load_snapshot(&store).await?;
        Ok(Arc::new(Governance {
            store,
            snapshot: RwLock::new(Arc::new(snapshot)),
            concurrency: Default::default(),
            windows: Default::default(),
            notices: Default::default(),
        }))
    }

    /// Reloads every [`REFRESH`] until the gateway stops; a failed reload keeps the last
    /// snapshot (and says so once per outage).
    pub fn spawn_refresh(self: &Arc<Self>) {
        // The rate windows' write-behind: this replica's counts go to the store, the other
        // replicas' come back, every SYNC.
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(SYNC).await;
                let Some(gov) = me.upgrade() else { return };
                let window = Utc::now().timestamp() / 60 * 60;
                let synced = match gov.windows.sync(&gov.store, window).await {
                    Ok(()) if gov.current().has_rates => gov.concurrency.sync(&gov.store).await,
                    other => other,
                };
                match synced {
                    Ok(()) if failing => {
                        tracing::info!("rate counts written to the store again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot write rate counts to the store; this replica counts alone until it can");
                        }
                        failing = true;
                    }
                }
            }
        });
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

    /// Budget notices at these fractions (0.85 = 85%) go to `notify` too (set once, at start).
    pub fn on_notice(&self, thresholds: Vec<f64>, notify: Notify) {
        let _ = self.notices.set((thresholds, notify));
    }

    /// Whether any scope has a budget (else no spend needs counting).
    pub fn has_budgets(&self) -> bool {
        self.current().has_budgets
    }

    /// `Some(reason)` when a budget that applies to `who` is used up.
    pub fn over_budget(&self, who: &Requester) -> Option<String> {
        let snap = self.current();
        if !snap.has_budgets {
            return None;
        }
        over_budget_with(&snap, who, Utc::now())
    }

    /// Admits a request under the rate limits that apply to `who`, or says why not and when
    /// to retry. The admission holds a concurrency slot until dropped.
    pub async fn admit(
        self: &Arc<Self>,
        who: &Requester<'_>,
    ) -> Result<Option<Admission>, RateRefusal> {
        let snap = self.current();
        if !snap.has_rates {
            return Ok(None);
        }
        let rates = snap.rates(who);
        if rates.fields.is_empty() {
            return Ok(None);
        }
        let now = Utc::now();
        let window = now.timestamp() / 60 * 60;
        let retry_after = (window + 60 - now.timestamp()).max(1) as u64;
        // Concurrency first: it costs no database round trip.
        let mut admission = Admission {
            gov: self.clone(),
            spender: None,
        };
        if let Some((max, spender, set_on)) = rates.get("concurrent_requests") {
            let key = spender.to_string();
            if let Err(n) = self.concurrency.acquire(&key, max) {
                return Err(RateRefusal {
                    message: format!(
                        "{spender} already has {n} requests running, the most concurrent_requests of {set_on} allows; retry when one finishes"
                    ),
                    retry_after_secs: 1,
                });
            }
            admission.spender = Some(key);
        }
        let Some((_, spender, _)) = FIELDS.iter().find_map(|f| rates.get(f)) else {
            return Ok(Some(admission));
        };
        let subject = spender.to_string();
        let limits = FIELDS.map(|f| rates.get(f).map(|r| r.0));
        let decided = match self.windows.admit(&subject, window, limits) {
            Admit::Unknown => {
                match self
                    .windows
                    .admit_through_store(&self.store, &subject, window, limits)
                    .await
                {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limits counted by this replica alone: the store is unavailable");
                        self.windows.count_alone(&subject, window);
                        self.windows.admit(&subject, window, limits)
                    }
                }
            }
            known => known,
        };
        match decided {
            Admit::No { field, used } => {
                let (max, _, set_on) = rates.get(FIELDS[field]).expect("a set limit refused");
                Err(RateRefusal {
                    message: format!(
                        "{subject} reached {} {max} (set on {set_on}): {used} used in this minute; retry in {retry_after} s",
                        FIELDS[field]
                    ),
                    retry_after_secs: retry_after,
                })
            }
            Admit::Yes | Admit::Unknown => Ok(Some(admission)),
        }
    }

    /// Adds a finished request's tokens to its spender's current window (this replica's
    /// counts; the next sync writes them to the store).
    pub fn add_tokens(&self, who: &Requester, input: u64, output: u64) {
        let snap = self.current();
        if !snap.has_rates || input + output == 0 {
            return;
        }
        let rates = snap.rates(who);
        let Some((_, spender, _)) = FIELDS[INPUT_TOKENS..].iter().find_map(|f| rates.get(f)) else {
            return;
        };
        let window = Utc::now().timestamp() / 60 * 60;
        self.windows
            .add_tokens(&spender.to_string(), window, input, output);
    }

    /// Counts a request's cost right away on this replica (the store's total replaces it at
    /// the next refresh), and logs a notice when a budget crosses 85% or 100%.
    pub fn add_spend(&self, who: &Requester, usd: f64) {
        let snap = self.current();
        if !snap.has_budgets || usd <= 0.0 {
            return;
        }
        let now = Utc::now();
        let budgets = snap.budgets(who);
        let mut spend = snap.spend.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = snap
            .spend_at
            .map(|at| Period::ALL.map(|p| p.start(at) == p.start(now)));
        for scope in snap.spenders(who) {
            for (i, period) in Period::ALL.into_iter().enumerate() {
                if fresh.is_some_and(|f| f[i]) {
                    *spend.entry((scope.clone(), period)).or_default() += usd;
                }
            }
        }
        let (thresholds, notify) = match self.notices.get() {
            Some((t, n)) => (t.as_slice(), Some(n)),
            None => (&DEFAULT_NOTICE_THRESHOLDS[..], None),
        };
        let mut crossed = Vec::new();
        for b in budgets {
            let after = spend
                .get(&(b.spender.clone(), b.period))
                .copied()
                .unwrap_or(0.0);
            let before = after - usd;
            for &threshold in thresholds {
                let line = b.usd * threshold;
                if before < line && after >= line {
                    crossed.push(Notice {
                        spender: b.spender.to_string(),
                        set_on: b.set_on.to_string(),
                        shared: b.shared,
                        period: b.period.as_str(),
                        budget_usd: b.usd,
                        spent_usd: after,
                        percent: (threshold * 100.0).round(),
                        at: now,
                    });
                }
            }
        }
        drop(spend);
        for n in crossed {
            tracing::warn!(
                target: "bridge::budget",
                spender = %n.spender,
                set_on = %n.set_on,
                period = n.period,
                budget_usd = n.budget_usd,
                spent_usd = n.spent_usd,
                percent = n.percent,
                "budget notice: {} has used {:.0}% of its {} budget of ${} (set on {})",
                n.spender,
                n.percent,
                n.period,
                n.budget_usd,
                n.set_on
            );
            if let Some(notify) = notify {
                notify(&n);
            }
        }
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
        for (name, v, spender, set_on) in snap.rates(who).fields {
            out.push(Applied {
                setting: name.into(),
                value: format!("{v} for {spender}"),
                from: vec![set_on],
            });
        }
        let now = Utc::now();
        for b in snap.budgets(who) {
            let (period, limit, spender) = (b.period, b.usd, b.spender);
            let spent = snap.spent(&spender, period, now);
            out.push(Applied {
                setting: if b.shared {
                    format!("shared budget/{}", period.as_str())
                } else {
                    format!("budget/{}", period.as_str())
                },
                value: format!(
                    "${spent:.4} of ${limit} spent by {spender} since {}",
                    period.start(now).format("%Y-%m-%d")
                ),
                from: vec![b.set_on],
            });
        }
        (out, model.map(|m| decide_with(&snap, who, m)))
    }
}

/// Fractions of a budget at which a notice goes out, unless `budget_notices.thresholds` says.
pub const DEFAULT_NOTICE_THRESHOLDS: [f64; 2] = [0.85, 1.0];

/// A budget crossing a threshold: logged, counted, and handed to the server's notifier (which
/// may post it to a webhook).
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub spender: String,
    pub set_on: String,
    pub shared: bool,
    pub period: &'static str,
    pub budget_usd: f64,
    pub spent_usd: f64,
    /// The threshold crossed, in percent of the budget.
    pub percent: f64,
    pub at: DateTime<Utc>,
}

/// What the server does with a notice besides the log line.
pub type Notify = Arc<dyn Fn(&Notice) + Send + Sync>;

fn over_budget_with(snap: &Snapshot, who: &Requester, now: DateTime<Utc>) -> Option<String> {
    snap.budgets(who)
        .into_iter()
        .find_map(|b| {
            let Budget {
                period,
                usd: limit,
                spender,
                set_on,
                shared,
            } = b;
            let spent = snap.spent(&spender, period, now);
            (spent >= limit).then(|| {
                let whose = if shared {
                    format!("the shared {} budget of {set_on}", period.as_str())
                } else {
                    format!("the {} budget of {spender} (set on {set_on})", period.as_str())
                };
                format!(
                    "{whose} is used up: ${spent:.4} of ${limit} spent since {}; it renews at {} (see `llm-bridge limits explain`)",
                    period.start(now).format("%Y-%m-%d"),
                    period.next(now).format("%Y-%m-%d %H:%M UTC"),
                )
            })
        })
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
            snap.has_budgets |= !limits.budgets.is_empty() || !limits.shared_budgets.is_empty();
            snap.has_rates |= !limits.rates.is_empty();
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
    if snap.has_budgets {
        load_spend(store, &mut snap, Utc::now()).await?;
    }
    if snap.has_rates {
        // Windows older than an hour are history nobody reads.
        store
            .execute(
                "DELETE FROM rate_windows WHERE window_start < $1",
                vec![Value::Int(Some(Utc::now().timestamp() - 3600))],
            )
            .await?;
    }
    Ok(snap)
}

/// Spend of the current day, week and month per user, key, template, group and globally, from
/// the recorded costs (one grouped scan of the rows since the earliest period start).
async fn load_spend(store: &Store, snap: &mut Snapshot, now: DateTime<Utc>) -> Result<(), Error> {
    let from = Period::ALL
        .map(|p| p.start(now))
        .into_iter()
        .min()
        .unwrap_or(now);
    let rows = store
        .query(
            "SELECT user_name, key_id, template, day, CAST(SUM(cost_usd) AS DOUBLE PRECISION) \
             FROM interceptions WHERE started_at >= $1 AND cost_usd IS NOT NULL \
             GROUP BY user_name, key_id, template, day",
            vec![Value::Int(Some(from.timestamp_micros()))],
        )
        .await?;
    let mut spend: HashMap<(Scope, Period), f64> = HashMap::new();
    for r in rows {
        let (user, key, template, day) =
            (r[0].text(), r[1].opt_text(), r[2].opt_text(), r[3].text());
        let usd = r[4].opt_real().unwrap_or(0.0);
        let Ok(day) = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d") else {
            continue;
        };
        let at = day.and_time(NaiveTime::MIN).and_utc();
        let who = Requester {
            user: &user,
            key_id: key.as_deref(),
            template: template.as_deref(),
        };
        for period in Period::ALL {
            if at >= period.start(now) {
                for scope in snap.spenders(&who) {
                    *spend.entry((scope, period)).or_default() += usd;
                }
            }
        }
    }
    snap.spend = std::sync::Mutex::new(spend);
    snap.spend_at = Some(now);
    Ok(())
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
        concurrency: Default::default(),
        windows: Default::default(),
        notices: Default::default(),
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
    fn periods_start_at_utc_midnight_monday_and_the_first() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-26T15:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = |p: Period, f: fn(Period, DateTime<Utc>) -> DateTime<Utc>| {
            f(p, t).format("%Y-%m-%d %H:%M").to_string()
        };
        assert_eq!(day(Period::Day, Period::start), "2026-11-26 00:00");
        assert_eq!(day(Period::Week, Period::start), "2026-11-23 00:00"); // a Monday
        assert_eq!(day(Period::Month, Period::start), "2026-11-01 00:00");
        assert_eq!(day(Period::Day, Period::next), "2026-11-27 00:00");
        assert_eq!(day(Period::Week, Period::next), "2026-11-30 00:00");
        assert_eq!(day(Period::Month, Period::next), "2026-12-01 00:00");
    }

    #[test]
    fn a_budget_is_each_members_own_a_users_overrides_the_groups_and_shared_ones_add_up() {
        let mut s = snap(
            &[
                (Scope::Group("eng".into()), r#"{"budgets": {"month": 10}}"#),
                (
                    Scope::Group("ml".into()),
                    r#"{"budgets": {"month": 50}, "shared_budgets": {"day": 100}}"#,
                ),
                (Scope::User("erin".into()), r#"{"budgets": {"month": 5}}"#),
            ],
            &[("eng", "dave"), ("ml", "dave"), ("eng", "erin")],
        );
        s.has_budgets = true;
        let now = Utc::now();
        s.spend_at = Some(now);
        let set = |s: &Snapshot, scope: Scope, p: Period, usd: f64| {
            s.spend.lock().unwrap().insert((scope, p), usd);
        };
        // dave: the larger of his two groups' budgets (50); 20 spent is fine.
        set(&s, Scope::User("dave".into()), Period::Month, 20.0);
        assert_eq!(over_budget_with(&s, &who("dave", None), now), None);
        // erin: her own 5 overrides her group's 10.
        set(&s, Scope::User("erin".into()), Period::Month, 6.0);
        let msg = over_budget_with(&s, &who("erin", None), now).unwrap();
        assert!(
            msg.contains("month budget of user erin (set on user erin)"),
            "{msg}"
        );
        // The ml group's shared day budget: all members together.
        set(&s, Scope::Group("ml".into()), Period::Day, 100.0);
        let msg = over_budget_with(&s, &who("dave", None), now).unwrap();
        assert!(
            msg.contains("shared day budget of group ml is used up"),
            "{msg}"
        );
        // Spend counted in an earlier month is not this month's.
        s.spend_at = Some(now - chrono::Duration::days(40));
        assert_eq!(over_budget_with(&s, &who("erin", None), now), None);
    }

    #[test]
    fn each_rate_comes_from_the_most_specific_scope_that_sets_it() {
        let s = snap(
            &[
                (
                    Scope::Global,
                    r#"{"rates": {"requests_per_minute": 60, "concurrent_requests": 4}}"#,
                ),
                (
                    Scope::Group("eng".into()),
                    r#"{"rates": {"requests_per_minute": 120}}"#,
                ),
                (
                    Scope::Key("key_1".into()),
                    r#"{"rates": {"concurrent_requests": 1}}"#,
                ),
            ],
            &[("eng", "ann")],
        );
        let r = s.rates(&who("ann", None));
        let (v, spender, set_on) = r.get("requests_per_minute").unwrap();
        assert_eq!(
            (v, spender, set_on),
            (120, &Scope::User("ann".into()), &Scope::Group("eng".into()))
        );
        // Set on her key: the key is the spender.
        let (v, spender, _) = r.get("concurrent_requests").unwrap();
        assert_eq!((v, spender), (1, &Scope::Key("key_1".into())));
        assert!(r.get("input_tokens_per_minute").is_none());
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
