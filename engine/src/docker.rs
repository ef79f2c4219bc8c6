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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models;
use bollard::query_parameters as query;
use bollard::{BollardRequest, Docker};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use s3dock_core::store::BoxReader;
use tokio_util::io::{ReaderStream, StreamReader};

/// The engine used when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// How long [`BollardEngine::connect_to`] waits for the engine's first answer: an engine that is
/// down or firewalled fails the command in seconds instead of hanging.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The budget of a request whose answer is small (inspect, list, create, tag...).
const CONTROL_TIMEOUT_SECS: u64 = 120;

/// bollard's timeout covers a request until the response headers arrive. A load or a build
/// only answers once the engine has read the whole upload, and a classic `docker save` only
/// starts answering once it has assembled the archive, so for those the limit must be longer
/// than any real transfer; callers that need a deadline put their own around the call.
const STREAM_TIMEOUT_SECS: u64 = 24 * 3600;

/// The oldest engine API accepted: `platform` on `/build` arrived in 1.32.
const MIN_API: ApiVersion = ApiVersion { major: 1, minor: 32 };

/// Chunk size for request bodies streamed from a [`BoxReader`].
const BODY_CHUNK: usize = 256 * 1024;

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

/// A Docker engine API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    /// Parses `1.41`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(ApiVersion { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }

    /// The newest API bollard's models describe.
    pub fn bollard() -> Self {
        let v = bollard::API_DEFAULT_VERSION;
        ApiVersion { major: v.major_version as u32, minor: v.minor_version as u32 }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Picks the API version to speak: the newest both sides know.
pub fn negotiate_api(server_max: ApiVersion, server_min: Option<ApiVersion>) -> Result<ApiVersion, EngineError> {
    let chosen = server_max.min(ApiVersion::bollard());
    if chosen < MIN_API {
        return Err(EngineError::Protocol {
            message: format!(
                "the engine speaks API {server_max}, older than the {MIN_API} s3dock needs; upgrade Docker"
            ),
        });
    }
    if let Some(min) = server_min
        && min > chosen
    {
        return Err(EngineError::Protocol {
            message: format!(
                "the engine only accepts API {min} and newer, s3dock speaks up to {chosen}; upgrade s3dock"
            ),
        });
    }
    Ok(chosen)
}

/// `/v1.41/...` style paths; everything else (`/volumes`, `/version`) is not versioned.
fn is_versioned_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v") else { return false };
    let end = rest.find('/').unwrap_or(rest.len());
    ApiVersion::parse(&rest[..end]).is_some()
}

