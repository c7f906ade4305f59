//! The interception store: keys and interception records, in SQLite or PostgreSQL.
//!
//! One code path serves both backends: every statement is written once in PostgreSQL syntax
//! with `$N` placeholders (SQLite accepts `?N`, so the text is translated mechanically), the
//! schema uses types both understand (`BIGINT`, `DOUBLE PRECISION`, `TEXT`), times are stored as
//! microseconds since the Unix epoch, and aggregates are cast to `BIGINT` so both return the
//! same Rust types. The backends differ only in how a statement is executed ([`Backend`]).
//!
//! SQLite is the embedded default (`bridge.db`, WAL). PostgreSQL is for several bridge replicas
//! sharing one database; its connection is re-established on the next call after it drops, so
//! a database restart only costs the records that the recorder spools meanwhile.

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::Mutex as AsyncMutex;
use uuid::Uuid;

use crate::error::Error;
use crate::record::{
    InterceptionRecord, Outcome, Provider, ToolCall, ToolResult, Usage, WorkspaceContext,
};

/// Schema migrations, applied in order at open; the version of each is its index + 1.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: keys and interceptions.
    "CREATE TABLE IF NOT EXISTS keys (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT,
        revoked_at BIGINT
    );
    CREATE TABLE IF NOT EXISTS interceptions (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        key_id TEXT,
        provider TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT,
        client TEXT,
        streaming BIGINT NOT NULL,
        started_at BIGINT NOT NULL,
        day TEXT NOT NULL,
        ttfb_ms DOUBLE PRECISION,
        duration_ms DOUBLE PRECISION NOT NULL,
        status BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cache_read_tokens BIGINT NOT NULL,
        cache_write_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION,
        prompt TEXT,
        tools_offered TEXT NOT NULL,
        tool_calls TEXT NOT NULL,
        workspace TEXT,
        template TEXT,
        session TEXT,
        error TEXT
    );
    CREATE INDEX IF NOT EXISTS interceptions_started_at ON interceptions (started_at);
    CREATE INDEX IF NOT EXISTS interceptions_user ON interceptions (user_name, started_at)",
    // 2: the store's identity, so a bridge notices when its store was deleted or replaced;
    // an index to find intercept-start entries a crash left behind without a scan.
    "CREATE TABLE IF NOT EXISTS bridge_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS interceptions_outcome ON interceptions (outcome, started_at)",
    // 3: an agent session as a thread (the client's own session id, the tool results it sent
    // back) and where a request came from.
    "ALTER TABLE interceptions ADD COLUMN client_session TEXT;
    ALTER TABLE interceptions ADD COLUMN tool_results TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE interceptions ADD COLUMN client_addr TEXT;
    CREATE INDEX IF NOT EXISTS interceptions_client_session ON interceptions (client_session, started_at)",
    // 4: governance: limits per scope (global, group, template, user, key) and group members.
    "CREATE TABLE IF NOT EXISTS limits (
        scope_kind TEXT NOT NULL,
        scope TEXT NOT NULL,
        settings TEXT NOT NULL,
        updated_at BIGINT NOT NULL,
        updated_by TEXT NOT NULL,
        PRIMARY KEY (scope_kind, scope)
    );
    CREATE TABLE IF NOT EXISTS group_members (
        group_name TEXT NOT NULL,
        user_name TEXT NOT NULL,
        added_at BIGINT NOT NULL,
        PRIMARY KEY (group_name, user_name)
    )",
    // 5: retention: when a record's prompt text was dropped (NULL while it is kept), indexed
    // so the purge finds the records still holding text without scanning those done.
    "ALTER TABLE interceptions ADD COLUMN prompts_dropped_at BIGINT;
    CREATE INDEX IF NOT EXISTS interceptions_prompts_kept ON interceptions (prompts_dropped_at, started_at)",
    // 6: rate limits: requests and tokens per spender and one-minute window (shared by
    // replicas through atomic upserts).
    "CREATE TABLE IF NOT EXISTS rate_windows (
        subject TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        PRIMARY KEY (subject, window_start)
    )",
    // 7: the Boundary control plane: enrolled agents (token hash, template, what they last
    // reported), policy versions per template (append-only), and the sessions agents
    // register with the hash of their per-session credential.
    "CREATE TABLE IF NOT EXISTS agents (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        template TEXT NOT NULL,
        workspace TEXT,
        prefix TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at BIGINT,
        last_seen_at BIGINT,
        host TEXT,
        agent_version TEXT,
        policy_version BIGINT,
        policy_sha256 TEXT,
        sessions BIGINT,
        events_spooled BIGINT,
        events_lost BIGINT,
        agent_started_at BIGINT,
        status_at BIGINT
    );
    CREATE INDEX IF NOT EXISTS agents_template ON agents (template);
    CREATE TABLE IF NOT EXISTS policies (
        template TEXT NOT NULL,
        version BIGINT NOT NULL,
        yaml TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        mode TEXT NOT NULL,
        author TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        comment TEXT NOT NULL,
        PRIMARY KEY (template, version)
    );
    CREATE TABLE IF NOT EXISTS boundary_sessions (
        agent_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        credential_sha256 TEXT NOT NULL,
        user_name TEXT,
        uid BIGINT,
        command TEXT,
        started_at BIGINT,
        registered_at BIGINT NOT NULL,
        ended_at BIGINT,
        PRIMARY KEY (agent_id, session_id)
    );
    CREATE INDEX IF NOT EXISTS boundary_sessions_credential ON boundary_sessions (credential_sha256)",
    // 8: Boundary events shipped by agents (see docs/CONTROL_PLANE.md and `audit`): the
    // columns queries filter and group on, and the event itself as JSON text. Each index
    // serves named queries (see bridge/src/audit/mod.rs); every index costs ingest, so a
    // filter without its own index (process, user) rides on the time index.
    "CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        ts BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        agent_id TEXT NOT NULL,
        template TEXT NOT NULL,
        workspace TEXT,
        session_id TEXT,
        event_name TEXT NOT NULL,
        action TEXT,
        destination TEXT,
        port BIGINT,
        domain TEXT,
        process TEXT,
        user_name TEXT,
        count BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_ts ON events (ts, id);
    CREATE INDEX IF NOT EXISTS events_action_ts ON events (action, ts);
    CREATE INDEX IF NOT EXISTS events_template_action_ts ON events (template, action, ts);
    CREATE INDEX IF NOT EXISTS events_session_ts ON events (session_id, ts);
    CREATE INDEX IF NOT EXISTS events_workspace_ts ON events (workspace, ts);
    CREATE INDEX IF NOT EXISTS events_domain_ts ON events (domain, ts)",
    // 9: concurrent requests per spender and replica, renewed while they run (see
    // `concurrency`): replicas add up each other's unexpired rows.
    "CREATE TABLE IF NOT EXISTS concurrency_leases (
        spender TEXT NOT NULL,
        replica TEXT NOT NULL,
        running BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (spender, replica)
    )",
];

