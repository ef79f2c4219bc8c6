//! One queue: receive (long poll), delete, change visibility, send, ARN, attributes, and the
//! attributes a queue is created with.

use std::time::Duration;

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use sha2::{Digest, Sha256};

use super::errors::map_error;
use super::{MAX_RECEIVE, MAX_VISIBILITY, MAX_WAIT, QueueError, SqsClient};

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
    pub(super) fn attributes(&self) -> Result<Vec<(QueueAttributeName, String)>, QueueError> {
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
    pub(super) client: SqsClient,
    pub(super) url: String,
}

impl SqsQueue {
    pub fn url(&self) -> &str {
        &self.url
    }

    fn map<E>(&self, doing: &str, e: SdkError<E, HttpResponse>) -> QueueError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::rules::check_queue_name;

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