/// `uri` with its path prefixed by `/v{version}`, keeping scheme, authority and query.
fn versioned_uri(uri: &http::Uri, version: ApiVersion) -> Option<http::Uri> {
    let pq = uri.path_and_query()?;
    if is_versioned_path(pq.path()) {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(format!("/v{version}{pq}").parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

fn pin_api_version(mut req: BollardRequest, version: &OnceLock<ApiVersion>) -> BollardRequest {
    if let Some(v) = version.get()
        && let Some(uri) = versioned_uri(req.uri(), *v)
    {
        *req.uri_mut() = uri;
    }
    req
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

/// [`DockerEngine`] over the engine's HTTP API (unix socket or TCP), through bollard.
#[derive(Debug, Clone)]
pub struct BollardEngine {
    host: String,
    /// For requests with small answers.
    control: Docker,
    /// The same connection settings with [`STREAM_TIMEOUT_SECS`], for saves, loads and builds.
    streaming: Docker,
    api: ApiVersion,
}

impl BollardEngine {
    /// Connects to `DOCKER_HOST` (`unix://` or `tcp://`), or to the default socket when it is
    /// unset, and negotiates the API version. Fails within [`CONNECT_TIMEOUT`] when the engine
    /// does not answer.
    pub async fn connect() -> Result<Self, EngineError> {
        let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.trim().is_empty());
        Self::connect_to(host.as_deref().unwrap_or(DEFAULT_DOCKER_HOST)).await
    }

    /// Like [`BollardEngine::connect`], with an explicit engine address.
    pub async fn connect_to(host: &str) -> Result<Self, EngineError> {
        let unreachable = |detail: String| EngineError::Unreachable { detail: format!("{host}: {detail}") };
        let api = Arc::new(OnceLock::new());
        let docker = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, CONTROL_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, CONTROL_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(unreachable("unsupported address; use unix:///path/to/docker.sock or tcp://HOST:PORT".into()));
        }
        .map_err(|e| unreachable(describe_transport_error(&e)))?;
        let pinned = api.clone();
        let control = docker.with_request_modifier(move |req| pin_api_version(req, &pinned));

        // The first request goes out unversioned (the engine answers in its own API) and tells
        // us the range the engine speaks; every later request is pinned.
        let version = match tokio::time::timeout(CONNECT_TIMEOUT, control.version()).await {
            Err(_) => return Err(unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))),
            Ok(Err(e)) => return Err(unreachable(describe_transport_error(&e))),
            Ok(Ok(v)) => v,
        };
        let server_max = version.api_version.as_deref().and_then(ApiVersion::parse).ok_or_else(|| {
            unreachable(format!("the answer to GET /version has no usable ApiVersion ({:?})", version.api_version))
        })?;
        let server_min = version.min_api_version.as_deref().and_then(ApiVersion::parse);
        let chosen = negotiate_api(server_max, server_min)?;
        // Set exactly once, here, before the engine is handed out.
        let _ = api.set(chosen);
        tracing::debug!(host, engine_api = %server_max, api = %chosen, "connected to the Docker engine");

        let streaming = control.clone().with_timeout(Duration::from_secs(STREAM_TIMEOUT_SECS));
        Ok(BollardEngine { host: host.to_owned(), control, streaming, api: chosen })
    }

    /// The engine's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The API version requests are pinned to.
    pub fn api_version(&self) -> ApiVersion {
        self.api
    }

    /// Maps a bollard error with no call-specific meaning.
    fn error(&self, e: BollardError) -> EngineError {
        match e {
            BollardError::DockerResponseServerError { status_code, message } => {
                EngineError::Daemon { status: status_code, message }
            }
            BollardError::DockerStreamError { error } => {
                EngineError::Protocol { message: format!("the engine reported an error mid-answer: {error}") }
            }
            BollardError::JsonDataError { message, .. } => EngineError::Protocol { message },
            BollardError::JsonSerdeError { err } => EngineError::Protocol { message: err.to_string() },
            BollardError::RequestTimeoutError => {
                EngineError::Unreachable { detail: format!("{}: the engine stopped answering", self.host) }
            }
            other => {
                EngineError::Unreachable { detail: format!("{}: {}", self.host, describe_transport_error(&other)) }
            }
        }
    }

    /// A client whose request budget also covers `extra` seconds of engine-side waiting.
    fn control_with_extra(&self, extra_secs: u64) -> Docker {
        self.control.clone().with_timeout(Duration::from_secs(CONTROL_TIMEOUT_SECS + extra_secs))
    }
}

/// A transport error in a few words, with the OS error when there is one.
fn describe_transport_error(e: &BollardError) -> String {
    if let BollardError::SocketNotFoundError(path) = e {
        return format!("no socket at {path}");
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::PermissionDenied => {
                    format!("{io}; add your user to the `docker` group or run as root")
                }
                _ => io.to_string(),
            };
        }
        source = err.source();
    }
    e.to_string()
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The first read error of a request body, kept for the caller: hyper only reports that "the
/// body stream failed", and the caller needs to know it was *its* input, not the engine.
type InputFailure = Arc<Mutex<Option<io::Error>>>;

/// How many trailing bytes of an upload are held back until the input ends cleanly: more than
/// a tar's end-of-archive marker (two zero blocks) plus the padding of a 10 KiB tar record.
const HOLD_BACK: usize = 64 * 1024;

/// Forwards a byte stream but keeps its last [`HOLD_BACK`] bytes until the stream ends without
/// error.
///
/// Aborting the request alone is not enough to make the engine load nothing: an engine that
/// reads the archive with a tar reader stops at the end-of-archive marker, so if every byte had
/// been sent before the input failed (the pull path's checksum check fails *at* the end), it
/// could finish loading without ever noticing the aborted upload. Holding the tail back means
/// the engine never sees the end of the archive unless the input ended cleanly, so a failed
/// input always leaves it with a truncated archive.
struct HoldBackTail<S> {
    inner: S,
    tail: bytes::BytesMut,
    ended: bool,
}

