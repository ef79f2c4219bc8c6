//! Registry behaviour on the in-memory store with a pinned clock.

use std::sync::Arc;

use chrono::{TimeZone, Utc};

use super::*;
use crate::clock::ManualClock;
use crate::docs::{AgentRegistration, AgentState};
use crate::events::Outcome;
use crate::names::AgentId;
use crate::store::faults::{Faulty, IgnorePreconditions, Op};
use crate::store::{MemoryStore, StoreError, list_all};
use crate::testing::{RecordingNotifier, put_raw, seed_image};

fn app(s: &str) -> AppName {
    AppName::parse(s).unwrap()
}
fn env(s: &str) -> EnvName {
    EnvName::parse(s).unwrap()
}
fn img(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}
fn ver(s: &str) -> Version {
    Version::parse(s).unwrap()
}

struct Fixture {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    reg: Registry,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::with_page_size(3));
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    let reg = Registry::new(store.clone(), clock.clone(), "alice", EventMode::Inline);
    Fixture { store, clock, reg }
}

const A1: &str = "myapp:20250720-1045-def5678";
const A2: &str = "myapp:20250721-2118-f7a5a27";
const A3: &str = "myapp:20250722-0900-0a1b2c3";

async fn seed(f: &Fixture, refs: &[&str]) {
    for r in refs {
        seed_image(&*f.store, &img(r), format!("archive of {r}").as_bytes(), f.clock.now()).await.unwrap();
    }
}

async fn audit_keys(f: &Fixture) -> Vec<String> {
    list_all(&*f.store, "audit/").await.unwrap().into_iter().map(|o| o.key.to_string()).collect()
}

#[tokio::test]
async fn tag_is_immutable_unless_forced() {
    let f = fixture();
    seed(&f, &[A1, A2]).await;
    let t = f.reg.tag(&img(A2), &ver("v1.2.0"), false).await.unwrap();
    assert_eq!(t.change, Change::Created);
    assert_eq!(t.key.as_str(), "tags/myapp/v1.2.0.json");
    assert!(matches!(t.event, Some(Ok(Outcome::Recorded { .. }))), "{:?}", t.event);

    // Same image again: a no-op, spelled differently or not.
    let again = f.reg.tag(&img(A2), &ver("1.2.0"), false).await.unwrap();
    assert_eq!(again.change, Change::Unchanged);

    // Another image: refused, nothing written.
    let before = f.store.head(&t.key).await.unwrap().unwrap();
    let err = f.reg.tag(&img(A1), &ver("v1.2.0"), false).await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Conflict);
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(f.store.head(&t.key).await.unwrap().unwrap().etag, before.etag);

    // Forced: the old file is archived and the move recorded.
    f.clock.advance(Duration::minutes(1));
    let moved = f.reg.tag(&img(A1), &ver("v1.2.0"), true).await.unwrap();
    assert_eq!(moved.change, Change::Updated);
    assert_eq!(moved.previous.as_deref(), Some(A2));
    let archived = moved.archived_to.clone().unwrap();
    assert_eq!(archived.as_str(), "archive/myapp/202507/tag-v1.2.0-archived-on-20250722-1019.json");
    let old: TagDoc = docs::decode("a", &read_small(&*f.store, &archived, 1 << 20).await.unwrap().unwrap().0).unwrap();
    assert_eq!(old.source_image.as_deref(), Some(A2));
    let resolved = f.reg.resolve_version(&app("myapp"), &ver("v1.2.0")).await.unwrap();
    assert_eq!(resolved.record.image, img(A1));
    let tags: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("-tag-")).collect();
    assert_eq!(tags.len(), 2, "{tags:?}");
    let hist =
        f.reg.history(&app("myapp"), &HistoryQuery { types: vec!["tag".into()], ..Default::default() }).await.unwrap();
    let newest = hist[0].record.as_ref().unwrap();
    assert_eq!(newest.details["forced"], true);
    assert_eq!(newest.details["previous_target"], A2);
}

#[tokio::test]
async fn tag_refuses_missing_images_and_accepts_any_semver_out_of_order() {
    let f = fixture();
    seed(&f, &[A1, A2]).await;
    let err = f.reg.tag(&img(A3), &ver("v9.0.0"), false).await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::NotFound);
    assert!(err.to_string().contains("s3dock push"), "{err}");
    assert!(list_all(&*f.store, "tags/").await.unwrap().is_empty());

    for (r, v) in [(A2, "v1.2.0"), (A1, "v1.1.5"), (A2, "2.0.0-rc.1+build.7"), (A1, "v1.10.0"), (A1, "v1.2.0-beta")] {
        f.reg.tag(&img(r), &ver(v), false).await.unwrap();
    }
    let listed: Vec<String> =
        f.reg.list_tags(&app("myapp")).await.unwrap().iter().map(|t| t.version.canonical()).collect();
    assert_eq!(listed, ["v1.1.5", "v1.2.0-beta", "v1.2.0", "v1.10.0", "v2.0.0-rc.1+build.7"]);
}

#[tokio::test]
async fn promote_direct_and_via_tag_with_seq_and_previous() {
    let f = fixture();
    seed(&f, &[A1, A2]).await;
    let prod = env("production");
    let p1 = f.reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap();
    assert_eq!((p1.change, p1.seq, p1.attempts), (Change::Created, 1, 1));
    let again = f.reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap();
    assert_eq!(again.change, Change::Unchanged);

    f.reg.tag(&img(A2), &ver("v1.2.0"), false).await.unwrap();
    let p2 = f.reg.promote(&PromoteSource::Version(app("myapp"), ver("v1.2.0")), &prod).await.unwrap();
    assert_eq!((p2.change, p2.seq), (Change::Updated, 2));
    assert_eq!(p2.previous.as_deref(), Some(A1));
    let r = f.reg.resolve(&app("myapp"), &prod).await.unwrap();
    assert_eq!(r.record.image, img(A2));
    assert_eq!(r.version.as_deref(), Some("v1.2.0"));
    assert_eq!(r.chain[1], "tags/myapp/v1.2.0.json");

    // The pointer follows the tag: a forced move changes what production resolves to.
    f.reg.tag(&img(A1), &ver("v1.2.0"), true).await.unwrap();
    assert_eq!(f.reg.resolve(&app("myapp"), &prod).await.unwrap().record.image, img(A1));
}

