//! The real function binaries on LocalStack: a versioned bucket, S3 notifications into SQS, and
//! the `verify-upload` binary run under a small Lambda Runtime API (the three endpoints the
//! runtime client uses) that hands it the SQS events Lambda would build.
//!
//! The two scenarios that once destroyed good data:
//! - a late verify event, naming the first version of re-pushed metadata, arrives after the
//!   second push's event: the current image must stay untouched;
//! - metadata of a newer schema (a newer s3dock during an upgrade): the event fails
//!   retryably, and the document stays where it is.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use s3dock_aws::S3Store;
use s3dock_aws::sqs::{QueueSettings, ReceiveOptions, ReceivedMessage, SqsClient, SqsConfig, SqsQueue};
use s3dock_core::clock::SystemClock;
use s3dock_core::docs::{self, ImageMetadata};
use s3dock_core::layout;
use s3dock_core::names::ImageRef;
use s3dock_core::push::{PushFacts, PushPlan};
use s3dock_core::registry::{EventMode, Registry};
use s3dock_core::store::{ObjectStore, Precondition, read_small, read_to_vec, reader_from_bytes};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::pipeline::{endpoint, lambda_sqs_event, notifications, region, s3_client, suffix};

/// Where an invocation's answer goes: the function's response, or its error.
type Reply = oneshot::Sender<Result<Value, String>>;
/// Invocations handed to the function, waiting for their answer, by request id.
type Waiting = Arc<Mutex<VecDeque<(String, Reply)>>>;

/// One invocation waiting to be taken by the function: its event and where its answer goes.
struct Pending {
    event: Value,
    reply: Reply,
}

/// A Lambda Runtime API on 127.0.0.1 serving one function process.
struct RuntimeApi {
    addr: String,
    invocations: mpsc::Sender<Pending>,
}

impl RuntimeApi {
    async fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the runtime API");
        let addr = listener.local_addr().expect("local address").to_string();
        let (tx, rx) = mpsc::channel::<Pending>(4);
        let queue = Arc::new(Mutex::new(rx));
        let waiting: Waiting = Arc::default();
        tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (queue, waiting) = (queue.clone(), waiting.clone());
                next_id += 1000;
                let base = next_id;
                tokio::spawn(async move {
                    let _ = serve(conn, queue, waiting, base).await;
                });
            }
        });
        RuntimeApi { addr, invocations: tx }
    }

    /// Invokes the function with `event` and waits (bounded) for its answer.
    async fn invoke(&self, event: Value) -> Result<Value, String> {
        let (reply, rx) = oneshot::channel();
        self.invocations.send(Pending { event, reply }).await.expect("the runtime API runs");
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("the function answers within a minute")
            .expect("the runtime API keeps the reply")
    }
}

/// Serves HTTP/1.1 requests on one connection: `next` hands out an invocation, `response` and
/// `error` deliver its answer.
async fn serve(
    conn: TcpStream,
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    waiting: Waiting,
    mut id: u64,
) -> std::io::Result<()> {
    let mut conn = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            conn.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                conn.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                conn.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            conn.read_exact(&mut body).await?;
        }
        let answer = |status: &str, headers: String, body: &[u8]| {
            let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n{headers}\r\n", body.len()).into_bytes();
            out.extend_from_slice(body);
            out
        };
        let out = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let Some(p) = queue.lock().await.recv().await else { return Ok(()) };
            id += 1;
            let request_id = format!("req-{id}");
            waiting.lock().await.push_back((request_id.clone(), p.reply));
            let deadline =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
                    + 60_000;
            let headers = format!(
                "content-type: application/json\r\nlambda-runtime-aws-request-id: {request_id}\r\nlambda-runtime-deadline-ms: {deadline}\r\nlambda-runtime-invoked-function-arn: arn:aws:lambda:{}:000000000000:function:verify-upload\r\nlambda-runtime-trace-id: Root=1-0-0\r\n",
                region()
            );
            answer("200 OK", headers, &serde_json::to_vec(&p.event).expect("events serialize"))
        } else if method == "POST" && (path.ends_with("/response") || path.ends_with("/error")) {
            let request_id = path.split('/').rev().nth(1).unwrap_or_default().to_owned();
            let mut w = waiting.lock().await;
            if let Some(pos) = w.iter().position(|(r, _)| *r == request_id)
                && let Some((_, reply)) = w.remove(pos)
            {
                let result = if path.ends_with("/response") {
                    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
                } else {
                    Err(String::from_utf8_lossy(&body).into_owned())
                };
                let _ = reply.send(result);
            }
            answer("202 Accepted", String::new(), b"{}")
        } else {
            // init/error and anything else: accepted, noted in the test's output.
            eprintln!("runtime API: {method} {path}: {}", String::from_utf8_lossy(&body));
            answer("202 Accepted", String::new(), b"{}")
        };
        conn.get_mut().write_all(&out).await?;
    }
}