impl<S> HoldBackTail<S> {
    fn new(inner: S) -> Self {
        HoldBackTail { inner, tail: bytes::BytesMut::new(), ended: false }
    }
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for HoldBackTail<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready((!this.tail.is_empty()).then(|| Ok(this.tail.split().freeze())));
            }
            match futures::ready!(this.inner.poll_next_unpin(cx)) {
                None => this.ended = true,
                Some(Err(e)) => {
                    // The held tail is never sent: the upload stays truncated.
                    this.tail.clear();
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(chunk)) => {
                    this.tail.extend_from_slice(&chunk);
                    if this.tail.len() > HOLD_BACK {
                        let ready = this.tail.len() - HOLD_BACK;
                        return Poll::Ready(Some(Ok(this.tail.split_to(ready).freeze())));
                    }
                }
            }
        }
    }
}

/// A request body streamed from `reader`, remembering the first read error. Yielding that error
/// makes hyper abort the request (no terminating chunk), which the engine sees as a truncated
/// upload; with the tail held back ([`HoldBackTail`]) it is truncated before the end of the
/// archive, whatever the engine's way of reading it.
fn guarded_body(reader: BoxReader) -> (impl Stream<Item = io::Result<Bytes>> + Send + 'static, InputFailure) {
    let failure: InputFailure = Arc::new(Mutex::new(None));
    let slot = failure.clone();
    let body = ReaderStream::with_capacity(reader, BODY_CHUNK).map_err(move |e| {
        let copy = io::Error::new(e.kind(), e.to_string());
        slot.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
        copy
    });
    (HoldBackTail::new(body), failure)
}

fn take_failure(failure: &InputFailure) -> Option<io::Error> {
    failure.lock().unwrap_or_else(PoisonError::into_inner).take()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
    // Docker reports "never" as Go's zero time, 0001-01-01T00:00:00Z.
    (t.timestamp() > 0).then_some(t)
}

fn sorted(labels: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    labels.unwrap_or_default().into_iter().collect()
}

/// The repository part of `repo:tag` (a registry port is not a tag: `host:5000/app` has none).
fn repository_of(reference: &str) -> &str {
    let reference = reference.split_once('@').map_or(reference, |(name, _)| name);
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => reference,
    }
}

fn image_info(i: models::ImageInspect) -> ImageInfo {
    ImageInfo {
        id: i.id.unwrap_or_default(),
        repo_tags: i.repo_tags.unwrap_or_default(),
        labels: sorted(i.config.and_then(|c| c.labels)),
        os: i.os.unwrap_or_default(),
        architecture: i.architecture.unwrap_or_default(),
        variant: i.variant.filter(|v| !v.is_empty()),
        size: i.size.unwrap_or(0).max(0) as u64,
        created: i.created.as_deref().and_then(parse_time),
    }
}

fn health_of(state: Option<&models::ContainerState>) -> HealthStatus {
    use models::HealthStatusEnum as H;
    match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
        Some(H::STARTING) => HealthStatus::Starting,
        Some(H::HEALTHY) => HealthStatus::Healthy,
        Some(H::UNHEALTHY) => HealthStatus::Unhealthy,
        Some(H::NONE) | Some(H::EMPTY) | None => HealthStatus::None,
    }
}

/// `8080/tcp` -> (8080, Tcp).
fn parse_port_key(key: &str) -> Option<(u16, Protocol)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    Some((port.parse().ok()?, proto))
}

fn published_ports(map: Option<models::PortMap>) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = map
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, bindings)| Some((parse_port_key(&key)?, bindings?)))
        .flat_map(|((container_port, protocol), bindings)| {
            bindings.into_iter().filter_map(move |b| {
                Some(PublishedPort {
                    container_port,
                    protocol,
                    host_ip: b.host_ip.unwrap_or_default(),
                    host_port: b.host_port?.parse().ok()?,
                })
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a.container_port, a.protocol.as_str(), &a.host_ip, a.host_port).cmp(&(
            b.container_port,
            b.protocol.as_str(),
            &b.host_ip,
            b.host_port,
        ))
    });
    out
}