const INTERCEPTION_COLUMNS: &str = "id, user_name, key_id, provider, endpoint, model, client, \
    streaming, started_at, day, ttfb_ms, duration_ms, status, outcome, input_tokens, \
    output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, prompt, tools_offered, \
    tool_calls, workspace, template, session, error, client_session, tool_results, client_addr";

/// A value bound to or read from a statement. Nulls are typed because PostgreSQL checks the
/// type of every parameter, null or not.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    /// Arrays, PostgreSQL only (`UNNEST($1::text[], ...)` inserts many rows with one short
    /// statement); SQLite binds them as NULL.
    IntArray(Vec<Option<i64>>),
    TextArray(Vec<Option<String>>),
}

impl Value {
    pub(crate) fn int(&self) -> i64 {
        match self {
            Value::Int(v) => v.unwrap_or(0),
            Value::Real(v) => v.unwrap_or(0.0) as i64,
            _ => 0,
        }
    }
    pub(crate) fn opt_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => *v,
            Value::Real(v) => v.map(|f| f as i64),
            _ => None,
        }
    }
    pub(crate) fn opt_real(&self) -> Option<f64> {
        match self {
            Value::Int(v) => v.map(|i| i as f64),
            Value::Real(v) => *v,
            _ => None,
        }
    }
    pub(crate) fn opt_text(&self) -> Option<String> {
        match self {
            Value::Text(v) => v.clone(),
            _ => None,
        }
    }
    pub(crate) fn text(&self) -> String {
        self.opt_text().unwrap_or_default()
    }
}

/// The two ways of executing a statement.
// One Backend exists per store, behind an Arc: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite(Arc<StdMutex<rusqlite::Connection>>, Arc<SqliteFile>),
    Postgres {
        config: String,
        client: AsyncMutex<Option<tokio_postgres::Client>>,
    },
}

/// Handle to the store; cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
    description: Arc<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.description)
            .finish()
    }
}

/// A bridge key as listed (never the token or its hash).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyRow {
    pub id: String,
    pub user: String,
    /// First characters of the token, for recognising it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Filter for listing interceptions.
