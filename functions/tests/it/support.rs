//! Test helpers: functions over an in-memory bucket, notifiers that record, fixtures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use s3dock_aws::sqs::QueueRules;
use s3dock_core::clock::ManualClock;
use s3dock_core::docs::{self, AgentRegistration, AuditRecord, SCHEMA_VERSION};
use s3dock_core::events::{EventError, Notifier};
use s3dock_core::layout;
use s3dock_core::names::{AgentId, AppName, EnvName, ImageRef, ObjectKey, Version};
use s3dock_core::registry::{EventMode, Registry};
use s3dock_core::store::{MemoryStore, ObjectStore, Precondition, list_all, read_small};
use s3dock_functions::{Backend, Function, Invocation, Kind, Settings};
use serde_json::Value;

/// The image the captured fixtures name (`images/myapp/202507/myapp-20250721-2118-f7a5a27.json`).
pub const A1: &str = "myapp:20250721-2118-f7a5a27";
pub const A2: &str = "myapp:20250722-0900-0a1b2c3";
/// The account LocalStack uses, and the region of the fixtures.
pub const ACCOUNT: &str = "000000000000";
pub const REGION: &str = "us-east-1";

pub fn img(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}
pub fn app(s: &str) -> AppName {
    AppName::parse(s).unwrap()
}
pub fn env(s: &str) -> EnvName {
    EnvName::parse(s).unwrap()
}
pub fn ver(s: &str) -> Version {
    Version::parse(s).unwrap()
}

pub fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()
}

/// A fixture under `tests/fixtures/`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An invocation as Lambda would describe it in the LocalStack account.
pub fn invocation() -> Invocation {
    Invocation {
        request_id: "test-request".into(),
        function_arn: Some(format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:s3dock-test")),
    }
}

/// One store for every bucket and one notifier for every account.
#[derive(Debug)]
pub struct TestBackend {
    pub store: Arc<dyn ObjectStore>,
    pub notifier: Arc<dyn Notifier>,
}

#[async_trait]
impl Backend for TestBackend {
    async fn store(&self, _bucket: &str) -> Result<Arc<dyn ObjectStore>, EventError> {
        Ok(self.store.clone())
    }
    async fn notifier(&self, _account_id: &str) -> Result<Arc<dyn Notifier>, EventError> {
        Ok(self.notifier.clone())
    }
}

/// A notifier with the real queue rules that records what it would send.
#[derive(Debug)]
pub struct RulesNotifier {
    pub rules: QueueRules,
    pub sent: Mutex<Vec<(String, String)>>,
}

impl RulesNotifier {
    /// The rules of the LocalStack account and region, with LocalStack's endpoint.
    pub fn localstack() -> Arc<RulesNotifier> {
        Arc::new(RulesNotifier {
            rules: QueueRules::new(ACCOUNT, REGION, Some("http://127.0.0.1:4566")).unwrap(),
            sent: Mutex::default(),
        })
    }

    pub fn messages(&self) -> Vec<(String, docs::PromotionMessage)> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(q, b)| (q.clone(), docs::decode("message", b.as_bytes()).expect("a valid promotion message")))
            .collect()
    }
}

#[async_trait]
impl Notifier for RulesNotifier {
    fn check_queue(&self, queue_url: &str) -> Result<(), String> {
        self.rules.check(queue_url).map(|_| ())
    }
    async fn send(&self, queue_url: &str, body: &str) -> Result<(), EventError> {
        self.sent.lock().unwrap().push((queue_url.to_owned(), body.to_owned()));
        Ok(())
    }
}

/// A bucket, a clock, a registry writing in `events = "lambda"` mode, and a notifier.
pub struct Bed {
    pub store: Arc<dyn ObjectStore>,
    pub clock: Arc<ManualClock>,
    pub registry: Registry,
    pub notifier: Arc<RulesNotifier>,
}

impl Bed {
    /// A bucket without versioning: the captured events name versions of other buckets.
    pub fn new() -> Bed {
        Bed::over(Arc::new(s3dock_core::store::faults::Unversioned(MemoryStore::new())))
    }

