//! An in-memory host: a Docker engine, the host network and an nginx-like traffic driver in
//! one state, so the deployer's state machine runs without Docker, sockets or nginx, in
//! microseconds (with tokio's paused clock, health-check and drain waits cost nothing).
//!
//! [`FakeHost`] implements the three seams the deployer talks through — [`DockerEngine`],
//! [`HostNetwork`] and [`TrafficSwitch`] — over one [`HostState`]:
//!
//! - **images and containers**, with Docker's rules that matter to a deploy: a container
//!   inherits its image's labels unless it sets them, a name is unique, a published port is
//!   held by one running container, a running container is only removed by force;
//! - **health answers per container**, scripted: [`Health::Healthy`], [`Health::Unhealthy`],
//!   [`Health::Flapping`] (ok, failed, ok... never two in a row); a container gets its image's
//!   health, or unhealthy during an [`HostState::outage`];
//! - **traffic like nginx**: a `file` (the driver's record, what `current()` reads) and what
//!   `running` nginx routes to (what `routed()` answers). A switch is three calls — write the
//!   file, test it, reload — so a crash can fall between them, and [`DriverMode`] makes the
//!   driver lie (a reload that changes nothing, one that routes to the wrong color, one that
//!   takes effect late); requests to [`HostState::front_port`] go where `running` routes;
//! - **every call counted**, and a crash point: [`HostState::crash`] stops the host at a given
//!   call, before or after its effect, and never answers it (the caller drops the deploy
//!   future, as a `kill -9` would);
//! - **the rules of a blue-green deploy watched**: stopping or removing the container traffic
//!   goes to, and moving traffic to a container that is not running and healthy, are recorded
//!   in [`HostState::violations`].
//!
//! Not for production. Building images is not supported (add them with
//! [`FakeHost::add_image`]); saving and loading use a minimal `docker save` layout.

mod engine;
mod routing;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use s3dock_core::clock::Clock;
use sha2::{Digest, Sha256};

use crate::deploy::spec::{Color, ColorPorts};
use crate::deploy::traffic::Upstream;
use crate::docker::{ContainerInfo, HealthStatus, Protocol, PublishedPort};

/// How a container answers its health path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Ok, failed, ok, failed...: never two answers in a row, so it never passes a check that
    /// wants two.
    Flapping,
}

/// How the fake nginx applies a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverMode {
    /// The running nginx routes to what the file says.
    Honest,
    /// The reload reports success and changes nothing.
    NoOp,
    /// The reload routes to the other color than the file says.
    WrongColor,
    /// The reload takes effect only after this many questions to the routing.
    Slow(u32),
}

/// Where the host stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashAt {
    /// The 1-based number of the call.
    pub call: u64,
    /// Apply the call's effect first (the engine did it; its answer never arrived).
    pub after: bool,
}

/// One call, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: &'static str,
    /// Whether the call changes the host (worth a crash after its effect).
    pub mutating: bool,
}

/// An image in the fake engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeImage {
    pub id: String,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// How its containers answer the health path.
    pub health: Health,
    /// Whether its containers answer requests through the front (the `verify_url` path).
    pub verifies: bool,
    /// Its containers exit at once with status 3.
    pub exits: bool,
    /// Docker's `LastTagTime`: set by a tag, not by a load.
    pub last_tagged: Option<DateTime<Utc>>,
}

/// A container in the fake engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    /// The reference it was created from.
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    pub status: String,
    pub exit_code: Option<i64>,
    /// The host port it publishes (with `host_ip`).
    pub port: Option<u16>,
    pub host_ip: String,
    pub container_port: u16,
    pub health: Health,
    /// The next answer of a flapping container.
    pub flap_ok: bool,
    pub started_at: Option<DateTime<Utc>>,
}

impl FakeContainer {
    /// Healthy now, for the rules: running and answering its health path for good.
    pub fn serves_healthily(&self) -> bool {
        self.running && self.health == Health::Healthy
    }
}

