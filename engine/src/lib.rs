//! s3dock's Docker engine and git access, shared by the CLI and the host agent (never linked by
//! the Lambda functions: bollard and libgit2 have no business in a cold start).
//!
//! - [`docker`]: the [`DockerEngine`] trait in s3dock's vocabulary and [`BollardEngine`], its
//!   implementation: API version negotiation, streamed save/load/build with in-band error
//!   checks, images and containers.
//! - [`agent_config`]: the host file (the agent's configuration), read by the agent and by
//!   `s3dock deploy`.
//! - [`archive`]: telling the classic and OCI `docker save` layouts apart.
//! - [`git`]: the HEAD commit, its tag, and the clean-tree check.
//! - [`context`]: the build context tar, streamed, filtered by `.dockerignore` with Docker's
//!   semantics.
//! - [`load_tags`]: a pulled archive may only name the pulled image (no other tag moves).
//! - [`ship`]: push (save -> gzip -> bucket) and pull (bucket -> verify -> gunzip -> load).
//! - [`fake`]: an in-memory host (Docker engine, network, nginx-like driver) with crash points,
//!   for the deployer's exhaustive tests.
//! - [`build`](mod@build): the build flow `s3dock build` runs, and the provenance labels it writes.
//! - [`deploy`]: blue-green deploys on one host (service spec, traffic drivers, health checks,
//!   crash-safe state), shared by `s3dock deploy --blue-green` and the host agent.

pub mod agent_config;
pub mod archive;
pub mod build;
pub mod context;
pub mod deploy;
pub mod docker;
pub mod fake;
pub mod git;
pub mod load_tags;
pub mod partial;
pub mod ship;

pub use archive::{ArchiveFormat, archive_format_of, sniff_archive_format};
pub use build::{BuildError, BuildRequest, BuildResult, GitLabels, build, labels_to_git};
pub use context::{ContextError, context_tar};
pub use deploy::{
    Color, ColorPorts, DeployError, DeployReport, DeployRequest, DeployResult, DeploySpec, Deployer, TrafficConfig,
    TrafficSwitch, Upstream, traffic_switch,
};
pub use docker::{
    BollardEngine, BuildOptions, BuildOutcome, ContainerFilter, ContainerInfo, ContainerSpec, ContainerSummary,
    DockerEngine, EngineError, EngineVersion, HealthStatus, ImageInfo, ImageSummary, LoadOutcome, PortPublish,
    Protocol, PublishedPort, RestartPolicy,
};
pub use git::{GitError, GitFacts, inspect_repo};
