//! The recorder: takes finished interception records off the request path and stores them.
//!
//! [`Recorder::record`] never blocks and never fails: it hands the record to a bounded channel
//! (or, if that is full, to the on-disk spool from a blocking thread). One writer task prices
//! each record, logs it as one JSON line, updates metrics and inserts records in batches (up to
//! [`BATCH_SIZE`] or every [`FLUSH_INTERVAL`]). [`Recorder::record_durable`] is the same with
//! someone waiting (the gateway holds the end of the response): the writer then commits at
//! once, with whatever else is queued, and tells every waiter when the batch is durable
//! (committed, or fsynced to the spool). What records keep of prompts ([`PromptRecording`]) is
//! applied where records enter, before anything is written.
//!
//! When the store fails, batches go to the spool and the writer retries the spool with
//! exponential backoff until the store takes them; while the spool is not empty new batches
//! also go there, so a down store costs one failed insert per backoff period rather than one
//! per batch. A spool left by a previous run is replayed at start. [`Recorder::shutdown`]
//! flushes the batch and tries the spool one last time.
//!
//! Intercept-start entries ([`Recorder::record_start`]) are appended to the [`Journal`] by
//! the request's own task, before it goes upstream. When a final record is safe (stored or
//! spooled) its start entry is released from the journal. At start, what a previous run left
//! in the journal (requests in flight when it crashed or was killed) is inserted as
//! `incomplete` records (the store ignores an entry whose final record it already has), and
//! those are marked with the reason. The writer also keeps the store's health (the last
//! write's result) for `/readyz`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::Error;
use crate::journal::Journal;
use crate::pricing::PricingTable;
use crate::record::{InterceptionRecord, Outcome};
use crate::redact::PromptRecording;
use crate::spool::{Spool, DEFAULT_MAX_BYTES};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Records per insert transaction.
pub const BATCH_SIZE: usize = 256;
/// A partial batch is written after this long.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Records that may wait in memory before spilling to the spool.
const CHANNEL_CAPACITY: usize = 8192;
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest prompt text written to the log line (the store keeps it whole).
const LOG_PROMPT_CHARS: usize = 200;

/// Told when a record is durable: committed to the store, or fsynced to the spool.
pub type Durable = oneshot::Sender<()>;

enum Msg {
    /// A final record, and whom to tell once it is durable (the gateway holds the end of the
    /// response until then, so a command run right after a request sees it).
    Record(Box<InterceptionRecord>, Option<Durable>),
    Shutdown(oneshot::Sender<()>),
}

/// Tuning knobs; [`RecorderOptions::default`] is what `llm-bridge serve` uses.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    pub spool_max_bytes: u64,
    pub channel_capacity: usize,
    /// How much of prompts and tool-call arguments records keep (`prompt_recording:`).
    pub prompt_recording: PromptRecording,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            spool_max_bytes: DEFAULT_MAX_BYTES,
            channel_capacity: CHANNEL_CAPACITY,
            prompt_recording: PromptRecording::default(),
        }
    }
}

/// Shared by the handle and the writer task: what turns a record into a log line and metrics.
struct Shared {
    pricing: PricingTable,
    telemetry: Telemetry,
    spool: Spool,
    /// Records that found the channel full, waiting for one blocking task to spool them
    /// together (one fsync per group rather than per record).
    overflow: Mutex<Vec<(InterceptionRecord, Option<Durable>)>>,
    overflow_busy: AtomicBool,
    /// Why the last write to the store failed; `None` when it succeeded.
    store_failure: Mutex<Option<String>>,
    /// Intercept-start entries of the requests in flight.
    journal: Journal,
    /// Models already reported as unpriced (bounded: a client can make up model names).
    unpriced_seen: Mutex<std::collections::HashSet<String>>,
    prompt_recording: PromptRecording,
}

/// How many unpriced model names are remembered to warn about each once.
const MAX_UNPRICED_WARNINGS: usize = 256;

impl Shared {
    fn prepare(&self, rec: &mut InterceptionRecord) {
        if rec.outcome == Outcome::Incomplete {
            // A start entry: logged and counted when its final record comes.
            return;
        }
        if rec.cost_usd.is_none() {
            if let Some(model) = &rec.model {
                rec.cost_usd = self.pricing.cost(model, &rec.usage);
                let used = rec.usage.input_tokens + rec.usage.output_tokens > 0;
                if rec.cost_usd.is_none() && used {
                    self.warn_unpriced(model);
                }
            }
        }
        log_record(rec);
        self.telemetry.observe_record(rec);
    }