#[tokio::test]
async fn same_image_same_minute_two_environments_two_records() {
    let f = fixture();
    seed(&f, &[A2]).await;
    f.reg.promote(&PromoteSource::Image(img(A2)), &env("staging")).await.unwrap();
    f.reg.promote(&PromoteSource::Image(img(A2)), &env("production")).await.unwrap();
    let promos: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("promotion")).collect();
    assert_eq!(
        promos,
        [
            "audit/myapp/202507/20250722-1018-promotion-f7a5a27-production-seq1.json",
            "audit/myapp/202507/20250722-1018-promotion-f7a5a27-staging-seq1.json"
        ]
    );
}

#[tokio::test]
async fn promote_refuses_missing_targets_and_writes_nothing() {
    let f = fixture();
    seed(&f, &[A1]).await;
    let e = f.reg.promote(&PromoteSource::Image(img(A3)), &env("production")).await.unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::NotFound);
    let e = f.reg.promote(&PromoteSource::Version(app("myapp"), ver("v3.0.0")), &env("production")).await.unwrap_err();
    assert!(e.to_string().contains("s3dock tag"), "{e}");
    assert!(list_all(&*f.store, "pointers/").await.unwrap().is_empty());
    assert!(audit_keys(&f).await.is_empty());
}

#[tokio::test]
async fn rollback_restores_the_previous_target() {
    let f = fixture();
    seed(&f, &[A1, A2]).await;
    let prod = env("production");
    let e = f.reg.rollback(&app("myapp"), &prod).await.unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::NotFound);
    f.reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap();
    let e = f.reg.rollback(&app("myapp"), &prod).await.unwrap_err();
    assert!(e.to_string().contains("no previous target"), "{e}");
    f.clock.advance(Duration::minutes(5));
    f.reg.promote(&PromoteSource::Image(img(A2)), &prod).await.unwrap();
    f.clock.advance(Duration::minutes(5));
    let rb = f.reg.rollback(&app("myapp"), &prod).await.unwrap();
    assert_eq!((rb.image.clone(), rb.seq, rb.change), (img(A1), 3, Change::Updated));
    assert_eq!(f.reg.resolve(&app("myapp"), &prod).await.unwrap().record.image, img(A1));
    let rollbacks: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("-rollback-")).collect();
    assert_eq!(rollbacks, ["audit/myapp/202507/20250722-1028-rollback-def5678-production-seq3.json"]);
    // Rolling back again toggles back.
    assert_eq!(f.reg.rollback(&app("myapp"), &prod).await.unwrap().image, img(A2));
}

#[tokio::test]
async fn bad_pointers_explain_themselves() {
    let f = fixture();
    seed(&f, &[A1]).await;
    seed_image(&*f.store, &img("other:20250720-1045-def5678"), b"x", f.clock.now()).await.unwrap();
    let a = app("myapp");
    put_raw(&*f.store, "pointers/myapp/broken.json", "{\"target_type\": \"image\", ").await.unwrap();
    let e = f.reg.resolve(&a, &env("broken")).await.unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::Integrity);
    assert!(e.to_string().contains("pointers/myapp/broken.json"), "{e}");

    let pointer = |target_type: &str, path: &str| {
        format!(
            r#"{{"target_type":"{target_type}","target_path":"{path}","promoted_at":"2025-07-21T00:00:00Z","promoted_by":"x","git_hash":"","git_time":""}}"#
        )
    };
    put_raw(
        &*f.store,
        "pointers/myapp/foreign.json",
        pointer("image", "images/other/202507/other-20250720-1045-def5678.tar.gz"),
    )
    .await
    .unwrap();
    let e = f.reg.resolve(&a, &env("foreign")).await.unwrap_err();
    assert!(e.to_string().contains("belongs to app other"), "{e}");

    put_raw(&*f.store, "tags/myapp/v1.0.0.json", pointer("tag", "tags/myapp/v2.0.0.json")).await.unwrap();
    put_raw(&*f.store, "tags/myapp/v2.0.0.json", pointer("tag", "tags/myapp/v1.0.0.json")).await.unwrap();
    put_raw(&*f.store, "pointers/myapp/cyclic.json", pointer("tag", "tags/myapp/v1.0.0.json")).await.unwrap();
    let e = f.reg.resolve(&a, &env("cyclic")).await.unwrap_err();
    assert!(e.to_string().contains("pointer cycle"), "{e}");

    put_raw(&*f.store, "pointers/myapp/escape.json", pointer("image", "../../etc/passwd")).await.unwrap();
    assert_eq!(f.reg.resolve(&a, &env("escape")).await.unwrap_err().kind(), crate::ErrorKind::Integrity);

    let e = f.reg.resolve(&a, &env("nowhere")).await.unwrap_err();
    assert!(e.to_string().contains("s3dock promote"), "{e}");

    // Promoting over a malformed pointer is refused rather than guessed at.
    let e = f.reg.promote(&PromoteSource::Image(img(A1)), &env("broken")).await.unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::Integrity);

    // list envs reports each environment's problem without failing the listing.
    let envs = f.reg.list_envs(&a).await.unwrap();
    assert_eq!(envs.len(), 4);
    assert!(envs.iter().all(|e| e.image.is_err()));
}

