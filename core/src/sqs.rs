//! SQS: the promotion fan-out's [`Notifier`] and the queue operations the host agent and the
//! tests need, in s3dock's vocabulary (no SDK type appears in a signature).
//!
//! - [`SqsClient`]: one connection (region, optional custom endpoint such as LocalStack).
//! - [`QueueRules`]: which queue URLs messages may go to. A registration under `agents/` is
//!   written by whoever may write that prefix; the fan-out runs with the function's role, so
//!   a queue URL naming another account, another region or another host would turn the
//!   fan-out into a way to send messages where the writer could not. Only well-formed SQS
//!   URLs in the configured account and region pass, and URLs on the configured custom
//!   endpoint's host and port when there is one.
//! - [`SqsNotifier`]: [`Notifier`] over SendMessage, checking every URL against the rules;
//!   [`LazySqsNotifier`] builds one on first use (the account id from the configuration or
//!   from STS, [`caller_account`]).
//! - [`SqsQueue`]: receive (long poll), delete, change visibility, send, ARN, attributes;
//!   queues are created with a dead-letter redrive policy through [`SqsClient::create_queue`]
//!   (or [`SqsQueue::set_attributes`] on an existing queue).
//!
//! Every SDK failure goes through [`map_error`], which decides whether a retry can help:
//! throttling, 5xx and network trouble are retryable; access denied and a missing queue are
//! not.

use std::error::Error as StdError;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::config::Region;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use sha2::{Digest, Sha256};

use crate::events::{EventError, Notifier};
use crate::store::s3::has_credentials_error;

/// The region used when neither the configuration nor the AWS chain names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// SQS's longest long-poll wait.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's largest receive batch.
pub const MAX_RECEIVE: u32 = 10;
/// SQS's longest visibility timeout (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// What went wrong talking to SQS. Each message says what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue} does not exist; create it, or fix the queue URL in the agent's registration")]
    NotFound { queue: String },
    /// `CreateQueue` of a name that exists with other values for the attributes given.
    #[error(
        "queue {queue} already exists with other attributes; change them with SetQueueAttributes, or delete the queue"
    )]
    AlreadyExists { queue: String },
    #[error("SQS refused the request on {queue} ({detail}); check the credentials and the IAM / queue policy")]
    AccessDenied { queue: String, detail: String },
    #[error("cannot reach SQS at {endpoint} ({detail}); check the endpoint, your network, and that the service runs")]
    Unreachable { endpoint: String, detail: String },
    #[error("no AWS credentials found for SQS ({detail}); set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")]
    NoCredentials { detail: String },
    #[error("{message}")]
    Invalid { message: String },
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

impl QueueError {
    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Unreachable { .. } => true,
            QueueError::Other { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

impl From<QueueError> for EventError {
    fn from(e: QueueError) -> Self {
        EventError { retryable: e.is_retryable(), message: e.to_string() }
    }
}

/// How to reach SQS. Holds no secrets: credentials come from the AWS chain, and a custom
/// endpoint with embedded credentials is refused, so `Debug` is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// `None`: the AWS chain's region (`AWS_REGION`, the profile...), else [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// A custom endpoint (`http://127.0.0.1:4566`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// An AWS profile to take credentials and region from instead of the default chain.
    pub aws_profile: Option<String>,
    /// Attempts per request, the first included (the SDK's standard retry policy).
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Must exceed the longest long-poll wait ([`MAX_WAIT`]).
    pub read_timeout: Duration,
    /// One operation, retries included.
    pub operation_timeout: Duration,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            region: None,
            endpoint: None,
            aws_profile: None,
            max_attempts: 3,
            connect_timeout: Duration::from_secs(3),
            read_timeout: MAX_WAIT + Duration::from_secs(10),
            operation_timeout: Duration::from_secs(90),
        }
    }
}

/// A connection to SQS in one region.
#[derive(Clone)]
pub struct SqsClient {
    client: aws_sdk_sqs::Client,
    region: String,
    /// The custom endpoint, normalized (`http://host:port`), if any.
    custom_endpoint: Option<Endpoint>,
    /// Where requests go, for messages.
    shown_endpoint: String,
}

impl std::fmt::Debug for SqsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsClient").field("region", &self.region).field("endpoint", &self.shown_endpoint).finish()
    }
}

