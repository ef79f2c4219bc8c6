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
mod tests {
    use std::collections::VecDeque;
    use std::path::Path;

    use async_trait::async_trait;
    use s3dock_aws::sqs::QueueError;
    use s3dock_core::clock::SystemClock;
    use s3dock_core::docs::AgentRegistration;
    use s3dock_core::store::{BoxReader, MemoryStore, read_small};
    use s3dock_engine::{
        BuildOptions, BuildOutcome, ContainerFilter, ContainerInfo, ContainerSpec, ContainerSummary, EngineError,
        EngineVersion, ImageInfo, ImageSummary, LoadOutcome,
    };

    use super::*;
    use crate::config::HostFacts;

    /// An engine that is never there: the paths under test must not need one.
    #[derive(Debug)]
    struct NoEngine;

    fn down<T>() -> Result<T, EngineError> {
        Err(EngineError::Unreachable { detail: "no engine in unit tests".into() })
    }

    #[async_trait]
    impl DockerEngine for NoEngine {
        async fn version(&self) -> Result<EngineVersion, EngineError> {
            down()
        }
        async fn inspect_image(&self, _: &str) -> Result<Option<ImageInfo>, EngineError> {
            down()
        }
        async fn save_image(&self, _: &str) -> Result<BoxReader, EngineError> {
            down()
        }
        async fn load_image(&self, _: BoxReader) -> Result<LoadOutcome, EngineError> {
            down()
        }
        async fn build_image(&self, _: BoxReader, _: &BuildOptions) -> Result<BuildOutcome, EngineError> {
            down()
        }
        async fn list_images(&self, _: &str) -> Result<Vec<ImageSummary>, EngineError> {
            down()
        }
        async fn remove_image(&self, _: &str, _: bool) -> Result<(), EngineError> {
            down()
        }
        async fn tag_image(&self, _: &str, _: &str, _: &str) -> Result<(), EngineError> {
            down()
        }
        async fn list_containers(&self, _: &ContainerFilter) -> Result<Vec<ContainerSummary>, EngineError> {
            down()
        }
        async fn create_container(&self, _: &ContainerSpec) -> Result<String, EngineError> {
            down()
        }
        async fn start_container(&self, _: &str) -> Result<(), EngineError> {
            down()
        }
        async fn stop_container(&self, _: &str, _: u32) -> Result<(), EngineError> {
            down()
        }
        async fn remove_container(&self, _: &str, _: bool) -> Result<(), EngineError> {
            down()
        }
        async fn inspect_container(&self, _: &str) -> Result<Option<ContainerInfo>, EngineError> {
            down()
        }
        async fn container_logs(&self, _: &str, _: usize) -> Result<Vec<String>, EngineError> {
            down()
        }
    }

    /// A queue in memory: what is queued is handed out once; deletes and hides are recorded.
    #[derive(Debug, Default)]
    struct MemoryQueue {
        pending: Mutex<VecDeque<ReceivedMessage>>,
        deleted: Mutex<Vec<String>>,
        hidden: Mutex<Vec<(String, Duration)>>,
    }

    impl MemoryQueue {
        fn push(&self, id: &str, body: &str, receive_count: u32) {
            self.pending.lock().unwrap().push_back(ReceivedMessage {
                id: id.into(),
                receipt_handle: format!("rh-{id}"),
                body: body.into(),
                receive_count,
            });
        }
        fn deleted(&self) -> Vec<String> {
            self.deleted.lock().unwrap().clone()
        }
        fn hidden(&self) -> Vec<(String, Duration)> {
            self.hidden.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl MessageQueue for MemoryQueue {
        fn url(&self) -> &str {
            "http://127.0.0.1:4566/000000000000/s3dock-agent-web-1"
        }
        async fn receive(&self, _wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
            let batch: Vec<_> = self.pending.lock().unwrap().drain(..).collect();
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(batch)
        }
        async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
            self.deleted.lock().unwrap().push(receipt_handle.to_owned());
            Ok(())
        }
        async fn hide(&self, receipt_handle: &str, timeout: Duration) -> Result<(), QueueError> {
            self.hidden.lock().unwrap().push((receipt_handle.to_owned(), timeout));
            Ok(())
        }
    }

