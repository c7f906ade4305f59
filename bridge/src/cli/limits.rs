//! `llm-bridge groups`, `llm-bridge users` and `llm-bridge limits`: who belongs where, and the
//! limits (model policy today) on the whole bridge, a group, a template, a user or a key.

use clap::{Args, Subcommand};

use super::{OutputFormat, StoreArgs};
use bridge::governance::{self, Decision, Limits, Period, Rates, Requester, Scope};
use bridge::usage::{render_table, terminal_safe};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Add users to a group (created on first member).
    #[command(after_help = "Example: llm-bridge groups add platform alice bob")]
    Add {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove users from a group (a group without members is gone).
    Remove {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List groups and their members.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users (everyone with a key or a group), their keys and groups.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Exactly one scope a limit is attached to.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// Every request on this bridge (the least specific scope).
    #[arg(long)]
    global: bool,
    /// Members of a group (`llm-bridge groups`).
    #[arg(long)]
    group: Option<String>,
    /// Requests naming this template (`x-bridge-template` header).
    #[arg(long)]
    template: Option<String>,
    /// One user.
    #[arg(long)]
    user: Option<String>,
    /// One bridge key (its id, from `llm-bridge keys list`).
    #[arg(long)]
    key: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        if let Some(g) = &self.group {
            Scope::Group(g.clone())
        } else if let Some(t) = &self.template {
            Scope::Template(t.clone())
        } else if let Some(u) = &self.user {
            Scope::User(u.clone())
        } else if let Some(k) = &self.key {
            Scope::Key(k.clone())
        } else {
            Scope::Global
        }
    }
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Set limits on a scope. Each setting replaces that setting of the scope; others stay.
    #[command(after_help = "Examples:\n  \
llm-bridge limits set --global --allow-models 'claude-*,gpt-5*'\n  \
llm-bridge limits set --group contractors --deny-models 'claude-opus-*'\n  \
llm-bridge limits set --template python-dev --alias claude-default=claude-sonnet-4-6\n  \
llm-bridge limits set --user alice --clear deny-models\n\n\
Patterns are exact model names or `*` globs. The most specific scope that sets a list wins \
(key, user, template, groups, global); a model matching the deny list, or no pattern of an \
allow list, is refused with a 403 in the provider's format.")]
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Only these models (comma-separated patterns); an empty value allows none.
        #[arg(long, value_delimiter = ',')]
        allow_models: Option<Vec<String>>,
        /// Never these models (comma-separated patterns).
        #[arg(long, value_delimiter = ',')]
        deny_models: Option<Vec<String>>,
        /// NAME=MODEL: requests for NAME go to MODEL (repeatable).
        #[arg(long, value_parser = parse_alias)]
        alias: Vec<(String, String)>,
        /// Remove an alias (repeatable).
        #[arg(long)]
        remove_alias: Vec<String>,
        /// PERIOD=USD (day, week or month): what each user may spend (on --key: that key),
        /// e.g. month=200; repeatable. A group's budget is each member's; a user's overrides it.
        #[arg(long, value_parser = parse_budget)]
        budget: Vec<(Period, f64)>,
        /// PERIOD=USD: what the scope may spend in total (a group's members together, a
        /// template's requests, the whole bridge); repeatable.
        #[arg(long, value_parser = parse_budget)]
        shared_budget: Vec<(Period, f64)>,
        /// Requests per minute for each spender (each user; on --key: that key).
        #[arg(long)]
        requests_per_minute: Option<u64>,
        /// Input tokens per minute for each spender.
        #[arg(long)]
        input_tokens_per_minute: Option<u64>,
        /// Output tokens per minute for each spender.
        #[arg(long)]
        output_tokens_per_minute: Option<u64>,
        /// Requests running at once for each spender (counted by each replica).
        #[arg(long)]
        concurrent_requests: Option<u64>,
        /// Remove a setting: allow-models, deny-models, aliases, budgets, shared-budgets, rates
        /// or all.
        #[arg(long, value_parser = ["allow-models", "deny-models", "aliases", "budgets", "shared-budgets", "rates", "all"])]
        clear: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List every scope's limits, with who set them last and when.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Say which limits apply to a request and why (and, with --model, the decision).
    #[command(
        after_help = "Example: llm-bridge limits explain --user alice --template python-dev --model claude-opus-4-8"
    )]
    Explain {
        #[arg(long)]
        user: String,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        template: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn parse_budget(s: &str) -> Result<(Period, f64), String> {
    let bad = || "expected PERIOD=USD with PERIOD day, week or month, e.g. month=200".to_string();
    let (p, usd) = s.split_once('=').ok_or_else(bad)?;
    let period = Period::parse(p.trim()).ok_or_else(bad)?;
    let usd: f64 = usd
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|_| bad())?;
    if !usd.is_finite() || usd < 0.0 {
        return Err("a budget is a non-negative amount of USD".into());
    }
    Ok((period, usd))
}

