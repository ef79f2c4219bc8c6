//! S3 stores: the story against LocalStack (when `S3DOCK_TEST_S3_ENDPOINT` is set; required in
//! CI), and the failures that need no emulator: an unreachable endpoint, a missing bucket and
//! refused credentials, the last two from a tiny fake S3 server on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::support::*;

pub(crate) const AWS_ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")];

/// A sandbox whose default profile reaches S3 through `endpoint`.
pub(crate) fn s3_sandbox(endpoint: &str) -> Sandbox {
    let mut sb = Sandbox::new();
    sb.env = AWS_ENV.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    sb.write_config(&format!(
        "[profiles.default]\nendpoint = \"{endpoint}\"\npath_style = true\nregion = \"us-east-1\"\n"
    ));
    sb
}

/// An HTTP server that answers every request with one S3 error, until dropped.
pub(crate) struct FakeS3 {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl FakeS3 {
    pub(crate) fn start(status: &'static str, code: &'static str, message: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop2, hits2) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    hits2.fetch_add(1, Ordering::SeqCst);
                    let _ = answer(stream, status, code, message);
                }
            }
        });
        FakeS3 { addr, stop, hits, thread: Some(thread) }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head and body) and answers it with the canned error, then closes.
fn answer(mut stream: TcpStream, status: &str, code: &str, message: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut remaining = length.saturating_sub(buf.len() - head_end);
    while remaining > 0 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        remaining = remaining.saturating_sub(n);
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fake-1</RequestId></Error>"
    );
    let is_head = head.starts_with("head ");
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: fake-1\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

