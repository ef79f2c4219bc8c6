//! The agent's loops: one worker per service, the queue receiver, the heartbeat, and the
//! orderly shutdown.
//!
//! # Hints, not orders
//!
//! SQS delivers at least once, possibly late, duplicated or out of order, and may lose nothing
//! but delay anything. So a message never says what to deploy: it only wakes the service's
//! worker, whose reconcile re-reads the pointer (see [`crate::service`]). A duplicate finds the
//! service converged; a late or out-of-order message finds the current pointer, not the one it
//! was sent for; a lost message is made up by the periodic reconcile. Only the timing changes.
//!
//! # When a message is deleted
//!
//! - It names an (app, env) this agent does not serve: deleted at once (logged).
//! - It cannot be parsed: *not* deleted. It is hidden for a back-off that grows with its
//!   receive count ([`crate::queue::poison_backoff`]), so it never loops hot, and after
//!   `max_receive_count` receives SQS's redrive policy moves it to the dead-letter queue. With
//!   a queue whose redrive policy the agent did not set (`mode = "url"`) the back-off never
//!   drops to zero: without a redrive that would hand the message back at once, for ever.
//! - It names a served service: deleted only once a reconcile that *started after it was
//!   received* has finished and its outcome is written to the registration. Meanwhile its
//!   visibility is extended (every half `visibility_timeout`), so a long deploy does not let it
//!   come back and count towards the dead-letter queue. If the agent dies before, the message
//!   comes back after its visibility timeout and is handled again, which is harmless.
//!
//! # Workers that panic
//!
//! A worker that panics is logged, its service's registration says `error` with the panic,
//! and the worker is started again (after a pause): the heartbeat never reports a service as
//! fine while nothing reconciles it.
//!
//! # Shutdown
//!
//! When the token fires: the receiver stops receiving (a long poll in flight is dropped; its
//! messages come back after their visibility timeout); no worker starts a new reconcile; a
//! deploy in flight gets the same token, so it stops at the deployer's next safe point (before
//! the switch the new container is removed and the old keeps serving; a switch in progress is
//! finished or undone; the drain's grace is left to the next start). Then every registration
//! is written once more (`status = "stopped"`), and [`run`] returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s3dock_aws::sqs::ReceivedMessage;
use s3dock_core::clock::Clock;
use s3dock_core::docs::{self, PromotionMessage};
use s3dock_core::layout;
use s3dock_core::names::{AppName, EnvName};
use s3dock_core::registry::{EventMode, Registry};
use s3dock_core::store::ObjectStore;
use s3dock_engine::DockerEngine;
use s3dock_engine::deploy::{Deployer, HostNetwork, LocalNetwork, traffic_switch};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, QueueMode};
use crate::fault::FaultPoint;
use crate::queue::{MessageQueue, poison_backoff, poison_backoff_unknown_redrive};
use crate::service::{AgentObserver, AgentStatus, Reconciled, Service, ServiceStatus, World};

/// The outside world, injected.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Arc<dyn ObjectStore>,
    pub engine: Arc<dyn DockerEngine>,
    pub clock: Arc<dyn Clock>,
    /// `None` when the agent only reconciles (`[queue] mode = "none"`).
    pub queue: Option<Arc<dyn MessageQueue>>,
    /// Health checks and probes: the host's network ([`Deps::new`]), or a fake's.
    pub net: Arc<dyn HostNetwork>,
}

impl Deps {
    /// The outside world with this host's own network.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        engine: Arc<dyn DockerEngine>,
        clock: Arc<dyn Clock>,
        queue: Option<Arc<dyn MessageQueue>>,
    ) -> Self {
        Deps { store, engine, clock, queue, net: Arc::new(LocalNetwork) }
    }
}

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Recover and reconcile every service once, report, and return (no queue, no loop).
    pub once: bool,
    /// The test-only fault point (see [`crate::fault`]).
    pub fault: Option<FaultPoint>,
}

/// What [`run`] did: each service's last reconcile.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub services: Vec<(String, Option<Reconciled>)>,
}

impl RunSummary {
    /// Every service ended where its pointer says (or has no pointer).
    pub fn all_converged(&self) -> bool {
        self.services.iter().all(|(_, r)| r.as_ref().is_some_and(Reconciled::is_converged))
    }
}

/// Could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
}

/// "Reconcile now", and where to say whether its outcome was recorded.
#[derive(Debug)]
struct Hint {
    recorded: oneshot::Sender<bool>,
}

/// A waiting hint's message: deleted once the reconcile it triggered has been recorded.
type Waiter = tokio::task::JoinHandle<()>;