/// Everything the host knows; cloned to snapshot it.
#[derive(Debug, Clone)]
pub struct HostState {
    pub images: BTreeMap<String, FakeImage>,
    pub containers: BTreeMap<String, FakeContainer>,
    /// Ports held by processes that are not containers.
    pub held_ports: BTreeSet<u16>,
    /// The driver's record (the nginx file).
    pub file: Option<Upstream>,
    /// What the running nginx routes to.
    pub running: Option<Upstream>,
    /// A reload waiting to take effect ([`DriverMode::Slow`]): what it applies, and after how
    /// many more questions.
    pub pending: Option<(Option<Upstream>, u32)>,
    pub mode: DriverMode,
    /// `nginx -t` refuses every file.
    pub test_refuses: bool,
    /// The colors' host ports, to map an upstream to a color.
    pub ports: ColorPorts,
    /// Where requests go through the routing (the `verify_url` port).
    pub front_port: u16,
    /// Containers created now answer unhealthy.
    pub outage: bool,
    pub calls: Vec<Call>,
    pub crash: Option<CrashAt>,
    pub crashed: bool,
    /// The next call of this name panics (once): a bug in the caller's process, for testing
    /// what survives it.
    pub panic_on: Option<&'static str>,
    /// Broken rules, one line each.
    pub violations: Vec<String>,
    /// The next container id.
    pub next_id: u64,
    /// The engine's clock, for `started_at`.
    pub now: DateTime<Utc>,
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct FakeHost {
    state: Arc<Mutex<HostState>>,
    crash_signal: Arc<tokio::sync::Notify>,
}

impl FakeHost {
    /// An empty host whose two colors publish `ports`, with an honest driver, the front on
    /// `front_port` and nothing routed.
    pub fn new(ports: ColorPorts, front_port: u16) -> Self {
        Self::from_state(HostState {
            images: BTreeMap::new(),
            containers: BTreeMap::new(),
            held_ports: BTreeSet::new(),
            file: None,
            running: None,
            pending: None,
            mode: DriverMode::Honest,
            test_refuses: false,
            ports,
            front_port,
            outage: false,
            calls: Vec::new(),
            crash: None,
            crashed: false,
            panic_on: None,
            violations: Vec::new(),
            next_id: 1,
            now: DateTime::from_timestamp(1_753_000_000, 0).expect("a valid timestamp"),
        })
    }

    /// A host in `state` (a snapshot taken with [`FakeHost::snapshot`]).
    pub fn from_state(state: HostState) -> Self {
        FakeHost { state: Arc::new(Mutex::new(state)), crash_signal: Arc::new(tokio::sync::Notify::new()) }
    }

    /// A copy of the whole state.
    pub fn snapshot(&self) -> HostState {
        self.lock().clone()
    }

    /// Reads or changes the state directly (not counted as a call).
    pub fn with<T>(&self, f: impl FnOnce(&mut HostState) -> T) -> T {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, HostState> {
        // A panicking test leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an image tagged `reference`; its id is derived from `content` (two images with the
    /// same content share an id, like Docker's content ids). Returns the id.
    pub fn add_image(&self, reference: &str, content: &str, health: Health, verifies: bool) -> String {
        let id = format!("sha256:{}", hex::encode(Sha256::digest(content.as_bytes())));
        let mut s = self.lock();
        for image in s.images.values_mut() {
            image.tags.retain(|t| t != reference);
        }
        let image = s.images.entry(id.clone()).or_insert_with(|| FakeImage {
            id: id.clone(),
            tags: Vec::new(),
            labels: BTreeMap::new(),
            health,
            verifies,
            exits: false,
            last_tagged: None,
        });
        image.tags.push(reference.to_owned());
        id
    }

    /// Changes an image (its labels, health...).
    pub fn update_image(&self, reference: &str, f: impl FnOnce(&mut FakeImage)) {
        let mut s = self.lock();
        if let Some(image) = s.images.values_mut().find(|i| i.id == reference || i.tags.iter().any(|t| t == reference))
        {
            f(image);
        }
    }

    /// The container named `name`, if any.
    pub fn container(&self, name: &str) -> Option<FakeContainer> {
        self.lock().containers.values().find(|c| c.name == name).cloned()
    }

    /// Sets how the container named `name` answers from now on.
    pub fn set_health(&self, name: &str, health: Health) {
        if let Some(c) = self.lock().containers.values_mut().find(|c| c.name == name) {
            c.health = health;
            c.flap_ok = true;
        }
    }

    /// Removes the container named `name` behind the deployer's back (someone ran `docker rm`).
    pub fn remove_by_hand(&self, name: &str) {
        self.lock().containers.retain(|_, c| c.name != name);
    }

    /// Routes traffic (file and running nginx) to `to`, as a user writing the first upstream
    /// file by hand does.
    pub fn route(&self, to: Option<Upstream>) {
        let mut s = self.lock();
        s.file = to.clone();
        s.running = to;
    }

    /// Waits until the host stopped at its crash point.
    pub async fn crashed(&self) {
        loop {
            let notified = self.crash_signal.notified();
            if self.lock().crashed {
                return;
            }
            notified.await;
        }
    }

    /// One counted call: crashes here when it is the crash point (before or after `effect`),
    /// otherwise applies `effect` and answers.
    async fn call<T>(&self, name: &'static str, mutating: bool, effect: impl FnOnce(&mut HostState) -> T) -> T {
        let crash = {
            let mut s = self.lock();
            if s.panic_on == Some(name) {
                s.panic_on = None;
                drop(s);
                panic!("injected panic in {name}");
            }
            if s.crashed {
                // Stopped already: nothing answers any more.
                Some(false)
            } else {
                s.calls.push(Call { name, mutating });
                let n = s.calls.len() as u64;
                s.crash.filter(|c| c.call == n).map(|c| c.after)
            }
        };
        match crash {
            None => effect(&mut self.lock()),
            Some(after) => {
                {
                    let mut s = self.lock();
                    if after && !s.crashed {
                        let _ = effect(&mut s);
                    }
                    s.crashed = true;
                }
                self.crash_signal.notify_waiters();
                std::future::pending::<T>().await
            }
        }
    }
}

impl HostState {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:064x}", self.next_id)
    }

