//! Unit tests of `runtime`.

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
    AgentConfig::parse(&text, Path::new("/etc/s3dock/agent.toml"), &HostFacts { hostname: Some("h".into()) }).unwrap()
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
    s3dock_testkit::put_raw(
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
    cfg.queue.mode = crate::config::QueueMode::Url("https://sqs.eu-west-1.amazonaws.com/1/s3dock-agent-web-1".into());
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
    s3dock_engine::ship::push(&host, &registry, &req, &Default::default(), &CancellationToken::new()).await.unwrap();
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