/// Runs the agent until `shutdown` fires (or once, with [`RunOptions::once`]).
pub async fn run(
    config: AgentConfig,
    deps: Deps,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunSummary, RunError> {
    let actor = format!("agent:{}", config.agent_id);
    // The agent writes no pointer and no tag, so the registry runs no event handler of its
    // own; its deploy audit records go through `Registry::audit`.
    let registry = Arc::new(Registry::new(deps.store.clone(), deps.clock.clone(), actor, EventMode::Lambda));
    let world = World {
        registry: registry.clone(),
        engine: deps.engine.clone(),
        clock: deps.clock.clone(),
        net: deps.net.clone(),
        agent_id: config.agent_id.clone(),
        host: config.host.clone(),
        queue_url: deps.queue.as_ref().map(|q| q.url().to_owned()),
        retry_backoff: config.retry_backoff,
        fault: opts.fault,
    };
    let mut services = Vec::new();
    for spec in &config.services {
        let traffic = traffic_switch(spec, &config.state_dir)
            .map_err(|e| RunError::Setup(format!("{}/{}: {e}", spec.app, spec.env)))?;
        let status = Arc::new(Mutex::new(ServiceStatus { status: AgentStatus::Starting, ..Default::default() }));
        let observer =
            AgentObserver { service: format!("{}/{}", spec.app, spec.env), status: status.clone(), fault: opts.fault };
        let deployer = Deployer::new(
            deps.engine.clone(),
            traffic.clone(),
            deps.clock.clone(),
            &config.state_dir,
            config.host.clone(),
        )
        .with_audit(registry.clone(), "agent")
        .with_agent_id(config.agent_id.as_str())
        .with_observer(Arc::new(observer))
        .with_network(deps.net.clone());
        let svc = Service {
            spec: spec.clone(),
            key: layout::agent(&spec.app, &spec.env, &config.agent_id),
            deployer,
            traffic,
            status,
            write_lock: tokio::sync::Mutex::new(()),
        };
        // A failure remembered in the state file is still backed off after a restart.
        world.remember_last_failure(&svc);
        services.push(Arc::new(svc));
    }
    for warning in config.warnings() {
        tracing::warn!("{}: {warning}", config.path.display());
    }
    tracing::info!(
        agent_id = %config.agent_id,
        host = %config.host,
        store = %deps.store.url(),
        queue = world.queue_url.as_deref().unwrap_or("none"),
        services = ?services.iter().map(|s| s.name()).collect::<Vec<_>>(),
        once = opts.once,
        "s3dock-agent starting"
    );

    // Registered first, so a promotion made while the agent settles and reconciles already
    // reaches its queue.
    for svc in &services {
        log_write(&svc.name(), world.write_registration(svc, None).await);
    }

    let last: Arc<Mutex<BTreeMap<String, Reconciled>>> = Arc::default();
    let mut workers = JoinSet::new();
    let mut routes: BTreeMap<(AppName, EnvName), mpsc::UnboundedSender<Hint>> = BTreeMap::new();
    for svc in &services {
        let (tx, rx) = mpsc::unbounded_channel();
        routes.insert((svc.spec.app.clone(), svc.spec.env.clone()), tx);
        workers.spawn(supervised(
            world.clone(),
            svc.clone(),
            Arc::new(tokio::sync::Mutex::new(rx)),
            config.reconcile_interval,
            opts.once,
            shutdown.clone(),
            last.clone(),
        ));
    }
    // Dropped senders end a worker's channel, never its loop: the worker also ends on the
    // token, and with `once` after its first reconcile.
    let heartbeat = (!opts.once).then(|| {
        tokio::spawn(heartbeat_loop(world.clone(), services.clone(), config.heartbeat_interval, shutdown.clone()))
    });
    let receiver = match (&deps.queue, opts.once) {
        (Some(queue), false) => Some(tokio::spawn(receive_loop(
            queue.clone(),
            routes,
            Poison {
                visibility: config.queue.visibility_timeout,
                max_receive_count: config.queue.max_receive_count,
                redrive_known: config.queue.mode == QueueMode::Create,
            },
            config.queue.wait,
            shutdown.clone(),
        ))),
        _ => {
            drop(routes);
            None
        }
    };

    while let Some(done) = workers.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a service worker ended abnormally");
        }
    }
    // Workers are done: every hint got its answer or was dropped, so the waiters finish now.
    if let Some(receiver) = receiver {
        match receiver.await {
            Ok(waiters) => {
                for w in waiters {
                    let _ = w.await;
                }
            }
            Err(e) => tracing::error!(error = %e, "the queue receiver ended abnormally"),
        }
    }
    if let Some(h) = heartbeat {
        let _ = h.await;
    }
    // The last word: what each service runs, with a fresh heartbeat.
    let final_status = if opts.once { None } else { Some(AgentStatus::Stopped) };
    for svc in &services {
        log_write(&svc.name(), world.write_registration(svc, final_status).await);
    }
    let mut last = std::mem::take(&mut *last.lock().unwrap_or_else(|p| p.into_inner()));
    let summary = RunSummary { services: services.iter().map(|s| (s.name(), last.remove(&s.name()))).collect() };
    tracing::info!("s3dock-agent stopped");
    Ok(summary)
}

