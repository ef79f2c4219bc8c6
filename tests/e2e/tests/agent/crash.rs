//! The agent SIGKILLed at each step of a deploy (after the pull, after the start, in the
//! middle of the health check, after the switch, in the middle of the drain) converges when it
//! starts again: exactly one container of the desired image, serving through nginx.
//!
//! The kill is exact thanks to the fault-injection hook (`S3DOCK_AGENT_CRASH_AT`, see
//! `s3dock_agent::fault`): the agent announces the point on stderr and stops there, the test
//! sends SIGKILL. The hook exists only in an agent built with the `fault-injection` feature
//! (`cargo test --workspace` builds it so); the test fails, saying so, with any other binary.

use std::time::{Duration, Instant};

use s3dock_engine::deploy::Phase;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_at_any_step_converges_on_restart() {
    let w = world_or_skip!(true);
    let nginx = start_nginx(&w, free_port()).await;
    let v1 = w.push_image("20250701-1000-d000001", "crash one", Kind::Good).await;
    let v2 = w.push_image("20250702-1000-d000002", "crash two", Kind::Good).await;
    let config =
        w.agent_config("web-1", "2s", "mode = \"none\"", &[w.service(two_ports(), &nginx_traffic(&nginx), "")]);
    let state_file = w.path("state-web-1").join(&w.app).join(format!("{ENV}.json"));
    let phase = || -> Option<String> {
        let text = std::fs::read_to_string(&state_file).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["phase"].as_str().map(str::to_owned)
    };

    w.promote(&v1).await;
    let mut agent = Agent::start(&w, "web-1", &config, &[]);
    w.wait_converged("web-1", &v1, LONG).await;
    assert!(agent.stop(Duration::from_secs(30)).await.success());

    let mut serving = (v1.clone(), "crash one");
    let mut report = Vec::new();
    for (point, in_flight) in [
        ("after-pull", None),
        ("health-check", Some(Phase::HealthCheck)),
        ("probe-ok", Some(Phase::HealthCheck)),
        ("verifying", Some(Phase::Verifying)),
        ("draining", Some(Phase::Draining)),
    ] {
        let target = if serving.0 == v1 { (v2.clone(), "crash two") } else { (v1.clone(), "crash one") };
        eprintln!("--- kill at {point} while deploying {}", target.0);
        w.promote(&target.0).await;
        let mut doomed = Agent::start(&w, "web-1", &config, &[(s3dock_agent::fault::CRASH_AT_ENV, point)]);
        doomed.assert_fault_injection_on().await;
        doomed.wait_log(&format!("fault injection: reached {point}"), LONG).await;
        doomed.sigkill();
        let found = phase().unwrap_or_default();
        match in_flight {
            None => assert_eq!(found, "idle", "{point}: nothing started yet"),
            Some(p) => assert_eq!(found, p.as_str(), "{point}: the state file shows the deploy in flight"),
        }

        let started = Instant::now();
        let mut restarted = Agent::start(&w, "web-1", &config, &[]);
        let reg = w.wait_converged("web-1", &target.0, LONG).await;
        let took = started.elapsed();
        w.assert_one_container(&target.0).await;
        assert_serves(nginx.port, target.1).await;
        assert_eq!(phase().as_deref(), Some("idle"));
        let log = restarted.log_text();
        let settled = log.lines().find(|l| l.contains("settled an interrupted deploy")).map(str::to_owned);
        assert_eq!(settled.is_some(), in_flight.is_some(), "{point}: recovery ran iff a deploy was in flight:\n{log}");
        eprintln!(
            "{point}: restart converged in {:.1}s on {} ({}); {}",
            took.as_secs_f64(),
            target.0,
            reg.state.as_ref().and_then(|s| s.color.clone()).unwrap_or_default(),
            settled.as_deref().map(|l| l.split("settled").nth(1).unwrap_or(l)).unwrap_or(" nothing to settle")
        );
        report.push(format!("{point}: converged on {} in {:.1}s", target.0, took.as_secs_f64()));
        assert!(restarted.stop(Duration::from_secs(30)).await.success());
        serving = target;
    }
    eprintln!("kill points:\n  {}", report.join("\n  "));

    // Each interrupted deploy left one record of its settlement (the kill after the pull had
    // no deploy in flight), and no record claims traffic on an unhealthy container.
    let records = w.deploy_records().await;
    let recovered =
        records.iter().filter(|(_, d)| d.message.as_deref().is_some_and(|m| m.contains("was interrupted"))).count();
    assert_eq!(recovered, 4, "{records:#?}");
}
