//! The Docker engine in s3dock's vocabulary: the [`DockerEngine`] trait (no bollard type in a
//! signature) and [`BollardEngine`], its implementation over the engine's HTTP API.
//!
//! Three things here are subtle:
//!
//! - **API version.** bollard's models follow a recent API (1.53) but bollard 0.21 sends every
//!   request *unversioned*, so the engine answers in whatever API it considers current.
//!   [`BollardEngine::connect_to`] asks the engine for its range and pins every later request
//!   to `/v{min(engine, bollard)}/...` with a request modifier, so a Docker 20.10 engine (API
//!   1.41) and an engine 25+ both get requests in a version they speak and answer in the shape
//!   we asked for.
//! - **In-band errors.** `/build` and `/images/load` answer HTTP 200 and then report failures as
//!   `{"errorDetail": ...}` items in the JSON stream; every item is checked, and a stream that
//!   ends without the expected result is an error too.
//! - **Streamed bodies and aborts.** Image archives and build contexts are streamed in both
//!   directions, never buffered whole. When the reader feeding `load_image` fails, the request
//!   body ends with an error, hyper drops the connection without the terminating chunk, and the
//!   engine sees a truncated upload and loads nothing. The last 64 KiB of every upload are held
//!   back until the input ends cleanly, so the engine cannot reach the end of the archive (and
//!   commit the load) before the input's last read has succeeded. The pull path relies on this:
//!   its reader verifies the checksum at the end of the download and fails the read instead of
//!   returning end-of-file, which rejects the whole load.

mod api;
mod body;
mod bollard_engine;

use std::collections::BTreeMap;
use std::io;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use s3dock_core::store::BoxReader;

pub use api::{ApiVersion, negotiate_api};
pub use bollard_engine::{BollardEngine, CONNECT_TIMEOUT, DEFAULT_DOCKER_HOST};

/// What went wrong talking to the Docker engine. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot reach the Docker engine ({detail}); start Docker, or set DOCKER_HOST to the engine's address (e.g. unix:///var/run/docker.sock or tcp://127.0.0.1:2375)"
    )]
    Unreachable { detail: String },
    #[error(
        "image {reference} is not in the local Docker engine; build it with `s3dock build` or check `docker images`"
    )]
    ImageNotFound { reference: String },
    #[error("docker build failed: {message}; fix the Dockerfile or the files it uses, then build again")]
    Build { message: String },
    #[error("docker load failed: {message}; the archive is damaged or not a `docker save` archive, pull it again")]
    Load { message: String },
    #[error("the Docker engine refused the request (HTTP {status}): {message}{}", daemon_hint(*status))]
    Daemon { status: u16, message: String },
    #[error("the Docker engine's answer makes no sense to s3dock ({message}); check the engine with `docker version`")]
    Protocol { message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn daemon_hint(status: u16) -> &'static str {
    match status {
        409 => "; stop or remove what is using it first",
        500.. => "; check the engine's log (journalctl -u docker) if this persists",
        _ => "",
    }
}

impl EngineError {
    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Unreachable { .. } => true,
            EngineError::Daemon { status, .. } => *status >= 500,
            EngineError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
            ),
            EngineError::ImageNotFound { .. }
            | EngineError::Build { .. }
            | EngineError::Load { .. }
            | EngineError::Protocol { .. } => false,
        }
    }

    pub fn is_image_not_found(&self) -> bool {
        matches!(self, EngineError::ImageNotFound { .. })
    }
}

/// The engine's identity and the API version s3dock speaks with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    /// The engine's release, e.g. `20.10.24+dfsg1` or `27.3.1`.
    pub server_version: String,
    /// The API version every request is pinned to: the newest both sides know.
    pub api_version: String,
    /// The newest API version the engine speaks.
    pub server_api_version: String,
    /// The oldest API version the engine accepts.
    pub min_api_version: Option<String>,
    pub os: String,
    pub arch: String,
    /// The storage driver (`overlay2`, `fuse-overlayfs`, `overlayfs` for containerd...).
    pub storage_driver: String,
    /// Images live in containerd's image store (the containerd snapshotter of engines 24+).
    /// Such engines, like every engine 25+, write `docker save` archives in the OCI layout.
    pub containerd_store: bool,
}

