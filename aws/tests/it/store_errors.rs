//! How the S3 store fails: fast, with the right `StoreError`, and a message naming what to fix.
//!
//! Wrong credentials cannot be tested on the emulators (they accept any), and missing
//! credentials need an environment without them; the mapping of both is unit-tested in
//! `s3/errors.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use s3dock_aws::{S3Config, S3Store};
use s3dock_core::store::{GetOptions, ObjectStore, Precondition, PutOptions, StoreError};

use crate::support::*;

/// Nothing listens on port 1: every attempt is refused at once, so even with retries (and their
/// backoff) the failure must come quickly, retryable, naming the endpoint.
#[tokio::test]
async fn unreachable_endpoint_fails_fast_and_names_it() {
    // The emulator itself is not used, but its environment provides the credentials; without
    // them the credentials chain would fail first (NoCredentials).
    if s3_endpoint().is_none() {
        return;
    }
    let cfg = test_config(&Endpoint::Custom("http://127.0.0.1:1".into()), "s3dock-test-unreachable", "");
    let store = S3Store::connect(cfg).await.expect("connect sends no request");
    let started = Instant::now();
    let e = store.head(&key("pointers/a/prod.json")).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(&e, StoreError::Unreachable { endpoint, .. } if endpoint == "http://127.0.0.1:1"), "{e:?}");
    assert!(e.is_retryable());
    let msg = e.to_string();
    assert!(msg.contains("http://127.0.0.1:1") && msg.contains("check the endpoint URL"), "{msg}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    eprintln!("unreachable endpoint reported after {elapsed:.1?}: {msg}");

    // The write paths map the same way (and the streaming one leaves nothing to abort).
    let e = store.put_bytes(&key("a"), Bytes::from_static(b"x"), Precondition::IfAbsent).await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    let body = TestReader::new(pseudo_random(TEST_PART_SIZE + 10, 1)).boxed();
    let e = store.put_stream(&key("b"), body, PutOptions::default()).await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
}

/// An endpoint that never answers a connection attempt (SYNs dropped, as behind a firewall):
/// each attempt gives up after the 3 s connect timeout, so with 4 attempts and the retry
/// policy's jittered backoff (at most 1 + 2 + 4 s) the failure comes within about 19 s.
#[tokio::test]
async fn black_holed_endpoint_times_out_in_bounded_time() {
    if s3_endpoint().is_none() {
        return;
    }
    // A listener with a backlog of 0 that never accepts: once its queue holds one connection,
    // Linux drops further SYNs, which is what a black-holed address looks like to a client.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("address");
    let mut queued = Vec::new();
    let mut black_holed = false;
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(conn)) => queued.push(conn),
            Ok(Err(e)) => panic!("connecting to the test listener: {e}"),
            Err(_) => {
                black_holed = true;
                break;
            }
        }
    }
    if !black_holed {
        eprintln!("skipped: this kernel accepts connections beyond the listen backlog, so no black hole");
        return;
    }
    let endpoint = format!("http://{addr}");
    let store = S3Store::connect(test_config(&Endpoint::Custom(endpoint.clone()), "s3dock-test-blackhole", ""))
        .await
        .expect("connect");
    let started = Instant::now();
    let e = store.head(&key("pointers/a/prod.json")).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(&e, StoreError::Unreachable { endpoint: ep, .. } if *ep == endpoint), "{e:?}");
    assert!(e.to_string().contains("timeout"), "{e}");
    assert!(elapsed >= Duration::from_secs(9), "4 attempts of 3 s each cannot fail in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(25), "took {elapsed:?}");
    eprintln!("black-holed endpoint reported after {elapsed:.1?}");
    drop(queued);
}

/// A bucket that does not exist is named as such, with what to do, on every operation that can
/// tell (a HEAD response has no body, so `head` sees a plain 404 and answers `None`).
#[tokio::test]
async fn missing_bucket_is_reported_as_such() {
    let Some(ep) = s3_endpoint() else { return };
    let endpoint = Endpoint::parse(&ep);
    if endpoint == Endpoint::Aws {
        // On AWS a random name may exist in another account (403) or another region (301).
        eprintln!("skipped on AWS: a missing bucket cannot be guaranteed there");
        return;
    }
    let bucket = format!("s3dock-test-{}", unique("missing"));
    let store = S3Store::connect(test_config(&endpoint, &bucket, "")).await.expect("connect");
    let k = key("images/a/x.json");
    let check = |what: &str, e: StoreError| {
        assert!(matches!(&e, StoreError::NoSuchBucket { bucket: b } if *b == bucket), "{what}: {e:?}");
        assert!(e.to_string().contains("create it or fix the store URL"), "{what}: {e}");
        assert!(!e.is_retryable(), "{what}");
    };
    check("get", store.get(&k, GetOptions::default()).await.unwrap_err());
    check("put_bytes", store.put_bytes(&k, Bytes::from_static(b"x"), Precondition::IfAbsent).await.unwrap_err());
    check("list", store.list_page("images/", true, None).await.unwrap_err());
    check("delete", store.delete(&k).await.unwrap_err());
    let big = TestReader::new(pseudo_random(TEST_PART_SIZE + 10, 2)).boxed();
    check("put_stream (multipart)", store.put_stream(&k, big, PutOptions::default()).await.unwrap_err());
    assert!(store.head(&k).await.expect("head").is_none());
}

/// Settings are checked before anything is sent.
#[tokio::test]
async fn bad_settings_fail_at_connect() {
    let mut cfg = S3Config::new("s3dock-test-settings").expect("valid name");
    cfg.concurrency = 0;
    let e = S3Store::connect(cfg).await.unwrap_err();
    assert!(e.to_string().contains("concurrency"), "{e}");
    let e = S3Config::from_url("s3://Not_A_Bucket/x").unwrap_err().to_string();
    assert!(e.contains("bucket names are 3-63 characters"), "{e}");
}