fn log_write(service: &str, r: Result<(), s3dock_core::store::StoreError>) {
    if let Err(e) = r {
        tracing::error!(service = %service, error = %e, "could not write the registration; the next heartbeat tries again");
    }
}

/// The longest pause before a worker that panicked is started again.
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(60);

/// Runs the service's [`worker`] and starts it again when it panics, saying so in the service's
/// registration: a worker that died silently would leave the heartbeat reporting a service
/// nothing reconciles any more.
async fn supervised(
    world: World,
    svc: Arc<Service>,
    hints: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Hint>>>,
    interval: Duration,
    once: bool,
    shutdown: CancellationToken,
    last: Arc<Mutex<BTreeMap<String, Reconciled>>>,
) {
    let mut pause = Duration::from_secs(1);
    loop {
        let run = tokio::spawn(worker(
            world.clone(),
            svc.clone(),
            hints.clone(),
            interval,
            once,
            shutdown.clone(),
            last.clone(),
        ));
        let panic = match run.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned())
            }
            Err(_) => return,
        };
        tracing::error!(service = %svc.name(), panic = %panic, retry_in = ?pause,
            "the service's worker panicked; starting it again");
        svc.update(|s| {
            s.status = AgentStatus::Error;
            s.phase = None;
            s.message = Some(format!("the agent's worker for this service crashed ({panic}); it is started again"));
        });
        log_write(&svc.name(), world.write_registration(&svc, None).await);
        if once {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_RESTART_PAUSE);
    }
}

/// One service: settle what a crash left, reconcile, then reconcile again on every hint and
/// every `interval`, until shutdown.
async fn worker(
    world: World,
    svc: Arc<Service>,
    hints: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Hint>>>,
    interval: Duration,
    once: bool,
    shutdown: CancellationToken,
    last: Arc<Mutex<BTreeMap<String, Reconciled>>>,
) {
    // The receiving end is the worker's alone; a worker started again after a panic takes it
    // over (the lock of the one that panicked was released as it unwound).
    let mut hints = hints.lock().await;
    // Start-up: a deploy interrupted by a crash is settled before anything else.
    world.recover(&svc, &shutdown).await;
    let mut waiting: Vec<oneshot::Sender<bool>> = Vec::new();
    loop {
        if shutdown.is_cancelled() {
            // No new reconcile: waiting hints are dropped, their messages stay in the queue.
            break;
        }
        let mut outcome = world.reconcile(&svc, &shutdown).await;
        world.forgive_if_engine_down(&svc, &mut outcome).await;
        if matches!(outcome, Reconciled::Cancelled) {
            break;
        }
        let recorded = match world.write_registration(&svc, None).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(service = %svc.name(), error = %e,
                    "could not record the outcome in the registration; the messages that asked for it stay in the queue");
                false
            }
        };
        for w in waiting.drain(..) {
            let _ = w.send(recorded);
        }
        let again = outcome.wants_another();
        last.lock().unwrap_or_else(|p| p.into_inner()).insert(svc.name(), outcome);
        if once {
            break;
        }
        if again {
            // Superseded before its switch: what the pointer names now goes next, at once.
            continue;
        }
        // Wait for the next reason to look: a hint, the interval, or shutdown. Hints that
        // arrived during the reconcile above are picked up at once (they may have been sent
        // after it read the pointer), and all hints queued by then share the next reconcile.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            hint = hints.recv() => match hint {
                Some(h) => waiting.push(h.recorded),
                None => {
                    // No receiver (no queue): only the interval and shutdown remain.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            },
            _ = tokio::time::sleep(interval) => {}
        }
        while let Ok(h) = hints.try_recv() {
            waiting.push(h.recorded);
        }
    }
}

/// Rewrites every registration each `interval`: the fan-out only notifies agents with a
/// fresh heartbeat.
async fn heartbeat_loop(world: World, services: Vec<Arc<Service>>, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for svc in &services {
            log_write(&svc.name(), world.write_registration(svc, None).await);
        }
    }
}

/// How malformed messages are hidden.
#[derive(Debug, Clone, Copy)]
struct Poison {
    visibility: Duration,
    max_receive_count: u32,
    /// The agent set the queue's redrive policy itself (`mode = "create"`).
    redrive_known: bool,
}

