//! Blue-green deploys against the real engine and a real nginx (Debian's, run as a child
//! process with its own prefix, listening on a free 127.0.0.1 port).
//!
//! Without nginx the tests that need it skip with a message, unless `CI` is set, where that is
//! a failure (like the engine itself, see `support::engine`).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3dock_core::clock::SystemClock;
use s3dock_core::docs::DeployDetails;
use s3dock_core::names::{AppName, EnvName, ImageRef};
use s3dock_core::registry::{EventMode, HistoryQuery, Registry};
use s3dock_core::store::LocalStore;
use s3dock_engine::deploy::{
    Color, ColorPorts, DeployEvent, DeployObserver, DeployReport, DeployRequest, DeployResult, DeploySpec, Deployer,
    HealthSpec, LABEL_APP, LABEL_COLOR, LABEL_ENV, LABEL_IMAGE, Phase, Secret, TrafficConfig, TrafficSwitch,
    container_name, traffic_switch,
};
use s3dock_engine::{BollardEngine, ContainerFilter, DockerEngine, RestartPolicy};
use s3dock_testkit::nginx::{Load, Nginx, assert_serves, free_port, nginx_available, two_free_ports};
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// The upstream name in each test's nginx (each test runs its own nginx).
const UPSTREAM: &str = "s3dock_under_test";
const ENV: &str = "production";
const SECRET: &str = "s3cr3t-value-42";
/// No deploy in these tests may take longer: a hang is a failure, not a stuck run.
const DEPLOY_LIMIT: Duration = Duration::from_secs(120);

macro_rules! nginx_or_skip {
    () => {
        if !nginx_available() {
            return;
        }
    };
}

/// nginx in a fresh temp directory; keep the directory alive as long as nginx (declare it
/// first, so it is dropped last).
async fn start_nginx(upstream_name: &str, initial_port: u16) -> (tempfile::TempDir, Nginx) {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path().to_path_buf(), upstream_name, initial_port).await;
    (dir, nginx)
}

/// The driver config a user would write for this nginx.
fn nginx_config(nginx: &Nginx) -> TrafficConfig {
    TrafficConfig {
        upstream_name: Some(nginx.upstream_name.clone()),
        test_command: Some(nginx.test_command()),
        reload_command: Some(nginx.reload_command()),
        ..TrafficConfig::nginx(nginx.upstream_file())
    }
}

/// An image `FROM scratch` with busybox, serving `www` with httpd on 8080 unless `cmd` says
/// otherwise, with the same Docker HEALTHCHECK as `support::httpd_app_files`.
async fn build_image(
    engine: &BollardEngine,
    cleanup: &Cleanup,
    app: &str,
    tag: &str,
    www: &[(&str, &str)],
    cmd: Option<&str>,
) -> ImageRef {
    let www: Vec<(&str, &[u8])> = www.iter().map(|(name, content)| (*name, content.as_bytes())).collect();
    let files = s3dock_testkit::images::httpd_files(app, cmd, true, &www);
    let image = ImageRef::parse(&format!("{app}:{tag}")).unwrap();
    cleanup.image(image.to_string());
    build_from_files(engine, &image.to_string(), &files).await;
    image
}

/// A good version of the app: its page says `<h1>{marker}</h1>`, `/health.html` and
/// `/ready.html` answer 200.
async fn good_image(engine: &BollardEngine, cleanup: &Cleanup, app: &str, tag: &str, marker: &str) -> ImageRef {
    let page = format!("<h1>{marker}</h1>\n");
    build_image(
        engine,
        cleanup,
        app,
        tag,
        &[("index.html", &page), ("health.html", "ok\n"), ("ready.html", "ready\n")],
        None,
    )
    .await
}

/// Everything one test's service needs.
struct Service {
    engine: BollardEngine,
    cleanup: Cleanup,
    app: String,
    spec: DeploySpec,
    state_dir: tempfile::TempDir,
    _bucket: tempfile::TempDir,
    registry: Arc<Registry>,
}

impl Service {
    fn new(engine: &BollardEngine, traffic: impl FnOnce(&str, ColorPorts) -> TrafficConfig) -> Service {
        let app = unique_repo();
        let ports = two_free_ports();
        let cleanup = Cleanup::new(engine);
        for color in Color::ALL {
            cleanup.container(container_name(&AppName::parse(&app).unwrap(), &EnvName::parse(ENV).unwrap(), color));
        }
        let mut spec = DeploySpec::new(AppName::parse(&app).unwrap(), EnvName::parse(ENV).unwrap(), 8080, ports);
        spec.health = HealthSpec {
            path: "/health.html".into(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            successes: 3,
            deadline: Duration::from_secs(20),
        };
        spec.drain = Duration::from_secs(1);
        spec.stop_timeout = Duration::from_secs(1);
        spec.keep_images = 10;
        spec.env_vars.insert("APP_SECRET".into(), Secret::new(SECRET));
        spec.traffic = Some(traffic(&app, ports));
        spec.validate().unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(bucket.path()).unwrap());
        let registry = Arc::new(Registry::new(store, Arc::new(SystemClock), "tester", EventMode::Inline));
        Service {
            engine: engine.clone(),
            cleanup,
            app,
            spec,
            state_dir: tempfile::tempdir().unwrap(),
            _bucket: bucket,
            registry,
        }
    }

