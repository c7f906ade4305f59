//! Provider key pools: several keys for one provider, used round-robin (or by weight), with
//! failover and a circuit breaker per key.
//!
//! A request tries the keys in the pool's order for it. When the provider answers 429, 529
//! or a 5xx other than 501, or the connection to it fails, the next key is tried (the answer
//! is dropped, nothing has reached the client yet); the last key's answer is what the client
//! gets. A key that answered 429 or 529 with `retry-after` rests until then. After
//! [`FAILURES_TO_OPEN`] failures in a row a key's breaker opens: the key is skipped for
//! [`OPEN_FOR`], then one request probes it (half-open); success closes the breaker, failure
//! opens it again for twice as long (at most [`MAX_OPEN_FOR`]). When every key is resting or
//! open, the one available soonest is tried anyway: a pool never refuses on its own.
//!
//! Keys are known by their name (`name:` in the config, else the variable holding them, else
//! `key-N`), never by their value.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode};

/// Failures in a row that open a key's breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long an open breaker skips its key the first time.
pub const OPEN_FOR: Duration = Duration::from_secs(30);
/// The longest an open breaker skips its key.
pub const MAX_OPEN_FOR: Duration = Duration::from_secs(300);
/// The longest a `retry-after` rests a key.
const MAX_REST: Duration = Duration::from_secs(600);

/// One key of a pool.
#[derive(Debug)]
pub struct PoolKey {
    pub name: String,
    /// Sensitive: never printed.
    pub value: HeaderValue,
    pub weight: u32,
    state: Mutex<Breaker>,
}

/// A key's breaker as metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    /// Open until then (then half-open: one probe).
    open_until: Option<Instant>,
    open_for: Option<Duration>,
    /// A half-open probe is out.
    probing: bool,
    /// Resting after a `retry-after` until then.
    rest_until: Option<Instant>,
}

impl Breaker {
    fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
            None => BreakerState::Closed,
        }
    }

    /// When the key can be used again (`None`: now).
    fn available_at(&self, now: Instant) -> Option<Instant> {
        let mut at = None;
        if let Some(t) = self.rest_until.filter(|t| *t > now) {
            at = Some(t);
        }
        match self.state(now) {
            BreakerState::Open => at = at.max(self.open_until),
            BreakerState::HalfOpen if self.probing => {
                at = at.max(Some(now + Duration::from_secs(1)))
            }
            _ => {}
        }
        at
    }
}

/// What an attempt with a key came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attempt {
    /// The provider answered (any status the client should get).
    Answered,
    /// Rate-limited or overloaded (429, 529), resting the key for the duration if given.
    Throttled(Option<Duration>),
    /// A 5xx or a failed connection.
    Failed,
}

impl Attempt {
    pub fn label(self) -> &'static str {
        match self {
            Attempt::Answered => "answered",
            Attempt::Throttled(_) => "throttled",
            Attempt::Failed => "failed",
        }
    }

    /// How an upstream status counts, with its `retry-after`.
    pub fn of_status(status: StatusCode, headers: &HeaderMap) -> Attempt {
        match status.as_u16() {
            429 | 529 => Attempt::Throttled(retry_after(headers)),
            500 | 502..=504 => Attempt::Failed,
            _ => Attempt::Answered,
        }
    }
}

/// `retry-after` in seconds (the HTTP-date form is rare for these APIs and ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs).min(MAX_REST))
}

/// The keys of one provider.
#[derive(Debug)]
pub struct KeyPool {
    keys: Vec<PoolKey>,
    /// Position in the weighted cycle of the next request.
    next: AtomicUsize,
    /// Key indices, each repeated by its weight, interleaved.
    cycle: Vec<usize>,
}

