//! What the agent does with each kind of message, on a real queue: a promotion for an app it
//! does not serve is deleted and ignored; one that cannot be parsed is never deleted, backs off,
//! and lands in the dead-letter queue after `max_receive_count` receives (no hot loop); a valid
//! hint is deleted once its reconcile is recorded.

use std::time::{Duration, Instant};

use s3dock_aws::sqs::{ReceiveOptions, SqsQueue};

use crate::support::*;

async fn counts(q: &SqsQueue) -> (u64, u64) {
    let a = q.attributes().await.unwrap();
    let n = |k: &str| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    (n("ApproximateNumberOfMessages"), n("ApproximateNumberOfMessagesNotVisible"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_messages_are_dropped_and_poison_ends_in_the_dead_letter_queue() {
    let w = world_or_skip!(false);
    let queue = "mode = \"create\"\nvisibility_timeout = \"2s\"\nmax_receive_count = 2\nwait = \"1s\"";
    let config = w.agent_config("web-1", "10m", queue, &[w.service(two_ports(), "driver = \"none\"", "")]);
    let mut agent = Agent::start(&w, "web-1", &config, &[]);
    let reg = w.wait_registration("web-1", "registered", LONG, |r| r.queue_url.is_some()).await;
    let url = reg.queue_url.unwrap();
    w.forget_queue_later(&url);
    let q = w.sqs.queue(&url);
    let dlq = w.sqs.queue(&format!("{url}-dlq"));

    // A promotion of another app: deleted, ignored, never in the DLQ.
    let foreign = format!(
        r#"{{"schema_version":1,"kind":"promotion","app":"someone-else","env":"{ENV}","image":"someone-else:20250721-2118-f7a5a27","pointer_seq":9,"time":"2025-07-22T10:18:00Z"}}"#
    );
    q.send(&foreign).await.unwrap();
    agent.wait_log("does not serve: deleted", LONG).await;
    // A hint for the served service: reconciled (no pointer), recorded, deleted.
    let mine = foreign.replace("someone-else", &w.app);
    q.send(&mine).await.unwrap();
    agent.wait_log("promotion hint: reconciling now", LONG).await;

    // A message that is not a promotion at all.
    let sent = Instant::now();
    q.send("{\"kind\": \"promotion\", \"app\": \"../../etc\"}").await.unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while dead.is_empty() {
        assert!(Instant::now() < deadline, "the malformed message never reached the DLQ:\n{}", agent.log_text());
        dead = dlq
            .receive(&ReceiveOptions { max_messages: 10, wait: Duration::from_secs(1), visibility_timeout: None })
            .await
            .unwrap();
    }
    let took = sent.elapsed();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(dead[0].body.contains("../../etc"));
    let receives = agent.log_text().matches("malformed message: not deleted").count();
    eprintln!(
        "the malformed message reached the DLQ after {:.1}s and {receives} receives by the agent",
        took.as_secs_f64()
    );
    // Received exactly max_receive_count times, and hidden in between (2 s x 1): no hot loop.
    assert_eq!(receives, 2, "{}", agent.log_text());
    assert!(took >= Duration::from_secs(2), "the back-off was skipped: {took:?}");

    // Nothing else is left anywhere: the foreign and the valid message were deleted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (visible, hidden) = counts(&q).await;
        if visible + hidden == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the queue still holds {visible} + {hidden} message(s)");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        dlq.receive(&ReceiveOptions { max_messages: 10, wait: Duration::from_secs(1), visibility_timeout: None })
            .await
            .unwrap()
            .is_empty(),
        "only the malformed message is dead"
    );
    let state = w.registration("web-1").await.unwrap().state.unwrap();
    assert_eq!(state.status.map(|s| s.as_str()), Some("no-pointer"));
    assert!(agent.stop(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_given_queue_is_used_as_is_and_a_missing_one_stops_the_start() {
    let w = world_or_skip!(false);
    let name = unique("s3dock-agent-given");
    let given = w.sqs.create_queue(&name, &Default::default()).await.unwrap();
    w.forget_queue_later(given.url());
    let queue = format!("mode = \"url\"\nurl = \"{}\"\nwait = \"1s\"", given.url());
    let config = w.agent_config("given", "10m", &queue, &[w.service(two_ports(), "driver = \"none\"", "")]);
    let mut agent = Agent::start(&w, "given", &config, &[]);
    let reg = w.wait_registration("given", "registered", LONG, |r| r.queue_url.is_some()).await;
    assert_eq!(reg.queue_url.as_deref(), Some(given.url()), "the given queue, not one of its own");
    let hint = format!(
        r#"{{"schema_version":1,"kind":"promotion","app":"{}","env":"{ENV}","image":"{}:20250721-2118-f7a5a27","pointer_seq":1,"time":"2025-07-22T10:18:00Z"}}"#,
        w.app, w.app
    );
    given.send(&hint).await.unwrap();
    agent.wait_log("promotion hint: reconciling now", LONG).await;
    assert!(agent.stop(Duration::from_secs(30)).await.success());

    // A queue that does not exist: the start fails with SQS's reason, exit 1.
    let missing = given.url().replace(&name, &format!("{name}-missing"));
    let config = w.agent_config("given", "10m", &format!("mode = \"url\"\nurl = \"{missing}\""), &[]);
    let mut agent = Agent::start(&w, "given", &config, &[]);
    let status = agent.wait_exit(LONG).await;
    assert_eq!(status.code(), Some(1), "{}", agent.log_text());
    assert!(agent.log_text().contains("does not exist"), "{}", agent.log_text());
}