#[test]
fn refused_credentials_exit_6_and_say_so() {
    let fake = FakeS3::start(
        "403 Forbidden",
        "InvalidAccessKeyId",
        "The AWS Access Key Id you provided does not exist in our records.",
    );
    let sb = s3_sandbox(&fake.endpoint());
    for args in [
        vec!["--store", "s3://fake-bucket/team", "list", "apps"],
        vec!["--store", "s3://fake-bucket/team", "promote", A1, "production"],
        vec!["--store", "s3://fake-bucket/team", "current", "myapp", "production"],
    ] {
        let r = sb.run(&args).code(6);
        assert!(r.stderr.contains("refused the credentials"), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", r.stderr);
    }
    // A GET carries S3's error code (a HEAD answer has no body to carry it).
    sb.run(&["--store", "s3://fake-bucket/team", "list", "apps"]).code(6).stderr_has("InvalidAccessKeyId");
    let j = sb.run(&["--store", "s3://fake-bucket", "list", "tags", "myapp", "--json"]).code(6).json();
    assert_eq!(j["error"]["kind"], "unavailable");
    assert_eq!(j["error"]["exit_code"], 6);
    assert!(fake.hits.load(Ordering::SeqCst) >= 4, "the requests reached the fake server");
}

#[test]
fn missing_credentials_exit_6_and_say_what_to_set() {
    // No AWS_* credentials, an empty HOME (no ~/.aws), instance metadata disabled.
    let sb = s3_sandbox("http://127.0.0.1:1");
    let sb = Sandbox { env: vec![("AWS_REGION".into(), "us-east-1".into())], ..sb };
    let r = sb.run(&["--store", "s3://some-bucket", "list", "apps"]).code(6);
    assert!(r.stderr.contains("no AWS credentials found") && r.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line, no SDK log noise: {}", r.stderr);
}

#[test]
fn a_missing_bucket_exits_6() {
    let fake = FakeS3::start("404 Not Found", "NoSuchBucket", "The specified bucket does not exist");
    let sb = s3_sandbox(&fake.endpoint());
    sb.run(&["--store", "s3://no-such-bucket", "list", "apps"])
        .code(6)
        .stderr_has("bucket no-such-bucket does not exist");
}

#[test]
fn an_unreachable_endpoint_exits_6_in_bounded_time() {
    let sb = s3_sandbox("http://127.0.0.1:1");
    let r = sb.run(&["--store", "s3://unreachable-bucket", "current", "myapp", "production"]).code(6);
    assert!(r.stderr.contains("cannot reach http://127.0.0.1:1"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line, no SDK log noise: {}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    let j = sb.run(&["--store", "s3://unreachable-bucket", "tag", A1, "v1.0.0", "--json"]).code(6).json();
    assert!(j["error"]["message"].as_str().unwrap().contains("http://127.0.0.1:1"), "{j}");
}

/// The LocalStack endpoint, or `None` (skipped) outside CI when none is configured.
pub(crate) fn localstack() -> Option<String> {
    s3dock_testkit::s3::s3_endpoint()
}

pub(crate) fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "s3dock-cli-tests"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub(crate) fn unique_bucket(what: &str) -> String {
    s3dock_testkit::unique(&format!("s3dock-cli-{what}"))
}

pub(crate) async fn list_keys(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = c.list_objects_v2().bucket(bucket).into_paginator().send();
    while let Some(page) = pages.next().await {
        keys.extend(page.expect("list the bucket").contents().iter().filter_map(|o| o.key().map(str::to_owned)));
    }
    keys.sort();
    keys
}

#[test]
fn localstack_story() {
    let Some(endpoint) = localstack() else { return };
    let rt = rt();
    let s3 = client(&endpoint);
    let bucket = unique_bucket("story");
    rt.block_on(s3.create_bucket().bucket(&bucket).send()).expect("create the test bucket");

    // Seed the way a push would: archive then metadata, under the prefix.
    let seeded = tempfile::tempdir().unwrap();
    seed_local(seeded.path(), &[A1, A2]);
    for (key, body) in snapshot(seeded.path()) {
        rt.block_on(s3.put_object().bucket(&bucket).key(format!("team-a/{key}")).body(body.into()).send())
            .expect("seed");
    }

    let sb = s3_sandbox(&endpoint);
    let store = format!("s3://{bucket}/team-a");
    let run = |args: &[&str]| {
        let mut all = vec!["--store", store.as_str()];
        all.extend_from_slice(args);
        sb.run(&all)
    };
    run(&["tag", A2, "v1.2.0"]).ok().stdout_has("tagged");
    run(&["tag", A2, "1.2.0"]).ok().stdout_has("nothing to do");
    run(&["tag", A1, "v1.2.0"]).code(4).stderr_has("--force");
    run(&["tag", A1, "v1.1.5"]).ok();
    run(&["promote", A1, "production"]).ok();
    let j = run(&["promote", "myapp", "v1.2.0", "production", "--json"]).ok().json();
    assert_eq!((j["seq"].as_u64(), j["previous"].as_str()), (Some(2), Some(A1)));
    assert_eq!(j["event"]["status"], "recorded");
    assert_eq!(run(&["current", "myapp", "production"]).ok().stdout, format!("{A2}\n"));
    assert_eq!(run(&["list", "apps", "--json"]).ok().json()["apps"], serde_json::json!(["myapp"]));
    let j = run(&["list", "tags", "myapp", "--json"]).ok().json();
    let versions: Vec<&str> = j["tags"].as_array().unwrap().iter().map(|t| t["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["v1.1.5", "v1.2.0"]);
    let j = run(&["list", "envs", "myapp", "--json"]).ok().json();
    assert_eq!((j["envs"][0]["image"].as_str(), j["envs"][0]["version"].as_str()), (Some(A2), Some("v1.2.0")));
    run(&["rollback", "myapp", "production"]).ok().stdout_has(&format!("rolled back production to {A1}"));
    let j = run(&["history", "myapp", "production", "--json"]).ok().json();
    let types: Vec<&str> = j["entries"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["rollback", "promotion", "promotion"]);
    run(&["cleanup", "myapp", "--keep", "0"]).ok().stdout_has("nothing to delete");

    // Everything landed under the prefix, nothing beside it.
    let keys = rt.block_on(list_keys(&s3, &bucket));
    assert!(keys.iter().all(|k| k.starts_with("team-a/")), "{keys:?}");
    for want in
        ["team-a/tags/myapp/v1.2.0.json", "team-a/tags/myapp/v1.1.5.json", "team-a/pointers/myapp/production.json"]
    {
        assert!(keys.contains(&want.to_owned()), "{want} in {keys:?}");
    }
    assert!(keys.iter().any(|k| k.starts_with("team-a/audit/myapp/")), "inline audit: {keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("probe/") || k.contains("leases/")),
        "the probe and the leases clean up: {keys:?}"
    );

    // Bad input and missing targets write nothing to the bucket.
    run(&["promote", A1, "Production"]).code(2).stderr_has("uppercase");
    run(&["promote", "myapp", "v9.9.9", "staging"]).code(3);
    run(&["tag", "myapp:20250101-0000-0000000", "v2.0.0"]).code(3);
    assert_eq!(rt.block_on(list_keys(&s3, &bucket)), keys);

    // A bucket that does not exist, on a live endpoint.
    let missing = format!("s3://{}", unique_bucket("missing"));
    sb.run(&["--store", &missing, "list", "apps"]).code(6).stderr_has("does not exist");

    rt.block_on(async {
        for k in &keys {
            let _ = s3.delete_object().bucket(&bucket).key(k).send().await;
        }
        let _ = s3.delete_bucket().bucket(&bucket).send().await;
    });
}