impl KeyPool {
    /// A pool of `(name, value, weight)`; weights of 0 are taken as 1.
    pub fn new(keys: Vec<(String, HeaderValue, u32)>) -> KeyPool {
        let keys: Vec<PoolKey> = keys
            .into_iter()
            .map(|(name, mut value, weight)| {
                value.set_sensitive(true);
                PoolKey {
                    name,
                    value,
                    weight: weight.max(1),
                    state: Mutex::default(),
                }
            })
            .collect();
        // Smooth interleaving: weights 3 and 1 give a a b a, not a a a b.
        let total: u32 = keys.iter().map(|k| k.weight).sum();
        let mut current = vec![0i64; keys.len()];
        let mut cycle = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, k) in current.iter_mut().zip(&keys) {
                *c += i64::from(k.weight);
            }
            let best = (0..keys.len())
                .max_by_key(|&i| (current[i], -(i as i64)))
                .unwrap_or(0);
            current[best] -= i64::from(total);
            cycle.push(best);
        }
        KeyPool {
            keys,
            next: AtomicUsize::new(0),
            cycle,
        }
    }

    /// A pool of one key.
    pub fn single(value: HeaderValue) -> KeyPool {
        KeyPool::new(vec![("key-1".into(), value, 1)])
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn key(&self, i: usize) -> &PoolKey {
        &self.keys[i]
    }

    /// The keys a request tries, in order: available ones from the next position of the
    /// cycle, then (if none is) the one available soonest. A half-open key is handed to one
    /// request only.
    pub fn order(&self) -> Vec<usize> {
        if self.keys.len() == 1 {
            return vec![0];
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.cycle.len();
        let mut order: Vec<usize> = Vec::with_capacity(self.keys.len());
        for i in 0..self.cycle.len() {
            let k = self.cycle[(start + i) % self.cycle.len()];
            if !order.contains(&k) {
                order.push(k);
            }
        }
        let mut usable = Vec::with_capacity(order.len());
        for &k in &order {
            let mut b = self.keys[k].state.lock().unwrap_or_else(|p| p.into_inner());
            if b.available_at(now).is_none() {
                if b.state(now) == BreakerState::HalfOpen {
                    b.probing = true;
                }
                usable.push(k);
            }
        }
        if usable.is_empty() {
            let soonest = order.iter().copied().min_by_key(|&k| {
                self.keys[k]
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .available_at(now)
            });
            usable.extend(soonest);
        }
        usable
    }

    /// Records how an attempt with key `i` went; returns the key's breaker state after it.
    pub fn report(&self, i: usize, attempt: Attempt) -> BreakerState {
        let now = Instant::now();
        let mut b = self.keys[i].state.lock().unwrap_or_else(|p| p.into_inner());
        match attempt {
            Attempt::Answered => {
                *b = Breaker::default();
            }
            Attempt::Throttled(_) | Attempt::Failed => {
                if let Attempt::Throttled(Some(d)) = attempt {
                    b.rest_until = Some(now + d);
                }
                b.failures += 1;
                let half_open_failed = b.state(now) == BreakerState::HalfOpen;
                b.probing = false;
                if half_open_failed || b.failures >= FAILURES_TO_OPEN {
                    let open_for = match b.open_for {
                        Some(d) if half_open_failed => (d * 2).min(MAX_OPEN_FOR),
                        _ => OPEN_FOR,
                    };
                    b.open_for = Some(open_for);
                    b.open_until = Some(now + open_for);
                }
            }
        }
        b.state(now)
    }

    /// Each key's name and breaker state, for metrics.
    pub fn states(&self) -> Vec<(&str, BreakerState)> {
        let now = Instant::now();
        self.keys
            .iter()
            .map(|k| {
                (
                    k.name.as_str(),
                    k.state.lock().unwrap_or_else(|p| p.into_inner()).state(now),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> KeyPool {
        KeyPool::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("k{i}"), HeaderValue::from_static("v"), *w))
                .collect(),
        )
    }

    #[test]
    fn requests_go_round_robin_and_by_weight_smoothly() {
        let p = pool(&[1, 1, 1]);
        let firsts: Vec<usize> = (0..6).map(|_| p.order()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(p.order().len(), 3, "every key is a fallback");
        let p = pool(&[3, 1]);
        let firsts: Vec<usize> = (0..8).map(|_| p.order()[0]).collect();
        assert_eq!(firsts.iter().filter(|&&k| k == 0).count(), 6);
        assert_ne!(firsts[..3], [0, 0, 0], "interleaved: {firsts:?}");
    }

    #[test]
    fn a_failing_key_opens_then_half_opens_for_one_probe_and_closes_on_success() {
        let p = pool(&[1, 1]);
        for _ in 0..FAILURES_TO_OPEN {
            p.report(0, Attempt::Failed);
        }
        assert_eq!(p.states()[0].1, BreakerState::Open);
        for _ in 0..4 {
            assert_eq!(p.order(), vec![1], "an open key is skipped");
        }
        // Time passes: pretend the open period is over.
        p.keys[0].state.lock().unwrap().open_until = Some(Instant::now());
        let orders: Vec<Vec<usize>> = (0..2).map(|_| p.order()).collect();
        let probes = orders.iter().filter(|o| o.contains(&0)).count();
        assert_eq!(probes, 1, "one probe while half-open: {orders:?}");
        assert_eq!(p.report(0, Attempt::Answered), BreakerState::Closed);
        assert!((0..2).any(|_| p.order()[0] == 0));
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_for_twice_as_long() {
        let p = pool(&[1, 1]);
        for _ in 0..FAILURES_TO_OPEN {
            p.report(0, Attempt::Failed);
        }
        p.keys[0].state.lock().unwrap().open_until = Some(Instant::now());
        assert_eq!(p.report(0, Attempt::Failed), BreakerState::Open);
        assert_eq!(p.keys[0].state.lock().unwrap().open_for, Some(OPEN_FOR * 2));
    }

    #[test]
    fn retry_after_rests_a_key_and_when_all_rest_the_soonest_is_tried() {
        let p = pool(&[1, 1]);
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("20"));
        let a = Attempt::of_status(StatusCode::TOO_MANY_REQUESTS, &h);
        assert_eq!(a, Attempt::Throttled(Some(Duration::from_secs(20))));
        p.report(0, a);
        assert_eq!(p.order(), vec![1]);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        p.report(1, Attempt::of_status(StatusCode::TOO_MANY_REQUESTS, &h));
        assert_eq!(p.order(), vec![1], "both rest: the one free soonest");
        assert_eq!(
            Attempt::of_status(StatusCode::NOT_IMPLEMENTED, &HeaderMap::new()),
            Attempt::Answered
        );
        assert_eq!(
            Attempt::of_status(StatusCode::BAD_GATEWAY, &HeaderMap::new()),
            Attempt::Failed
        );
    }
}