#[tokio::test]
async fn reads_a_bucket_written_by_the_original_tool() {
    let f = fixture();
    // The original pushed in August an image committed in July, and wrote no schema version.
    let archive = b"legacy archive";
    let d = crate::digest::digest_reader(&archive[..]).unwrap();
    put_raw(&*f.store, "images/myapp/202508/myapp-20250721-2118-f7a5a27.tar.gz", &archive[..]).await.unwrap();
    put_raw(
        &*f.store,
        "images/myapp/202508/myapp-20250721-2118-f7a5a27.json",
        format!(
            r#"{{"checksum":"{}","size":{},"created_at":"2025-08-01T10:00:00.123+02:00","git_hash":"f7a5a27","git_time":"20250721-2118","image_tag":"myapp:20250721-2118-f7a5a27","app_name":"myapp"}}"#,
            d.md5, d.size
        ),
    )
    .await
    .unwrap();
    put_raw(
        &*f.store,
        "tags/myapp/1.2.0.json",
        r#"{"target_type":"image","target_path":"images/myapp/202508/myapp-20250721-2118-f7a5a27.tar.gz","promoted_at":"2025-08-01T10:00:00Z","promoted_by":"bob","git_hash":"f7a5a27","git_time":"20250721-2118","source_image":"myapp:20250721-2118-f7a5a27"}"#,
    )
    .await
    .unwrap();
    put_raw(
        &*f.store,
        "pointers/myapp/production.json",
        r#"{"target_type":"tag","target_path":"tags/myapp/1.2.0.json","promoted_at":"2025-08-01T10:00:00Z","promoted_by":"bob","git_hash":"f7a5a27","git_time":"20250721-2118","source_tag":"1.2.0"}"#,
    )
    .await
    .unwrap();
    let r = f.reg.resolve(&app("myapp"), &env("production")).await.unwrap();
    assert_eq!(r.record.image, img(A2));
    assert_eq!(r.record.metadata_key.as_str(), "images/myapp/202508/myapp-20250721-2118-f7a5a27.json");
    // v1.2.0 finds the tag the original wrote as 1.2.0; re-tagging the same image is a no-op.
    assert_eq!(f.reg.tag(&img(A2), &ver("v1.2.0"), false).await.unwrap().change, Change::Unchanged);
    // A new promotion of the legacy pointer (seq 0) starts the chain at 1.
    seed(&f, &[A3]).await;
    let p = f.reg.promote(&PromoteSource::Image(img(A3)), &env("production")).await.unwrap();
    assert_eq!(p.seq, 1);
    assert_eq!(p.previous.as_deref(), Some("tags/myapp/1.2.0.json"));
}

#[tokio::test]
async fn a_store_ignoring_preconditions_is_refused_for_pointers() {
    let store = Arc::new(IgnorePreconditions(MemoryStore::new()));
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    seed_image(&*store, &img(A1), b"x", clock.now()).await.unwrap();
    let reg = Registry::new(store.clone(), clock, "alice", EventMode::Inline);
    let e = reg.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap_err();
    assert!(matches!(e, Error::Store(StoreError::PreconditionsIgnored { .. })), "{e}");
    for op in ["PutObject If-None-Match", "CompleteMultipartUpload If-None-Match", "CopyObject If-None-Match"] {
        assert!(e.to_string().contains(op), "{e}");
    }
    assert!(list_all(&*store, "pointers/myapp/").await.unwrap().is_empty());
    assert!(list_all(&*store, "probe/").await.unwrap().is_empty(), "the probe cleans up");
    // Every command that relies on conditions is guarded, not only promote.
    let e = reg.tag(&img(A1), &ver("v1.0.0"), false).await.unwrap_err();
    assert!(matches!(e, Error::Store(StoreError::PreconditionsIgnored { .. })), "{e}");
    let e = reg.plan_push(&img(A2), &format!("sha256:{}", "c".repeat(64)), false).await.unwrap_err();
    assert!(matches!(e, Error::Store(StoreError::PreconditionsIgnored { .. })), "{e}");
    let e = reg.cleanup(Some(&app("myapp")), 0, Duration::zero(), false).await.unwrap_err();
    assert!(matches!(e, Error::Store(StoreError::PreconditionsIgnored { .. })), "{e}");
    assert!(list_all(&*store, "tags/").await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_promoters_chain_seq_without_gaps() {
    let f = fixture();
    let refs = [A1, A2, A3];
    seed(&f, &refs).await;
    let reg = Arc::new(f.reg);
    let prod = env("production");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let reg = reg.clone();
        let prod = prod.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0;
            for round in 0..20 {
                let target = img(refs[(i + round) % 3]);
                let out = reg.promote(&PromoteSource::Image(target), &prod).await.unwrap();
                if out.change != Change::Unchanged {
                    wins += 1;
                }
            }
            wins
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let pointer: PointerDoc = docs::decode(
        "p",
        &read_small(&*f.store, &layout::pointer(&app("myapp"), &prod), 1 << 20).await.unwrap().unwrap().0,
    )
    .unwrap();
    assert_eq!(pointer.seq(), total as u64, "every update bumped seq exactly once");
    let seqs: BTreeSet<u64> = list_all(&*f.store, "audit/")
        .await
        .unwrap()
        .iter()
        .map(|o| o.key.to_string())
        .filter_map(|k| k.rsplit_once("-seq").and_then(|(_, s)| s.trim_end_matches(".json").parse().ok()))
        .collect();
    assert_eq!(seqs, (1..=total as u64).collect::<BTreeSet<_>>(), "one audit record per seq, no gap");
}

#[tokio::test]
async fn fan_out_is_idempotent_and_skips_stale_or_foreign_agents() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    let notifier = Arc::new(RecordingNotifier { refuse_containing: Some("999999999999".into()), ..Default::default() });
    seed_image(&*store, &img(A1), b"x", clock.now()).await.unwrap();
    let reg = Registry::new(store.clone(), clock.clone(), "alice", EventMode::Lambda);
    let prod = env("production");
    let register = |id: &str, queue: &str, age_min: i64| AgentRegistration {
        schema_version: Some(SCHEMA_VERSION),
        agent_id: AgentId::parse(id).unwrap(),
        app_name: app("myapp"),
        environment: prod.clone(),
        queue_url: Some(queue.into()),
        host: format!("{id}.example"),
        last_heartbeat: clock.now() - Duration::minutes(age_min),
        state: Some(AgentState::default()),
        version: None,
    };
    for (id, q, age) in [
        ("a1", "https://sqs.us-east-1.amazonaws.com/111111111111/a1", 1),
        ("a2", "https://sqs.us-east-1.amazonaws.com/111111111111/a2", 2),
        ("old", "https://sqs.us-east-1.amazonaws.com/111111111111/old", 60),
        ("evil", "https://sqs.us-east-1.amazonaws.com/999999999999/evil", 1),
    ] {
        let reg_doc = register(id, q, age);
        let key = layout::agent(&app("myapp"), &prod, &reg_doc.agent_id);
        store.put_bytes(&key, Bytes::from(docs::encode(&reg_doc)), Precondition::None).await.unwrap();
    }
    put_raw(&*store, "agents/myapp/production/garbage.json", "not json").await.unwrap();
    reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap();
    assert!(list_all(&*store, "audit/").await.unwrap().is_empty(), "events = lambda: the CLI writes no audit");

    let handlers =
        Handlers::new(store.clone(), clock.clone(), Origin::Lambda, "lambda").with_notifier(notifier.clone());
    let key = layout::pointer(&app("myapp"), &prod);
    let ev = ObjectEvent {
        key: Some(key.clone()),
        raw_key: key.to_string(),
        event_name: "ObjectCreated:Put".into(),
        ..Default::default()
    };
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        outcomes.push(handlers.handle(&ev).await.unwrap());
    }
    assert!(
        matches!(&outcomes[0], Outcome::Recorded { notified, .. } if notified == &["a1", "a2"]),
        "{:?}",
        outcomes[0]
    );
    assert!(outcomes[1..].iter().all(|o| matches!(o, Outcome::Duplicate { .. })));
    assert_eq!(list_all(&*store, "audit/").await.unwrap().len(), 1);
    let sent = notifier.messages();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let msg: docs::PromotionMessage = docs::decode("m", sent[0].1.as_bytes()).unwrap();
    assert_eq!((msg.image.as_str(), msg.pointer_seq), (A1, 1));
}