#[derive(Debug, Clone, Default)]
pub struct InterceptionFilter {
    pub user: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    /// Only this outcome (`ok`, `rejected`, ...).
    pub outcome: Option<Outcome>,
    /// Only the requests of this client session (an agent session's thread).
    pub client_session: Option<String>,
    /// Only requests that started before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only this model (as recorded).
    pub model: Option<String>,
    /// Only requests of this Boundary session / template / workspace (the record's context).
    pub session: Option<String>,
    pub template: Option<String>,
    pub workspace: Option<String>,
    /// Only records after this one (its start and id) in the list's newest-first order: the
    /// next page of a paged list.
    pub before: Option<(DateTime<Utc>, String)>,
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// `$1` → `?1`: SQLite understands numbered `?N` parameters, so one SQL text serves both.
fn to_sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Key of the PostgreSQL advisory lock held while migrating ("bridge" in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x6272_6964_6765;

impl Store {
    /// "sqlite://path", a bare path ("bridge.db"), or "postgres://user@host:port/db".
    pub async fn open(url: &str) -> Result<Store, Error> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let backend = Backend::Postgres {
                config: url.to_string(),
                client: AsyncMutex::new(None),
            };
            Store {
                backend: Arc::new(backend),
                description: Arc::new(redact_url(url)),
            }
        } else {
            let path = match url.strip_prefix("sqlite://") {
                Some(p) => p,
                None if url.contains("://") => {
                    return Err(Error::StoreUrl {
                        url: redact_url(url),
                        reason: "unknown scheme".into(),
                    })
                }
                None => url,
            };
            if path.is_empty() {
                return Err(Error::StoreUrl {
                    url: url.into(),
                    reason: "empty path".into(),
                });
            }
            let path = PathBuf::from(path);
            let (conn, file) = tokio::task::spawn_blocking(move || open_sqlite(&path))
                .await
                .map_err(store_err)??;
            Store {
                backend: Arc::new(Backend::Sqlite(
                    Arc::new(StdMutex::new(conn)),
                    Arc::new(file),
                )),
                description: Arc::new(url.to_string()),
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The store's URL with any password removed, for logs and messages.
    pub fn describe(&self) -> &str {
        &self.description
    }

    async fn migrate(&self) -> Result<(), Error> {
        // Replicas started at once on a new PostgreSQL database race on `CREATE TABLE IF NOT
        // EXISTS`, which PostgreSQL can fail with a unique violation in its catalog: one
        // replica migrates at a time (a session lock on the store's one connection, released
        // with it if the process dies), the others wait and then find the work done.
        let pg = matches!(&*self.backend, Backend::Postgres { .. });
        if pg {
            self.execute_batch(&format!("SELECT pg_advisory_lock({PG_MIGRATION_LOCK})"))
                .await?;
        }
        let result = self.migrate_locked().await;
        if pg {
            let _ = self
                .execute_batch(&format!("SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})"))
                .await;
        }
        result
    }

    async fn migrate_locked(&self) -> Result<(), Error> {
        self.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let applied = self
            .query(
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations",
                vec![],
            )
            .await?;
        let current = applied
            .first()
            .and_then(|r| r.first())
            .map(Value::int)
            .unwrap_or(0);
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current {
                continue;
            }
            self.execute_batch(sql).await?;
            // ON CONFLICT: two replicas migrating at once must not fail each other.
            self.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
                vec![Value::Int(Some(version)), Value::Int(Some(micros(Utc::now())))],
            )
            .await?;
            tracing::info!(store = %self.description, version, "applied store migration");
        }
        Ok(())
    }

    /// Runs several statements without parameters.
    async fn execute_batch(&self, sql: &str) -> Result<(), Error> {
        match &*self.backend {
            Backend::Sqlite(conn, _) => {
                let conn = conn.clone();
                let sql = sql.to_string();
                tokio::task::spawn_blocking(move || {
                    conn.lock()
                        .map_err(store_err)?
                        .execute_batch(&sql)
                        .map_err(store_err)
                })
                .await
                .map_err(store_err)?
            }
            Backend::Postgres { .. } => {
                let sql = sql.to_string();
                self.with_pg(move |client| {
                    Box::pin(async move { client.batch_execute(&sql).await.map(|_| 0) })
                })
                .await
                .map(|_| ())
            }
        }
    }

    /// Runs one statement and returns the number of rows it changed.
    pub(crate) async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, Error> {
        self.execute_many(sql, vec![params]).await
    }

    /// Runs one statement once per parameter set, all in one transaction; returns the number
    /// of rows changed.
    pub(crate) async fn execute_many(
        &self,
        sql: &str,
        param_sets: Vec<Vec<Value>>,
    ) -> Result<u64, Error> {
        self.execute_groups(vec![(sql.to_string(), param_sets)])
            .await
    }

    /// Runs each statement once per parameter set, all in one transaction, in order; returns
    /// the number of rows changed. On SQLite, first checks that the database file is still
    /// the one opened (see [`SqliteFile::check`]): writing to a deleted file would "succeed"
    /// into nothing.
    pub(crate) async fn execute_groups(
        &self,
        groups: Vec<(String, Vec<Vec<Value>>)>,
    ) -> Result<u64, Error> {
        match &*self.backend {
            Backend::Sqlite(conn, file) => {
                let conn = conn.clone();
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    file.check()?;
                    let mut conn = conn.lock().map_err(store_err)?;
                    let tx = conn.transaction().map_err(store_err)?;
                    let mut changed = 0u64;
                    for (sql, param_sets) in &groups {
                        let mut stmt = tx.prepare_cached(&to_sqlite_sql(sql)).map_err(store_err)?;
                        for params in param_sets {
                            let bound: Vec<&dyn rusqlite::ToSql> =
                                params.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
                            changed += stmt.execute(&bound[..]).map_err(store_err)? as u64;
                        }
                    }
                    tx.commit().map_err(store_err)?;
                    Ok(changed)
                })
                .await
                .map_err(store_err)?
            }
            Backend::Postgres { .. } => {
                self.with_pg(move |client| {
                    Box::pin(async move {
                        let tx = client.transaction().await?;
                        let mut changed = 0u64;
                        for (sql, param_sets) in &groups {
                            let stmt = tx.prepare(sql).await?;
                            for params in param_sets {
                                let bound: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                                    .iter()
                                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                                    .collect();
                                changed += tx.execute(&stmt, &bound).await?;
                            }
                        }
                        tx.commit().await?;
                        Ok(changed)
                    })
                })
                .await
            }
        }
    }

    /// Checks that the store can be written now without writing a record: on SQLite that its
    /// file is still the one opened and its shared-memory file is writable, on PostgreSQL
    /// that the server answers.
    pub async fn probe(&self) -> Result<(), Error> {
        match &*self.backend {
            Backend::Sqlite(_, file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.check())
                    .await
                    .map_err(store_err)?
            }
            Backend::Postgres { .. } => self.query("SELECT 1", vec![]).await.map(|_| ()),
        }
    }

    /// Runs a query and returns its rows as values.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Vec<Value>>, Error> {
        match &*self.backend {
            Backend::Sqlite(conn, _) => {
                let conn = conn.clone();
                let sql = to_sqlite_sql(sql);
                tokio::task::spawn_blocking(move || {
                    let conn = conn.lock().map_err(store_err)?;
                    let mut stmt = conn.prepare_cached(&sql).map_err(store_err)?;
                    let n = stmt.column_count();
                    let bound: Vec<&dyn rusqlite::ToSql> =
                        params.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
                    let mut rows = stmt.query(&bound[..]).map_err(store_err)?;
                    let mut out = Vec::new();
                    while let Some(row) = rows.next().map_err(store_err)? {
                        let mut vals = Vec::with_capacity(n);
                        for i in 0..n {
                            use rusqlite::types::ValueRef;
                            vals.push(match row.get_ref(i).map_err(store_err)? {
                                ValueRef::Null => Value::Text(None),
                                ValueRef::Integer(v) => Value::Int(Some(v)),
                                ValueRef::Real(v) => Value::Real(Some(v)),
                                ValueRef::Text(t) | ValueRef::Blob(t) => {
                                    Value::Text(Some(String::from_utf8_lossy(t).into_owned()))
                                }
                            });
                        }
                        out.push(vals);
                    }
                    Ok(out)
                })
                .await
                .map_err(store_err)?
            }
            Backend::Postgres { .. } => {
                let sql = sql.to_string();
                self.with_pg(move |client| {
                    Box::pin(async move {
                        let bound: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                            .iter()
                            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                            .collect();
                        let rows = client.query(&sql, &bound).await?;
                        let mut out = Vec::with_capacity(rows.len());
                        for row in rows {
                            let mut vals = Vec::with_capacity(row.len());
                            for (i, col) in row.columns().iter().enumerate() {
                                use tokio_postgres::types::Type;
                                let t = col.type_();
                                vals.push(if *t == Type::INT8 {
                                    Value::Int(row.try_get::<_, Option<i64>>(i)?)
                                } else if *t == Type::INT4 {
                                    Value::Int(row.try_get::<_, Option<i32>>(i)?.map(i64::from))
                                } else if *t == Type::FLOAT8 {
                                    Value::Real(row.try_get::<_, Option<f64>>(i)?)
                                } else {
                                    Value::Text(row.try_get::<_, Option<String>>(i)?)
                                });
                            }
                            out.push(vals);
                        }
                        Ok(out)
                    })
                })
                .await
            }
        }
    }

    /// Runs `f` with a live PostgreSQL client, connecting (again) if needed.
    async fn with_pg<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: for<'c> FnOnce(
            &'c mut tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    {
        let Backend::Postgres { config, client } = &*self.backend else {
            return Err(Error::Store("not a PostgreSQL store".into()));
        };
        let mut guard = client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            let connect = tokio_postgres::connect(config, tokio_postgres::NoTls);
            let (c, connection) = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .map_err(|_| {
                    Error::Store(format!("connecting to {}: timed out", self.description))
                })?
                .map_err(|e| Error::Store(format!("connecting to {}: {e}", self.description)))?;
            let description = self.description.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(store = %description, error = %e, "PostgreSQL connection ended");
                }
            });
            *guard = Some(c);
        }
        let c = guard.as_mut().expect("connected above");
        let result = f(c).await;
        if let Err(e) = &result {
            // A dropped connection is re-established on the next call.
            if c.is_closed() || e.is_closed() {
                *guard = None;
            }
        }
        result.map_err(|e| Error::Store(pg_error_text(&e)))
    }

    // ---- keys ----

    pub(crate) async fn insert_key(
        &self,
        id: &str,
        user: &str,
        prefix: &str,
        token_hash: &str,
        created_at: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.execute(
            "INSERT INTO keys (id, user_name, prefix, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Value::Text(Some(id.into())),
                Value::Text(Some(user.into())),
                Value::Text(Some(prefix.into())),
                Value::Text(Some(token_hash.into())),
                Value::Int(Some(micros(created_at))),
            ],
        )
        .await
        .map(|_| ())
    }

    /// All keys, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, Error> {
        let rows = self
            .query(
                "SELECT id, user_name, prefix, created_at, last_used_at, revoked_at FROM keys ORDER BY created_at, id",
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| KeyRow {
                id: r[0].text(),
                user: r[1].text(),
                prefix: r[2].text(),
                created_at: from_micros(r[3].int()),
                last_used_at: r[4].opt_int().map(from_micros),
                revoked_at: r[5].opt_int().map(from_micros),
            })
            .collect())
    }

    /// Marks a key revoked; revoking twice keeps the first time.
    pub(crate) async fn revoke_key(&self, id: &str) -> Result<(), Error> {
        let n = self
            .execute(
                "UPDATE keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                vec![
                    Value::Int(Some(micros(Utc::now()))),
                    Value::Text(Some(id.into())),
                ],
            )
            .await?;
        if n == 0 {
            return Err(Error::UnknownKey(id.into()));
        }
        Ok(())
    }

    /// Looks up a key by token hash: `(key id, user, revoked)`.
    pub(crate) async fn key_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<(String, String, bool)>, Error> {
        let rows = self
            .query(
                "SELECT id, user_name, revoked_at FROM keys WHERE token_hash = $1",
                vec![Value::Text(Some(hash.into()))],
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|r| (r[0].text(), r[1].text(), r[2].opt_int().is_some())))
    }

    pub(crate) async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), Error> {
        self.execute(
            "UPDATE keys SET last_used_at = $1 WHERE id = $2",
            vec![Value::Int(Some(micros(at))), Value::Text(Some(id.into()))],
        )
        .await
        .map(|_| ())
    }

    // ---- interceptions ----

    /// Writes records in one transaction. An intercept-start entry (outcome `incomplete`) is
    /// inserted only if its id is not stored yet; a final record replaces the entry with its
    /// id. So replaying a spool never duplicates, and a start entry replayed after its final
    /// record never overwrites it. Returns how many rows changed.
    pub async fn insert_interceptions(&self, records: &[InterceptionRecord]) -> Result<u64, Error> {
        if records.is_empty() {
            return Ok(0);
        }
        let placeholders: Vec<String> = (1..=29).map(|i| format!("${i}")).collect();
        let values = placeholders.join(", ");
        let (starts, finals): (Vec<_>, Vec<_>) = records
            .iter()
            .partition(|r| r.outcome == Outcome::Incomplete);
        let mut groups = Vec::with_capacity(2);
        if !starts.is_empty() {
            groups.push((
                format!(
                    "INSERT INTO interceptions ({INTERCEPTION_COLUMNS}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"
                ),
                starts.into_iter().map(record_params).collect(),
            ));
        }
        if !finals.is_empty() {
            let updates: Vec<String> = INTERCEPTION_COLUMNS
                .split(", ")
                .skip(1)
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            groups.push((
                // A final record brings its text back (spool replay after a purge): the purge
                // must see it again.
                format!(
                    "INSERT INTO interceptions ({INTERCEPTION_COLUMNS}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET {}, prompts_dropped_at = NULL",
                    updates.join(", ")
                ),
                finals.into_iter().map(record_params).collect(),
            ));
        }
        self.execute_groups(groups).await
    }

    /// Marks intercept-start entries that a previous run left without a final record (it
    /// crashed or was killed): they stay `incomplete`, with an error saying why. Returns how
    /// many there were. A final record arriving later (from the spool) still replaces them.
    pub async fn mark_abandoned(&self, before: DateTime<Utc>) -> Result<u64, Error> {
        self.execute(
            "UPDATE interceptions SET error = $1 WHERE outcome = 'incomplete' AND error IS NULL AND started_at < $2",
            vec![
                Value::Text(Some("bridge stopped before this request finished (crash or kill): outcome and usage unknown".into())),
                Value::Int(Some(micros(before))),
            ],
        )
        .await
    }

    /// The store's identity, created on first call. A bridge remembers it (next to its spool)
    /// to notice a store that was deleted or replaced between runs.
    pub async fn identity(&self) -> Result<String, Error> {
        let fresh = Uuid::now_v7().to_string();
        self.execute(
            "INSERT INTO bridge_meta (name, value) VALUES ('store_id', $1) ON CONFLICT (name) DO NOTHING",
            vec![Value::Text(Some(fresh))],
        )
        .await?;
        let rows = self
            .query(
                "SELECT value FROM bridge_meta WHERE name = 'store_id'",
                vec![],
            )
            .await?;
        rows.first()
            .map(|r| r[0].text())
            .ok_or_else(|| Error::Store("store identity missing after insert".into()))
    }

    /// Number of stored interceptions.
    pub async fn count_interceptions(&self) -> Result<u64, Error> {
        let rows = self
            .query("SELECT CAST(COUNT(*) AS BIGINT) FROM interceptions", vec![])
            .await?;
        Ok(rows.first().map(|r| r[0].int()).unwrap_or(0) as u64)
    }

    /// Interceptions, newest first.
    pub async fn list_interceptions(
        &self,
        filter: &InterceptionFilter,
    ) -> Result<Vec<InterceptionRecord>, Error> {
        let mut sql = format!("SELECT {INTERCEPTION_COLUMNS} FROM interceptions WHERE 1 = 1");
        let mut params = Vec::new();
        if let Some(user) = &filter.user {
            params.push(Value::Text(Some(user.clone())));
            sql.push_str(&format!(" AND user_name = ${}", params.len()));
        }
        if let Some(since) = filter.since {
            params.push(Value::Int(Some(micros(since))));
            sql.push_str(&format!(" AND started_at >= ${}", params.len()));
        }
        if let Some(outcome) = filter.outcome {
            params.push(Value::Text(Some(outcome.as_str().into())));
            sql.push_str(&format!(" AND outcome = ${}", params.len()));
        }
        if let Some(session) = &filter.client_session {
            params.push(Value::Text(Some(session.clone())));
            sql.push_str(&format!(" AND client_session = ${}", params.len()));
        }
        if let Some((t, id)) = &filter.before {
            params.push(Value::Int(Some(micros(*t))));
            params.push(Value::Text(Some(id.clone())));
            sql.push_str(&format!(
                " AND (started_at, id) < (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
        if let Some(until) = filter.until {
            params.push(Value::Int(Some(micros(until))));
            sql.push_str(&format!(" AND started_at < ${}", params.len()));
        }
        for (column, value) in [
            ("model", &filter.model),
            ("session", &filter.session),
            ("template", &filter.template),
            ("workspace", &filter.workspace),
        ] {
            if let Some(v) = value {
                params.push(Value::Text(Some(v.clone())));
                sql.push_str(&format!(" AND {column} = ${}", params.len()));
            }
        }
        sql.push_str(" ORDER BY started_at DESC, id DESC");
        if let Some(limit) = filter.limit {
            params.push(Value::Int(Some(i64::from(limit))));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let rows = self.query(&sql, params).await?;
        rows.into_iter().map(record_from_row).collect()
    }

    /// One interception by id: the full uuid or any prefix of it that matches one record.
    /// A prefix matching several is an error listing them (ids are time-ordered, so records
    /// of the same minute share their first 8 characters).
    pub async fn get_interception(&self, id: &str) -> Result<Option<InterceptionRecord>, Error> {
        let id = id.trim().to_ascii_lowercase();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Error::Query(format!(
                "{id:?} is not an interception id (hexadecimal digits and dashes, from `llm-bridge interceptions list`)"
            )));
        }
        const SHOWN: usize = 5;
        let rows = self
            .query(
                &format!("SELECT {INTERCEPTION_COLUMNS} FROM interceptions WHERE id LIKE $1 ORDER BY id LIMIT {}", SHOWN + 1),
                vec![Value::Text(Some(format!("{id}%")))],
            )
            .await?;
        if rows.len() > 1 {
            let count = self
                .query(
                    "SELECT CAST(COUNT(*) AS BIGINT) FROM interceptions WHERE id LIKE $1",
                    vec![Value::Text(Some(format!("{id}%")))],
                )
                .await?
                .first()
                .map(|r| r[0].int())
                .unwrap_or(rows.len() as i64);
            let mut ids: Vec<String> = rows.iter().take(SHOWN).map(|r| r[0].text()).collect();
            if count as usize > SHOWN {
                ids.push("...".into());
            }
            return Err(Error::Query(format!(
                "interception id prefix {id:?} is ambiguous: matches {count} interceptions ({}); give more characters",
                ids.join(", ")
            )));
        }
        rows.into_iter().next().map(record_from_row).transpose()
    }

    /// The ids just before and just after `id` in the whole store (in id order): what a prefix
    /// of `id` must tell it apart from.
    pub async fn neighbour_ids(&self, id: &str) -> Result<(Option<String>, Option<String>), Error> {
        let one = |sql: &'static str| {
            let id = id.to_string();
            async move {
                self.query(sql, vec![Value::Text(Some(id))])
                    .await
                    .map(|rows| rows.first().map(|r| r[0].text()))
            }
        };
        let before =
            one("SELECT id FROM interceptions WHERE id < $1 ORDER BY id DESC LIMIT 1").await?;
        let after = one("SELECT id FROM interceptions WHERE id > $1 ORDER BY id LIMIT 1").await?;
        Ok((before, after))
    }

    /// How many interceptions started before `before`, and how many of those (started before
    /// `prompts_before`) still hold prompt text or tool calls: what a purge would remove.
    pub async fn count_purgeable(
        &self,
        before: Option<DateTime<Utc>>,
        prompts_before: Option<DateTime<Utc>>,
    ) -> Result<(u64, u64), Error> {
        let count = |sql: &'static str, t: Option<DateTime<Utc>>| async move {
            let Some(t) = t else { return Ok(0) };
            let rows = self.query(sql, vec![Value::Int(Some(micros(t)))]).await?;
            Ok::<u64, Error>(rows.first().map(|r| r[0].int()).unwrap_or(0) as u64)
        };
        let records = count(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM interceptions WHERE started_at < $1",
            before,
        )
        .await?;
        // Prompts of records the first part removes are not counted twice.
        let prompts_before = match (before, prompts_before) {
            (Some(b), Some(p)) if p <= b => None,
            (_, p) => p,
        };
        let prompts = match (before, prompts_before) {
            (_, None) => 0,
            (None, Some(p)) => count(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM interceptions WHERE prompts_dropped_at IS NULL AND started_at < $1 AND (prompt IS NOT NULL OR tool_calls <> '[]' OR tool_results <> '[]')",
                Some(p),
            )
            .await?,
            (Some(b), Some(p)) => {
                let rows = self
                    .query(
                        "SELECT CAST(COUNT(*) AS BIGINT) FROM interceptions WHERE prompts_dropped_at IS NULL AND started_at < $1 AND started_at >= $2 AND (prompt IS NOT NULL OR tool_calls <> '[]' OR tool_results <> '[]')",
                        vec![Value::Int(Some(micros(p))), Value::Int(Some(micros(b)))],
                    )
                    .await?;
                rows.first().map(|r| r[0].int()).unwrap_or(0) as u64
            }
        };
        Ok((records, prompts))
    }

    /// Deletes up to `limit` interceptions started before `before`, oldest first; returns how
    /// many. One short transaction per call, so the recorder's inserts are never held up long.
    /// On PostgreSQL, rows another replica's purge has locked are skipped (`SKIP LOCKED`), so
    /// two replicas purging at once share the work instead of waiting on or deadlocking
    /// each other.
    pub async fn delete_interceptions_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, Error> {
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        self.execute(
            &format!("DELETE FROM interceptions WHERE id IN (SELECT id FROM interceptions WHERE started_at < $1 ORDER BY started_at LIMIT $2{lock})"),
            vec![Value::Int(Some(micros(before))), Value::Int(Some(i64::from(limit)))],
        )
        .await
    }

    /// Drops the prompt text and tool-call arguments (tool names stay) of up to `limit`
    /// interceptions started before `before` that still hold them; returns `(rows looked at,
    /// rows that held text)`. Metadata, tokens and cost stay for usage reports. Safe with
    /// several replicas: the update is idempotent.
    pub async fn drop_prompts_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<(u64, u64), Error> {
        // Oldest first: the (prompts_dropped_at, started_at) index gives that order, so a batch
        // costs its own rows, not a sort of every record still holding text.
        let mut rows = self
            .query(
                "SELECT id, prompt, tool_calls, tool_results FROM interceptions WHERE prompts_dropped_at IS NULL AND started_at < $1 ORDER BY started_at LIMIT $2",
                vec![Value::Int(Some(micros(before))), Value::Int(Some(i64::from(limit)))],
            )
            .await?;
        // Updated in id order: two replicas dropping the same rows take their locks in the
        // same order, so one waits for the other instead of deadlocking.
        rows.sort_by_key(|r| r[0].text());
        if rows.is_empty() {
            return Ok((0, 0));
        }
        let now = micros(Utc::now());
        let mut had_text = 0;
        let params: Vec<Vec<Value>> = rows
            .iter()
            .map(|r| {
                let (calls_json, results_json) = (r[2].text(), r[3].text());
                if r[1].opt_text().is_some() || calls_json != "[]" || results_json != "[]" {
                    had_text += 1;
                }
                let mut calls: Vec<ToolCall> =
                    serde_json::from_str(&calls_json).unwrap_or_default();
                for c in &mut calls {
                    c.arguments.clear();
                }
                // Tool results keep the call they answer and their size, not their text.
                let mut results: Vec<ToolResult> =
                    serde_json::from_str(&results_json).unwrap_or_default();
                for t in &mut results {
                    t.content.clear();
                }
                vec![
                    Value::Text(Some(
                        serde_json::to_string(&calls).unwrap_or_else(|_| "[]".into()),
                    )),
                    Value::Text(Some(
                        serde_json::to_string(&results).unwrap_or_else(|_| "[]".into()),
                    )),
                    Value::Int(Some(now)),
                    Value::Text(Some(r[0].text())),
                ]
            })
            .collect();
        self.execute_many(
            "UPDATE interceptions SET prompt = NULL, tool_calls = $1, tool_results = $2, prompts_dropped_at = $3 WHERE id = $4",
            params,
        )
        .await?;
        Ok((rows.len() as u64, had_text))
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(&*self.backend, Backend::Postgres { .. })
    }

    /// Rows for usage reports: `(group key, requests, input, output, cache read, cache write,
    /// cost, unpriced requests)` grouped by `column`, which must be one of the fixed names below.
    pub(crate) async fn usage_rows(
        &self,
        column: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Vec<Value>>, Error> {
        let column = match column {
            "user_name" | "model" | "provider" | "day" => column,
            other => return Err(Error::Query(format!("cannot group by {other:?}"))),
        };
        let sql = format!(
            "SELECT COALESCE({column}, '(none)'), CAST(COUNT(*) AS BIGINT), \
             CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
             CAST(SUM(cache_read_tokens) AS BIGINT), CAST(SUM(cache_write_tokens) AS BIGINT), \
             CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION), \
             CAST(SUM(CASE WHEN cost_usd IS NULL AND input_tokens + output_tokens > 0 \
             THEN 1 ELSE 0 END) AS BIGINT) \
             FROM interceptions WHERE started_at >= $1 GROUP BY {column} ORDER BY 1"
        );
        let since = since.map(micros).unwrap_or(i64::MIN);
        self.query(&sql, vec![Value::Int(Some(since))]).await
    }
}