fn parse_alias(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, m)) if !a.trim().is_empty() && !m.trim().is_empty() => {
            Ok((a.trim().to_string(), m.trim().to_string()))
        }
        _ => Err("expected NAME=MODEL, e.g. claude-default=claude-sonnet-4-6".into()),
    }
}

fn clean(patterns: Vec<String>) -> Result<Vec<String>, String> {
    let out: Vec<String> = patterns
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(bad) = out.iter().find(|p| p.chars().any(char::is_whitespace)) {
        return Err(format!("model pattern {bad:?} contains whitespace"));
    }
    Ok(out)
}

/// Who the CLI records as the author of a change.
fn author() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn groups(cmd: GroupsCommand) -> anyhow::Result<()> {
    match cmd {
        GroupsCommand::Add {
            group,
            users,
            store,
        } => {
            let store = store.open().await?;
            let n = governance::add_members(&store, &group, &users).await?;
            println!("{n} added to group {group}");
        }
        GroupsCommand::Remove {
            group,
            users,
            store,
        } => {
            let store = store.open().await?;
            let n = governance::remove_members(&store, &group, &users).await?;
            if n == 0 {
                anyhow::bail!(
                    "none of {users:?} is in group {group:?} (see `llm-bridge groups list`)"
                );
            }
            println!("{n} removed from group {group}");
        }
        GroupsCommand::List { format, store } => {
            let store = store.open().await?;
            let groups = governance::groups(&store).await?;
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&groups)?),
                _ => {
                    let rows: Vec<[String; 2]> = groups
                        .iter()
                        .map(|(g, m)| [terminal_safe(g), terminal_safe(&m.join(", "))])
                        .collect();
                    print!(
                        "{}",
                        render_table(&["GROUP".into(), "MEMBERS".into()], &rows, false)
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn users(cmd: UsersCommand) -> anyhow::Result<()> {
    let UsersCommand::List { format, store } = cmd;
    let store = store.open().await?;
    let keys = store.list_keys().await?;
    let groups = governance::groups(&store).await?;
    let mut users: std::collections::BTreeMap<String, (Vec<String>, Vec<String>)> =
        Default::default();
    for k in keys.iter().filter(|k| k.revoked_at.is_none()) {
        users
            .entry(k.user.clone())
            .or_default()
            .0
            .push(k.id.clone());
    }
    for (g, members) in &groups {
        for m in members {
            users.entry(m.clone()).or_default().1.push(g.clone());
        }
    }
    match format {
        OutputFormat::Json => {
            let v: Vec<_> = users
                .iter()
                .map(|(u, (k, g))| serde_json::json!({"user": u, "keys": k, "groups": g}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        _ => {
            let rows: Vec<[String; 3]> = users
                .iter()
                .map(|(u, (k, g))| [terminal_safe(u), k.join(", "), terminal_safe(&g.join(", "))])
                .collect();
            let header = ["USER", "ACTIVE KEYS", "GROUPS"].map(String::from);
            print!("{}", render_table(&header, &rows, false));
        }
    }
    Ok(())
}

pub async fn limits(cmd: LimitsCommand) -> anyhow::Result<()> {
    match cmd {
        LimitsCommand::Set {
            scope,
            allow_models,
            deny_models,
            alias,
            remove_alias,
            budget,
            shared_budget,
            requests_per_minute,
            input_tokens_per_minute,
            output_tokens_per_minute,
            concurrent_requests,
            clear,
            store,
        } => {
            let scope = scope.scope();
            let rates = Rates {
                requests_per_minute,
                input_tokens_per_minute,
                output_tokens_per_minute,
                concurrent_requests,
            };
            if allow_models.is_none()
                && deny_models.is_none()
                && alias.is_empty()
                && remove_alias.is_empty()
                && budget.is_empty()
                && shared_budget.is_empty()
                && rates.is_empty()
                && clear.is_empty()
            {
                anyhow::bail!(
                    "nothing to change: give --allow-models, --deny-models, --alias, --remove-alias, --budget, --shared-budget, a rate (--requests-per-minute, ...) or --clear"
                );
            }
            if !shared_budget.is_empty() && matches!(scope, Scope::User(_) | Scope::Key(_)) {
                anyhow::bail!(
                    "a shared budget is for a group, a template or --global; a user's or a key's own budget is --budget"
                );
            }
            let store = store.open().await?;
            let mut l = governance::limits_of(&store, &scope).await?;
            for c in &clear {
                match c.as_str() {
                    "allow-models" => l.allow_models = None,
                    "deny-models" => l.deny_models = None,
                    "aliases" => l.aliases.clear(),
                    "budgets" => l.budgets.clear(),
                    "shared-budgets" => l.shared_budgets.clear(),
                    "rates" => l.rates = Rates::default(),
                    _ => l = Limits::default(),
                }
            }
            if let Some(a) = allow_models {
                l.allow_models = Some(clean(a).map_err(anyhow::Error::msg)?);
            }
            if let Some(d) = deny_models {
                l.deny_models = Some(clean(d).map_err(anyhow::Error::msg)?);
            }
            for name in &remove_alias {
                if l.aliases.remove(name).is_none() {
                    anyhow::bail!("{scope} has no alias {name:?}");
                }
            }
            for (name, model) in alias {
                l.aliases.insert(name, model);
            }
            l.budgets.extend(budget);
            l.shared_budgets.extend(shared_budget);
            for (slot, v) in [
                (&mut l.rates.requests_per_minute, rates.requests_per_minute),
                (
                    &mut l.rates.input_tokens_per_minute,
                    rates.input_tokens_per_minute,
                ),
                (
                    &mut l.rates.output_tokens_per_minute,
                    rates.output_tokens_per_minute,
                ),
                (&mut l.rates.concurrent_requests, rates.concurrent_requests),
            ] {
                if v.is_some() {
                    *slot = v;
                }
            }
            governance::set_limits(&store, &scope, &l, &author()).await?;
            println!(
                "{scope}: {} (running gateways apply it within {} s)",
                describe(&l),
                governance::REFRESH.as_secs()
            );
        }
        LimitsCommand::List { format, store } => {
            let store = store.open().await?;
            let all = governance::all_limits(&store).await?;
            match format {
                OutputFormat::Json => {
                    let v: Vec<_> = all
                        .iter()
                        .map(|(s, l, by, at)| {
                            serde_json::json!({"scope": s, "limits": l, "updated_by": by, "updated_at": at})
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                _ => {
                    let rows: Vec<[String; 3]> = all
                        .iter()
                        .map(|(s, l, by, at)| {
                            [
                                terminal_safe(&s.to_string()),
                                terminal_safe(&describe(l)),
                                format!("{} {}", terminal_safe(by), at.format("%Y-%m-%d %H:%M")),
                            ]
                        })
                        .collect();
                    let header = ["SCOPE", "LIMITS", "SET BY"].map(String::from);
                    print!("{}", render_table(&header, &rows, false));
                }
            }
        }
        LimitsCommand::Explain {
            user,
            key,
            template,
            model,
            format,
            store,
        } => {
            let store = store.open().await?;
            let who = Requester {
                user: &user,
                key_id: key.as_deref(),
                template: template.as_deref(),
            };
            let (applied, decision) = governance::explain(&store, &who, model.as_deref()).await?;
            if format == OutputFormat::Json {
                let decision = decision.map(|d| match d {
                    Decision::Allow { model } => {
                        serde_json::json!({"allowed": true, "model": model})
                    }
                    Decision::Deny { message } => {
                        serde_json::json!({"allowed": false, "reason": message})
                    }
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"applies": applied, "decision": decision})
                    )?
                );
                return Ok(());
            }
            let rows: Vec<[String; 3]> = applied
                .iter()
                .map(|a| {
                    [
                        a.setting.clone(),
                        terminal_safe(&a.value),
                        a.from
                            .iter()
                            .map(|s| terminal_safe(&s.to_string()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]
                })
                .collect();
            let header = ["SETTING", "VALUE", "SET ON"].map(String::from);
            print!("{}", render_table(&header, &rows, false));
            match decision {
                Some(Decision::Allow { model: m }) => println!(
                    "{}: allowed{}",
                    terminal_safe(model.as_deref().unwrap_or_default()),
                    if Some(&m) != model.as_ref() {
                        format!(" as {}", terminal_safe(&m))
                    } else {
                        String::new()
                    }
                ),
                Some(Decision::Deny { message }) => {
                    println!("refused: {}", terminal_safe(&message))
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn describe(l: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &l.allow_models {
        parts.push(format!("allow_models [{}]", a.join(", ")));
    }
    if let Some(d) = &l.deny_models {
        parts.push(format!("deny_models [{}]", d.join(", ")));
    }
    for (a, m) in &l.aliases {
        parts.push(format!("alias {a}={m}"));
    }
    for (p, usd) in &l.budgets {
        parts.push(format!("budget {}=${usd}", p.as_str()));
    }
    for (p, usd) in &l.shared_budgets {
        parts.push(format!("shared budget {}=${usd}", p.as_str()));
    }
    for (name, v) in l.rates.fields() {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join("; ")
    }
}
