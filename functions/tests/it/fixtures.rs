//! Real event JSON (LocalStack, moto, the AWS documentation's structure) through the
//! functions' entry point, against an in-memory bucket.

use s3dock_core::events::Outcome;
use s3dock_core::registry::PromoteSource;
use s3dock_functions::{Kind, RecordResult, Settings};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn verify_upload_on_localstack_and_aws_events() {
    let bed = Bed::new();
    bed.seed(A1).await;
    let f = bed.function(Kind::VerifyUpload);
    let report = f.process(&fixture("localstack-metadata.json"), &invocation()).await.unwrap();
    assert_eq!(report.records.len(), 1);
    let r = &report.records[0];
    assert_eq!(r.key, "images/myapp/202507/myapp-20250721-2118-f7a5a27.json");
    assert_eq!(r.bucket.as_deref(), Some("fixture-capture-27452"));
    assert!(matches!(&r.result, RecordResult::Handled(Outcome::Recorded { .. })), "{:?}", r.result);
    let pushes = bed.audit_of("push").await;
    assert_eq!(pushes.len(), 1);
    let rec = &pushes[0].1;
    assert_eq!(rec.principal.as_deref(), Some("AIDAJDPLRKLG7UEXAMPLE"), "the principal comes from userIdentity");
    assert_eq!((rec.recorded_by.as_deref(), rec.details["verified"].as_str()), (Some("lambda"), Some("download")));
    assert_eq!(rec.details["image_reference"], A1);

    // The same upload announced in AWS's own format: a duplicate, nothing new written.
    let resp = f.handle(&fixture("aws-docs-metadata.json"), &invocation()).await.unwrap();
    assert_eq!(resp["records"][0]["result"], "duplicate", "{resp}");
    assert_eq!(bed.audit().await.len(), 1);
}

#[tokio::test]
async fn record_tag_with_a_plus_in_the_version() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.registry.tag(&img(A1), &ver("1.0.0+build.1"), false).await.unwrap();
    assert!(bed.audit().await.is_empty(), "events = lambda: the registry wrote no audit");
    let f = bed.function(Kind::RecordTag);
    let report = f.process(&fixture("localstack-tag-plus.json"), &invocation()).await.unwrap();
    let r = &report.records[0];
    assert_eq!(r.key, "tags/myapp/v1.0.0+build.1.json", "%2B decodes to +");
    assert!(matches!(&r.result, RecordResult::Handled(Outcome::Recorded { .. })), "{:?}", r.result);
    let tags = bed.audit_of("tag").await;
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].1.details["version"], "v1.0.0+build.1");
    assert_eq!(tags[0].1.user, "alice", "the tag document's author");
}

#[tokio::test]
async fn record_tag_under_a_prefix_with_space_and_plus() {
    // AWS encodes the space of `team a/x+y/` as `+` and the `+` as `%2B`.
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.registry.tag(&img(A1), &ver("2.0.0-rc.1+build.7"), false).await.unwrap();
    let mut settings = Settings::new("record-tag");
    settings.prefix = "team a/x+y/".into();
    let f = bed.function_with(Kind::RecordTag, settings.clone());
    let report = f.process(&fixture("aws-docs-prefixed-tag.json"), &invocation()).await.unwrap();
    let r = &report.records[0];
    assert_eq!(r.key, "team a/x+y/tags/myapp/v2.0.0-rc.1+build.7.json");
    assert!(matches!(&r.result, RecordResult::Handled(Outcome::Recorded { .. })), "{:?}", r.result);
    let rec = &bed.audit_of("tag").await[0].1;
    assert_eq!(rec.principal.as_deref(), Some("AWS:AIDAEXAMPLEUSERID"));

    // Without the prefix configured, the same event is outside the layout: skipped.
    let f = bed.function(Kind::RecordTag);
    let report = f.process(&fixture("aws-docs-prefixed-tag.json"), &invocation()).await.unwrap();
    assert!(matches!(&report.records[0].result, RecordResult::Skipped(_)), "{:?}", report.records[0].result);
    // A configured bucket that is not the event's: skipped too.
    settings.bucket = Some("another-bucket".into());
    let f = bed.function_with(Kind::RecordTag, settings);
    let report = f.process(&fixture("aws-docs-prefixed-tag.json"), &invocation()).await.unwrap();
    assert!(matches!(&report.records[0].result, RecordResult::Skipped(why) if why.contains("amzn-s3-demo-bucket")));
    assert_eq!(bed.audit_of("tag").await.len(), 1);
}

