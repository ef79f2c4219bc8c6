//! `s3dock doctor`: each diagnosis on the store where it arises — a local directory, fake S3
//! endpoints (a missing bucket, refused credentials, one that ignores conditional writes) and
//! LocalStack.

use std::process::Command;
use std::sync::Arc;

use chrono::{Duration, Utc};
use s3dock_core::docs::{self, AgentRegistration, AgentState, SCHEMA_VERSION};
use s3dock_core::events::{Handlers, ObjectEvent, Origin};
use s3dock_core::names::{AgentId, AppName, EnvName, ObjectKey};
use s3dock_core::store::{LocalStore, ObjectStore};
use serde_json::Value;

use crate::fake_s3::CarelessS3;
use crate::s3::{FakeS3, client, list_keys, localstack, s3_sandbox, unique_bucket};
use crate::support::*;

/// The statuses of every check called `name`.
fn statuses(j: &Value, name: &str) -> Vec<String> {
    j["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["name"] == name)
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .collect()
}

/// The one check called `name`.
#[track_caller]
fn check<'a>(j: &'a Value, name: &str) -> &'a Value {
    let found: Vec<&Value> = j["checks"].as_array().unwrap().iter().filter(|c| c["name"] == name).collect();
    assert_eq!(found.len(), 1, "one check {name} in {j:#}");
    found[0]
}

#[track_caller]
fn summary<'a>(j: &'a Value, name: &str) -> &'a str {
    check(j, name)["summary"].as_str().unwrap()
}

/// A registration of `id` for myapp/production.
fn registration(id: &str, image: Option<&str>, heartbeat_age: Duration) -> AgentRegistration {
    AgentRegistration {
        schema_version: Some(SCHEMA_VERSION),
        agent_id: AgentId::parse(id).unwrap(),
        app_name: AppName::parse("myapp").unwrap(),
        environment: EnvName::parse("production").unwrap(),
        queue_url: None,
        host: format!("{id}.example"),
        last_heartbeat: Utc::now() - heartbeat_age,
        state: Some(AgentState {
            image: image.map(str::to_owned),
            health: Some(docs::Health::Healthy),
            ..AgentState::default()
        }),
        version: None,
    }
}

fn put_registration(dir: &std::path::Path, r: &AgentRegistration) {
    let key = format!("agents/{}/{}/{}.json", r.app_name, r.environment, r.agent_id);
    put_raw(dir, &key, std::str::from_utf8(&docs::encode(r)).unwrap());
}

/// Sets a local store file's modification time (what the store reports as last_modified).
fn age_file(dir: &std::path::Path, key: &str, ago: &str) {
    let ok = Command::new("touch").arg("-d").arg(ago).arg(dir.join(key)).status().unwrap().success();
    assert!(ok, "touch -d {ago} {key}");
}

#[test]
fn a_healthy_local_store_passes_and_nothing_is_written() {
    let sb = Sandbox::new();
    sb.seed(&[A1, A2]);
    sb.s3dock(&["tag", A2, "v1.2.0"]).ok();
    sb.s3dock(&["promote", "myapp", "v1.2.0", "production"]).ok();
    let before = snapshot(&sb.store);
    let j = sb.s3dock(&["doctor", "myapp", "--json"]).ok().json();
    assert_eq!(snapshot(&sb.store), before, "doctor writes nothing");
    for (name, want) in [
        ("config", "ok"),
        ("store", "ok"),
        ("credentials", "skipped"),
        ("bucket", "ok"),
        ("preconditions", "ok"),
        ("functions", "skipped"),
        ("agents", "skipped"),
        ("pointers, tags", "ok"),
    ] {
        assert_eq!(statuses(&j, name), [want], "{name}: {j:#}");
    }
    assert_eq!(j["failures"], 0);
    assert!(summary(&j, "config").contains("store file://") && summary(&j, "config").contains("(flag --store)"), "{j}");
    assert_eq!(check(&j, "config")["details"]["events"]["value"], "inline");
    let r = sb.s3dock(&["doctor", "myapp"]).ok();
    assert!(r.stdout.contains("ok       preconditions"), "{}", r.stdout);
    assert!(r.stdout.contains("no failures") || r.stdout.contains("all checks passed"), "{}", r.stdout);
}

