//! The functions' configuration, read once from the environment and validated.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `S3DOCK_BUCKET` | the event's bucket | the bucket served; events of other buckets are ignored |
//! | `S3DOCK_PREFIX` | `""` | key prefix of the s3dock layout inside the bucket |
//! | `S3DOCK_AGENT_TTL_SECONDS` | 600 | agents silent for longer are not notified |
//! | `S3DOCK_S3_ENDPOINT` | AWS | a custom S3 endpoint (LocalStack), path-style |
//! | `S3DOCK_SQS_ENDPOINT` | AWS | a custom SQS endpoint (LocalStack) |
//! | `AWS_REGION` | `AWS_DEFAULT_REGION`, else us-east-1 | region of the bucket and the queues |
//! | `S3DOCK_ACCOUNT_ID` | from the function ARN | the account agent queues must belong to |

use chrono::Duration;
use s3dock_aws::S3Config;

/// A setting that cannot be used; names the variable and what to set instead.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The longest agent TTL accepted (a week): longer is surely a unit mistake.
pub const MAX_AGENT_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None`: serve the bucket each event names.
    pub bucket: Option<String>,
    /// `""` or `"a/b/"`.
    pub prefix: String,
    pub agent_ttl: Duration,
    pub s3_endpoint: Option<String>,
    pub sqs_endpoint: Option<String>,
    pub region: String,
    /// `None`: taken from the invoked function's ARN.
    pub account_id: Option<String>,
    /// The acting user of records whose document names none (rejects).
    pub function_name: String,
}

impl Settings {
    /// Defaults for a function named `name`: any bucket, no prefix, us-east-1.
    pub fn new(name: &str) -> Settings {
        Settings {
            bucket: None,
            prefix: String::new(),
            agent_ttl: Duration::seconds(600),
            s3_endpoint: None,
            sqs_endpoint: None,
            region: s3dock_aws::sqs::DEFAULT_REGION.to_owned(),
            account_id: None,
            function_name: name.to_owned(),
        }
    }

    /// Reads the process environment.
    pub fn from_env(default_name: &str) -> Result<Settings, ConfigError> {
        Settings::from_vars(default_name, |k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (the environment, or a map in tests). Empty values count
    /// as unset.
    pub fn from_vars(default_name: &str, get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let var = |k: &str| get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut s = Settings::new(default_name);
        if let Some(name) = var("AWS_LAMBDA_FUNCTION_NAME") {
            s.function_name = name;
        }
        if let Some(b) = var("S3DOCK_BUCKET") {
            S3Config::new(&b).map_err(|e| ConfigError(format!("S3DOCK_BUCKET: {e}")))?;
            s.bucket = Some(b);
        }
        if let Some(p) = var("S3DOCK_PREFIX") {
            // The bucket name only matters for the check; the prefix rules are S3Config's.
            let cfg = S3Config::new("placeholder").and_then(|c| c.with_prefix(&p));
            s.prefix = cfg.map_err(|e| ConfigError(format!("S3DOCK_PREFIX: {e}")))?.prefix;
        }
        if let Some(t) = var("S3DOCK_AGENT_TTL_SECONDS") {
            match t.parse::<i64>() {
                Ok(n) if (1..=MAX_AGENT_TTL_SECONDS).contains(&n) => s.agent_ttl = Duration::seconds(n),
                _ => {
                    return Err(ConfigError(format!(
                        "S3DOCK_AGENT_TTL_SECONDS={t:?} is not a number of seconds between 1 and {MAX_AGENT_TTL_SECONDS}"
                    )));
                }
            }
        }
        for (name, slot) in [("S3DOCK_S3_ENDPOINT", &mut s.s3_endpoint), ("S3DOCK_SQS_ENDPOINT", &mut s.sqs_endpoint)] {
            if let Some(ep) = var(name) {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) || ep.contains('@') {
                    return Err(ConfigError(format!(
                        "{name} must be http(s)://HOST[:PORT] without credentials, e.g. http://127.0.0.1:4566"
                    )));
                }
                *slot = Some(ep);
            }
        }
        if let Some(r) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            s.region = r;
        }
        if let Some(a) = var("S3DOCK_ACCOUNT_ID") {
            if a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()) {
                return Err(ConfigError(format!("S3DOCK_ACCOUNT_ID={a:?} is not a 12-digit AWS account id")));
            }
            s.account_id = Some(a);
        }
        Ok(s)
    }

    /// The S3 configuration of `bucket` under these settings.
    pub fn s3_config(&self, bucket: &str) -> Result<S3Config, ConfigError> {
        let mut cfg = S3Config::new(bucket)
            .and_then(|c| c.with_prefix(&self.prefix))
            .map_err(|e| ConfigError(format!("bucket {bucket}: {e}")))?;
        cfg.region = Some(self.region.clone());
        if let Some(ep) = &self.s3_endpoint {
            cfg.endpoint = Some(ep.clone());
            cfg.path_style = true;
        }
        // Events are handled within one Lambda invocation (15 minutes at most); fail a request
        // well before the function is killed, so the error is logged and the event retried.
        cfg.operation_timeout = std::time::Duration::from_secs(10 * 60);
        cfg.validate().map_err(|e| ConfigError(format!("bucket {bucket}: {e}")))
    }
}

/// The account id in a Lambda function ARN (`arn:aws:lambda:REGION:ACCOUNT:function:NAME`).
pub fn account_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    let (arn_, _partition, service, _region, account) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = arn_ == "arn" && service == "lambda" && account.len() == 12 && account.chars().all(|c| c.is_ascii_digit());
    ok.then_some(account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_vars("verify-upload", |k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        let s = from(&[]).unwrap();
        assert_eq!(s, Settings::new("verify-upload"));
        assert_eq!(s.agent_ttl, Duration::seconds(600));
        let s = from(&[
            ("S3DOCK_BUCKET", "my-images"),
            ("S3DOCK_PREFIX", "/team a/x+y"),
            ("S3DOCK_AGENT_TTL_SECONDS", "90"),
            ("S3DOCK_S3_ENDPOINT", "http://127.0.0.1:4566"),
            ("S3DOCK_SQS_ENDPOINT", "http://127.0.0.1:4566"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("S3DOCK_ACCOUNT_ID", "000000000000"),
            ("AWS_LAMBDA_FUNCTION_NAME", "s3dock-verify"),
            ("S3DOCK_IGNORED", "x"),
        ])
        .unwrap();
        assert_eq!(s.bucket.as_deref(), Some("my-images"));
        assert_eq!(s.prefix, "team a/x+y/");
        assert_eq!(s.agent_ttl, Duration::seconds(90));
        assert_eq!((s.region.as_str(), s.account_id.as_deref()), ("eu-west-1", Some("000000000000")));
        assert_eq!(s.function_name, "s3dock-verify");
        let cfg = s.s3_config("my-images").unwrap();
        assert!(cfg.path_style && cfg.endpoint.as_deref() == Some("http://127.0.0.1:4566"));
        assert_eq!(
            from(&[("AWS_REGION", "ap-south-1"), ("AWS_DEFAULT_REGION", "eu-west-1")]).unwrap().region,
            "ap-south-1"
        );
        assert_eq!(from(&[("S3DOCK_BUCKET", "  ")]).unwrap().bucket, None, "empty counts as unset");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("S3DOCK_BUCKET", "My_Bucket"),
            ("S3DOCK_PREFIX", "a/../b"),
            ("S3DOCK_AGENT_TTL_SECONDS", "10m"),
            ("S3DOCK_AGENT_TTL_SECONDS", "0"),
            ("S3DOCK_S3_ENDPOINT", "127.0.0.1:4566"),
            ("S3DOCK_SQS_ENDPOINT", "http://u:p@127.0.0.1:4566"),
            ("S3DOCK_ACCOUNT_ID", "12345"),
        ] {
            let e = from(&[(k, v)]).unwrap_err();
            assert!(e.0.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn account_from_the_function_arn() {
        assert_eq!(account_of_arn("arn:aws:lambda:us-east-1:123456789012:function:verify"), Some("123456789012"));
        assert_eq!(account_of_arn("arn:aws-cn:lambda:cn-north-1:123456789012:function:f:live"), Some("123456789012"));
        assert_eq!(account_of_arn("arn:aws:sqs:us-east-1:123456789012:q"), None);
        assert_eq!(account_of_arn("arn:aws:lambda:us-east-1:12345:function:f"), None);
        assert_eq!(account_of_arn(""), None);
    }
}
