//! The documents of the agents' side: an agent's registration and the state it reports, and
//! the promotion message the fan-out sends it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{AgentStatus, DeployResult, Document, Health, check_len, truncate};
use crate::names::{AgentId, AppName, EnvName, ImageRef};

/// What an agent last did, as it reports it in its registration.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOutcome {
    /// `succeeded`, `failed` or `rolled-back`.
    pub result: DeployResult,
    pub image: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// What an agent runs for its (app, env).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// `app:tag` serving traffic, if any.
    #[serde(default)]
    pub image: Option<String>,
    /// Docker's id of the image serving (`sha256:...`): what `s3dock status` compares with the
    /// `image_id` of the metadata the pointer resolves to, so a tag re-pushed with new content
    /// is not taken for what runs. Absent in registrations of older agents.
    #[serde(default)]
    pub image_id: Option<String>,
    /// `blue` or `green`.
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// `healthy`, `unhealthy`, `unknown`.
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub last_deploy: Option<DeployOutcome>,
    /// The pointer seq the agent last converged on.
    #[serde(default)]
    pub pointer_seq: Option<u64>,
    /// The image the pointer resolved to at the agent's last reconcile (what it converges on).
    #[serde(default)]
    pub desired: Option<String>,
    /// Where the agent stands: `starting`, `converged`, `deploying`, `failed` (the last deploy
    /// of `desired` did not succeed), `no-pointer`, `error` (the last reconcile could not run).
    #[serde(default)]
    pub status: Option<AgentStatus>,
    /// Why the last reconcile could not run (`status = "error"`), or why nothing is deployed.
    #[serde(default)]
    pub message: Option<String>,
}

/// `agents/{app}/{env}/{agent-id}.json`: an agent's registration, heartbeat and state. The
/// promotion fan-out sends one message to `queue_url` of every registration that is fresh.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    #[serde(default)]
    pub schema_version: Option<u32>,
    pub agent_id: AgentId,
    pub app_name: AppName,
    pub environment: EnvName,
    /// The agent's own SQS queue; absent when the agent only reconciles.
    #[serde(default)]
    pub queue_url: Option<String>,
    pub host: String,
    pub last_heartbeat: DateTime<Utc>,
    #[serde(default)]
    pub state: Option<AgentState>,
    #[serde(default)]
    pub version: Option<String>,
}

impl Document for AgentRegistration {
    fn validate(&self) -> Result<(), String> {
        check_len("host", &self.host, 255)?;
        if let Some(q) = &self.queue_url {
            check_len("queue_url", q, 1024)?;
        }
        Ok(())
    }
}

/// The SQS message an agent receives when its environment's pointer changes. A hint only:
/// the agent re-reads the pointer before acting on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionMessage {
    pub schema_version: u32,
    /// Always `promotion`.
    pub kind: String,
    pub app: AppName,
    pub env: EnvName,
    /// The resolved image, `app:YYYYMMDD-HHMM-hash7`.
    pub image: String,
    pub pointer_seq: u64,
    pub time: DateTime<Utc>,
}

impl Document for PromotionMessage {
    fn validate(&self) -> Result<(), String> {
        if self.kind != "promotion" {
            return Err(format!("kind must be \"promotion\", found {:?}", truncate(&self.kind)));
        }
        ImageRef::parse(&self.image).map_err(|e| e.to_string())?;
        if self.schema_version == 0 {
            return Err("schema_version is required".into());
        }
        Ok(())
    }
}