/// What `docker image inspect` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The content id, `sha256:...`.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub size: u64,
    pub created: Option<DateTime<Utc>>,
    /// When the image was last given a reference on this engine (Docker's `LastTagTime`; a
    /// `docker load` does not set it, a tag does). s3dock's pull tags what it brings in, so
    /// this says when an image was last pulled here, and garbage collection spares it a while.
    pub last_tagged: Option<DateTime<Utc>>,
}

impl ImageInfo {
    /// `os/arch[/variant]`, e.g. `linux/amd64` or `linux/arm64/v8`.
    pub fn platform(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{}", self.os, self.architecture, v),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// What a `docker load` reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// `repo:tag` of each tagged image loaded ("Loaded image: ...").
    pub references: Vec<String>,
    /// `sha256:...` of each untagged image loaded ("Loaded image ID: ...").
    pub image_ids: Vec<String>,
}

/// How to build an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// `repo:tag` references to give the image; the first is applied by the build itself.
    pub tags: Vec<String>,
    /// The Dockerfile's path inside the context, `/`-separated.
    pub dockerfile: String,
    /// `os/arch[/variant]`; `None` builds for the engine's own platform.
    pub platform: Option<String>,
    pub build_args: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            tags: Vec::new(),
            dockerfile: "Dockerfile".into(),
            platform: None,
            build_args: Vec::new(),
            labels: BTreeMap::new(),
            no_cache: false,
        }
    }
}

/// The result of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutcome {
    /// The built image's id, `sha256:...`.
    pub image_id: String,
    /// The builder's output, one line per item, without trailing newlines.
    pub log: Vec<String>,
}

/// An image in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub size: u64,
    pub created: Option<DateTime<Utc>>,
}

/// Which containers to list. Every condition given must hold; containers in every state are
/// listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    /// `(key, None)` requires the label, `(key, Some(value))` requires that value.
    pub labels: Vec<(String, Option<String>)>,
    /// The exact container name (Docker's own filter is a regular expression; the result is
    /// narrowed to exact matches).
    pub name: Option<String>,
    /// Containers created from this image (or from an image built on top of it, as Docker's
    /// `ancestor` filter does).
    pub ancestor: Option<String>,
}

impl ContainerFilter {
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), Some(value.into())));
        self
    }

    pub fn has_label(mut self, key: impl Into<String>) -> Self {
        self.labels.push((key.into(), None));
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn ancestor(mut self, image: impl Into<String>) -> Self {
        self.ancestor = Some(image.into());
        self
    }
}

/// A container in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    /// Names without Docker's leading `/`.
    pub names: Vec<String>,
    /// The image reference the container was created from.
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    /// `created`, `running`, `exited`...
    pub state: String,
    /// Docker's human summary, e.g. `Up 3 minutes (healthy)`.
    pub status: String,
    pub created: Option<DateTime<Utc>>,
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A container port published on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPublish {
    pub container_port: u16,
    pub protocol: Protocol,
    /// The host address to bind, e.g. `127.0.0.1`; `None` binds every address.
    pub host_ip: Option<String>,
    /// `None` lets the engine pick a free port (read it back with `inspect_container`).
    pub host_port: Option<u16>,
}

/// When the engine restarts a container by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    UnlessStopped,
    OnFailure {
        max_retries: u32,
    },
}

/// Everything needed to create a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's `CMD`; `None` keeps it.
    pub cmd: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortPublish>,
    /// `host-path:container-path[:ro]` or `volume:container-path[:ro]`.
    pub binds: Vec<String>,
    /// `bridge`, `host`, `none` or a network name; `None` is the engine's default.
    pub network_mode: Option<String>,
    pub memory_bytes: Option<u64>,
    /// CPU quota in billionths of a CPU (`1_500_000_000` = 1.5 CPUs).
    pub nano_cpus: Option<u64>,
    pub restart_policy: RestartPolicy,
}

/// The state of Docker's `HEALTHCHECK` for a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthStatus {
    /// The image defines no health check.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// A port the engine published for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: String,
    pub host_port: u16,
}

/// What `docker container inspect` says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// The image reference the container was created from.
    pub image: String,
    pub image_id: String,
    pub running: bool,
    /// `created`, `running`, `exited`...
    pub status: String,
    /// The exit code once the container has exited.
    pub exit_code: Option<i64>,
    pub health: HealthStatus,
    pub ports: Vec<PublishedPort>,
    pub labels: BTreeMap<String, String>,
    pub started_at: Option<DateTime<Utc>>,
}

