//! What the agent's end-to-end tests share: the real services (Docker, LocalStack, nginx) or a
//! skip, a fresh bucket per test, images `FROM scratch` with busybox httpd pushed to it, the
//! agent as a child process, the `s3dock` CLI (in-process and as a binary), nginx, and a
//! bounded load loop.
//!
//! A missing service skips the test with a message on stderr, or fails it when `CI` is set.
//! So does a missing binary: `s3dock-agent` and `s3dock` belong to other packages, so cargo
//! does not build them for this one's tests (`env!("CARGO_BIN_EXE_…")` only names a package's
//! own binaries). They are found beside the test executable, where `cargo test --workspace`
//! and `cargo build` put them, or at `S3DOCK_AGENT_BIN` / `S3DOCK_BIN`. The crash tests need
//! the agent built with the `fault-injection` feature, which `cargo test --workspace` turns on
//! (this package's dev-dependency) and `cargo build` alone does not: see [`BUILD_HINT`].
//!
//! Every wait has a deadline; every loop is bounded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3dock_aws::sqs::{SqsClient, SqsConfig, SqsQueue};
use s3dock_aws::{S3Config, S3Store};
use s3dock_core::clock::SystemClock;
use s3dock_core::docs::{self, AgentRegistration, AuditRecord, DeployDetails};
use s3dock_core::gzip::GzipOptions;
use s3dock_core::layout;
use s3dock_core::names::{AgentId, AppName, EnvName, ImageRef};
use s3dock_core::registry::{EventMode, HistoryQuery, Registry};
use s3dock_core::store::read_small;
use s3dock_core::transfer::Progress;
use s3dock_engine::deploy::{ColorPorts, LABEL_APP, LABEL_ENV};
use s3dock_engine::ship::{self, GitOverride, PushRequest};
use s3dock_engine::{BollardEngine, BuildOptions, ContainerFilter, ContainerSummary, DockerEngine, context_tar};
use tokio_util::sync::CancellationToken;

pub use s3dock_testkit::nginx::{Load, NGINX, Nginx, assert_serves, free_port, two_free_ports as two_ports};
pub const ENV: &str = "production";
pub const REGION: &str = "us-east-1";
/// No wait in these tests is longer: a hang is a failure, not a stuck run.
pub const LONG: Duration = Duration::from_secs(90);

fn skip(why: &str) {
    s3dock_testkit::skip_unless_ci::<()>(why, "install or start it (tests/services.sh, .ci/run)");
}

/// How to build the binaries these tests run, as they need them.
pub const BUILD_HINT: &str = "cargo build -p s3dock -p s3dock-agent --features s3dock-agent/fault-injection \
     (cargo test --workspace builds them too)";

/// A binary of the workspace: the path in the environment variable `var` when set, else `name`
/// beside this test executable (`target/<profile>/deps/agent-…` -> `target/<profile>/<name>`).
/// `None` (skip, or fail in CI, with [`BUILD_HINT`]) when it is not there.
pub fn workspace_binary(name: &str, var: &str) -> Option<PathBuf> {
    let path = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let exe = std::env::current_exe().expect("the test executable's path");
            exe.parent().and_then(Path::parent).expect("the test executable is in target/<profile>/deps").join(name)
        }
    };
    if path.is_file() {
        return Some(path);
    }
    s3dock_testkit::skip_unless_ci(
        &format!("the {name} binary ({}; {var} overrides the path)", path.display()),
        &format!("build it: {BUILD_HINT}"),
    )
}

/// The `s3dock-agent` binary ([`workspace_binary`], `S3DOCK_AGENT_BIN`).
pub fn agent_bin() -> Option<PathBuf> {
    workspace_binary("s3dock-agent", "S3DOCK_AGENT_BIN")
}

/// The `s3dock` binary ([`workspace_binary`], `S3DOCK_BIN`).
pub fn s3dock_bin() -> Option<PathBuf> {
    workspace_binary("s3dock", "S3DOCK_BIN")
}

