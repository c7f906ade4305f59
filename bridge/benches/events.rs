//! Boundary events in the store: ingest throughput, and list/top/report over millions of
//! events. `cargo bench -p bridge --bench events` (figures go into BENCHMARKS.md).
//!
//! Ingest: batches of 1,000 agent-shaped events (about 600 bytes of JSON each, as an agent
//! writes them) through `audit::ingest::ingest`, the code behind `POST /boundary/v1/events`
//! (parse, validate, one multi-row insert transaction), one batch after another as one agent
//! connection would send them; goal ≥ 50,000 events/s.
//!
//! Queries: the table is filled with BENCH_QUERY_EVENTS (default 10,000,000) events spread
//! over 30 days by SQL (a recursive CTE in SQLite, generate_series in PostgreSQL: not through
//! HTTP, which would take hours), indexes dropped during the load and rebuilt from the
//! migration's own definitions; then each query runs BENCH_RUNS times (default 7) and its
//! median and worst time are printed; goal < 200 ms. The generated events carry a short JSON
//! body (about 110 bytes, to keep 10 M rows within a few GB of disk); only `list` reads it.
//!
//! Knobs: BENCH_INGEST_EVENTS (default 200,000), BENCH_QUERY_EVENTS, BENCH_RUNS,
//! BENCH_BODY_PAD (bytes added to each generated body, to mimic real events' size),
//! BENCH_BACKENDS (`sqlite,postgres`), BENCH_DIR (where the SQLite file goes; default the
//! temp dir).

#[path = "../tests/store_support/mod.rs"]
mod store_support;

use std::future::Future;
use std::time::{Duration, Instant};

use bridge::audit::ingest::{ingest, Origin};
use bridge::audit::query::{self, EventFilter, TopBy};
use bridge::store::Store;
use chrono::Utc;
use store_support::{Postgres, TempDir};

const INGEST_GOAL: f64 = 50_000.0;
const QUERY_GOAL_MS: f64 = 200.0;
const SPAN_DAYS: i64 = 30;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One batch of agent-shaped events (fresh ids).
fn batch(seq: u64, n: u64) -> Vec<u8> {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let k = seq * n + i;
            serde_json::json!({
                "event.id": uuid::Uuid::now_v7().to_string(),
                "timestamp": now,
                "event.name": "boundary.decision",
                "service.name": "boundary",
                "session.id": format!("sess-{}", k / 200),
                "boundary.policy.name": "python-dev",
                "boundary.mode": "audit",
                "event.action": if k.is_multiple_of(10) { "would_deny" } else { "allow" },
                "boundary.hook": "connect4",
                "boundary.event.count": 1,
                "network.transport": "tcp",
                "network.type": "ipv4",
                "destination.address": format!("10.0.{}.{}", k % 250, k % 200),
                "destination.port": 443,
                "boundary.destination.domains": [format!("host{}.example.com", k % 5000)],
                "boundary.rule": "domain=*.example.com port=443",
                "boundary.rule.id": 3,
                "process.pid": 4242,
                "thread.id": 4243,
                "process.executable.name": format!("proc{}", k % 50),
                "thread.name": "HTTP Client",
                "process.executable.path": "/usr/bin/python3.11",
                "process.command_line": "python3 -m pip install requests",
                "process.parent_pid": 4000,
                "user.id": 1000,
                "user.name": "alice",
                "group.id": 1000,
                "boundary.cgroup.id": 12345,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
}

struct Ingested {
    rate: f64,
    /// Events per second of CPU time (user + system) of this process and, for PostgreSQL, of
    /// the server: what ingest costs, whatever else runs on the machine.
    cpu_rate: f64,
    /// Parsing and validating alone (no store), events per second.
    parse_rate: f64,
    mean_batch_ms: f64,
    worst_batch_ms: f64,
    bytes_per_event: f64,
}

async fn measure_ingest(store: &Store, total: u64, pg_port: Option<u16>) -> Ingested {
    let origin = Origin {
        agent_id: "bench-agent".into(),
        template: "python-dev".into(),
        workspace: Some("ws-1".into()),
    };
    let per_batch = 1000;
    let batches: Vec<Vec<u8>> = (0..total / per_batch)
        .map(|s| batch(s, per_batch))
        .collect();
    let bytes: usize = batches.iter().map(Vec::len).sum();
    let t = Instant::now();
    for b in &batches {
        bridge::audit::ingest::parse_batch(b, &origin, Utc::now()).expect("valid");
    }
    let parse_rate = (batches.len() as u64 * per_batch) as f64 / t.elapsed().as_secs_f64();
    let mut worst = Duration::ZERO;
    let server_cpu = || pg_port.map_or(0.0, postgres_cpu_seconds);
    let cpu = cpu_seconds() + server_cpu();
    let start = Instant::now();
    for b in &batches {
        let t = Instant::now();
        let stored = ingest(store, b, &origin)
            .await
            .expect("store")
            .expect("valid")
            .0;
        assert_eq!(stored.accepted, per_batch);
        worst = worst.max(t.elapsed());
    }
    let took = start.elapsed();
    let cpu = cpu_seconds() + server_cpu() - cpu;
    let events = (batches.len() as u64 * per_batch) as f64;
    Ingested {
        rate: events / took.as_secs_f64(),
        cpu_rate: events / cpu,
        parse_rate,
        mean_batch_ms: took.as_secs_f64() * 1e3 / batches.len() as f64,
        worst_batch_ms: worst.as_secs_f64() * 1e3,
        bytes_per_event: bytes as f64 / (batches.len() as u64 * per_batch) as f64,
    }
}

/// CPU time of this process so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU time (user + system, seconds) of the PostgreSQL server listening on `port`: its
/// postmaster and every child (the backend serving the store's connection among them).
fn postgres_cpu_seconds(port: u16) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let stat = |pid: &str| -> Option<(u32, f64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces), from field 3 on.
        let rest = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let cpu = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((ppid, cpu / tick))
    };
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let needle = format!("-p {port} ");
    let Some(postmaster) = pids.iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(&needle)
            })
            .unwrap_or(false)
    }) else {
        return f64::NAN;
    };
    let pm: u32 = postmaster.parse().unwrap();
    pids.iter()
        .filter_map(|pid| {
            let (ppid, cpu) = stat(pid)?;
            (pid == postmaster || ppid == pm).then_some(cpu)
        })
        .sum()
}

