//! Connecting: API version negotiation, and failing fast when there is no engine.

use std::time::{Duration, Instant};

use s3dock_engine::docker::{ApiVersion, CONNECT_TIMEOUT};
use s3dock_engine::{BollardEngine, DockerEngine, EngineError};

use crate::support::{engine_or_skip, unique_repo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiates_the_engines_api_version() {
    let engine = engine_or_skip!();
    let v = engine.version().await.unwrap();
    eprintln!("engine {} (API {}), speaking {}: {v:?}", v.server_version, v.server_api_version, v.api_version);
    let server = ApiVersion::parse(&v.server_api_version).expect("the engine reports its API version");
    let expected = server.min(ApiVersion::bollard());
    assert_eq!(v.api_version, expected.to_string());
    assert_eq!(engine.api_version(), expected);
    // Docker 20.10 speaks 1.41, older than bollard's models: the case that must work here.
    if v.server_version.starts_with("20.10") {
        assert_eq!(v.api_version, "1.41");
        assert!(!v.containerd_store);
    }
    assert!(!v.server_version.is_empty());
    assert_eq!(v.os, "linux");
    assert!(!v.arch.is_empty() && !v.storage_driver.is_empty());
    // Pinned requests are accepted: a listing, a lookup of something absent.
    assert!(engine.list_images(&unique_repo()).await.unwrap().is_empty());
    assert!(engine.inspect_image(&format!("{}:none", unique_repo())).await.unwrap().is_none());
}

fn assert_unreachable(result: Result<BollardEngine, EngineError>, mention: &str) {
    match result {
        Err(e @ EngineError::Unreachable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("DOCKER_HOST") && msg.contains("start Docker"), "{msg}");
            assert!(msg.contains(mention), "{msg} should mention {mention}");
            assert!(e.is_retryable());
        }
        Err(other) => panic!("expected Unreachable, got {other:?}"),
        Ok(engine) => panic!("expected Unreachable, connected to {}", engine.host()),
    }
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_at_once() {
    let start = Instant::now();
    assert_unreachable(BollardEngine::connect_to("tcp://127.0.0.1:1").await, "tcp://127.0.0.1:1");
    assert!(start.elapsed() < CONNECT_TIMEOUT, "took {:?}", start.elapsed());
}

#[tokio::test]
async fn a_missing_socket_or_unknown_scheme_is_unreachable() {
    assert_unreachable(BollardEngine::connect_to("unix:///nonexistent/docker.sock").await, "/nonexistent/docker.sock");
    assert_unreachable(BollardEngine::connect_to("ssh://builder@example.com").await, "unsupported");
}

#[tokio::test]
async fn a_silent_engine_fails_within_the_connect_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let start = Instant::now();
    assert_unreachable(BollardEngine::connect_to(&format!("tcp://{addr}")).await, "no answer");
    let took = start.elapsed();
    assert!(took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + Duration::from_secs(3), "took {took:?}");
    hold.abort();
}