    fn warn_unpriced(&self, model: &str) {
        let mut seen = self.unpriced_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() < MAX_UNPRICED_WARNINGS && seen.insert(model.to_string()) {
            tracing::warn!(
                model,
                price_list_date = %self.pricing.list().date,
                "model {model:?} has no price: its requests are recorded without a cost \
                 (add it under `pricing:` in bridge.yaml, or refresh `price_list:`)"
            );
        }
    }

    /// Spools overflowed records until none are left (runs on a blocking thread).
    fn spill_overflow(&self) {
        loop {
            let batch =
                std::mem::take(&mut *self.overflow.lock().unwrap_or_else(|p| p.into_inner()));
            if batch.is_empty() {
                self.overflow_busy.store(false, Ordering::Release);
                // A record pushed between the take and the store would otherwise wait for the
                // next overflow: take the job back if so.
                let pending = !self
                    .overflow
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if pending && !self.overflow_busy.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            let (mut recs, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            for rec in &mut recs {
                self.prepare(rec);
            }
            self.spool(&recs);
            notify(waiters.into_iter().flatten());
        }
    }

    fn spool(&self, recs: &[InterceptionRecord]) {
        match self.spool.append(recs) {
            Ok(a) if a.dropped > 0 => self.telemetry.spool_dropped(a.dropped),
            Ok(_) => {}
            Err(e) => {
                // The disk failed too: nothing left to keep these records in.
                tracing::error!(error = %e, records = recs.len(), "could not spool interception records; dropped");
                self.telemetry.spool_dropped(recs.len() as u64);
            }
        }
    }
}

/// Handle to the recorder; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Recorder {
    /// Starts the writer task (must be called inside a Tokio runtime).
    pub fn start(
        store: Store,
        pricing: PricingTable,
        spool_dir: PathBuf,
        telemetry: Telemetry,
    ) -> Result<Recorder, Error> {
        Self::start_with(
            store,
            pricing,
            spool_dir,
            telemetry,
            RecorderOptions::default(),
        )
    }

    /// [`Recorder::start`] with explicit options.
    pub fn start_with(
        store: Store,
        pricing: PricingTable,
        spool_dir: PathBuf,
        telemetry: Telemetry,
        options: RecorderOptions,
    ) -> Result<Recorder, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Store(format!("the recorder needs a Tokio runtime: {e}")))?;
        // The gauge is set by the spool itself, under its lock: set afterwards, a reader could
        // see the new depth before the metric (and two spooling threads could leave it stale).
        let gauge = telemetry.clone();
        let spool = Spool::open_observed(
            &spool_dir,
            options.spool_max_bytes,
            Box::new(move |n, b| gauge.set_spool_depth(n, b)),
        )?;
        let (n, _) = spool.depth();
        if n > 0 {
            tracing::info!(records = n, spool = %spool_dir.display(), "replaying interception records left in the spool");
        }
        let journal = Journal::open(&spool_dir.join("journal"), options.spool_max_bytes)?;
        let shared = Arc::new(Shared {
            pricing,
            telemetry,
            spool,
            overflow: Mutex::new(Vec::new()),
            overflow_busy: AtomicBool::new(false),
            store_failure: Mutex::new(None),
            journal,
            unpriced_seen: Mutex::default(),
            prompt_recording: options.prompt_recording,
        });
        let (tx, rx) = mpsc::channel(options.channel_capacity.max(1));
        let writer = Writer {
            store,
            shared: shared.clone(),
            started_at: chrono::Utc::now(),
            batch: Vec::with_capacity(BATCH_SIZE),
            waiters: Vec::new(),
            backoff: MIN_BACKOFF,
            next_retry: Instant::now(),
        };
        let task = runtime.spawn(writer.run(rx));
        Ok(Recorder {
            tx,
            shared,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Non-blocking; prices, logs (one JSON line), updates metrics, batches to the store; on
    /// store outage spools to disk (bounded) and retries.
    pub fn record(&self, rec: InterceptionRecord) {
        self.send(rec, None);
    }

    /// [`Recorder::record`], and `durable` is told once the record is committed to the store
    /// (or, while the store is down, fsynced to the spool). A record someone waits for is
    /// written at once with whatever else is queued (group commit) instead of at the next
    /// [`FLUSH_INTERVAL`]. If the recorder stops first, `durable` is dropped.
    pub fn record_durable(&self, rec: InterceptionRecord, durable: Durable) {
        self.send(rec, Some(durable));
    }

    fn send(&self, mut rec: InterceptionRecord, durable: Option<Durable>) {
        self.shared.prompt_recording.apply(&mut rec);
        match self.tx.try_send(Msg::Record(Box::new(rec), durable)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Record(rec, durable)))
            | Err(mpsc::error::TrySendError::Closed(Msg::Record(rec, durable))) => {
                // The writer is behind (or gone): keep the record on disk instead of in memory.
                self.shared
                    .overflow
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((*rec, durable));
                if !self.shared.overflow_busy.swap(true, Ordering::AcqRel) {
                    let shared = self.shared.clone();
                    match tokio::runtime::Handle::try_current() {
                        Ok(rt) => {
                            rt.spawn_blocking(move || shared.spill_overflow());
                        }
                        Err(_) => shared.spill_overflow(),
                    }
                }
            }
            Err(_) => {}
        }
    }

