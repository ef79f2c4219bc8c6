//! The agent's queue: the [`MessageQueue`] trait the loop consumes (implemented by core's
//! [`SqsQueue`], and by an in-memory queue in tests), the queue's name, and its creation.
//!
//! Messages are hints (see [`crate::runtime`]): what the agent does with one is decided there;
//! this module only knows how to get, acknowledge and hide them.

use std::time::Duration;

use async_trait::async_trait;
use s3dock_core::names::AgentId;
use s3dock_core::sqs::{
    DeadLetter, MAX_VISIBILITY, QueueError, QueueSettings, ReceiveOptions, ReceivedMessage, SqsClient, SqsQueue,
};
use sha2::{Digest, Sha256};

use crate::config::{QueueConfig, QueueMode};

/// SQS's limit on a queue name, the `-dlq` suffix of the dead-letter queue included.
pub const MAX_QUEUE_NAME: usize = 80;
pub const QUEUE_PREFIX: &str = "s3dock-agent-";
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

/// `s3dock-agent-{id}` with `.` as `-` (SQS names allow letters, digits, `-` and `_`). An id
/// too long for the name and its `-dlq` twin is cut and given a short hash of the whole id,
/// so two long ids with the same beginning still get two queues.
pub fn queue_name(id: &AgentId) -> String {
    let stem = format!("{QUEUE_PREFIX}{}", id.as_str().replace('.', "-"));
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

/// Opens the queue the configuration asks for: creates `s3dock-agent-{id}` and its DLQ
/// (`create`), checks a given one exists (`url`), or none.
///
/// Creating is idempotent and also repairs: both queues are created without attributes (SQS
/// refuses `CreateQueue` for an existing queue whose attributes differ) and then get theirs
/// with `SetQueueAttributes`, so a changed `visibility_timeout` or `max_receive_count` takes
/// effect at the next start.
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
            let name = queue_name(id);
            let dlq = client.create_queue(&dlq_name(&name), &QueueSettings::default()).await?;
            dlq.set_attributes(&QueueSettings { message_retention: Some(DLQ_RETENTION), ..Default::default() }).await?;
            let dlq_arn = dlq.arn().await?;
            let queue = client.create_queue(&name, &QueueSettings::default()).await?;
            queue
                .set_attributes(&QueueSettings {
                    visibility_timeout: Some(cfg.visibility_timeout),
                    message_retention: None,
                    receive_wait: Some(cfg.wait),
                    dead_letter: Some(DeadLetter { queue_arn: dlq_arn, max_receive_count: cfg.max_receive_count }),
                })
                .await?;
            Ok(Some(queue))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_fit_sqs() {
        let id = |s: &str| AgentId::parse(s).unwrap();
        assert_eq!(queue_name(&id("web-1")), "s3dock-agent-web-1");
        assert_eq!(queue_name(&id("ip-10-0-1-5.ec2.internal")), "s3dock-agent-ip-10-0-1-5-ec2-internal");
        assert_eq!(queue_name(&id("a_b")), "s3dock-agent-a_b");
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
}
