//! What the functions do with bad input, hostile registrations, redeliveries, late events and
//! failing stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Duration;
use s3dock_core::events::Outcome;
use s3dock_core::layout;
use s3dock_core::registry::PromoteSource;
use s3dock_core::store::faults::{Faulty, Op};
use s3dock_core::store::{MemoryStore, StoreError};
use s3dock_functions::{Invocation, InvocationError, Kind, RecordResult};
use s3dock_testkit::put_raw;
use serde_json::json;

use crate::support::*;

const META: &str = "images/myapp/202507/myapp-20250721-2118-f7a5a27.json";
const ARCHIVE: &str = "images/myapp/202507/myapp-20250721-2118-f7a5a27.tar.gz";
const POINTER: &str = "pointers/myapp/production.json";

fn one(bucket_key: &str) -> serde_json::Value {
    sqs_event(&[s3_body("b", bucket_key, None)])
}

#[tokio::test]
async fn malformed_metadata_is_rejected_and_audited() {
    let bed = Bed::new();
    bed.seed(A1).await;
    put_raw(&*bed.store, META, "{\"checksum\": \"oops\", ").await.unwrap();
    let report = bed.function(Kind::VerifyUpload).process(&one(META), &invocation()).await.unwrap();
    let RecordResult::Handled(Outcome::Rejected { reason, archived_to, .. }) = &report.records[0].result else {
        panic!("{:?}", report.records[0].result)
    };
    assert!(reason.contains("not valid s3dock JSON"), "{reason}");
    assert_eq!(archived_to.len(), 2, "metadata and archive both archived");
    assert!(bed.keys("images/").await.is_empty());
    let rejects = bed.audit_of("reject").await;
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].1.principal.as_deref(), Some("AWS:AIDATESTPRINCIPAL"));
    assert_eq!(report.response().unwrap(), json!({"batchItemFailures": []}), "a reject is acknowledged");
}

#[tokio::test]
async fn metadata_whose_archive_is_missing_is_rejected() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.store.delete(&s3dock_core::names::ObjectKey::parse(ARCHIVE).unwrap()).await.unwrap();
    let report = bed.function(Kind::VerifyUpload).process(&one(META), &invocation()).await.unwrap();
    let RecordResult::Handled(Outcome::Rejected { reason, archived_to, .. }) = &report.records[0].result else {
        panic!("{:?}", report.records[0].result)
    };
    assert!(reason.contains("missing"), "{reason}");
    assert_eq!(archived_to.len(), 1, "only the metadata existed");
    assert_eq!(bed.audit_of("reject").await.len(), 1);
    assert!(bed.audit_of("push").await.is_empty());
}

#[tokio::test]
async fn pointers_into_another_app_or_to_an_unknown_one_notify_nobody() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.seed("other:20250721-2118-f7a5a27").await;
    bed.register("a1", "http://127.0.0.1:4566/000000000000/agent-a1").await;
    let pointer = |path: &str| {
        format!(
            r#"{{"target_type":"image","target_path":"{path}","promoted_at":"2025-07-22T10:00:00Z","promoted_by":"mallory","git_hash":"","git_time":"","seq":7}}"#
        )
    };
    let f = bed.function(Kind::PromotionFanout);
    for target in [
        // Into another app that exists.
        "images/other/202507/other-20250721-2118-f7a5a27.tar.gz",
        // Into an app the bucket has never heard of.
        "images/ghost/202507/ghost-20250721-2118-f7a5a27.tar.gz",
        // Not an image at all.
        "agents/myapp/production/a1.json",
    ] {
        put_raw(&*bed.store, POINTER, pointer(target)).await.unwrap();
        let report = f.process(&one(POINTER), &invocation()).await.unwrap();
        let RecordResult::Handled(Outcome::Rejected { reason, archived_to, .. }) = &report.records[0].result else {
            panic!("{target}: {:?}", report.records[0].result)
        };
        assert!(archived_to.is_empty(), "a pointer is live state: reported, not moved");
        assert!(!reason.is_empty());
    }
    // A pointer of an unknown app (no image, no agent): its image is not in the bucket, so it
    // is audited as a reject, and there is no one to tell.
    put_raw(
        &*bed.store,
        "pointers/ghost/production.json",
        pointer("images/ghost/202507/ghost-20250721-2118-f7a5a27.tar.gz"),
    )
    .await
    .unwrap();
    let report = f.process(&one("pointers/ghost/production.json"), &invocation()).await.unwrap();
    assert!(
        matches!(&report.records[0].result, RecordResult::Handled(Outcome::Rejected { reason, .. }) if reason.contains("not in the bucket")),
        "{:?}",
        report.records[0].result
    );
    assert!(bed.notifier.messages().is_empty(), "nobody notified: {:?}", bed.notifier.messages());
    assert_eq!(bed.audit_of("reject").await.len(), 4, "one reject per bad pointer write");
}