#[tokio::test]
async fn an_old_pointer_event_sends_nothing_stale() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    let notifier = Arc::new(RecordingNotifier::default());
    seed_image(&*store, &img(A1), b"x", clock.now()).await.unwrap();
    seed_image(&*store, &img(A2), b"y", clock.now()).await.unwrap();
    let reg = Registry::new(store.clone(), clock.clone(), "alice", EventMode::Lambda);
    let prod = env("production");
    let reg_doc = AgentRegistration {
        schema_version: Some(SCHEMA_VERSION),
        agent_id: AgentId::parse("a1").unwrap(),
        app_name: app("myapp"),
        environment: prod.clone(),
        queue_url: Some("https://sqs.us-east-1.amazonaws.com/111111111111/a1".into()),
        host: "h".into(),
        last_heartbeat: clock.now(),
        state: None,
        version: None,
    };
    store
        .put_bytes(
            &layout::agent(&app("myapp"), &prod, &reg_doc.agent_id),
            Bytes::from(docs::encode(&reg_doc)),
            Precondition::None,
        )
        .await
        .unwrap();
    reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap();
    let key = layout::pointer(&app("myapp"), &prod);
    let old = store.head(&key).await.unwrap().unwrap();
    clock.advance(Duration::minutes(1));
    reg.promote(&PromoteSource::Image(img(A2)), &prod).await.unwrap();
    let new = store.head(&key).await.unwrap().unwrap();
    let handlers =
        Handlers::new(store.clone(), clock.clone(), Origin::Lambda, "lambda").with_notifier(notifier.clone());
    let event = |info: &ObjectInfo| ObjectEvent {
        key: Some(key.clone()),
        raw_key: key.to_string(),
        event_name: "ObjectCreated:Put".into(),
        etag: Some(info.etag.0.clone()),
        version_id: info.version_id.clone(),
        ..Default::default()
    };
    // The newer event first, then the older one late, naming its own version.
    handlers.handle(&event(&new)).await.unwrap();
    let late = handlers.handle(&event(&old)).await.unwrap();
    assert!(matches!(late, Outcome::Superseded { audit_key: Some(_), .. }), "{late:?}");
    let sent = notifier.messages();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].1.contains(A2), "only the current image is announced: {sent:?}");
    assert_eq!(list_all(&*store, "audit/").await.unwrap().len(), 2, "both promotions audited");
}

#[tokio::test]
async fn cleanup_keeps_newest_and_referenced_and_never_touches_archive_or_audit() {
    let f = fixture();
    let refs = [
        "myapp:20250701-0000-0000001",
        "myapp:20250702-0000-0000002",
        "myapp:20250703-0000-0000003",
        "myapp:20250704-0000-0000004",
        "myapp:20250705-0000-0000005",
        "myapp:20250706-0000-0000006",
    ];
    seed(&f, &refs).await;
    f.reg.tag(&img(refs[0]), &ver("v1.0.0"), false).await.unwrap();
    f.reg.promote(&PromoteSource::Image(img(refs[1])), &env("staging")).await.unwrap();
    f.reg.promote(&PromoteSource::Image(img(refs[2])), &env("staging")).await.unwrap();
    // An interrupted push (archive, no metadata) from long ago, and a fresh one.
    put_raw(&*f.store, "images/myapp/202506/myapp-20250601-0000-00000aa.tar.gz", "partial").await.unwrap();
    let audit_before = audit_keys(&f).await;
    let archive_before = f.reg.list_archive(&app("myapp")).await.unwrap();

    let dry = f.reg.cleanup(Some(&app("myapp")), 2, Duration::zero(), true).await.unwrap();
    let doomed: Vec<&str> = dry.apps[0].deleted.iter().map(|d| d.image.as_str()).collect();
    assert_eq!(doomed, ["myapp:20250704-0000-0000004"], "{:#?}", dry.apps[0]);
    assert_eq!(f.reg.list_images(&app("myapp"), None).await.unwrap().len(), 7, "dry run deletes nothing");
    let reasons: Vec<String> = dry.apps[0].kept.iter().map(|k| format!("{} {}", k.image, k.reason)).collect();
    assert!(reasons.iter().any(|r| r.contains("0000001") && r.contains("tag v1.0.0")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("0000002") && r.contains("rollback target")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("00000aa") && r.contains("unfinished")), "{reasons:?}");

    // The store stamps objects with the wall clock; a day and more later the partial push
    // counts as abandoned.
    f.clock.set(Utc::now() + Duration::days(2));
    let real = f.reg.cleanup(Some(&app("myapp")), 2, DEFAULT_CLEANUP_GRACE, false).await.unwrap();
    let deleted: BTreeSet<&str> = real.apps[0].deleted.iter().map(|d| d.image.as_str()).collect();
    assert_eq!(deleted, BTreeSet::from(["myapp:20250704-0000-0000004", "myapp:20250601-0000-00000aa"]));
    let left: Vec<String> =
        f.reg.list_images(&app("myapp"), None).await.unwrap().iter().map(|e| e.image.to_string()).collect();
    assert_eq!(left.len(), 5);
    assert_eq!(f.reg.list_archive(&app("myapp")).await.unwrap(), archive_before);
    let audit_after = audit_keys(&f).await;
    assert!(audit_before.iter().all(|k| audit_after.contains(k)));
    assert!(audit_after.iter().any(|k| k.contains("-cleanup-")));
}