fn record_params(r: &InterceptionRecord) -> Vec<Value> {
    let t = |s: &Option<String>| Value::Text(s.clone());
    vec![
        Value::Text(Some(r.id.to_string())),
        Value::Text(Some(r.user.clone())),
        t(&r.key_id),
        Value::Text(Some(r.provider.as_str().into())),
        Value::Text(Some(r.endpoint.clone())),
        t(&r.model),
        t(&r.client),
        Value::Int(Some(i64::from(r.streaming))),
        Value::Int(Some(micros(r.started_at))),
        Value::Text(Some(r.started_at.format("%Y-%m-%d").to_string())),
        Value::Real(r.ttfb_ms),
        Value::Real(Some(r.duration_ms)),
        Value::Int(Some(i64::from(r.status))),
        Value::Text(Some(r.outcome.as_str().into())),
        Value::Int(Some(r.usage.input_tokens as i64)),
        Value::Int(Some(r.usage.output_tokens as i64)),
        Value::Int(Some(r.usage.cache_read_tokens as i64)),
        Value::Int(Some(r.usage.cache_write_tokens as i64)),
        Value::Real(r.cost_usd),
        t(&r.prompt),
        Value::Text(Some(
            serde_json::to_string(&r.tools_offered).unwrap_or_default(),
        )),
        Value::Text(Some(
            serde_json::to_string(&r.tool_calls).unwrap_or_default(),
        )),
        t(&r.context.workspace),
        t(&r.context.template),
        t(&r.context.session),
        t(&r.error),
        t(&r.client_session),
        Value::Text(Some(
            serde_json::to_string(&r.tool_results).unwrap_or_default(),
        )),
        t(&r.client_addr),
    ]
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, Error> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|e| Error::Store(format!("stored value {s:?}: {e}")))
}

