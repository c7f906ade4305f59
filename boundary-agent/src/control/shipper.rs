//! Sends the spool to the control plane: `POST /boundary/v1/events`, one batch at a time, the
//! next as soon as the previous is acknowledged. A batch leaves the spool only on the server's
//! `200` (stored); a `400`/`413` batch is set aside in `rejected/` (resending it would fail
//! forever); anything else (network down, Bridge restarting, 5xx, a revoked token) keeps the
//! batch and retries with exponential backoff (0.5 s to 30 s, jitter).

use std::sync::Arc;
use std::time::Duration;

use super::client::{Backoff, OncePerMinute};
use super::Control;

/// How long one batch may take to be sent and acknowledged.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// With nothing to send, how often the spool is looked at anyway.
const IDLE: Duration = Duration::from_secs(1);

pub async fn run(ctl: Arc<Control>) {
    let mut backoff = Backoff::default();
    let mut refused = OncePerMinute::default();
    let mut failing = OncePerMinute::default();
    loop {
        let batch = ctl.spool.lock().unwrap().next_batch();
        let batch = match batch {
            Ok(Some(b)) => b,
            Ok(None) => {
                let _ = tokio::time::timeout(IDLE, ctl.shipper_wake.notified()).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the event spool");
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        let sent = ctl
            .client
            .send(
                http::Method::POST,
                "/boundary/v1/events",
                Some(batch.body.clone()),
                &[],
                SEND_TIMEOUT,
            )
            .await;
        match sent {
            Ok(r) if r.status == 200 => {
                if let Err(e) = ctl.spool.lock().unwrap().acknowledge(&batch) {
                    tracing::error!(error = %e, "recording an acknowledged batch");
                }
                ctl.note_delivered(batch.events as u64);
                backoff.reset();
                failing = OncePerMinute::default();
            }
            Ok(r) if r.status == 400 || r.status == 413 => {
                let why = format!("{}: {}", r.status, r.error_text());
                match ctl.spool.lock().unwrap().reject(&batch, &why) {
                    Ok(path) => tracing::error!(
                        status = r.status, error = %r.error_text(), kept = %path.display(),
                        events = batch.events,
                        "the control plane refused a batch of events; it is kept aside and not sent again"
                    ),
                    Err(e) => tracing::error!(error = %e, "setting a refused batch aside"),
                }
            }
            Ok(r) if r.status == 401 || r.status == 403 => {
                if refused.due() {
                    tracing::error!(status = r.status, error = %r.error_text(),
                        "the control plane refuses this agent's token; events stay in the spool");
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
            Ok(r) => {
                if failing.due() {
                    tracing::warn!(status = r.status, error = %r.error_text(), "shipping events failed; retrying");
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
            Err(e) => {
                if failing.due() {
                    tracing::warn!(error = %e, "shipping events failed; they stay in the spool, retrying");
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}