    /// Makes an intercept-start entry durable before its request goes upstream: appended to
    /// the journal right here (a buffered write, like the request's log line), or, if the
    /// journal cannot take it, fsynced to the spool. Never fails the request: if neither can
    /// keep the entry, that is logged and counted like a record the spool cannot take.
    pub fn record_start(&self, mut rec: InterceptionRecord) {
        self.shared.prompt_recording.apply(&mut rec);
        if let Err(e) = self.shared.journal.start(&rec) {
            tracing::error!(error = %e, "cannot journal an intercept-start entry; spooling it");
            self.shared.spool(std::slice::from_ref(&rec));
        }
    }

    /// Why the last write to the store failed, or `None` if it succeeded.
    pub fn store_failure(&self) -> Option<String> {
        self.shared
            .store_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Flushes everything: the batch in memory, then the spool if the store takes it.
    /// Records that still cannot be stored stay in the spool for the next start.
    pub async fn shutdown(&self) {
        // Overflowed records first, so the writer's last spool pass includes them.
        while self.shared.overflow_busy.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack_tx)).await.is_ok() {
            let _ = ack_rx.await;
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.shared.telemetry.flush().await;
    }

    /// `(records, bytes)` in the spool now.
    pub fn spool_depth(&self) -> (u64, u64) {
        self.shared.spool.depth()
    }
}