#[tokio::test]
async fn cleanup_refuses_when_a_reference_is_unreadable() {
    let f = fixture();
    seed(&f, &[A1, A2, A3]).await;
    put_raw(&*f.store, "tags/myapp/v1.0.0.json", "{oops").await.unwrap();
    let e = f.reg.cleanup(Some(&app("myapp")), 0, Duration::zero(), false).await.unwrap_err();
    assert!(e.to_string().contains("refusing to clean up"), "{e}");
    assert_eq!(f.reg.list_images(&app("myapp"), None).await.unwrap().len(), 3);
}

#[tokio::test]
async fn history_newest_first_filtered() {
    let f = fixture();
    seed(&f, &[A1, A2]).await;
    f.reg.promote(&PromoteSource::Image(img(A1)), &env("staging")).await.unwrap();
    f.clock.advance(Duration::days(20));
    f.reg.tag(&img(A2), &ver("v1.0.0"), false).await.unwrap();
    f.clock.advance(Duration::minutes(1));
    f.reg.promote(&PromoteSource::Image(img(A2)), &env("production")).await.unwrap();
    f.clock.advance(Duration::minutes(1));
    f.reg.promote(&PromoteSource::Image(img(A2)), &env("staging")).await.unwrap();
    let all = f.reg.history(&app("myapp"), &HistoryQuery::default()).await.unwrap();
    let types: Vec<String> = all.iter().map(|h| h.record.as_ref().unwrap().event_type.clone()).collect();
    assert_eq!(types, ["promotion", "promotion", "tag", "promotion"]);
    let staging =
        f.reg.history(&app("myapp"), &HistoryQuery { env: Some(env("staging")), ..Default::default() }).await.unwrap();
    assert_eq!(staging.len(), 2);
    assert!(staging[0].record.as_ref().unwrap().timestamp > staging[1].record.as_ref().unwrap().timestamp);
    let limited = f.reg.history(&app("myapp"), &HistoryQuery { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(limited.len(), 1);
}

#[tokio::test]
async fn lists_apps_images_and_months() {
    let f = fixture();
    seed(&f, &[A1, A2, "other:20250601-1200-abcdef0"]).await;
    let apps: Vec<String> = f.reg.list_apps().await.unwrap().iter().map(|a| a.to_string()).collect();
    assert_eq!(apps, ["myapp", "other"]);
    let images = f.reg.list_images(&app("myapp"), None).await.unwrap();
    assert_eq!(images.iter().map(|e| e.image.to_string()).collect::<Vec<_>>(), [A2, A1]);
    assert!(images.iter().all(|e| e.is_complete()));
    assert_eq!(f.reg.list_images(&app("myapp"), Some("202506")).await.unwrap().len(), 0);
    assert!(f.reg.list_images(&app("myapp"), Some("2025-06")).await.is_err());
}

#[tokio::test]
async fn verify_upload_rejects_a_corrupt_archive() {
    let f = fixture();
    seed(&f, &[A1]).await;
    let image = img(A1);
    f.store.corrupt(&layout::image_archive(&image.app, &image.tag), "garbage");
    let handlers = Handlers::new(f.store.clone(), f.clock.clone(), Origin::Lambda, "lambda");
    let key = layout::image_metadata(&image.app, &image.tag);
    let ev = ObjectEvent {
        key: Some(key.clone()),
        raw_key: key.to_string(),
        principal: Some("AWS:AIDAEXAMPLE".into()),
        ..Default::default()
    };
    let out = handlers.handle(&ev).await.unwrap();
    let Outcome::Rejected { archived_to, reason, deleted, .. } = out else { panic!("{out:?}") };
    assert!(reason.contains("size"), "{reason}");
    assert!(deleted, "nothing references it");
    assert_eq!(archived_to.len(), 2);
    assert!(archived_to[0].as_str().contains("-rejected-"), "{archived_to:?}");
    assert!(f.store.head(&key).await.unwrap().is_none());
    assert!(f.store.head(&layout::image_archive(&image.app, &image.tag)).await.unwrap().is_none());
    // A redelivery finds nothing left to do.
    assert!(matches!(handlers.handle(&ev).await.unwrap(), Outcome::Superseded { audit_key: None, .. }));
    let rejects: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("-reject-")).collect();
    assert_eq!(rejects.len(), 1);
}

#[tokio::test]
async fn verify_upload_records_a_good_push_once() {
    let f = fixture();
    seed(&f, &[A1]).await;
    let image = img(A1);
    let handlers = Handlers::new(f.store.clone(), f.clock.clone(), Origin::Lambda, "lambda");
    let key = layout::image_metadata(&image.app, &image.tag);
    let ev = ObjectEvent {
        key: Some(key.clone()),
        raw_key: key.to_string(),
        principal: Some("AWS:AIDAEXAMPLE".into()),
        ..Default::default()
    };
    for _ in 0..3 {
        handlers.handle(&ev).await.unwrap();
    }
    let hist = f.reg.history(&image.app, &HistoryQuery::default()).await.unwrap();
    assert_eq!(hist.len(), 1);
    let rec = hist[0].record.as_ref().unwrap();
    assert_eq!(
        (rec.event_type.as_str(), rec.user.as_str(), rec.principal.as_deref()),
        ("push", "tester", Some("AWS:AIDAEXAMPLE"))
    );
    assert_eq!(rec.details["verified"], "download");
}

/// Counts `prepare` calls, and fails them.
#[derive(Debug, Default)]
struct UnpreparedNotifier {
    prepared: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::events::Notifier for UnpreparedNotifier {
    async fn prepare(&self) -> Result<(), crate::events::EventError> {
        self.prepared.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(crate::events::EventError::permanent("no account id"))
    }
    fn check_queue(&self, _: &str) -> Result<(), String> {
        panic!("check_queue before a successful prepare")
    }
    async fn send(&self, _: &str, _: &str) -> Result<(), crate::events::EventError> {
        panic!("send before a successful prepare")
    }
}

#[tokio::test]
async fn the_notifier_is_prepared_only_for_queues_and_its_failure_keeps_the_audit() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    seed_image(&*store, &img(A1), b"x", clock.now()).await.unwrap();
    seed_image(&*store, &img(A2), b"y", clock.now()).await.unwrap();
    let notifier = Arc::new(UnpreparedNotifier::default());
    let reg = Registry::new(store.clone(), clock.clone(), "alice", EventMode::Inline).with_notifier(notifier.clone());
    let prod = env("production");
    // An agent without a queue (it only reconciles): nothing to prepare.
    let mut reg_doc = AgentRegistration {
        schema_version: Some(SCHEMA_VERSION),
        agent_id: AgentId::parse("a1").unwrap(),
        app_name: app("myapp"),
        environment: prod.clone(),
        queue_url: None,
        host: "h".into(),
        last_heartbeat: clock.now(),
        state: None,
        version: None,
    };
    let key = layout::agent(&app("myapp"), &prod, &reg_doc.agent_id);
    store.put_bytes(&key, Bytes::from(docs::encode(&reg_doc)), Precondition::None).await.unwrap();
    let p = reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap();
    assert!(matches!(p.event, Some(Ok(Outcome::Recorded { ref notified, .. })) if notified.is_empty()), "{p:?}");
    assert_eq!(notifier.prepared.load(std::sync::atomic::Ordering::SeqCst), 0, "lazy: no queue, no lookup");

    // With a queue, the notifier is prepared once; its failure skips the messages, not the record.
    reg_doc.queue_url = Some("https://sqs.us-east-1.amazonaws.com/111111111111/a1".into());
    store.put_bytes(&key, Bytes::from(docs::encode(&reg_doc)), Precondition::None).await.unwrap();
    let p = reg.promote(&PromoteSource::Image(img(A2)), &prod).await.unwrap();
    assert!(matches!(p.event, Some(Ok(Outcome::Recorded { ref notified, .. })) if notified.is_empty()), "{p:?}");
    assert_eq!(notifier.prepared.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(list_all(&*store, "audit/").await.unwrap().len(), 2, "both promotions audited");
}

// ------------------------------------------------------------------ protocol safety
//
// Each test below is named after a defect that destroyed data or misreported an outcome, and
// fails without its fix.

fn lambda_handlers(store: Arc<dyn ObjectStore>, clock: Arc<ManualClock>) -> Handlers {
    Handlers::new(store, clock, Origin::Lambda, "verify-upload")
}

/// The event S3 sends for the current version of `key`.
async fn event_for(store: &dyn ObjectStore, key: &ObjectKey) -> ObjectEvent {
    let info = store.head(key).await.unwrap().unwrap();
    ObjectEvent {
        key: Some(key.clone()),
        raw_key: key.to_string(),
        event_name: "ObjectCreated:Put".into(),
        etag: Some(info.etag.0.clone()),
        version_id: info.version_id.clone(),
        ..Default::default()
    }
}

async fn push_bytes(reg: &Registry, image: &ImageRef, id: char, body: &'static [u8], force: bool) {
    let image_id = format!("sha256:{}", id.to_string().repeat(64));
    let facts = crate::push::PushFacts {
        image_id: image_id.clone(),
        git_hash: format!("{}{}", image.tag.hash7(), "0".repeat(33)),
        git_time: image.tag.time_str(),
        ..Default::default()
    };
    match reg.plan_push(image, &image_id, force).await.unwrap() {
        crate::push::PushPlan::Upload(plan) => {
            reg.push_archive(image, &facts, crate::store::reader_from_bytes(body), plan).await.unwrap();
        }
        crate::push::PushPlan::Skip { .. } => panic!("expected an upload"),
    }
}

#[tokio::test]
async fn a_late_verify_event_never_deletes_the_current_image() {
    // Push, re-push the same tag with other bytes, handle the second push's event, then the
    // first push's event arrives late naming the first metadata version.
    let f = fixture();
    let reg = Registry::new(f.store.clone(), f.clock.clone(), "ci", EventMode::Lambda);
    let image = img(A2);
    let meta_key = layout::image_metadata(&image.app, &image.tag);
    push_bytes(&reg, &image, 'a', b"first build of the commit", false).await;
    let first = event_for(&*f.store, &meta_key).await;
    f.clock.advance(Duration::minutes(1));
    push_bytes(&reg, &image, 'b', b"second, different build", false).await;
    let second = event_for(&*f.store, &meta_key).await;
    let handlers = lambda_handlers(f.store.clone(), f.clock.clone());
    assert!(matches!(handlers.handle(&second).await.unwrap(), Outcome::Recorded { .. }));
    let before = f.reg.image(&image).await.unwrap();
    let late = handlers.handle(&first).await.unwrap();
    assert!(matches!(late, Outcome::Superseded { audit_key: Some(_), .. }), "{late:?}");
    let after = f.reg.image(&image).await.unwrap();
    assert_eq!(after.metadata, before.metadata, "the current image is untouched");
    assert!(f.store.head(&after.archive_key).await.unwrap().is_some());
    let rejects: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("-reject-")).collect();
    assert!(rejects.is_empty(), "{rejects:?}");
    // Both pushes are on record, once each.
    let pushes: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("-push-")).collect();
    assert_eq!(pushes.len(), 2, "{pushes:?}");
}