/// The columns of the generated rows, as SQL over `i` (0..n) shared by both backends but for
/// the id and body text functions.
fn generated_columns(start_us: i64, step_us: i64, id: &str, body: &str) -> String {
    format!(
        "{id}, {start_us} + i * {step_us}, {start_us} + i * {step_us} + 1000000, \
         'agent-' || (i % 500), 'template-' || (i % 20), 'ws-' || ((i * 7) % 2000), \
         'sess-' || (i / 100), \
         CASE WHEN i % 10 = 0 THEN 'boundary.dns' ELSE 'boundary.decision' END, \
         CASE WHEN i % 100 < 3 THEN 'deny' WHEN i % 100 < 10 THEN 'would_deny' ELSE 'allow' END, \
         CASE WHEN i % 10 = 0 THEN NULL ELSE '10.' || (i % 250) || '.' || ((i / 250) % 250) || '.1' END, \
         CASE WHEN i % 10 = 0 THEN NULL WHEN i % 4 = 1 THEN 80 ELSE 443 END, \
         'host' || ((i * 13) % 5000) || '.example.com', 'proc' || (i % 50), 'user' || (i % 300), \
         1 + i % 3, {body}"
    )
}

const INSERT_COLUMNS: &str = "id, ts, received_at, agent_id, template, workspace, session_id, \
    event_name, action, destination, port, domain, process, user_name, count, body";

/// Fills a SQLite store's events table with `n` events by SQL, indexes rebuilt at the end.
fn fill_sqlite(path: &std::path::Path, n: u64, start_us: i64, step_us: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let indexes: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(indexes.len() >= 5, "the migration's indexes: {indexes:?}");
    for (name, _) in &indexes {
        conn.execute_batch(&format!("DROP INDEX {name}")).unwrap();
    }
    let id = "printf('%08x-0000-7000-8000-%012x', i / 1000000, i)";
    let pad = env_num("BENCH_BODY_PAD", 0);
    let body = format!("'{{\"event.id\":\"' || printf('%08x-0000-7000-8000-%012x', i / 1000000, i) || '\",\"event.name\":\"boundary.decision\",\"event.action\":\"allow\",\"pad\":\"' || printf('%.{pad}c', 'x') || '\"}}'");
    let chunk = 1_000_000u64;
    let mut from = 0;
    while from < n {
        let to = (from + chunk).min(n);
        conn.execute_batch(&format!(
            "BEGIN; WITH RECURSIVE s(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {to}) \
             INSERT INTO events ({INSERT_COLUMNS}) SELECT {} FROM s; COMMIT;",
            generated_columns(start_us, step_us, id, &body)
        ))
        .unwrap();
        from = to;
    }
    for (_, sql) in &indexes {
        conn.execute_batch(sql).unwrap();
    }
    conn.execute_batch("ANALYZE").unwrap();
}

