//! The whole path on LocalStack: registry writes (`events = "lambda"`) -> S3 notifications ->
//! SQS -> the functions' entry point -> audit records in the bucket and promotion messages in
//! the agents' queues.
//!
//! No emulator here runs a Lambda when S3 fires, so the test plays the event source mapping:
//! it receives batches from the notification queue, hands each batch (as the SQS event Lambda
//! would build) to all three functions, and deletes what every function acknowledged.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{
    BucketVersioningStatus, Event, FilterRule, FilterRuleName, NotificationConfiguration,
    NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter, VersioningConfiguration,
};
use bytes::Bytes;
use s3dock_aws::S3Store;
use s3dock_aws::sqs::{DeadLetter, QueueSettings, ReceiveOptions, ReceivedMessage, SqsClient, SqsConfig, SqsQueue};
use s3dock_core::clock::{Clock, SystemClock};
use s3dock_core::docs::{self, AgentRegistration, PromotionMessage, SCHEMA_VERSION};
use s3dock_core::layout;
use s3dock_core::names::{AgentId, ObjectKey};
use s3dock_core::registry::{EventMode, PromoteSource, Registry};
use s3dock_core::store::{MemoryStore, ObjectStore, Precondition, list_all, read_small};
use s3dock_functions::{AwsBackend, Function, Invocation, Kind, Settings};
use s3dock_testkit::seed_image;
use serde_json::{Value, json};

use crate::support::*;

/// The LocalStack endpoint, or `None` (with a message) when the test should skip.
pub(crate) fn endpoint() -> Option<String> {
    s3dock_testkit::s3::emulator_endpoint()
}

pub(crate) fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub(crate) fn region() -> String {
    std::env::var("AWS_REGION").or_else(|_| std::env::var("AWS_DEFAULT_REGION")).unwrap_or_else(|_| REGION.into())
}

pub(crate) async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region()))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk).endpoint_url(endpoint).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The notification configuration: creations of `.json` under images/, tags/ and pointers/.
pub(crate) fn notifications(queue_arn: &str, prefix: &str) -> NotificationConfiguration {
    let rule = |name: FilterRuleName, value: String| FilterRule::builder().name(name).value(value).build();
    let configs = ["images/", "tags/", "pointers/"]
        .iter()
        .map(|p| {
            let filter = S3KeyFilter::builder()
                .filter_rules(rule(FilterRuleName::Prefix, format!("{prefix}{p}")))
                .filter_rules(rule(FilterRuleName::Suffix, ".json".into()))
                .build();
            QueueConfiguration::builder()
                .id(format!("s3dock-{}", p.trim_end_matches('/')))
                .queue_arn(queue_arn)
                .events(Event::from("s3:ObjectCreated:*"))
                .filter(NotificationConfigurationFilter::builder().key(filter).build())
                .build()
                .expect("queue configuration")
        })
        .collect();
    NotificationConfiguration::builder().set_queue_configurations(Some(configs)).build()
}

/// The SQS event Lambda builds from received messages.
pub(crate) fn lambda_sqs_event(messages: &[ReceivedMessage], queue_arn: &str) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "messageId": m.id, "receiptHandle": m.receipt_handle, "body": m.body,
                "attributes": {"ApproximateReceiveCount": m.receive_count.to_string()},
                "messageAttributes": {}, "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": region(),
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The `s3dock` binary, if built: `S3DOCK_BIN`, else beside this test's own binary
/// (`cargo test --workspace` builds it there).
fn s3dock_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3DOCK_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join(format!("s3dock{}", std::env::consts::EXE_SUFFIX));
    bin.is_file().then_some(bin)
}

/// Who makes the tag and promote writes: the `s3dock` binary with a profile saying
/// `events = "lambda"`, or (when the binary is not built) the core registry in the same mode.
enum Writer {
    Cli { bin: PathBuf, config: PathBuf, _dir: tempfile::TempDir },
    Registry(Registry),
}

