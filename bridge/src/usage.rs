//! Usage reports: requests, tokens and cost grouped by user, model, provider or day, rendered
//! as a table (with a totals row), JSON or CSV. Also parses the `--since` argument.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use crate::error::Error;
use crate::store::Store;

/// What a report is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Model,
    Provider,
    Day,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::User => "user_name",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Day => "day",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            GroupBy::User => "user",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Day => "day",
        }
    }
}

/// One line of a usage report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageRow {
    pub key: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Cost of the priced requests.
    pub cost_usd: f64,
    /// Requests that used tokens of a model without a price: their cost is not in `cost_usd`.
    pub unpriced_requests: u64,
}

/// Usage since `since` (all time if `None`), one row per group, sorted by key.
pub async fn report(
    store: &Store,
    by: GroupBy,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<UsageRow>, Error> {
    let rows = store.usage_rows(by.column(), since).await?;
    Ok(rows
        .into_iter()
        .map(|r| UsageRow {
            key: r[0].text(),
            requests: r[1].int() as u64,
            input_tokens: r[2].int() as u64,
            output_tokens: r[3].int() as u64,
            cache_read_tokens: r[4].int() as u64,
            cache_write_tokens: r[5].int() as u64,
            cost_usd: r[6].opt_real().unwrap_or(0.0),
            unpriced_requests: r[7].int() as u64,
        })
        .collect())
}

/// Sum of all rows.
pub fn total(rows: &[UsageRow]) -> UsageRow {
    rows.iter().fold(
        UsageRow {
            key: "TOTAL".into(),
            ..Default::default()
        },
        |mut t, r| {
            t.requests += r.requests;
            t.input_tokens += r.input_tokens;
            t.output_tokens += r.output_tokens;
            t.cache_read_tokens += r.cache_read_tokens;
            t.cache_write_tokens += r.cache_write_tokens;
            t.cost_usd += r.cost_usd;
            t.unpriced_requests += r.unpriced_requests;
            t
        },
    )
}

/// `7d`, `24h`, `30m`, `2w` (relative to `now`), an RFC 3339 time, or a date `2025-01-31`.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    let s = s.trim();
    let bad = || {
        Error::Query(format!(
            "invalid --since {s:?}: use a duration like 30m, 24h, 7d, 2w, or a date like 2025-01-31 or 2025-01-31T09:00:00Z"
        ))
    };
    if let Some(unit) = s.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        if let Ok(n) = s[..s.len() - 1].parse::<i64>() {
            let d = match unit {
                's' => Duration::try_seconds(n),
                'm' => Duration::try_minutes(n),
                'h' => Duration::try_hours(n),
                'd' => Duration::try_days(n),
                'w' => Duration::try_weeks(n),
                _ => None,
            }
            .ok_or_else(bad)?;
            return now.checked_sub_signed(d).ok_or_else(bad);
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc());
    }
    Err(bad())
}

/// Output format of reports and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Renders a report; the table and CSV forms end with a totals row.
pub fn render(rows: &[UsageRow], by: GroupBy, format: Format) -> String {
    let total = total(rows);
    match format {
        Format::Json => {
            let v = serde_json::json!({ "group_by": by.label(), "rows": rows, "total": total });
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        Format::Csv => {
            let mut out = format!(
                "{},requests,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,cost_usd,unpriced_requests\n",
                by.label()
            );
            for r in rows.iter().chain(std::iter::once(&total)) {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{:.6},{}\n",
                    csv_field(&r.key),
                    r.requests,
                    r.input_tokens,
                    r.output_tokens,
                    r.cache_read_tokens,
                    r.cache_write_tokens,
                    r.cost_usd,
                    r.unpriced_requests
                ));
            }
            out
        }
        Format::Table => {
            let header = [
                by.label().to_uppercase(),
                "REQUESTS".into(),
                "INPUT".into(),
                "OUTPUT".into(),
                "CACHE READ".into(),
                "CACHE WRITE".into(),
                "COST (USD)".into(),
            ];
            let line = |r: &UsageRow| {
                [
                    r.key.clone(),
                    r.requests.to_string(),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    r.cache_read_tokens.to_string(),
                    r.cache_write_tokens.to_string(),
                    cost_cell(r),
                ]
            };
            let mut body: Vec<[String; 7]> = rows.iter().map(line).collect();
            body.push(line(&total));
            render_table(&header, &body, true)
        }
    }
}