impl SqsClient {
    /// Builds a client from the configuration and the AWS chain. No request is sent.
    pub async fn connect(cfg: &SqsConfig) -> Result<SqsClient, QueueError> {
        let invalid = |message: String| QueueError::Invalid { message };
        let custom_endpoint = match &cfg.endpoint {
            Some(ep) => Some(Endpoint::parse(ep).map_err(|why| invalid(format!("invalid SQS endpoint: {why}")))?),
            None => None,
        };
        if let Some(r) = &cfg.region {
            check_region(r).map_err(|why| invalid(format!("invalid SQS region: {why}")))?;
        }
        if cfg.max_attempts == 0 {
            return Err(invalid("max_attempts must be at least 1 (the first attempt counts)".into()));
        }
        if cfg.read_timeout <= MAX_WAIT {
            return Err(invalid(format!(
                "the SQS read timeout ({:?}) must exceed the longest long poll ({MAX_WAIT:?})",
                cfg.read_timeout
            )));
        }
        let sdk = sdk_config(cfg).await;
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| DEFAULT_REGION.to_owned());
        check_region(&region)
            .map_err(|why| invalid(format!("invalid SQS region from the AWS configuration: {why}")))?;
        let mut builder = aws_sdk_sqs::config::Builder::from(&sdk).region(Region::new(region.clone()));
        if let Some(ep) = &custom_endpoint {
            builder = builder.endpoint_url(ep.to_string());
        }
        let shown_endpoint = custom_endpoint
            .as_ref()
            .map(|e| e.to_string())
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| format!("https://sqs.{region}.amazonaws.com"));
        Ok(SqsClient {
            client: aws_sdk_sqs::Client::from_conf(builder.build()),
            region,
            custom_endpoint,
            shown_endpoint,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The custom endpoint (`http://host:port`), if one is configured.
    pub fn custom_endpoint(&self) -> Option<String> {
        self.custom_endpoint.as_ref().map(|e| e.to_string())
    }

    /// The queue rules for this client's region and endpoint in `account_id`.
    pub fn rules(&self, account_id: &str) -> Result<QueueRules, String> {
        QueueRules::with_endpoint(account_id, &self.region, self.custom_endpoint.clone())
    }

    /// A queue by URL (no request is sent).
    pub fn queue(&self, url: &str) -> SqsQueue {
        SqsQueue { client: self.clone(), url: url.to_owned() }
    }

    /// A queue by name, in the client's account and region (GetQueueUrl).
    pub async fn queue_named(&self, name: &str) -> Result<SqsQueue, QueueError> {
        check_queue_name(name).map_err(|message| QueueError::Invalid { message })?;
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| map_error(&self.shown_endpoint, "looking up", name, e))?;
        let url = out.queue_url().ok_or_else(|| self.protocol("GetQueueUrl returned no URL", name))?;
        Ok(self.queue(url))
    }

    /// Creates a queue (or returns the existing one if its attributes match, as SQS does; an
    /// existing queue with other values for the attributes given is
    /// [`QueueError::AlreadyExists`]).
    pub async fn create_queue(&self, name: &str, settings: &QueueSettings) -> Result<SqsQueue, QueueError> {
        check_queue_name(name).map_err(|message| QueueError::Invalid { message })?;
        let mut req = self.client.create_queue().queue_name(name);
        for (attr, value) in settings.attributes()? {
            req = req.attributes(attr, value);
        }
        let out = req.send().await.map_err(|e| map_error(&self.shown_endpoint, "creating", name, e))?;
        let url = out.queue_url().ok_or_else(|| self.protocol("CreateQueue returned no URL", name))?;
        Ok(self.queue(url))
    }

    fn protocol(&self, what: &str, queue: &str) -> QueueError {
        QueueError::Other {
            message: format!("{queue}: {what}; check that {} is an SQS endpoint", self.shown_endpoint),
            retryable: false,
        }
    }
}

/// The AWS SDK configuration for `cfg`: retries, timeouts, profile and region.
async fn sdk_config(cfg: &SqsConfig) -> aws_config::SdkConfig {
    crate::aws::sdk_config(crate::aws::ClientSettings {
        max_attempts: cfg.max_attempts,
        connect_timeout: cfg.connect_timeout,
        read_timeout: cfg.read_timeout,
        operation_timeout: cfg.operation_timeout,
        aws_profile: cfg.aws_profile.as_deref(),
        region: cfg.region.as_deref(),
    })
    .await
}

/// The account id of the credentials `cfg` resolves to (STS GetCallerIdentity, which needs no
/// IAM permission), through the configured custom endpoint when there is one (LocalStack
/// answers `000000000000`).
pub async fn caller_account(cfg: &SqsConfig) -> Result<String, QueueError> {
    use crate::identity::{IdentityError, StsSettings, caller_identity};
    let endpoint = match &cfg.endpoint {
        Some(ep) => Some(
            Endpoint::parse(ep)
                .map_err(|why| QueueError::Invalid { message: format!("invalid SQS endpoint: {why}") })?,
        ),
        None => None,
    };
    let settings = StsSettings {
        region: cfg.region.clone(),
        endpoint: endpoint.map(|e| e.to_string()),
        aws_profile: cfg.aws_profile.clone(),
    };
    let hint = "set account_id in the profile instead";
    let id = caller_identity(&settings).await.map_err(|e| match e {
        IdentityError::NoCredentials { detail } => QueueError::NoCredentials { detail },
        IdentityError::Unreachable { endpoint, detail } => {
            QueueError::Unreachable { endpoint, detail: format!("STS GetCallerIdentity: {detail}; {hint}") }
        }
        other => QueueError::Other {
            retryable: other.is_retryable(),
            message: format!("cannot learn the AWS account id ({other}); {hint}"),
        },
    })?;
    check_account(&id.account).map_err(|why| QueueError::Other {
        message: format!("STS GetCallerIdentity returned no usable account ({why}); {hint}"),
        retryable: false,
    })?;
    Ok(id.account)
}