#[test]
fn a_missing_bucket_fails_with_what_to_do() {
    let fake = FakeS3::start("404 Not Found", "NoSuchBucket", "The specified bucket does not exist");
    let sb = s3_sandbox(&fake.endpoint());
    let r = sb.run(&["--store", "s3://no-such-bucket", "doctor", "--json"]).code(6);
    let j = r.json();
    assert_eq!(check(&j, "bucket")["status"], "failure");
    assert!(summary(&j, "bucket").contains("bucket no-such-bucket does not exist"), "{j:#}");
    assert!(check(&j, "bucket")["fix"].as_str().unwrap().contains("create the bucket"), "{j:#}");
    assert_eq!(statuses(&j, "preconditions"), Vec::<String>::new(), "nothing runs against a missing bucket");
    let r = sb.run(&["--store", "s3://no-such-bucket", "doctor"]).code(6);
    assert!(r.stdout.contains("failure  bucket"), "{}", r.stdout);
}

#[test]
fn a_bad_configuration_fails_first_with_exit_2() {
    let sb = Sandbox::new();
    sb.write_config("[profiles.default]\nstroe = \"/x\"\n");
    let j = sb.run(&["doctor", "--json"]).code(2).json();
    assert_eq!(check(&j, "config")["status"], "failure", "{j:#}");
    assert!(summary(&j, "config").contains("stroe"), "{j:#}");
    assert_eq!(statuses(&j, "bucket"), Vec::<String>::new(), "nothing else runs without a configuration");
}

#[test]
fn refused_credentials_fail_the_identity_and_bucket_checks() {
    let fake =
        FakeS3::start("403 Forbidden", "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist");
    let sb = s3_sandbox(&fake.endpoint());
    let j = sb.run(&["--store", "s3://fake-bucket/team", "doctor", "--json"]).code(6).json();
    assert_eq!(check(&j, "credentials")["status"], "failure", "{j:#}");
    assert!(summary(&j, "credentials").contains("refused the credentials"), "{j:#}");
    assert_eq!(check(&j, "bucket")["status"], "failure");
    assert!(summary(&j, "bucket").contains("refused the credentials"), "{j:#}");
}

#[test]
fn an_endpoint_that_ignores_conditional_writes_is_refused() {
    let fake = CarelessS3::start();
    let sb = s3_sandbox(&fake.endpoint());
    let r = sb.run(&["--store", "s3://careless/team", "doctor", "--json"]).code(4);
    let j = r.json();
    assert_eq!(check(&j, "credentials")["status"], "ok", "{j:#}");
    assert!(summary(&j, "credentials").contains("arn:aws:iam::123456789012:user/careless"), "{j:#}");
    assert_eq!(check(&j, "bucket")["status"], "ok", "{j:#}");
    assert_eq!(check(&j, "versioning")["status"], "ok", "{j:#}");
    assert_eq!(check(&j, "preconditions")["status"], "failure", "{j:#}");
    assert!(summary(&j, "preconditions").contains("ignores the conditions of PutObject If-None-Match"), "{j:#}");
    assert!(fake.objects.lock().unwrap().is_empty(), "the probe removed its throw-away key");
}

/// A lambda-mode profile on the sandbox's local store.
fn lambda_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write_config(&format!("[profiles.default]\nstore = \"{}\"\nevents = \"lambda\"\n", sb.store.to_str().unwrap()));
    sb
}