fn record_from_row(r: Vec<Value>) -> Result<InterceptionRecord, Error> {
    let id = Uuid::parse_str(&r[0].text()).map_err(store_err)?;
    let provider: Provider = parse_enum(&r[3].text())?;
    let outcome: Outcome = parse_enum(&r[13].text())?;
    let tools_offered: Vec<String> = serde_json::from_str(&r[20].text()).unwrap_or_default();
    let tool_calls: Vec<ToolCall> = serde_json::from_str(&r[21].text()).unwrap_or_default();
    Ok(InterceptionRecord {
        id,
        user: r[1].text(),
        key_id: r[2].opt_text(),
        provider,
        endpoint: r[4].text(),
        model: r[5].opt_text(),
        client: r[6].opt_text(),
        streaming: r[7].int() != 0,
        started_at: from_micros(r[8].int()),
        ttfb_ms: r[10].opt_real(),
        duration_ms: r[11].opt_real().unwrap_or(0.0),
        status: r[12].int() as u16,
        outcome,
        usage: Usage {
            input_tokens: r[14].int() as u64,
            output_tokens: r[15].int() as u64,
            cache_read_tokens: r[16].int() as u64,
            cache_write_tokens: r[17].int() as u64,
        },
        cost_usd: r[18].opt_real(),
        prompt: r[19].opt_text(),
        tools_offered,
        tool_calls,
        context: WorkspaceContext {
            workspace: r[22].opt_text(),
            template: r[23].opt_text(),
            session: r[24].opt_text(),
        },
        error: r[25].opt_text(),
        client_session: r[26].opt_text(),
        tool_results: serde_json::from_str(&r[27].text()).unwrap_or_default(),
        client_addr: r[28].opt_text(),
    })
}