#[tokio::test]
async fn promotion_fanout_direct_sns_wrapped_and_prefixed() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.register("a1", "http://127.0.0.1:4566/000000000000/agent-a1").await;
    bed.register("a2", "http://127.0.0.1:4566/queue/us-east-1/000000000000/agent-a2").await;
    bed.registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    let f = bed.function(Kind::PromotionFanout);
    let report = f.process(&fixture("localstack-pointer.json"), &invocation()).await.unwrap();
    let RecordResult::Handled(Outcome::Recorded { notified, .. }) = &report.records[0].result else {
        panic!("{:?}", report.records[0].result)
    };
    assert_eq!(notified, &["a1", "a2"]);
    let sent = bed.notifier.messages();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|(_, m)| m.image == A1 && m.pointer_seq == 1 && m.env.as_str() == "production"));

    // The same event through SNS -> SQS: acknowledged as a duplicate, nothing sent again.
    let resp = f.handle(&fixture("sqs-sns-wrapped.json"), &invocation()).await.unwrap();
    assert_eq!(resp, json!({"batchItemFailures": []}));
    assert_eq!(bed.notifier.messages().len(), 2);
    assert_eq!(bed.audit_of("promotion").await.len(), 1);

    // LocalStack's encoding of a prefix with a space (%20) and a plus (%2B).
    let mut settings = Settings::new("promotion-fanout");
    settings.prefix = "team a/x+y/".into();
    let f = bed.function_with(Kind::PromotionFanout, settings);
    let report = f.process(&fixture("localstack-prefixed-pointer.json"), &invocation()).await.unwrap();
    assert_eq!(report.records[0].key, "team a/x+y/pointers/myapp/production.json");
    assert!(matches!(&report.records[0].result, RecordResult::Handled(Outcome::Duplicate { .. })));
}

#[tokio::test]
async fn an_sqs_batch_of_every_kind_each_function_takes_its_own() {
    let bed = Bed::new();
    bed.seed(A1).await;
    bed.registry.tag(&img(A1), &ver("1.0.0+build.1"), false).await.unwrap();
    bed.registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    let batch = fixture("sqs-s3-events.json");
    for (kind, event_type) in
        [(Kind::VerifyUpload, "push"), (Kind::RecordTag, "tag"), (Kind::PromotionFanout, "promotion")]
    {
        let f = bed.function(kind);
        let report = f.process(&batch, &invocation()).await.unwrap();
        assert_eq!(report.records.len(), 5, "{kind:?}");
        let handled: Vec<&str> = report
            .records
            .iter()
            .filter(|r| matches!(r.result, RecordResult::Handled(_)))
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(handled.len(), 1, "{kind:?}: {handled:?}");
        assert!(report.records.iter().all(|r| r.message_id.is_some()));
        assert_eq!(report.response().unwrap(), json!({"batchItemFailures": []}));
        assert_eq!(bed.audit_of(event_type).await.len(), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn keys_outside_the_layout_are_skipped_in_every_dialect() {
    let bed = Bed::new();
    bed.seed(A1).await;
    let before = bed.keys("").await;
    for (name, keys) in [
        ("localstack-odd-key-example.json", vec!["incoming/x y+z.json"]),
        ("moto-odd-key-example.json", vec!["incoming/x y+z.json"]),
        ("localstack-odd-key.json", vec!["incoming/a b+c%d.json"]),
        (
            "aws-docs-odd-keys.json",
            vec![
                "incoming/Q3 report 100% final.json",
                "pointers/myapp/production.json",
                "pointers/myapp/staging area.json",
                "images/myapp/202507/myapp-20250721-2118-f7a5a27.tar.gz",
            ],
        ),
    ] {
        for kind in [Kind::VerifyUpload, Kind::RecordTag, Kind::PromotionFanout] {
            let report = bed.function(kind).process(&fixture(name), &invocation()).await.unwrap();
            let got: Vec<&str> = report.records.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(got, keys, "{name}");
            for r in &report.records {
                assert!(matches!(r.result, RecordResult::Skipped(_)), "{name} {kind:?} {}: {:?}", r.key, r.result);
            }
            assert!(bed.function(kind).handle(&fixture(name), &invocation()).await.is_ok());
        }
    }
    // The removal of a pointer is no creation; the reason says so.
    let report =
        bed.function(Kind::PromotionFanout).process(&fixture("aws-docs-odd-keys.json"), &invocation()).await.unwrap();
    assert!(matches!(&report.records[1].result, RecordResult::Skipped(why) if why.contains("ObjectRemoved:Delete")));
    assert_eq!(bed.keys("").await, before, "nothing written, nothing moved");
}

#[tokio::test]
async fn s3_test_events_are_acknowledged() {
    let bed = Bed::new();
    for kind in [Kind::VerifyUpload, Kind::RecordTag, Kind::PromotionFanout] {
        let f = bed.function(kind);
        let report = f.process(&fixture("sqs-test-event.json"), &invocation()).await.unwrap();
        assert!(matches!(&report.records[0].result, RecordResult::Skipped(why) if why.contains("s3:TestEvent")));
        assert_eq!(report.response().unwrap(), json!({"batchItemFailures": []}));
        // The bare test event, invoked by hand.
        let resp = f.handle(&fixture("localstack-test-event.json"), &invocation()).await.unwrap();
        assert_eq!(resp["records"][0]["result"], "skipped");
    }
    assert!(bed.keys("").await.is_empty());
}
