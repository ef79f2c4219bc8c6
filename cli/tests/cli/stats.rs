//! `s3dock stats` on a bucket with a known, scripted history: promotions, a pointer rollback,
//! host deploys with per-phase timings, failed and rolled-back deploys. The expected figures
//! were worked out by hand from the script (see each assertion's comment), not by the code
//! under test; the same history on LocalStack gives the same document.

use chrono::{DateTime, Utc};
use s3dock_core::docs::{self, AuditRecord, SCHEMA_VERSION};
use s3dock_core::layout;
use s3dock_core::names::{AppName, ImageRef};
use serde_json::{Value, json};

use crate::s3::{client, localstack, s3_sandbox, unique_bucket};
use crate::support::*;

pub const I1: &str = "shop:20250630-0900-1111111";
pub const I2: &str = "shop:20250707-1000-2222222";
pub const I3: &str = "shop:20250714-1200-3333333";
pub const I4: &str = "shop:20250721-0800-4444444";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// One scripted event.
enum Ev {
    Promote(&'static str, &'static str, &'static str),
    PointerRollback(&'static str, &'static str, &'static str),
    /// env, image, host, result, time, timings (ms)
    Deploy(&'static str, &'static str, &'static str, &'static str, &'static str, &'static [(&'static str, u64)]),
}

/// The history, in time order. Numbers in comments are referred to by the assertions.
const HISTORY: &[Ev] = &[
    Ev::Promote("staging", I1, "2025-06-30T12:00:00Z"), // 1 (before the window)
    Ev::Deploy("staging", I1, "s1", "succeeded", "2025-06-30T12:05:00Z", &[("pull", 9000)]), // 2 (before)
    Ev::Promote("production", I1, "2025-07-01T10:00:00Z"), // 3
    Ev::Deploy(
        "production",
        I1,
        "a",
        "succeeded",
        "2025-07-01T10:04:00Z",
        &[("pull", 4000), ("start", 500), ("health", 2000), ("switch", 100), ("drain", 5000)],
    ), // 4
    Ev::Deploy(
        "production",
        I1,
        "b",
        "succeeded",
        "2025-07-01T10:05:00Z",
        &[("pull", 6000), ("start", 700), ("health", 3000), ("switch", 120), ("drain", 5000)],
    ), // 5
    Ev::Promote("staging", I2, "2025-07-07T11:00:00Z"), // 6
    Ev::Deploy(
        "staging",
        I2,
        "s1",
        "succeeded",
        "2025-07-07T11:03:00Z",
        &[("pull", 3000), ("health", 1000), ("switch", 80)],
    ), // 7
    Ev::Promote("production", I2, "2025-07-08T09:00:00Z"), // 8
    Ev::Deploy("production", I2, "a", "failed", "2025-07-08T09:06:00Z", &[("pull", 5000), ("health", 30000)]), // 9
    Ev::Deploy(
        "production",
        I2,
        "b",
        "rolled-back",
        "2025-07-08T09:07:00Z",
        &[("pull", 5000), ("health", 2000), ("switch", 100), ("verify", 9000), ("rollback", 300)],
    ), // 10
    Ev::PointerRollback("production", I1, "2025-07-08T09:30:00Z"), // 11
    Ev::Deploy(
        "production",
        I1,
        "a",
        "succeeded",
        "2025-07-08T09:34:00Z",
        &[("pull", 1000), ("start", 400), ("health", 1500), ("switch", 90), ("drain", 5000)],
    ), // 12
    Ev::Deploy(
        "production",
        I1,
        "b",
        "succeeded",
        "2025-07-08T10:10:00Z",
        &[("pull", 1200), ("start", 450), ("health", 1800), ("switch", 110), ("drain", 5000)],
    ), // 13
    Ev::Promote("production", I3, "2025-07-15T15:00:00Z"), // 14
    Ev::Deploy(
        "production",
        I3,
        "a",
        "succeeded",
        "2025-07-15T15:02:00Z",
        &[("pull", 8000), ("start", 600), ("health", 2500), ("switch", 95), ("drain", 5000)],
    ), // 15
    Ev::Deploy(
        "production",
        I3,
        "b",
        "succeeded",
        "2025-07-15T15:03:00Z",
        &[("pull", 7000), ("start", 650), ("health", 2600), ("switch", 105), ("drain", 5000)],
    ), // 16
    Ev::Promote("staging", I4, "2025-07-21T09:00:00Z"), // 17
    Ev::Deploy("staging", I4, "s1", "failed", "2025-07-21T09:10:00Z", &[("pull", 2000), ("health", 60000)]), // 18
    Ev::Deploy("production", I4, "a", "succeeded", "2025-08-02T09:00:00Z", &[("pull", 1)]), // 19 (after the window)
];

/// Writes the history into a local store as the functions and agents write it.
pub fn write_history(dir: &std::path::Path) {
    seed_local(dir, &[I1, I2, I3, I4]);
    let app = AppName::parse("shop").unwrap();
    for (n, ev) in HISTORY.iter().enumerate() {
        let (event, image, time, details, recorded_by, disc) = match ev {
            Ev::Promote(env, image, t) | Ev::PointerRollback(env, image, t) => {
                let event = if matches!(ev, Ev::Promote(..)) { "promotion" } else { "rollback" };
                let d = json!({"environment": env, "source": image, "source_type": "image",
                    "pointer_path": format!("pointers/shop/{env}.json"), "seq": n, "image_reference": image});
                (event, *image, *t, d, "lambda", vec![env.to_string(), format!("seq{n}")])
            }
            Ev::Deploy(env, image, host, result, t, timings) => {
                let event = if *result == "rolled-back" { "rollback" } else { "deploy" };
                let timings: serde_json::Map<String, Value> =
                    timings.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
                let d = json!({"environment": env, "image_reference": image, "host": format!("{host}.example"),
                    "result": result, "timings_ms": timings, "agent_id": host, "color": "blue"});
                (event, *image, *t, d, "agent", vec![env.to_string(), host.to_string(), format!("d{n}")])
            }
        };
        let image = ImageRef::parse(image).unwrap();
        let rec = AuditRecord {
            schema_version: Some(SCHEMA_VERSION),
            event_type: event.into(),
            timestamp: at(time),
            user: "ci".into(),
            app_name: "shop".into(),
            git_hash: image.tag.hash7().into(),
            git_time: image.tag.time_str(),
            details,
            principal: None,
            recorded_by: Some(recorded_by.into()),
            write_id: None,
        };
        let disc: Vec<&str> = disc.iter().map(String::as_str).collect();
        let key = layout::audit(&app, at(time), event, image.tag.hash7(), &disc);
        put_raw(dir, key.as_str(), std::str::from_utf8(&docs::encode(&rec)).unwrap());
    }
    // Records the metrics do not use, and one that cannot be read.
    put_raw(
        dir,
        "audit/shop/202507/20250707-1000-push-2222222-abcd.json",
        &format!(
            r#"{{"event_type":"push","timestamp":"2025-07-07T10:30:00Z","user":"ci","app_name":"shop","git_hash":"2222222","git_time":"20250707-1000","details":{{"image_reference":"{I2}"}}}}"#
        ),
    );
    put_raw(dir, "audit/shop/202507/20250709-0000-deploy-2222222-broken.json", "{not json");
}

const WINDOW: [&str; 4] = ["--since", "2025-07-01", "--until", "2025-08-01"];

/// Checks every figure of the scripted history's metrics.
fn check_figures(j: &Value) {
    assert_eq!(j["window"]["start"], "2025-07-01T00:00:00Z");
    assert_eq!(j["weeks"], json!(["2025-W27", "2025-W28", "2025-W29", "2025-W30", "2025-W31"]));
    let envs: Vec<&str> = j["frequency"].as_array().unwrap().iter().map(|f| f["env"].as_str().unwrap()).collect();
    assert_eq!(envs, ["production", "staging"]);
    let prod = &j["frequency"][0];
    // Promotions 3, 8, 14; the pointer rollback 11; deploys 4 5 9 10 12 13 15 16, of which
    // 9 and 10 did not succeed. 3 promotions over 31/7 weeks = 0.677.
    assert_eq!((prod["promotions"].as_u64(), prod["rollbacks"].as_u64()), (Some(3), Some(1)));
    assert_eq!((prod["deploys"].as_u64(), prod["successful_deploys"].as_u64()), (Some(8), Some(6)));
    assert_eq!(prod["promotions_per_week"], 0.68);
    let weekly = |f: &Value| -> Vec<(u64, u64)> {
        f["weeks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["promotions"].as_u64().unwrap(), w["deploys"].as_u64().unwrap()))
            .collect()
    };
    // W27 (Jun 30-Jul 6): 3 / 4 5; W28: 8 / 9 10 12 13; W29: 14 / 15 16.
    assert_eq!(weekly(prod), [(1, 2), (1, 4), (1, 2), (0, 0), (0, 0)]);
    let staging = &j["frequency"][1];
    // Promotions 6 and 17 (1 is before the window); deploys 7 and 18.
    assert_eq!((staging["promotions"].as_u64(), staging["deploys"].as_u64()), (Some(2), Some(2)));
    assert_eq!(staging["promotions_per_week"], 0.45);
    assert_eq!(weekly(staging), [(0, 0), (1, 1), (0, 0), (1, 1), (0, 0)]);

    // Commit to promotion: 3: 25h, 6: 1h, 8: 23h, 14: 27h, 17: 1h -> sorted 1h 1h 23h 25h 27h.
    let lt = &j["lead_time"]["to_promotion_seconds"];
    assert_eq!((lt["count"].as_u64(), lt["p50"].as_i64(), lt["p95"].as_i64()), (Some(5), Some(82_800), Some(97_200)));
    assert_eq!((lt["min"].as_i64(), lt["max"].as_i64()), (Some(3600), Some(97_200)));
    // First successful deploy per environment and image inside the window: production I1 at 4
    // (25h04m), staging I2 at 7 (1h03m), production I3 at 15 (27h02m); staging I1's was 2,
    // before the window; I2 never succeeded on production.
    let fd = &j["lead_time"]["to_first_deploy_seconds"];
    assert_eq!((fd["count"].as_u64(), fd["p50"].as_i64(), fd["p95"].as_i64()), (Some(3), Some(90_240), Some(97_320)));

    // Failures 9 (failed), 18 (failed), 10 (rolled back), 11 (pointer rollback) over 10 deploys.
    let cf = &j["change_failure"];
    assert_eq!(
        (cf["deploys"].as_u64(), cf["failed"].as_u64(), cf["rolled_back"].as_u64(), cf["pointer_rollbacks"].as_u64()),
        (Some(10), Some(2), Some(1), Some(1))
    );
    assert_eq!((cf["failures"].as_u64(), cf["rate"].as_f64()), (Some(4), Some(0.4)));
    // 9 (host a, 09:06) -> 12 (a, 09:34): 28m; 10 (b, 09:07) -> 13 (b, 10:10): 63m; 11 (09:30)
    // -> 12 (any host, 09:34): 4m; 18 (s1) never restored.
    let r = &j["restore"];
    assert_eq!((r["seconds"]["count"].as_u64(), r["open"].as_u64()), (Some(3), Some(1)));
    assert_eq!((r["seconds"]["p50"].as_i64(), r["seconds"]["p95"].as_i64()), (Some(1680), Some(3780)));
    assert_eq!(r["seconds"]["min"].as_i64(), Some(240));

    // Successful deploys in the window: 4 5 7 12 13 15 16.
    let phases: Vec<(&str, u64, i64, i64)> = j["phases_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().unwrap(),
                p["count"].as_u64().unwrap(),
                p["p50"].as_i64().unwrap(),
                p["p95"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("pull", 7, 4000, 8000),   // 1000 1200 3000 [4000] 6000 7000 8000
            ("start", 6, 500, 700),    // 400 450 [500] 600 650 700
            ("health", 7, 2000, 3000), // 1000 1500 1800 [2000] 2500 2600 3000
            ("switch", 7, 100, 120),   // 80 90 95 [100] 105 110 120
            ("drain", 6, 5000, 5000),
        ]
    );
    assert_eq!(j["unreadable_records"], 1);
}

#[test]
fn stats_of_a_scripted_history_on_a_local_store() {
    let sb = Sandbox::new();
    write_history(&sb.store);
    let mut args = vec!["stats", "shop", "--json"];
    args.extend(WINDOW);
    let r = sb.s3dock(&args).ok();
    assert!(r.stderr.contains("1 audit record(s) could not be read"), "{}", r.stderr);
    check_figures(&r.json());

    // One environment: production's failures 9, 10, 11 over its 8 deploys.
    let mut args = vec!["stats", "shop", "production", "--json"];
    args.extend(WINDOW);
    let j = sb.s3dock(&args).ok().json();
    assert_eq!(j["frequency"].as_array().unwrap().len(), 1);
    assert_eq!(
        (j["change_failure"]["failures"].as_u64(), j["change_failure"]["rate"].as_f64()),
        (Some(3), Some(0.375))
    );
    assert_eq!(j["restore"]["open"], 0);

    // The table says the same.
    let mut args = vec!["stats", "shop"];
    args.extend(WINDOW);
    let r = sb.s3dock(&args).ok();
    let has_row = |cells: &[&str]| r.stdout.lines().any(|l| l.split_whitespace().eq(cells.iter().copied()));
    assert!(r.stdout.starts_with("shop: 2025-07-01T00:00:00Z to 2025-08-01T00:00:00Z (5 weeks)\n"), "{}", r.stdout);
    for row in [
        &["production", "3", "0.68", "1", "8", "6"][..],
        &["staging", "2", "0.45", "0", "2", "1"],
        &["2025-W28", "1/4", "1/1"],
        &["promotion", "5", "23h00m", "1d3h", "1d3h"],
        &["first", "successful", "deploy", "3", "1d1h", "1d3h", "1d3h"],
        &["pull", "7", "4.0s", "8.0s", "8.0s"],
        &["switch", "7", "100ms", "120ms", "120ms"],
    ] {
        assert!(has_row(row), "{row:?} in\n{}", r.stdout);
    }
    for line in [
        "Change failure rate: 40.0% (4 of 10 host deploys: 2 failed, 1 rolled back, 1 pointer rollback)",
        "Time to restore: 3 restored, p50 28m00s, p95 1h03m; 1 still open",
    ] {
        assert!(r.stdout.contains(line), "{line:?} in\n{}", r.stdout);
    }

    // docs/cli.md shows exactly this output.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).unwrap();
    let shown = doc
        .split("$ s3dock stats shop --since 2025-07-01 --until 2025-08-01\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the stats example in docs/cli.md");
    assert_eq!(shown, r.stdout, "docs/cli.md's stats example is this run's output");

    // Bad windows are usage errors.
    sb.s3dock(&["stats", "shop", "--since", "2025-08-01", "--until", "2025-07-01"])
        .code(2)
        .stderr_has("window is empty");
    sb.s3dock(&["stats", "shop", "--since", "30x"]).code(2).stderr_has("unknown unit");
    // The default window (the last 30 days) holds nothing of 2025.
    let j = sb.s3dock(&["stats", "shop", "--json"]).ok().json();
    assert_eq!(j["frequency"], json!([]));
}

#[test]
fn stats_on_localstack_match_the_local_store() {
    let Some(endpoint) = localstack() else { return };
    let rt = rt();
    let s3 = client(&endpoint);
    let bucket = unique_bucket("stats");
    rt.block_on(s3.create_bucket().bucket(&bucket).send()).expect("create the test bucket");
    let local = tempfile::tempdir().unwrap();
    write_history(local.path());
    for (key, body) in snapshot(local.path()) {
        rt.block_on(s3.put_object().bucket(&bucket).key(key).body(body.into()).send()).expect("seed");
    }
    let sb = s3_sandbox(&endpoint);
    let store = format!("s3://{bucket}");
    let mut args = vec!["--store", store.as_str(), "stats", "shop", "--json"];
    args.extend(WINDOW);
    let j = sb.run(&args).ok().json();
    check_figures(&j);
}
