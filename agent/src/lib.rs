//! `s3dock-agent`: keeps this host's containers on the image each served environment's pointer
//! names. `main` only parses the command line, starts logging and calls [`launch`]; every
//! decision lives here, where tests can call it with their own store, queue, engine, clock and
//! shutdown token ([`runtime::run`]).
//!
//! - [`config`]: the TOML file, validated into [`config::AgentConfig`] (one-line errors).
//! - [`queue`]: the [`queue::MessageQueue`] trait, the queue's name and its creation with a
//!   dead-letter queue, and the poison-message back-off.
//! - [`service`]: one served (app, env): the reconcile step (pointer -> pull -> converge), the
//!   memory of failed deploys, and the registration it reports under `agents/`.
//! - [`runtime`]: the loops (a worker per service, the queue receiver, the heartbeat) and
//!   the orderly shutdown; the module doc says when a message is deleted.
//! - [`check`]: `s3dock-agent --check`, every problem of a setup in one run.
//! - [`fault`]: the test-only fault injection (`S3DOCK_AGENT_CRASH_AT`, read only by a build with
//!   the `fault-injection` feature).
//! - [`launch`]: connecting the real world (S3 or a directory, SQS, Docker) with retries.
//!
//! `docs/agent.md` is the user's guide: install, the configuration reference, the loop, the
//! deploy sequence and its guarantees, troubleshooting.

/// The agent's configuration file: read by the engine's [`s3dock_engine::agent_config`], which
/// `s3dock deploy` shares.
pub mod config {
    pub use s3dock_engine::agent_config::*;
}
pub mod check;
pub mod fault;
pub mod queue;
pub mod runtime;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use s3dock_aws::sqs::SqsClient;
use s3dock_core::clock::SystemClock;
use s3dock_core::store::ObjectStore;
use s3dock_engine::{BollardEngine, DockerEngine};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::queue::MessageQueue;
pub use crate::runtime::{Deps, RunError, RunOptions, RunSummary, run};

/// The longest pause between two tries of connecting to Docker or SQS at start-up.
const MAX_CONNECT_PAUSE: Duration = Duration::from_secs(30);

/// Connects to the store, the Docker engine and the queue the configuration names, then
/// [`run`]s. Docker and SQS being unreachable at start-up (the host is booting, the engine
/// restarts) is waited out with a growing pause, until `shutdown`; refused credentials or a
/// missing queue given by URL end the start with an error instead.
pub async fn launch(
    config: AgentConfig,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunSummary, RunError> {
    let store: Arc<dyn ObjectStore> =
        config.store.open().await.map_err(|e| RunError::Setup(format!("store {}: {e}", config.store.url())))?;
    let Some(engine) = retrying("the Docker engine", &shutdown, || async {
        BollardEngine::connect().await.map_err(|e| (e.is_retryable(), e.to_string()))
    })
    .await?
    else {
        return Ok(RunSummary::default());
    };
    let engine: Arc<dyn DockerEngine> = Arc::new(engine);
    let queue: Option<Arc<dyn MessageQueue>> = match config.queue.mode {
        config::QueueMode::None => None,
        _ => {
            let client = SqsClient::connect(&config.aws.sqs()).await.map_err(|e| RunError::Setup(e.to_string()))?;
            let opened = retrying("the agent's queue", &shutdown, || async {
                queue::open(&client, &config.agent_id, &config.queue)
                    .await
                    .map_err(|e| (e.is_retryable(), e.to_string()))
            })
            .await?;
            match opened {
                None => return Ok(RunSummary::default()),
                Some(q) => q.map(|q| Arc::new(q) as Arc<dyn MessageQueue>),
            }
        }
    };
    let deps = Deps::new(store, engine, Arc::new(SystemClock), queue);
    run(config, deps, opts, shutdown).await
}

/// Tries `f` until it succeeds, fails for good, or `shutdown` fires (`Ok(None)`).
async fn retrying<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut f: F) -> Result<Option<T>, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, (bool, String)>>,
{
    let mut pause = Duration::from_secs(1);
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err((false, message)) => return Err(RunError::Setup(format!("{what}: {message}"))),
            Err((true, message)) => {
                tracing::warn!(retry_in = ?pause, "{what} is not available yet: {message}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_CONNECT_PAUSE);
            }
        }
    }
}