/// Attributes of a queue [`SqsClient::create_queue`] makes; `None` keeps SQS's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    pub visibility_timeout: Option<Duration>,
    pub message_retention: Option<Duration>,
    /// The default long-poll wait of receives that name none.
    pub receive_wait: Option<Duration>,
    /// Where messages go after too many receives.
    pub dead_letter: Option<DeadLetter>,
}

/// A redrive policy: after `max_receive_count` receives without a delete, SQS moves a
/// message to the queue `queue_arn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub queue_arn: String,
    pub max_receive_count: u32,
}

impl QueueSettings {
    fn attributes(&self) -> Result<Vec<(QueueAttributeName, String)>, QueueError> {
        let invalid = |message: String| Err(QueueError::Invalid { message });
        let mut out = Vec::new();
        if let Some(v) = self.visibility_timeout {
            if v > MAX_VISIBILITY {
                return invalid(format!("visibility timeout {v:?} exceeds SQS's 12 hours"));
            }
            out.push((QueueAttributeName::VisibilityTimeout, v.as_secs().to_string()));
        }
        if let Some(r) = self.message_retention {
            if !(60..=14 * 24 * 3600).contains(&r.as_secs()) {
                return invalid(format!("message retention {r:?} is outside SQS's 1 minute to 14 days"));
            }
            out.push((QueueAttributeName::MessageRetentionPeriod, r.as_secs().to_string()));
        }
        if let Some(w) = self.receive_wait {
            if w > MAX_WAIT {
                return invalid(format!("receive wait {w:?} exceeds SQS's 20 seconds"));
            }
            out.push((QueueAttributeName::ReceiveMessageWaitTimeSeconds, w.as_secs().to_string()));
        }
        if let Some(dl) = &self.dead_letter {
            if !(1..=1000).contains(&dl.max_receive_count) {
                return invalid(format!("max receive count {} is outside SQS's 1 to 1000", dl.max_receive_count));
            }
            if !dl.queue_arn.starts_with("arn:") || dl.queue_arn.split(':').count() != 6 {
                return invalid(format!("{:?} is not a queue ARN (arn:aws:sqs:REGION:ACCOUNT:NAME)", dl.queue_arn));
            }
            let policy = serde_json::json!({
                "deadLetterTargetArn": dl.queue_arn,
                "maxReceiveCount": dl.max_receive_count,
            });
            out.push((QueueAttributeName::RedrivePolicy, policy.to_string()));
        }
        Ok(out)
    }
}

/// How to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// 1 to [`MAX_RECEIVE`].
    pub max_messages: u32,
    /// Long-poll wait, up to [`MAX_WAIT`]; zero for a short poll.
    pub wait: Duration,
    /// Hide the received messages this long; `None` for the queue's default.
    pub visibility_timeout: Option<Duration>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions { max_messages: MAX_RECEIVE, wait: MAX_WAIT, visibility_timeout: None }
    }
}

/// A message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    /// What delete and change-visibility need; valid for this receive only.
    pub receipt_handle: String,
    pub body: String,
    /// How many times SQS has handed this message out, this receive included.
    pub receive_count: u32,
}

/// One queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: SqsClient,
    url: String,
}

impl SqsQueue {
    pub fn url(&self) -> &str {
        &self.url
    }

