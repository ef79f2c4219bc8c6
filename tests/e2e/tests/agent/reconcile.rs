//! Without a queue (`[queue] mode = "none"`) the periodic reconcile alone converges; `--once`
//! does one round and says with its exit code whether everything converged.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_queue_the_periodic_reconcile_converges() {
    let w = world_or_skip!(false);
    let v1 = w.push_image("20250701-1000-b000001", "reconciled one", Kind::Good).await;
    let v2 = w.push_image("20250702-1000-b000002", "reconciled two", Kind::Good).await;
    let ports = two_ports();
    let config = w.agent_config("solo", "2s", "mode = \"none\"", &[w.service(ports, "driver = \"none\"", "")]);

    // No pointer yet: nothing to deploy, and the registration says so.
    let mut agent = Agent::start(&w, "solo", &config, &[]);
    let reg = w
        .wait_registration("solo", "reporting no pointer", LONG, |r| {
            r.state.as_ref().and_then(|s| s.status.map(|s| s.as_str())) == Some("no-pointer")
        })
        .await;
    assert!(reg.queue_url.is_none(), "no queue in mode none");
    assert!(w.containers().await.is_empty());

    let started = Instant::now();
    assert!(w.promote(&v1).await.is_empty(), "no queue registered: nobody to notify");
    w.wait_converged("solo", &v1, Duration::from_secs(30)).await;
    eprintln!("converged through reconcile in {:.1}s (interval 2s)", started.elapsed().as_secs_f64());
    let c = w.assert_one_container(&v1).await;
    let port = ports.port(c.labels["io.s3dock.color"].parse().unwrap());
    assert_serves(port, "reconciled one").await;
    assert!(agent.stop(Duration::from_secs(30)).await.success());

    // --once: one round, exit 0 when converged.
    w.promote(&v2).await;
    let (out, stderr) = once(&w.agent_bin, &config);
    assert!(out.status.success(), "--once: {}\n{stderr}", out.status);
    w.assert_one_container(&v2).await;
    let state = w.registration("solo").await.unwrap().state.unwrap();
    assert_eq!((state.status.map(|s| s.as_str()), state.pointer_seq), (Some("converged"), Some(2)));

    // --once with a pointer to an image that is not in the bucket: exit 1, and why.
    w.s3dock(&["promote", &v1.to_string(), ENV]).await.unwrap();
    let key = s3dock_core::layout::image_metadata(&v1.app, &v1.tag);
    s3dock_core::store::ObjectStore::delete(&*w.store, &key).await.unwrap();
    let (out, stderr) = once(&w.agent_bin, &config);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}/{ENV}: error:", w.app)), "{stderr}");
    w.assert_one_container(&v2).await;
}

/// `s3dock-agent --config CONFIG --once`: its exit status and stderr.
fn once(agent: &std::path::Path, config: &std::path::Path) -> (std::process::Output, String) {
    let out = Command::new(agent)
        .args(["--config", config.to_str().unwrap(), "--once"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}
