//! SIGTERM during a deploy: before the switch the deploy is abandoned (the new container goes,
//! the old keeps serving); during the drain the switch stands and the rest of the grace is
//! left to the next start. Either way the agent exits 0 promptly and says "stopped".

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_deploy_finishes_or_rolls_back_and_exits_0() {
    let w = world_or_skip!(false);
    let v1 = w.push_image("20250701-1000-f000001", "term one", Kind::Good).await;
    // Healthy only after 4 s: the health check lasts long enough to be interrupted.
    let slow = w.push_image("20250702-1000-f000002", "term two", Kind::SlowStart(4)).await;
    let v3 = w.push_image("20250703-1000-f000003", "term three", Kind::Good).await;
    let ports = two_ports();
    let svc = |drain: &str| {
        w.service(ports, "driver = \"none\"", &format!("drain = \"{drain}\"")).replacen("drain = \"1s\"\n", "", 1)
    };
    let config = w.agent_config("web-1", "1s", "mode = \"none\"", &[svc("1s")]);
    let state_file = w.path("state-web-1").join(&w.app).join(format!("{ENV}.json"));
    let phase = || -> String {
        std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["phase"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let wait_phase = |want: &'static str| {
        let phase = &phase;
        async move {
            let deadline = Instant::now() + LONG;
            while phase() != want {
                assert!(Instant::now() < deadline, "never reached {want}; at {}", phase());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    w.promote(&v1).await;
    let mut agent = Agent::start(&w, "web-1", &config, &[]);
    w.wait_converged("web-1", &v1, LONG).await;

    // 1. During the health check: abandoned, the old container keeps serving.
    w.promote(&slow).await;
    wait_phase("health-check").await;
    let t = Instant::now();
    let status = agent.stop(Duration::from_secs(30)).await;
    eprintln!("SIGTERM in the health check: {status} after {:.1}s", t.elapsed().as_secs_f64());
    assert!(status.success(), "{status}:\n{}", agent.log_text());
    assert_eq!(phase(), "idle");
    w.assert_one_container(&v1).await;
    let state = w.registration("web-1").await.unwrap().state.unwrap();
    assert_eq!(state.status.map(|s| s.as_str()), Some("stopped"));
    let last = state.last_deploy.unwrap();
    assert_eq!((last.result.as_str(), last.image.as_str()), ("failed", slow.to_string().as_str()));
    assert!(last.message.unwrap_or_default().contains("shutdown"), "{}", agent.log_text());

    // 2. During a long drain: the switch stands, the agent does not sit the grace out, and the
    //    next start finishes it.
    let long_drain = w.agent_config("web-1", "1s", "mode = \"none\"", &[svc("30s")]);
    w.promote(&v3).await;
    let mut agent = Agent::start(&w, "web-1", &long_drain, &[]);
    wait_phase("draining").await;
    let t = Instant::now();
    let status = agent.stop(Duration::from_secs(20)).await;
    let took = t.elapsed();
    eprintln!("SIGTERM in the drain: {status} after {:.1}s (drain 30s)", took.as_secs_f64());
    assert!(status.success(), "{status}:\n{}", agent.log_text());
    assert!(took < Duration::from_secs(15), "sat out the drain: {took:?}");
    assert_eq!(phase(), "draining", "left for the next start");
    assert_eq!(w.containers().await.len(), 2, "the old container is left to finish its requests");
    let mut agent = Agent::start(&w, "web-1", &config, &[]);
    w.wait_converged("web-1", &v3, LONG).await;
    w.assert_one_container(&v3).await;
    assert_eq!(phase(), "idle");
    assert!(agent.stop(Duration::from_secs(30)).await.success());
}