    fn map<E>(&self, doing: &str, e: SdkError<E, HttpResponse>) -> QueueError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        map_error(&self.client.shown_endpoint, doing, &self.url, e)
    }

    /// The queue's ARN (what bucket notifications and redrive policies name).
    pub async fn arn(&self) -> Result<String, QueueError> {
        let out = self
            .client
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| self.map("reading the attributes of", e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| self.client.protocol("GetQueueAttributes returned no QueueArn", &self.url))
    }

    /// Receives up to `max_messages`, waiting up to `wait` for the first.
    pub async fn receive(&self, opts: &ReceiveOptions) -> Result<Vec<ReceivedMessage>, QueueError> {
        if !(1..=MAX_RECEIVE).contains(&opts.max_messages) {
            return Err(QueueError::Invalid {
                message: format!("max_messages {} is outside SQS's 1 to {MAX_RECEIVE}", opts.max_messages),
            });
        }
        if opts.wait > MAX_WAIT {
            return Err(QueueError::Invalid { message: format!("wait {:?} exceeds SQS's 20 seconds", opts.wait) });
        }
        let mut req = self
            .client
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(opts.max_messages as i32)
            .wait_time_seconds(opts.wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        if let Some(v) = opts.visibility_timeout {
            req = req.visibility_timeout(visibility_secs(v)?);
        }
        let out = req.send().await.map_err(|e| self.map("receiving from", e))?;
        let mut messages = Vec::new();
        for m in out.messages() {
            let (Some(id), Some(receipt_handle)) = (m.message_id(), m.receipt_handle()) else {
                tracing::warn!(queue = %self.url, "skipping a received message without id or receipt handle");
                continue;
            };
            let receive_count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            messages.push(ReceivedMessage {
                id: id.to_owned(),
                receipt_handle: receipt_handle.to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count,
            });
        }
        Ok(messages)
    }

    /// Sets the queue's attributes (those `settings` gives; the others are left as they are).
    /// SQS refuses `CreateQueue` for an existing queue with other attributes, so an owner that
    /// changes its settings creates the queue without attributes and sets them with this.
    pub async fn set_attributes(&self, settings: &QueueSettings) -> Result<(), QueueError> {
        let attrs = settings.attributes()?;
        if attrs.is_empty() {
            return Ok(());
        }
        let mut req = self.client.client.set_queue_attributes().queue_url(&self.url);
        for (attr, value) in attrs {
            req = req.attributes(attr, value);
        }
        req.send().await.map_err(|e| self.map("setting the attributes of", e))?;
        Ok(())
    }

    /// Every attribute of the queue, by its SQS name (`VisibilityTimeout`, `RedrivePolicy`,
    /// `ApproximateNumberOfMessages`...).
    pub async fn attributes(&self) -> Result<std::collections::BTreeMap<String, String>, QueueError> {
        let out = self
            .client
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| self.map("reading the attributes of", e))?;
        Ok(out
            .attributes()
            .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
            .unwrap_or_default())
    }

    /// Deletes a received message (acknowledges it).
    pub async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.client
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| self.map("deleting a message from", e))?;
        Ok(())
    }

    /// Hides a received message for `timeout` from now (zero: visible again at once).
    pub async fn change_visibility(&self, receipt_handle: &str, timeout: Duration) -> Result<(), QueueError> {
        self.client
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(visibility_secs(timeout)?)
            .send()
            .await
            .map_err(|e| self.map("changing the visibility of a message on", e))?;
        Ok(())
    }

    /// Deletes the queue and every message in it.
    pub async fn delete_queue(&self) -> Result<(), QueueError> {
        self.client
            .client
            .delete_queue()
            .queue_url(&self.url)
            .send()
            .await
            .map_err(|e| self.map("deleting the queue", e))?;
        Ok(())
    }

    /// Sends one message; returns its id. FIFO queues get a group and a content-derived
    /// deduplication id, so no queue attribute is needed for them.
    pub async fn send(&self, body: &str) -> Result<String, QueueError> {
        let mut req = self.client.client.send_message().queue_url(&self.url).message_body(body);
        if self.url.ends_with(".fifo") {
            let dedup = hex::encode(Sha256::digest(body.as_bytes()));
            req = req.message_group_id("s3dock").message_deduplication_id(dedup);
        }
        let out = req.send().await.map_err(|e| self.map("sending to", e))?;
        Ok(out.message_id().unwrap_or_default().to_owned())
    }
}

fn visibility_secs(v: Duration) -> Result<i32, QueueError> {
    if v > MAX_VISIBILITY {
        return Err(QueueError::Invalid { message: format!("visibility timeout {v:?} exceeds SQS's 12 hours") });
    }
    Ok(v.as_secs() as i32)
}

/// Delivers promotion messages over SQS, only to queues the [`QueueRules`] accept.
#[derive(Debug, Clone)]
pub struct SqsNotifier {
    client: SqsClient,
    rules: QueueRules,
}

impl SqsNotifier {
    pub fn new(client: SqsClient, rules: QueueRules) -> Self {
        SqsNotifier { client, rules }
    }

    pub fn rules(&self) -> &QueueRules {
        &self.rules
    }
}

#[async_trait]
impl Notifier for SqsNotifier {
    fn check_queue(&self, queue_url: &str) -> Result<(), String> {
        self.rules.check(queue_url).map(|_| ())
    }

    async fn send(&self, queue_url: &str, body: &str) -> Result<(), EventError> {
        // Checked again here: `send` must be safe whoever calls it.
        self.rules.check(queue_url).map_err(|why| EventError { message: why, retryable: false })?;
        self.client.queue(queue_url).send(body).await?;
        Ok(())
    }
}

/// Where the account id of a [`LazySqsNotifier`]'s queue rules comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountSource {
    /// Given in the configuration (the CLI profile's `account_id`).
    Given(String),
    /// Asked from STS ([`caller_account`]) the first time a notification is due.
    CallerIdentity,
}

/// An [`SqsNotifier`] built on first use: the SQS client and the account id of the queue
/// rules are only looked up in [`Notifier::prepare`], which the fan-out calls once it has
/// found a registration with a queue. The CLI attaches one to every inline registry on an S3
/// store, so a promotion without registered agents sends no request to SQS or STS.
#[derive(Debug)]
pub struct LazySqsNotifier {
    config: SqsConfig,
    account: AccountSource,
    ready: tokio::sync::OnceCell<SqsNotifier>,
}

impl LazySqsNotifier {
    pub fn new(config: SqsConfig, account: AccountSource) -> Self {
        LazySqsNotifier { config, account, ready: tokio::sync::OnceCell::new() }
    }

    async fn notifier(&self) -> Result<&SqsNotifier, QueueError> {
        self.ready
            .get_or_try_init(|| async {
                let client = SqsClient::connect(&self.config).await?;
                let account = match &self.account {
                    AccountSource::Given(a) => a.clone(),
                    AccountSource::CallerIdentity => caller_account(&self.config).await?,
                };
                let rules = client
                    .rules(&account)
                    .map_err(|why| QueueError::Invalid { message: format!("cannot check agent queue URLs: {why}") })?;
                Ok(SqsNotifier::new(client, rules))
            })
            .await
    }
}

#[async_trait]
impl Notifier for LazySqsNotifier {
    async fn prepare(&self) -> Result<(), EventError> {
        self.notifier().await?;
        Ok(())
    }