#[test]
fn dead_functions_fail_and_recover_when_they_answer() {
    let sb = lambda_sandbox();
    sb.seed(&[A1, A2]);
    sb.run(&["tag", A2, "v1.2.0"]).ok();
    sb.run(&["promote", "myapp", "v1.2.0", "production"]).ok();

    // Just written: the functions still have time.
    let j = sb.run(&["doctor", "--json"]).ok().json();
    for f in ["verify-upload", "record-tag", "promotion-fanout"] {
        assert_eq!(statuses(&j, &format!("functions.{f}")), ["warning"], "{j:#}");
    }

    // Written an hour ago and still no record: the functions are dead.
    let meta = "images/myapp/202507/myapp-20250721-2118-f7a5a27.json";
    let older = "images/myapp/202507/myapp-20250720-1045-def5678.json";
    age_file(&sb.store, older, "2 hours ago");
    for key in [meta, "tags/myapp/v1.2.0.json", "pointers/myapp/production.json"] {
        age_file(&sb.store, key, "1 hour ago");
    }
    let r = sb.run(&["doctor", "--json"]).code(6);
    let j = r.json();
    for f in ["verify-upload", "record-tag", "promotion-fanout"] {
        let name = format!("functions.{f}");
        assert_eq!(check(&j, &name)["status"], "failure", "{j:#}");
        assert!(summary(&j, &name).contains(&format!("no audit record written by {f}")), "{j:#}");
        assert!(check(&j, &name)["fix"].as_str().unwrap().contains("dead-letter queue"), "{j:#}");
    }
    assert!(summary(&j, "functions.promotion-fanout").contains("pointers/myapp/production.json"), "{j:#}");
    let r = sb.run(&["doctor"]).code(6);
    assert!(r.stdout.contains("failure  functions.verify-upload"), "{}", r.stdout);

    // The functions answer (the very handlers a Lambda runs): all three recover.
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&sb.store).unwrap());
    let lambda = Handlers::new(store, Arc::new(s3dock_core::clock::SystemClock), Origin::Lambda, "fn");
    rt().block_on(async {
        for key in [meta, "tags/myapp/v1.2.0.json", "pointers/myapp/production.json"] {
            let out = lambda.handle(&ObjectEvent::for_key(ObjectKey::parse(key).unwrap())).await;
            assert!(matches!(out, Ok(s3dock_core::events::Outcome::Recorded { .. })), "{key}: {out:?}");
        }
    });
    let j = sb.run(&["doctor", "--json"]).json();
    for f in ["verify-upload", "record-tag", "promotion-fanout"] {
        let name = format!("functions.{f}");
        // Recorded an hour after the document (the document's clock was set back): slow.
        assert_eq!(check(&j, &name)["status"], "warning", "{j:#}");
        assert!(summary(&j, &name).contains("more than --lag"), "{j:#}");
    }
    let j = sb.run(&["doctor", "--lag", "2h", "--json"]).json();
    for f in ["verify-upload", "record-tag", "promotion-fanout"] {
        assert_eq!(check(&j, &format!("functions.{f}"))["status"], "ok", "{j:#}");
    }
}

#[test]
fn a_stale_agent_fails_and_one_behind_is_named() {
    let sb = Sandbox::new();
    sb.seed(&[A1, A2]);
    sb.s3dock(&["promote", A2, "production"]).ok();
    put_registration(&sb.store, &registration("web-1", Some(A2), Duration::seconds(30)));
    put_registration(&sb.store, &registration("web-2", Some(A1), Duration::seconds(30)));
    let j = sb.s3dock(&["doctor", "myapp", "--json"]).ok().json();
    let agents = check(&j, "agents myapp/production");
    assert_eq!(agents["status"], "warning", "{j:#}");
    assert!(agents["summary"].as_str().unwrap().contains(&format!("web-2 runs {A1}")), "{j:#}");

    put_registration(&sb.store, &registration("web-3", Some(A2), Duration::hours(3)));
    let j = sb.s3dock(&["doctor", "myapp", "--json", "--ttl", "10m"]).code(6).json();
    let agents = check(&j, "agents myapp/production");
    assert_eq!(agents["status"], "failure", "{j:#}");
    let s = agents["summary"].as_str().unwrap();
    assert!(s.contains("1 of 3 agent(s) stale") && s.contains("web-3 on web-3.example (3h00m ago)"), "{s}");
    assert!(s.contains(&format!("web-2 runs {A1}")), "the agent behind is still named: {s}");
    assert!(agents["fix"].as_str().unwrap().contains("systemctl status s3dock-agent"), "{j:#}");
    // A longer TTL forgives it.
    sb.s3dock(&["doctor", "myapp", "--ttl", "4h"]).ok();
}