    fn image(&self, reference: &str) -> Option<&FakeImage> {
        self.images.values().find(|i| i.id == reference || i.tags.iter().any(|t| t == reference))
    }

    fn find(&self, id_or_name: &str) -> Option<&FakeContainer> {
        self.containers.values().find(|c| c.id == id_or_name || c.name == id_or_name)
    }

    /// The container the running nginx routes to.
    pub fn serving(&self) -> Option<&FakeContainer> {
        let to = self.running.as_ref()?;
        self.containers.values().find(|c| c.running && c.port == Some(to.port))
    }

    fn upstream_of(&self, color: Color) -> Upstream {
        Upstream { host: "127.0.0.1".into(), port: self.ports.port(color), color }
    }

    /// Applies what a reload loads: checks that traffic only moves to a running, healthy
    /// container.
    fn route_to(&mut self, to: Option<Upstream>) {
        let moves = match (&self.running, &to) {
            (Some(a), Some(b)) => !a.same_as(b),
            (None, Some(_)) => true,
            _ => false,
        };
        if moves && let Some(up) = &to {
            let target = self.containers.values().find(|c| c.port == Some(up.port));
            match target {
                Some(c) if c.serves_healthily() => {}
                Some(c) => self.violations.push(format!(
                    "traffic moved to {} ({}), which is {}",
                    c.name,
                    up,
                    if c.running { format!("{:?}", c.health).to_lowercase() } else { "not running".into() }
                )),
                None => self.violations.push(format!("traffic moved to {up}, where no container is")),
            }
        }
        self.running = to;
    }

    /// Stopping or removing the container traffic goes to leaves nothing serving.
    fn check_not_serving(&mut self, id: &str, what: &str) {
        let serving = self.serving().map(|c| c.id.clone());
        if serving.as_deref() == Some(id) {
            let name = self.containers.get(id).map(|c| c.name.clone()).unwrap_or_default();
            self.violations.push(format!("{what} {name}, the container traffic goes to"));
        }
    }

    /// One answer of a container's health path (a flapping one alternates).
    fn answer(&mut self, port: u16) -> Result<bool, String> {
        let Some(c) = self.containers.values_mut().find(|c| c.running && c.port == Some(port)) else {
            return Err("could not connect (Connection refused)".into());
        };
        Ok(match c.health {
            Health::Healthy => true,
            Health::Unhealthy => false,
            Health::Flapping => {
                c.flap_ok = !c.flap_ok;
                !c.flap_ok
            }
        })
    }

