//! The deployer on the in-memory host, one test per defect found in it (the exhaustive matrix
//! in `deploy_exhaustive` checks the rules everywhere; these say what broke, by name).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3dock_engine::deploy::{
    Color, DeployRequest, DeployResult, HostNetwork, HttpProbe, LABEL_INSTANCE, LocalNetwork, Phase, StillWanted,
    Upstream,
};
use s3dock_engine::fake::{CrashAt, DriverMode, FakeHost, HostState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::deploy_exhaustive::{
    AtRestart, FRONT, GREEN, UNREADY, V1, V2, World, apply_restart, copy_dir, image, new_host, spec, state_dir,
};

fn world() -> World {
    World { spec: spec(), clock: Arc::new(s3dock_engine::fake::TokioClock::new(chrono::Utc::now())) }
}

/// The deploy of `target` over a host serving V1, stopped `later` calls after the `nth` call
/// named `at` (after its effect or not), restarted with both colors as `blue` and `green`.
async fn crash_and_restart(
    target: &str,
    at: &str,
    nth: usize,
    later: usize,
    after: bool,
    blue: AtRestart,
    green: AtRestart,
) -> (World, FakeHost, tempfile::TempDir, Phase, Result<DeployResult, String>) {
    let w = world();
    let host = new_host();
    let dir = state_dir();
    assert_eq!(w.deploy(&host, dir.path(), V1).await, Ok(DeployResult::Succeeded));
    host.with(|s| s.calls.clear());
    let reference = FakeHost::from_state(host.snapshot());
    let ref_dir = state_dir();
    copy_dir(dir.path(), ref_dir.path());
    w.deploy(&reference, ref_dir.path(), target).await.unwrap();
    let calls = reference.snapshot().calls;
    let index = calls.iter().enumerate().filter(|(_, c)| c.name == at).nth(nth).expect("the call happens").0 + later;
    host.with(|s| s.crash = Some(CrashAt { call: index as u64 + 1, after }));
    tokio::select! {
        r = w.deploy(&host, dir.path(), target) => panic!("never crashed: {r:?}"),
        _ = host.crashed() => {}
    }
    let crashed_in = w.state(dir.path()).phase;
    let host = FakeHost::from_state(HostState { crash: None, crashed: false, ..host.snapshot() });
    apply_restart(&host, &w.spec, blue, green, false);
    let result = w.restart(&host, dir.path(), target).await;
    (w, host, dir, crashed_in, result)
}

/// Recovery completed a switch it found in `verifying` without running `verify_url`: an image
/// that fails verification was kept, and the good container drained.
#[tokio::test(start_paused = true)]
async fn recovery_verifies_the_switch_it_keeps() {
    // Killed right after the switch to an image that fails its verification: the call after
    // the reload is the first question of the verification, with the state file `verifying`.
    let (w, host, dir, crashed_in, result) =
        crash_and_restart(UNREADY, "traffic.reload", 0, 1, false, AtRestart::Healthy, AtRestart::Healthy).await;
    assert_eq!(crashed_in, Phase::Verifying);
    assert_eq!(result, Ok(DeployResult::RolledBack), "the converge after the restart tried again and rolled back");
    let s = host.snapshot();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(s.serving().map(|c| c.image.as_str()), Some(V1), "the verified old image serves ({result:?})");
    assert_eq!(s.containers.len(), 1, "the unverified container is drained, not the good one");
    assert_eq!(w.state(dir.path()).phase, Phase::Idle);
}

/// The defect the matrix was built for, killed in `draining` this time: both containers
/// unhealthy at restart. The serving container stays, and so does the other.
#[tokio::test(start_paused = true)]
async fn a_kill_in_draining_with_both_unhealthy_keeps_the_serving_container() {
    let (w, host, dir, crashed_in, result) =
        crash_and_restart(V2, "engine.stop_container", 0, 0, false, AtRestart::Unhealthy, AtRestart::Unhealthy).await;
    assert_eq!(crashed_in, Phase::Draining);
    let s = host.snapshot();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    let serving = s.serving().expect("something still serves").clone();
    assert_eq!(serving.image, V2);
    assert!(result.is_ok(), "{result:?}");
    // Health comes back: the service converges on V2, alone.
    crate::deploy_exhaustive::heal(&host);
    assert!(w.restart(&host, dir.path(), V2).await.is_ok());
    let s = host.snapshot();
    assert_eq!(s.containers.len(), 1);
    assert!(s.serving().is_some_and(|c| c.image == V2 && c.serves_healthily()));
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

/// Verification could not tell the new color from the old: a driver that reported a switch it
/// did not make was believed, and the drain removed the container that still had the traffic.
#[tokio::test(start_paused = true)]
async fn a_lying_driver_fails_the_deploy_and_the_old_container_keeps_serving() {
    for (mode, want) in [
        (DriverMode::NoOp, DeployResult::RolledBack),
        (DriverMode::WrongColor, DeployResult::Failed),
        // Slow but honest: within verify_deadline, it is a switch like any other.
        (DriverMode::Slow(5), DeployResult::Succeeded),
    ] {
        let w = world();
        let host = new_host();
        let dir = state_dir();
        assert_eq!(w.deploy(&host, dir.path(), V1).await, Ok(DeployResult::Succeeded));
        let before = host.snapshot().serving().unwrap().clone();
        host.with(|s| s.mode = mode);
        let result = w.deploy(&host, dir.path(), V2).await;
        assert_eq!(result, Ok(want), "{mode:?}");
        let s = host.snapshot();
        assert!(s.violations.is_empty(), "{mode:?}: {:?}", s.violations);
        let serving = s.serving().unwrap();
        match mode {
            DriverMode::Slow(_) => assert_eq!(serving.image, V2),
            DriverMode::NoOp => {
                assert_eq!(serving.id, before.id, "the old container keeps the traffic");
                assert_eq!(s.containers.len(), 1, "the new one is removed");
            }
            // A driver that routes to the other color than asked: going back sent traffic to
            // the new container instead (healthy: allowed), and nothing could be proven. Both
            // containers are kept, and the state says `rolling-back` for the next run.
            _ => {
                assert_eq!(s.containers.len(), 2, "nothing is removed while nothing is proven");
                assert_eq!(w.state(dir.path()).phase, Phase::RollingBack);
            }
        }
    }
}

/// An image carrying `io.s3dock.instance` made its containers look like another instance's:
/// every later deploy was refused until someone removed them by hand.
#[tokio::test(start_paused = true)]
async fn an_images_own_instance_label_does_not_make_its_containers_foreign() {
    let w = world();
    let host = new_host();
    for reference in [V1, V2] {
        host.update_image(reference, |i| {
            i.labels = BTreeMap::from([(LABEL_INSTANCE.to_owned(), "someone-else".to_owned())])
        });
    }
    let dir = state_dir();
    assert_eq!(w.deploy(&host, dir.path(), V1).await, Ok(DeployResult::Succeeded));
    let serving = host.snapshot().serving().unwrap().clone();
    assert_eq!(serving.labels[LABEL_INSTANCE], "", "the container sets the label itself");
    assert_eq!(w.deploy(&host, dir.path(), V2).await, Ok(DeployResult::Succeeded));
    assert_eq!(w.deploy(&host, dir.path(), V1).await, Ok(DeployResult::Succeeded), "a rollback too");
}

#[derive(Debug)]
struct NotAnyMore;

#[async_trait]
impl StillWanted for NotAnyMore {
    async fn superseded(&self) -> Option<String> {
        Some("the pointer now names web:20250701-1000-aaaaaa1".into())
    }
}

/// A deploy its caller no longer wants (a rollback promoted meanwhile) stops before the switch.
#[tokio::test(start_paused = true)]
async fn a_superseded_deploy_never_takes_the_traffic() {
    let w = world();
    let host = new_host();
    let dir = state_dir();
    assert_eq!(w.deploy(&host, dir.path(), V1).await, Ok(DeployResult::Succeeded));
    let before = host.snapshot().serving().unwrap().clone();
    let mut req = DeployRequest::new(image(V2));
    req.still_wanted = Some(Arc::new(NotAnyMore));
    let report = w.deployer(&host, dir.path()).deploy(&w.spec, &req, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.result, DeployResult::Superseded);
    assert!(report.message.unwrap().contains("superseded before the switch"));
    let s = host.snapshot();
    assert_eq!(s.serving().unwrap().id, before.id);
    assert_eq!(s.containers.len(), 1, "the new container was removed");
    assert!(s.calls.iter().all(|c| c.name != "traffic.write" || s.calls.len() < 40), "no switch was attempted");
}

/// Rolling back moved traffic to the old container without checking it: during an outage,
/// back onto a container that fails its health check.
#[tokio::test(start_paused = true)]
async fn a_rollback_never_moves_traffic_to_an_unhealthy_old_container() {
    let w = world();
    let host = new_host();
    let dir = state_dir();
    assert_eq!(w.deploy(&host, dir.path(), V1).await, Ok(DeployResult::Succeeded));
    let old = host.snapshot().serving().unwrap().name.clone();
    host.set_health(&old, s3dock_engine::fake::Health::Unhealthy);
    // UNREADY passes its health check and fails verification: a rollback is due.
    let result = w.deploy(&host, dir.path(), UNREADY).await;
    assert_eq!(result, Ok(DeployResult::Failed));
    let s = host.snapshot();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(s.serving().unwrap().image, UNREADY, "the healthy new container keeps the traffic for now");
    assert_eq!(w.state(dir.path()).phase, Phase::RollingBack, "the way back is remembered");
    // The old one recovers: the next run goes back to it.
    host.set_health(&old, s3dock_engine::fake::Health::Healthy);
    let recovered = w.deployer(&host, dir.path()).recover(&w.spec, &CancellationToken::new()).await.unwrap();
    assert_eq!(recovered.found, Phase::RollingBack);
    let s = host.snapshot();
    assert_eq!(s.serving().unwrap().image, V1);
    assert_eq!(s.containers.len(), 1);
}

/// Health checks on the fake host; `verify_url` to a real server on loopback.
#[derive(Debug)]
struct SplitNet {
    host: FakeHost,
    front: u16,
}

#[async_trait]
impl HostNetwork for SplitNet {
    async fn http_status(&self, probe: &HttpProbe<'_>, timeout: Duration) -> Result<u16, String> {
        if probe.port == self.front {
            LocalNetwork.http_status(probe, timeout).await
        } else {
            self.host.http_status(probe, timeout).await
        }
    }
    async fn port_in_use(&self, ip: std::net::IpAddr, port: u16) -> Option<String> {
        self.host.port_in_use(ip, port).await
    }
}

/// `verify_url` could not set a Host header, so a virtual host behind nginx could not be
/// verified.
#[tokio::test]
async fn verification_sends_the_host_header_it_is_given() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let status = if request.contains("\r\nhost: www.example.com\r\n") { "200 OK" } else { "404 Not Found" };
            let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
        }
    });
    let host = FakeHost::new(s3dock_engine::deploy::ColorPorts { blue: 18080, green: GREEN }, FRONT);
    host.add_image(V1, "v1", s3dock_engine::fake::Health::Healthy, true);
    host.route(Some(Upstream { host: "127.0.0.1".into(), port: 18080, color: Color::Blue }));
    let mut spec = spec();
    spec.verify_url = Some(format!("http://127.0.0.1:{front}/ready"));
    let deploy = |spec: s3dock_engine::deploy::DeploySpec| {
        let host = host.clone();
        async move {
            let dir = state_dir();
            let deployer = s3dock_engine::deploy::Deployer::new(
                Arc::new(host.clone()),
                Arc::new(host.clone()),
                Arc::new(s3dock_core::clock::SystemClock),
                dir.path(),
                "fake-host",
            )
            .with_network(Arc::new(SplitNet { host: host.clone(), front }));
            deployer.deploy(&spec, &DeployRequest::new(image(V1)), &CancellationToken::new()).await.unwrap()
        }
    };
    let without = deploy(spec.clone()).await;
    assert_eq!(without.result, DeployResult::Failed, "{without:?}");
    assert!(without.message.unwrap().contains("answered HTTP 404"));
    spec.verify_host = Some("www.example.com".into());
    spec.validate().unwrap();
    host.route(Some(Upstream { host: "127.0.0.1".into(), port: 18080, color: Color::Blue }));
    let with = deploy(spec).await;
    assert_eq!(with.result, DeployResult::Succeeded, "{with:?}");
}

/// Image garbage collection after a deploy removed an image another environment of the same
/// app had just pulled on this host, before that environment's deploy could start it.
#[tokio::test]
async fn image_gc_spares_an_image_another_environment_just_pulled() {
    let host = new_host();
    let now = host.with(|s| s.now);
    let v3 = "web:20250705-1000-aaaaaa5";
    host.add_image(v3, "v3", s3dock_engine::fake::Health::Healthy, true);
    let pulled = |reference: &str, ago: chrono::Duration| {
        host.update_image(reference, |i| i.last_tagged = Some(now - ago));
    };
    pulled(v3, chrono::Duration::zero()); // the image being deployed, pulled now
    pulled(V2, chrono::Duration::minutes(5)); // staging pulled it a moment ago
    pulled(V1, chrono::Duration::days(2));
    let removed = s3dock_engine::ship::remove_old_images(&host, &image(v3), 1).await.unwrap();
    assert!(removed.contains(&V1.to_owned()), "{removed:?}");
    assert!(!removed.contains(&V2.to_owned()), "the fresh pull is spared: {removed:?}");
    assert!(host.with(|s| s.images.values().any(|i| i.tags.iter().any(|t| t == V2))));
}
