//! Who the AWS credentials belong to: STS GetCallerIdentity, which every valid credential may
//! call (no IAM permission needed). The SQS notifier asks it for the account its queue rules
//! need ([`crate::sqs::caller_account`]); `s3dock doctor` shows the caller's ARN.

use std::time::Duration;

use aws_sdk_sts::config::Region;

use crate::error::{Failure, classify, error_chain};

/// Where to ask, with which credentials. Holds no secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StsSettings {
    /// `None`: the AWS chain's region, else us-east-1.
    pub region: Option<String>,
    /// A custom endpoint (LocalStack answers STS on its single port); `None` for AWS.
    pub endpoint: Option<String>,
    /// An AWS profile to take credentials from instead of the default chain.
    pub aws_profile: Option<String>,
}

/// The answer of GetCallerIdentity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    pub account: String,
    /// `arn:aws:iam::123456789012:user/alice`, `arn:aws:sts::...:assumed-role/ROLE/SESSION`.
    pub arn: String,
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "no AWS credentials found ({detail}); set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or `aws_profile` in the s3dock profile"
    )]
    NoCredentials { detail: String },
    #[error("cannot reach STS at {endpoint} ({detail}); check the endpoint, your network, and that the service runs")]
    Unreachable { endpoint: String, detail: String },
    /// The credentials were refused (HTTP 403, or an error code saying so).
    #[error(
        "STS at {endpoint} refused the credentials (HTTP {status}, {said}); check AWS_PROFILE / AWS_ACCESS_KEY_ID and that the keys are active"
    )]
    Refused { endpoint: String, status: u16, said: String },
    /// Any other answer: a server that does not implement STS, an outage.
    #[error("STS GetCallerIdentity on {endpoint} answered HTTP {status} ({said})")]
    Failed { endpoint: String, status: u16, said: String },
    #[error("STS GetCallerIdentity on {endpoint} failed: {detail}")]
    Other { endpoint: String, detail: String },
}

impl IdentityError {
    /// Whether asking again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            IdentityError::Unreachable { .. } => true,
            IdentityError::Failed { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Error codes STS (and servers imitating it) use for credentials it will not accept.
const REFUSED_CODES: [&str; 6] = [
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "AccessDenied",
    "InvalidAccessKeyId",
    "UnrecognizedClientException",
];

/// Asks STS who the credentials are.
pub async fn caller_identity(s: &StsSettings) -> Result<CallerIdentity, IdentityError> {
    let sdk = crate::sdk::sdk_config(crate::sdk::ClientSettings {
        max_attempts: 2,
        connect_timeout: Duration::from_secs(3),
        read_timeout: Duration::from_secs(10),
        operation_timeout: Duration::from_secs(30),
        aws_profile: s.aws_profile.as_deref(),
        region: s.region.as_deref(),
    })
    .await;
    let region = crate::sdk::region_of(&sdk);
    let mut builder = aws_sdk_sts::config::Builder::from(&sdk).region(Region::new(region.clone()));
    if let Some(ep) = &s.endpoint {
        builder = builder.endpoint_url(ep);
    }
    let shown = s.endpoint.clone().unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
    let client = aws_sdk_sts::Client::from_conf(builder.build());
    let out = client.get_caller_identity().send().await.map_err(|e| {
        let endpoint = shown.clone();
        let refused_or_failed = |status: u16, refused: bool, said: String| {
            if refused {
                IdentityError::Refused { endpoint: endpoint.clone(), status, said }
            } else {
                IdentityError::Failed { endpoint: endpoint.clone(), status, said }
            }
        };
        match classify(&e) {
            Failure::NoCredentials => IdentityError::NoCredentials { detail: error_chain(&e) },
            Failure::TimedOut | Failure::Network | Failure::Dispatch { .. } => {
                IdentityError::Unreachable { endpoint: endpoint.clone(), detail: error_chain(&e) }
            }
            Failure::Service(f) => {
                let said = f.said().unwrap_or_else(|| "no reason given".to_owned());
                refused_or_failed(f.status, f.status == 403 || REFUSED_CODES.contains(&f.code()), said)
            }
            Failure::Unreadable { status } => {
                refused_or_failed(status, status == 403, "an answer that is not an STS document".to_owned())
            }
            Failure::Construction => IdentityError::Other { endpoint: endpoint.clone(), detail: error_chain(&e) },
        }
    })?;
    Ok(CallerIdentity {
        account: out.account().unwrap_or_default().to_owned(),
        arn: out.arn().unwrap_or_default().to_owned(),
        user_id: out.user_id().unwrap_or_default().to_owned(),
    })
}
