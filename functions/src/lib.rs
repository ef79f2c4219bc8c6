//! s3dock's Lambda functions: thin shells over `s3dock_core::events::Handlers`.
//!
//! Three binaries, one per handler, each acting only on the keys it owns:
//!
//! | binary | keys | core handler |
//! |---|---|---|
//! | `verify-upload` | `images/**.json` | [`Handlers::verify_upload`] |
//! | `record-tag` | `tags/**.json` | [`Handlers::record_tag`] |
//! | `promotion-fanout` | `pointers/**.json` | [`Handlers::fan_out_promotion`] |
//!
//! Each `main` builds its clients once ([`Function::from_env`]) and hands
//! [`Function::invoke`] to the Lambda runtime. Everything else lives here, callable by tests:
//!
//! - [`event`]: payloads parsed leniently (S3 direct, SNS, SQS with S3 / SNS-wrapped /
//!   `s3:TestEvent` bodies).
//! - [`settings`]: the environment, validated once.
//! - [`backend`]: the stores and the notifier, injected ([`AwsBackend`] in production).
//!
//! Retry semantics, the reason this crate exists: events are delivered at least once, and
//! the core handlers are idempotent, so the only question per record is "would trying again
//! help?". A retryable error (throttling, 5xx, network) fails the SQS message (reported in
//! `batchItemFailures`, redelivered after its visibility timeout, to the DLQ after the
//! queue's maxReceiveCount) or, for a direct S3/SNS invocation, the whole invocation (Lambda's
//! async retries). Everything else is acknowledged: bad uploads are already archived and
//! audited by the handlers, and a malformed body or a key s3dock does not own would never
//! succeed, so redelivering it would only fill the DLQ.
//!
//! [`Handlers::verify_upload`]: s3dock_core::events::Handlers::verify_upload
//! [`Handlers::record_tag`]: s3dock_core::events::Handlers::record_tag
//! [`Handlers::fan_out_promotion`]: s3dock_core::events::Handlers::fan_out_promotion

pub mod backend;
pub mod event;
pub mod settings;

use std::sync::Arc;

use aws_lambda_events::sqs::SqsBatchResponse;
use lambda_runtime::{Diagnostic, LambdaEvent};
use s3dock_core::clock::{Clock, SystemClock};
use s3dock_core::events::{EventError, Handlers, ObjectEvent, Origin, Outcome, Verification};
use s3dock_core::layout::{self, BucketKey};
use s3dock_core::names::ObjectKey;
use serde_json::{Value, json};

pub use backend::{AwsBackend, Backend};
use event::{DirectItem, Notification, Payload, S3Record};
pub use settings::{ConfigError, Settings};

/// Which function this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `images/**.json` created: verify the archive, audit `push` or archive and `reject`.
    VerifyUpload,
    /// `tags/**.json` created: check the target exists, audit `tag`.
    RecordTag,
    /// `pointers/**.json` created: audit `promotion`/`rollback`, notify the agents.
    PromotionFanout,
}

impl Kind {
    /// The binary's name (and the default function name).
    pub fn name(self) -> &'static str {
        match self {
            Kind::VerifyUpload => "verify-upload",
            Kind::RecordTag => "record-tag",
            Kind::PromotionFanout => "promotion-fanout",
        }
    }

    /// Whether keys of this kind are this function's to handle.
    pub fn owns(self, key: &BucketKey) -> bool {
        matches!(
            (self, key),
            (Kind::VerifyUpload, BucketKey::ImageMetadata { .. })
                | (Kind::RecordTag, BucketKey::Tag { .. })
                | (Kind::PromotionFanout, BucketKey::Pointer { .. })
        )
    }
}

