//! A failing image never receives traffic and is not retried in a loop; `s3dock rollback`
//! moves the pointer back and the agent converges to the previous image.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_image_never_gets_traffic_and_rollback_restores_the_previous_one() {
    let w = world_or_skip!(true);
    let nginx = start_nginx(&w, free_port()).await;
    let v1 = w.push_image("20250701-1000-c000001", "steady one", Kind::Good).await;
    let v2 = w.push_image("20250702-1000-c000002", "steady two", Kind::Good).await;
    let bad = w.push_image("20250703-1000-c000003", "broken three", Kind::NoHealth).await;
    let config =
        w.agent_config("web-1", "2s", "mode = \"none\"", &[w.service(two_ports(), &nginx_traffic(&nginx), "")]);
    let mut agent = Agent::start(&w, "web-1", &config, &[]);

    w.promote(&v1).await;
    w.wait_converged("web-1", &v1, LONG).await;
    w.promote(&v2).await;
    w.wait_converged("web-1", &v2, LONG).await;
    assert_serves(nginx.port, "steady two").await;

    // `s3dock rollback`: the pointer goes back to v1 and the agent deploys it again.
    let out = w.s3dock(&["rollback", &w.app, ENV]).await.unwrap();
    assert_eq!(out["image"], v1.to_string());
    let reg = w.wait_converged("web-1", &v1, LONG).await;
    assert_eq!(reg.state.unwrap().pointer_seq, Some(3));
    assert_serves(nginx.port, "steady one").await;
    w.assert_one_container(&v1).await;

    // The failing image: under load, no request may see anything but v1.
    let load = Load::start(nginx.port, &["steady one"], 2, 50);
    w.promote(&bad).await;
    let reg = w
        .wait_registration("web-1", "reporting the failed deploy", LONG, |r| {
            r.state.as_ref().is_some_and(|s| {
                s.status.map(|s| s.as_str()) == Some("failed")
                    && s.last_deploy
                        .as_ref()
                        .is_some_and(|d| d.image == bad.to_string() && d.result.as_str() == "failed")
            })
        })
        .await;
    // Several reconcile intervals pass: the same pointer is not tried again (back-off 1 h).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (count, elapsed) = load.finish().await;
    eprintln!(
        "during the failed deploy: {} ok, {} failed in {:.1}s; failures {:?}",
        count.ok,
        count.failed,
        elapsed.as_secs_f64(),
        count.failures
    );
    assert_eq!(count.failed, 0, "the failing image got traffic: {:?}", count.failures);
    assert!(count.ok > 100);
    let state = reg.state.unwrap();
    assert_eq!(state.image.as_deref(), Some(v1.to_string().as_str()), "the old container serves");
    assert_eq!(state.desired.as_deref(), Some(bad.to_string().as_str()));
    let message = state.message.unwrap_or_default();
    assert!(message.contains("did not become healthy") && message.contains("HTTP 404"), "{message}");
    w.assert_one_container(&v1).await;
    assert_serves(nginx.port, "steady one").await;
    let attempts = w.deploy_records().await.iter().filter(|(_, d)| d.image_reference == bad.to_string()).count();
    assert_eq!(attempts, 1, "a failed image is not retried in a hot loop");
    assert!(agent.log_text().contains("failed before; next try at"), "{}", agent.log_text());

    // Rolling back the pointer: the agent already runs v1, and says it is converged again.
    let out = w.s3dock(&["rollback", &w.app, ENV]).await.unwrap();
    assert_eq!(out["image"], v1.to_string());
    let reg = w.wait_converged("web-1", &v1, LONG).await;
    let state = reg.state.unwrap();
    assert_eq!(state.pointer_seq, Some(5));
    assert!(state.message.is_none(), "{state:?}");
    w.assert_one_container(&v1).await;

    let records = w.deploy_records().await;
    let summary: Vec<(String, String)> =
        records.iter().map(|(r, d)| (r.event_type.clone(), format!("{} {}", d.result, d.image_reference))).collect();
    eprintln!("audit: {summary:#?}");
    assert_eq!(
        summary.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>(),
        [format!("succeeded {v1}"), format!("succeeded {v2}"), format!("succeeded {v1}"), format!("failed {bad}")]
    );
    assert!(agent.stop(Duration::from_secs(30)).await.success());
}