    /// A fresh driver and deployer over the same state directory: what a restarted agent has.
    fn deployer(&self) -> (Deployer, Arc<dyn TrafficSwitch>) {
        let traffic = traffic_switch(&self.spec, self.state_dir.path()).unwrap();
        let deployer = Deployer::new(
            Arc::new(self.engine.clone()),
            traffic.clone(),
            Arc::new(SystemClock),
            self.state_dir.path(),
            "test-host",
        )
        .with_audit(self.registry.clone(), "cli");
        (deployer, traffic)
    }

    async fn deploy_with(&self, deployer: &Deployer, image: &ImageRef) -> DeployReport {
        let mut req = DeployRequest::new(image.clone());
        req.pointer_seq = Some(7);
        let report = tokio::time::timeout(DEPLOY_LIMIT, deployer.deploy(&self.spec, &req, &CancellationToken::new()))
            .await
            .expect("the deploy finished in time")
            .unwrap_or_else(|e| panic!("deploying {image}: {e}"));
        eprintln!(
            "deploy {image}: {} color={:?} timings={:?} message={:?}",
            report.result,
            report.color,
            report.timings_ms(),
            report.message
        );
        assert!(
            !report.message.as_deref().unwrap_or_default().contains(SECRET),
            "a secret leaked into the report: {:?}",
            report.message
        );
        report
    }

    async fn deploy(&self, image: &ImageRef) -> DeployReport {
        let (deployer, _) = self.deployer();
        self.deploy_with(&deployer, image).await
    }

    /// The service's containers (any state).
    async fn containers(&self) -> Vec<s3dock_engine::ContainerSummary> {
        let filter = ContainerFilter::default().label(LABEL_APP, &self.app).label(LABEL_ENV, ENV);
        self.engine.list_containers(&filter).await.unwrap()
    }

    /// Exactly one container of the service exists: it runs `image`, the driver routes to its
    /// color, the state file is idle, and (with nginx) traffic gets `marker`.
    async fn assert_one_serving(&self, image: &ImageRef, marker: &str, nginx: Option<&Nginx>) {
        let containers = self.containers().await;
        assert_eq!(containers.len(), 1, "exactly one container: {containers:#?}");
        let c = &containers[0];
        assert_eq!(c.state, "running", "{c:#?}");
        assert_eq!(c.labels[LABEL_IMAGE], image.to_string());
        let (_, traffic) = self.deployer();
        let current = traffic.current().await.unwrap().expect("the driver routes somewhere");
        assert_eq!(current.color.as_str(), c.labels[LABEL_COLOR], "traffic is on the running container");
        assert_eq!(current.port, self.spec.ports.port(current.color));
        let state = self.deployer().0.state(&self.spec).unwrap().unwrap();
        assert_eq!(state.phase, Phase::Idle, "{state:#?}");
        assert_eq!(state.old.as_ref().map(|s| s.color), Some(current.color), "{state:#?}");
        if let Some(nginx) = nginx {
            assert_serves(nginx.port, marker).await;
        }
    }

    async fn audit_details(&self) -> Vec<(String, DeployDetails)> {
        let app = AppName::parse(&self.app).unwrap();
        let q = HistoryQuery { types: vec!["deploy".into(), "rollback".into()], ..Default::default() };
        let mut out: Vec<(String, DeployDetails)> = self
            .registry
            .history(&app, &q)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                let r = e.record.unwrap();
                assert_eq!(r.recorded_by.as_deref(), Some("cli"));
                assert_eq!(r.user, "tester");
                (r.event_type.clone(), serde_json::from_value(r.details).unwrap())
            })
            .collect();
        out.reverse(); // oldest first
        out
    }
}