impl Writer {
    fn new(bucket: &str, endpoint: &str, store: Arc<dyn ObjectStore>, clock: Arc<dyn Clock>) -> Writer {
        let Some(bin) = s3dock_binary() else {
            if s3dock_testkit::in_ci() {
                panic!(
                    "the pipeline drives tag and promote through the s3dock binary in CI: build it (cargo test --workspace)"
                );
            }
            eprintln!(
                "pipeline: the s3dock binary is not built (cargo build -p s3dock); tag and promote go through the core registry instead"
            );
            return Writer::Registry(Registry::new(store, clock, "pipeline-user", EventMode::Lambda));
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("config.toml");
        let text = format!(
            "default_profile = \"lambda\"\n[profiles.lambda]\nstore = \"s3://{bucket}\"\nregion = \"{}\"\nendpoint = \"{endpoint}\"\npath_style = true\nevents = \"lambda\"\nuser = \"pipeline-user\"\n",
            region()
        );
        std::fs::write(&config, text).expect("write the CLI config");
        Writer::Cli { bin, config, _dir: dir }
    }

    async fn run(&self, args: &[&str]) {
        let Writer::Cli { bin, config, .. } = self else { unreachable!("only the CLI runs commands") };
        let out = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("S3DOCK_STORE")
            .env_remove("S3DOCK_PROFILE")
            .output()
            .await
            .expect("run s3dock");
        assert!(
            out.status.success(),
            "s3dock {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn tag(&self, image: &str, version: &str) {
        match self {
            Writer::Cli { .. } => self.run(&["tag", image, version]).await,
            Writer::Registry(r) => drop(r.tag(&img(image), &ver(version), false).await.unwrap()),
        }
    }

    async fn promote_version(&self, app_name: &str, version: &str, environment: &str) {
        match self {
            Writer::Cli { .. } => self.run(&["promote", app_name, version, environment]).await,
            Writer::Registry(r) => {
                drop(r.promote(&PromoteSource::Version(app(app_name), ver(version)), &env(environment)).await.unwrap())
            }
        }
    }

    async fn promote_image(&self, image: &str, environment: &str) {
        match self {
            Writer::Cli { .. } => self.run(&["promote", image, environment]).await,
            Writer::Registry(r) => drop(r.promote(&PromoteSource::Image(img(image)), &env(environment)).await.unwrap()),
        }
    }
}

struct Pipeline {
    functions: Vec<Function>,
    events: SqsQueue,
    events_arn: String,
    invocation: Invocation,
}

impl Pipeline {
    /// Runs one batch through every function; deletes what all acknowledged. Returns how many
    /// messages were received.
    async fn step(&self, messages: Vec<ReceivedMessage>) -> usize {
        if messages.is_empty() {
            return 0;
        }
        let event = lambda_sqs_event(&messages, &self.events_arn);
        let mut failed = HashSet::new();
        for f in &self.functions {
            let resp = f.handle(&event, &self.invocation).await.expect("an SQS batch never fails as a whole");
            for item in resp["batchItemFailures"].as_array().expect("a partial batch response") {
                failed.insert(item["itemIdentifier"].as_str().unwrap_or_default().to_owned());
            }
        }
        for m in &messages {
            if !failed.contains(&m.id) {
                self.events.delete(&m.receipt_handle).await.expect("delete an acknowledged message");
            }
        }
        messages.len()
    }

    async fn receive(&self) -> Vec<ReceivedMessage> {
        let opts = ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_secs(1),
            visibility_timeout: Some(Duration::from_secs(30)),
        };
        self.events.receive(&opts).await.expect("receive notifications")
    }

    /// Drives the queue until `done` holds and the queue is quiet, within a bounded time.
    async fn drain_until(&self, store: &dyn ObjectStore, want: &[(&str, usize)]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = self.step(self.receive().await).await;
            let counts = audit_counts(store).await;
            let done = want.iter().all(|(t, n)| counts.get(*t).copied().unwrap_or(0) >= *n);
            if done && got == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the pipeline did not settle: audit {counts:?}, want {want:?}");
        }
    }
}

async fn audit_counts(store: &dyn ObjectStore) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in list_all(store, "audit/").await.unwrap() {
        let (bytes, _) = read_small(store, &o.key, 1 << 20).await.unwrap().unwrap();
        let rec: docs::AuditRecord = docs::decode(o.key.as_str(), &bytes).unwrap();
        *counts.entry(rec.event_type).or_insert(0) += 1;
    }
    counts
}

async fn audit_of(store: &dyn ObjectStore, event_type: &str) -> Vec<docs::AuditRecord> {
    let mut out = Vec::new();
    for o in list_all(store, "audit/").await.unwrap() {
        let (bytes, _) = read_small(store, &o.key, 1 << 20).await.unwrap().unwrap();
        let rec: docs::AuditRecord = docs::decode(o.key.as_str(), &bytes).unwrap();
        if rec.event_type == event_type {
            out.push(rec);
        }
    }
    out
}

/// Every message now in an agent's queue (deleting them), bounded.
async fn agent_messages(q: &SqsQueue) -> Vec<PromotionMessage> {
    let mut out = Vec::new();
    let opts = ReceiveOptions { max_messages: 10, wait: Duration::from_secs(2), visibility_timeout: None };
    for _ in 0..5 {
        let batch = q.receive(&opts).await.expect("receive from an agent queue");
        if batch.is_empty() {
            break;
        }
        for m in batch {
            out.push(docs::decode("message", m.body.as_bytes()).expect("a valid promotion message"));
            q.delete(&m.receipt_handle).await.unwrap();
        }
    }
    out
}

