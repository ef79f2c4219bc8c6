//! Which queue URLs messages may go to ([`QueueRules`]), and the URL, region, account and
//! queue-name checks the client shares.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    https: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    pub(super) fn parse(url: &str) -> Result<Endpoint, String> {
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

pub(super) fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

pub(super) fn check_region(r: &str) -> Result<(), String> {
    let ok = r.len() <= 32
        && r.contains('-')
        && r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !r.starts_with('-')
        && !r.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{:?} is not a region name such as us-east-1", truncate(r))) }
}

pub(super) fn check_account(a: &str) -> Result<(), String> {
    if a.len() == 12 && a.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("{:?} is not a 12-digit AWS account id", truncate(a)))
    }
}

/// SQS queue names: 1-80 characters of letters, digits, `-` and `_`; FIFO queues end in
/// `.fifo` (counted in the 80).
pub(super) fn check_queue_name(name: &str) -> Result<(), String> {
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

    pub(super) fn with_endpoint(
        account_id: &str,
        region: &str,
        endpoint: Option<Endpoint>,
    ) -> Result<QueueRules, String> {
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
}