/// The SQLite database file as opened: its path and identity (device and inode).
///
/// SQLite keeps writing to a database file that was deleted or replaced on disk (it holds the
/// old inode open), so every commit would "succeed" into a file nobody will ever read. Each
/// write first compares the path's identity with the one opened, and fails (records spool)
/// if they differ. It also checks that the `-shm` file is still a writable regular file:
/// SQLite maps it into memory, and a mapping it cannot write kills the process with SIGBUS
/// instead of returning an error.
pub(crate) struct SqliteFile {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl SqliteFile {
    fn check(&self) -> Result<(), Error> {
        let now = file_id(&self.path).map_err(|e| {
            Error::Store(format!(
                "database file {} is gone ({e}): it was deleted while the bridge was running; records are spooled until it is restored",
                self.path.display()
            ))
        })?;
        if self.id.is_some_and(|id| id != now) {
            return Err(Error::Store(format!(
                "database file {} was replaced while the bridge was running (not the file it opened); records are spooled until the bridge is restarted on the right file",
                self.path.display()
            )));
        }
        check_shm(&self.path)
    }
}

#[cfg(unix)]
fn file_id(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|_| (0, 0))
}

/// Fails if the database's `-shm` file exists but cannot be written.
///
/// Only `stat(2)` and `access(2)`, never `open(2)`: SQLite's locks on the `-shm` are POSIX
/// advisory locks, which a process loses when it closes *any* descriptor of that file. A check
/// that opened and closed the file would drop the store's own locks, and the next process to
/// open the database (the CLI) would take itself for the first, truncate the `-shm`, and the
/// bridge would die of SIGBUS on its mapping.
fn check_shm(db: &std::path::Path) -> Result<(), Error> {
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let shm = PathBuf::from(shm);
    let Ok(meta) = std::fs::metadata(&shm) else {
        return Ok(());
    };
    if !meta.is_file() || meta.permissions().readonly() || !writable(&shm) {
        return Err(Error::Store(format!(
            "{} is not a writable file: SQLite cannot use its shared memory (fix its permissions or remove it while no bridge runs)",
            shm.display()
        )));
    }
    Ok(())
}

