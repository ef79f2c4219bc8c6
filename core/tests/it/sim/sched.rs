//! The deterministic scheduler: every store call of every actor is a point where the scheduler
//! decides who goes next and what happens to the call (proceed, fail before applying, apply and
//! lose the response, crash the caller, throttle).
//!
//! Actors are plain futures polled by the simulation's own loop with a no-op waker; a store
//! call registers a [`Gate`] and stays pending until the scheduler grants it. The scheduler
//! picks one pending gate at a time with a seeded RNG, so a seed replays the same schedule, and
//! writes a line of trace per step.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use s3dock_core::clock::Clock;

thread_local! {
    /// The actor being polled right now; gates registered during the poll belong to it.
    static CURRENT: Cell<usize> = const { Cell::new(usize::MAX) };
}

pub fn set_current(actor: usize) {
    CURRENT.with(|c| c.set(actor));
}

pub fn current() -> usize {
    CURRENT.with(|c| c.get())
}

/// What a gate asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    /// A call that changes the bucket.
    Write,
    /// A call that only reads.
    Read,
    /// The SDK's own retry of a write whose response was lost: always proceeds.
    Retry,
    /// A back-off sleep: always proceeds, advancing the clock.
    Sleep(std::time::Duration),
    /// A function actor waiting for its next event.
    Queue,
}

/// What the scheduler decided for a store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    /// The request never reached the service (or the SDK gave up): a retryable error.
    FailBefore,
    /// Applied, then the response was lost; the SDK retries the very same request.
    LoseResponse,
    /// The caller dies here, for good; `apply` says whether the call reached the service first.
    Crash {
        apply: bool,
    },
    /// The service answers SlowDown.
    Throttle,
}

/// Fault rates of one schedule.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub fail: f64,
    pub lose: f64,
    pub crash: f64,
    pub throttle: f64,
}

impl Faults {
    pub const NONE: Faults = Faults { fail: 0.0, lose: 0.0, crash: 0.0, throttle: 0.0 };
}

struct Pending {
    actor: usize,
    kind: GateKind,
    desc: String,
    /// Woken on grant: combinators such as `FuturesUnordered` only re-poll woken children.
    waker: std::task::Waker,
}

struct State {
    rng: StdRng,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    granted: BTreeMap<u64, Decision>,
    step: u64,
    now: DateTime<Utc>,
    trace: Vec<String>,
    faults: Faults,
    /// Actors that may crash (clients and functions; never the checker's own reads).
    crashable: Vec<bool>,
    crashed: Vec<usize>,
    names: Vec<String>,
}

/// The scheduler shared by the store, the clock and the simulation loop.
pub struct Sched {
    state: Mutex<State>,
}

impl std::fmt::Debug for Sched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sched")
    }
}

pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 22, 10, 0, 0).unwrap()
}