impl ContainerInfo {
    /// The host port published for `container_port`/tcp, if any.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.container_port == container_port && p.protocol == Protocol::Tcp)
            .map(|p| p.host_port)
    }
}

/// Everything s3dock needs from a Docker engine.
#[async_trait]
pub trait DockerEngine: Send + Sync + std::fmt::Debug {
    /// The engine's versions, platform and image store.
    async fn version(&self) -> Result<EngineVersion, EngineError>;

    /// `None` if the engine has no such image.
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError>;

    /// The layers (`rootfs` diff ids, in order) of every image the engine holds: the layer
    /// chains a `docker load` finds present and does not read again. An engine that cannot tell
    /// reports none, and pulls download whole archives.
    async fn image_layers(&self) -> Result<Vec<Vec<String>>, EngineError> {
        Ok(Vec::new())
    }

    /// A streaming `docker save` of one image. A missing image fails here with
    /// [`EngineError::ImageNotFound`]; a failure after the first bytes fails a read.
    async fn save_image(&self, reference: &str) -> Result<BoxReader, EngineError>;

    /// A streaming `docker load`. If `tar` fails a read, the upload is aborted, the engine
    /// loads nothing, and the read error is returned as [`EngineError::Io`].
    async fn load_image(&self, tar: BoxReader) -> Result<LoadOutcome, EngineError>;

    /// Builds an image from a streamed context tar (see [`crate::context::context_tar`]). If
    /// `context_tar` fails a read, the build is aborted and the error returned.
    async fn build_image(&self, context_tar: BoxReader, opts: &BuildOptions) -> Result<BuildOutcome, EngineError>;

    /// Images with at least one tag in `repository` (all their tags are listed).
    async fn list_images(&self, repository: &str) -> Result<Vec<ImageSummary>, EngineError>;

    /// Removes an image reference (and the image when it was its last one). Removing an absent
    /// image is not an error; an image used by a container is refused unless `force`.
    async fn remove_image(&self, reference: &str, force: bool) -> Result<(), EngineError>;

    /// Gives the image `source` the reference `repo:tag`.
    async fn tag_image(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError>;

    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<ContainerSummary>, EngineError>;

    /// Creates (does not start) a container; returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError>;

    /// Starting a running container is not an error.
    async fn start_container(&self, id: &str) -> Result<(), EngineError>;

    /// Sends SIGTERM (or the image's stop signal), then SIGKILL after `timeout_secs`. Stopping
    /// a stopped or absent container is not an error.
    async fn stop_container(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError>;

    /// Removes a container and its anonymous volumes. Removing an absent container is not an
    /// error; a running one is refused unless `force`.
    async fn remove_container(&self, id: &str, force: bool) -> Result<(), EngineError>;

    /// `None` if there is no such container.
    async fn inspect_container(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, EngineError>;

    /// The last `tail` lines the container wrote to stdout and stderr (interleaved as the
    /// engine stored them), oldest first, without line endings. An absent container has none.
    /// What a container prints may include secrets it was given: callers redact before
    /// showing these lines anywhere.
    async fn container_logs(&self, id_or_name: &str, tail: usize) -> Result<Vec<String>, EngineError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do_and_whether_to_retry() {
        let e = EngineError::Unreachable { detail: "tcp://127.0.0.1:1: connection refused".into() };
        assert!(e.to_string().contains("DOCKER_HOST") && e.to_string().contains("start Docker"), "{e}");
        assert!(e.is_retryable());
        let e = EngineError::ImageNotFound { reference: "app:20250721-2118-f7a5a27".into() };
        assert!(e.to_string().contains("s3dock build"), "{e}");
        assert!(!e.is_retryable() && e.is_image_not_found());
        assert!(EngineError::Daemon { status: 500, message: "x".into() }.is_retryable());
        assert!(!EngineError::Daemon { status: 409, message: "x".into() }.is_retryable());
        assert!(EngineError::Daemon { status: 409, message: "x".into() }.to_string().contains("stop or remove"));
        assert!(!EngineError::Load { message: "x".into() }.is_retryable());
        let reset = EngineError::Io { context: "reading".into(), source: io::ErrorKind::ConnectionReset.into() };
        assert!(reset.is_retryable());
        let bad = EngineError::Io { context: "reading".into(), source: io::Error::other("checksum mismatch") };
        assert!(!bad.is_retryable());
    }
}