    fn check_queue(&self, queue_url: &str) -> Result<(), String> {
        match self.ready.get() {
            Some(n) => n.check_queue(queue_url),
            None => Err("agent notifications are not set up yet (the account id is unknown)".into()),
        }
    }

    async fn send(&self, queue_url: &str, body: &str) -> Result<(), EventError> {
        self.notifier().await?.send(queue_url, body).await
    }
}

/// A custom endpoint's scheme, host (lowercase) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    https: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, String> {
        let parts = split_url(url)?;
        if !matches!(parts.path, "" | "/") {
            return Err(format!("{url:?} has a path; use http(s)://HOST[:PORT]"));
        }
        Ok(Endpoint { https: parts.https, host: parts.host, port: parts.port })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A URL taken apart: scheme, lowercase host, port (the scheme's default if absent), whether
/// a port was written, and the path (with its leading `/`, possibly empty).
struct UrlParts<'a> {
    https: bool,
    host: String,
    port: u16,
    explicit_port: bool,
    path: &'a str,
}

fn split_url(url: &str) -> Result<UrlParts<'_>, String> {
    if url.len() > 1024 {
        return Err("the URL is longer than 1024 characters".into());
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\' | '%')) {
        return Err(format!("{:?} contains {c:?}", truncate(url)));
    }
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{:?} is not an http(s) URL", truncate(url)));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!("{:?} embeds credentials", truncate(url)));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("{:?} has an unclosed IPv6 host", truncate(url)))?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(|| format!("{:?} has a malformed port", truncate(url)))?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        || host.starts_with(['.', '-'])
    {
        return Err(format!("{:?} has no valid host", truncate(url)));
    }
    let default_port = if https { 443 } else { 80 };
    let (port, explicit_port) = match port {
        None => (default_port, false),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => (n, true),
            _ => return Err(format!("{:?} has a malformed port", truncate(url))),
        },
    };
    Ok(UrlParts { https, host: host.to_ascii_lowercase(), port, explicit_port, path })
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

fn check_region(r: &str) -> Result<(), String> {
    let ok = r.len() <= 32
        && r.contains('-')
        && r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !r.starts_with('-')
        && !r.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{:?} is not a region name such as us-east-1", truncate(r))) }
}

fn check_account(a: &str) -> Result<(), String> {
    if a.len() == 12 && a.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("{:?} is not a 12-digit AWS account id", truncate(a)))
    }
}

/// SQS queue names: 1-80 characters of letters, digits, `-` and `_`; FIFO queues end in
/// `.fifo` (counted in the 80).
fn check_queue_name(name: &str) -> Result<(), String> {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let ok =
        !stem.is_empty() && name.len() <= 80 && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{:?} is not a queue name (1-80 letters, digits, '-', '_', optionally .fifo)", truncate(name)))
    }
}

/// A queue URL that passed the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAddress {
    pub account_id: String,
    pub region: String,
    pub name: String,
}

/// Which queue URLs the fan-out may send to: well-formed SQS URLs in one account and region,
/// plus URLs on a custom endpoint's host and port when one is configured.
///
/// Accepted:
/// - `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` (`.amazonaws.com.cn` in `cn-` regions)
/// - `https://REGION.queue.amazonaws.com/ACCOUNT/NAME` (legacy), and
///   `https://queue.amazonaws.com/ACCOUNT/NAME` (legacy, us-east-1 only)
/// - with a custom endpoint `SCHEME://HOST:PORT`: `SCHEME://HOST:PORT/ACCOUNT/NAME` and
///   LocalStack's path style `SCHEME://HOST:PORT/queue/REGION/ACCOUNT/NAME`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRules {
    account_id: String,
    region: String,
    endpoint: Option<Endpoint>,
}

impl QueueRules {
    /// Rules for `account_id` in `region`, with an optional custom endpoint URL.
    pub fn new(account_id: &str, region: &str, endpoint: Option<&str>) -> Result<QueueRules, String> {
        let endpoint = endpoint.map(Endpoint::parse).transpose()?;
        QueueRules::with_endpoint(account_id, region, endpoint)
    }