struct Writer {
    store: Store,
    shared: Arc<Shared>,
    /// When this process started: older `incomplete` entries were left by a previous run.
    started_at: chrono::DateTime<chrono::Utc>,
    batch: Vec<InterceptionRecord>,
    /// Told when the batch is durable.
    waiters: Vec<Durable>,
    backoff: Duration,
    next_retry: Instant,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        self.recover().await;
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Shutdown(ack)) => {
                        self.shutdown(&mut rx, ack).await;
                        return;
                    }
                    Some(msg) => {
                        self.accept(msg);
                        // Group commit: take whatever else is already queued, then write at
                        // once if a request is waiting for its start entry.
                        let mut shutdown = None;
                        while self.batch.len() < BATCH_SIZE {
                            match rx.try_recv() {
                                Ok(Msg::Shutdown(ack)) => {
                                    shutdown = Some(ack);
                                    break;
                                }
                                Ok(msg) => self.accept(msg),
                                Err(_) => break,
                            }
                        }
                        if self.batch.len() >= BATCH_SIZE || !self.waiters.is_empty() {
                            self.flush().await;
                        }
                        if let Some(ack) = shutdown {
                            self.shutdown(&mut rx, ack).await;
                            return;
                        }
                    }
                    None => {
                        self.flush().await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.flush().await;
                    if !self.shared.spool.is_empty() && Instant::now() >= self.next_retry {
                        self.drain_spool().await;
                    }
                }
            }
        }
    }

    /// Writes everything still queued and tries the spool one last time.
    async fn shutdown(&mut self, rx: &mut mpsc::Receiver<Msg>, ack: oneshot::Sender<()>) {
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            self.accept(msg);
            if self.batch.len() >= BATCH_SIZE {
                self.flush().await;
            }
        }
        self.flush().await;
        if !self.shared.spool.is_empty() {
            self.drain_spool().await;
        }
        // Every request has its final record: the journal has nothing left to say.
        self.shared.journal.close();
        let _ = ack.send(());
    }

    /// Moves what a previous run left in the journal (requests in flight when it stopped)
    /// into the store as `incomplete` entries, or into the spool if the store is down.
    async fn replay_journal(&mut self) {
        for (seg, records) in self.shared.journal.leftovers() {
            if let Err(e) = self.store.insert_interceptions(&records).await {
                tracing::warn!(error = %e, records = records.len(), "store unavailable; spooling the journal's start entries");
                self.spool_blocking(records).await;
            }
            self.shared.journal.remove_leftover(&seg);
        }
    }

    /// At start: what a previous run left in flight (it crashed or was killed) becomes
    /// `incomplete` records.
    async fn recover(&mut self) {
        self.replay_journal().await;
        self.mark_abandoned().await;
    }

    /// Marks `incomplete` entries from before this process started with the reason.
    async fn mark_abandoned(&self) {
        match self.store.mark_abandoned(self.started_at).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                records = n,
                "interceptions left incomplete by a previous run (crash or kill): kept as `incomplete`"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot check for interceptions left incomplete by a previous run"),
        }
    }

    fn accept(&mut self, msg: Msg) {
        match msg {
            Msg::Record(rec, durable) => {
                let mut rec = *rec;
                self.shared.prepare(&mut rec);
                self.batch.push(rec);
                self.waiters.extend(durable);
            }
            Msg::Shutdown(ack) => {
                let _ = ack.send(());
            }
        }
    }

    fn set_store_failure(&self, failure: Option<String>) {
        *self
            .shared
            .store_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = failure;
    }

    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let waiters = std::mem::take(&mut self.waiters);
        if !self.shared.spool.is_empty() {
            // Outage in progress: queue behind the spool rather than hit the store again.
            let ids: Vec<uuid::Uuid> = batch.iter().map(|r| r.id).collect();
            self.spool_blocking(batch).await;
            self.shared.journal.finished(ids);
            notify(waiters);
            return;
        }
        match self.store.insert_interceptions(&batch).await {
            Ok(_) => {
                let finals = batch
                    .iter()
                    .filter(|r| r.outcome != Outcome::Incomplete)
                    .count();
                self.shared.telemetry.records_stored(finals as u64);
                self.set_store_failure(None);
                self.shared.journal.finished(batch.iter().map(|r| r.id));
                notify(waiters);
            }
            Err(e) => {
                self.shared.telemetry.store_error();
                tracing::error!(error = %e, records = batch.len(), store = %self.store.describe(),
                    "store write failed; spooling interception records to disk");
                self.set_store_failure(Some(e.to_string()));
                let ids: Vec<uuid::Uuid> = batch.iter().map(|r| r.id).collect();
                self.spool_blocking(batch).await;
                self.shared.journal.finished(ids);
                notify(waiters);
                self.next_retry = Instant::now() + self.backoff;
            }
        }
    }

    async fn spool_blocking(&self, batch: Vec<InterceptionRecord>) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.spool(&batch)).await;
    }

    /// Moves sealed spool segments into the store, oldest first; stops at the first failure.
    async fn drain_spool(&mut self) {
        let shared = self.shared.clone();
        let segments = match tokio::task::spawn_blocking(move || shared.spool.seal()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot list the spool");
                return;
            }
            Err(_) => return,
        };
        let mut stored = 0u64;
        let mut replayed = 0u64;
        for seg in segments {
            let records = match self.shared.spool.read_segment(&seg) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read spool segment");
                    return;
                }
            };
            for chunk in records.chunks(BATCH_SIZE) {
                if let Err(e) = self.store.insert_interceptions(chunk).await {
                    self.shared.telemetry.store_error();
                    self.set_store_failure(Some(e.to_string()));
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    self.next_retry = Instant::now() + self.backoff;
                    tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64,
                        "store still unavailable; spooled records kept");
                    return;
                }
            }
            let finals = records
                .iter()
                .filter(|r| r.outcome != Outcome::Incomplete)
                .count() as u64;
            stored += finals;
            replayed += records.len() as u64;
            self.shared.telemetry.records_stored(finals);
            self.set_store_failure(None);
            if let Err(e) = self.shared.spool.remove_segment(&seg) {
                tracing::error!(error = %e, "cannot remove a replayed spool segment");
                return;
            }
        }
        self.backoff = MIN_BACKOFF;
        if stored > 0 {
            tracing::info!(
                records = stored,
                "spooled interception records written to the store"
            );
        }
        if replayed > 0 {
            // Start entries a previous run spooled and never finished are in the store now.
            self.mark_abandoned().await;
        }
    }
}