/// Everything one test needs, or `None` (after saying why) when a service is missing.
pub async fn world(with_nginx: bool) -> Option<World> {
    let engine = match BollardEngine::connect().await {
        Ok(e) => e,
        Err(e) => {
            skip(&format!("the Docker engine is unreachable ({e})"));
            return None;
        }
    };
    let endpoint = s3dock_testkit::s3::emulator_endpoint()?;
    if with_nginx && !Path::new(NGINX).exists() {
        skip(&format!("{NGINX} is missing (apt-get install nginx)"));
        return None;
    }
    if !Path::new("/bin/busybox").exists() {
        skip("/bin/busybox is missing (apt-get install busybox-static)");
        return None;
    }
    let agent_bin = agent_bin()?;
    Some(World::new(engine, endpoint, agent_bin).await)
}

/// Skips the test when a service is missing.
macro_rules! world_or_skip {
    ($nginx:expr) => {
        match crate::support::world($nginx).await {
            Some(w) => w,
            None => return,
        }
    };
}
pub(crate) use world_or_skip;

pub use s3dock_testkit::unique;

/// Two free 127.0.0.1 ports (held at once, so they differ).
/// What a test image does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Serves `/` (with the marker) and `/health.html`.
    Good,
    /// Serves `/` but not `/health.html`: its health check never passes.
    NoHealth,
    /// Starts serving (healthy) only after this many seconds.
    SlowStart(u32),
}

/// One test: a fresh bucket, a unique app, a temporary directory, and the cleanup of the
/// containers, images and queues it made.
pub struct World {
    pub engine: BollardEngine,
    pub endpoint: String,
    pub bucket: String,
    pub store: Arc<S3Store>,
    /// Pushes images (inline events: the `push` audit records are written).
    pub registry: Registry,
    pub sqs: SqsClient,
    pub dir: tempfile::TempDir,
    pub app: String,
    /// The `s3dock-agent` binary the test runs ([`agent_bin`]).
    pub agent_bin: PathBuf,
    queues: std::sync::Mutex<Vec<String>>,
}