    fn with_endpoint(account_id: &str, region: &str, endpoint: Option<Endpoint>) -> Result<QueueRules, String> {
        check_account(account_id)?;
        check_region(region)?;
        Ok(QueueRules { account_id: account_id.to_owned(), region: region.to_owned(), endpoint })
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Checks a queue URL; the error says why it is refused.
    pub fn check(&self, url: &str) -> Result<QueueAddress, String> {
        let refuse = |why: String| Err(format!("queue URL {:?} refused: {why}", truncate(url)));
        let parts = match split_url(url) {
            Ok(p) => p,
            Err(why) => return refuse(why),
        };
        let segments: Vec<&str> = match parts.path.strip_prefix('/') {
            Some(p) => p.split('/').collect(),
            None => return refuse("it has no /ACCOUNT/NAME path".into()),
        };
        let on_endpoint = self
            .endpoint
            .as_ref()
            .is_some_and(|e| e.https == parts.https && e.host == parts.host && e.port == parts.port);
        let (url_region, account, name) = if on_endpoint {
            match segments.as_slice() {
                [account, name] => (None, *account, *name),
                ["queue", region, account, name] => (Some(*region), *account, *name),
                _ => return refuse("expected /ACCOUNT/NAME or /queue/REGION/ACCOUNT/NAME on the endpoint".into()),
            }
        } else {
            let Some(host_region) = aws_host_region(&parts.host) else {
                let also = match &self.endpoint {
                    Some(e) => format!(" nor the configured endpoint {e}"),
                    None => String::new(),
                };
                return refuse(format!("{}:{} is not an SQS host{also}", parts.host, parts.port));
            };
            if !parts.https {
                return refuse("SQS queue URLs on AWS use https".into());
            }
            if parts.explicit_port {
                return refuse("SQS queue URLs on AWS have no port".into());
            }
            match segments.as_slice() {
                [account, name] => (Some(host_region), *account, *name),
                _ => return refuse("expected the path /ACCOUNT/NAME".into()),
            }
        };
        if let Err(why) = check_account(account) {
            return refuse(why);
        }
        if account != self.account_id {
            return refuse(format!("account {account} is not this deployment's account {}", self.account_id));
        }
        if let Some(r) = url_region
            && r != self.region
        {
            return refuse(format!("region {r} is not this deployment's region {}", self.region));
        }
        if let Err(why) = check_queue_name(name) {
            return refuse(why);
        }
        Ok(QueueAddress { account_id: account.to_owned(), region: self.region.clone(), name: name.to_owned() })
    }
}

/// The region an AWS SQS host names, if it is one.
fn aws_host_region(host: &str) -> Option<&str> {
    if host == "queue.amazonaws.com" {
        return Some("us-east-1");
    }
    let region = if let Some(r) = host.strip_prefix("sqs.") {
        r.strip_suffix(".amazonaws.com.cn")
            .filter(|r| r.starts_with("cn-"))
            .or_else(|| r.strip_suffix(".amazonaws.com"))
    } else {
        host.strip_suffix(".queue.amazonaws.com")
    }?;
    check_region(region).ok().map(|_| region)
}

/// Error codes that mean "busy or failing right now".
const TRANSIENT_CODES: &[&str] = &[
    "RequestThrottled",
    "ThrottlingException",
    "Throttling",
    "KmsThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
];

const NOT_FOUND_CODES: &[&str] = &["QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue"];

const EXISTS_CODES: &[&str] = &["QueueNameExists", "QueueAlreadyExists", "AWS.SimpleQueueService.QueueNameExists"];

const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidSecurity",
    "ExpiredToken",
    "KmsAccessDenied",
    "KmsDisabled",
];

/// The one mapping from SDK failures to [`QueueError`]. `doing` reads like "sending to".
fn map_error<E>(endpoint: &str, doing: &str, queue: &str, err: SdkError<E, HttpResponse>) -> QueueError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    if has_credentials_error(&err) {
        return QueueError::NoCredentials { detail: DisplayErrorContext(&err).to_string() };
    }
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            classify_service_error(doing, queue, status, se.err().code(), se.err().message())
        }
        SdkError::TimeoutError(_) => {
            QueueError::Unreachable { endpoint: endpoint.to_owned(), detail: format!("{doing} {queue} timed out") }
        }
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => QueueError::Unreachable {
            endpoint: endpoint.to_owned(),
            detail: format!("{doing} {queue}: {}", DisplayErrorContext(&err)),
        },
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => QueueError::Other {
            message: format!("{doing} {queue} on {endpoint}: {}; try again later", DisplayErrorContext(&err)),
            retryable: true,
        },
        _ => QueueError::Other {
            message: format!(
                "{doing} {queue}: the request could not be built ({}); check the queue URL and the SQS settings",
                DisplayErrorContext(&err)
            ),
            retryable: false,
        },
    }
}