#[tokio::test]
async fn a_document_of_a_newer_schema_is_refused_retryably_never_destroyed() {
    let f = fixture();
    seed(&f, &[A1]).await;
    let image = img(A1);
    let meta_key = layout::image_metadata(&image.app, &image.tag);
    let (bytes, _) = read_small(&*f.store, &meta_key, 1 << 20).await.unwrap().unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["schema_version"] = serde_json::json!(99);
    f.store.put_bytes(&meta_key, Bytes::from(serde_json::to_vec(&json).unwrap()), Precondition::None).await.unwrap();
    let tag_key = layout::tag(&image.app, &ver("v1.0.0"));
    put_raw(
        &*f.store,
        tag_key.as_str(),
        format!(r#"{{"schema_version":99,"target_type":"image","target_path":"{}","promoted_at":"2025-07-21T00:00:00Z","promoted_by":"x","git_hash":"","git_time":""}}"#, layout::image_archive(&image.app, &image.tag)),
    )
    .await
    .unwrap();
    let handlers = lambda_handlers(f.store.clone(), f.clock.clone());
    for key in [&meta_key, &tag_key] {
        let e = handlers.handle(&event_for(&*f.store, key).await).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("upgrade the functions"), "{e}");
        assert!(f.store.head(key).await.unwrap().is_some(), "{key} is left where it is");
    }
    assert!(f.reg.list_archive(&image.app).await.unwrap().is_empty());
    assert!(audit_keys(&f).await.is_empty());
}