impl Sched {
    pub fn new(seed: u64, faults: Faults) -> Arc<Self> {
        Arc::new(Sched {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                next_id: 0,
                pending: BTreeMap::new(),
                granted: BTreeMap::new(),
                step: 0,
                now: start_time(),
                trace: Vec::new(),
                faults,
                crashable: Vec::new(),
                crashed: Vec::new(),
                names: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an actor; returns its index.
    pub fn add_actor(&self, name: String, crashable: bool) -> usize {
        let mut s = self.lock();
        s.names.push(name);
        s.crashable.push(crashable);
        s.names.len() - 1
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn gate(self: &Arc<Self>, kind: GateKind, desc: String) -> Gate {
        Gate { sched: self.clone(), id: None, kind, desc: Some(desc) }
    }

    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn step(&self) -> u64 {
        self.lock().step
    }

    /// Uniform random number in `0..n` from the schedule's RNG.
    pub fn pick(&self, n: usize) -> usize {
        if n <= 1 { 0 } else { self.lock().rng.random_range(0..n) }
    }

    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.lock().rng.random_bool(p.min(1.0))
    }

    pub fn random_u64(&self) -> u64 {
        self.lock().rng.random()
    }

    /// Adds a line to the trace (what an actor is about to do).
    pub fn note(&self, line: String) {
        let mut s = self.lock();
        let step = s.step;
        s.trace.push(format!("{step:5}        {line}"));
    }

    /// Lets time pass without anyone acting (delayed events becoming due).
    pub fn tick(&self) {
        let mut s = self.lock();
        s.step += 1;
        s.now += Duration::seconds(1);
    }

    pub fn take_crashed(&self) -> Vec<usize> {
        std::mem::take(&mut self.lock().crashed)
    }

    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    /// Grants one pending gate, chosen at random, with a decision drawn from the fault rates.
    /// `ready_queue` says whether a queue gate may be granted (an event is available).
    pub fn grant_one(&self, queue_ready: impl Fn(usize) -> bool) -> bool {
        let mut s = self.lock();
        let candidates: Vec<u64> = s
            .pending
            .iter()
            .filter(|(_, p)| p.kind != GateKind::Queue || queue_ready(p.actor))
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return false;
        }
        let id = candidates[s.rng.random_range(0..candidates.len())];
        let p = s.pending.remove(&id).expect("a candidate is pending");
        let f = s.faults;
        let crashable = s.crashable.get(p.actor).copied().unwrap_or(false);
        let roll: f64 = s.rng.random();
        let decision = match p.kind {
            GateKind::Retry | GateKind::Queue | GateKind::Sleep(_) => Decision::Proceed,
            GateKind::Read | GateKind::Write => {
                let write = p.kind == GateKind::Write;
                if crashable && roll < f.crash {
                    Decision::Crash { apply: write && s.rng.random_bool(0.5) }
                } else if roll < f.crash + f.fail {
                    Decision::FailBefore
                } else if roll < f.crash + f.fail + f.throttle {
                    Decision::Throttle
                } else if write && roll < f.crash + f.fail + f.throttle + f.lose {
                    Decision::LoseResponse
                } else {
                    Decision::Proceed
                }
            }
        };
        if let Decision::Crash { .. } = decision {
            s.crashed.push(p.actor);
        }
        s.step += 1;
        s.now += Duration::seconds(1);
        if let GateKind::Sleep(d) = p.kind {
            s.now += Duration::from_std(d).unwrap_or_default();
        }
        let step = s.step;
        let name = s.names.get(p.actor).cloned().unwrap_or_default();
        let shown = match decision {
            Decision::Proceed => String::new(),
            other => format!("  => {other:?}"),
        };
        let line = format!("{step:5} {name:>6} {}{shown}", p.desc);
        if std::env::var_os("S3DOCK_SIM_LIVE").is_some() {
            eprintln!("{line}");
        }
        s.trace.push(line);
        s.granted.insert(id, decision);
        drop(s);
        p.waker.wake();
        true
    }

    /// Drops every gate of `actor` (it crashed or finished).
    pub fn forget(&self, actor: usize) {
        self.lock().pending.retain(|_, p| p.actor != actor);
    }
}

/// A pending store call (or sleep, or queue wait) of the current actor.
pub struct Gate {
    sched: Arc<Sched>,
    id: Option<u64>,
    kind: GateKind,
    desc: Option<String>,
}

impl Future for Gate {
    type Output = Decision;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        let this = &mut *self;
        let mut s = this.sched.lock();
        match this.id {
            None => {
                let id = s.next_id;
                s.next_id += 1;
                let desc = this.desc.take().unwrap_or_default();
                s.pending.insert(id, Pending { actor: current(), kind: this.kind, desc, waker: cx.waker().clone() });
                drop(s);
                this.id = Some(id);
                Poll::Pending
            }
            Some(id) => match s.granted.remove(&id) {
                Some(d) => Poll::Ready(d),
                None => Poll::Pending,
            },
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut s = self.sched.lock();
            s.pending.remove(&id);
            s.granted.remove(&id);
        }
    }
}

/// The simulation's clock: time moves one second per step (and by every sleep), and its random
/// bits come from the schedule's RNG, so write ids and jitter replay with the seed.
#[derive(Debug, Clone)]
pub struct SimClock(pub Arc<Sched>);

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().now
    }

    fn sleep(&self, d: std::time::Duration) -> futures::future::BoxFuture<'static, ()> {
        let gate = self.0.gate(GateKind::Sleep(d), format!("sleep {} ms", d.as_millis()));
        Box::pin(async move {
            gate.await;
        })
    }

    fn random(&self) -> u64 {
        self.0.random_u64()
    }
}
