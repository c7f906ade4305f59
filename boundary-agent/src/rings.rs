//! The event rings of a program set, shared by all its sessions: one reader per ring, which
//! routes every record to the session its slot names (that session's enricher and sinks).
//!
//! Every session's accounting stays exact: records the kernel could not queue are counted per
//! slot in the kernel (`Enforcer::lost`), and records the reader could not hand to a session
//! whose queue was full are counted per session here ([`Dropped`]); both are reported as that
//! session's `boundary.events_lost`. A record whose slot no session claims (a cgroup nobody
//! owns, a session that already ended) is counted in [`Router::unrouted`] (`boundary status`
//! shows it) and logged.
//!
//! A session that ends calls [`Router::flush`] once its processes are gone: every record
//! already in the rings has then been routed, so its `boundary.session.end` comes last.
//!
//! Identical records are folded here, per session, before enrichment (see
//! [`summary::RecordFold`]): in a flood the reader must keep up with the kernel, or the ring
//! overflows and drops records. A fold stands for its count of events in the accounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use boundary_common::ACTION_ALLOW;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc::error::TrySendError, watch};

use crate::events::{decode, summary, Enricher, EventSender};
use crate::loader::Rings;

/// How often the rings are drained without a wake-up from the kernel.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Records a session's queue had no room for, by ring.
#[derive(Debug, Default)]
pub struct Dropped {
    deny: AtomicU64,
    allow: AtomicU64,
}

impl Dropped {
    /// (deny, allow) so far.
    pub fn get(&self) -> (u64, u64) {
        (self.deny.load(Relaxed), self.allow.load(Relaxed))
    }
}

#[derive(Clone)]
struct Route {
    enricher: Arc<Enricher>,
    tx: EventSender,
    dropped: Arc<Dropped>,
    /// This session's identical records of the current interval, folded.
    fold: Arc<Mutex<summary::RecordFold>>,
}

impl Route {
    /// Hands `event` (standing for `count` events) to the session, never waiting.
    fn send(
        &self,
        event: serde_json::Map<String, serde_json::Value>,
        allow: bool,
        count: u64,
        routes: &Routes,
    ) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let counter = if allow {
                    &self.dropped.allow
                } else {
                    &self.dropped.deny
                };
                counter.fetch_add(count, Relaxed);
            }
            Err(TrySendError::Closed(_)) => {
                routes.unrouted.fetch_add(count, Relaxed);
            }
        }
    }

    fn send_folded(&self, folded: Vec<summary::FoldedRecords>, routes: &Routes) {
        for f in folded {
            self.send(
                self.enricher.folded(&f),
                f.last.action == ACTION_ALLOW,
                f.count,
                routes,
            );
        }
    }
}

#[derive(Default)]
struct Routes {
    by_slot: Mutex<HashMap<u32, Route>>,
    unrouted: AtomicU64,
}

/// Reads a set's rings and routes their records by slot.
pub struct Router {
    routes: Arc<Routes>,
    /// Bumped by `flush`; the readers answer with the value once they have drained.
    flush: watch::Sender<u64>,
    drained: Vec<watch::Receiver<u64>>,
    /// The readers wait for this before they read anything.
    running: watch::Sender<bool>,
}

impl Router {
    /// Starts one reader task per ring (on the current tokio runtime). They stop when the
    /// router is dropped. A router that is not `running` reads nothing until
    /// [`Router::resume`]: a set reopened from pins holds the unread records of sessions not
    /// adopted yet, which must wait for their routes.
    pub fn start(rings: Rings, running: bool) -> Arc<Router> {
        let routes = Arc::new(Routes::default());
        let (flush, flush_rx) = watch::channel(0u64);
        let (running, running_rx) = watch::channel(running);
        let mut drained = Vec::new();
        for ring in [rings.deny, rings.allow] {
            let (done_tx, done_rx) = watch::channel(0u64);
            drained.push(done_rx);
            tokio::spawn(read(
                ring,
                routes.clone(),
                running_rx.clone(),
                flush_rx.clone(),
                done_tx,
            ));
        }
        Arc::new(Router {
            routes,
            flush,
            drained,
            running,
        })
    }

