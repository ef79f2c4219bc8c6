//! [`FakeHost`] as a Docker engine: images, containers and ports, with Docker's rules that
//! matter to a deploy, and a minimal `docker save` layout for pushes and pulls.

use std::collections::BTreeMap;
use std::io::Read;

use async_trait::async_trait;
use s3dock_core::store::BoxReader;
use tokio::io::AsyncReadExt;

use super::{FakeContainer, FakeHost, FakeImage, Health};
use crate::docker::{
    BuildOptions, BuildOutcome, ContainerFilter, ContainerInfo, ContainerSpec, ContainerSummary, DockerEngine,
    EngineError, EngineVersion, ImageInfo, ImageSummary, LoadOutcome,
};

fn conflict(message: String) -> EngineError {
    EngineError::Daemon { status: 409, message }
}

#[async_trait]
impl DockerEngine for FakeHost {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        self.call("engine.version", false, |_| EngineVersion {
            server_version: "fake".into(),
            api_version: "1.41".into(),
            server_api_version: "1.41".into(),
            min_api_version: Some("1.12".into()),
            os: "linux".into(),
            arch: "amd64".into(),
            storage_driver: "memory".into(),
            containerd_store: false,
        })
        .await
        .pipe(Ok)
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        Ok(self
            .call("engine.inspect_image", false, |s| {
                s.image(reference).map(|i| ImageInfo {
                    id: i.id.clone(),
                    repo_tags: i.tags.clone(),
                    labels: i.labels.clone(),
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: None,
                    size: 1024,
                    created: None,
                    last_tagged: i.last_tagged,
                })
            })
            .await)
    }

    async fn save_image(&self, reference: &str) -> Result<BoxReader, EngineError> {
        let image = self.call("engine.save_image", false, |s| s.image(reference).cloned()).await;
        let image = image.ok_or_else(|| EngineError::ImageNotFound { reference: reference.to_owned() })?;
        let tar =
            save_tar(&image, reference).map_err(|e| EngineError::Io { context: "writing a save".into(), source: e })?;
        Ok(Box::pin(std::io::Cursor::new(tar)))
    }

    async fn load_image(&self, mut tar: BoxReader) -> Result<LoadOutcome, EngineError> {
        let mut bytes = Vec::new();
        tar.read_to_end(&mut bytes).await.map_err(|e| EngineError::Io {
            context: "reading the image archive to load (nothing was loaded)".into(),
            source: e,
        })?;
        let (id, labels, tags) = parse_save(&bytes).map_err(|message| EngineError::Load { message })?;
        self.call("engine.load_image", true, move |s| {
            for image in s.images.values_mut() {
                image.tags.retain(|t| !tags.contains(t));
            }
            let image = s.images.entry(id.clone()).or_insert_with(|| FakeImage {
                id: id.clone(),
                tags: Vec::new(),
                labels,
                health: Health::Healthy,
                verifies: true,
                exits: false,
                last_tagged: None,
            });
            image.tags.extend(tags.iter().cloned());
            LoadOutcome { references: tags, image_ids: Vec::new() }
        })
        .await
        .pipe(Ok)
    }

    async fn build_image(&self, _context: BoxReader, _opts: &BuildOptions) -> Result<BuildOutcome, EngineError> {
        Err(EngineError::Build {
            message: "the in-memory engine builds nothing; add images with FakeHost::add_image".into(),
        })
    }

    async fn list_images(&self, repository: &str) -> Result<Vec<ImageSummary>, EngineError> {
        Ok(self
            .call("engine.list_images", false, |s| {
                s.images
                    .values()
                    .filter(|i| i.tags.iter().any(|t| t.rsplit_once(':').is_some_and(|(r, _)| r == repository)))
                    .map(|i| ImageSummary {
                        id: i.id.clone(),
                        repo_tags: i.tags.clone(),
                        labels: i.labels.clone(),
                        size: 1024,
                        created: None,
                    })
                    .collect()
            })
            .await)
    }

    async fn remove_image(&self, reference: &str, force: bool) -> Result<(), EngineError> {
        self.call("engine.remove_image", true, |s| {
            let Some(image) = s.image(reference).cloned() else { return Ok(()) };
            let used = s.containers.values().any(|c| c.image_id == image.id);
            let last_tag = image.tags.len() <= 1 || image.id == reference;
            if last_tag && used && !force {
                return Err(conflict(format!("unable to remove {reference}: image is being used by a container")));
            }
            if last_tag {
                s.images.remove(&image.id);
            } else if let Some(i) = s.images.get_mut(&image.id) {
                i.tags.retain(|t| t != reference);
            }
            Ok(())
        })
        .await
    }

    async fn tag_image(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let reference = format!("{repo}:{tag}");
        self.call("engine.tag_image", true, |s| {
            let Some(id) = s.image(source).map(|i| i.id.clone()) else {
                return Err(EngineError::ImageNotFound { reference: source.to_owned() });
            };
            for image in s.images.values_mut() {
                image.tags.retain(|t| *t != reference);
            }
            let now = s.now;
            if let Some(image) = s.images.get_mut(&id) {
                image.tags.push(reference.clone());
                image.last_tagged = Some(now);
            }
            Ok(())
        })
        .await
    }

    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<ContainerSummary>, EngineError> {
        Ok(self
            .call("engine.list_containers", false, |s| {
                s.containers
                    .values()
                    .filter(|c| {
                        filter.labels.iter().all(|(k, v)| match v {
                            Some(v) => c.labels.get(k) == Some(v),
                            None => c.labels.contains_key(k),
                        }) && filter.name.as_ref().is_none_or(|n| *n == c.name)
                            && filter.ancestor.as_ref().is_none_or(|a| s.image(a).is_some_and(|i| i.id == c.image_id))
                    })
                    .map(|c| ContainerSummary {
                        id: c.id.clone(),
                        names: vec![c.name.clone()],
                        image: c.image.clone(),
                        image_id: c.image_id.clone(),
                        labels: c.labels.clone(),
                        state: if c.running { "running".into() } else { c.status.clone() },
                        status: c.status.clone(),
                        created: None,
                    })
                    .collect()
            })
            .await)
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        self.call("engine.create_container", true, |s| {
            if s.containers.values().any(|c| c.name == spec.name) {
                return Err(conflict(format!(
                    "Conflict. The container name \"/{}\" is already in use by container",
                    spec.name
                )));
            }
            let Some(image) = s.image(&spec.image).cloned() else {
                return Err(EngineError::ImageNotFound { reference: spec.image.clone() });
            };
            // Docker: the container's labels are its image's, overridden by those it sets.
            let mut labels = image.labels.clone();
            labels.extend(spec.labels.clone());
            let id = s.new_id();
            let publish = spec.ports.first();
            let health = if s.outage { Health::Unhealthy } else { image.health };
            s.containers.insert(
                id.clone(),
                FakeContainer {
                    id: id.clone(),
                    name: spec.name.clone(),
                    image: spec.image.clone(),
                    image_id: image.id.clone(),
                    labels,
                    running: false,
                    status: "created".into(),
                    exit_code: None,
                    port: publish.and_then(|p| p.host_port),
                    host_ip: publish.and_then(|p| p.host_ip.clone()).unwrap_or_else(|| "0.0.0.0".into()),
                    container_port: publish.map_or(0, |p| p.container_port),
                    health,
                    flap_ok: true,
                    started_at: None,
                },
            );
            Ok(id)
        })
        .await
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        self.call("engine.start_container", true, |s| {
            let Some(c) = s.find(id).cloned() else {
                return Err(EngineError::Daemon { status: 404, message: format!("No such container: {id}") });
            };
            if c.running {
                return Ok(());
            }
            if let Some(port) = c.port {
                let taken = s.held_ports.contains(&port)
                    || s.containers.values().any(|o| o.id != c.id && o.running && o.port == Some(port));
                if taken {
                    return Err(EngineError::Daemon {
                        status: 500,
                        message: format!("driver failed programming external connectivity: Bind for 127.0.0.1:{port} failed: port is already allocated"),
                    });
                }
            }
            let exits = s.images.get(&c.image_id).is_some_and(|i| i.exits);
            let now = s.now;
            let c = s.containers.get_mut(&c.id).expect("found above");
            if exits {
                c.status = "exited".into();
                c.exit_code = Some(3);
            } else {
                c.running = true;
                c.status = "running".into();
                c.started_at = Some(now);
            }
            Ok(())
        })
        .await
    }

    async fn stop_container(&self, id: &str, _timeout_secs: u32) -> Result<(), EngineError> {
        self.call("engine.stop_container", true, |s| {
            let Some(c) = s.find(id).cloned() else { return Ok(()) };
            if c.running {
                s.check_not_serving(&c.id, "stopped");
            }
            let c = s.containers.get_mut(&c.id).expect("found above");
            c.running = false;
            c.status = "exited".into();
            c.exit_code = Some(0);
            Ok(())
        })
        .await
    }

    async fn remove_container(&self, id: &str, force: bool) -> Result<(), EngineError> {
        self.call("engine.remove_container", true, |s| {
            let Some(c) = s.find(id).cloned() else { return Ok(()) };
            if c.running && !force {
                return Err(conflict(format!("You cannot remove a running container {}", c.id)));
            }
            s.check_not_serving(&c.id, "removed");
            s.containers.remove(&c.id);
            Ok(())
        })
        .await
    }

    async fn inspect_container(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        Ok(self.call("engine.inspect_container", false, |s| s.find(id_or_name).map(|c| s.info(c))).await)
    }

    async fn container_logs(&self, id_or_name: &str, tail: usize) -> Result<Vec<String>, EngineError> {
        Ok(self
            .call("engine.container_logs", false, |s| {
                s.find(id_or_name)
                    .filter(|c| c.exit_code.is_some_and(|code| code != 0))
                    .map(|_| vec!["the fake app exits at once".to_owned()])
                    .unwrap_or_default()
                    .into_iter()
                    .take(tail)
                    .collect()
            })
            .await)
    }
}

