//! The promotion fan-out's [`Notifier`] over SQS, and the lazy one the CLI attaches to an
//! inline registry.

use async_trait::async_trait;
use s3dock_core::events::{EventError, Notifier};

use super::rules::QueueRules;
use super::{QueueError, SqsClient, SqsConfig, caller_account};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