/// An error response from SQS, by HTTP status and error code.
fn classify_service_error(
    doing: &str,
    queue: &str,
    status: u16,
    code: Option<&str>,
    message: Option<&str>,
) -> QueueError {
    let code = code.unwrap_or("");
    let said = match (code, message) {
        ("", Some(m)) => m.to_owned(),
        ("", None) => format!("HTTP {status}"),
        (c, Some(m)) => format!("{c}: {m}"),
        (c, None) => c.to_owned(),
    };
    if NOT_FOUND_CODES.contains(&code) {
        return QueueError::NotFound { queue: queue.to_owned() };
    }
    if EXISTS_CODES.contains(&code) {
        return QueueError::AlreadyExists { queue: queue.to_owned() };
    }
    if status == 403 || ACCESS_CODES.contains(&code) {
        return QueueError::AccessDenied { queue: queue.to_owned(), detail: format!("{doing} {queue}: {said}") };
    }
    if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code) {
        return QueueError::Other {
            message: format!("{doing} {queue}: {said} (HTTP {status}); SQS is busy or failing, try again later"),
            retryable: true,
        };
    }
    QueueError::Other {
        message: format!("{doing} {queue} failed: {said} (HTTP {status}); check the queue URL and the request"),
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "123456789012";

    fn aws() -> QueueRules {
        QueueRules::new(ACCOUNT, "eu-west-1", None).unwrap()
    }

    fn localstack() -> QueueRules {
        QueueRules::new("000000000000", "us-east-1", Some("http://127.0.0.1:4566")).unwrap()
    }

    #[test]
    fn accepts_aws_queue_urls_of_the_same_account_and_region() {
        let r = aws();
        for url in [
            "https://sqs.eu-west-1.amazonaws.com/123456789012/agent-a",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/Agent_B-2",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/agent.fifo",
            "https://eu-west-1.queue.amazonaws.com/123456789012/agent-a",
            "https://SQS.EU-WEST-1.AMAZONAWS.COM/123456789012/agent-a",
            &format!("https://sqs.eu-west-1.amazonaws.com/123456789012/{}", "q".repeat(80)),
        ] {
            let addr = r.check(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((addr.account_id.as_str(), addr.region.as_str()), (ACCOUNT, "eu-west-1"));
        }
        assert_eq!(r.check("https://sqs.eu-west-1.amazonaws.com/123456789012/a").unwrap().name, "a");
        let us = QueueRules::new(ACCOUNT, "us-east-1", None).unwrap();
        us.check("https://queue.amazonaws.com/123456789012/legacy").unwrap();
        let cn = QueueRules::new(ACCOUNT, "cn-north-1", None).unwrap();
        cn.check("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/a").unwrap();
    }

    #[test]
    fn refuses_other_accounts_regions_hosts_and_malformed_urls() {
        let r = aws();
        for (url, why) in [
            ("https://sqs.eu-west-1.amazonaws.com/999999999999/evil", "account 999999999999"),
            ("https://sqs.us-east-1.amazonaws.com/123456789012/a", "region us-east-1"),
            ("https://us-east-1.queue.amazonaws.com/123456789012/a", "region us-east-1"),
            ("https://queue.amazonaws.com/123456789012/a", "region us-east-1"),
            ("http://sqs.eu-west-1.amazonaws.com/123456789012/a", "https"),
            ("https://sqs.eu-west-1.amazonaws.com:8443/123456789012/a", "no port"),
            ("https://sqs.eu-west-1.amazonaws.com.evil.example/123456789012/a", "not an SQS host"),
            ("https://evil.example/123456789012/a", "not an SQS host"),
            ("https://sqs.eu-west-1.amazonaws.com.cn/123456789012/a", "not an SQS host"),
            ("https://127.0.0.1:4566/123456789012/a", "not an SQS host"),
            ("https://user:pw@sqs.eu-west-1.amazonaws.com/123456789012/a", "credentials"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/a?Action=SendMessage", "'?'"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/a#x", "'#'"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/a%2F..", "'%'"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/a b", "' '"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/", "not a queue name"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/a/b", "/ACCOUNT/NAME"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012", "/ACCOUNT/NAME"),
            ("https://sqs.eu-west-1.amazonaws.com/12345678901/a", "12-digit"),
            ("https://sqs.eu-west-1.amazonaws.com/12345678901x/a", "12-digit"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/a.b", "not a queue name"),
            (&format!("https://sqs.eu-west-1.amazonaws.com/123456789012/{}", "q".repeat(81)), "not a queue name"),
            ("https://sqs.eu-west-1.amazonaws.com", "no /ACCOUNT/NAME"),
            ("sqs.eu-west-1.amazonaws.com/123456789012/a", "not an http(s) URL"),
            ("arn:aws:sqs:eu-west-1:123456789012:a", "not an http(s) URL"),
            ("", "not an http(s) URL"),
            ("https:///123456789012/a", "no valid host"),
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/a\n", "'\\n'"),
        ] {
            let e = r.check(url).expect_err(url);
            assert!(e.contains(why), "{url}: {e}");
            assert!(e.contains("refused"), "{e}");
        }
    }

    #[test]
    fn endpoint_urls_only_with_that_endpoint() {
        let r = localstack();
        for url in [
            "http://127.0.0.1:4566/000000000000/agent-a",
            "http://127.0.0.1:4566/queue/us-east-1/000000000000/agent-a",
            // AWS-form URLs of the same account and region stay acceptable.
            "https://sqs.us-east-1.amazonaws.com/000000000000/agent-a",
        ] {
            r.check(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for (url, why) in [
            ("http://127.0.0.1:4567/000000000000/a", "not an SQS host"),
            ("https://127.0.0.1:4566/000000000000/a", "not an SQS host"),
            ("http://localhost:4566/000000000000/a", "not an SQS host"),
            ("http://127.0.0.1:4566/queue/eu-west-1/000000000000/a", "region eu-west-1"),
            ("http://127.0.0.1:4566/111111111111/a", "account 111111111111"),
            ("http://127.0.0.1:4566/queue/us-east-1/000000000000", "/queue/REGION/ACCOUNT/NAME"),
            ("http://127.0.0.1:4566/x/y/000000000000/a", "/queue/REGION/ACCOUNT/NAME"),
        ] {
            let e = r.check(url).expect_err(url);
            assert!(e.contains(why), "{url}: {e}");
        }
        // Without an endpoint, no URL on 127.0.0.1 passes.
        let aws_only = QueueRules::new("000000000000", "us-east-1", None).unwrap();
        assert!(aws_only.check("http://127.0.0.1:4566/000000000000/agent-a").is_err());
        // A default port written or not is the same endpoint.
        let r = QueueRules::new("000000000000", "us-east-1", Some("http://sqs.internal/")).unwrap();
        r.check("http://sqs.internal:80/000000000000/a").unwrap();
        r.check("http://SQS.internal/000000000000/a").unwrap();
    }

    #[test]
    fn rules_refuse_bad_settings() {
        assert!(QueueRules::new("12345", "us-east-1", None).unwrap_err().contains("12-digit"));
        assert!(QueueRules::new(ACCOUNT, "US East", None).unwrap_err().contains("region"));
        assert!(QueueRules::new(ACCOUNT, "us-east-1", Some("127.0.0.1:4566")).unwrap_err().contains("http(s)"));
        assert!(QueueRules::new(ACCOUNT, "us-east-1", Some("http://a:b@h:1")).unwrap_err().contains("credentials"));
        assert!(QueueRules::new(ACCOUNT, "us-east-1", Some("http://h:1/path")).unwrap_err().contains("path"));
        assert!(QueueRules::new(ACCOUNT, "us-east-1", Some("http://h:99999")).unwrap_err().contains("port"));
    }

    #[test]
    fn service_errors_map_to_retryable_or_permanent() {
        let c = |status, code: &str| classify_service_error("sending to", "q", status, Some(code), Some("msg"));
        assert!(matches!(c(400, "AWS.SimpleQueueService.NonExistentQueue"), QueueError::NotFound { .. }));
        assert!(matches!(c(400, "QueueDoesNotExist"), QueueError::NotFound { .. }));
        assert!(matches!(c(403, "AccessDenied"), QueueError::AccessDenied { .. }));
        assert!(matches!(c(400, "QueueAlreadyExists"), QueueError::AlreadyExists { .. }));
        assert!(matches!(c(400, "QueueNameExists"), QueueError::AlreadyExists { .. }));
        assert!(matches!(c(400, "KmsAccessDenied"), QueueError::AccessDenied { .. }));
        for (status, code) in
            [(400, "RequestThrottled"), (400, "ThrottlingException"), (500, "InternalError"), (503, ""), (429, "")]
        {
            assert!(c(status, code).is_retryable(), "{status} {code}");
        }
        for (status, code) in [(400, "InvalidMessageContents"), (400, "InvalidParameterValue"), (404, "")] {
            assert!(!c(status, code).is_retryable(), "{status} {code}");
        }
        let e: EventError = c(400, "QueueDoesNotExist").into();
        assert!(!e.retryable && e.message.contains("does not exist"), "{e:?}");
        let e: EventError = c(503, "ServiceUnavailable").into();
        assert!(e.retryable);
        assert!(QueueError::Unreachable { endpoint: "e".into(), detail: "d".into() }.is_retryable());
    }

    #[tokio::test]
    async fn the_lazy_notifier_checks_urls_only_once_prepared() {
        let cfg = SqsConfig {
            region: Some("us-east-1".into()),
            endpoint: Some("http://127.0.0.1:4566".into()),
            ..SqsConfig::default()
        };
        let n = LazySqsNotifier::new(cfg, AccountSource::Given("000000000000".into()));
        let url = "http://127.0.0.1:4566/queue/us-east-1/000000000000/s3dock-agent-web-1";
        assert!(n.check_queue(url).unwrap_err().contains("not set up"), "refused before prepare");
        // A given account needs no request: connecting builds a client only.
        n.prepare().await.unwrap();
        n.check_queue(url).unwrap();
        assert!(n.check_queue("http://127.0.0.1:4566/queue/us-east-1/111111111111/x").unwrap_err().contains("account"));
        let bad = LazySqsNotifier::new(SqsConfig::default(), AccountSource::Given("12345".into()));
        let e = bad.prepare().await.unwrap_err();
        assert!(!e.retryable && e.message.contains("12-digit"), "{e:?}");
    }

    #[test]
    fn queue_settings_validate_and_encode_the_redrive_policy() {
        let s = QueueSettings {
            visibility_timeout: Some(Duration::from_secs(30)),
            message_retention: None,
            receive_wait: Some(Duration::from_secs(20)),
            dead_letter: Some(DeadLetter {
                queue_arn: "arn:aws:sqs:us-east-1:000000000000:dlq".into(),
                max_receive_count: 3,
            }),
        };
        let attrs = s.attributes().unwrap();
        let policy = &attrs.iter().find(|(k, _)| *k == QueueAttributeName::RedrivePolicy).unwrap().1;
        let v: serde_json::Value = serde_json::from_str(policy).unwrap();
        assert_eq!(v["deadLetterTargetArn"], "arn:aws:sqs:us-east-1:000000000000:dlq");
        assert_eq!(v["maxReceiveCount"], 3);
        let bad = QueueSettings {
            dead_letter: Some(DeadLetter { queue_arn: "dlq".into(), max_receive_count: 3 }),
            ..Default::default()
        };
        assert!(matches!(bad.attributes(), Err(QueueError::Invalid { .. })));
        let bad = QueueSettings { receive_wait: Some(Duration::from_secs(21)), ..Default::default() };
        assert!(bad.attributes().is_err());
        assert!(check_queue_name("a.fifo").is_ok() && check_queue_name(".fifo").is_err());
    }
}