    fn info(&self, c: &FakeContainer) -> ContainerInfo {
        ContainerInfo {
            id: c.id.clone(),
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: c.image_id.clone(),
            running: c.running,
            status: c.status.clone(),
            exit_code: c.exit_code,
            health: HealthStatus::None,
            ports: c
                .port
                .map(|p| PublishedPort {
                    container_port: c.container_port,
                    protocol: Protocol::Tcp,
                    host_ip: c.host_ip.clone(),
                    host_port: p,
                })
                .into_iter()
                .collect(),
            labels: c.labels.clone(),
            started_at: c.started_at,
        }
    }
}

/// A [`Clock`] that follows tokio's clock (paused in tests, so it jumps with the timers).
#[derive(Debug)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(base: DateTime<Utc>) -> Self {
        TokioClock { base, start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        self.base + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::net::{HostNetwork, HttpProbe};
    use crate::deploy::traffic::TrafficSwitch;
    use crate::docker::{ContainerSpec, DockerEngine, PortPublish};

    fn spec(name: &str, image: &str, port: u16) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            ports: vec![PortPublish {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(port),
            }],
            labels: BTreeMap::from([("a".to_owned(), "container".to_owned())]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn containers_follow_dockers_rules() {
        let host = FakeHost::new(ColorPorts { blue: 1, green: 2 }, 80);
        let id = host.add_image("web:20250721-2118-f7a5a27", "v1", Health::Healthy, true);
        host.update_image(&id, |i| {
            i.labels = BTreeMap::from([("a".to_owned(), "image".to_owned()), ("b".to_owned(), "image".to_owned())])
        });
        let c = host.create_container(&spec("web-blue", "web:20250721-2118-f7a5a27", 1)).await.unwrap();
        assert!(host.create_container(&spec("web-blue", "web:20250721-2118-f7a5a27", 1)).await.is_err());
        let info = host.inspect_container("web-blue").await.unwrap().unwrap();
        assert_eq!(info.labels["a"], "container", "the container's own label wins");
        assert_eq!(info.labels["b"], "image", "the image's label is inherited");
        assert!(!info.running);
        host.start_container(&c).await.unwrap();
        assert_eq!(host.http_status(&HttpProbe::new("127.0.0.1", 1, "/"), Default::default()).await, Ok(200));
        assert!(host.port_in_use("127.0.0.1".parse().unwrap(), 1).await.is_some());
        assert!(host.remove_container(&c, false).await.is_err(), "running: only by force");
        host.set_health("web-blue", Health::Flapping);
        let probe = HttpProbe::new("127.0.0.1", 1, "/");
        let answers = [
            host.http_status(&probe, Default::default()).await,
            host.http_status(&probe, Default::default()).await,
            host.http_status(&probe, Default::default()).await,
        ];
        assert_eq!(answers, [Ok(200), Ok(503), Ok(200)]);
        // Traffic to it, then removing it: a broken rule.
        host.route(Some(Upstream { host: "127.0.0.1".into(), port: 1, color: Color::Blue }));
        host.remove_container(&c, true).await.unwrap();
        assert_eq!(host.snapshot().violations.len(), 1, "{:?}", host.snapshot().violations);
        // An image saved and loaded back keeps its id and labels.
        let tar = host.save_image("web:20250721-2118-f7a5a27").await.unwrap();
        let other = FakeHost::new(ColorPorts { blue: 1, green: 2 }, 80);
        let loaded = other.load_image(tar).await.unwrap();
        assert_eq!(loaded.references, ["web:20250721-2118-f7a5a27"]);
        let info = other.inspect_image("web:20250721-2118-f7a5a27").await.unwrap().unwrap();
        assert_eq!((info.id, info.labels["b"].as_str()), (id, "image"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_point_stops_the_host_before_or_after_the_call() {
        for after in [false, true] {
            let host = FakeHost::new(ColorPorts { blue: 1, green: 2 }, 80);
            host.add_image("web:20250721-2118-f7a5a27", "v1", Health::Healthy, true);
            host.with(|s| s.crash = Some(CrashAt { call: 2, after }));
            let run = async {
                let id = host.create_container(&spec("web-blue", "web:20250721-2118-f7a5a27", 1)).await.unwrap();
                host.start_container(&id).await.unwrap();
                unreachable!("the host stops at its second call");
            };
            tokio::select! {
                _ = run => {}
                _ = host.crashed() => {}
            }
            let running = host.container("web-blue").unwrap().running;
            assert_eq!(running, after, "after = {after}");
            assert_eq!(host.snapshot().calls.len(), 2);
        }
    }

    #[tokio::test]
    async fn a_lying_driver_is_seen_by_routed() {
        let host = FakeHost::new(ColorPorts { blue: 1, green: 2 }, 80);
        let blue = Upstream { host: "127.0.0.1".into(), port: 1, color: Color::Blue };
        let green = Upstream { host: "127.0.0.1".into(), port: 2, color: Color::Green };
        host.with(|s| s.mode = DriverMode::NoOp);
        host.switch(&green).await.unwrap();
        assert_eq!(host.current().await.unwrap(), Some(green.clone()));
        assert_eq!(host.routed().await.unwrap(), None);
        host.with(|s| s.mode = DriverMode::WrongColor);
        host.switch(&green).await.unwrap();
        assert_eq!(host.routed().await.unwrap(), Some(blue.clone()));
        host.with(|s| s.mode = DriverMode::Slow(1));
        host.switch(&green).await.unwrap();
        assert_eq!(host.routed().await.unwrap(), Some(blue), "not yet");
        assert_eq!(host.routed().await.unwrap(), Some(green));
        // Moving traffic to ports where nothing runs is a broken rule each time.
        assert_eq!(host.snapshot().violations.len(), 2, "{:?}", host.snapshot().violations);
    }
}
