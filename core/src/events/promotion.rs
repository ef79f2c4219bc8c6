//! `pointers/**.json` created: audit the promotion or rollback, then notify every fresh agent
//! registered for the app and environment.

use super::*;

impl Handlers {
    /// `pointers/**.json` created: audit `promotion` (or `rollback`) with the previous target,
    /// then, if that version is still the current pointer, send one message to every fresh
    /// agent registered for the app and environment.
    pub async fn fan_out_promotion(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ObjectKey,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let doc = match self.read_event_doc(key, ev).await? {
            Read::Doc(d) => d,
            Read::Gone(reason) => return Ok(Outcome::Superseded { reason, audit_key: None }),
        };
        let pointer: PointerDoc = match docs::decode(key.as_str(), &doc.bytes) {
            Ok(d) => d,
            Err(e @ DocError::UnsupportedVersion { .. }) => return Err(newer_schema(&e)),
            Err(e) => return self.audit_bad_pointer(app, env, key, e.to_string(), ev, &doc).await,
        };
        let image = match bucket::resolve_doc(&*self.store, app, &pointer).await {
            Ok(i) => i,
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => return self.audit_bad_pointer(app, env, key, e.to_string(), ev, &doc).await,
        };
        // A pointer to an image that is not in the bucket would send agents after nothing.
        if bucket::find_metadata(&*self.store, &image).await?.is_none() {
            let reason = format!("{key} points to {image}, which is not in the bucket");
            return self.audit_bad_pointer(app, env, key, reason, ev, &doc).await;
        }
        let event =
            if pointer.action == Some(PointerAction::Rollback) { EventType::Rollback } else { EventType::Promotion };
        let seq = pointer.seq();
        let audit_key = layout::audit(
            app,
            pointer.promoted_at,
            event.as_str(),
            image.tag.hash7(),
            &[env.as_str(), &format!("seq{seq}")],
        );
        // Handled before (the record exists): nothing to write, nothing to send.
        if self.store.head(&audit_key).await?.is_some() {
            return Ok(Outcome::Duplicate { audit_key });
        }
        // Only the current pointer is announced: a late event for an old promotion sends
        // nothing stale.
        let targets = if doc.current && self.notifier.is_some() { self.agent_queues(app, env).await? } else { vec![] };
        // Send first, record after: a run killed between the two is redelivered and sends again
        // (agents act once per pointer seq, so a repeated message changes nothing), while
        // recording first would leave the agents of a killed run unnotified until their next
        // reconcile.
        let notified = self.notify(app, env, &image, &pointer, &targets).await;
        let mut rec =
            self.record(event, app, pointer.promoted_at, &pointer.promoted_by, (&pointer.git_hash, &pointer.git_time));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(PromotionDetails {
            environment: env.to_string(),
            source: pointer.describe_target(),
            source_type: pointer.target_type.to_string(),
            pointer_path: key.to_string(),
            previous_target: pointer.previous.as_ref().map(|p| match p.target_type {
                docs::TargetType::Tag => p.source_tag.clone().unwrap_or_else(|| p.target_path.clone()),
                docs::TargetType::Image => p.source_image.clone().unwrap_or_else(|| p.target_path.clone()),
            }),
            seq: Some(seq),
            image_reference: Some(image.to_string()),
            notified: notified.clone(),
        })
        .unwrap_or_default();
        // Another delivery may have recorded it meanwhile: then this one is the duplicate.
        if !bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await? {
            return Ok(Outcome::Duplicate { audit_key });
        }
        if doc.current {
            Ok(Outcome::Recorded { audit_key, notified })
        } else {
            Ok(Outcome::Superseded {
                reason: format!("{key} moved on since; recorded, nobody notified"),
                audit_key: Some(audit_key),
            })
        }
    }

    /// Sends the promotion message to each target queue, [`FANOUT_CONCURRENCY`] at a time,
    /// retrying transient errors a few times; returns the agents reached, sorted. An agent not
    /// reached converges at its next reconcile.
    async fn notify(
        &self,
        app: &AppName,
        env: &EnvName,
        image: &ImageRef,
        pointer: &PointerDoc,
        targets: &[(String, String)],
    ) -> Vec<String> {
        let Some(notifier) = &self.notifier else { return vec![] };
        let msg = PromotionMessage {
            schema_version: SCHEMA_VERSION,
            kind: "promotion".into(),
            app: app.clone(),
            env: env.clone(),
            image: image.to_string(),
            pointer_seq: pointer.seq(),
            time: pointer.promoted_at,
        };
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_string(&msg).expect("promotion messages serialize");
        // One message per agent queue (SQS batches only within one queue), FANOUT_CONCURRENCY
        // at a time: 1,000 agents take a few seconds rather than minutes (docs/benchmarks.md).
        let mut notified: Vec<String> = futures::stream::iter(targets.iter().cloned())
            .map(|(id, url)| {
                let (notifier, body, clock) = (notifier.clone(), body.clone(), self.clock.clone());
                async move { notify_agent(&*notifier, &*clock, &id, &url, &body).await }
            })
            .buffer_unordered(FANOUT_CONCURRENCY)
            .filter_map(|sent| async move { sent })
            .collect()
            .await;
        notified.sort();
        notified
    }