    pub fn over(store: Arc<dyn ObjectStore>) -> Bed {
        let clock = Arc::new(ManualClock::new(start()));
        let registry = Registry::new(store.clone(), clock.clone(), "alice", EventMode::Lambda);
        Bed { store, clock, registry, notifier: RulesNotifier::localstack() }
    }

    pub fn function(&self, kind: Kind) -> Function {
        self.function_with(kind, Settings::new(kind.name()))
    }

    pub fn function_with(&self, kind: Kind, settings: Settings) -> Function {
        let backend = TestBackend { store: self.store.clone(), notifier: self.notifier.clone() };
        Function::new(kind, settings, Arc::new(backend), self.clock.clone())
    }

    pub async fn seed(&self, image: &str) {
        s3dock_testkit::seed_image(&*self.store, &img(image), format!("archive of {image}").as_bytes(), start())
            .await
            .unwrap();
    }

    /// Registers an agent for `myapp`/`production` with a fresh heartbeat.
    pub async fn register(&self, id: &str, queue_url: &str) {
        let reg = AgentRegistration {
            schema_version: Some(SCHEMA_VERSION),
            agent_id: AgentId::parse(id).unwrap(),
            app_name: app("myapp"),
            environment: env("production"),
            queue_url: Some(queue_url.into()),
            host: format!("{id}.example"),
            last_heartbeat: self.clock_now(),
            state: None,
            version: None,
        };
        let key = layout::agent(&reg.app_name, &reg.environment, &reg.agent_id);
        self.store.put_bytes(&key, Bytes::from(docs::encode(&reg)), Precondition::None).await.unwrap();
    }

    fn clock_now(&self) -> DateTime<Utc> {
        use s3dock_core::clock::Clock;
        self.clock.now()
    }

    /// Every audit record, by key.
    pub async fn audit(&self) -> Vec<(String, AuditRecord)> {
        let mut out = Vec::new();
        for o in list_all(&*self.store, "audit/").await.unwrap() {
            let (bytes, _) = read_small(&*self.store, &o.key, 1 << 20).await.unwrap().unwrap();
            out.push((o.key.to_string(), docs::decode(o.key.as_str(), &bytes).unwrap()));
        }
        out
    }

    pub async fn audit_of(&self, event_type: &str) -> Vec<(String, AuditRecord)> {
        self.audit().await.into_iter().filter(|(_, r)| r.event_type == event_type).collect()
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        list_all(&*self.store, prefix).await.unwrap().into_iter().map(|o| o.key.to_string()).collect()
    }
}

/// An SQS event (as Lambda delivers it) with one message per body.
pub fn sqs_event(bodies: &[String]) -> Value {
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            serde_json::json!({
                "messageId": format!("msg-{i}"),
                "receiptHandle": format!("rh-{i}"),
                "body": b,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:{REGION}:{ACCOUNT}:s3dock-events"),
                "awsRegion": REGION,
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// An S3 notification body for one created key (encoded the way AWS encodes keys). Each call
/// stands for a new write, with an eTag of its own; clone the body to redeliver one event.
pub fn s3_body(bucket: &str, key: &str, version_id: Option<&str>) -> String {
    let encoded: String = key
        .split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b' ' => "+".to_owned(),
                    b if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) => (b as char).to_string(),
                    b => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/");
    static WRITES: AtomicU64 = AtomicU64::new(1);
    let etag = format!("{:032x}", WRITES.fetch_add(1, Ordering::Relaxed));
    let mut object = serde_json::json!({"key": encoded, "size": 100, "eTag": etag});
    if let Some(v) = version_id {
        object["versionId"] = v.into();
    }
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION, "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDATESTPRINCIPAL"},
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": object}
    }]})
    .to_string()
}

/// A versioned bucket: the memory store keeps every version, as S3 with versioning does.
pub type Versioned = MemoryStore;

/// The version ids written at `key`, oldest first (delete markers left out).
pub fn versions(store: &MemoryStore, key: &ObjectKey) -> Vec<String> {
    store
        .versions(key.as_str())
        .iter()
        .filter(|v| !v.is_delete_marker())
        .filter_map(|v| v.info.version_id.clone())
        .collect()
}