#[tokio::test]
async fn hostile_registrations_are_skipped() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.register("good", "http://127.0.0.1:4566/000000000000/agent-good").await;
    bed.register("good-aws", "https://sqs.us-east-1.amazonaws.com/000000000000/agent-good-aws").await;
    for (id, url) in [
        ("other-account", "https://sqs.us-east-1.amazonaws.com/999999999999/evil"),
        ("other-region", "https://sqs.eu-west-1.amazonaws.com/000000000000/evil"),
        ("other-host", "http://169.254.169.254:80/000000000000/latest"),
        ("malformed", "not a url"),
        ("query", "http://127.0.0.1:4566/000000000000/q?Action=DeleteQueue"),
        ("plain-http-aws", "http://sqs.us-east-1.amazonaws.com/000000000000/q"),
    ] {
        bed.register(id, url).await;
    }
    bed.registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    let report = bed.function(Kind::PromotionFanout).process(&one(POINTER), &invocation()).await.unwrap();
    let RecordResult::Handled(Outcome::Recorded { notified, .. }) = &report.records[0].result else {
        panic!("{:?}", report.records[0].result)
    };
    assert_eq!(notified, &["good", "good-aws"]);
    let queues: Vec<String> = bed.notifier.messages().into_iter().map(|(q, _)| q).collect();
    assert_eq!(
        queues,
        [
            "http://127.0.0.1:4566/000000000000/agent-good",
            "https://sqs.us-east-1.amazonaws.com/000000000000/agent-good-aws"
        ]
    );
    let rec = &bed.audit_of("promotion").await[0].1;
    assert_eq!(rec.details["notified"], json!(["good", "good-aws"]));
}

#[tokio::test]
async fn ten_deliveries_one_record_one_message_per_agent() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.register("a1", "http://127.0.0.1:4566/000000000000/agent-a1").await;
    bed.register("a2", "http://127.0.0.1:4566/000000000000/agent-a2").await;
    bed.registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    let f = bed.function(Kind::PromotionFanout);
    let body = s3_body("b", POINTER, None);
    // Five in one batch, five more in separate invocations.
    let batch = sqs_event(&vec![body.clone(); 5]);
    let report = f.process(&batch, &invocation()).await.unwrap();
    assert_eq!(report.records.len(), 5);
    for _ in 0..5 {
        assert_eq!(
            f.handle(&sqs_event(std::slice::from_ref(&body)), &invocation()).await.unwrap(),
            json!({"batchItemFailures": []})
        );
    }
    let recorded =
        report.records.iter().filter(|r| matches!(r.result, RecordResult::Handled(Outcome::Recorded { .. }))).count();
    assert_eq!(recorded, 1);
    assert_eq!(bed.audit().await.len(), 1, "{:?}", bed.audit().await);
    let sent = bed.notifier.messages();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_ne!(sent[0].0, sent[1].0, "one message per agent");
}

/// A queue that answers after `delay`, as SQS does over the network, counting how many sends
/// are in flight at once.
#[derive(Debug)]
struct SlowQueues {
    rules: s3dock_aws::sqs::QueueRules,
    delay: std::time::Duration,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    sent: AtomicUsize,
}

