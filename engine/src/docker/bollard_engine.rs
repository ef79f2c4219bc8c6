//! [`BollardEngine`]: the [`DockerEngine`] trait over the engine's HTTP API, and the
//! conversions between bollard's models and s3dock's types.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models;
use bollard::query_parameters as query;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use s3dock_core::store::BoxReader;
use tokio_util::io::StreamReader;

use super::api::{ApiVersion, negotiate_api, pin_api_version};
use super::body::{guarded_body, take_failure};
use super::*;

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
        last_tagged: i.metadata.and_then(|m| m.last_tag_time).as_deref().and_then(parse_time),
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

    async fn image_layers(&self) -> Result<Vec<Vec<String>>, EngineError> {
        let images =
            self.control.list_images(Some(query::ListImagesOptions::default())).await.map_err(|e| self.error(e))?;
        let mut out = Vec::with_capacity(images.len());
        for i in images {
            match self.control.inspect_image(&i.id).await {
                Ok(info) => out.push(info.root_fs.and_then(|r| r.layers).unwrap_or_default()),
                // Removed since the listing.
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(out)
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
