//! `s3dock build`: refuse a dirty tree, derive the tag from HEAD, build with provenance labels.
//!
//! The labels carry the git facts inside the image, so `push` can read them back from the local
//! image alone ([`labels_to_git`]) rather than from whatever the working tree holds by then.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use s3dock_core::names::{AppName, ImageRef};

use crate::context::{ContextError, context_tar};
use crate::docker::{BuildOptions, DockerEngine, EngineError};
use crate::git::{GitError, GitFacts, inspect_repo};

/// The full commit id.
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";
/// The commit time, RFC 3339 in UTC.
pub const LABEL_CREATED: &str = "org.opencontainers.image.created";
/// The `origin` remote URL, without credentials.
pub const LABEL_SOURCE: &str = "org.opencontainers.image.source";
pub const LABEL_APP: &str = "io.s3dock.app";
pub const LABEL_TAG: &str = "io.s3dock.tag";
/// A digest of what shapes a build beyond the commit: the Dockerfile's bytes (it may live
/// outside the repository), the platform and the build arguments.
pub const LABEL_INPUTS: &str = "io.s3dock.build-inputs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    pub app: AppName,
    /// The build context; the git repository is the one containing it.
    pub context_dir: PathBuf,
    /// Defaults to `Dockerfile` in the context. A relative path is taken as it is, i.e.
    /// relative to the current directory, like `docker build -f`.
    pub dockerfile: Option<PathBuf>,
    /// `os/arch[/variant]`; `None` builds for the engine's platform.
    pub platform: Option<String>,
    pub build_args: Vec<(String, String)>,
    /// Build even when the engine already has this commit's image built from the same inputs.
    pub rebuild: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// `app:YYYYMMDD-HHMM-hash7`.
    pub image_ref: ImageRef,
    /// `sha256:...`.
    pub image_id: String,
    pub git: GitFacts,
    /// The builder's output lines.
    pub log: Vec<String>,
    /// The engine already had this commit's image built from the same inputs: not rebuilt.
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl BuildError {
    /// Whether building again later may succeed without changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            BuildError::Engine(e) => e.is_retryable(),
            BuildError::Git(_) | BuildError::Context(_) => false,
        }
    }
}

/// The git facts recorded in an image's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitLabels {
    pub commit: String,
    pub committed_at: DateTime<Utc>,
    pub source: Option<String>,
}

/// The labels `build` puts on an image.
pub fn build_labels(image_ref: &ImageRef, git: &GitFacts) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_REVISION.to_owned(), git.commit.clone()),
        (LABEL_CREATED.to_owned(), git.committed_at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        (LABEL_APP.to_owned(), image_ref.app.to_string()),
        (LABEL_TAG.to_owned(), image_ref.tag.to_string()),
    ]);
    if let Some(url) = &git.source_url {
        labels.insert(LABEL_SOURCE.to_owned(), url.clone());
    }
    labels
}

/// Reads the git facts back from an image's labels; `None` unless both the revision (40 or 64
/// hex digits) and the creation time are present and well-formed.
pub fn labels_to_git(labels: &BTreeMap<String, String>) -> Option<GitLabels> {
    let commit = labels.get(LABEL_REVISION)?;
    let hex = commit.chars().all(|c| c.is_ascii_hexdigit());
    if !(hex && (commit.len() == 40 || commit.len() == 64)) {
        return None;
    }
    let committed_at = DateTime::parse_from_rfc3339(labels.get(LABEL_CREATED)?).ok()?.with_timezone(&Utc);
    Some(GitLabels {
        commit: commit.to_ascii_lowercase(),
        committed_at,
        source: labels.get(LABEL_SOURCE).filter(|s| !s.is_empty()).cloned(),
    })
}