#[async_trait::async_trait]
impl s3dock_core::events::Notifier for SlowQueues {
    fn check_queue(&self, queue_url: &str) -> Result<(), String> {
        self.rules.check(queue_url).map(|_| ())
    }
    async fn send(&self, _queue_url: &str, _body: &str) -> Result<(), s3dock_core::events::EventError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// 1,000 agents whose queues each take 10 ms to answer, as SQS over the network: one after the
/// other that is 10 s, the whole goal; the fan-out keeps a bounded number of sends in flight
/// instead (32 at a time: about 0.3 s; the bound below leaves a wide margin for a busy machine).
#[tokio::test]
async fn a_thousand_slow_agent_queues_are_notified_concurrently_within_the_goal() {
    let bed = Bed::new();
    bed.seed(A1).await;
    for i in 0..1000 {
        bed.register(&format!("host-{i:04}"), &format!("http://127.0.0.1:4566/000000000000/s3dock_agent-host-{i:04}"))
            .await;
    }
    bed.registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    let queues = Arc::new(SlowQueues {
        rules: s3dock_aws::sqs::QueueRules::new(ACCOUNT, REGION, Some("http://127.0.0.1:4566")).unwrap(),
        delay: std::time::Duration::from_millis(10),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        sent: AtomicUsize::new(0),
    });
    let backend = TestBackend { store: bed.store.clone(), notifier: queues.clone() };
    let f = s3dock_functions::Function::new(
        Kind::PromotionFanout,
        s3dock_functions::Settings::new("promotion-fanout"),
        Arc::new(backend),
        bed.clock.clone(),
    );
    let started = std::time::Instant::now();
    let report = f.process(&one(POINTER), &invocation()).await.unwrap();
    let took = started.elapsed();
    let RecordResult::Handled(Outcome::Recorded { notified, .. }) = &report.records[0].result else {
        panic!("{:?}", report.records[0].result)
    };
    assert_eq!(notified.len(), 1000);
    assert_eq!(queues.sent.load(Ordering::SeqCst), 1000, "one message per agent");
    let most = queues.most_in_flight.load(Ordering::SeqCst);
    assert!(most > 1 && most <= s3dock_core::events::FANOUT_CONCURRENCY, "{most} sends in flight at once");
    assert!(took < std::time::Duration::from_secs(4), "1,000 sends of 10 ms took {took:?}");
    // A second delivery finds the claim and sends nothing.
    f.process(&one(POINTER), &invocation()).await.unwrap();
    assert_eq!(queues.sent.load(Ordering::SeqCst), 1000, "a redelivery sends nothing");
}

#[tokio::test]
async fn an_older_pointer_event_after_a_newer_one_sends_nothing_stale() {
    let versioned = Arc::new(Versioned::new());
    let bed = Bed::over(versioned.clone());
    bed.seed(A1).await;
    bed.seed(A2).await;
    bed.register("a1", "http://127.0.0.1:4566/000000000000/agent-a1").await;
    bed.registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    bed.clock.advance(Duration::minutes(1));
    bed.registry.promote(&PromoteSource::Image(img(A2)), &env("production")).await.unwrap();
    let key = layout::pointer(&app("myapp"), &env("production"));
    let versions = crate::support::versions(&versioned, &key);
    assert_eq!(versions.len(), 2);
    let f = bed.function(Kind::PromotionFanout);
    // S3 delivered them out of order: the newer first, the older late.
    let newer = sqs_event(&[s3_body("b", POINTER, Some(&versions[1]))]);
    let older = sqs_event(&[s3_body("b", POINTER, Some(&versions[0]))]);
    let r = f.process(&newer, &invocation()).await.unwrap();
    assert!(
        matches!(&r.records[0].result, RecordResult::Handled(Outcome::Recorded { notified, .. }) if notified == &["a1"])
    );
    let r = f.process(&older, &invocation()).await.unwrap();
    let RecordResult::Handled(Outcome::Superseded { audit_key: Some(_), .. }) = &r.records[0].result else {
        panic!("{:?}", r.records[0].result)
    };
    let sent = bed.notifier.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].1.image.as_str(), sent[0].1.pointer_seq), (A2, 2));
    let promotions = bed.audit_of("promotion").await;
    let seqs: Vec<u64> = promotions.iter().map(|(_, r)| r.details["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2], "both promotions audited once");
}

fn retryable(key: &str) -> StoreError {
    StoreError::Other { message: format!("injected: S3 is busy reading {key}"), retryable: true }
}

#[tokio::test]
async fn partial_batch_failure_names_only_the_retryable_message() {
    let faulty = Arc::new(Faulty::new(MemoryStore::new()));
    let bed = Bed::over(faulty.clone());
    bed.seed(A1).await;
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        bed.registry.tag(&img(A1), &ver(v), false).await.unwrap();
    }
    // v1 fails once with a retryable error, v3 with a permanent one.
    faulty.fail(Op::Get, "tags/myapp/v1.0.0", 1, retryable);
    faulty.fail(Op::Get, "tags/myapp/v3.0.0", 1, |k| StoreError::Other {
        message: format!("injected: {k} refused for good"),
        retryable: false,
    });
    let batch = sqs_event(&[
        s3_body("b", "tags/myapp/v1.0.0.json", None),
        s3_body("b", "tags/myapp/v2.0.0.json", None),
        s3_body("b", "tags/myapp/v3.0.0.json", None),
        "{ not json".to_owned(),
    ]);
    let f = bed.function(Kind::RecordTag);
    let report = f.process(&batch, &invocation()).await.unwrap();
    assert!(matches!(&report.records[0].result, RecordResult::Failed(e) if e.retryable));
    assert!(matches!(&report.records[1].result, RecordResult::Handled(Outcome::Recorded { .. })));
    assert!(matches!(&report.records[2].result, RecordResult::Failed(e) if !e.retryable));
    assert!(matches!(&report.records[3].result, RecordResult::Unusable(why) if why.contains("not JSON")));
    assert_eq!(report.response().unwrap(), json!({"batchItemFailures": [{"itemIdentifier": "msg-0"}]}));
    assert_eq!(bed.audit_of("tag").await.len(), 1);

    // Redelivered, the failed message succeeds; the others would be no-ops.
    let resp = f.handle(&batch, &invocation()).await.unwrap();
    assert_eq!(resp, json!({"batchItemFailures": []}));
    assert_eq!(bed.audit_of("tag").await.len(), 3);
}