fn notify(waiters: impl IntoIterator<Item = Durable>) {
    for w in waiters {
        let _ = w.send(());
    }
}

/// One JSON log line per request: the record's fields, the prompt shortened. The record holds
/// no secrets (the token is never in it), so every field can be logged.
fn log_record(r: &InterceptionRecord) {
    let prompt = r.prompt.as_deref().map(|p| {
        if p.chars().count() > LOG_PROMPT_CHARS {
            let mut s: String = p.chars().take(LOG_PROMPT_CHARS).collect();
            s.push('…');
            s
        } else {
            p.to_string()
        }
    });
    // Names only, comma-separated: arguments can be large and belong in the store.
    let tool_calls: Vec<&str> = r.tool_calls.iter().map(|t| t.name.as_str()).collect();
    let tool_calls = tool_calls.join(",");
    let tools_offered = r.tools_offered.join(",");
    tracing::info!(
        target: "bridge::interception",
        id = %r.id,
        user = %r.user,
        key_id = r.key_id.as_deref(),
        provider = r.provider.as_str(),
        endpoint = %r.endpoint,
        model = r.model.as_deref(),
        client = r.client.as_deref(),
        streaming = r.streaming,
        started_at = %r.started_at.to_rfc3339(),
        ttfb_ms = r.ttfb_ms,
        duration_ms = r.duration_ms,
        status = r.status,
        outcome = r.outcome.as_str(),
        input_tokens = r.usage.input_tokens,
        output_tokens = r.usage.output_tokens,
        cache_read_tokens = r.usage.cache_read_tokens,
        cache_write_tokens = r.usage.cache_write_tokens,
        cost_usd = r.cost_usd,
        prompt = prompt.as_deref(),
        tools_offered = %tools_offered,
        tool_calls = %tool_calls,
        workspace = r.context.workspace.as_deref(),
        template = r.context.template.as_deref(),
        session = r.context.session.as_deref(),
        client_session = r.client_session.as_deref(),
        client_addr = r.client_addr.as_deref(),
        tool_results = r.tool_results.len(),
        error = r.error.as_deref(),
        "interception"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Provider, Usage, WorkspaceContext};
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_record_is_logged_as_one_json_line_with_a_shortened_prompt() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let rec = InterceptionRecord {
            id: uuid::Uuid::now_v7(),
            user: "alice".into(),
            key_id: Some("key_1".into()),
            provider: Provider::Anthropic,
            endpoint: "/v1/messages".into(),
            model: Some("claude-sonnet-4".into()),
            client: None,
            streaming: false,
            started_at: chrono::Utc::now(),
            ttfb_ms: None,
            duration_ms: 5.0,
            status: 200,
            outcome: Outcome::Ok,
            usage: Usage {
                input_tokens: 7,
                output_tokens: 3,
                ..Default::default()
            },
            cost_usd: Some(0.01),
            prompt: Some("x".repeat(1000)),
            tools_offered: vec!["bash".into()],
            tool_calls: vec![],
            tool_results: vec![],
            context: WorkspaceContext::default(),
            client_session: None,
            client_addr: None,
            error: None,
        };
        tracing::subscriber::with_default(subscriber, || log_record(&rec));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["model"], "claude-sonnet-4");
        assert_eq!(v["input_tokens"], 7);
        assert_eq!(v["id"], rec.id.to_string());
        assert_eq!(
            v["prompt"].as_str().unwrap().chars().count(),
            LOG_PROMPT_CHARS + 1
        );
    }
}
