//! The agent's queue: the [`MessageQueue`] trait the loop consumes (implemented by core's
//! [`SqsQueue`], and by an in-memory queue in tests), the queue's name, and its creation.
//!
//! Messages are hints (see [`crate::runtime`]): what the agent does with one is decided there;
//! this module only knows how to get, acknowledge and hide them.

use std::time::Duration;

use async_trait::async_trait;
use s3dock_aws::sqs::{
    DeadLetter, MAX_VISIBILITY, QueueError, QueueSettings, ReceiveOptions, ReceivedMessage, SqsClient, SqsQueue,
};
use s3dock_core::names::AgentId;
use sha2::{Digest, Sha256};

use crate::config::{QueueConfig, QueueMode};

/// SQS's limit on a queue name, the `-dlq` suffix of the dead-letter queue included.
pub const MAX_QUEUE_NAME: usize = 80;
pub const DLQ_SUFFIX: &str = "-dlq";
/// How long SQS keeps a message nobody consumed: the most it allows, so a dead letter waits
/// as long as possible for someone to look at it.
pub const DLQ_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// What the loop needs from a queue.
#[async_trait]
pub trait MessageQueue: Send + Sync + std::fmt::Debug {
    /// The URL put in the agent's registration: where the fan-out sends.
    fn url(&self) -> &str;
    /// Long-polls for up to `wait`; at most 10 messages.
    async fn receive(&self, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError>;
    /// Acknowledges a message: it is gone for good.
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;
    /// Hides a message for `timeout` from now (zero: visible again at once).
    async fn hide(&self, receipt_handle: &str, timeout: Duration) -> Result<(), QueueError>;
}

#[async_trait]
impl MessageQueue for SqsQueue {
    fn url(&self) -> &str {
        SqsQueue::url(self)
    }

    async fn receive(&self, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        SqsQueue::receive(self, &ReceiveOptions { wait, ..ReceiveOptions::default() }).await
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        SqsQueue::delete(self, receipt_handle).await
    }