impl World {
    async fn new(engine: BollardEngine, endpoint: String, agent_bin: PathBuf) -> World {
        let app = unique("agt");
        let bucket = unique("s3dock-agent-test");
        s3dock_testkit::s3::create_test_bucket(&endpoint, &bucket).await;
        let mut cfg = S3Config::new(&bucket).unwrap();
        cfg.endpoint = Some(endpoint.clone());
        cfg.path_style = true;
        cfg.region = Some(REGION.into());
        let store = Arc::new(S3Store::connect(cfg).await.expect("the test bucket"));
        let registry = Registry::new(store.clone(), Arc::new(SystemClock), "tester", EventMode::Inline);
        let sqs = SqsClient::connect(&SqsConfig {
            region: Some(REGION.into()),
            endpoint: Some(endpoint.clone()),
            ..SqsConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // nginx workers run as an unprivileged user when the tests run as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let world =
            World { engine, endpoint, bucket, store, registry, sqs, dir, app, agent_bin, queues: Default::default() };
        world.cli_config_async().await;
        world
    }

    pub fn app(&self) -> AppName {
        AppName::parse(&self.app).unwrap()
    }

    pub fn env(&self) -> EnvName {
        EnvName::parse(ENV).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Remembers an agent's queue (and its DLQ) for deletion at the end.
    pub fn forget_queue_later(&self, url: &str) {
        self.queues.lock().unwrap().push(url.to_owned());
    }

    /// Builds `app:tag` `FROM scratch` with busybox httpd on 8080, pushes it to the bucket, and
    /// removes it from the engine, so the agent has to pull it.
    pub async fn push_image(&self, tag: &str, marker: &str, kind: Kind) -> ImageRef {
        let image = ImageRef::parse(&format!("{}:{tag}", self.app)).unwrap();
        let cmd = match kind {
            Kind::SlowStart(secs) => Some(format!(
                r#"["/bin/busybox", "sh", "-c", "sleep {secs}; exec /bin/busybox httpd -f -p 8080 -h /www"]"#
            )),
            _ => None,
        };
        let page = format!("<h1>{marker}</h1>\n");
        let mut www: Vec<(&str, &[u8])> = vec![("index.html", page.as_bytes())];
        if kind != Kind::NoHealth {
            www.push(("health.html", b"ok\n"));
        }
        let ctx = tempfile::tempdir().unwrap();
        s3dock_testkit::images::write_context(
            ctx.path(),
            &s3dock_testkit::images::httpd_files(&self.app.to_string(), cmd.as_deref(), false, &www),
        );
        let (tar, dockerfile) = context_tar(ctx.path(), &ctx.path().join("Dockerfile")).unwrap();
        let opts = BuildOptions { tags: vec![image.to_string()], dockerfile, ..Default::default() };
        self.engine.build_image(tar, &opts).await.unwrap_or_else(|e| panic!("building {image}: {e}"));
        let commit = format!("{}{}", image.tag.hash7(), "0".repeat(33));
        let req = PushRequest {
            image: image.clone(),
            git: Some(GitOverride { commit, committed_at: image.tag.time(), source: None }),
            gzip: GzipOptions { level: 1, ..GzipOptions::default() },
            force: false,
        };
        ship::push(&self.engine, &self.registry, &req, &Progress::default(), &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("pushing {image}: {e}"));
        self.engine.remove_image(&image.to_string(), false).await.unwrap();
        image
    }

    /// The text of an agent configuration with the test's bucket and LocalStack.
    pub fn agent_config(&self, id: &str, reconcile: &str, queue: &str, services: &[String]) -> PathBuf {
        let path = self.path(&format!("agent-{id}.toml"));
        let text = format!(
            "agent_id = \"{id}\"\nhost = \"{id}.test\"\nstore = \"s3://{bucket}\"\nregion = \"{REGION}\"\nendpoint = \"{ep}\"\npath_style = true\nstate_dir = \"{state}\"\nreconcile_interval = \"{reconcile}\"\nheartbeat_interval = \"1s\"\nretry_backoff = \"1h\"\n\n[queue]\n{queue}\n\n{services}",
            bucket = self.bucket,
            ep = self.endpoint,
            state = self.path(&format!("state-{id}")).display(),
            services = services.join("\n"),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A `[[service]]` of the test's app, with short health checks and drain. `traffic` is the
    /// body of its `[service.traffic]` table.
    pub fn service(&self, ports: ColorPorts, traffic: &str, extra: &str) -> String {
        format!(
            "[[service]]\napp = \"{app}\"\nenv = \"{ENV}\"\ncontainer_port = 8080\nports = {{ blue = {b}, green = {g} }}\ndrain = \"1s\"\nstop_timeout = \"1s\"\nkeep_images = 10\nrestart = \"no\"\n{extra}\n[service.health]\npath = \"/health.html\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nsuccesses = 3\ndeadline = \"6s\"\n[service.traffic]\n{traffic}\n",
            app = self.app,
            b = ports.blue,
            g = ports.green,
        )
    }

    /// The CLI's config file: this bucket, inline events (so promotions notify agents). The
    /// notifier learns the account from STS when this LocalStack runs it (`SERVICES` with
    /// `sts`), else from the profile's `account_id` (LocalStack's is 000000000000).
    pub async fn cli_config_async(&self) -> PathBuf {
        let path = self.path("s3dock.toml");
        if !path.exists() {
            let sqs = SqsConfig {
                region: Some(REGION.into()),
                endpoint: Some(self.endpoint.clone()),
                ..SqsConfig::default()
            };
            let account = match s3dock_aws::sqs::caller_account(&sqs).await {
                Ok(_) => String::new(),
                Err(e) => {
                    eprintln!(
                        "STS is not available on this LocalStack ({e}); the CLI profile gives account_id instead"
                    );
                    "account_id = \"000000000000\"\n".to_owned()
                }
            };
            let text = format!(
                "[profiles.default]\nstore = \"s3://{}\"\nregion = \"{REGION}\"\nendpoint = \"{}\"\npath_style = true\nevents = \"inline\"\nuser = \"tester\"\n{account}",
                self.bucket, self.endpoint
            );
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    /// [`World::cli_config_async`], once written.
    pub fn cli_config(&self) -> PathBuf {
        let path = self.path("s3dock.toml");
        assert!(path.exists(), "call cli_config_async first (World::new does)");
        path
    }

    /// Runs an `s3dock` command in this process (the CLI's own library, exactly what the binary
    /// runs): its `--json` document, or its error.
    pub async fn s3dock(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        use clap::Parser;
        let config = self.cli_config_async().await;
        let mut argv = vec!["s3dock".to_owned(), "--config".into(), config.display().to_string(), "--quiet".into()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let cli = s3dock_cli::args::Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
        let env = s3dock_cli::settings::Environment {
            vars: Default::default(),
            config_dir: Some(self.path("xdg-config")),
            data_dir: Some(self.path("xdg-data")),
            home_dir: Some(self.dir.path().to_owned()),
            hostname: Some("test-host".into()),
            cwd: Some(self.dir.path().to_owned()),
        };
        s3dock_cli::run(&cli, env).await.map(|o| o.json).map_err(|e| e.to_string())
    }

    /// `s3dock promote IMAGE production` in this process; the agents it notified.
    pub async fn promote(&self, image: &ImageRef) -> Vec<String> {
        let out = self.s3dock(&["promote", &image.to_string(), ENV]).await.unwrap();
        notified(&out)
    }

    pub async fn registration(&self, agent: &str) -> Option<AgentRegistration> {
        let key = layout::agent(&self.app(), &self.env(), &AgentId::parse(agent).unwrap());
        let (bytes, _) = read_small(&*self.store, &key, docs::MAX_DOC_BYTES).await.unwrap()?;
        Some(docs::decode(key.as_str(), &bytes).unwrap())
    }

    /// Waits until the agent's registration satisfies `pred`; returns it.
    pub async fn wait_registration(
        &self,
        agent: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(&AgentRegistration) -> bool,
    ) -> AgentRegistration {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(r) = self.registration(agent).await {
                if pred(&r) {
                    return r;
                }
                last = Some(r);
            }
            assert!(Instant::now() < deadline, "{agent}: never {what} within {limit:?}; last registration: {last:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the agent reports `image` serving and converged.
    pub async fn wait_converged(&self, agent: &str, image: &ImageRef, limit: Duration) -> AgentRegistration {
        let want = image.to_string();
        self.wait_registration(agent, &format!("converged on {want}"), limit, |r| {
            r.state.as_ref().is_some_and(|s| {
                s.image.as_deref() == Some(want.as_str()) && s.status.map(|s| s.as_str()) == Some("converged")
            })
        })
        .await
    }

    /// The records of host deploys (`deploy`, and `rollback` for a switch back; not the
    /// `rollback` records of pointers, whose details have no host), oldest first.
    pub async fn deploy_records(&self) -> Vec<(AuditRecord, DeployDetails)> {
        let q = HistoryQuery { types: vec!["deploy".into(), "rollback".into()], ..Default::default() };
        let mut out: Vec<_> = self
            .registry
            .history(&self.app(), &q)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| {
                let r = e.record.unwrap();
                r.details.get("host")?;
                let d: DeployDetails = serde_json::from_value(r.details.clone()).unwrap();
                Some((r, d))
            })
            .collect();
        out.reverse();
        out
    }

    /// The containers of the app (any state), optionally of one instance.
    pub async fn containers(&self) -> Vec<ContainerSummary> {
        let filter = ContainerFilter::default().label(LABEL_APP, &self.app).label(LABEL_ENV, ENV);
        self.engine.list_containers(&filter).await.unwrap()
    }

    /// Exactly one container of the app, running `image`.
    pub async fn assert_one_container(&self, image: &ImageRef) -> ContainerSummary {
        let all = self.containers().await;
        assert_eq!(all.len(), 1, "exactly one container: {all:#?}");
        let c = all.into_iter().next().unwrap();
        assert_eq!(c.state, "running", "{c:#?}");
        assert_eq!(c.labels["io.s3dock.image"], image.to_string());
        c
    }

    /// The agent's queue, by the name the agent gives it.
    pub async fn queue_of(&self, agent: &str) -> SqsQueue {
        let name = s3dock_agent::queue::queue_name(
            s3dock_agent::config::DEFAULT_QUEUE_PREFIX,
            &AgentId::parse(agent).unwrap(),
        );
        self.sqs.queue_named(&name).await.unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let engine = self.engine.clone();
        let app = self.app.clone();
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()));
        let sqs = self.sqs.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let filter = ContainerFilter::default().label(LABEL_APP, &app);
                for c in engine.list_containers(&filter).await.unwrap_or_default() {
                    if let Err(e) = engine.remove_container(&c.id, true).await {
                        eprintln!("cleanup: container {}: {e}", c.id);
                    }
                }
                for img in engine.list_images(&app).await.unwrap_or_default() {
                    for t in img.repo_tags {
                        let _ = engine.remove_image(&t, true).await;
                    }
                }
                for url in queues {
                    for u in [url.clone(), format!("{url}{}", s3dock_agent::queue::DLQ_SUFFIX)] {
                        let _ = sqs.queue(&u).delete_queue().await;
                    }
                }
            })
        });
    }
}

/// The agent ids a promote's inline event notified.
pub fn notified(promote_json: &serde_json::Value) -> Vec<String> {
    promote_json["event"]["notified"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------ the agent

/// `s3dock-agent` as a child process, its stderr in a file.
pub struct Agent {
    pub id: String,
    child: Option<Child>,
    pub log: PathBuf,
    bin: PathBuf,
}

impl Agent {
    /// Starts `s3dock-agent --config CONFIG` with the test's AWS settings (inherited) and
    /// `extra` environment.
    pub fn start(world: &World, id: &str, config: &Path, extra: &[(&str, &str)]) -> Agent {
        let n = std::fs::read_dir(world.dir.path()).map(|d| d.count()).unwrap_or(0);
        let log = world.path(&format!("agent-{id}-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&world.agent_bin);
        cmd.arg("--config")
            .arg(config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove(s3dock_agent::fault::CRASH_AT_ENV)
            .env("RUST_LOG", "warn,s3dock_agent=info,s3dock_engine=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting s3dock-agent");
        Agent { id: id.to_owned(), child: Some(child), log, bin: world.agent_bin.clone() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's stderr contains `needle`.
    pub async fn wait_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent {} exited ({status}) before logging {needle:?}:\n{}", self.id, self.log_text());
            }
            assert!(Instant::now() < deadline, "agent {} never logged {needle:?}:\n{}", self.id, self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks that this agent, started with `S3DOCK_AGENT_CRASH_AT`, reads it: a binary built
    /// without the `fault-injection` feature ignores the variable and would deploy to the end,
    /// which a test would only see as a wait for the crash point running out.
    pub async fn assert_fault_injection_on(&mut self) {
        const ON: &str = "fault injection is on";
        // The agent logs it right after reading its configuration, before anything else.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log_text();
            if log.contains(ON) {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "the s3dock-agent binary {} has no crash points: it was built without the \
                     fault-injection feature (its log never says {ON:?}{}). Build it with: {BUILD_HINT}\n{log}",
                    self.bin.display(),
                    exited.map(|s| format!("; it exited: {s}")).unwrap_or_default(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, the way systemd stops it.
    pub fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
    }

    /// SIGKILL (std's `Child::kill`), and reaps it.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "{status}");
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "agent {} did not exit within {limit:?}:\n{}", self.id, self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub async fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.sigterm();
        self.wait_exit(limit).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- agent {} log ---\n{}", self.id, self.log_text());
            }
        }
    }
}

// ------------------------------------------------------------------------------ nginx

/// nginx under the world's directory, proxying to the upstream the agent's nginx driver
/// writes; its upstream names `initial_port` until the first deploy.
pub async fn start_nginx(world: &World, initial_port: u16) -> Nginx {
    Nginx::start(world.path("nginx"), "s3dock_test", initial_port).await
}

/// The body of a `[service.traffic]` table for this nginx.
pub fn nginx_traffic(nginx: &Nginx) -> String {
    let quoted = |v: Vec<String>| format!("[{}]", v.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "));
    format!(
        "driver = \"nginx\"\nupstream_file = \"{}\"\nupstream_name = \"{}\"\ntest_command = {}\nreload_command = {}\n",
        nginx.upstream_file().display(),
        nginx.upstream_name,
        quoted(nginx.test_command()),
        quoted(nginx.reload_command())
    )
}