/// `x.pipe(f)` = `f(x)`, to keep the call chains above readable.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

/// A minimal classic `docker save`: the image config (named by its digest), `manifest.json`.
fn save_tar(image: &FakeImage, reference: &str) -> std::io::Result<Vec<u8>> {
    let hex = image.id.trim_start_matches("sha256:");
    let config = serde_json::json!({"config": {"Labels": image.labels}, "s3dock_fake_id": image.id});
    let manifest = serde_json::json!([{"Config": format!("{hex}.json"), "RepoTags": [reference], "Layers": []}]);
    let mut out = tar::Builder::new(Vec::new());
    for (name, body) in
        [(format!("{hex}.json"), config.to_string()), ("manifest.json".to_owned(), manifest.to_string())]
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, name, body.as_bytes())?;
    }
    out.into_inner()
}

/// What [`parse_save`] reads from an archive: its image id, labels and tags.
type SavedImage = (String, BTreeMap<String, String>, Vec<String>);

/// The id, labels and tags of an archive [`save_tar`] wrote.
fn parse_save(bytes: &[u8]) -> Result<SavedImage, String> {
    let mut archive = tar::Archive::new(bytes);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).map_err(|e| e.to_string())?;
        files.insert(name, body);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(files.get("manifest.json").ok_or("no manifest.json in the archive")?)
            .map_err(|e| e.to_string())?;
    let entry = &manifest[0];
    let config_name = entry["Config"].as_str().ok_or("no Config in manifest.json")?;
    let config: serde_json::Value =
        serde_json::from_slice(files.get(config_name).ok_or("the config is missing")?).map_err(|e| e.to_string())?;
    let id = config["s3dock_fake_id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sha256:{}", config_name.trim_end_matches(".json")));
    let labels = serde_json::from_value(config["config"]["Labels"].clone()).unwrap_or_default();
    let tags =
        entry["RepoTags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
    Ok((id, labels, tags))
}