    async fn hide(&self, receipt_handle: &str, timeout: Duration) -> Result<(), QueueError> {
        SqsQueue::change_visibility(self, receipt_handle, timeout).await
    }
}

/// `{prefix}{id}` with `.` as `-` (SQS names allow letters, digits, `-` and `_`). An id too
/// long for the name and its `-dlq` twin is cut and given a short hash of the whole id, so two
/// long ids with the same beginning still get two queues. (The stack's agent policy names the
/// queue `{prefix}{agent_id}` exactly: only ids without `.` that fit are covered by it.)
pub fn queue_name(prefix: &str, id: &AgentId) -> String {
    let stem = format!("{prefix}{}", id.as_str().replace('.', "-"));
    let max = MAX_QUEUE_NAME - DLQ_SUFFIX.len();
    if stem.len() <= max {
        return stem;
    }
    let hash = hex::encode(&Sha256::digest(id.as_str().as_bytes())[..4]);
    let keep = max - hash.len() - 1;
    let cut = stem[..keep].trim_end_matches(['-', '_']);
    format!("{cut}-{hash}")
}

/// The dead-letter queue's name for a queue name.
pub fn dlq_name(queue: &str) -> String {
    format!("{queue}{DLQ_SUFFIX}")
}

/// Opens the queue the configuration asks for: creates `{name_prefix}{id}` and its DLQ
/// (`create`), checks a given one exists (`url`), or none.
///
/// Both queues are created with their attributes, which is idempotent while the settings stay
/// the same. The stack's agent policy grants no `SetQueueAttributes` (it could change a queue's
/// access policy), so after a settings change the existing queue keeps its old attributes when
/// the agent may not set them: a warning says so, and an operator changes them.
pub async fn open(client: &SqsClient, id: &AgentId, cfg: &QueueConfig) -> Result<Option<SqsQueue>, QueueError> {
    match &cfg.mode {
        QueueMode::None => Ok(None),
        QueueMode::Url(url) => {
            let queue = client.queue(url);
            // A missing queue or a refused one fails the start with SQS's own reason.
            queue.arn().await?;
            Ok(Some(queue))
        }
        QueueMode::Create => {
            let name = queue_name(&cfg.name_prefix, id);
            let dlq_settings = QueueSettings { message_retention: Some(DLQ_RETENTION), ..Default::default() };
            let dlq = create_or_update(client, &dlq_name(&name), &dlq_settings).await?;
            let dlq_arn = dlq.arn().await?;
            let settings = QueueSettings {
                visibility_timeout: Some(cfg.visibility_timeout),
                message_retention: None,
                receive_wait: Some(cfg.wait),
                dead_letter: Some(DeadLetter { queue_arn: dlq_arn, max_receive_count: cfg.max_receive_count }),
            };
            Ok(Some(create_or_update(client, &name, &settings).await?))
        }
    }
}

/// Creates `name` with `settings`; an existing queue with other attributes gets them with
/// `SetQueueAttributes` where the agent may, and is kept as it is (with a warning) where not.
async fn create_or_update(client: &SqsClient, name: &str, settings: &QueueSettings) -> Result<SqsQueue, QueueError> {
    match client.create_queue(name, settings).await {
        Ok(q) => Ok(q),
        Err(QueueError::AlreadyExists { .. }) => {
            let q = client.queue_named(name).await?;
            match q.set_attributes(settings).await {
                Ok(()) => {}
                Err(e @ QueueError::AccessDenied { .. }) => tracing::warn!(
                    queue = %name,
                    error = %e,
                    "the queue exists with other attributes than the configuration's and this agent may not change them; it keeps its old ones until an operator sets them (aws sqs set-queue-attributes) or deletes the queue"
                ),
                Err(e) => return Err(e),
            }
            Ok(q)
        }
        Err(e) => Err(e),
    }
}

/// How long a message that cannot be parsed stays hidden after its `receive_count`-th
/// receive: the visibility timeout times the receive count (so it comes back slower each
/// time, never in a hot loop), and zero once it has been received `max_receive_count` times,
/// so the next receive hands it to SQS's redrive and it lands in the dead-letter queue.
pub fn poison_backoff(receive_count: u32, max_receive_count: u32, visibility: Duration) -> Duration {
    if receive_count >= max_receive_count {
        return Duration::ZERO;
    }
    visibility.saturating_mul(receive_count.max(1)).min(MAX_VISIBILITY)
}

/// The same for a queue whose redrive policy the agent did not set (`mode = "url"`): it may
/// have none, so making the message visible at once would hand it straight back, in a hot
/// loop, for ever. It keeps backing off instead (at most SQS's 12 hours); a redrive policy, if
/// the queue has one, still moves it after its own receive count.
pub fn poison_backoff_unknown_redrive(receive_count: u32, visibility: Duration) -> Duration {
    visibility.saturating_mul(receive_count.max(1)).min(MAX_VISIBILITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_fit_sqs() {
        const QUEUE_PREFIX: &str = "s3dock_agent-";
        let id = |s: &str| AgentId::parse(s).unwrap();
        let queue_name = |id: &AgentId| queue_name(QUEUE_PREFIX, id);
        assert_eq!(queue_name(&id("web-1")), "s3dock_agent-web-1");
        assert_eq!(queue_name(&id("ip-10-0-1-5.ec2.internal")), "s3dock_agent-ip-10-0-1-5-ec2-internal");
        assert_eq!(queue_name(&id("a_b")), "s3dock_agent-a_b");
        assert_eq!(super::queue_name("prod_agent-", &id("web-1")), "prod_agent-web-1");
        let long = "h".repeat(64);
        let other = format!("{}x", "h".repeat(63));
        let (a, b) = (queue_name(&id(&long)), queue_name(&id(&other)));
        assert_ne!(a, b, "two long ids get two queues");
        for name in [&a, &b] {
            assert_eq!(name.len(), MAX_QUEUE_NAME - DLQ_SUFFIX.len(), "{name}");
            assert!(dlq_name(name).len() <= MAX_QUEUE_NAME);
            assert!(name.starts_with(QUEUE_PREFIX));
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{name}");
        }
        // The longest id that fits is not hashed.
        let fits = "f".repeat(MAX_QUEUE_NAME - DLQ_SUFFIX.len() - QUEUE_PREFIX.len());
        assert_eq!(queue_name(&id(&fits)), format!("{QUEUE_PREFIX}{fits}"));
    }

    #[test]
    fn poison_messages_back_off_then_go_to_the_dlq() {
        let v = Duration::from_secs(30);
        assert_eq!(poison_backoff(1, 5, v), Duration::from_secs(30));
        assert_eq!(poison_backoff(2, 5, v), Duration::from_secs(60));
        assert_eq!(poison_backoff(4, 5, v), Duration::from_secs(120));
        assert_eq!(poison_backoff(5, 5, v), Duration::ZERO);
        assert_eq!(poison_backoff(9, 5, v), Duration::ZERO);
        assert_eq!(poison_backoff(999, 1000, Duration::from_secs(12 * 3600)), MAX_VISIBILITY);
    }

    #[test]
    fn without_a_known_redrive_a_malformed_message_never_comes_back_at_once() {
        let v = Duration::from_secs(30);
        for count in [1, 5, 6, 100] {
            assert!(poison_backoff_unknown_redrive(count, v) >= v, "receive {count}");
        }
        assert_eq!(poison_backoff_unknown_redrive(5, v), Duration::from_secs(150));
        assert_eq!(poison_backoff_unknown_redrive(10_000, v), MAX_VISIBILITY);
    }
}
