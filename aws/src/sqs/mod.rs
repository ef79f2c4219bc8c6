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
//! Every SDK failure goes through `errors::map_error` (over the shared
//! [`crate::error::classify`]), which decides whether a retry can help:
//! throttling, 5xx and network trouble are retryable; access denied and a missing queue are
//! not.

mod errors;
mod notifier;
mod queue;
mod rules;

use std::time::Duration;

use aws_sdk_sqs::config::Region;
pub use errors::QueueError;
use errors::map_error;
pub use notifier::{AccountSource, LazySqsNotifier, SqsNotifier};
pub use queue::{DeadLetter, QueueSettings, ReceiveOptions, ReceivedMessage, SqsQueue};
use rules::{Endpoint, check_account, check_queue_name, check_region};
pub use rules::{QueueAddress, QueueRules};

pub use crate::sdk::DEFAULT_REGION;
/// SQS's longest long-poll wait.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's largest receive batch.
pub const MAX_RECEIVE: u32 = 10;
/// SQS's longest visibility timeout (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

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
        let region = crate::sdk::region_of(&sdk);
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

    pub(super) fn protocol(&self, what: &str, queue: &str) -> QueueError {
        QueueError::Other {
            message: format!("{queue}: {what}; check that {} is an SQS endpoint", self.shown_endpoint),
            retryable: false,
        }
    }
}

/// The AWS SDK configuration for `cfg`: retries, timeouts, profile and region.
async fn sdk_config(cfg: &SqsConfig) -> aws_config::SdkConfig {
    crate::sdk::sdk_config(crate::sdk::ClientSettings {
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
    use crate::sts::{IdentityError, StsSettings, caller_identity};
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