    fn config(state_dir: &Path) -> AgentConfig {
        let text = format!(
            "agent_id = \"web-1\"\nstore = \"s3://bucket-1\"\nstate_dir = \"{}\"\nreconcile_interval = \"1h\"\nheartbeat_interval = \"100ms\"\n[queue]\nvisibility_timeout = \"30s\"\nmax_receive_count = 3\nwait = \"1s\"\n[[service]]\napp = \"web\"\nenv = \"production\"\ncontainer_port = 80\nports = {{ blue = 18080, green = 18081 }}\n[service.traffic]\ndriver = \"none\"\n",
            state_dir.display()
        );
        AgentConfig::parse(&text, Path::new("/etc/s3dock/agent.toml"), &HostFacts { hostname: Some("h".into()) })
            .unwrap()
    }

    async fn registration(store: &MemoryStore) -> AgentRegistration {
        let key = s3dock_core::names::ObjectKey::parse("agents/web/production/web-1.json").unwrap();
        let (bytes, _) = read_small(store, &key, 1 << 20).await.unwrap().expect("registered");
        docs::decode(key.as_str(), &bytes).unwrap()
    }

    /// Waits (bounded) until `cond` holds.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn messages_are_hints_deleted_only_when_handled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let queue = Arc::new(MemoryQueue::default());
        let deps = Deps::new(store.clone(), Arc::new(NoEngine), Arc::new(SystemClock), Some(queue.clone()));
        let promotion = |app: &str| {
            format!(
                r#"{{"schema_version":1,"kind":"promotion","app":"{app}","env":"production","image":"{app}:20250721-2118-f7a5a27","pointer_seq":3,"time":"2025-07-22T10:18:00Z"}}"#
            )
        };
        // Queued before the start: the first receive gets all three.
        queue.push("foreign", &promotion("api"), 1);
        queue.push("poison", "{\"kind\": \"promotion\"", 2);
        queue.push("mine", &promotion("web"), 1);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config(dir.path()), deps, RunOptions::default(), shutdown.clone()));

        until("the foreign and the handled message are deleted", || queue.deleted().len() == 2).await;
        let mut deleted = queue.deleted();
        deleted.sort();
        assert_eq!(deleted, ["rh-foreign", "rh-mine"]);
        // The malformed one is hidden for visibility x receive count, never deleted.
        assert_eq!(queue.hidden(), [("rh-poison".to_owned(), Duration::from_secs(60))]);
        queue.push("poison", "not json", 3);
        until("the last receive makes it visible for the redrive", || queue.hidden().len() == 2).await;
        assert_eq!(queue.hidden()[1], ("rh-poison".to_owned(), Duration::ZERO));

        // The reconcile the hint triggered was recorded: no pointer, nothing to deploy.
        let reg = registration(&store).await;
        let state = reg.state.unwrap();
        assert_eq!(state.status.as_deref(), Some("no-pointer"));
        assert_eq!(reg.queue_url.as_deref(), Some(queue.url()));
        assert!(state.image.is_none() && state.health.is_none());

        // Heartbeats move forward.
        let first = reg.last_heartbeat;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(registration(&store).await.last_heartbeat > first);

        shutdown.cancel();
        let summary = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
        assert!(summary.all_converged(), "{summary:?}");
        assert_eq!(registration(&store).await.state.unwrap().status.as_deref(), Some("stopped"));
    }

    #[tokio::test]
    async fn once_reconciles_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        // A pointer that leads nowhere is an error, not "nothing to deploy".
        s3dock_core::testing::put_raw(
            &*store,
            "pointers/web/production.json",
            r#"{"target_type":"image","target_path":"images/web/202507/web-20250721-2118-f7a5a27.tar.gz","promoted_at":"2025-07-22T10:18:00Z","promoted_by":"t","git_hash":"f7a5a27","git_time":"20250721-2118","seq":1}"#,
        )
        .await
        .unwrap();
        let deps = Deps::new(store.clone(), Arc::new(NoEngine), Arc::new(SystemClock), None);
        let opts = RunOptions { once: true, fault: None };
        let summary = run(config(dir.path()), deps, opts, CancellationToken::new()).await.unwrap();
        assert!(!summary.all_converged());
        let (name, outcome) = &summary.services[0];
        assert_eq!(name, "web/production");
        assert!(matches!(outcome, Some(Reconciled::Error { .. })), "{outcome:?}");
        let state = registration(&store).await.state.unwrap();
        assert_eq!(state.status.as_deref(), Some("error"));
        let message = state.message.unwrap();
        assert!(message.contains("points to web:20250721-2118-f7a5a27"), "{message}");
        assert!(registration(&store).await.queue_url.is_none());
    }

    /// A handled message's visibility was never extended: a reconcile longer than the
    /// visibility timeout let it come back, be received again, and count towards the DLQ.
    #[tokio::test(start_paused = true)]
    async fn a_handled_message_stays_hidden_until_its_outcome_is_recorded() {
        let queue = Arc::new(MemoryQueue::default());
        let message =
            ReceivedMessage { id: "m".into(), receipt_handle: "rh-m".into(), body: String::new(), receive_count: 1 };
        let (tx, rx) = oneshot::channel();
        let visibility = Duration::from_secs(30);
        let held = tokio::spawn(hold_until_recorded(queue.clone(), message, visibility, rx));
        // A deploy that takes 70 s: the message is hidden again every 15 s.
        tokio::time::sleep(Duration::from_secs(70)).await;
        let hidden = queue.hidden();
        assert_eq!(hidden.len(), 4, "{hidden:?}");
        assert!(hidden.iter().all(|(rh, d)| rh == "rh-m" && *d == visibility));
        assert!(queue.deleted().is_empty());
        tx.send(true).unwrap();
        held.await.unwrap();
        assert_eq!(queue.deleted(), ["rh-m"]);
    }

    /// With `mode = "url"`, a malformed message at the receive limit was made visible at once,
    /// trusting a redrive policy the queue may not have: a hot loop.
    #[tokio::test]
    async fn with_a_given_queue_a_malformed_message_is_never_handed_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let queue = Arc::new(MemoryQueue::default());
        let mut cfg = config(dir.path());
        cfg.queue.mode =
            crate::config::QueueMode::Url("https://sqs.eu-west-1.amazonaws.com/1/s3dock-agent-web-1".into());
        let deps = Deps::new(store.clone(), Arc::new(NoEngine), Arc::new(SystemClock), Some(queue.clone()));
        queue.push("poison", "not json", 3);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(cfg, deps, RunOptions::default(), shutdown.clone()));
        until("the malformed message is hidden", || !queue.hidden().is_empty()).await;
        assert_eq!(queue.hidden()[0], ("rh-poison".to_owned(), Duration::from_secs(90)), "30 s x 3 receives");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    }

    /// A worker that panicked went unnoticed: the heartbeat kept reporting the service's last
    /// status while nothing reconciled it any more.
    #[tokio::test]
    async fn a_worker_that_panics_is_reported_and_started_again() {
        use s3dock_core::registry::PromoteSource;
        use s3dock_engine::deploy::ColorPorts;
        use s3dock_engine::fake::{FakeHost, Health};
        use s3dock_engine::ship::{GitOverride, PushRequest};

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let host = FakeHost::new(ColorPorts { blue: 18080, green: 18081 }, 8080);
        let image = s3dock_core::names::ImageRef::parse("web:20250701-1000-aaaaaa1").unwrap();
        host.add_image(&image.to_string(), "v1", Health::Healthy, true);
        let registry = Registry::new(store.clone(), Arc::new(SystemClock), "tester", EventMode::Inline);
        let req = PushRequest {
            image: image.clone(),
            git: Some(GitOverride {
                commit: format!("aaaaaa1{}", "0".repeat(33)),
                committed_at: image.tag.time(),
                source: None,
            }),
            gzip: Default::default(),
            force: false,
        };
        s3dock_engine::ship::push(&host, &registry, &req, &Default::default(), &CancellationToken::new())
            .await
            .unwrap();
        registry.promote(&PromoteSource::Image(image.clone()), &"production".parse().unwrap()).await.unwrap();
        // The first reconcile's first look at a container panics.
        host.with(|s| s.panic_on = Some("engine.inspect_container"));
        let mut cfg = config(dir.path());
        cfg.queue.mode = crate::config::QueueMode::None;
        cfg.reconcile_interval = Duration::from_millis(200);
        let mut deps = Deps::new(store.clone(), Arc::new(host.clone()), Arc::new(SystemClock), None);
        deps.net = Arc::new(host.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(cfg, deps, RunOptions::default(), shutdown.clone()));

        let mut saw_crash = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let key = s3dock_core::names::ObjectKey::parse("agents/web/production/web-1.json").unwrap();
            let Some((bytes, _)) = read_small(&*store, &key, 1 << 20).await.unwrap() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let reg: AgentRegistration = docs::decode(key.as_str(), &bytes).unwrap();
            let state = reg.state.unwrap();
            if state.message.as_deref().is_some_and(|m| m.contains("worker for this service crashed")) {
                assert_eq!(state.status.as_deref(), Some("error"));
                assert!(state.message.as_deref().unwrap().contains("injected panic"), "{:?}", state.message);
                saw_crash = true;
            }
            if saw_crash && state.status.as_deref() == Some("converged") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no crash reported then convergence: {state:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    }
}
