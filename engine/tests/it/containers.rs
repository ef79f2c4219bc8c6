//! Containers: create, start, health, publish, list, stop, remove.

use std::collections::BTreeMap;
use std::time::Duration;

use s3dock_engine::{
    ContainerFilter, ContainerSpec, DockerEngine, EngineError, HealthStatus, PortPublish, Protocol, RestartPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Cleanup, build_from_files, engine_or_skip, httpd_app_files, unique_repo};

/// GET / on 127.0.0.1:`port`, retried for up to ~15 s; the whole response.
async fn fetch(port: u16) -> String {
    let mut last = String::new();
    for _ in 0..30 {
        let attempt = async {
            let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            socket.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
            let mut response = Vec::new();
            socket.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(response)) if response.starts_with("HTTP/1.") => return response,
            Ok(Ok(response)) => last = format!("unexpected response {response:?}"),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no HTTP answer on 127.0.0.1:{port}: {last}");
}

/// Polls the container's health until it is `want`, for up to 30 s.
async fn wait_health(engine: &impl DockerEngine, id: &str, want: HealthStatus) {
    let mut seen = HealthStatus::None;
    for _ in 0..60 {
        let info = engine.inspect_container(id).await.unwrap().expect("the container exists");
        seen = info.health;
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("container {id} never became {want:?} (last {seen:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_serves_passes_its_health_check_and_stops() {
    let engine = engine_or_skip!();
    let repo = unique_repo();
    let image = format!("{repo}:20250721-2118-f7a5a27");
    let cleanup = Cleanup::new(&engine);
    cleanup.image(image.clone());
    build_from_files(&engine, &image, &httpd_app_files(&repo, "hello from s3dock")).await;

    let name = format!("{repo}-blue");
    let spec = ContainerSpec {
        name: name.clone(),
        image: image.clone(),
        env: vec![("S3DOCK_COLOR".into(), "blue".into())],
        labels: BTreeMap::from([("io.s3dock.app".into(), repo.clone()), ("io.s3dock.color".into(), "blue".into())]),
        ports: vec![PortPublish {
            container_port: 8080,
            protocol: Protocol::Tcp,
            host_ip: Some("127.0.0.1".into()),
            host_port: None,
        }],
        memory_bytes: Some(64 * 1024 * 1024),
        nano_cpus: Some(500_000_000),
        restart_policy: RestartPolicy::UnlessStopped,
        ..Default::default()
    };
    let id = engine.create_container(&spec).await.unwrap();
    cleanup.container(id.clone());

    let created = engine.inspect_container(&name).await.unwrap().unwrap();
    assert_eq!(created.id, id);
    assert_eq!(created.name, name);
    assert_eq!(created.image, image);
    assert!(!created.running);
    assert_eq!(created.status, "created");
    assert!(created.started_at.is_none() && created.exit_code.is_none());
    assert_eq!(created.labels["io.s3dock.color"], "blue");

    engine.start_container(&id).await.unwrap();
    engine.start_container(&id).await.unwrap(); // already running: fine
    wait_health(&engine, &id, HealthStatus::Healthy).await;
    let running = engine.inspect_container(&id).await.unwrap().unwrap();
    assert!(running.running);
    assert!(running.started_at.is_some());
    assert!(running.image_id.starts_with("sha256:"));
    let port = running.host_port(8080).expect("8080/tcp is published");
    assert_eq!(running.ports[0].host_ip, "127.0.0.1");
    let page = fetch(port).await;
    assert!(page.starts_with("HTTP/1.") && page.contains(" 200 "), "{page}");
    assert!(page.contains("hello from s3dock"), "{page}");

    let by_label = engine.list_containers(&ContainerFilter::default().label("io.s3dock.app", &repo)).await.unwrap();
    assert_eq!(by_label.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert_eq!(by_label[0].names, [name.as_str()]);
    assert_eq!(by_label[0].state, "running");
    assert_eq!(by_label[0].labels["io.s3dock.color"], "blue");
    let by_name = engine.list_containers(&ContainerFilter::default().name(&name)).await.unwrap();
    assert_eq!(by_name.len(), 1);
    // Docker's name filter matches substrings; ours is exact.
    assert!(engine.list_containers(&ContainerFilter::default().name(&repo)).await.unwrap().is_empty());
    let other_color = ContainerFilter::default().label("io.s3dock.app", &repo).label("io.s3dock.color", "green");
    assert!(engine.list_containers(&other_color).await.unwrap().is_empty());
    let by_image = engine.list_containers(&ContainerFilter::default().ancestor(&image)).await.unwrap();
    assert_eq!(by_image.len(), 1);

    // An image used by a container is not removed without force.
    match engine.remove_image(&image, false).await {
        Err(EngineError::Daemon { status: 409, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }

    engine.stop_container(&id, 5).await.unwrap();
    let stopped = engine.inspect_container(&id).await.unwrap().unwrap();
    assert!(!stopped.running);
    assert_eq!(stopped.status, "exited");
    assert!(stopped.exit_code.is_some());
    engine.stop_container(&id, 5).await.unwrap(); // already stopped: fine
    let listed = engine.list_containers(&ContainerFilter::default().name(&name)).await.unwrap();
    assert_eq!(listed[0].state, "exited", "stopped containers are listed too");

    engine.remove_container(&id, false).await.unwrap();
    assert!(engine.inspect_container(&id).await.unwrap().is_none());
    engine.remove_container(&id, false).await.unwrap(); // already gone: fine
    engine.stop_container(&id, 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_is_unhealthy() {
    let engine = engine_or_skip!();
    let repo = unique_repo();
    let image = format!("{repo}:20250721-2118-f7a5a27");
    let cleanup = Cleanup::new(&engine);
    cleanup.image(image.clone());
    build_from_files(&engine, &image, &httpd_app_files(&repo, "unhealthy")).await;

    // The server listens on 9090, the health check asks 8080.
    let spec = ContainerSpec {
        name: format!("{repo}-green"),
        image: image.clone(),
        cmd: Some(["/bin/busybox", "httpd", "-f", "-p", "9090", "-h", "/www"].map(String::from).to_vec()),
        ..Default::default()
    };
    let id = engine.create_container(&spec).await.unwrap();
    cleanup.container(id.clone());
    engine.start_container(&id).await.unwrap();
    wait_health(&engine, &id, HealthStatus::Unhealthy).await;
    assert!(engine.inspect_container(&id).await.unwrap().unwrap().running);

    // A running container is only removed with force.
    assert!(engine.remove_container(&id, false).await.is_err());
    engine.remove_container(&id, true).await.unwrap();
    assert!(engine.inspect_container(&id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_from_a_missing_image_says_so() {
    let engine = engine_or_skip!();
    let repo = unique_repo();
    let spec = ContainerSpec {
        name: format!("{repo}-blue"),
        image: format!("{repo}:20250721-2118-f7a5a27"),
        ..Default::default()
    };
    let err = engine.create_container(&spec).await.unwrap_err();
    assert!(err.is_image_not_found(), "{err:?}");
    assert!(engine.list_containers(&ContainerFilter::default().name(&spec.name)).await.unwrap().is_empty());
}