/// The `verify-upload` binary, running against LocalStack, fed by `api`.
fn spawn_verify_upload(api: &RuntimeApi, endpoint: &str, bucket: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_verify-upload"))
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "verify-upload")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/verify-upload")
        .env("S3DOCK_BUCKET", bucket)
        .env("S3DOCK_S3_ENDPOINT", endpoint)
        .env("S3DOCK_SQS_ENDPOINT", endpoint)
        .env("AWS_REGION", region())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the verify-upload binary")
}

/// A versioned bucket whose metadata events go to a queue of their own.
struct Stack {
    endpoint: String,
    bucket: String,
    store: Arc<S3Store>,
    events: SqsQueue,
    events_arn: String,
}

impl Stack {
    async fn new() -> Option<Stack> {
        let endpoint = endpoint()?;
        let id = suffix();
        let bucket = format!("s3dock-bin-{id}");
        let s3 = s3_client(&endpoint).await;
        s3.create_bucket().bucket(&bucket).send().await.expect("create the test bucket");
        s3.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("enable versioning");
        let sqs = SqsClient::connect(&SqsConfig {
            region: Some(region()),
            endpoint: Some(endpoint.clone()),
            ..Default::default()
        })
        .await
        .expect("SQS client");
        let events =
            sqs.create_queue(&format!("s3dock-bin-{id}"), &QueueSettings::default()).await.expect("create the queue");
        let events_arn = events.arn().await.expect("queue ARN");
        s3.put_bucket_notification_configuration()
            .bucket(&bucket)
            .notification_configuration(notifications(&events_arn, ""))
            .send()
            .await
            .expect("configure notifications");
        let mut cfg = s3dock_aws::S3Config::new(&bucket).expect("bucket name");
        cfg.endpoint = Some(endpoint.clone());
        cfg.path_style = true;
        cfg.region = Some(region());
        let store = Arc::new(S3Store::connect(cfg).await.expect("S3 store"));
        Some(Stack { endpoint, bucket, store, events, events_arn })
    }

    /// The next notification about `key` (others and the test event are dropped), bounded.
    async fn next_event_for(&self, key: &str) -> ReceivedMessage {
        let deadline = Instant::now() + Duration::from_secs(30);
        let opts = ReceiveOptions { max_messages: 10, wait: Duration::from_secs(1), visibility_timeout: None };
        loop {
            assert!(Instant::now() < deadline, "no notification for {key} within 30 s");
            for m in self.events.receive(&opts).await.expect("receive notifications") {
                self.events.delete(&m.receipt_handle).await.expect("delete");
                let body: Value = serde_json::from_str(&m.body).unwrap_or_default();
                let about = body["Records"][0]["s3"]["object"]["key"].as_str().unwrap_or_default();
                if s3dock_core::layout::decode_event_key(about).is_ok_and(|k| k.as_str() == key) {
                    return m;
                }
            }
        }
    }
}

fn image() -> ImageRef {
    ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap()
}

async fn push(reg: &Registry, image: &ImageRef, id: char, bytes: &'static [u8]) {
    let image_id = format!("sha256:{}", id.to_string().repeat(64));
    let facts = PushFacts {
        image_id: image_id.clone(),
        git_hash: format!("{}{}", image.tag.hash7(), "0".repeat(33)),
        git_time: image.tag.time_str(),
        ..Default::default()
    };
    let PushPlan::Upload(plan) = reg.plan_push(image, &image_id, false).await.expect("plan") else {
        panic!("a new upload")
    };
    reg.push_archive(image, &facts, reader_from_bytes(bytes), plan).await.expect("push");
}