impl Poison {
    fn hide_for(&self, receive_count: u32) -> Duration {
        if self.redrive_known {
            poison_backoff(receive_count, self.max_receive_count, self.visibility)
        } else {
            poison_backoff_unknown_redrive(receive_count, self.visibility)
        }
    }
}

/// Long-polls the queue and hands each message to its service (see the module doc for when a
/// message is deleted). Returns the tasks still waiting to delete messages.
async fn receive_loop(
    queue: Arc<dyn MessageQueue>,
    routes: BTreeMap<(AppName, EnvName), mpsc::UnboundedSender<Hint>>,
    poison: Poison,
    wait: Duration,
    shutdown: CancellationToken,
) -> Vec<Waiter> {
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut failures: u32 = 0;
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = queue.receive(wait) => r,
        };
        let messages = match batch {
            Ok(m) => {
                failures = 0;
                m
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                // Bounded back-off: SQS being away must neither spin nor stop the reconciles.
                let pause = Duration::from_secs(1 << failures.min(5));
                tracing::warn!(queue = %queue.url(), error = %e, retry_in = ?pause, "receiving from the queue failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        waiters.retain(|w| !w.is_finished());
        for m in messages {
            if let Some(w) = handle_message(&queue, &routes, m, poison).await {
                waiters.push(w);
            }
        }
    }
    waiters
}

async fn handle_message(
    queue: &Arc<dyn MessageQueue>,
    routes: &BTreeMap<(AppName, EnvName), mpsc::UnboundedSender<Hint>>,
    m: ReceivedMessage,
    poison: Poison,
) -> Option<Waiter> {
    let msg: PromotionMessage = match docs::decode(&format!("message {}", m.id), m.body.as_bytes()) {
        Ok(msg) => msg,
        Err(e) => {
            let hide = poison.hide_for(m.receive_count);
            let max_receive_count = poison.max_receive_count;
            tracing::warn!(message_id = %m.id, receive_count = m.receive_count, max_receive_count, hidden_for = ?hide,
                error = %e, "malformed message: not deleted; it goes to the dead-letter queue after max_receive_count receives");
            if let Err(e) = queue.hide(&m.receipt_handle, hide).await {
                tracing::warn!(message_id = %m.id, error = %e, "could not hide the malformed message; it comes back after its visibility timeout");
            }
            return None;
        }
    };
    let Some(route) = routes.get(&(msg.app.clone(), msg.env.clone())) else {
        tracing::info!(message_id = %m.id, app = %msg.app, env = %msg.env,
            "message for an app and environment this agent does not serve: deleted");
        if let Err(e) = queue.delete(&m.receipt_handle).await {
            tracing::warn!(message_id = %m.id, error = %e, "could not delete the message; it comes back and is deleted then");
        }
        return None;
    };
    tracing::info!(message_id = %m.id, app = %msg.app, env = %msg.env, image = %msg.image, seq = msg.pointer_seq,
        receive_count = m.receive_count, "promotion hint: reconciling now");
    let (tx, rx) = oneshot::channel();
    if route.send(Hint { recorded: tx }).is_err() {
        // The worker is gone (shutdown): leave the message for the next start.
        return None;
    }
    Some(tokio::spawn(hold_until_recorded(queue.clone(), m, poison.visibility, rx)))
}

/// Keeps a handled message hidden until the reconcile it triggered is recorded (extending its
/// visibility every half `visibility`, so a deploy longer than the visibility timeout does not
/// let it come back and count towards the dead-letter queue), then deletes it; leaves it to
/// come back when the outcome was not recorded.
async fn hold_until_recorded(
    queue: Arc<dyn MessageQueue>,
    m: ReceivedMessage,
    visibility: Duration,
    mut recorded: oneshot::Receiver<bool>,
) {
    let every = (visibility / 2).max(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            r = &mut recorded => break r,
            _ = tokio::time::sleep(every) => {
                if let Err(e) = queue.hide(&m.receipt_handle, visibility).await {
                    tracing::warn!(message_id = %m.id, error = %e, "could not extend the visibility of a message being handled");
                }
            }
        }
    };
    match outcome {
        Ok(true) => {
            if let Err(e) = queue.delete(&m.receipt_handle).await {
                tracing::warn!(message_id = %m.id, error = %e, "could not delete a handled message; it comes back as a harmless duplicate");
            }
        }
        Ok(false) | Err(_) => {
            tracing::info!(message_id = %m.id, "outcome not recorded: the message stays and comes back after its visibility timeout");
        }
    }
}

#[cfg(test)]
mod tests;