/// `access(path, W_OK)`: whether this process may write the file, without opening it.
#[cfg(unix)]
fn writable(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(not(unix))]
fn writable(_path: &std::path::Path) -> bool {
    true
}

fn open_sqlite(path: &std::path::Path) -> Result<(rusqlite::Connection, SqliteFile), Error> {
    // Before SQLite maps it: an unwritable -shm would be a SIGBUS later, an error now.
    check_shm(path)?;
    create_private(path)?;
    let conn = rusqlite::Connection::open(path)
        .map_err(|e| Error::Store(format!("opening {}: {e}", path.display())))?;
    // WAL: readers (the CLI) never block the writer (the recorder). The busy timeout is short
    // on purpose: a long-held lock is treated as an outage and records go to the spool.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(store_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(store_err)?;
    conn.busy_timeout(Duration::from_secs(2))
        .map_err(store_err)?;
    // `:memory:` and the like have no file to watch.
    let id = file_id(path).ok();
    Ok((
        conn,
        SqliteFile {
            path: path.to_path_buf(),
            id,
        },
    ))
}

/// Creates the database file (and missing parent directories) owner-only before SQLite opens
/// it: SQLite gives its `-wal` and `-shm` files the database file's mode, so all three hold
/// prompts readable by the owner only. In-memory and URI names are left to SQLite.
fn create_private(path: &std::path::Path) -> Result<(), Error> {
    let name = path.to_string_lossy();
    if name.is_empty() || name.starts_with(':') || name.starts_with("file:") {
        return Ok(());
    }
    let created = |e: std::io::Error, p: &std::path::Path| {
        Error::Store(format!("creating {}: {e}", p.display()))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            crate::private_files::create_dir_all(parent).map_err(|e| created(e, parent))?;
        }
    }
    if path.exists() {
        crate::private_files::warn_if_world_readable(path);
        return Ok(());
    }
    crate::private_files::touch(path).map_err(|e| created(e, path))
}

