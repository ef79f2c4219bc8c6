//! The reconcile step on the in-memory host (`s3dock_engine::fake::FakeHost`) and an in-memory
//! bucket: what the agent decides, without Docker, S3 or nginx. Needs no service, never skips.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use s3dock_agent::service::{AgentObserver, AgentStatus, Reconciled, Service, ServiceStatus, World};
use s3dock_core::clock::ManualClock;
use s3dock_core::gzip::GzipOptions;
use s3dock_core::layout;
use s3dock_core::names::{AgentId, AppName, EnvName, ImageRef};
use s3dock_core::registry::{EventMode, PromoteSource, Registry};
use s3dock_core::store::MemoryStore;
use s3dock_core::transfer::Progress;
use s3dock_engine::deploy::{
    Color, ColorPorts, DeployEvent, DeployObserver, DeployResult, DeploySpec, Deployer, HealthSpec, Upstream,
};
use s3dock_engine::fake::{FakeHost, Health};
use s3dock_engine::ship::{self, GitOverride, PushRequest};
use tokio_util::sync::CancellationToken;

const BLUE: u16 = 28080;
const GREEN: u16 = 28081;
const V1: &str = "web:20250701-1000-aaaaaa1";
const V2: &str = "web:20250702-1000-aaaaaa2";