    async fn audit_bad_pointer(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ObjectKey,
        reason: String,
        ev: &ObjectEvent,
        doc: &EventDoc,
    ) -> Result<Outcome, EventError> {
        // A pointer is live state: it is not moved away, only reported. Nothing is sent.
        let at = doc.info.last_modified.or(ev.event_time).unwrap_or_else(|| self.clock.now());
        let mut rec = self.record(EventType::Reject, app, at, &self.actor, ("", ""));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(ArchiveDetails {
            path: key.to_string(),
            reason: reason.clone(),
            ..Default::default()
        })
        .unwrap_or_default();
        // The document's digest names this write: redeliveries share it, other writes do not.
        let doc_id = hex::encode(&<md5::Md5 as sha2::Digest>::digest(&doc.bytes)[..4]);
        let audit_key = layout::audit(app, at, EventType::Reject.as_str(), "unknown", &[env.as_str(), &doc_id]);
        bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await?;
        tracing::error!(pointer = %key, reason = %reason, "bad pointer: audited, no agent notified");
        Ok(Outcome::Rejected { reason, archived_to: vec![], audit_key: Some(audit_key), deleted: false })
    }

    /// Fresh registrations with an acceptable queue: `(agent id, queue url)`.
    async fn agent_queues(&self, app: &AppName, env: &EnvName) -> Result<Vec<(String, String)>, StoreError> {
        let now = self.clock.now();
        let objects = list_all(&*self.store, &layout::agents_prefix(app, Some(env))).await?;
        let regs = futures::stream::iter(objects)
            .map(|o| async move { (read_small(&*self.store, &o.key, docs::MAX_DOC_BYTES).await, o.key) })
            .buffer_unordered(FANOUT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::new();
        let mut prepared = false;
        for (res, key) in regs {
            let Some((bytes, _)) = res? else { continue };
            let reg: AgentRegistration = match docs::decode(key.as_str(), &bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(registration = %key, error = %e, "skipping an unreadable agent registration");
                    continue;
                }
            };
            if &reg.app_name != app || &reg.environment != env {
                tracing::warn!(registration = %key, "skipping a registration filed under another app or environment");
                continue;
            }
            if now - reg.last_heartbeat > self.agent_ttl {
                tracing::info!(agent = %reg.agent_id, last = %reg.last_heartbeat, "skipping a stale agent");
                continue;
            }
            let Some(url) = reg.queue_url else { continue };
            if let Some(n) = &self.notifier
                && !prepared
            {
                if let Err(e) = n.prepare().await {
                    tracing::warn!(error = %e, "cannot notify the agents of this promotion; they converge at their next reconcile");
                    return Ok(vec![]);
                }
                prepared = true;
            }
            if let Some(n) = &self.notifier
                && let Err(why) = n.check_queue(&url)
            {
                tracing::warn!(agent = %reg.agent_id, queue = %url, reason = %why, "skipping an agent queue");
                continue;
            }
            out.push((reg.agent_id.to_string(), url));
        }
        out.sort();
        Ok(out)
    }
}

/// Requests the promotion fan-out keeps in flight at once: registration reads, then messages.
/// Each agent has its own queue and SQS batches only within one queue, so a fleet costs one
/// SendMessage per agent; bounded concurrency keeps 1,000 agents within seconds without
/// opening a connection per agent.
pub const FANOUT_CONCURRENCY: usize = 32;

/// Sends one agent its message; `Some(agent id)` once sent. Transient SQS errors are retried
/// here, bounded, because the promotion is recorded right after: a retry of the whole event
/// would find the record and send nothing.
async fn notify_agent(notifier: &dyn Notifier, clock: &dyn Clock, id: &str, url: &str, body: &str) -> Option<String> {
    let mut attempt = 0;
    loop {
        match notifier.send(url, body).await {
            Ok(()) => return Some(id.to_owned()),
            Err(e) if e.retryable && attempt < 3 => {
                attempt += 1;
                Backoff::TRANSIENT.wait(clock, attempt).await;
            }
            Err(e) => {
                tracing::error!(agent = %id, queue = %url, error = %e, "could not notify an agent; it converges at its next reconcile");
                return None;
            }
        }
    }
}
