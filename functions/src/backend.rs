//! The outside world a function talks to: the bucket and the agents' queues. Injected, so
//! tests run the same code over an in-memory store and a recording notifier.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use s3dock_aws::Location;
use s3dock_aws::sqs::{SqsClient, SqsConfig, SqsNotifier};
use s3dock_core::events::{EventError, Notifier};
use s3dock_core::store::ObjectStore;
use tokio::sync::Mutex;

use crate::settings::{ConfigError, Settings};

/// Where a function's stores and notifier come from.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The store of `bucket`, with the configured key prefix applied: keys passed to it are
    /// relative to the prefix.
    async fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, EventError>;

    /// The notifier that delivers promotion messages to agent queues of `account_id`.
    async fn notifier(&self, account_id: &str) -> Result<Arc<dyn Notifier>, EventError>;
}

/// AWS (or LocalStack): S3 stores per bucket and one SQS client, built once and reused by
/// every invocation of the warm function.
#[derive(Debug)]
pub struct AwsBackend {
    settings: Settings,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    sqs: Option<SqsClient>,
    notifiers: Mutex<HashMap<String, Arc<dyn Notifier>>>,
}

impl AwsBackend {
    /// Builds the clients: the configured bucket's store now (so a bad setting fails the
    /// start-up, not every event), and the SQS client if `with_sqs`. No request is sent.
    pub async fn connect(settings: &Settings, with_sqs: bool) -> Result<AwsBackend, ConfigError> {
        let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
        if let Some(bucket) = &settings.bucket {
            let store = Location::S3(settings.s3_config(bucket)?)
                .open()
                .await
                .map_err(|e| ConfigError(format!("bucket {bucket}: {e}")))?;
            stores.insert(bucket.clone(), store);
        }
        let sqs = if with_sqs {
            let cfg = SqsConfig {
                region: Some(settings.region.clone()),
                endpoint: settings.sqs_endpoint.clone(),
                ..SqsConfig::default()
            };
            Some(SqsClient::connect(&cfg).await.map_err(|e| ConfigError(format!("SQS: {e}")))?)
        } else {
            None
        };
        Ok(AwsBackend { settings: settings.clone(), stores: Mutex::new(stores), sqs, notifiers: Mutex::default() })
    }
}

#[async_trait]
impl Backend for AwsBackend {
    async fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, EventError> {
        let mut stores = self.stores.lock().await;
        if let Some(s) = stores.get(bucket) {
            return Ok(s.clone());
        }
        let permanent = |message: String| EventError { message, retryable: false };
        let cfg = self.settings.s3_config(bucket).map_err(|e| permanent(e.0))?;
        let store = Location::S3(cfg).open().await.map_err(|e| permanent(e.to_string()))?;
        stores.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    async fn notifier(&self, account_id: &str) -> Result<Arc<dyn Notifier>, EventError> {
        let Some(sqs) = &self.sqs else {
            return Err(EventError { message: "this function has no SQS client".into(), retryable: false });
        };
        let mut notifiers = self.notifiers.lock().await;
        if let Some(n) = notifiers.get(account_id) {
            return Ok(n.clone());
        }
        let rules = sqs.rules(account_id).map_err(|message| EventError { message, retryable: false })?;
        let n: Arc<dyn Notifier> = Arc::new(SqsNotifier::new(sqs.clone(), rules));
        notifiers.insert(account_id.to_owned(), n.clone());
        Ok(n)
    }
}
