//! What the S3, SQS and STS clients share: how an AWS SDK configuration is loaded.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

/// The region used when neither the settings nor the AWS chain name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Retries, timeouts, profile and region of an SDK client.
pub(crate) struct ClientSettings<'a> {
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub operation_timeout: Duration,
    pub aws_profile: Option<&'a str>,
    pub region: Option<&'a str>,
}

/// The SDK configuration from the standard AWS chain (environment, profile, instance metadata),
/// with bounded retries and timeouts so an unreachable endpoint fails in bounded time.
pub(crate) async fn sdk_config(s: ClientSettings<'_>) -> aws_config::SdkConfig {
    let retry = RetryConfig::standard().with_max_attempts(s.max_attempts);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(s.connect_timeout)
        .read_timeout(s.read_timeout)
        .operation_timeout(s.operation_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry).timeout_config(timeouts);
    if let Some(profile) = s.aws_profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = s.region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    loader.load().await
}

/// The region `sdk` resolved, else [`DEFAULT_REGION`].
pub(crate) fn region_of(sdk: &aws_config::SdkConfig) -> String {
    sdk.region().map(|r| r.to_string()).unwrap_or_else(|| DEFAULT_REGION.to_owned())
}
