//! Time and chance are injected: domain code asks a [`Clock`], never `Utc::now()`, a timer or
//! an RNG directly, so tests can pin it (audit keys, archive names and `promoted_at` all depend
//! on it) and the protocol simulation can replay a schedule exactly from its seed.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// Waits `d` (back-off between retries). A simulated clock decides what waiting means.
    fn sleep(&self, d: std::time::Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }

    /// 64 random bits, for jitter and write ids.
    fn random(&self) -> u64 {
        rand::random()
    }
}

/// A fresh id for one write (32 hex digits): stored in the document or object written, so a
/// writer whose response was lost recognizes its own write when it reads the key again.
pub fn new_write_id(clock: &dyn Clock) -> String {
    format!("{:016x}{:016x}", clock.random(), clock.random())
}

/// The one retry back-off: exponential from `base`, capped at `max`, with "full jitter" (a
/// uniform pick below the capped delay), so contenders spread out instead of retrying in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: std::time::Duration,
    pub max: std::time::Duration,
}

impl Backoff {
    /// Lost compare-and-swap races on one key: short, since the winner is already done.
    pub const CAS: Backoff =
        Backoff { base: std::time::Duration::from_millis(4), max: std::time::Duration::from_millis(100) };
    /// Transient service errors (throttling, 5xx, a dropped connection).
    pub const TRANSIENT: Backoff =
        Backoff { base: std::time::Duration::from_millis(200), max: std::time::Duration::from_secs(5) };

    /// The delay before retry number `attempt` (1 for the first retry), given 64 random bits.
    pub fn delay(&self, attempt: u32, random: u64) -> std::time::Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max).as_millis().max(1) as u64;
        // Never below half the capped delay: pure full jitter can hand out a run of near-zero
        // waits, which is a busy loop against a throttling service.
        std::time::Duration::from_millis(cap / 2 + random % (cap - cap / 2).max(1))
    }

    /// Sleeps before retry number `attempt` on `clock`.
    pub async fn wait(&self, clock: &dyn Clock, attempt: u32) {
        clock.sleep(self.delay(attempt, clock.random())).await;
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(at))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff { base: std::time::Duration::from_millis(100), max: std::time::Duration::from_secs(1) };
        for attempt in 1..=10 {
            let cap = (100u64 << (attempt - 1)).min(1000);
            for r in [0u64, 1, 12345, u64::MAX] {
                let d = b.delay(attempt, r).as_millis() as u64;
                assert!(d >= cap / 2 && d < cap.max(2), "attempt {attempt}: {d} ms outside [{}, {cap})", cap / 2);
            }
        }
        assert_ne!(b.delay(3, 1), b.delay(3, 2), "jitter depends on the random bits");
        assert_eq!(b.delay(u32::MAX, 7), b.delay(40, 7), "huge attempt counts do not overflow");
    }

    #[test]
    fn write_ids_are_distinct_hex() {
        let a = new_write_id(&SystemClock);
        let b = new_write_id(&SystemClock);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