struct Bench {
    host: FakeHost,
    registry: Arc<Registry>,
    clock: Arc<ManualClock>,
    spec: DeploySpec,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let host = FakeHost::new(ColorPorts { blue: BLUE, green: GREEN }, 8080);
        // Before the first deploy: an upstream written by hand, naming blue's port.
        host.route(Some(Upstream { host: "127.0.0.1".into(), port: BLUE, color: Color::Blue }));
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let registry =
            Arc::new(Registry::new(Arc::new(MemoryStore::new()), clock.clone(), "tester", EventMode::Inline));
        let mut spec = DeploySpec::new(
            AppName::parse("web").unwrap(),
            EnvName::parse("production").unwrap(),
            8080,
            ColorPorts { blue: BLUE, green: GREEN },
        );
        spec.health = HealthSpec {
            path: "/health".into(),
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            successes: 2,
            deadline: Duration::from_millis(500),
        };
        spec.drain = Duration::from_millis(10);
        spec.verify_deadline = Duration::from_millis(500);
        Bench { host, registry, clock, spec, dir: tempfile::tempdir().unwrap() }
    }

    /// The agent's view of the service, as a fresh start has it: a new deployer over the same
    /// state directory, with `observer` (if any).
    fn service(&self, observer: Option<Arc<dyn DeployObserver>>) -> Service {
        let status = Arc::new(Mutex::new(ServiceStatus::default()));
        let observer = observer.unwrap_or_else(|| {
            Arc::new(AgentObserver { service: "web/production".into(), status: status.clone(), fault: None })
        });
        let deployer = Deployer::new(
            Arc::new(self.host.clone()),
            Arc::new(self.host.clone()),
            self.clock.clone(),
            self.dir.path(),
            "fake-host",
        )
        .with_network(Arc::new(self.host.clone()))
        .with_audit(self.registry.clone(), "agent")
        .with_observer(observer);
        Service {
            spec: self.spec.clone(),
            key: layout::agent(&self.spec.app, &self.spec.env, &AgentId::parse("web-1").unwrap()),
            deployer,
            traffic: Arc::new(self.host.clone()),
            status,
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn world(&self) -> World {
        World {
            registry: self.registry.clone(),
            engine: Arc::new(self.host.clone()),
            clock: self.clock.clone(),
            net: Arc::new(self.host.clone()),
            agent_id: AgentId::parse("web-1").unwrap(),
            host: "fake-host".into(),
            queue_url: None,
            retry_backoff: Duration::from_secs(300),
            fault: None,
        }
    }

    /// Adds `reference` to the engine with `content` and pushes it to the bucket.
    async fn push(&self, reference: &str, content: &str, health: Health) -> ImageRef {
        let image = ImageRef::parse(reference).unwrap();
        self.host.add_image(reference, content, health, true);
        let commit = format!("{}{}", image.tag.hash7(), "0".repeat(33));
        let req = PushRequest {
            image: image.clone(),
            git: Some(GitOverride { commit, committed_at: image.tag.time(), source: None }),
            gzip: GzipOptions { level: 1, ..GzipOptions::default() },
            // Re-pushes here replace content hosts run on purpose (what --force is for).
            force: true,
        };
        ship::push(&self.host, &self.registry, &req, &Progress::default(), &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("pushing {image}: {e}"));
        image
    }

    async fn promote(&self, image: &ImageRef) {
        self.registry.promote(&PromoteSource::Image(image.clone()), &self.spec.env).await.unwrap();
    }

    /// The container traffic goes to.
    fn serving(&self) -> Option<s3dock_engine::fake::FakeContainer> {
        self.host.snapshot().serving().cloned()
    }
}

fn result_of(outcome: &Reconciled) -> Option<DeployResult> {
    match outcome {
        Reconciled::Deployed { report, .. } => Some(report.result),
        _ => None,
    }
}

/// The tag of a running image re-pushed with other content: the agent compared tag strings
/// and never deployed it to hosts that already ran the old content.
#[tokio::test]
async fn a_re_pushed_tag_is_deployed_to_hosts_running_its_old_content() {
    let b = Bench::new();
    let world = b.world();
    let svc = b.service(None);
    let cancel = CancellationToken::new();
    let v1 = b.push(V1, "first content", Health::Healthy).await;
    b.promote(&v1).await;
    assert_eq!(result_of(&world.reconcile(&svc, &cancel).await), Some(DeployResult::Succeeded));
    let first = b.serving().expect("v1 serves");
    assert!(matches!(world.reconcile(&svc, &cancel).await, Reconciled::InSync { .. }));
    let registration = world.registration(&svc, None);
    assert_eq!(registration.state.unwrap().image_id, Some(first.image_id.clone()), "the id is reported");

    // The same tag, pushed again with other content (a forced re-push).
    b.push(V1, "second content", Health::Healthy).await;
    let outcome = world.reconcile(&svc, &cancel).await;
    assert_eq!(result_of(&outcome), Some(DeployResult::Succeeded), "{}", outcome.describe());
    let now = b.serving().expect("the new content serves");
    assert_ne!(now.image_id, first.image_id);
    assert_eq!(now.image, V1);
    assert_eq!(world.registration(&svc, None).state.unwrap().image_id, Some(now.image_id));
    assert!(b.host.snapshot().violations.is_empty());
}

/// A pull that fails for a reason retrying cannot fix was started again at every reconcile
/// and every hint.
#[tokio::test]
async fn a_pull_that_fails_for_good_backs_off() {
    let b = Bench::new();
    let world = b.world();
    let svc = b.service(None);
    let cancel = CancellationToken::new();
    let v1 = b.push(V1, "content", Health::Healthy).await;
    b.promote(&v1).await;
    // The engine no longer has the image, and the archive in the bucket does not match its
    // metadata's image id (a re-push of other content whose metadata was not rewritten).
    b.host.with(|s| s.images.clear());
    let meta_key = layout::image_metadata(&v1.app, &v1.tag);
    let (bytes, _) = s3dock_core::store::read_small(&**b.registry.store(), &meta_key, 1 << 20).await.unwrap().unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    meta["image_id"] = "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    b.registry
        .store()
        .put_bytes(&meta_key, serde_json::to_vec(&meta).unwrap().into(), s3dock_core::store::Precondition::None)
        .await
        .unwrap();

    let first = world.reconcile(&svc, &cancel).await;
    assert!(matches!(first, Reconciled::PullFailed { .. }), "{}", first.describe());
    assert_eq!(svc.status().status, AgentStatus::Failed);
    let loads = || b.host.snapshot().calls.iter().filter(|c| c.name == "engine.load_image").count();
    let loaded = loads();
    for _ in 0..3 {
        let again = world.reconcile(&svc, &cancel).await;
        assert!(matches!(again, Reconciled::BackingOff { .. }), "{}", again.describe());
    }
    assert_eq!(loads(), loaded, "no download while backing off");
    // Once the back-off passed, it is tried again.
    b.clock.advance(chrono::Duration::minutes(6));
    assert!(matches!(world.reconcile(&svc, &cancel).await, Reconciled::PullFailed { .. }));
    assert_eq!(loads(), loaded + 1);
}

/// The failure memory lived in the process: a restarted agent deployed a failing image again
/// at once, although the state file recorded the failed deploy.
#[tokio::test]
async fn a_restarted_agent_keeps_backing_off_a_failed_deploy() {
    let b = Bench::new();
    let cancel = CancellationToken::new();
    let v1 = b.push(V1, "v1", Health::Healthy).await;
    let v2 = b.push(V2, "v2", Health::Unhealthy).await;
    b.promote(&v1).await;
    let world = b.world();
    let svc = b.service(None);
    assert_eq!(result_of(&world.reconcile(&svc, &cancel).await), Some(DeployResult::Succeeded));
    b.promote(&v2).await;
    assert_eq!(result_of(&world.reconcile(&svc, &cancel).await), Some(DeployResult::Failed));

    // A new process: a new world and service over the same state directory.
    let world = b.world();
    let svc = b.service(None);
    world.remember_last_failure(&svc);
    let creates = || b.host.snapshot().calls.iter().filter(|c| c.name == "engine.create_container").count();
    let before = creates();
    let outcome = world.reconcile(&svc, &cancel).await;
    assert!(matches!(outcome, Reconciled::BackingOff { .. }), "{}", outcome.describe());
    assert_eq!(creates(), before, "the failing image was not started again");
    assert_eq!(b.serving().unwrap().image, V1);
}

/// While backing off, the registration kept the health of an earlier check, and `since` moved
/// to the start of the deploy that failed.
#[tokio::test]
async fn health_and_since_stay_fresh_while_backing_off() {
    let b = Bench::new();
    let cancel = CancellationToken::new();
    let world = b.world();
    let svc = b.service(None);
    let v1 = b.push(V1, "v1", Health::Healthy).await;
    let v2 = b.push(V2, "v2", Health::Unhealthy).await;
    b.promote(&v1).await;
    world.reconcile(&svc, &cancel).await;
    let since = world.registration(&svc, None).state.unwrap().since.expect("since when v1 serves");
    b.clock.advance(chrono::Duration::minutes(1));
    b.promote(&v2).await;
    assert_eq!(result_of(&world.reconcile(&svc, &cancel).await), Some(DeployResult::Failed));
    let state = world.registration(&svc, None).state.unwrap();
    assert_eq!(state.since, Some(since), "the failed deploy did not move traffic");
    assert_eq!(state.health.map(|h| h.as_str()), Some("healthy"));

    // v1 falls ill during the back-off: the next reconcile says so.
    b.host.set_health(&b.serving().unwrap().name, Health::Unhealthy);
    assert!(matches!(world.reconcile(&svc, &cancel).await, Reconciled::BackingOff { .. }));
    let state = world.registration(&svc, None).state.unwrap();
    assert_eq!(state.health.map(|h| h.as_str()), Some("unhealthy"));
    assert_eq!(state.status.map(|s| s.as_str()), Some("failed"));
    assert_eq!(state.since, Some(since));
}

/// Promotes `to` the first time the deploy probes its new container: a rollback promoted
/// while the deploy health-checks its image.
#[derive(Debug)]
struct PromoteMidDeploy {
    registry: Arc<Registry>,
    env: EnvName,
    to: ImageRef,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl DeployObserver for PromoteMidDeploy {
    async fn event(&self, event: &DeployEvent) {
        if matches!(event, DeployEvent::Probe { .. }) && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.registry.promote(&PromoteSource::Image(self.to.clone()), &self.env).await.unwrap();
        }
    }
}

/// A rollback promoted mid-deploy waited behind the superseded deploy, which still switched
/// to the image being rolled back.
#[tokio::test]
async fn a_rollback_promoted_mid_deploy_stops_it_before_the_switch() {
    let b = Bench::new();
    let cancel = CancellationToken::new();
    let world = b.world();
    let v1 = b.push(V1, "v1", Health::Healthy).await;
    let v2 = b.push(V2, "v2", Health::Healthy).await;
    b.promote(&v1).await;
    world.reconcile(&b.service(None), &cancel).await;
    let before = b.serving().unwrap();
    b.promote(&v2).await;
    let watcher = Arc::new(PromoteMidDeploy {
        registry: b.registry.clone(),
        env: b.spec.env.clone(),
        to: v1.clone(),
        done: Default::default(),
    });
    let svc = b.service(Some(watcher));
    let outcome = world.reconcile(&svc, &cancel).await;
    assert_eq!(result_of(&outcome), Some(DeployResult::Superseded), "{}", outcome.describe());
    assert!(outcome.wants_another());
    let Reconciled::Deployed { report, .. } = &outcome else { unreachable!() };
    assert!(report.message.as_deref().unwrap().contains("now names web:20250701-1000-aaaaaa1"), "{report:?}");
    assert_eq!(b.serving().unwrap().id, before.id, "v2 never took the traffic");
    assert_eq!(b.host.snapshot().containers.len(), 1, "v2's container was removed");
    // The next reconcile, at once: v1 is what the pointer names, and it serves.
    assert!(matches!(world.reconcile(&svc, &cancel).await, Reconciled::InSync { .. }));
}

/// The registration's status and health are enums inside the agent, strings on the wire.
#[tokio::test]
async fn the_registration_keeps_its_wire_format() {
    let b = Bench::new();
    let world = b.world();
    let svc = b.service(None);
    let reg = world.registration(&svc, None);
    let state = reg.state.unwrap();
    assert_eq!(state.status.map(|s| s.as_str()), Some("starting"));
    assert!(state.health.is_none() && state.image.is_none());
    let stopped = world.registration(&svc, Some(AgentStatus::Stopped));
    assert_eq!(stopped.state.unwrap().status.map(|s| s.as_str()), Some("stopped"));
}