fn container_info(c: models::ContainerInspectResponse) -> ContainerInfo {
    let state = c.state.as_ref();
    let running = state.and_then(|s| s.running).unwrap_or(false);
    let status = state.and_then(|s| s.status).map(|s| s.to_string()).unwrap_or_default();
    let exited = matches!(status.as_str(), "exited" | "dead");
    let config = c.config.unwrap_or_default();
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
        image: config.image.unwrap_or_default(),
        image_id: c.image.unwrap_or_default(),
        running,
        exit_code: if exited { state.and_then(|s| s.exit_code) } else { None },
        health: health_of(state),
        ports: published_ports(c.network_settings.and_then(|n| n.ports)),
        labels: sorted(config.labels),
        started_at: state.and_then(|s| s.started_at.as_deref()).and_then(parse_time),
        status,
    }
}

fn container_summary(c: models::ContainerSummary) -> ContainerSummary {
    ContainerSummary {
        id: c.id.unwrap_or_default(),
        names: c.names.unwrap_or_default().into_iter().map(|n| n.trim_start_matches('/').to_owned()).collect(),
        image: c.image.unwrap_or_default(),
        image_id: c.image_id.unwrap_or_default(),
        labels: sorted(c.labels),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        status: c.status.unwrap_or_default(),
        created: c.created.and_then(|t| DateTime::from_timestamp(t, 0)),
    }
}