fn nginx_traffic(nginx: &Nginx) -> impl FnOnce(&str, ColorPorts) -> TrafficConfig + '_ {
    move |_, _| nginx_config(nginx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_image_takes_traffic_through_nginx_without_a_failed_request() {
    let engine = engine_or_skip!();
    nginx_or_skip!();
    // nginx needs the upstream before it starts: a hand-written one, as a user has before the
    // first deploy, naming a port where nothing listens yet.
    let (_nginx_dir, nginx) = start_nginx(UPSTREAM, free_port()).await;
    let mut svc = Service::new(&engine, nginx_traffic(&nginx));
    svc.spec.verify_url = Some(nginx.url("/ready.html"));
    svc.spec.drain = Duration::from_secs(2);
    let v1 = good_image(&engine, &svc.cleanup, &svc.app, "20250701-1000-a000001", "version one").await;
    let v2 = good_image(&engine, &svc.cleanup, &svc.app, "20250702-1000-a000002", "version two").await;

    // First deploy: no previous color.
    let first = svc.deploy(&v1).await;
    assert_eq!(first.result, DeployResult::Succeeded, "{first:?}");
    assert!(first.previous_image.is_none());
    svc.assert_one_serving(&v1, "version one", Some(&nginx)).await;
    let first_color = first.color.unwrap();

    // Second deploy under load: every request through nginx must succeed.
    let load = Load::start(nginx.port, &["version one", "version two"], 4, 60);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = svc.deploy(&v2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (count, elapsed) = load.finish().await;
    let rps = (count.ok + count.failed) as f64 / elapsed.as_secs_f64();
    eprintln!(
        "load during the switch: {} ok, {} failed in {:.1}s = {rps:.0} requests/s; saw {:?}; failures: {:?}",
        count.ok,
        count.failed,
        elapsed.as_secs_f64(),
        count.seen,
        count.failures
    );
    assert_eq!(second.result, DeployResult::Succeeded, "{second:?}");
    assert_eq!(second.color, Some(first_color.other()));
    assert_eq!(second.previous_image.as_deref(), Some(v1.to_string().as_str()));
    assert_eq!(count.failed, 0, "failed requests during the switch: {:?}", count.failures);
    assert!(rps >= 100.0, "only {rps:.0} requests/s");
    assert_eq!(count.seen.len(), 2, "traffic moved from one version to the other: {:?}", count.seen);
    for phase in ["pull", "start", "health", "switch", "verify", "drain"] {
        if phase == "pull" {
            continue; // the caller's
        }
        assert!(second.timings.contains_key(phase), "{phase} missing from {:?}", second.timings);
    }
    svc.assert_one_serving(&v2, "version two", Some(&nginx)).await;
    let old_name = container_name(&svc.spec.app, &svc.spec.env, first_color);
    assert!(engine.inspect_container(&old_name).await.unwrap().is_none(), "the old container is gone");

    // Deploying what serves is a no-op, and not audited.
    let again = svc.deploy(&v2).await;
    assert_eq!(again.result, DeployResult::Unchanged, "{again:?}");
    assert!(again.audit.is_none());

    let audit = svc.audit_details().await;
    assert_eq!(audit.len(), 2, "{audit:#?}");
    for (event, d) in &audit {
        assert_eq!(event, "deploy");
        assert_eq!(d.result, "succeeded");
        assert_eq!(d.host, "test-host");
        assert_eq!(d.environment, ENV);
        assert_eq!(d.pointer_seq, Some(7));
        assert!(d.timings_ms.contains_key("health") && d.timings_ms.contains_key("switch"), "{d:?}");
    }
    assert_eq!(audit[1].1.image_reference, v2.to_string());
    assert_eq!(audit[1].1.previous_image.as_deref(), Some(v1.to_string().as_str()));
    assert_eq!(audit[1].1.color.as_deref(), Some(first_color.other().as_str()));
    assert!(
        second.audit.as_ref().unwrap().as_ref().unwrap().as_str().contains("-deploy-a000002-production-test-host-")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_never_take_traffic_from_the_old_container() {
    let engine = engine_or_skip!();
    nginx_or_skip!();
    let (_nginx_dir, nginx) = start_nginx(UPSTREAM, free_port()).await;
    let mut svc = Service::new(&engine, nginx_traffic(&nginx));
    svc.spec.health.deadline = Duration::from_secs(4);
    let app = svc.app.clone();
    let v1 = good_image(&engine, &svc.cleanup, &app, "20250701-1000-b000001", "serving one").await;
    let v2 = good_image(&engine, &svc.cleanup, &app, "20250702-1000-b000002", "serving two").await;
    // Serves its page but not the health path: 404, never 2xx (Docker's check, on /, passes).
    let no_health =
        build_image(&engine, &svc.cleanup, &app, "20250703-1000-b000003", &[("index.html", "<h1>broken</h1>")], None)
            .await;
    // Exits at once, printing (a secret) on stderr.
    let exits = build_image(
        &engine,
        &svc.cleanup,
        &app,
        "20250704-1000-b000004",
        &[("index.html", "x")],
        Some(r#"["/bin/busybox", "sh", "-c", "echo boom $APP_SECRET >&2; exit 3"]"#),
    )
    .await;
    // Listens on another port than the one published: nothing ever answers the health check.
    let deaf = build_image(
        &engine,
        &svc.cleanup,
        &app,
        "20250705-1000-b000005",
        &[("index.html", "x"), ("health.html", "ok")],
        Some(r#"["/bin/busybox", "httpd", "-f", "-p", "9090", "-h", "/www"]"#),
    )
    .await;

    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    svc.assert_one_serving(&v1, "serving one", Some(&nginx)).await;
    let upstream_before = std::fs::read(nginx.upstream_file()).unwrap();

    // A failing health check: no request may see anything but the old version meanwhile.
    let load = Load::start(nginx.port, &["serving one"], 2, 50);
    let bad = svc.deploy(&no_health).await;
    let (count, _) = load.finish().await;
    assert_eq!(bad.result, DeployResult::Failed);
    let msg = bad.message.clone().unwrap();
    assert!(msg.contains("did not become healthy") && msg.contains("HTTP 404"), "{msg}");
    assert!(msg.contains("traffic stays on"), "{msg}");
    assert_eq!(count.failed, 0, "the failing image got traffic: {:?}", count.failures);
    assert!(count.ok > 0);
    assert_eq!(std::fs::read(nginx.upstream_file()).unwrap(), upstream_before, "the upstream never changed");
    svc.assert_one_serving(&v1, "serving one", Some(&nginx)).await;

    // An image that exits at once fails fast, with its exit code and (redacted) output.
    svc.spec.restart = RestartPolicy::No;
    let started = Instant::now();
    let exited = svc.deploy(&exits).await;
    assert_eq!(exited.result, DeployResult::Failed);
    let msg = exited.message.clone().unwrap();
    assert!(msg.contains("exited with status 3") && msg.contains("boom ***"), "{msg}");
    assert!(!msg.contains(SECRET), "{msg}");
    assert!(started.elapsed() < svc.spec.health.deadline, "failed fast, not at the deadline");
    svc.spec.restart = RestartPolicy::UnlessStopped;
    // Under a restart policy Docker restarts it; still a fast failure.
    let started = Instant::now();
    let restarting = svc.deploy(&exits).await;
    assert_eq!(restarting.result, DeployResult::Failed);
    assert!(restarting.message.as_deref().unwrap().contains("boom ***"), "{restarting:?}");
    assert!(started.elapsed() < svc.spec.health.deadline);
    svc.assert_one_serving(&v1, "serving one", Some(&nginx)).await;

    // Nothing answers on the health path: the deadline.
    let deaf_report = svc.deploy(&deaf).await;
    assert_eq!(deaf_report.result, DeployResult::Failed);
    let msg = deaf_report.message.clone().unwrap();
    assert!(msg.contains("not healthy within 4s") && msg.contains("raise health.deadline"), "{msg}");
    svc.assert_one_serving(&v1, "serving one", Some(&nginx)).await;

    // The next color's port is taken by another process.
    let serving = svc.deployer().0.state(&svc.spec).unwrap().unwrap().old.unwrap().color;
    let next = serving.other();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", svc.spec.ports.port(next))).unwrap();
    let taken = svc.deploy(&v2).await;
    drop(squatter);
    assert_eq!(taken.result, DeployResult::Failed);
    let msg = taken.message.clone().unwrap();
    assert!(msg.contains("in use") && msg.contains(&format!("ports.{next}")), "{msg}");
    svc.assert_one_serving(&v1, "serving one", Some(&nginx)).await;

    // nginx's configuration is broken (by someone else): `nginx -t` refuses, nothing is
    // reloaded, the upstream file is restored byte for byte, the old version keeps serving.
    let broken = nginx.dir.join("conf.d").join("broken.conf");
    std::fs::write(&broken, "this is not nginx;\n").unwrap();
    let refused = svc.deploy(&v2).await;
    assert_eq!(refused.result, DeployResult::Failed);
    let msg = refused.message.clone().unwrap();
    assert!(msg.contains("refused the configuration") && msg.contains("unknown directive"), "{msg}");
    assert_eq!(std::fs::read(nginx.upstream_file()).unwrap(), upstream_before, "restored");
    svc.assert_one_serving(&v1, "serving one", Some(&nginx)).await;
    std::fs::remove_file(&broken).unwrap();

    // Fixed: the same deploy goes through.
    assert_eq!(svc.deploy(&v2).await.result, DeployResult::Succeeded);
    svc.assert_one_serving(&v2, "serving two", Some(&nginx)).await;

    let audit = svc.audit_details().await;
    let results: Vec<&str> = audit.iter().map(|(_, d)| d.result.as_str()).collect();
    assert_eq!(results, ["succeeded", "failed", "failed", "failed", "failed", "failed", "failed", "succeeded"]);
    for (_, d) in &audit {
        assert!(!d.message.as_deref().unwrap_or_default().contains(SECRET));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_verification_switches_back() {
    let engine = engine_or_skip!();
    nginx_or_skip!();
    let (_nginx_dir, nginx) = start_nginx(UPSTREAM, free_port()).await;
    let mut svc = Service::new(&engine, nginx_traffic(&nginx));
    // Verified through nginx, on a page the new version lacks.
    svc.spec.verify_url = Some(nginx.url("/ready.html"));
    svc.spec.verify_deadline = Duration::from_secs(2);
    let app = svc.app.clone();
    let v1 = good_image(&engine, &svc.cleanup, &app, "20250701-1000-c000001", "steady one").await;
    let unready = build_image(
        &engine,
        &svc.cleanup,
        &app,
        "20250702-1000-c000002",
        &[("index.html", "<h1>unready</h1>"), ("health.html", "ok")],
        None,
    )
    .await;
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    let report = svc.deploy(&unready).await;
    assert_eq!(report.result, DeployResult::RolledBack, "{report:?}");
    let msg = report.message.clone().unwrap();
    assert!(msg.contains("verification after the switch failed") && msg.contains("HTTP 404"), "{msg}");
    assert!(msg.contains("traffic is back on"), "{msg}");
    assert!(report.timings.contains_key("rollback"));
    svc.assert_one_serving(&v1, "steady one", Some(&nginx)).await;
    let audit = svc.audit_details().await;
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].0, "rollback");
    assert_eq!(audit[1].1.result, "rolled-back");
    assert!(report.audit.unwrap().unwrap().as_str().contains("-rollback-c000002-"));
}

/// Stops a deploy where it stands: at the first event `matches` accepts, it signals the test
/// and never returns, and the test drops the deploy's future there (no cleanup code runs).
#[derive(Debug)]
struct CrashAt {
    matches: fn(&DeployEvent) -> bool,
    hit: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl DeployObserver for CrashAt {
    async fn event(&self, event: &DeployEvent) {
        if (self.matches)(event) {
            self.hit.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_killed_at_any_step_converges() {
    let engine = engine_or_skip!();
    nginx_or_skip!();
    let (_nginx_dir, nginx) = start_nginx(UPSTREAM, free_port()).await;
    let mut svc = Service::new(&engine, nginx_traffic(&nginx));
    svc.spec.drain = Duration::from_millis(500);
    let app = svc.app.clone();
    let v1 = good_image(&engine, &svc.cleanup, &app, "20250701-1000-d000001", "crash one").await;
    let v2 = good_image(&engine, &svc.cleanup, &app, "20250702-1000-d000002", "crash two").await;
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    svc.assert_one_serving(&v1, "crash one", Some(&nginx)).await;

    #[derive(Clone, Copy, Debug)]
    enum Tamper {
        None,
        /// The nginx file already names the new color, but nginx was never reloaded: a kill
        /// between the driver's rename and its reload.
        FileAheadOfNginx,
        /// The new container disappeared after the switch.
        RemoveNew,
    }
    type CrashPoint = (&'static str, fn(&DeployEvent) -> bool, Tamper);
    let points: [CrashPoint; 7] = [
        ("after start", |e| matches!(e, DeployEvent::Phase { phase: Phase::HealthCheck, .. }), Tamper::None),
        ("mid health check", |e| matches!(e, DeployEvent::Probe { ok: true, streak: 1, .. }), Tamper::None),
        (
            "inside the switch",
            |e| matches!(e, DeployEvent::Phase { phase: Phase::Switching, .. }),
            Tamper::FileAheadOfNginx,
        ),
        ("after the switch", |e| matches!(e, DeployEvent::Phase { phase: Phase::Verifying, .. }), Tamper::None),
        (
            "after the switch, new container gone",
            |e| matches!(e, DeployEvent::Phase { phase: Phase::Verifying, .. }),
            Tamper::RemoveNew,
        ),
        ("mid drain", |e| matches!(e, DeployEvent::Phase { phase: Phase::Draining, .. }), Tamper::None),
        ("before the switch", |e| matches!(e, DeployEvent::Phase { phase: Phase::Switching, .. }), Tamper::None),
    ];
    let mut serving = (v1.clone(), "crash one");
    for (label, matches, tamper) in points {
        let target = if serving.0 == v1 { (v2.clone(), "crash two") } else { (v1.clone(), "crash one") };
        eprintln!("--- crash point: {label} (deploying {})", target.0);
        let hit = Arc::new(tokio::sync::Notify::new());
        let (deployer, _) = svc.deployer();
        let deployer = Arc::new(deployer.with_observer(Arc::new(CrashAt { matches, hit: hit.clone() })));
        let spec = svc.spec.clone();
        let req = DeployRequest::new(target.0.clone());
        let task = {
            let deployer = deployer.clone();
            tokio::spawn(async move { deployer.deploy(&spec, &req, &CancellationToken::new()).await })
        };
        tokio::time::timeout(Duration::from_secs(60), hit.notified())
            .await
            .unwrap_or_else(|_| panic!("{label}: never reached"));
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled(), "{label}: the deploy was dropped mid-way");
        drop(deployer);

        let state = svc.deployer().0.state(&svc.spec).unwrap().unwrap();
        assert_ne!(state.phase, Phase::Idle, "{label}: the state file shows the deploy in flight");
        let new_color = state.new.as_ref().unwrap().color;
        match tamper {
            Tamper::None => {}
            Tamper::FileAheadOfNginx => {
                let traffic = traffic_switch(&svc.spec, svc.state_dir.path()).unwrap();
                let ahead = s3dock_engine::deploy::NginxSwitch::new(s3dock_engine::deploy::NginxConfig {
                    app: svc.spec.app.clone(),
                    env: svc.spec.env.clone(),
                    ports: svc.spec.ports,
                    upstream_file: nginx.upstream_file(),
                    upstream_name: nginx.upstream_name.clone(),
                    test_command: vec!["true".into()],
                    reload_command: vec!["true".into()],
                    timeout: Duration::from_secs(5),
                    probe: None,
                });
                let up = s3dock_engine::Upstream {
                    host: "127.0.0.1".into(),
                    port: svc.spec.ports.port(new_color),
                    color: new_color,
                };
                ahead.switch(&up).await.unwrap();
                assert_eq!(traffic.current().await.unwrap().unwrap().color, new_color, "the file is ahead");
            }
            Tamper::RemoveNew => {
                engine.remove_container(&container_name(&svc.spec.app, &svc.spec.env, new_color), true).await.unwrap();
            }
        }

        // The restart: a fresh deployer converges on the same target.
        let (restarted, _) = svc.deployer();
        let req = DeployRequest::new(target.0.clone());
        let report = tokio::time::timeout(DEPLOY_LIMIT, restarted.converge(&svc.spec, &req, &CancellationToken::new()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{label}: converge failed: {e}"));
        eprintln!("{label}: recovered {:?}; then {} ({:?})", report.recovered, report.result, report.message);
        let recovered = report.recovered.as_ref().expect("the interrupted deploy was settled");
        assert_ne!(recovered.found, Phase::Idle);
        assert!(matches!(report.result, DeployResult::Succeeded | DeployResult::Unchanged), "{label}: {report:?}");
        svc.assert_one_serving(&target.0, target.1, Some(&nginx)).await;
        serving = target;
    }

    // Killed while rolling back (a verification that fails), then converged on the same bad
    // image: the old version ends up serving, alone, and the bad image never keeps traffic.
    svc.spec.verify_url = Some(nginx.url("/ready.html"));
    svc.spec.verify_deadline = Duration::from_secs(1);
    let unready = build_image(
        &engine,
        &svc.cleanup,
        &app,
        "20250703-1000-d000003",
        &[("index.html", "<h1>unready</h1>"), ("health.html", "ok")],
        None,
    )
    .await;
    let hit = Arc::new(tokio::sync::Notify::new());
    let (deployer, _) = svc.deployer();
    let deployer = Arc::new(deployer.with_observer(Arc::new(CrashAt {
        matches: |e| matches!(e, DeployEvent::Phase { phase: Phase::RollingBack, .. }),
        hit: hit.clone(),
    })));
    let task = {
        let (deployer, spec, req) = (deployer.clone(), svc.spec.clone(), DeployRequest::new(unready.clone()));
        tokio::spawn(async move { deployer.deploy(&spec, &req, &CancellationToken::new()).await })
    };
    tokio::time::timeout(Duration::from_secs(60), hit.notified()).await.expect("reached rolling-back");
    task.abort();
    let _ = task.await;
    let (restarted, _) = svc.deployer();
    let recovered = restarted.recover(&svc.spec, &CancellationToken::new()).await.unwrap();
    eprintln!("rolling back: {recovered:?}");
    assert_eq!(recovered.found, Phase::RollingBack);
    svc.assert_one_serving(&serving.0, serving.1, Some(&nginx)).await;
    let report = svc.deploy(&unready).await;
    assert_eq!(report.result, DeployResult::RolledBack);
    svc.assert_one_serving(&serving.0, serving.1, Some(&nginx)).await;

    // Every interrupted deploy left exactly one record of its settlement.
    let audit = svc.audit_details().await;
    let recovered_records =
        audit.iter().filter(|(_, d)| d.message.as_deref().is_some_and(|m| m.contains("was interrupted"))).count();
    assert_eq!(recovered_records, 8, "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_command_driver_runs_the_users_program() {
    let engine = engine_or_skip!();
    let scripts = tempfile::tempdir().unwrap();
    let calls = scripts.path().join("calls.log");
    let script = scripts.path().join("switch-lb");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
echo \"$S3DOCK_UPSTREAM $S3DOCK_UPSTREAM_HOST $S3DOCK_UPSTREAM_PORT $S3DOCK_COLOR $S3DOCK_APP $S3DOCK_ENV\" >> {calls}
if [ -e {dir}/fail-$S3DOCK_COLOR ]; then
  echo 'calling the load balancer API' >&2
  echo 'the load balancer said no' >&2
  exit 7
fi
",
            calls = calls.display(),
            dir = scripts.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let svc = Service::new(&engine, |_, _| TrafficConfig::command(vec![script.display().to_string()]));
    let app = svc.app.clone();
    let v1 = good_image(&engine, &svc.cleanup, &app, "20250701-1000-e000001", "cmd one").await;
    let v2 = good_image(&engine, &svc.cleanup, &app, "20250702-1000-e000002", "cmd two").await;

    let first = svc.deploy(&v1).await;
    assert_eq!((first.result, first.color), (DeployResult::Succeeded, Some(Color::Blue)));
    svc.assert_one_serving(&v1, "", None).await;

    // The program fails for green: traffic may have moved, so the deployer switches back.
    std::fs::write(scripts.path().join("fail-green"), "").unwrap();
    let refused = svc.deploy(&v2).await;
    assert_eq!(refused.result, DeployResult::RolledBack, "{refused:?}");
    let msg = refused.message.clone().unwrap();
    assert!(msg.contains("exit status 7: calling the load balancer API | the load balancer said no"), "{msg}");
    svc.assert_one_serving(&v1, "", None).await;

    std::fs::remove_file(scripts.path().join("fail-green")).unwrap();
    let second = svc.deploy(&v2).await;
    assert_eq!((second.result, second.color), (DeployResult::Succeeded, Some(Color::Green)));
    svc.assert_one_serving(&v2, "", None).await;

    let (b, g) = (svc.spec.ports.blue, svc.spec.ports.green);
    let line = |port: u16, color: &str| format!("127.0.0.1:{port} 127.0.0.1 {port} {color} {app} {ENV}");
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap().lines().collect::<Vec<_>>(),
        [line(b, "blue"), line(g, "green"), line(b, "blue"), line(g, "green")]
    );
    let audit = svc.audit_details().await;
    let summary: Vec<(&str, &str)> = audit.iter().map(|(e, d)| (e.as_str(), d.result.as_str())).collect();
    assert_eq!(summary, [("deploy", "succeeded"), ("rollback", "rolled-back"), ("deploy", "succeeded")]);
    assert_eq!(audit[2].1.previous_image.as_deref(), Some(v1.to_string().as_str()));
}

/// Fires the shutdown token at the first event `matches` accepts, and lets the deploy go on.
#[derive(Debug)]
struct ShutdownAt {
    matches: fn(&DeployEvent) -> bool,
    token: CancellationToken,
}

#[async_trait::async_trait]
impl DeployObserver for ShutdownAt {
    async fn event(&self, event: &DeployEvent) {
        if (self.matches)(event) {
            self.token.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_a_deploy_at_a_safe_point() {
    let engine = engine_or_skip!();
    let mut svc = Service::new(&engine, |_, _| TrafficConfig::none());
    let app = svc.app.clone();
    let v1 = good_image(&engine, &svc.cleanup, &app, "20250701-1000-f000001", "shut one").await;
    let v2 = good_image(&engine, &svc.cleanup, &app, "20250702-1000-f000002", "shut two").await;
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    svc.spec.drain = Duration::from_secs(30);

    // Already shut down: nothing starts.
    let (deployer, _) = svc.deployer();
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let err = deployer.deploy(&svc.spec, &DeployRequest::new(v2.clone()), &cancelled).await.unwrap_err();
    assert!(err.to_string().contains("not started"), "{err}");
    assert_eq!(svc.containers().await.len(), 1);

    // Shutdown during the health check: the new container goes, the old one keeps serving.
    let token = CancellationToken::new();
    let (deployer, _) = svc.deployer();
    let deployer = deployer.with_observer(Arc::new(ShutdownAt {
        matches: |e| matches!(e, DeployEvent::Probe { ok: true, streak: 1, .. }),
        token: token.clone(),
    }));
    let report = deployer.deploy(&svc.spec, &DeployRequest::new(v2.clone()), &token).await.unwrap();
    assert_eq!(report.result, DeployResult::Failed, "{report:?}");
    assert!(report.message.as_deref().unwrap().contains("shutdown during the health check"), "{report:?}");
    svc.assert_one_serving(&v1, "", None).await;

    // Shutdown during the drain: the switch is kept, the grace period is not cut short but
    // left to the next start, which finishes it.
    let token = CancellationToken::new();
    let (deployer, _) = svc.deployer();
    let deployer = deployer.with_observer(Arc::new(ShutdownAt {
        matches: |e| matches!(e, DeployEvent::Phase { phase: Phase::Draining, .. }),
        token: token.clone(),
    }));
    let started = Instant::now();
    let report = deployer.deploy(&svc.spec, &DeployRequest::new(v2.clone()), &token).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "did not sit out the 30 s grace period");
    assert_eq!(report.result, DeployResult::Succeeded, "{report:?}");
    assert!(report.message.as_deref().unwrap().contains("the next start drains it"), "{report:?}");
    let state = deployer.state(&svc.spec).unwrap().unwrap();
    assert_eq!(state.phase, Phase::Draining);
    assert_eq!(svc.containers().await.len(), 2, "the old container is left for the next start");
    drop(deployer);

    svc.spec.drain = Duration::from_secs(1);
    let (restarted, _) = svc.deployer();
    let recovered = restarted.recover(&svc.spec, &CancellationToken::new()).await.unwrap();
    assert_eq!(recovered.found, Phase::Draining);
    svc.assert_one_serving(&v2, "", None).await;
}

/// The issue's worst case against the real engine and nginx: the deployer killed while
/// draining, and at the restart *neither* container passes its health check (a database
/// outage: the health path answers 404 for both). The old deployer removed the container nginx
/// routed to and went idle; the next deploy removed the other: nothing served. Now the serving
/// container keeps its traffic, requests through nginx keep succeeding, and when health comes
/// back the service converges on the new image, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_during_draining_with_both_unhealthy_keeps_the_serving_container() {
    let engine = engine_or_skip!();
    nginx_or_skip!();
    let (_nginx_dir, nginx) = start_nginx(UPSTREAM, free_port()).await;
    // The health path lives on a directory both colors mount: removing its file is an outage
    // of every container at once.
    let health_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(health_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ok_file = health_dir.path().join("ok.html");
    std::fs::write(&ok_file, "ok\n").unwrap();
    let mut svc = Service::new(&engine, nginx_traffic(&nginx));
    svc.spec.volumes = vec![format!("{}:/www/h:ro", health_dir.path().display())];
    svc.spec.health.path = "/h/ok.html".into();
    svc.spec.health.deadline = Duration::from_secs(3);
    svc.spec.drain = Duration::from_secs(30);
    let app = svc.app.clone();
    let v1 = good_image(&engine, &svc.cleanup, &app, "20250701-1000-a100001", "outage one").await;
    let v2 = good_image(&engine, &svc.cleanup, &app, "20250702-1000-a100002", "outage two").await;
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    svc.assert_one_serving(&v1, "outage one", Some(&nginx)).await;

    // Killed while draining v1 (traffic is on v2).
    let hit = Arc::new(tokio::sync::Notify::new());
    let (deployer, _) = svc.deployer();
    let deployer = Arc::new(deployer.with_observer(Arc::new(CrashAt {
        matches: |e| matches!(e, DeployEvent::Phase { phase: Phase::Draining, .. }),
        hit: hit.clone(),
    })));
    let task = {
        let (deployer, spec, req) = (deployer.clone(), svc.spec.clone(), DeployRequest::new(v2.clone()));
        tokio::spawn(async move { deployer.deploy(&spec, &req, &CancellationToken::new()).await })
    };
    tokio::time::timeout(Duration::from_secs(60), hit.notified()).await.expect("reached draining");
    task.abort();
    let _ = task.await;
    drop(deployer);
    let serving = svc.deployer().0.state(&svc.spec).unwrap().unwrap().new.expect("v2 is the new slot");
    let serving_name = container_name(&svc.spec.app, &svc.spec.env, serving.color);
    let serving_id = engine.inspect_container(&serving_name).await.unwrap().unwrap().id;
    assert_serves(nginx.port, "outage two").await;

    // The outage: both containers fail their health check. The agent restarts meanwhile.
    std::fs::remove_file(&ok_file).unwrap();
    let load = Load::start(nginx.port, &["outage two"], 4, 30);
    let (restarted, _) = svc.deployer();
    let recovered = restarted.recover(&svc.spec, &CancellationToken::new()).await.unwrap();
    eprintln!("recovered during the outage: {recovered:?}");
    assert_eq!(recovered.found, Phase::Draining);
    assert_eq!(recovered.serving, Some(serving.color));
    let during =
        restarted.converge(&svc.spec, &DeployRequest::new(v2.clone()), &CancellationToken::new()).await.unwrap();
    eprintln!("converge during the outage: {} ({:?})", during.result, during.message);
    assert_eq!(during.result, DeployResult::Failed, "a fresh container cannot pass during the outage");
    let (count, elapsed) = load.finish().await;
    eprintln!(
        "load during the outage: {} ok, {} failed in {:.1}s; failures: {:?}",
        count.ok,
        count.failed,
        elapsed.as_secs_f64(),
        count.failures
    );
    let still = engine.inspect_container(&serving_name).await.unwrap().expect("the serving container is kept");
    assert_eq!(still.id, serving_id);
    assert!(still.running);
    assert_eq!(count.failed, 0, "requests through nginx failed while nothing was healthy: {:?}", count.failures);
    assert!(count.ok > 0);

    // Health comes back: the service converges, alone on v2, serving through nginx.
    std::fs::write(&ok_file, "ok\n").unwrap();
    let after = svc.deploy(&v2).await;
    assert!(matches!(after.result, DeployResult::Unchanged | DeployResult::Succeeded), "{after:?}");
    svc.assert_one_serving(&v2, "outage two", Some(&nginx)).await;
}

/// The bar kept from the measurements: not one failed request through nginx at 100 requests
/// per second or more, across four switches in a row (each proven by the running nginx and
/// verified through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_switches_under_load_without_a_failed_request() {
    let engine = engine_or_skip!();
    nginx_or_skip!();
    let (_nginx_dir, nginx) = start_nginx(UPSTREAM, free_port()).await;
    let mut svc = Service::new(&engine, nginx_traffic(&nginx));
    svc.spec.verify_url = Some(nginx.url("/ready.html"));
    svc.spec.drain = Duration::from_secs(2);
    let v1 = good_image(&engine, &svc.cleanup, &svc.app, "20250701-1000-a200001", "switch one").await;
    let v2 = good_image(&engine, &svc.cleanup, &svc.app, "20250702-1000-a200002", "switch two").await;
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    svc.assert_one_serving(&v1, "switch one", Some(&nginx)).await;

    let load = Load::start(nginx.port, &["switch one", "switch two"], 4, 40);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut switches = 0;
    for target in [&v2, &v1, &v2, &v1] {
        let report = svc.deploy(target).await;
        assert_eq!(report.result, DeployResult::Succeeded, "{report:?}");
        switches += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (count, elapsed) = load.finish().await;
    let rps = count.total() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{switches} switches under load: {} ok, {} failed in {:.1}s = {rps:.0} requests/s; saw {:?}; failures: {:?}",
        count.ok,
        count.failed,
        elapsed.as_secs_f64(),
        count.seen,
        count.failures
    );
    assert_eq!(count.failed, 0, "failed requests across {switches} switches: {:?}", count.failures);
    assert!(rps >= 100.0, "only {rps:.0} requests/s");
    assert_eq!(count.seen.len(), 2);
    svc.assert_one_serving(&v1, "switch one", Some(&nginx)).await;
}

/// A reload that reports success and changes nothing (here `true` instead of `nginx -s
/// reload`): the file on disk names the new color, the running nginx does not. Verification
/// used to pass on the old container's answers and the drain then removed the container that
/// still had the traffic. The proof asks the running nginx: the deploy fails and the old
/// container keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_that_changes_nothing_fails_the_deploy_and_the_old_container_keeps_serving() {
    let engine = engine_or_skip!();
    nginx_or_skip!();
    let (_nginx_dir, nginx) = start_nginx(UPSTREAM, free_port()).await;
    let mut svc = Service::new(&engine, nginx_traffic(&nginx));
    svc.spec.verify_url = Some(nginx.url("/ready.html"));
    svc.spec.verify_deadline = Duration::from_secs(3);
    let v1 = good_image(&engine, &svc.cleanup, &svc.app, "20250701-1000-a300001", "honest one").await;
    let v2 = good_image(&engine, &svc.cleanup, &svc.app, "20250702-1000-a300002", "unseen two").await;
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    svc.assert_one_serving(&v1, "honest one", Some(&nginx)).await;

    let honest = svc.spec.traffic.clone();
    if let Some(t) = &mut svc.spec.traffic {
        t.reload_command = Some(vec!["true".into()]);
    }
    let load = Load::start(nginx.port, &["honest one"], 2, 30);
    let report = svc.deploy(&v2).await;
    let (count, _) = load.finish().await;
    assert_eq!(report.result, DeployResult::RolledBack, "{report:?}");
    let msg = report.message.clone().unwrap();
    assert!(msg.contains("traffic does not go there"), "{msg}");
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    svc.spec.traffic = honest;
    svc.assert_one_serving(&v1, "honest one", Some(&nginx)).await;
    let (_, traffic) = svc.deployer();
    assert_eq!(traffic.routed().await.unwrap().unwrap().color, traffic.current().await.unwrap().unwrap().color);
}

/// An image carrying `io.s3dock.instance` itself: Docker gives its containers that label unless
/// they set it, so they looked like another instance's and every later deploy (rollbacks
/// included) was refused until someone removed them by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_images_own_instance_label_does_not_block_later_deploys() {
    let engine = engine_or_skip!();
    let svc = Service::new(&engine, |_, _| TrafficConfig::none());
    let labelled = |tag: &'static str, marker: &'static str| {
        let (engine, cleanup, app) = (&engine, &svc.cleanup, svc.app.clone());
        async move {
            let page = format!("<h1>{marker}</h1>\n");
            let cmd = r#"["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]"#;
            let dockerfile = format!(
                "FROM scratch\n{}LABEL io.s3dock.instance=\"someone-else\"\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD {cmd}\n",
                isolating_label(&app)
            );
            let files = vec![
                ("Dockerfile".to_owned(), dockerfile.into_bytes()),
                ("busybox".to_owned(), busybox()),
                ("www/index.html".to_owned(), page.into_bytes()),
                ("www/health.html".to_owned(), b"ok\n".to_vec()),
            ];
            let image = ImageRef::parse(&format!("{app}:{tag}")).unwrap();
            cleanup.image(image.to_string());
            build_from_files(engine, &image.to_string(), &files).await;
            image
        }
    };
    let v1 = labelled("20250701-1000-a400001", "label one").await;
    let v2 = labelled("20250702-1000-a400002", "label two").await;
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded);
    assert_eq!(svc.deploy(&v2).await.result, DeployResult::Succeeded, "the first container is not foreign");
    assert_eq!(svc.deploy(&v1).await.result, DeployResult::Succeeded, "a rollback neither");
    svc.assert_one_serving(&v1, "", None).await;
    let c = &svc.containers().await[0];
    assert_eq!(c.labels[s3dock_engine::deploy::LABEL_INSTANCE], "", "set by s3dock, not inherited");
}