#[test]
fn a_dangling_pointer_and_tag_fail_with_exit_5() {
    let sb = Sandbox::new();
    sb.seed(&[A1, A2]);
    sb.s3dock(&["tag", A1, "v1.0.0"]).ok();
    sb.s3dock(&["promote", "myapp", "v1.0.0", "production"]).ok();
    sb.s3dock(&["promote", A2, "staging"]).ok();
    for ext in ["json", "tar.gz"] {
        std::fs::remove_file(sb.store.join(format!("images/myapp/202507/myapp-20250720-1045-def5678.{ext}"))).unwrap();
    }
    let j = sb.s3dock(&["doctor", "myapp", "--json"]).code(5).json();
    let pointers: Vec<&Value> = j["checks"].as_array().unwrap().iter().filter(|c| c["name"] == "pointers").collect();
    assert_eq!(pointers.len(), 1, "staging is fine, production dangles: {j:#}");
    assert_eq!(pointers[0]["details"]["key"], "pointers/myapp/production.json");
    assert!(pointers[0]["summary"].as_str().unwrap().contains(A1), "{j:#}");
    assert_eq!(check(&j, "tags")["details"]["key"], "tags/myapp/v1.0.0.json");
    // Without APP the references are not checked.
    sb.s3dock(&["doctor"]).ok();
}

#[test]
fn doctor_on_localstack() {
    let Some(endpoint) = localstack() else { return };
    let rt = rt();
    let s3 = client(&endpoint);
    let bucket = unique_bucket("doctor");
    rt.block_on(s3.create_bucket().bucket(&bucket).send()).expect("create the test bucket");
    let seeded = tempfile::tempdir().unwrap();
    seed_local(seeded.path(), &[A1, A2]);
    put_registration(seeded.path(), &registration("web-1", Some(A1), Duration::hours(2)));
    for (key, body) in snapshot(seeded.path()) {
        rt.block_on(s3.put_object().bucket(&bucket).key(key).body(body.into()).send()).expect("seed");
    }
    let sb = s3_sandbox(&endpoint);
    sb.write_config(&format!(
        "[profiles.default]\nendpoint = \"{endpoint}\"\npath_style = true\nregion = \"us-east-1\"\nevents = \"lambda\"\n"
    ));
    let store = format!("s3://{bucket}");
    sb.run(&["--store", &store, "promote", A1, "production"]).ok();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let j = sb.run(&["--store", &store, "doctor", "myapp", "--lag", "1s", "--json"]).code(6).json();
    assert_eq!(check(&j, "bucket")["status"], "ok", "{j:#}");
    assert_eq!(check(&j, "credentials")["status"], "ok", "{j:#}");
    assert!(check(&j, "credentials")["details"]["arn"].as_str().unwrap().starts_with("arn:aws:"), "{j:#}");
    assert_eq!(check(&j, "versioning")["status"], "warning", "a new bucket has no versioning: {j:#}");
    assert_eq!(check(&j, "preconditions")["status"], "ok", "{j:#}");
    assert_eq!(check(&j, "functions.promotion-fanout")["status"], "failure", "{j:#}");
    assert_eq!(check(&j, "functions.verify-upload")["status"], "failure", "{j:#}");
    assert_eq!(check(&j, "agents myapp/production")["status"], "failure", "{j:#}");
    assert_eq!(check(&j, "pointers, tags")["status"], "ok", "{j:#}");
    let keys = rt.block_on(list_keys(&s3, &bucket));
    assert!(!keys.iter().any(|k| k.contains("probe/")), "the probe cleans up: {keys:?}");

    // Versioning on: the warning goes.
    rt.block_on(
        s3.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send(),
    )
    .expect("enable versioning");
    let j = sb.run(&["--store", &store, "doctor", "--json"]).json();
    assert_eq!(check(&j, "versioning")["status"], "ok", "{j:#}");
}