    /// Lets the readers of a router started paused begin.
    pub fn resume(&self) {
        self.running.send_replace(true);
    }

    /// Routes the records of `slot` to this session from now on.
    pub fn register(&self, slot: u32, enricher: Arc<Enricher>, tx: EventSender) -> Arc<Dropped> {
        let dropped = Arc::new(Dropped::default());
        self.routes.by_slot.lock().unwrap().insert(
            slot,
            Route {
                enricher,
                tx,
                dropped: dropped.clone(),
                fold: Arc::default(),
            },
        );
        dropped
    }

    /// Stops routing `slot` (after a [`Router::flush`]).
    pub fn unregister(&self, slot: u32) {
        self.routes.by_slot.lock().unwrap().remove(&slot);
    }

    /// Returns once every record that was in the rings when it was called has been routed.
    pub async fn flush(&self) {
        let mut generation = 0;
        self.flush.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        for done in &self.drained {
            let mut done = done.clone();
            // Err: that reader is gone (its ring could not be registered); nothing to wait for.
            let _ = done.wait_for(|g| *g >= generation).await;
        }
    }

    /// Records no session claimed.
    pub fn unrouted(&self) -> u64 {
        self.routes.unrouted.load(Relaxed)
    }
}

async fn read(
    ring: RingBuf<MapData>,
    routes: Arc<Routes>,
    mut running: watch::Receiver<bool>,
    mut flush: watch::Receiver<u64>,
    drained: watch::Sender<u64>,
) {
    if running.wait_for(|r| *r).await.is_err() {
        return;
    }
    // SAFETY: the RingBuf owns its map fd, which stays open (and is the same fd) for as long
    // as the AsyncFd owns the RingBuf.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch an event ring; its events are not read");
            return;
        }
    };
    // Allow events are submitted without waking us (see the eBPF side): drain on a timer too.
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                drain(guard.get_inner_mut(), &routes);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain(fd.get_mut(), &routes);
                send_due(&routes, false);
            }
            changed = flush.changed() => {
                drain(fd.get_mut(), &routes);
                // A session is ending: what its folds hold goes out before its end event.
                send_due(&routes, true);
                if changed.is_err() {
                    return;
                }
                let generation = *flush.borrow_and_update();
                let _ = drained.send(generation);
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, routes: &Routes) {
    while let Some(item) = ring.next() {
        let Some(event) = decode(&item) else {
            continue;
        };
        drop(item);
        let route = routes.by_slot.lock().unwrap().get(&event.slot).cloned();
        let Some(route) = route else {
            // Counted (`boundary status`: events_unrouted); said once at warning level.
            if routes.unrouted.fetch_add(1, Relaxed) == 0 {
                tracing::warn!(
                    slot = event.slot,
                    cgroup = event.cgroup_id,
                    "an event of no running session (counted in `boundary status`)"
                );
            }
            continue;
        };
        let interval = route.enricher.policy.borrow().log_summary_interval;
        let (ended, write) = route
            .fold
            .lock()
            .unwrap()
            .admit(&event, interval, Instant::now());
        // Never waits: one session whose sink is behind must not hold up the others' events.
        route.send_folded(ended, routes);
        if write {
            let count = u64::from(event.count.max(1));
            route.send(
                route.enricher.decision(&event),
                event.action == ACTION_ALLOW,
                count,
                routes,
            );
        }
    }
}

/// Sends the folds whose interval is over (all of them with `all`).
fn send_due(routes: &Routes, all: bool) {
    let now = Instant::now();
    let sessions: Vec<Route> = routes.by_slot.lock().unwrap().values().cloned().collect();
    for route in sessions {
        let due = {
            let mut fold = route.fold.lock().unwrap();
            if all {
                fold.flush()
            } else {
                fold.due(now)
            }
        };
        route.send_folded(due, routes);
    }
}
