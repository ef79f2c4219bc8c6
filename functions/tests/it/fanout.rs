//! Promotion fan-out at fleet scale, on LocalStack: N registered agents, each with its own
//! queue; one pointer event must put exactly one message in every queue, and a second delivery
//! of the same event must send none.
//!
//! `fan_out_sends_one_message_per_agent_and_none_on_redelivery` runs it with 50 agents in the
//! normal suite. `fan_out_to_a_thousand_agents` is the benchmark (ignored; run by
//! `tests/bench/fanout.sh`, figure in docs/benchmarks.md): 1,000 agents, and the pointer event
//! handled, every message sent, within 10 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use s3dock_aws::S3Store;
use s3dock_aws::sqs::{SqsClient, SqsConfig, SqsQueue};
use s3dock_core::clock::{Clock, SystemClock};
use s3dock_core::docs::{self, AgentRegistration, SCHEMA_VERSION};
use s3dock_core::layout;
use s3dock_core::names::AgentId;
use s3dock_core::registry::{EventMode, PromoteSource, Registry};
use s3dock_core::store::{ObjectStore, Precondition};
use s3dock_functions::{AwsBackend, Function, Invocation, Kind, Settings};
use s3dock_testkit::s3::create_test_bucket;
use s3dock_testkit::seed_image;
use serde_json::{Value, json};

use crate::support::*;

/// Requests the set-up and the checks keep in flight at once (not the code under test).
const SETUP_CONCURRENCY: usize = 32;

/// What one fan-out measured.
struct FanOut {
    agents: usize,
    /// The first delivery of the pointer event: read, resolve, list and read the
    /// registrations, claim, send every message.
    first: Duration,
    /// A second delivery of the same event.
    second: Duration,
}

async fn fan_out(agents: usize) -> Option<FanOut> {
    let endpoint = crate::pipeline::endpoint()?;
    let region = crate::pipeline::region();
    let id = crate::pipeline::suffix();
    let bucket = format!("s3dock-fanout-{id}");
    create_test_bucket(&endpoint, &bucket).await;

    let mut settings = Settings::new("s3dock-fanout");
    settings.bucket = Some(bucket.clone());
    settings.s3_endpoint = Some(endpoint.clone());
    settings.sqs_endpoint = Some(endpoint.clone());
    settings.region = region.clone();
    let store: Arc<dyn ObjectStore> = Arc::new(S3Store::connect(settings.s3_config(&bucket).unwrap()).await.unwrap());
    let sqs = SqsClient::connect(&SqsConfig {
        region: Some(region.clone()),
        endpoint: Some(endpoint.clone()),
        ..SqsConfig::default()
    })
    .await
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    // N agents of myapp/production, each with its own queue and a fresh registration.
    let started = Instant::now();
    let queues: Vec<SqsQueue> = futures::stream::iter(0..agents)
        .map(|i| {
            let sqs = sqs.clone();
            let name = format!("s3dock_agent-fan{i:04}-{id}");
            async move { sqs.create_queue(&name, &Default::default()).await.unwrap() }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await;
    futures::stream::iter(queues.iter().enumerate())
        .for_each_concurrent(SETUP_CONCURRENCY, |(i, q)| {
            let (store, clock) = (store.clone(), clock.clone());
            async move {
                let reg = AgentRegistration {
                    schema_version: Some(SCHEMA_VERSION),
                    agent_id: AgentId::parse(&format!("host-{i:04}")).unwrap(),
                    app_name: app("myapp"),
                    environment: env("production"),
                    queue_url: Some(q.url().to_owned()),
                    host: format!("host-{i:04}.internal"),
                    last_heartbeat: clock.now(),
                    state: None,
                    version: None,
                };
                let key = layout::agent(&reg.app_name, &reg.environment, &reg.agent_id);
                store.put_bytes(&key, Bytes::from(docs::encode(&reg)), Precondition::None).await.unwrap();
            }
        })
        .await;
    eprintln!("fan-out: {agents} agents with their queues set up in {:.1}s", started.elapsed().as_secs_f64());

    // The image and the promotion, written as `s3dock promote` does with events = "lambda".
    seed_image(&*store, &img(A1), b"the archive of A1", clock.now()).await.unwrap();
    let registry = Registry::new(store.clone(), clock.clone(), "fanout-user", EventMode::Lambda);
    registry.promote(&PromoteSource::Image(img(A1)), &env("production")).await.unwrap();
    let pointer = layout::pointer(&app("myapp"), &env("production"));
    let info = store.head(&pointer).await.unwrap().expect("the pointer was written");

    // The pointer event, as S3 hands it to promotion-fanout.
    let event = json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": clock.now().to_rfc3339(),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "fanout-user"},
        "s3": {"bucket": {"name": bucket}, "object": {"key": pointer.as_str(), "size": info.size, "eTag": info.etag.0}},
    }]});
    let backend = AwsBackend::connect(&settings, true).await.expect("backend");
    let function = Function::new(Kind::PromotionFanout, settings.clone(), Arc::new(backend), clock.clone());
    let inv = Invocation {
        request_id: "fanout".into(),
        function_arn: Some(format!("arn:aws:lambda:{region}:000000000000:function:s3dock-fanout")),
    };

    let started = Instant::now();
    let first = function.handle(&event, &inv).await.expect("the fan-out succeeds");
    let first_took = started.elapsed();
    let record = &first["records"][0];
    assert_eq!(record["result"], "recorded", "{first}");
    assert_eq!(record["detail"]["notified"].as_array().map(Vec::len), Some(agents), "every agent was notified");
    assert_eq!(message_counts(&queues).await, vec![1; agents], "exactly one message in every agent's queue");

    let started = Instant::now();
    let second = function.handle(&event, &inv).await.expect("the redelivery succeeds");
    let second_took = started.elapsed();
    assert_eq!(second["records"][0]["result"], "duplicate", "{second}");
    assert_eq!(message_counts(&queues).await, vec![1; agents], "a second delivery sends nothing");

    futures::stream::iter(&queues)
        .for_each_concurrent(SETUP_CONCURRENCY, |q| async move {
            let _ = q.delete_queue().await;
        })
        .await;
    Some(FanOut { agents, first: first_took, second: second_took })
}

/// The number of messages in each queue, in order.
async fn message_counts(queues: &[SqsQueue]) -> Vec<u64> {
    futures::stream::iter(queues)
        .map(|q| async move {
            let attrs = q.attributes().await.unwrap();
            let n = |k: &str| attrs.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            n("ApproximateNumberOfMessages") + n("ApproximateNumberOfMessagesNotVisible")
        })
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await
}

fn report(f: &FanOut) -> Value {
    json!({
        "agents": f.agents,
        "first_delivery_s": (f.first.as_secs_f64() * 1000.0).round() / 1000.0,
        "second_delivery_s": (f.second.as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_sends_one_message_per_agent_and_none_on_redelivery() {
    let Some(f) = fan_out(50).await else { return };
    eprintln!("fan-out: {}", report(&f));
}

/// The benchmark: `tests/bench/fanout.sh` runs it and prints the line starting `fan-out-result:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (1,000 queues on LocalStack): tests/bench/fanout.sh"]
async fn fan_out_to_a_thousand_agents() {
    let agents = std::env::var("S3DOCK_FANOUT_AGENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let Some(f) = fan_out(agents).await else { return };
    println!("fan-out-result: {}", report(&f));
    assert!(f.first < Duration::from_secs(10), "{agents} agents took {:?} (goal: within 10 s)", f.first);
}