async fn audit_types(store: &dyn ObjectStore) -> Vec<String> {
    let mut out = Vec::new();
    for o in s3dock_core::store::list_all(store, "audit/").await.unwrap() {
        let (b, _) = read_small(store, &o.key, 1 << 20).await.unwrap().unwrap();
        out.push(docs::decode::<docs::AuditRecord>(o.key.as_str(), &b).unwrap().event_type);
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_verify_event_leaves_the_current_image_untouched() {
    let Some(stack) = Stack::new().await else { return };
    let reg = Registry::new(stack.store.clone(), Arc::new(SystemClock), "ci", EventMode::Lambda);
    let image = image();
    let meta_key = layout::image_metadata(&image.app, &image.tag);
    // Two CI runners build the same commit; the second build differs.
    push(&reg, &image, 'a', b"first build of f7a5a27").await;
    let first = stack.next_event_for(meta_key.as_str()).await;
    push(&reg, &image, 'b', b"second, different build of f7a5a27").await;
    let second = stack.next_event_for(meta_key.as_str()).await;
    assert!(first.body.contains("versionId") && second.body.contains("versionId"), "{}", first.body);

    let api = RuntimeApi::start().await;
    let mut function = spawn_verify_upload(&api, &stack.endpoint, &stack.bucket);
    let answer = api.invoke(lambda_sqs_event(std::slice::from_ref(&second), &stack.events_arn)).await.unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let before = reg.image(&image).await.unwrap();
    assert_eq!(before.metadata.image_id.as_deref(), Some(format!("sha256:{}", "b".repeat(64)).as_str()));

    // The first push's event, late, naming the first metadata version.
    let answer = api.invoke(lambda_sqs_event(std::slice::from_ref(&first), &stack.events_arn)).await.unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}), "acknowledged");
    let after = reg.image(&image).await.unwrap();
    assert_eq!(after.metadata, before.metadata, "the current metadata is untouched");
    let obj = stack.store.get(&after.archive_key, Default::default()).await.unwrap();
    assert_eq!(read_to_vec(obj.body).await.unwrap(), b"second, different build of f7a5a27");
    assert_eq!(audit_types(&*stack.store).await, ["push", "push"], "both pushes recorded, nothing rejected");
    function.kill().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_of_a_newer_schema_waits_for_newer_functions() {
    let Some(stack) = Stack::new().await else { return };
    let image = image();
    let meta_key = layout::image_metadata(&image.app, &image.tag);
    let archive = layout::image_archive(&image.app, &image.tag);
    let bytes = b"pushed by a newer s3dock";
    let d = s3dock_core::digest::digest_reader(&bytes[..]).unwrap();
    stack.store.put_bytes(&archive, Bytes::from_static(bytes), Precondition::IfAbsent).await.unwrap();
    let meta = ImageMetadata {
        schema_version: Some(99),
        checksum: d.md5,
        size: d.size,
        git_hash: "f7a5a27".into(),
        git_time: "20250721-2118".into(),
        image_tag: image.to_string(),
        app_name: image.app.to_string(),
        ..Default::default()
    };
    let body = Bytes::from(serde_json::to_vec(&meta).unwrap());
    stack.store.put_bytes(&meta_key, body.clone(), Precondition::IfAbsent).await.unwrap();
    let event = stack.next_event_for(meta_key.as_str()).await;

    let api = RuntimeApi::start().await;
    let mut function = spawn_verify_upload(&api, &stack.endpoint, &stack.bucket);
    for _ in 0..3 {
        let answer = api.invoke(lambda_sqs_event(std::slice::from_ref(&event), &stack.events_arn)).await.unwrap();
        assert_eq!(answer, json!({"batchItemFailures": [{"itemIdentifier": event.id}]}), "retried, then the DLQ");
    }
    let (kept, _) = read_small(&*stack.store, &meta_key, 1 << 20).await.unwrap().expect("still there");
    assert_eq!(kept, body, "never rejected, archived away or rewritten");
    assert!(stack.store.head(&archive).await.unwrap().is_some());
    assert!(s3dock_core::store::list_all(&*stack.store, "archive/").await.unwrap().is_empty());
    assert!(audit_types(&*stack.store).await.is_empty());
    function.kill().await.ok();
}
