//! Promotions reach the agent through its own SQS queue: `s3dock promote` (the CLI library,
//! `events = "inline"`, with its SQS notifier) sends the hint, the agent pulls and deploys
//! within seconds while its periodic reconcile is ten minutes away, and an agent-driven switch
//! under load through nginx drops no request.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_reaches_the_agent_through_its_queue_and_the_switch_drops_no_request() {
    let w = world_or_skip!(true);
    let nginx = start_nginx(&w, free_port()).await;
    let v1 = w.push_image("20250701-1000-a000001", "version one", Kind::Good).await;
    let v2 = w.push_image("20250702-1000-a000002", "version two", Kind::Good).await;

    // The reconcile interval is long: only the queue can explain a deploy within seconds.
    let queue = "mode = \"create\"\nvisibility_timeout = \"30s\"\nmax_receive_count = 3\nwait = \"2s\"";
    let config = w.agent_config("web-1", "10m", queue, &[w.service(two_ports(), &nginx_traffic(&nginx), "")]);
    let mut agent = Agent::start(&w, "web-1", &config, &[]);
    let reg = w
        .wait_registration("web-1", "registered with its queue", LONG, |r| {
            r.queue_url.is_some() && r.state.as_ref().and_then(|s| s.status.map(|s| s.as_str())) == Some("no-pointer")
        })
        .await;
    let url = reg.queue_url.clone().unwrap();
    w.forget_queue_later(&url);
    assert!(url.ends_with("/s3dock_agent-web-1"), "{url}");
    assert_eq!(reg.host, "web-1.test");

    // The queue was created with its dead-letter queue and a redrive policy.
    let attrs = w.queue_of("web-1").await.attributes().await.unwrap();
    let redrive: serde_json::Value = serde_json::from_str(&attrs["RedrivePolicy"]).unwrap();
    assert!(redrive["deadLetterTargetArn"].as_str().unwrap().ends_with(":s3dock_agent-web-1-dlq"), "{redrive}");
    assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "3");
    assert_eq!(attrs["VisibilityTimeout"], "30");

    // First promotion: the agent learns it from its queue.
    let started = Instant::now();
    assert_eq!(w.promote(&v1).await, ["web-1"], "the inline promotion notified the agent");
    let reg = w.wait_converged("web-1", &v1, Duration::from_secs(45)).await;
    let first = started.elapsed();
    eprintln!("promotion -> converged on {v1} in {:.1}s (reconcile interval 10 min)", first.as_secs_f64());
    assert!(first < Duration::from_secs(45));
    let state = reg.state.unwrap();
    assert_eq!(state.health.map(|h| h.as_str()), Some("healthy"));
    assert_eq!(state.pointer_seq, Some(1));
    assert_eq!(state.last_deploy.as_ref().map(|d| d.result.as_str()), Some("succeeded"));
    assert_serves(nginx.port, "version one").await;
    w.assert_one_container(&v1).await;

    // Second promotion under load: every request through nginx must succeed.
    let load = Load::start(nginx.port, &["version one", "version two"], 4, 60);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    assert_eq!(w.promote(&v2).await, ["web-1"]);
    w.wait_converged("web-1", &v2, Duration::from_secs(45)).await;
    let second = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (count, elapsed) = load.finish().await;
    let rps = count.total() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "agent-driven switch in {:.1}s under load: {} ok, {} failed in {:.1}s = {rps:.0} requests/s; saw {:?}; failures {:?}",
        second.as_secs_f64(),
        count.ok,
        count.failed,
        elapsed.as_secs_f64(),
        count.seen,
        count.failures
    );
    assert_eq!(count.failed, 0, "failed requests during the switch: {:?}", count.failures);
    assert!(rps >= 100.0, "only {rps:.0} requests/s");
    assert_eq!(count.seen.len(), 2, "traffic moved from one version to the other: {:?}", count.seen);
    assert_serves(nginx.port, "version two").await;
    w.assert_one_container(&v2).await;

    // Both deploys are audited by the agent, with its id, host and the pointer's seq.
    let records = w.deploy_records().await;
    assert_eq!(records.len(), 2, "{records:#?}");
    for ((r, d), (image, seq)) in records.iter().zip([(&v1, 1), (&v2, 2)]) {
        assert_eq!(r.event_type, "deploy");
        assert_eq!(r.recorded_by.as_deref(), Some("agent"));
        assert_eq!(r.user, "agent:web-1");
        assert_eq!((d.result.as_str(), d.host.as_str()), ("succeeded", "web-1.test"));
        assert_eq!(d.agent_id.as_deref(), Some("web-1"));
        assert_eq!(d.image_reference, image.to_string());
        assert_eq!(d.pointer_seq, Some(seq));
        assert!(d.timings_ms.contains_key("pull") && d.timings_ms.contains_key("switch"), "{d:?}");
    }

    // Handled messages were deleted (after their outcome was recorded): the queue drains.
    let q = w.queue_of("web-1").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let a = q.attributes().await.unwrap();
        let left: u64 = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
            .iter()
            .map(|k| a.get(*k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the queue still holds {left} message(s)");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A late, duplicated, out-of-order message (the first promotion's, twice): a hint only.
    // The agent re-reads the pointer, finds v2 serving, and deploys nothing.
    let hints = |a: &Agent| a.log_text().matches("promotion hint: reconciling now").count();
    let before = hints(&agent);
    let stale = format!(
        r#"{{"schema_version":1,"kind":"promotion","app":"{}","env":"{ENV}","image":"{v1}","pointer_seq":1,"time":"2025-07-01T10:00:00Z"}}"#,
        w.app
    );
    q.send(&stale).await.unwrap();
    q.send(&stale).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hints(&agent) < before + 2 {
        assert!(Instant::now() < deadline, "the stale hints were not handled:\n{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.deploy_records().await.len(), 2, "a stale message deploys nothing");
    w.assert_one_container(&v2).await;
    let state = w.registration("web-1").await.unwrap().state.unwrap();
    assert_eq!((state.image.as_deref(), state.pointer_seq), (Some(v2.to_string().as_str()), Some(2)));

    let status = agent.stop(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}:\n{}", agent.log_text());
    let state = w.registration("web-1").await.unwrap().state.unwrap();
    assert_eq!(state.status.map(|s| s.as_str()), Some("stopped"));
    assert_eq!(state.image.as_deref(), Some(v2.to_string().as_str()), "stopping leaves the service running");
    w.assert_one_container(&v2).await;
}

/// The agent creates its queue and DLQ with their attributes in one CreateQueue each (the
/// stack's agent policy lets it create its queues, not change them); the same settings again
/// find the same queues, and a changed setting reaches the existing queue where the agent may
/// set attributes (LocalStack enforces no IAM; under the stack's policy it warns instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_creates_its_queues_with_their_attributes_and_updates_changed_ones() {
    use s3dock_agent::config::{QueueConfig, QueueMode};
    use s3dock_agent::queue::{dlq_name, open, queue_name};
    let w = world_or_skip!(false);
    let id = s3dock_core::names::AgentId::parse(&unique("q")).unwrap();
    let mut cfg = QueueConfig {
        mode: QueueMode::Create,
        visibility_timeout: Duration::from_secs(30),
        max_receive_count: 3,
        wait: Duration::from_secs(2),
        name_prefix: "stack-1_agent-".into(),
    };
    let q = open(&w.sqs, &id, &cfg).await.unwrap().expect("a queue");
    let name = queue_name("stack-1_agent-", &id);
    let dlq = w.sqs.queue_named(&dlq_name(&name)).await.unwrap();
    w.forget_queue_later(q.url());
    w.forget_queue_later(dlq.url());
    assert!(q.url().ends_with(&format!("/{name}")), "{}", q.url());
    let attrs = q.attributes().await.unwrap();
    assert_eq!(attrs["VisibilityTimeout"], "30");
    assert_eq!(attrs["ReceiveMessageWaitTimeSeconds"], "2");
    let redrive: serde_json::Value = serde_json::from_str(&attrs["RedrivePolicy"]).unwrap();
    assert!(redrive["deadLetterTargetArn"].as_str().unwrap().ends_with(&format!(":{name}-dlq")), "{redrive}");
    assert_eq!(dlq.attributes().await.unwrap()["MessageRetentionPeriod"], "1209600");

    let again = open(&w.sqs, &id, &cfg).await.unwrap().unwrap();
    assert_eq!(again.url(), q.url(), "the same settings find the same queue");

    cfg.visibility_timeout = Duration::from_secs(60);
    let changed = open(&w.sqs, &id, &cfg).await.unwrap().unwrap();
    assert_eq!(changed.url(), q.url());
    assert_eq!(q.attributes().await.unwrap()["VisibilityTimeout"], "60", "the changed setting was applied");
}