#[tokio::test]
async fn a_rejected_upload_that_is_referenced_stays_and_is_audited_once() {
    let f = fixture();
    seed(&f, &[A1]).await;
    let image = img(A1);
    f.reg.promote(&PromoteSource::Image(image.clone()), &env("production")).await.unwrap();
    let archive = layout::image_archive(&image.app, &image.tag);
    f.store.corrupt(&archive, "bit rot");
    let meta_key = layout::image_metadata(&image.app, &image.tag);
    let ev = event_for(&*f.store, &meta_key).await;
    let handlers = lambda_handlers(f.store.clone(), f.clock.clone());
    for _ in 0..3 {
        f.clock.advance(Duration::minutes(7));
        let out = handlers.handle(&ev).await.unwrap();
        let Outcome::Rejected { deleted, .. } = out else { panic!("{out:?}") };
        assert!(!deleted, "production runs it: it stays");
    }
    assert!(f.store.head(&meta_key).await.unwrap().is_some() && f.store.head(&archive).await.unwrap().is_some());
    let rejects: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("-reject-")).collect();
    assert_eq!(rejects.len(), 1, "redeliveries name the same record, whatever the time: {rejects:?}");
    let archived = f.reg.list_archive(&image.app).await.unwrap();
    assert_eq!(archived.len(), 2, "one copy of each object, not one per delivery");
    let rec =
        f.reg.history(&image.app, &HistoryQuery { types: vec!["reject".into()], ..Default::default() }).await.unwrap();
    assert_eq!(rec[0].record.as_ref().unwrap().details["referenced_by"][0], "environment production");
}