#[tokio::test]
async fn a_retryable_failure_fails_a_direct_invocation_after_every_record_ran() {
    let faulty = Arc::new(Faulty::new(MemoryStore::new()));
    let bed = Bed::over(faulty.clone());
    bed.seed(A1).await;
    bed.seed(A2).await;
    faulty.fail(Op::Get, "myapp-20250721-2118-f7a5a27.tar.gz", 1, retryable);
    let a1 = layout::image_metadata(&app("myapp"), &img(A1).tag).to_string();
    let a2 = layout::image_metadata(&app("myapp"), &img(A2).tag).to_string();
    let mut payload = serde_json::from_str::<serde_json::Value>(&s3_body("b", &a1, None)).unwrap();
    let second = serde_json::from_str::<serde_json::Value>(&s3_body("b", &a2, None)).unwrap();
    payload["Records"].as_array_mut().unwrap().push(second["Records"][0].clone());
    let f = bed.function(Kind::VerifyUpload);
    let err = f.handle(&payload, &invocation()).await.unwrap_err();
    assert!(matches!(err, InvocationError::Retryable { failed: 1, total: 2, .. }), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    assert_eq!(bed.audit_of("push").await.len(), 1, "the second record was handled anyway");
    // Lambda's retry of the invocation: the first now succeeds, the second is a duplicate.
    let resp = f.handle(&payload, &invocation()).await.unwrap();
    assert_eq!(resp["records"][0]["result"], "recorded");
    assert_eq!(resp["records"][1]["result"], "duplicate");
    assert_eq!(bed.audit_of("push").await.len(), 2);
    assert!(bed.audit_of("reject").await.is_empty(), "a store error is no reason to reject an upload");
}

#[tokio::test]
async fn the_fanout_needs_an_account_to_check_queues() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.register("a1", "http://127.0.0.1:4566/000000000000/agent-a1").await;
    bed.registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    let f = bed.function(Kind::PromotionFanout);
    let no_arn = Invocation { request_id: "r".into(), function_arn: None };
    let report = f.process(&one(POINTER), &no_arn).await.unwrap();
    assert!(
        matches!(&report.records[0].result, RecordResult::Failed(e) if e.retryable && e.message.contains("S3DOCK_ACCOUNT_ID"))
    );
    assert_eq!(report.response().unwrap(), json!({"batchItemFailures": [{"itemIdentifier": "msg-0"}]}));
    assert!(bed.audit().await.is_empty(), "the claim was not taken, so a later delivery still notifies");
    // The other functions need no account.
    bed.function(Kind::RecordTag).handle(&one(POINTER), &no_arn).await.unwrap();
}

#[tokio::test]
async fn unrecognized_payloads_fail_the_invocation() {
    let bed = Bed::new();
    let f = bed.function(Kind::VerifyUpload);
    for payload in [json!({"hello": "world"}), json!([1, 2]), json!({"Records": "x"})] {
        let e = f.handle(&payload, &invocation()).await.unwrap_err();
        assert!(matches!(e, InvocationError::Unrecognized { .. }), "{payload}: {e}");
    }
    let diag: lambda_runtime::Diagnostic = InvocationError::Unrecognized { detail: "x".into() }.into();
    assert_eq!(diag.error_type, "S3dock.UnrecognizedPayload");
}