/// The same for PostgreSQL.
async fn fill_postgres(url: &str, n: u64, start_us: i64, step_us: i64) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let indexes: Vec<(String, String)> = client
        .query(
            "SELECT indexname::text, indexdef FROM pg_indexes WHERE tablename = 'events' AND indexname <> 'events_pkey'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(indexes.len() >= 5, "the migration's indexes: {indexes:?}");
    for (name, _) in &indexes {
        client
            .batch_execute(&format!("DROP INDEX {name}"))
            .await
            .unwrap();
    }
    let id = "lpad(to_hex(i / 1000000), 8, '0') || '-0000-7000-8000-' || lpad(to_hex(i), 12, '0')";
    let pad = env_num("BENCH_BODY_PAD", 0);
    let body = format!(
        "'{{\"event.id\":\"' || {id} || '\",\"event.name\":\"boundary.decision\",\"event.action\":\"allow\",\"pad\":\"' || repeat('x', {pad}) || '\"}}'"
    );
    let chunk = 1_000_000u64;
    let mut from = 0;
    while from < n {
        let to = (from + chunk).min(n);
        client
            .batch_execute(&format!(
                "INSERT INTO events ({INSERT_COLUMNS}) SELECT {} FROM generate_series({from}::bigint, {}::bigint) AS s(i)",
                generated_columns(start_us, step_us, id, &body),
                to - 1
            ))
            .await
            .unwrap();
        from = to;
    }
    client
        .batch_execute("SET maintenance_work_mem = '256MB'")
        .await
        .unwrap();
    for (_, sql) in &indexes {
        client.batch_execute(sql).await.unwrap();
    }
    client.batch_execute("VACUUM ANALYZE events").await.unwrap();
}

struct Timed {
    name: String,
    rows: usize,
    median_ms: f64,
    worst_ms: f64,
}