#[tokio::test]
async fn a_lost_response_is_reported_as_the_write_it_was() {
    let store = Arc::new(Faulty::new(MemoryStore::new()));
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    let notifier = Arc::new(RecordingNotifier::default());
    let reg = Registry::new(store.clone(), clock.clone(), "alice", EventMode::Inline).with_notifier(notifier.clone());
    for r in [A1, A2] {
        seed_image(store.inner(), &img(r), r.as_bytes(), clock.now()).await.unwrap();
    }
    let prod = env("production");
    let agent = AgentRegistration {
        schema_version: Some(SCHEMA_VERSION),
        agent_id: AgentId::parse("web-1").unwrap(),
        app_name: app("myapp"),
        environment: prod.clone(),
        queue_url: Some("https://sqs.us-east-1.amazonaws.com/111111111111/web-1".into()),
        host: "web-1".into(),
        last_heartbeat: clock.now(),
        state: None,
        version: None,
    };
    let key = layout::agent(&app("myapp"), &prod, &agent.agent_id);
    store.inner().put_bytes(&key, Bytes::from(docs::encode(&agent)), Precondition::None).await.unwrap();

    // Promote: the pointer write lands, its answer is lost, the SDK's retry gets 412.
    store.lose_response(Op::PutBytes, "pointers/myapp/production", 1);
    let p = reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap();
    assert_eq!((p.change, p.seq), (Change::Created, 1), "not 'unchanged'");
    assert!(matches!(p.event, Some(Ok(Outcome::Recorded { ref notified, .. })) if notified == &["web-1"]), "{p:?}");
    // The audit write of the fan-out loses its answer too: the claim is still ours.
    store.lose_response(Op::PutBytes, "audit/", 1);
    store.lose_response(Op::PutBytes, "pointers/myapp/production", 1);
    let p = reg.promote(&PromoteSource::Image(img(A2)), &prod).await.unwrap();
    assert_eq!((p.change, p.seq), (Change::Updated, 2));
    assert!(matches!(p.event, Some(Ok(Outcome::Recorded { ref notified, .. })) if notified == &["web-1"]), "{p:?}");
    assert_eq!(notifier.messages().len(), 2, "one message per promotion");

    // Rollback: applied, answer lost; reported as done, not as a conflict.
    store.lose_response(Op::PutBytes, "pointers/myapp/production", 1);
    let rb = reg.rollback(&app("myapp"), &prod).await.unwrap();
    assert_eq!((rb.change, rb.seq, rb.image.clone()), (Change::Updated, 3, img(A1)));

    // Tag: created, answer lost.
    store.lose_response(Op::PutBytes, "tags/myapp/v1.0.0", 1);
    let t = reg.tag(&img(A1), &ver("v1.0.0"), false).await.unwrap();
    assert_eq!(t.change, Change::Created);
    assert!(matches!(t.event, Some(Ok(Outcome::Recorded { .. }))), "{:?}", t.event);

    // Push: the multipart completion lands, its answer is lost.
    store.lose_response(Op::PutStream, "images/", 1);
    push_bytes(&reg, &img("myapp:20250723-1000-ccccccc"), 'c', b"new image", false).await;
    let rec = reg.image(&img("myapp:20250723-1000-ccccccc")).await.unwrap();
    assert_eq!(rec.metadata.image_id, Some(format!("sha256:{}", "c".repeat(64))));
    // And the metadata write's answer is lost on a re-push.
    store.lose_response(Op::PutBytes, "images/", 1);
    push_bytes(&reg, &img("myapp:20250723-1000-ccccccc"), 'd', b"rebuilt image", false).await;
    let rec = reg.image(&img("myapp:20250723-1000-ccccccc")).await.unwrap();
    assert_eq!(rec.metadata.image_id, Some(format!("sha256:{}", "d".repeat(64))));

    let promos: Vec<String> = list_all(&*store, "audit/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .filter(|k| k.contains("-promotion-") || k.contains("-rollback-"))
        .collect();
    assert_eq!(promos.len(), 3, "one record per seq: {promos:?}");
}

#[tokio::test]
async fn tag_force_on_a_bare_legacy_key_moves_the_pointers_that_follow_it() {
    let f = fixture();
    seed(&f, &[A1, A2]).await;
    let archive = |r: &str| layout::image_archive(&img(r).app, &img(r).tag).to_string();
    put_raw(
        &*f.store,
        "tags/myapp/1.2.0.json",
        format!(r#"{{"target_type":"image","target_path":"{}","promoted_at":"2025-07-01T00:00:00Z","promoted_by":"go","git_hash":"","git_time":""}}"#, archive(A1)),
    )
    .await
    .unwrap();
    put_raw(
        &*f.store,
        "pointers/myapp/production.json",
        r#"{"target_type":"tag","target_path":"tags/myapp/1.2.0.json","promoted_at":"2025-07-01T00:00:00Z","promoted_by":"go","git_hash":"","git_time":""}"#,
    )
    .await
    .unwrap();
    let moved = f.reg.tag(&img(A2), &ver("v1.2.0"), true).await.unwrap();
    assert_eq!(moved.key.as_str(), "tags/myapp/1.2.0.json", "moved where it lives");
    assert_eq!(f.reg.resolve(&app("myapp"), &env("production")).await.unwrap().record.image, img(A2));
    assert!(f.store.head(&moved.key).await.unwrap().is_some());
}

#[tokio::test]
async fn cleanup_and_a_promotion_never_race_into_a_missing_image() {
    let f = fixture();
    seed(&f, &[A1, A2, A3]).await;
    f.clock.advance(Duration::days(3));
    let prod = env("production");
    // A promotion holds A1 (as it would between its checks and its pointer write): cleanup spares it.
    let hold = lease::hold(&*f.store, &*f.clock, &img(A1), "promoter").await.unwrap();
    let report = f.reg.cleanup(Some(&app("myapp")), 0, Duration::zero(), false).await.unwrap();
    assert!(report.apps[0].spared.contains(&A1.to_string()), "{:#?}", report.apps[0]);
    assert!(f.reg.image(&img(A1)).await.is_ok());
    hold.release(&*f.store).await;
    // A deletion in progress (its claim taken) makes a promotion refuse instead of landing.
    let Ok(tomb) = lease::claim(&*f.store, &*f.clock, &img(A1), "cleanup").await.unwrap() else { panic!("claimed") };
    let e = f.reg.promote(&PromoteSource::Image(img(A1)), &prod).await.unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("being deleted"), "{e}");
    assert!(list_all(&*f.store, "pointers/").await.unwrap().is_empty());
    tomb.release(&*f.store).await;
    // Every deletion is audited, one record per image, in Lambda mode too.
    let lambda = Registry::new(f.store.clone(), f.clock.clone(), "ops", EventMode::Lambda);
    let report = lambda.cleanup(Some(&app("myapp")), 0, Duration::zero(), false).await.unwrap();
    assert_eq!(report.apps[0].deleted.len(), 1, "A1, the only one left: {:#?}", report.apps[0]);
    let cleanups: Vec<String> = audit_keys(&f).await.into_iter().filter(|k| k.contains("-cleanup-")).collect();
    assert_eq!(cleanups.len(), 3, "A2 and A3 earlier, A1 now: {cleanups:?}");
}

#[tokio::test]
async fn cleanup_spares_fresh_pushes_of_old_commits() {
    let f = fixture();
    // Old commits (their tags are weeks old) pushed just now.
    seed(&f, &["myapp:20250601-0000-0000001", "myapp:20250602-0000-0000002"]).await;
    let report = f.reg.cleanup(Some(&app("myapp")), 0, DEFAULT_CLEANUP_GRACE, false).await.unwrap();
    assert!(report.apps[0].deleted.is_empty(), "{:#?}", report.apps[0]);
    assert!(report.apps[0].kept.iter().all(|k| k.reason.contains("pushed less than 24h ago")));
    f.clock.advance(Duration::hours(25));
    let report = f.reg.cleanup(Some(&app("myapp")), 0, DEFAULT_CLEANUP_GRACE, false).await.unwrap();
    assert_eq!(report.apps[0].deleted.len(), 2);
}

#[tokio::test]
async fn a_hostile_seq_cannot_overflow() {
    let f = fixture();
    seed(&f, &[A1, A2]).await;
    for (seq, what) in
        [(u64::MAX.to_string(), "beyond any real history"), (docs::MAX_SEQ.to_string(), "beyond any real history")]
    {
        put_raw(
            &*f.store,
            "pointers/myapp/production.json",
            format!(r#"{{"target_type":"image","target_path":"{}","promoted_at":"2025-07-01T00:00:00Z","promoted_by":"x","git_hash":"","git_time":"","seq":{seq}}}"#, layout::image_archive(&img(A1).app, &img(A1).tag)),
        )
        .await
        .unwrap();
        let e = f.reg.promote(&PromoteSource::Image(img(A2)), &env("production")).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Integrity, "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
}