/// Builds `req.app` from the HEAD commit of the repository containing the context: refuses a
/// dirty tree, tags the image `APP:YYYYMMDD-HHMM-hash7` and labels it with its provenance.
pub async fn build(engine: &dyn DockerEngine, req: &BuildRequest) -> Result<BuildResult, BuildError> {
    if !req.context_dir.is_dir() {
        return Err(ContextError::NotADirectory { path: req.context_dir.clone() }.into());
    }
    let dir = req.context_dir.clone();
    // libgit2 reads the whole index and stats the tree: keep it off the async workers.
    let git = match tokio::task::spawn_blocking(move || inspect_repo(&dir)).await {
        Ok(facts) => facts?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            return Err(GitError::Git { context: "inspecting the repository".into(), message: e.to_string() }.into());
        }
    };
    let image_ref = ImageRef::new(req.app.clone(), git.tag.clone());
    let dockerfile = req.dockerfile.clone().unwrap_or_else(|| req.context_dir.join("Dockerfile"));
    let inputs = build_inputs(&dockerfile, req)?;
    // The classic builder stamps each image with its build time, so building the same commit
    // twice gives two image ids, and the second push would archive and replace the first. The
    // tree is clean, so the same commit and the same inputs mean the same sources: reuse the
    // image the engine already has (untracked files are the exception; --rebuild covers them).
    if !req.rebuild
        && let Some(existing) = engine.inspect_image(&image_ref.to_string()).await?
        && existing.labels.get(LABEL_REVISION) == Some(&git.commit)
        && existing.labels.get(LABEL_INPUTS) == Some(&inputs)
    {
        tracing::info!(image = %image_ref, id = %existing.id, "already built from this commit and these inputs");
        return Ok(BuildResult { image_ref, image_id: existing.id, git, log: vec![], reused: true });
    }
    let (tar, dockerfile_name) = context_tar(&req.context_dir, &dockerfile)?;
    let mut labels = build_labels(&image_ref, &git);
    labels.insert(LABEL_INPUTS.to_owned(), inputs);
    let options = BuildOptions {
        tags: vec![image_ref.to_string()],
        dockerfile: dockerfile_name,
        platform: req.platform.clone(),
        build_args: req.build_args.clone(),
        labels,
        no_cache: false,
    };
    tracing::info!(image = %image_ref, commit = %git.commit, "building");
    let outcome = engine.build_image(tar, &options).await?;
    Ok(BuildResult { image_ref, image_id: outcome.image_id, git, log: outcome.log, reused: false })
}

/// The digest behind [`LABEL_INPUTS`].
fn build_inputs(dockerfile: &std::path::Path, req: &BuildRequest) -> Result<String, BuildError> {
    use sha2::{Digest, Sha256};
    let bytes =
        std::fs::read(dockerfile).map_err(|_| ContextError::DockerfileNotFound { path: dockerfile.to_path_buf() })?;
    let mut h = Sha256::new();
    h.update(Sha256::digest(&bytes));
    h.update(req.platform.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    let mut args = req.build_args.clone();
    args.sort();
    for (k, v) in args {
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
        h.update([0]);
    }
    Ok(hex::encode(&h.finalize()[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3dock_core::names::ImageTag;

    fn facts(source: Option<&str>) -> GitFacts {
        let committed_at = DateTime::parse_from_rfc3339("2025-07-21T23:18:59+02:00").unwrap().with_timezone(&Utc);
        let commit = "f7a5a27e1234567890abcdef1234567890abcdef".to_owned();
        GitFacts {
            tag: ImageTag::from_commit(committed_at, &commit).unwrap(),
            commit,
            committed_at,
            source_url: source.map(str::to_owned),
            workdir: PathBuf::from("/src"),
        }
    }

    #[test]
    fn labels_round_trip() {
        let git = facts(Some("https://example.com/team/web.git"));
        let image_ref = ImageRef::new(AppName::parse("web").unwrap(), git.tag.clone());
        let labels = build_labels(&image_ref, &git);
        assert_eq!(labels[LABEL_CREATED], "2025-07-21T21:18:59Z");
        assert_eq!(labels[LABEL_TAG], "20250721-2118-f7a5a27");
        assert_eq!(labels[LABEL_APP], "web");
        let back = labels_to_git(&labels).unwrap();
        assert_eq!(back.commit, git.commit);
        assert_eq!(back.committed_at, git.committed_at);
        assert_eq!(back.source.as_deref(), Some("https://example.com/team/web.git"));

        let without = build_labels(&image_ref, &facts(None));
        assert!(!without.contains_key(LABEL_SOURCE));
        assert_eq!(labels_to_git(&without).unwrap().source, None);
    }

    #[test]
    fn foreign_or_broken_labels_give_nothing() {
        assert!(labels_to_git(&BTreeMap::new()).is_none());
        let mut labels = build_labels(&ImageRef::new(AppName::parse("web").unwrap(), facts(None).tag), &facts(None));
        labels.insert(LABEL_REVISION.into(), "main".into());
        assert!(labels_to_git(&labels).is_none());
        labels.insert(LABEL_REVISION.into(), "F7A5A27E1234567890ABCDEF1234567890ABCDEF".into());
        assert_eq!(labels_to_git(&labels).unwrap().commit, "f7a5a27e1234567890abcdef1234567890abcdef");
        labels.insert(LABEL_CREATED.into(), "yesterday".into());
        assert!(labels_to_git(&labels).is_none());
    }
}