async fn time<F, Fut>(name: &str, runs: u64, mut f: F) -> Timed
where
    F: FnMut() -> Fut,
    Fut: Future<Output = usize>,
{
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..runs {
        let t = Instant::now();
        rows = f().await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Timed {
        name: name.to_string(),
        rows,
        median_ms: times[times.len() / 2],
        worst_ms: *times.last().unwrap(),
    }
}

async fn measure_queries(store: &Store, now_us: i64, runs: u64) -> Vec<Timed> {
    let at = |ago_h: i64| chrono::DateTime::from_timestamp_micros(now_us - ago_h * 3_600_000_000);
    let f = |since_h: i64| EventFilter {
        since: at(since_h),
        ..EventFilter::default()
    };
    let mut out = Vec::new();
    macro_rules! q {
        ($name:expr, $body:expr) => {
            out.push(time($name, runs, || async { $body }).await);
        };
    }
    q!("list --limit 50 (newest, no filter)", {
        query::list_events(
            store,
            &EventFilter {
                limit: Some(50),
                ..EventFilter::default()
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("list --action deny --since 24h --limit 50", {
        query::list_events(
            store,
            &EventFilter {
                action: Some("deny".into()),
                limit: Some(50),
                ..f(24)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!(
        "list --template T --action would_deny --since 24h --limit 50",
        {
            query::list_events(
                store,
                &EventFilter {
                    template: Some("template-3".into()),
                    action: Some("would_deny".into()),
                    limit: Some(50),
                    ..f(24)
                },
            )
            .await
            .unwrap()
            .len()
        }
    );
    q!("list --workspace W --since 7d --limit 50", {
        query::list_events(
            store,
            &EventFilter {
                workspace: Some("ws-77".into()),
                limit: Some(50),
                ..f(168)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("list --domain D --since 24h --limit 50", {
        query::list_events(
            store,
            &EventFilter {
                domain: Some("host42.example.com".into()),
                limit: Some(50),
                ..f(24)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("list --session S (a session's timeline)", {
        query::session_events(store, "sess-99000", None)
            .await
            .unwrap()
            .len()
    });
    q!("list --process P --action deny --since 24h --limit 50", {
        query::list_events(
            store,
            &EventFilter {
                process: Some("proc7".into()),
                action: Some("deny".into()),
                limit: Some(50),
                ..f(24)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("top --by domain --action deny --since 24h", {
        query::top(
            store,
            TopBy::Domain,
            &EventFilter {
                action: Some("deny".into()),
                limit: Some(20),
                ..f(24)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("top --by workspace --action would_deny --since 24h", {
        query::top(
            store,
            TopBy::Workspace,
            &EventFilter {
                action: Some("would_deny".into()),
                limit: Some(20),
                ..f(24)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("top --by destination --action deny --since 7d", {
        query::top(
            store,
            TopBy::Destination,
            &EventFilter {
                action: Some("deny".into()),
                limit: Some(20),
                ..f(168)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("top --by process --since 1h (all actions)", {
        query::top(
            store,
            TopBy::Process,
            &EventFilter {
                limit: Some(20),
                ..f(1)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("top --by domain --since 24h (all actions)", {
        query::top(
            store,
            TopBy::Domain,
            &EventFilter {
                limit: Some(20),
                ..f(24)
            },
        )
        .await
        .unwrap()
        .len()
    });
    q!("export --action deny --since 24h (every row, paged)", {
        let mut n = 0usize;
        query::export(
            store,
            &EventFilter {
                action: Some("deny".into()),
                ..f(24)
            },
            |_| {
                n += 1;
                Ok(())
            },
        )
        .await
        .unwrap();
        n
    });
    q!("policy report --template T --since 7d", {
        query::report(store, "template-3", at(168))
            .await
            .unwrap()
            .len()
    });
    out
}

fn main() {
    let ingest_n = env_num("BENCH_INGEST_EVENTS", 200_000);
    let query_n = env_num("BENCH_QUERY_EVENTS", 10_000_000);
    let runs = env_num("BENCH_RUNS", 7);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let base = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .ok();
    let mut missed = false;
    for backend in backends.split(',') {
        rt.block_on(async {
            let dir = match &base {
                Some(b) => {
                    let d = TempDir(b.join(format!("bench-events-{}", std::process::id())));
                    std::fs::create_dir_all(d.path()).unwrap();
                    d
                }
                None => TempDir::new("bench-events"),
            };
            let pg = (backend == "postgres").then(Postgres::start);
            let url = match &pg {
                Some(pg) => pg.url(),
                None => dir.path().join("bridge.db").display().to_string(),
            };
            let store = Store::open(&url).await.expect("store opens");
            let label = if pg.is_some() { "PostgreSQL" } else { "SQLite" };

            let ing = measure_ingest(&store, ingest_n, pg.as_ref().map(|p| p.port)).await;
            let ok = ing.rate >= INGEST_GOAL;
            missed |= !ok;
            println!("\n### {label}: ingest ({ingest_n} events, batches of 1,000)\n");
            println!("| events/s | per CPU-second (bridge + store) | parse+validate only | mean batch | worst batch | JSON bytes/event | goal ≥ {INGEST_GOAL:.0}/s |");
            println!("|---:|---:|---:|---:|---:|---:|---|");
            println!(
                "| {:.0} | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.0} | {} |",
                ing.rate,
                ing.cpu_rate,
                ing.parse_rate,
                ing.mean_batch_ms,
                ing.worst_batch_ms,
                ing.bytes_per_event,
                if ok { "met" } else { "**missed**" }
            );

            let now_us = Utc::now().timestamp_micros();
            let span_us = SPAN_DAYS * 86_400_000_000;
            let step_us = (span_us / query_n as i64).max(1);
            let start_us = now_us - step_us * query_n as i64;
            let t = Instant::now();
            match &pg {
                Some(_) => fill_postgres(&url, query_n, start_us, step_us).await,
                None => {
                    let path = dir.path().join("bridge.db");
                    tokio::task::spawn_blocking(move || fill_sqlite(&path, query_n, start_us, step_us))
                        .await
                        .unwrap()
                }
            }
            let fill = t.elapsed();
            let total = query::count_events(&store).await.unwrap();
            println!(
                "\n### {label}: queries over {total} events ({SPAN_DAYS} days; filled by SQL in {:.0} s)\n",
                fill.as_secs_f64()
            );
            println!("| query | rows | median ms | worst ms | goal < {QUERY_GOAL_MS:.0} ms |");
            println!("|---|---:|---:|---:|---|");
            for q in measure_queries(&store, now_us, runs).await {
                let ok = q.median_ms < QUERY_GOAL_MS;
                missed |= !ok;
                println!(
                    "| {} | {} | {:.1} | {:.1} | {} |",
                    q.name,
                    q.rows,
                    q.median_ms,
                    q.worst_ms,
                    if ok { "met" } else { "**missed**" }
                );
            }
            if let Some(size) = std::fs::metadata(dir.path().join("bridge.db")).ok().map(|m| m.len()) {
                println!("\nSQLite file: {:.2} GB", size as f64 / 1e9);
            }
            drop(store);
            drop(pg);
        });
    }
    if missed {
        eprintln!("a goal was missed (see **missed** above)");
        std::process::exit(1);
    }
}