fn create_body(spec: &ContainerSpec) -> models::ContainerCreateBody {
    let mut bindings: models::PortMap = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol.as_str());
        let binding = models::PortBinding {
            host_ip: p.host_ip.clone(),
            host_port: Some(p.host_port.map(|port| port.to_string()).unwrap_or_default()),
        };
        bindings.entry(key).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(binding);
    }
    let mut exposed: Vec<String> = bindings.keys().cloned().collect();
    exposed.sort();
    let restart_policy = match spec.restart_policy {
        RestartPolicy::No => {
            models::RestartPolicy { name: Some(models::RestartPolicyNameEnum::NO), maximum_retry_count: None }
        }
        RestartPolicy::Always => {
            models::RestartPolicy { name: Some(models::RestartPolicyNameEnum::ALWAYS), maximum_retry_count: None }
        }
        RestartPolicy::UnlessStopped => models::RestartPolicy {
            name: Some(models::RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
        RestartPolicy::OnFailure { max_retries } => models::RestartPolicy {
            name: Some(models::RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(i64::from(max_retries)),
        },
    };
    let host_config = models::HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
        network_mode: spec.network_mode.clone(),
        memory: spec.memory_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        nano_cpus: spec.nano_cpus.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        restart_policy: Some(restart_policy),
        ..Default::default()
    };
    models::ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        env: (!spec.env.is_empty()).then(|| spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: (!spec.labels.is_empty()).then(|| spec.labels.clone().into_iter().collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Reads `Loaded image: x` / `Loaded image ID: y` lines of a load's output into `out`.
fn record_loaded(text: &str, out: &mut LoadOutcome) {
    for line in text.lines() {
        let line = line.trim();
        if let Some(id) = line.strip_prefix("Loaded image ID: ") {
            out.image_ids.push(id.trim().to_owned());
        } else if let Some(reference) = line.strip_prefix("Loaded image: ") {
            out.references.push(reference.trim().to_owned());
        }
    }
}

#[async_trait]
impl DockerEngine for BollardEngine {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        let v = self.control.version().await.map_err(|e| self.error(e))?;
        let info = self.control.info().await.map_err(|e| self.error(e))?;
        let driver_status = info.driver_status.unwrap_or_default();
        // Engines with the containerd image store report `driver-type:
        // io.containerd.snapshotter.v1` among the driver status pairs.
        let containerd_store = driver_status.iter().flatten().any(|s| s.contains("containerd.snapshotter"));
        Ok(EngineVersion {
            server_version: v.version.unwrap_or_default(),
            api_version: self.api.to_string(),
            server_api_version: v.api_version.unwrap_or_default(),
            min_api_version: v.min_api_version,
            os: v.os.unwrap_or_default(),
            arch: v.arch.unwrap_or_default(),
            storage_driver: info.driver.unwrap_or_default(),
            containerd_store,
        })
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        match self.control.inspect_image(reference).await {
            Ok(i) => Ok(Some(image_info(i))),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn save_image(&self, reference: &str) -> Result<BoxReader, EngineError> {
        let mut body = Box::pin(self.streaming.export_image(reference));
        // Wait for the first bytes so that a missing image is an error of this call rather
        // than of the caller's first read.
        let first = match body.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) if status_of(&e) == Some(404) => {
                return Err(EngineError::ImageNotFound { reference: reference.to_owned() });
            }
            Some(Err(e)) => return Err(self.error(e)),
            None => {
                return Err(EngineError::Protocol { message: format!("docker save of {reference} returned nothing") });
            }
        };
        let what = format!("docker save of {reference}");
        let stream = futures::stream::once(async move { Ok(first) })
            .chain(body)
            .map_err(move |e| io::Error::other(format!("{what} failed: {e}")));
        Ok(Box::pin(StreamReader::new(stream)))
    }

    async fn load_image(&self, tar: BoxReader) -> Result<LoadOutcome, EngineError> {
        let (body, failure) = guarded_body(tar);
        let options = query::ImportImageOptions { quiet: true, ..Default::default() };
        let mut items = Box::pin(self.streaming.import_image_stream(options, body, None));
        let mut outcome = LoadOutcome::default();
        let mut error = None;
        while let Some(item) = items.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_else(|| "the engine reported an error".into());
                        error = Some(EngineError::Load { message });
                        break;
                    }
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        record_loaded(text, &mut outcome);
                    }
                }
                Err(BollardError::DockerStreamError { error: message }) => {
                    error = Some(EngineError::Load { message });
                    break;
                }
                Err(e) if matches!(status_of(&e), Some(400..500)) => {
                    error = Some(EngineError::Load { message: e.to_string() });
                    break;
                }
                Err(e) => {
                    error = Some(self.error(e));
                    break;
                }
            }
        }
        // Our own input failing explains whatever the engine or hyper said after it.
        if let Some(source) = take_failure(&failure) {
            return Err(EngineError::Io {
                context: "reading the image archive to load (nothing was loaded)".into(),
                source,
            });
        }
        if let Some(e) = error {
            return Err(e);
        }
        if outcome.references.is_empty() && outcome.image_ids.is_empty() {
            return Err(EngineError::Load { message: "the engine reported no loaded image".into() });
        }
        Ok(outcome)
    }

    async fn build_image(&self, context_tar: BoxReader, opts: &BuildOptions) -> Result<BuildOutcome, EngineError> {
        let (body, failure) = guarded_body(context_tar);
        let options = query::BuildImageOptions {
            dockerfile: opts.dockerfile.clone(),
            t: opts.tags.first().cloned(),
            rm: true,
            // Also remove the intermediate containers of a failed build.
            forcerm: true,
            nocache: opts.no_cache,
            platform: opts.platform.clone().unwrap_or_default(),
            buildargs: (!opts.build_args.is_empty()).then(|| opts.build_args.iter().cloned().collect()),
            labels: (!opts.labels.is_empty()).then(|| opts.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        let mut items = Box::pin(self.streaming.build_image(options, None, Some(bollard::body_try_stream(body))));
        let mut log = Vec::new();
        let mut image_id = None;
        let mut error = None;
        while let Some(item) = items.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_else(|| "the builder reported an error".into());
                        error = Some(EngineError::Build { message });
                        break;
                    }
                    if let Some(id) = info.aux.and_then(|aux| aux.id) {
                        image_id = Some(id);
                    }
                    for text in [info.stream, info.status].into_iter().flatten() {
                        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                            tracing::info!(target: "s3dock::build", "{line}");
                            log.push(line.to_owned());
                        }
                    }
                }
                Err(BollardError::DockerStreamError { error: message }) => {
                    error = Some(EngineError::Build { message });
                    break;
                }
                Err(BollardError::DockerResponseServerError { status_code, message }) if status_code < 500 => {
                    error = Some(EngineError::Build { message });
                    break;
                }
                Err(e) => {
                    error = Some(self.error(e));
                    break;
                }
            }
        }
        if let Some(source) = take_failure(&failure) {
            return Err(EngineError::Io { context: "reading the build context".into(), source });
        }
        if let Some(e) = error {
            return Err(e);
        }
        let image_id = match (image_id, opts.tags.first()) {
            (Some(id), _) => id,
            (None, Some(tag)) => match self.inspect_image(tag).await? {
                Some(info) => info.id,
                None => {
                    return Err(EngineError::Build { message: format!("the build finished but {tag} does not exist") });
                }
            },
            (None, None) => {
                return Err(EngineError::Protocol { message: "the build reported no image id and had no tag".into() });
            }
        };
        for reference in opts.tags.iter().skip(1) {
            let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
            self.tag_image(&image_id, repo, tag).await?;
        }
        Ok(BuildOutcome { image_id, log })
    }

    async fn list_images(&self, repository: &str) -> Result<Vec<ImageSummary>, EngineError> {
        let filters = HashMap::from([("reference".to_owned(), vec![repository.to_owned()])]);
        let options = query::ListImagesOptions { filters: Some(filters), ..Default::default() };
        let images = self.control.list_images(Some(options)).await.map_err(|e| self.error(e))?;
        Ok(images
            .into_iter()
            .filter(|i| i.repo_tags.iter().any(|t| repository_of(t) == repository))
            .map(|i| ImageSummary {
                id: i.id,
                repo_tags: i.repo_tags,
                labels: i.labels.into_iter().collect(),
                size: i.size.max(0) as u64,
                created: DateTime::from_timestamp(i.created, 0),
            })
            .collect())
    }

    async fn remove_image(&self, reference: &str, force: bool) -> Result<(), EngineError> {
        let options = query::RemoveImageOptions { force, noprune: false, platforms: None };
        match self.control.remove_image(reference, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn tag_image(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let options = query::TagImageOptions { repo: Some(repo.to_owned()), tag: Some(tag.to_owned()) };
        match self.control.tag_image(source, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(EngineError::ImageNotFound { reference: source.to_owned() }),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<ContainerSummary>, EngineError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        for (key, value) in &filter.labels {
            let f = match value {
                Some(v) => format!("{key}={v}"),
                None => key.clone(),
            };
            filters.entry("label".into()).or_default().push(f);
        }
        if let Some(name) = &filter.name {
            filters.insert("name".into(), vec![name.clone()]);
        }
        if let Some(image) = &filter.ancestor {
            filters.insert("ancestor".into(), vec![image.clone()]);
        }
        let options = query::ListContainersOptions {
            all: true,
            filters: (!filters.is_empty()).then_some(filters),
            ..Default::default()
        };
        let containers = self.control.list_containers(Some(options)).await.map_err(|e| self.error(e))?;
        Ok(containers
            .into_iter()
            .map(container_summary)
            .filter(|c| filter.name.as_ref().is_none_or(|name| c.names.iter().any(|n| n == name)))
            .collect())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let options = query::CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
        match self.control.create_container(Some(options), create_body(spec)).await {
            Ok(created) => {
                for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
                    tracing::warn!(container = %spec.name, "{warning}");
                }
                Ok(created.id)
            }
            Err(e) if status_of(&e) == Some(404) => Err(EngineError::ImageNotFound { reference: spec.image.clone() }),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        self.control.start_container(id, None).await.map_err(|e| self.error(e))
    }

    async fn stop_container(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError> {
        let t = i32::try_from(timeout_secs).unwrap_or(i32::MAX);
        let options = query::StopContainerOptions { t: Some(t), signal: None };
        // The engine answers only once the container is down: up to `timeout_secs` of grace.
        match self.control_with_extra(u64::from(timeout_secs)).stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn remove_container(&self, id: &str, force: bool) -> Result<(), EngineError> {
        let options = query::RemoveContainerOptions { v: true, force, link: false };
        match self.control.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn inspect_container(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        match self.control.inspect_container(id_or_name, None).await {
            Ok(c) => Ok(Some(container_info(c))),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn container_logs(&self, id_or_name: &str, tail: usize) -> Result<Vec<String>, EngineError> {
        if tail == 0 {
            return Ok(Vec::new());
        }
        // `follow: false`: the engine sends what it has and ends the stream, so this is bounded
        // by the tail, not by how long the container runs.
        let options = query::LogsOptions { stdout: true, stderr: true, tail: tail.to_string(), ..Default::default() };
        let mut stream = Box::pin(self.control.logs(id_or_name, Some(options)));
        let mut text = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => text.extend_from_slice(chunk.as_ref()),
                Err(e) if status_of(&e) == Some(404) => return Ok(Vec::new()),
                Err(e) => return Err(self.error(e)),
            }
        }
        let lines: Vec<String> = String::from_utf8_lossy(&text).lines().map(|l| l.trim_end().to_owned()).collect();
        let skip = lines.len().saturating_sub(tail);
        Ok(lines.into_iter().skip(skip).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_parse_and_order() {
        assert_eq!(ApiVersion::parse("1.41"), Some(ApiVersion { major: 1, minor: 41 }));
        assert_eq!(ApiVersion::parse(" 1.9 "), Some(ApiVersion { major: 1, minor: 9 }));
        assert!(ApiVersion::parse("1.41.2").is_none());
        assert!(ApiVersion::parse("latest").is_none());
        assert!(ApiVersion::parse("1.9").unwrap() < ApiVersion::parse("1.41").unwrap());
        assert_eq!(ApiVersion { major: 1, minor: 41 }.to_string(), "1.41");
    }

    #[test]
    fn negotiation_picks_the_newest_common_version() {
        let v = |s| ApiVersion::parse(s).unwrap();
        // Docker 20.10: the engine is older than bollard.
        assert_eq!(negotiate_api(v("1.41"), Some(v("1.12"))).unwrap(), v("1.41"));
        // An engine newer than bollard: speak bollard's version.
        let newer = ApiVersion { major: 1, minor: ApiVersion::bollard().minor + 5 };
        assert_eq!(negotiate_api(newer, Some(v("1.24"))).unwrap(), ApiVersion::bollard());
        // Too old for s3dock.
        let err = negotiate_api(v("1.30"), None).unwrap_err();
        assert!(err.to_string().contains("upgrade Docker"), "{err}");
        // An engine that refuses everything bollard speaks.
        let floor = ApiVersion { major: 1, minor: ApiVersion::bollard().minor + 1 };
        let err = negotiate_api(ApiVersion { major: 1, minor: floor.minor + 3 }, Some(floor)).unwrap_err();
        assert!(err.to_string().contains("upgrade s3dock"), "{err}");
    }

    #[test]
    fn requests_are_pinned_to_the_negotiated_version() {
        let v = ApiVersion { major: 1, minor: 41 };
        let uri: http::Uri = "unix://2f7661722f72756e/images/app:1/json?x=1".parse().unwrap();
        assert_eq!(versioned_uri(&uri, v).unwrap().to_string(), "unix://2f7661722f72756e/v1.41/images/app:1/json?x=1");
        let uri: http::Uri = "http://127.0.0.1:2375/volumes".parse().unwrap();
        assert_eq!(versioned_uri(&uri, v).unwrap().to_string(), "http://127.0.0.1:2375/v1.41/volumes");
        let already: http::Uri = "http://127.0.0.1:2375/v1.40/version".parse().unwrap();
        assert!(versioned_uri(&already, v).is_none());

        let pinned = OnceLock::new();
        let req = |p: &str| http::Request::builder().uri(p).body(bollard::body_full(Bytes::new())).unwrap();
        // Before negotiation nothing is rewritten: the first GET /version goes out unversioned.
        assert_eq!(pin_api_version(req("http://h/version"), &pinned).uri().path(), "/version");
        pinned.set(v).unwrap();
        assert_eq!(pin_api_version(req("http://h/containers/json"), &pinned).uri().path(), "/v1.41/containers/json");
    }

    fn chunks(n: usize, size: usize) -> Vec<io::Result<Bytes>> {
        (0..n).map(|i| Ok(Bytes::from(vec![i as u8; size]))).collect()
    }

    #[tokio::test]
    async fn the_tail_is_sent_only_after_a_clean_end() {
        let input = chunks(10, 20_000);
        let total: usize = 10 * 20_000;
        let mut held = HoldBackTail::new(futures::stream::iter(input));
        let mut sent = Vec::new();
        while let Some(chunk) = held.next().await {
            sent.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(sent.len(), total);
        assert_eq!(sent[total - 1], 9);

        // The input fails after its last byte: everything but the held tail went out.
        let mut input = chunks(10, 20_000);
        input.push(Err(io::Error::other("checksum mismatch")));
        let mut held = HoldBackTail::new(futures::stream::iter(input));
        let mut sent = 0;
        let mut failed = false;
        while let Some(chunk) = held.next().await {
            match chunk {
                Ok(c) => sent += c.len(),
                Err(e) => {
                    assert_eq!(e.to_string(), "checksum mismatch");
                    failed = true;
                }
            }
        }
        assert!(failed);
        assert_eq!(sent, total - HOLD_BACK);

        // A short input is held whole until it ends.
        let mut held =
            HoldBackTail::new(futures::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err(io::Error::other("x"))]));
        assert!(held.next().await.unwrap().is_err());
        assert!(held.next().await.is_none());
    }

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

    #[test]
    fn repositories_of_references() {
        assert_eq!(repository_of("app:20250721-2118-f7a5a27"), "app");
        assert_eq!(repository_of("app"), "app");
        assert_eq!(repository_of("registry:5000/team/app:1"), "registry:5000/team/app");
        assert_eq!(repository_of("registry:5000/team/app"), "registry:5000/team/app");
        assert_eq!(repository_of("app@sha256:abcd"), "app");
    }

    #[test]
    fn load_output_is_parsed() {
        let mut out = LoadOutcome::default();
        record_loaded("Loaded image: app:20250721-2118-f7a5a27\n", &mut out);
        record_loaded("Loaded image ID: sha256:0123\nsomething else\n", &mut out);
        assert_eq!(out.references, ["app:20250721-2118-f7a5a27"]);
        assert_eq!(out.image_ids, ["sha256:0123"]);
    }

    #[test]
    fn container_specs_become_create_bodies() {
        let spec = ContainerSpec {
            name: "web-blue".into(),
            image: "web:20250721-2118-f7a5a27".into(),
            env: vec![("PORT".into(), "8080".into())],
            ports: vec![
                PortPublish {
                    container_port: 8080,
                    protocol: Protocol::Tcp,
                    host_ip: Some("127.0.0.1".into()),
                    host_port: None,
                },
                PortPublish { container_port: 8080, protocol: Protocol::Tcp, host_ip: None, host_port: Some(9090) },
            ],
            memory_bytes: Some(64 << 20),
            restart_policy: RestartPolicy::OnFailure { max_retries: 3 },
            ..Default::default()
        };
        let body = create_body(&spec);
        assert_eq!(body.env.as_deref(), Some(&["PORT=8080".to_owned()][..]));
        assert_eq!(body.exposed_ports.as_deref(), Some(&["8080/tcp".to_owned()][..]));
        let host = body.host_config.unwrap();
        let bindings = host.port_bindings.unwrap()["8080/tcp"].clone().unwrap();
        assert_eq!(bindings.len(), 2);
        assert_eq!(bindings[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(bindings[0].host_port.as_deref(), Some(""));
        assert_eq!(bindings[1].host_port.as_deref(), Some("9090"));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.restart_policy.unwrap().maximum_retry_count, Some(3));
        assert!(body.cmd.is_none() && host.binds.is_none());
    }

    #[test]
    fn published_ports_are_read_back() {
        let map: models::PortMap = HashMap::from([
            (
                "8080/tcp".to_owned(),
                Some(vec![models::PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some("49153".into()) }]),
            ),
            ("9000/udp".to_owned(), None),
        ]);
        let ports = published_ports(Some(map));
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].container_port, ports[0].host_port, ports[0].host_ip.as_str()),
            (8080, 49153, "127.0.0.1")
        );
        assert!(parse_time("0001-01-01T00:00:00Z").is_none());
        assert!(parse_time("2025-07-21T21:18:59.123456789Z").is_some());
    }
}