#[tokio::test]
async fn s3_notifications_through_sqs_to_the_functions() {
    let Some(endpoint) = endpoint() else { return };
    let id = suffix();
    let bucket = format!("s3dock-fn-{id}");
    let s3 = s3_client(&endpoint).await;
    s3.create_bucket().bucket(&bucket).send().await.expect("create the test bucket");
    // Versioning, so events carry a versionId and the handlers read the version they announce.
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build())
        .send()
        .await
        .expect("enable versioning");

    let sqs = SqsClient::connect(&SqsConfig {
        region: Some(region()),
        endpoint: Some(endpoint.clone()),
        ..Default::default()
    })
    .await
    .expect("SQS client");
    let dlq =
        sqs.create_queue(&format!("s3dock-events-dlq-{id}"), &QueueSettings::default()).await.expect("create the DLQ");
    let dlq_arn = dlq.arn().await.expect("DLQ ARN");
    let settings = QueueSettings {
        visibility_timeout: Some(Duration::from_secs(30)),
        dead_letter: Some(DeadLetter { queue_arn: dlq_arn, max_receive_count: 3 }),
        ..Default::default()
    };
    let events = sqs.create_queue(&format!("s3dock-events-{id}"), &settings).await.expect("create the event queue");
    let events_arn = events.arn().await.expect("queue ARN");
    assert_eq!(sqs.queue_named(&format!("s3dock-events-{id}")).await.unwrap().url(), events.url());
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(notifications(&events_arn, ""))
        .send()
        .await
        .expect("configure notifications");

    // S3 announces a new configuration with an s3:TestEvent: drain it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_test_event = false;
    while !saw_test_event && Instant::now() < deadline {
        let opts = ReceiveOptions { max_messages: 10, wait: Duration::from_secs(2), visibility_timeout: None };
        for m in events.receive(&opts).await.unwrap() {
            saw_test_event |= m.body.contains("s3:TestEvent");
            events.delete(&m.receipt_handle).await.unwrap();
        }
    }
    assert!(saw_test_event, "LocalStack sends an s3:TestEvent when notifications are configured");

    // Two agents with their own queues, registered as the host agent would.
    let store_cfg = {
        let mut s = Settings::new("pipeline");
        s.s3_endpoint = Some(endpoint.clone());
        s.region = region();
        s.s3_config(&bucket).unwrap()
    };
    let store: Arc<dyn ObjectStore> = Arc::new(S3Store::connect(store_cfg).await.unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut agent_queues = Vec::new();
    for agent in ["host-a", "host-b"] {
        let q = sqs.create_queue(&format!("s3dock-agent-{agent}-{id}"), &QueueSettings::default()).await.unwrap();
        let reg = AgentRegistration {
            schema_version: Some(SCHEMA_VERSION),
            agent_id: AgentId::parse(agent).unwrap(),
            app_name: app("myapp"),
            environment: env("production"),
            queue_url: Some(q.url().to_owned()),
            host: format!("{agent}.internal"),
            last_heartbeat: clock.now(),
            state: None,
            version: None,
        };
        let key = layout::agent(&reg.app_name, &reg.environment, &reg.agent_id);
        store.put_bytes(&key, Bytes::from(docs::encode(&reg)), Precondition::None).await.unwrap();
        agent_queues.push(q);
    }

    // The writes, as `s3dock push` / `tag` / `promote` make them with `events = "lambda"`.
    // Images are seeded as a push writes them (archive, then metadata).
    let writer = Writer::new(&bucket, &endpoint, store.clone(), clock.clone());
    seed_image(&*store, &img(A1), b"the archive of A1", clock.now()).await.unwrap();
    // A corrupted upload: metadata whose checksum does not match the archive beside it.
    let bad = img("myapp:20250720-1045-def5678");
    let meta = seed_image(&MemoryStore::new(), &bad, b"what was meant to be uploaded", clock.now()).await.unwrap();
    let (bad_archive, bad_meta) =
        (layout::image_archive(&bad.app, &bad.tag), layout::image_metadata(&bad.app, &bad.tag));
    store
        .put_bytes(&bad_archive, Bytes::from_static(b"what was actually uploaded!!"), Precondition::None)
        .await
        .unwrap();
    store.put_bytes(&bad_meta, Bytes::from(docs::encode(&meta)), Precondition::None).await.unwrap();
    writer.tag(A1, "1.0.0+build.1").await;
    writer.promote_version("myapp", "1.0.0+build.1", "production").await;
    assert!(list_all(&*store, "audit/").await.unwrap().is_empty(), "events = lambda: the writer audits nothing");

    let mut fn_settings = Settings::new("s3dock-pipeline");
    fn_settings.bucket = Some(bucket.clone());
    fn_settings.s3_endpoint = Some(endpoint.clone());
    fn_settings.sqs_endpoint = Some(endpoint.clone());
    fn_settings.region = region();
    let mut functions = Vec::new();
    for kind in [Kind::VerifyUpload, Kind::RecordTag, Kind::PromotionFanout] {
        let backend = AwsBackend::connect(&fn_settings, kind == Kind::PromotionFanout).await.expect("backend");
        functions.push(Function::new(kind, fn_settings.clone(), Arc::new(backend), clock.clone()));
    }
    let pipeline = Pipeline {
        functions,
        events: events.clone(),
        events_arn: events_arn.clone(),
        invocation: Invocation {
            request_id: "pipeline".into(),
            function_arn: Some(format!("arn:aws:lambda:{}:000000000000:function:s3dock-pipeline", region())),
        },
    };
    pipeline.drain_until(&*store, &[("push", 1), ("reject", 1), ("tag", 1), ("promotion", 1)]).await;

    let counts = audit_counts(&*store).await;
    assert_eq!(
        counts,
        BTreeMap::from([("push".into(), 1), ("reject".into(), 1), ("tag".into(), 1), ("promotion".into(), 1)])
    );
    let push = &audit_of(&*store, "push").await[0];
    assert_eq!(push.details["image_reference"], A1);
    assert_eq!(push.recorded_by.as_deref(), Some("lambda"));
    assert!(push.principal.is_some(), "LocalStack reports a principal");
    let reject = &audit_of(&*store, "reject").await[0];
    assert_eq!(reject.details["path"], bad_meta.as_str());
    assert!(store.head(&bad_meta).await.unwrap().is_none() && store.head(&bad_archive).await.unwrap().is_none());
    let archived: Vec<String> =
        list_all(&*store, "archive/").await.unwrap().iter().map(|o| o.key.to_string()).collect();
    assert_eq!(archived.len(), 2, "{archived:?}");
    assert!(archived.iter().all(|k| k.contains("myapp-20250720-1045-def5678-archived-on-")), "{archived:?}");
    let tag = &audit_of(&*store, "tag").await[0];
    assert_eq!(tag.details["version"], "v1.0.0+build.1");
    assert_eq!(tag.user, "pipeline-user", "the writer's user, from the tag document");
    let promotion = &audit_of(&*store, "promotion").await[0];
    assert_eq!(promotion.details["notified"], json!(["host-a", "host-b"]));
    for q in &agent_queues {
        let got = agent_messages(q).await;
        assert_eq!(got.len(), 1, "{}: {got:?}", q.url());
        assert_eq!((got[0].image.as_str(), got[0].pointer_seq), (A1, 1));
    }

    // Two quick promotions whose events are handled newest first: the late, older one is
    // audited but announces nothing.
    seed_image(&*store, &img(A2), b"the archive of A2", clock.now()).await.unwrap();
    writer.promote_image(A2, "production").await;
    writer.promote_image(A1, "production").await;
    let pointer = ObjectKey::parse("pointers/myapp/production.json").unwrap();
    let current_version =
        s3.head_object().bucket(&bucket).key(pointer.as_str()).send().await.unwrap().version_id().map(str::to_owned);
    assert!(current_version.is_some(), "a versioned bucket names the version");
    let mut pointer_events = Vec::new();
    let mut others = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pointer_events.len() < 2 && Instant::now() < deadline {
        for m in pipeline.receive().await {
            if m.body.contains("pointers/") { pointer_events.push(m) } else { others.push(m) }
        }
    }
    assert_eq!(pointer_events.len(), 2, "two pointer events");
    pipeline.step(others).await;
    pointer_events.sort_by_key(|m| !current_version.as_deref().is_some_and(|v| m.body.contains(v)));
    for m in pointer_events {
        pipeline.step(vec![m]).await;
    }
    pipeline.drain_until(&*store, &[("push", 2), ("promotion", 3)]).await;
    let seqs: Vec<u64> =
        audit_of(&*store, "promotion").await.iter().map(|r| r.details["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), 3, "{seqs:?}");
    for q in &agent_queues {
        let got = agent_messages(q).await;
        assert_eq!(got.len(), 1, "only the current promotion is announced: {got:?}");
        assert_eq!((got[0].image.as_str(), got[0].pointer_seq), (A1, 3));
    }

    // Nothing was left to retry, nothing reached the DLQ.
    let quick = ReceiveOptions { max_messages: 10, wait: Duration::from_secs(1), visibility_timeout: None };
    assert!(events.receive(&quick).await.unwrap().is_empty());
    assert!(dlq.receive(&quick).await.unwrap().is_empty());
    for q in agent_queues.iter().chain([&events, &dlq]) {
        // Best effort: LocalStack keeps queues until it stops otherwise.
        let _ = q.delete_queue().await;
    }
}