/// What the runtime tells a function about one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    pub request_id: String,
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`; its account is the one agent queues
    /// must belong to unless `S3DOCK_ACCOUNT_ID` says otherwise.
    pub function_arn: Option<String>,
}

/// Why an invocation as a whole failed. Lambda retries a failed asynchronous invocation (S3,
/// SNS) and retries a whole SQS batch, so only what a retry may fix fails it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvocationError {
    #[error(
        "{failed} of {total} records failed with retryable errors (first: {first}); failing the invocation so it is retried"
    )]
    Retryable { failed: usize, total: usize, first: String },
    #[error("the payload is not an S3, SNS or SQS event ({detail}); nothing was done")]
    Unrecognized { detail: String },
}

impl From<InvocationError> for Diagnostic {
    fn from(e: InvocationError) -> Diagnostic {
        let error_type = match e {
            InvocationError::Retryable { .. } => "S3dock.RetryableError",
            InvocationError::Unrecognized { .. } => "S3dock.UnrecognizedPayload",
        };
        Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
    }
}

/// What happened to one S3 record (or to an SQS message that held none).
#[derive(Debug)]
pub enum RecordResult {
    /// The core handler ran.
    Handled(Outcome),
    /// Not this function's to handle (another kind of key, outside the prefix, another
    /// bucket, a test event, not a creation). Acknowledged.
    Skipped(String),
    /// Unusable input (a malformed body, a key that does not decode). Acknowledged: it would
    /// never succeed.
    Unusable(String),
    /// The handler failed; `retryable` decides whether the record is retried.
    Failed(EventError),
}

impl RecordResult {
    fn label(&self) -> &'static str {
        match self {
            RecordResult::Handled(Outcome::Recorded { .. }) => "recorded",
            RecordResult::Handled(Outcome::Duplicate { .. }) => "duplicate",
            RecordResult::Handled(Outcome::Ignored { .. }) => "ignored",
            RecordResult::Handled(Outcome::Rejected { .. }) => "rejected",
            RecordResult::Handled(Outcome::Superseded { .. }) => "superseded",
            RecordResult::Skipped(_) => "skipped",
            RecordResult::Unusable(_) => "unusable",
            RecordResult::Failed(_) => "failed",
        }
    }

    fn detail(&self) -> Value {
        match self {
            RecordResult::Handled(Outcome::Recorded { audit_key, notified }) => {
                json!({"auditKey": audit_key.as_str(), "notified": notified})
            }
            RecordResult::Handled(Outcome::Duplicate { audit_key }) => json!({"auditKey": audit_key.as_str()}),
            RecordResult::Handled(Outcome::Ignored { reason }) => json!({"reason": reason}),
            RecordResult::Handled(Outcome::Rejected { reason, archived_to, audit_key, deleted }) => json!({
                "reason": reason,
                "archivedTo": archived_to.iter().map(ObjectKey::as_str).collect::<Vec<_>>(),
                "auditKey": audit_key.as_ref().map(ObjectKey::as_str),
                "deleted": deleted,
            }),
            RecordResult::Handled(Outcome::Superseded { reason, audit_key }) => json!({
                "reason": reason,
                "auditKey": audit_key.as_ref().map(ObjectKey::as_str),
            }),
            RecordResult::Skipped(why) | RecordResult::Unusable(why) => json!({"reason": why}),
            RecordResult::Failed(e) => json!({"error": e.to_string(), "retryable": e.is_retryable()}),
        }
    }

    /// Whether the record must be delivered again.
    pub fn needs_retry(&self) -> bool {
        matches!(self, RecordResult::Failed(e) if e.is_retryable())
    }
}

/// One record's report.
#[derive(Debug)]
pub struct RecordReport {
    /// The SQS message it came in, if any.
    pub message_id: Option<String>,
    pub bucket: Option<String>,
    /// The decoded key if it decoded, else the raw key (empty for bodies without records).
    pub key: String,
    pub result: RecordResult,
}

/// What an invocation did.
#[derive(Debug)]
pub struct Report {
    /// Whether the payload was an SQS batch (the response is then a partial batch response).
    pub sqs: bool,
    pub records: Vec<RecordReport>,
    /// SQS message ids to redeliver, in batch order, each once.
    pub failed_messages: Vec<String>,
}

impl Report {
    /// The invocation's answer: for SQS `{"batchItemFailures":[{"itemIdentifier":ID}...]}`,
    /// for a direct invocation a summary of the records, or an error if one needs a retry.
    pub fn response(&self) -> Result<Value, InvocationError> {
        if self.sqs {
            let mut resp = SqsBatchResponse::default();
            for id in &self.failed_messages {
                resp.add_failure(id.clone());
            }
            // A struct of strings serializes infallibly.
            return Ok(serde_json::to_value(resp).expect("a batch response serializes"));
        }
        let retry: Vec<&RecordReport> = self.records.iter().filter(|r| r.result.needs_retry()).collect();
        if let Some(first) = retry.first() {
            let RecordResult::Failed(e) = &first.result else { unreachable!("needs_retry implies Failed") };
            return Err(InvocationError::Retryable {
                failed: retry.len(),
                total: self.records.len(),
                first: format!("{}: {e}", first.key),
            });
        }
        let records: Vec<Value> = self
            .records
            .iter()
            .map(|r| json!({"key": r.key, "result": r.result.label(), "detail": r.result.detail()}))
            .collect();
        Ok(json!({ "records": records }))
    }
}

/// One function: its kind, settings, outside world and clock.
#[derive(Debug, Clone)]
pub struct Function {
    kind: Kind,
    settings: Settings,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
}

impl Function {
    pub fn new(kind: Kind, settings: Settings, backend: Arc<dyn Backend>, clock: Arc<dyn Clock>) -> Function {
        Function { kind, settings, backend, clock }
    }

    /// The production set-up: settings from the environment, AWS clients built once.
    pub async fn from_env(kind: Kind) -> Result<Function, ConfigError> {
        let settings = Settings::from_env(kind.name())?;
        let backend = AwsBackend::connect(&settings, kind == Kind::PromotionFanout).await?;
        tracing::info!(function = kind.name(), settings = ?settings, "configured");
        Ok(Function::new(kind, settings, Arc::new(backend), Arc::new(SystemClock)))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The Lambda runtime's entry point.
    pub async fn invoke(&self, event: LambdaEvent<Value>) -> Result<Value, InvocationError> {
        let arn = Some(event.context.invoked_function_arn.clone()).filter(|a| !a.is_empty());
        let inv = Invocation { request_id: event.context.request_id.clone(), function_arn: arn };
        self.handle(&event.payload, &inv).await
    }

    /// Handles a payload and builds the answer ([`Report::response`]).
    pub async fn handle(&self, payload: &Value, inv: &Invocation) -> Result<Value, InvocationError> {
        let report = self.process(payload, inv).await?;
        let response = report.response();
        match &response {
            Ok(_) if report.sqs => tracing::info!(
                request = %inv.request_id,
                records = report.records.len(),
                retry = ?report.failed_messages,
                "batch handled"
            ),
            Ok(_) => tracing::info!(request = %inv.request_id, records = report.records.len(), "invocation handled"),
            Err(e) => tracing::warn!(request = %inv.request_id, error = %e, "invocation failed"),
        }
        response
    }

    /// Handles every record of a payload; the [`Report`] says what happened to each.
    pub async fn process(&self, payload: &Value, inv: &Invocation) -> Result<Report, InvocationError> {
        let parsed = event::parse_payload(payload).map_err(|detail| InvocationError::Unrecognized { detail })?;
        let mut report = Report { sqs: false, records: Vec::new(), failed_messages: Vec::new() };
        match parsed {
            Payload::Sqs(items) => {
                report.sqs = true;
                for item in items {
                    let id = item.message_id.clone();
                    let results = match item.body {
                        Ok(Notification::Records(records)) => {
                            let mut out = Vec::with_capacity(records.len());
                            for r in &records {
                                out.push(self.handle_record(r, inv).await);
                            }
                            out
                        }
                        Ok(Notification::TestEvent { bucket }) => vec![test_event(bucket)],
                        Err(why) => {
                            vec![unusable(format!("the message body is not an S3 notification: {why}"))]
                        }
                    };
                    let retry = results.iter().any(|r| r.result.needs_retry());
                    for mut r in results {
                        r.message_id = id.clone();
                        log_record(self.kind, &r);
                        report.records.push(r);
                    }
                    match (&id, retry) {
                        (Some(id), true) if !report.failed_messages.contains(id) => {
                            report.failed_messages.push(id.clone())
                        }
                        (None, true) => {
                            // Without a message id no single item can be failed: fail the batch.
                            return Err(InvocationError::Retryable {
                                failed: 1,
                                total: report.records.len(),
                                first: "an SQS message without messageId".into(),
                            });
                        }
                        _ => {}
                    }
                }
            }
            Payload::Direct(items) => {
                for item in items {
                    let r = match item {
                        DirectItem::S3(rec) => self.handle_record(&rec, inv).await,
                        DirectItem::TestEvent { bucket } => test_event(bucket),
                        DirectItem::Unusable(why) => unusable(why),
                    };
                    log_record(self.kind, &r);
                    report.records.push(r);
                }
            }
        }
        Ok(report)
    }

    /// One S3 record: filter, decode, route, handle.
    async fn handle_record(&self, rec: &S3Record, inv: &Invocation) -> RecordReport {
        // The raw key until it decodes, so a report always says which record it is about.
        let mut key = rec.raw_key.clone();
        let result = self.route(rec, inv, &mut key).await;
        let bucket = rec.bucket.clone().or_else(|| self.settings.bucket.clone());
        RecordReport { message_id: None, bucket, key, result }
    }

    async fn route(&self, rec: &S3Record, inv: &Invocation, shown_key: &mut String) -> RecordResult {
        if !rec.event_name.is_empty() && !rec.event_name.starts_with("ObjectCreated") {
            return RecordResult::Skipped(format!("{} events are not handled", rec.event_name));
        }
        let bucket = match (&self.settings.bucket, &rec.bucket) {
            (Some(mine), Some(theirs)) if mine != theirs => {
                return RecordResult::Skipped(format!("the event is for bucket {theirs}; this function serves {mine}"));
            }
            (Some(b), _) | (None, Some(b)) => b.clone(),
            (None, None) => {
                return RecordResult::Unusable("the event names no bucket and S3DOCK_BUCKET is not set".into());
            }
        };
        let full = match layout::decode_event_key(&rec.raw_key) {
            Ok(k) => k,
            Err(e) => return RecordResult::Unusable(format!("{:?} does not decode to a valid key: {e}", rec.raw_key)),
        };
        *shown_key = full.to_string();
        let Some(rest) = full.as_str().strip_prefix(self.settings.prefix.as_str()) else {
            return RecordResult::Skipped(format!("{full} is outside the prefix {:?}", self.settings.prefix));
        };
        let key = match ObjectKey::parse(rest) {
            Ok(k) => k,
            Err(e) => return RecordResult::Skipped(format!("{full} is not an s3dock key: {e}")),
        };
        let kind = match layout::classify(&key) {
            Ok(k) if self.kind.owns(&k) => k,
            Ok(other) => {
                return RecordResult::Skipped(format!("{key} ({other:?}) is not for {}", self.kind.name()));
            }
            Err(e) => return RecordResult::Skipped(e.to_string()),
        };
        let ev = ObjectEvent {
            key: Some(key.clone()),
            raw_key: rec.raw_key.clone(),
            event_name: rec.event_name.clone(),
            etag: rec.etag.clone(),
            version_id: rec.version_id.clone(),
            size: rec.size,
            principal: rec.principal.clone(),
            event_time: rec.event_time,
            written: None,
        };
        let handlers = match self.handlers(&bucket, inv).await {
            Ok(h) => h,
            Err(e) => return RecordResult::Failed(e),
        };
        let result = match &kind {
            BucketKey::ImageMetadata { app, .. } => {
                handlers.verify_upload(app, &key, &ev, Verification::Download).await
            }
            BucketKey::Tag { app, version } => handlers.record_tag(app, version, &key, &ev).await,
            BucketKey::Pointer { app, env } => handlers.fan_out_promotion(app, env, &key, &ev).await,
            // `owns` admitted only the three kinds above.
            other => return RecordResult::Skipped(format!("{key} ({other:?}) is not for {}", self.kind.name())),
        };
        match result {
            Ok(outcome) => RecordResult::Handled(outcome),
            Err(e) => RecordResult::Failed(e),
        }
    }

    /// The core handlers for `bucket`, with the notifier for the fan-out.
    async fn handlers(&self, bucket: &str, inv: &Invocation) -> Result<Handlers, EventError> {
        let store = self.backend.store(bucket).await?;
        let mut h = Handlers::new(store, self.clock.clone(), Origin::Lambda, self.settings.function_name.clone());
        h.agent_ttl = self.settings.agent_ttl;
        if self.kind == Kind::PromotionFanout {
            let arn_account = inv.function_arn.as_deref().and_then(settings::account_of_arn);
            let Some(account) = self.settings.account_id.as_deref().or(arn_account) else {
                // Retryable on purpose: without it no queue can be checked, and handling the
                // pointer now would take the fan-out's claim and notify nobody. Retried, the
                // event reaches the DLQ, from where it can be redriven once this is fixed.
                return Err(EventError::transient(
                    "cannot tell which account agent queues must belong to: the invocation has no function ARN; set S3DOCK_ACCOUNT_ID",
                ));
            };
            h = h.with_notifier(self.backend.notifier(account).await?);
        }
        Ok(h)
    }
}

fn test_event(bucket: Option<String>) -> RecordReport {
    RecordReport {
        message_id: None,
        bucket,
        key: String::new(),
        result: RecordResult::Skipped("s3:TestEvent (sent when a notification is configured)".into()),
    }
}

/// A record (or body) that could not be read: no bucket or key to name.
fn unusable(why: String) -> RecordReport {
    RecordReport { message_id: None, bucket: None, key: String::new(), result: RecordResult::Unusable(why) }
}

fn log_record(kind: Kind, r: &RecordReport) {
    let (function, key, bucket, message) =
        (kind.name(), r.key.as_str(), r.bucket.as_deref().unwrap_or(""), r.message_id.as_deref().unwrap_or(""));
    match &r.result {
        RecordResult::Handled(Outcome::Rejected { reason, .. }) => {
            tracing::warn!(function, bucket, key, message, reason = %reason, "upload rejected, archived and audited")
        }
        RecordResult::Handled(o) => tracing::info!(function, bucket, key, message, outcome = ?o, "handled"),
        RecordResult::Skipped(why) => tracing::info!(function, bucket, key, message, reason = %why, "skipped"),
        RecordResult::Unusable(why) => {
            tracing::warn!(function, bucket, key, message, reason = %why, "unusable record acknowledged")
        }
        RecordResult::Failed(e) if e.is_retryable() => {
            tracing::warn!(function, bucket, key, message, error = %e, "failed; will be retried")
        }
        RecordResult::Failed(e) => {
            tracing::error!(function, bucket, key, message, error = %e, "failed permanently; acknowledged")
        }
    }
}

/// Starts logging the way Lambda expects (`AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL`).
pub fn init_tracing() {
    lambda_runtime::tracing::init_default_subscriber();
}
