//! The audit record of a deploy (`deploy`, or `rollback` for a switch back).

use s3dock_core::docs::{AuditRecord, DeployDetails, EventType, SCHEMA_VERSION};
use s3dock_core::layout;
use s3dock_core::names::ObjectKey;

use super::model::{DeployReport, DeployResult};
use super::run::Run;

impl Run<'_> {
    /// `audit/{app}/{YYYYMM}/{start}-{deploy|rollback}-{hash7}-{env}-{host}-{deploy-id}[-recovered].json`.
    /// The deploy id is a random UUID, so no two deploys share a key; the same deploy's record
    /// written twice (a retry) is the same key, which the conditional create keeps once.
    pub async fn write_audit(&self, report: &DeployReport, recovered: bool) -> Option<Result<ObjectKey, String>> {
        let sink = self.d.audit.as_ref()?;
        let deploy_id = report.deploy_id.as_deref()?;
        let started = self.state.started_at.unwrap_or_else(|| self.now());
        let event = if report.result == DeployResult::RolledBack { EventType::Rollback } else { EventType::Deploy };
        let mut discriminators = vec![self.spec.env.as_str(), self.d.host.as_str(), deploy_id];
        if recovered {
            discriminators.push("recovered");
        }
        let tag = &report.image.tag;
        let key = layout::audit(&self.spec.app, started, event.as_str(), tag.hash7(), &discriminators);
        let details = DeployDetails {
            environment: self.spec.env.to_string(),
            image_reference: report.image.to_string(),
            host: self.d.host.clone(),
            result: report.result.as_str().to_owned(),
            color: report.color.map(|c| c.to_string()),
            previous_image: report.previous_image.clone(),
            message: report.message.clone(),
            timings_ms: report.timings_ms(),
            pointer_seq: self.state.pointer_seq,
            agent_id: sink.agent_id.clone(),
        };
        let record = AuditRecord {
            schema_version: Some(SCHEMA_VERSION),
            event_type: event.as_str().to_owned(),
            timestamp: self.now(),
            user: sink.registry.actor().to_owned(),
            app_name: self.spec.app.to_string(),
            git_hash: tag.hash7().to_owned(),
            git_time: tag.time_str(),
            details: serde_json::to_value(&details).expect("DeployDetails always serializes"),
            principal: None,
            recorded_by: Some(sink.recorded_by.clone()),
            // A write whose answer was lost is then still known as this deploy's own.
            write_id: Some(s3dock_core::clock::new_write_id(&**sink.registry.clock())),
        };
        Some(match sink.registry.audit(&key, &record).await {
            Ok(_) => Ok(key),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "could not write the deploy's audit record");
                Err(e.to_string())
            }
        })
    }
}