/// Removes the password from a URL like `postgres://user:secret@host/db`.
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                s.push_str(&format!(": {src}"));
            }
            s
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Int(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            _ => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Int(v) => v.to_sql(ty, out),
            Value::Real(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
            Value::IntArray(v) => v.to_sql(ty, out),
            Value::TextArray(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <Option<i64> as tokio_postgres::types::ToSql>::accepts(ty)
            || <Option<f64> as tokio_postgres::types::ToSql>::accepts(ty)
            || <Option<String> as tokio_postgres::types::ToSql>::accepts(ty)
            || <Vec<Option<i64>> as tokio_postgres::types::ToSql>::accepts(ty)
            || <Vec<Option<String>> as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("bridge-store-{tag}-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_unwritable_shm_file_is_refused_before_sqlite_maps_it() {
        let dir = temp_dir("shm");
        let db = dir.join("bridge.db");
        let shm = dir.join("bridge.db-shm");
        assert!(check_shm(&db).is_ok(), "no -shm yet is fine");
        std::fs::write(&shm, b"").unwrap();
        assert!(check_shm(&db).is_ok());
        let mut perms = std::fs::metadata(&shm).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&shm, perms).unwrap();
        let e = check_shm(&db).unwrap_err().to_string();
        assert!(e.contains("bridge.db-shm is not a writable file"), "{e}");
        let e = open_sqlite(&db).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("-shm"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_database_file_deleted_or_replaced_under_the_store_fails_the_check() {
        let dir = temp_dir("identity");
        let db = dir.join("bridge.db");
        let (_conn, file) = open_sqlite(&db).unwrap();
        assert!(file.check().is_ok());
        std::fs::remove_file(&db).unwrap();
        let e = file.check().unwrap_err().to_string();
        assert!(e.contains("deleted"), "{e}");
        std::fs::write(&db, b"").unwrap();
        let e = file.check().unwrap_err().to_string();
        assert!(e.contains("replaced"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
