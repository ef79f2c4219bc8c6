//! Two agents for the same app and environment both deploy on one promotion; `s3dock status`
//! shows them (a stopped one as STALE) and `s3dock deploy --blue-green` runs the same engine by
//! hand, both through the `s3dock` binary.
//!
//! The two agents share this host's Docker engine, so their services carry an `instance` (the
//! spec setting that keeps two copies of one app and environment apart on one engine).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use s3dock_engine::deploy::LABEL_INSTANCE;

use crate::support::*;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn s3dock(bin: &Path, w: &World, args: &[&str]) -> Run {
    let out = Command::new(bin)
        .arg("--config")
        .arg(w.cli_config())
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("S3DOCK_STORE")
        .env_remove("S3DOCK_PROFILE")
        .output()
        .expect("running s3dock");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ s3dock {}\n{}{}(exit {})", args.join(" "), run.stdout, run.stderr, run.code);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_deploy_on_one_promotion_and_the_cli_shows_and_deploys() {
    let w = world_or_skip!(false);
    let Some(bin) = s3dock_bin() else { return };
    let v1 = w.push_image("20250701-1000-e000001", "fleet one", Kind::Good).await;
    let queue = "mode = \"create\"\nvisibility_timeout = \"30s\"\nmax_receive_count = 3\nwait = \"2s\"";
    let mut agents = Vec::new();
    for id in ["a1", "a2"] {
        let svc = w.service(two_ports(), "driver = \"none\"", &format!("instance = \"{id}\""));
        let config = w.agent_config(id, "10m", queue, &[svc]);
        agents.push((Agent::start(&w, id, &config, &[]), config));
    }
    for id in ["a1", "a2"] {
        let reg = w.wait_registration(id, "registered", LONG, |r| r.queue_url.is_some()).await;
        w.forget_queue_later(&reg.queue_url.unwrap());
    }

    // One promotion, one message per agent, two deploys.
    let mut notified = w.promote(&v1).await;
    notified.sort();
    assert_eq!(notified, ["a1", "a2"]);
    for id in ["a1", "a2"] {
        w.wait_converged(id, &v1, Duration::from_secs(45)).await;
    }
    let containers = w.containers().await;
    let mut instances: Vec<&str> = containers.iter().map(|c| c.labels[LABEL_INSTANCE].as_str()).collect();
    instances.sort();
    assert_eq!(instances, ["a1", "a2"], "{containers:#?}");
    let hosts: Vec<String> = w.deploy_records().await.iter().map(|(_, d)| d.host.clone()).collect();
    assert_eq!(hosts.len(), 2, "one deploy record per agent: {hosts:?}");

    // status --json: both agents, converged, fresh.
    let r = s3dock(&bin, &w, &["status", &w.app, "--json"]);
    assert_eq!(r.code, 0);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("status --json is one JSON document");
    assert_eq!(doc["environments"][0]["pointer"]["image"], v1.to_string());
    let rows = doc["agents"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{doc:#}");
    for (row, id) in rows.iter().zip(["a1", "a2"]) {
        assert_eq!(row["agent_id"], id);
        assert_eq!(row["image"], v1.to_string());
        assert_eq!(row["converged"], true);
        assert_eq!(row["stale"], false);
        assert_eq!(row["health"], "healthy");
        assert_eq!(row["last_deploy"]["result"], "succeeded");
    }

    // deploy --blue-green with an agent's own configuration: the agent already runs it.
    let (_, a1_config) = &agents[0];
    let r = s3dock(&bin, &w, &["deploy", "--blue-green", &w.app, ENV, "--service", a1_config.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("{ENV} already runs {v1}")) && r.stdout.contains("nothing to do"),
        "{}",
        r.stdout
    );

    // deploy --blue-green with a spec file of its own: pulls and deploys, audited by the CLI.
    let ports = two_ports();
    let spec = w.path("manual.toml");
    std::fs::write(
        &spec,
        format!(
            "app = \"{}\"\nenv = \"{ENV}\"\ncontainer_port = 8080\nports = {{ blue = {}, green = {} }}\ninstance = \"manual\"\ndrain = \"1s\"\nstop_timeout = \"1s\"\n[health]\npath = \"/health.html\"\ninterval = \"200ms\"\ndeadline = \"6s\"\n[traffic]\ndriver = \"none\"\n",
            w.app, ports.blue, ports.green
        ),
    )
    .unwrap();
    let state = w.path("manual-state");
    let args = [
        "deploy",
        "--blue-green",
        &w.app,
        ENV,
        "--service",
        spec.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let r = s3dock(&bin, &w, &[&args[..], &["--json"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((doc["result"].as_str(), doc["image"].as_str()), (Some("succeeded"), Some(v1.to_string().as_str())));
    assert_eq!(doc["pointer_seq"], 1);
    assert!(doc["timings_ms"]["health"].as_u64().is_some(), "{doc:#}");
    let audit_key = doc["audit_key"].as_str().unwrap().to_owned();
    let records = w.deploy_records().await;
    let (record, details) =
        records.iter().find(|(r, _)| r.recorded_by.as_deref() == Some("cli")).expect("the CLI's record");
    assert_eq!(record.user, "tester");
    assert!(details.agent_id.is_none());
    assert!(audit_key.contains("-deploy-e000001-production-"), "{audit_key}");
    assert_eq!(details.result.as_str(), "succeeded");
    let r = s3dock(&bin, &w, &args);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with(&format!("{ENV} already runs {v1} on ")), "{}", r.stdout);
    // A deploy that fails exits 4 with the reason; the container that served keeps serving.
    std::fs::write(&spec, std::fs::read_to_string(&spec).unwrap().replace("/health.html", "/missing.html")).unwrap();
    let r = s3dock(&bin, &w, &args);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("deploy of {v1} to {ENV} failed")) && r.stderr.contains("HTTP 404"),
        "{}",
        r.stderr
    );

    // Bad input exits 2 before anything is touched.
    let r = s3dock(&bin, &w, &["deploy", &w.app, ENV, "--service", spec.to_str().unwrap()]);
    assert_eq!(r.code, 2, "--blue-green is required");
    assert!(r.stderr.contains("--blue-green"), "{}", r.stderr);

    // One agent stops: its registration says so and ages; status marks it STALE.
    let (a2, _) = &mut agents[1];
    assert!(a2.stop(Duration::from_secs(30)).await.success());
    s3dock_testkit::put_raw(&*w.store, &format!("agents/{}/{ENV}/garbage.json", w.app), "not json").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = s3dock(&bin, &w, &["status", &w.app, ENV, "--ttl", "3s"]);
    assert_eq!(r.code, 0);
    let row =
        |id: &str| r.stdout.lines().find(|l| l.split_whitespace().nth(1) == Some(id)).unwrap_or_default().to_owned();
    assert!(row("a2").contains("STALE") && row("a2").contains("stopped"), "{}", r.stdout);
    assert!(!row("a1").contains("STALE") && row("a1").contains("converged"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("{ENV}: pointer -> {v1} (seq 1)")), "{}", r.stdout);
    assert!(r.stdout.contains("unreadable registration agents/") && r.stdout.contains("garbage.json"), "{}", r.stdout);
    assert!(r.stderr.contains("1 agent(s) have not sent a heartbeat"), "{}", r.stderr);
    let r = s3dock(&bin, &w, &["status", &w.app, ENV, "--ttl", "3s", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["errors"].as_array().unwrap().len(), 1);
    let stale: Vec<bool> = doc["agents"].as_array().unwrap().iter().map(|a| a["stale"].as_bool().unwrap()).collect();
    assert_eq!(stale, [false, true]);

    let (a1, _) = &mut agents[0];
    assert!(a1.stop(Duration::from_secs(30)).await.success());
}