/// The cost as a table shows it: a request without a price is never shown as free.
fn cost_cell(r: &UsageRow) -> String {
    match r.unpriced_requests {
        0 => format!("{:.6}", r.cost_usd),
        _ if r.cost_usd == 0.0 => "unpriced".into(),
        n => format!("{:.6} + {n} unpriced", r.cost_usd),
    }
}

/// Right-aligns columns whose cells are all numbers (or `-`), left-aligns the others; draws a
/// rule above the last row if `total_row`.
pub fn render_table<const N: usize>(
    header: &[String; N],
    rows: &[[String; N]],
    total_row: bool,
) -> String {
    // Cells come from clients (model names, user agents, prompts): escape anything a terminal
    // would interpret, and line breaks that would forge rows.
    let header: [String; N] = header.clone().map(|c| terminal_safe(&c));
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| terminal_safe(&c)))
        .collect();
    let (header, rows) = (&header, &rows[..]);
    let mut widths = [0usize; N];
    for r in std::iter::once(header).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..N)
        .map(|i| {
            !rows.is_empty()
                && rows.iter().all(|r| {
                    let c = r[i].trim_start_matches('$');
                    c == "-" || c.parse::<f64>().is_ok()
                })
        })
        .collect();
    let fmt_row = |r: &[String; N]| {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if numeric[i] {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        cells.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = fmt_row(header);
    for (i, r) in rows.iter().enumerate() {
        if total_row && i + 1 == rows.len() {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (N - 1);
            out.push_str(&"-".repeat(rule));
            out.push('\n');
        }
        out.push_str(&fmt_row(r));
    }
    out
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. A field that
/// a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, tab or carriage
/// return) is prefixed with `'`, so opening an export never runs what a client wrote.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{s}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

/// Text safe to print on one line of a terminal: control characters (escape sequences, line
/// breaks, tabs, C1 controls) and bidirectional overrides are shown escaped (`\n`, `\u{1b}`)
/// instead of being interpreted.
pub fn terminal_safe(s: &str) -> String {
    escape_for_terminal(s, false)
}

/// [`terminal_safe`] for multi-line text (a prompt): line breaks are kept, the rest escaped.
pub fn terminal_safe_multiline(s: &str) -> String {
    escape_for_terminal(s, true)
}

fn escape_for_terminal(s: &str, keep_newlines: bool) -> String {
    let dangerous = |c: char| {
        (c.is_control() && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(dangerous) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' if !keep_newlines => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if dangerous(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_neutralised() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        for f in ["+1", "-1+2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(
                csv_field(f).trim_start_matches('"').starts_with('\''),
                "{f}"
            );
        }
        assert_eq!(csv_field("claude-sonnet-4"), "claude-sonnet-4");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }

    #[test]
    fn terminal_output_escapes_control_sequences_and_forged_rows() {
        assert_eq!(
            terminal_safe("gpt\u{1b}[2J\nfake row"),
            "gpt\\u{1b}[2J\\nfake row"
        );
        assert_eq!(terminal_safe("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(
            terminal_safe_multiline("line 1\nline\u{7} 2"),
            "line 1\nline\\u{7} 2"
        );
        let header = ["MODEL".to_string()];
        let table = render_table(&header, &[["a\nb\u{1b}]0;x\u{7}".to_string()]], false);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(!table.contains('\u{1b}'), "{table}");
    }

    #[test]
    fn since_accepts_relative_durations_and_dates() {
        let now = DateTime::parse_from_rfc3339("2025-03-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("7d", now).unwrap().to_rfc3339(),
            "2025-03-03T12:00:00+00:00"
        );
        assert_eq!(
            parse_since("24h", now).unwrap().to_rfc3339(),
            "2025-03-09T12:00:00+00:00"
        );
        assert_eq!(
            parse_since("30m", now).unwrap().to_rfc3339(),
            "2025-03-10T11:30:00+00:00"
        );
        assert_eq!(
            parse_since("2025-01-31", now).unwrap().to_rfc3339(),
            "2025-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2025-01-31T09:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2025-01-31T08:00:00+00:00"
        );
    }

    #[test]
    fn since_rejects_garbage_with_a_hint() {
        let err = parse_since("yesterday", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(err.contains("7d"), "{err}");
        assert!(parse_since("7x", Utc::now()).is_err());
    }
}
