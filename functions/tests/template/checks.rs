//! The invariants, one check per concern.

use super::*;

pub(crate) fn check_long_form(text: &str) -> Check {
    for (n, line) in text.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or("");
        if code.trim_start().starts_with('#') {
            continue;
        }
        let tagged = code.split_whitespace().any(|w| {
            let w = w.trim_start_matches(['[', '{', '-', ',']);
            w.starts_with('!') && w[1..].starts_with(|c: char| c.is_ascii_uppercase())
        });
        if tagged {
            return Err(format!("line {}: short-form intrinsic (YAML tag); use the long form: {line}", n + 1));
        }
    }
    Ok(())
}

/// The image bucket: the one named by the BucketName parameter.
pub(crate) fn image_bucket(stack: &Stack) -> Result<(String, Value), String> {
    let buckets = stack.of_type("AWS::S3::Bucket")?;
    let mut named = buckets.into_iter().filter(|(_, b)| b["Properties"]["BucketName"] == BUCKET);
    match (named.next(), named.next()) {
        (Some(b), None) => Ok(b),
        _ => Err("expected exactly one bucket named by the BucketName parameter".into()),
    }
}

pub(crate) fn check_bucket(raw: &Value) -> Check {
    let stack = Stack::new(raw, &param_sets()[1])?;
    let buckets = stack.of_type("AWS::S3::Bucket")?;
    let (image, _) = image_bucket(&stack)?;
    // The image bucket, and the delete trail's log bucket when there is one: nothing else.
    if buckets.len() > 2 || buckets.keys().any(|n| n != &image && n != "DeleteTrailBucket") {
        return Err(format!("unexpected buckets {:?}", buckets.keys().collect::<Vec<_>>()));
    }
    for (name, b) in &buckets {
        let p = &b["Properties"];
        if b["DeletionPolicy"] != "Retain" || b["UpdateReplacePolicy"] != "Retain" {
            return Err(format!("{name} must be retained when the stack is deleted or the bucket replaced"));
        }
        if p["VersioningConfiguration"]["Status"] != "Enabled" {
            return Err(format!("{name}: versioning must be enabled"));
        }
        let sse = &p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"];
        if !matches!(sse.as_str(), Some("AES256" | "aws:kms" | "aws:kms:dsse")) {
            return Err(format!("{name}: default encryption is not set ({sse})"));
        }
        let pab = &p["PublicAccessBlockConfiguration"];
        for k in ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"] {
            if pab[k] != true {
                return Err(format!("{name}: public access block {k} must be true"));
            }
        }
        if p["OwnershipControls"]["Rules"][0]["ObjectOwnership"] != "BucketOwnerEnforced" {
            return Err(format!("{name}: object ownership must be BucketOwnerEnforced (no ACLs)"));
        }
    }
    Ok(())
}

pub(crate) fn check_tls_only(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let found = statements(&stack)?.iter().any(|s| {
            !s.allow
                && s.principal == "*"
                && s.actions.iter().any(|a| a == "s3:*")
                && s.resources.contains(&stack.bucket_arn())
                && s.resources.contains(&format!("{}/*", stack.bucket_arn()))
                && (s.condition["Bool"]["aws:SecureTransport"] == "false"
                    || s.condition["Bool"]["aws:SecureTransport"] == false)
        });
        if !found {
            return Err("no bucket policy statement denies every request with aws:SecureTransport = false".into());
        }
    }
    Ok(())
}

pub(crate) fn check_lifecycle(raw: &Value) -> Check {
    for expiry in [None, Some(400)] {
        for mut params in param_sets() {
            params.archive_expiration = expiry;
            let stack = Stack::new(raw, &params)?;
            let (_, bucket) = image_bucket(&stack)?;
            let rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"].as_array().cloned().unwrap_or_default();
            let enabled: Vec<&Value> = rules.iter().filter(|r| r["Status"] == "Enabled").collect();
            let prefix_of = |r: &Value| r["Prefix"].as_str().unwrap_or("").to_owned();
            // Rules that apply to a key (relative to the key prefix).
            let applying = |key: &str| -> Vec<&Value> {
                let full = format!("{}{key}", stack.prefix);
                enabled.iter().copied().filter(|r| full.starts_with(&prefix_of(r))).collect()
            };
            let abort = enabled.iter().find(|r| r["AbortIncompleteMultipartUpload"].is_object());
            match abort {
                Some(r)
                    if r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
                        && prefix_of(r) == stack.prefix => {}
                _ => {
                    return Err(
                        "no rule aborts incomplete multipart uploads after 1 day for the whole key prefix".into()
                    );
                }
            }
            if !applying(ARCHIVE_KEY).iter().any(|r| r["Transitions"].as_array().is_some_and(|t| !t.is_empty())) {
                return Err("no rule moves archive/ to a cheaper storage class".into());
            }
            if !applying(PROBE_KEY).iter().any(|r| r["ExpirationInDays"] == 1) {
                return Err("no rule expires the conditional-write probes after 1 day".into());
            }
            for key in [IMAGE_KEY, TAG_KEY, POINTER_KEY] {
                if !applying(key).iter().any(|r| r["NoncurrentVersionExpiration"]["NoncurrentDays"].is_number()) {
                    return Err(format!("old versions of {key} are never expired"));
                }
                if applying(key).iter().any(|r| r["ExpirationInDays"].is_number() || r["ExpirationDate"].is_string()) {
                    return Err(format!("a lifecycle rule expires live state ({key})"));
                }
            }
            // Nothing s3dock keeps forever is ever expired, current or old versions.
            let expires = |r: &&Value| {
                r["ExpirationInDays"].is_number()
                    || r["NoncurrentVersionExpiration"].is_object()
                    || r["ExpirationDate"].is_string()
            };
            if let Some(r) = applying(AUDIT_KEY).into_iter().find(expires) {
                return Err(format!("a lifecycle rule expires the audit trail: {r}"));
            }
            let archive_expiring = applying(ARCHIVE_KEY).into_iter().find(expires);
            match (expiry, archive_expiring) {
                (None, Some(r)) => return Err(format!("archive/ expires although ArchiveExpirationDays is 0: {r}")),
                (Some(d), Some(r)) if r["ExpirationInDays"] != d => {
                    return Err(format!("archive/ expiry is not ArchiveExpirationDays: {r}"));
                }
                (Some(_), None) => return Err("ArchiveExpirationDays is set but nothing expires archive/".into()),
                _ => {}
            }
        }
    }
    Ok(())
}

pub(crate) fn queues(stack: &Stack) -> Result<(BTreeMap<String, Value>, BTreeSet<String>), String> {
    let queues = stack.of_type("AWS::SQS::Queue")?;
    let mut dlqs = BTreeSet::new();
    for q in queues.values() {
        if let Some(t) = q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"].as_str() {
            dlqs.insert(t.to_owned());
        }
    }
    Ok((queues, dlqs))
}

pub(crate) fn check_queues(raw: &Value) -> Check {
    let stack = Stack::new(raw, &param_sets()[0])?;
    let (queues, dlqs) = queues(&stack)?;
    // The event queues are the functions' triggers; every other queue must be a DLQ.
    let triggers: BTreeSet<String> = functions(&stack)?.into_iter().map(|f| f.queue).collect();
    let (events, others): (Vec<_>, Vec<_>) =
        queues.iter().partition(|(name, _)| triggers.contains(&stack.queue_arn(name)));
    if events.len() != 3 {
        return Err(format!("expected one event queue per function, found {}", events.len()));
    }
    for (name, q) in events.iter().chain(&others) {
        let p = &q["Properties"];
        if p["SqsManagedSseEnabled"] != true && !p["KmsMasterKeyId"].is_string() {
            return Err(format!("{name}: server-side encryption is off"));
        }
    }
    for (name, q) in &events {
        let rp = &q["Properties"]["RedrivePolicy"];
        let target = rp["deadLetterTargetArn"]
            .as_str()
            .ok_or_else(|| format!("{name}: no RedrivePolicy to a dead-letter queue"))?;
        let target_name = target.rsplit(':').next().unwrap_or_default();
        if !queues.contains_key(target_name) || triggers.contains(target) {
            return Err(format!("{name}: dead-letter target {target} is not a dead-letter queue of this stack"));
        }
        match rp["maxReceiveCount"].as_u64() {
            Some(1..=10) => {}
            other => return Err(format!("{name}: maxReceiveCount {other:?} is not between 1 and 10")),
        }
    }
    for (name, q) in &others {
        let p = &q["Properties"];
        if !dlqs.contains(&stack.queue_arn(name)) {
            return Err(format!("{name} is neither an event queue nor the dead-letter queue of one"));
        }
        if p["MessageRetentionPeriod"] != 1_209_600 {
            return Err(format!("{name}: a dead-letter queue keeps messages 14 days (1209600 s)"));
        }
        if p.get("RedrivePolicy").is_some() {
            return Err(format!("{name}: a dead-letter queue has no dead-letter queue of its own"));
        }
    }
    // Every DLQ serves one queue only, so a message in it names its function.
    if dlqs.len() != events.len() {
        return Err("two event queues share a dead-letter queue".into());
    }
    Ok(())
}

pub(crate) fn allowed_timeouts(raw: &Value) -> Result<Vec<u64>, String> {
    let v = raw["Parameters"]["FunctionTimeout"]["AllowedValues"]
        .as_array()
        .ok_or("FunctionTimeout needs AllowedValues (the visibility mapping covers exactly those)")?;
    v.iter().map(|x| scalar(x)?.parse::<u64>().map_err(|e| e.to_string())).collect()
}

pub(crate) fn check_visibility(raw: &Value) -> Check {
    for t in allowed_timeouts(raw)? {
        let mut params = param_sets()[0].clone();
        params.timeout = Some(t);
        let stack = Stack::new(raw, &params)?;
        for (name, f) in stack.of_type("AWS::Serverless::Function")? {
            if scalar(&f["Properties"]["Timeout"])? != t.to_string() {
                return Err(format!("{name}: Timeout is not the FunctionTimeout parameter"));
            }
        }
        for (name, q) in queues(&stack)?.0 {
            let v: u64 = scalar(&q["Properties"]["VisibilityTimeout"])?
                .parse()
                .map_err(|_| format!("{name}: no VisibilityTimeout"))?;
            if v < 6 * t {
                return Err(format!("{name}: VisibilityTimeout {v} s is less than 6 x the function timeout {t} s"));
            }
            if v > 43_200 {
                return Err(format!("{name}: VisibilityTimeout {v} s exceeds SQS's 12 hours"));
            }
        }
    }
    Ok(())
}

pub(crate) fn check_notifications(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let (_, bucket) = image_bucket(&stack)?;
        let configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut seen = BTreeMap::new();
        for c in &configs {
            let rules = c["Filter"]["S3Key"]["Rules"].as_array().cloned().unwrap_or_default();
            let rule = |n: &str| {
                rules.iter().find(|r| r["Name"] == n).and_then(|r| r["Value"].as_str()).unwrap_or("").to_owned()
            };
            if c["Event"] != "s3:ObjectCreated:*" {
                return Err(format!("notification for {} instead of s3:ObjectCreated:*", c["Event"]));
            }
            seen.insert((rule("prefix"), rule("suffix")), c["Queue"].as_str().unwrap_or("").to_owned());
        }
        for (folder, queue) in
            [("images/", "VerifyUploadQueue"), ("tags/", "RecordTagQueue"), ("pointers/", "PromotionFanoutQueue")]
        {
            let key = (format!("{}{folder}", stack.prefix), ".json".to_owned());
            if seen.get(&key) != Some(&stack.queue_arn(queue)) {
                return Err(format!("no notification {key:?} -> {queue}"));
            }
        }
        if seen.len() != 3 {
            return Err(format!("expected 3 notification configurations, found {seen:?}"));
        }
        // Only this bucket of this account may send to the event queues.
        let sends: Vec<Statement> = statements(&stack)?
            .into_iter()
            .filter(|s| s.actions.iter().any(|a| a == "sqs:SendMessage") && !s.principal.is_null())
            .collect();
        for queue in ["VerifyUploadQueue", "RecordTagQueue", "PromotionFanoutQueue"] {
            let arn = stack.queue_arn(queue);
            let ok = sends.iter().any(|s| {
                s.allow
                    && s.principal["Service"] == "s3.amazonaws.com"
                    && s.resources.contains(&arn)
                    && (s.condition["ArnEquals"]["aws:SourceArn"] == stack.bucket_arn()
                        || s.condition["ArnLike"]["aws:SourceArn"] == stack.bucket_arn())
                    && s.condition["StringEquals"]["aws:SourceAccount"] == ACCOUNT
            });
            if !ok {
                return Err(format!(
                    "{queue}: no queue policy lets exactly this bucket (aws:SourceArn + aws:SourceAccount) send"
                ));
            }
            if sends
                .iter()
                .any(|s| s.allow && s.resources.contains(&arn) && s.principal != json!({"Service": "s3.amazonaws.com"}))
            {
                return Err(format!("{queue}: its queue policy lets another principal send"));
            }
        }
    }
    Ok(())
}

/// Each function, its binary, its trigger queue and the role it runs as.
pub(crate) struct Function {
    pub(crate) name: String,
    pub(crate) binary: String,
    pub(crate) queue: String,
    pub(crate) role: String,
    pub(crate) log_group: String,
    pub(crate) env: Value,
}

pub(crate) fn functions(stack: &Stack) -> Result<Vec<Function>, String> {
    let mut out = Vec::new();
    for (name, f) in stack.of_type("AWS::Serverless::Function")? {
        let p = &f["Properties"];
        let expect = |k: &str, v: Value| -> Check {
            if p[k] != v { Err(format!("{name}: {k} must be {v}, is {}", p[k])) } else { Ok(()) }
        };
        expect("Runtime", json!("provided.al2023"))?;
        expect("Architectures", json!(["x86_64"]))?;
        expect("Handler", json!("bootstrap"))?;
        if f["Metadata"]["BuildMethod"] != "rust-cargolambda" {
            return Err(format!("{name}: Metadata.BuildMethod must be rust-cargolambda"));
        }
        let binary = f["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .ok_or_else(|| format!("{name}: no BuildProperties.Binary"))?
            .to_owned();
        let events: Vec<&Value> = p["Events"].as_object().map(|o| o.values().collect()).unwrap_or_default();
        let [event] = events[..] else {
            return Err(format!("{name}: expected exactly one event source, found {}", events.len()));
        };
        if event["Type"] != "SQS" {
            return Err(format!("{name}: the trigger must be its SQS queue (S3 -> SQS -> Lambda)"));
        }
        let ep = &event["Properties"];
        if !strings(&ep["FunctionResponseTypes"]).contains(&"ReportBatchItemFailures".to_owned()) {
            return Err(format!("{name}: the SQS event needs FunctionResponseTypes [ReportBatchItemFailures]"));
        }
        match ep["BatchSize"].as_u64() {
            Some(1..=10) => {}
            other => {
                return Err(format!(
                    "{name}: BatchSize {other:?} (1 to 10: batching windows and partial failures stay simple)"
                ));
            }
        }
        let role_arn = p["Role"].as_str().ok_or_else(|| format!("{name}: no Role of its own"))?;
        let role = role_arn
            .strip_prefix(&format!("arn:aws:iam::{ACCOUNT}:role/"))
            .ok_or_else(|| format!("{name}: Role {role_arn} is not a role of this stack"))?;
        let log_group =
            scalar(&p["LoggingConfig"]["LogGroup"]).map_err(|_| format!("{name}: no LoggingConfig.LogGroup"))?;
        out.push(Function {
            name,
            binary,
            queue: ep["Queue"].as_str().unwrap_or("").to_owned(),
            role: role.to_owned(),
            log_group,
            env: p["Environment"]["Variables"].clone(),
        });
    }
    Ok(out)
}

pub(crate) fn check_functions(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let fns = functions(&stack)?;
        let binaries: BTreeSet<&str> = fns.iter().map(|f| f.binary.as_str()).collect();
        let expected: BTreeSet<&str> = ["verify-upload", "record-tag", "promotion-fanout"].into();
        if binaries != expected || fns.len() != 3 {
            return Err(format!("expected one function per binary {expected:?}, found {binaries:?}"));
        }
        let roles: BTreeSet<&str> = fns.iter().map(|f| f.role.as_str()).collect();
        if roles.len() != fns.len() {
            return Err("each function needs a role of its own".into());
        }
        let (_, dlqs) = queues(&stack)?;
        let log_groups = stack.of_type("AWS::Logs::LogGroup")?;
        for f in &fns {
            // The binary exists in functions/Cargo.toml.
            if !CARGO_TOML.contains(&format!("name = \"{}\"", f.binary)) {
                return Err(format!("{}: functions/Cargo.toml has no binary {}", f.name, f.binary));
            }
            if dlqs.contains(&f.queue) || !f.queue.starts_with("arn:aws:sqs:") {
                return Err(format!("{}: triggered by {} instead of its event queue", f.name, f.queue));
            }
            if !log_groups.values().any(|g| {
                g["Properties"]["LogGroupName"] == f.log_group.as_str()
                    && g["Properties"]["RetentionInDays"].is_number()
            }) {
                return Err(format!(
                    "{}: logs to {} which is no log group of this stack with a retention",
                    f.name, f.log_group
                ));
            }
            let env = f.env.as_object().ok_or_else(|| format!("{}: no environment", f.name))?;
            if env.get("S3DOCK_BUCKET") != Some(&json!(BUCKET))
                || env.get("S3DOCK_PREFIX") != Some(&json!(stack.prefix))
            {
                return Err(format!("{}: S3DOCK_BUCKET / S3DOCK_PREFIX are not the stack's bucket and prefix", f.name));
            }
            for k in env.keys() {
                if !SETTINGS_RS.contains(&format!("\"{k}\"")) {
                    return Err(format!("{}: {k} is not a variable functions/src/settings.rs reads", f.name));
                }
            }
            if f.binary == "promotion-fanout" && env.get("S3DOCK_AGENT_TTL_SECONDS").is_none() {
                return Err("promotion-fanout: S3DOCK_AGENT_TTL_SECONDS is not set from AgentTtlSeconds".into());
            }
        }
    }
    Ok(())
}

/// No wildcard actions, no `*` resources, nothing outside this bucket and account.
pub(crate) fn check_no_wildcards(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        // The delete trail's own log bucket, when AuditDeletes adds it.
        let trail_bucket = match stack.resources()?.get("DeleteTrailBucket") {
            Some(_) => Some(scalar(&stack.get_att("DeleteTrailBucket", "Arn")?)?),
            None => None,
        };
        let in_trail_bucket =
            |r: &str| trail_bucket.as_deref().is_some_and(|b| r == b || r.starts_with(&format!("{b}/")));
        for s in statements(&stack)? {
            let who = format!("{} {}", s.owner, s.sid);
            if !s.allow {
                // The only Denies are the buckets' TLS rules, which must cover every action.
                if s.owner != "BucketPolicy" && s.owner != "DeleteTrailBucketPolicy" {
                    return Err(format!("{who}: Deny statements belong in the bucket policy"));
                }
                continue;
            }
            if let Some(a) = s.actions.iter().find(|a| a.contains('*')) {
                return Err(format!("{who}: wildcard action {a}"));
            }
            if s.actions.is_empty() || s.resources.is_empty() {
                return Err(format!("{who}: a statement without actions or resources"));
            }
            for r in &s.resources {
                if r == "*" {
                    return Err(format!("{who}: Resource \"*\""));
                }
                let ok = r == &stack.bucket_arn()
                    || r.starts_with(&format!("{}/", stack.bucket_arn()))
                    || r.starts_with(&format!("arn:aws:sqs:{REGION}:{ACCOUNT}:"))
                    || r.starts_with(&format!("arn:aws:sns:{REGION}:{ACCOUNT}:"))
                    || r.starts_with(&format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:"))
                    || (s.owner == "DeleteTrailBucketPolicy" && in_trail_bucket(r));
                if !ok {
                    return Err(format!(
                        "{who}: resource {r} is not this bucket, this account's queues, topics or log groups"
                    ));
                }
                if r.starts_with("arn:aws:s3:::")
                    && !r.starts_with(&format!("arn:aws:s3:::{BUCKET}"))
                    && !in_trail_bucket(r)
                {
                    return Err(format!("{who}: S3 resource {r} is not this bucket"));
                }
            }
            // Principals of resource policies: AWS services only, each held to this account.
            if !s.principal.is_null() {
                let service = s.principal["Service"].as_str().unwrap_or_default();
                if !service.ends_with(".amazonaws.com") {
                    return Err(format!("{who}: principal {} is not an AWS service", s.principal));
                }
                let scoped = !s.condition["StringEquals"]["aws:SourceArn"].is_null()
                    || !s.condition["ArnEquals"]["aws:SourceArn"].is_null()
                    || s.condition["StringEquals"]["aws:SourceAccount"] == ACCOUNT;
                if !scoped {
                    return Err(format!(
                        "{who}: {service} may act for any account (add aws:SourceArn or aws:SourceAccount)"
                    ));
                }
            }
            for a in &s.actions {
                let service = a.split(':').next().unwrap_or_default();
                let fits = s.resources.iter().all(|r| match service {
                    "s3" => r.starts_with("arn:aws:s3:::"),
                    "sqs" => r.starts_with("arn:aws:sqs:"),
                    "sns" => r.starts_with("arn:aws:sns:"),
                    "logs" => r.starts_with("arn:aws:logs:"),
                    _ => false,
                });
                if !fits {
                    return Err(format!("{who}: {a} on {:?}", s.resources));
                }
            }
        }
    }
    Ok(())
}

/// The grants of each function's role, exactly: the S3 calls of `s3dock_core::events` and the
/// S3 store (a HEAD needs s3:GetObject; a HEAD or GET of a missing key needs s3:ListBucket to
/// answer 404; CopyObject needs s3:GetObject on the source and s3:PutObject on the target; a
/// multipart copy's abort s3:AbortMultipartUpload), plus logs and the trigger queue.
pub(crate) fn check_function_roles(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        for f in functions(&stack)? {
            let s3: &[(&str, &str)] = match f.binary.as_str() {
                // verify_upload: get the metadata (event version) and the .tar.gz; head the push
                // audit key; reject: head, copy to archive/ (head of the target), delete; audit.
                // Before deleting a rejected image: its references (tags, pointers, agents) and
                // the delete lease (written, holds listed, removed).
                "verify-upload" => &[
                    ("s3:GetObject", "images/*"),
                    ("s3:GetObjectVersion", "images/*"),
                    ("s3:GetObject", "audit/*"),
                    ("s3:GetObject", "archive/*"),
                    ("s3:PutObject", "audit/*"),
                    ("s3:PutObject", "archive/*"),
                    ("s3:AbortMultipartUpload", "archive/*"),
                    ("s3:DeleteObject", "images/*"),
                    ("s3:GetObject", "tags/*"),
                    ("s3:GetObject", "pointers/*"),
                    ("s3:GetObject", "agents/*"),
                    ("s3:GetObject", "leases/*"),
                    ("s3:PutObject", "leases/*"),
                    ("s3:DeleteObject", "leases/*"),
                    ("s3:ListBucket", "list:images/*"),
                    ("s3:ListBucket", "list:audit/*"),
                    ("s3:ListBucket", "list:archive/*"),
                    ("s3:ListBucket", "list:tags/*"),
                    ("s3:ListBucket", "list:pointers/*"),
                    ("s3:ListBucket", "list:agents/*"),
                    ("s3:ListBucket", "list:leases/*"),
                ],
                // record_tag: get the tag (event version); find_metadata: head + list images/APP/;
                // reject: the pointers that follow the tag, a multipart copy to archive/ (aborted
                // on failure), delete the tag; audit (read back after a lost response).
                "record-tag" => &[
                    ("s3:GetObject", "tags/*"),
                    ("s3:GetObjectVersion", "tags/*"),
                    ("s3:GetObject", "images/*"),
                    ("s3:GetObject", "archive/*"),
                    ("s3:GetObject", "audit/*"),
                    ("s3:GetObject", "pointers/*"),
                    ("s3:PutObject", "audit/*"),
                    ("s3:PutObject", "archive/*"),
                    ("s3:AbortMultipartUpload", "archive/*"),
                    ("s3:DeleteObject", "tags/*"),
                    ("s3:ListBucket", "list:images/*"),
                    ("s3:ListBucket", "list:tags/*"),
                    ("s3:ListBucket", "list:archive/*"),
                    ("s3:ListBucket", "list:audit/*"),
                    ("s3:ListBucket", "list:pointers/*"),
                ],
                // fan_out_promotion: get the pointer (event version and current), resolve_doc
                // through tags, find_metadata (head + list images/APP/), list and read
                // agents/APP/ENV/, audit (the claim).
                "promotion-fanout" => &[
                    ("s3:GetObject", "pointers/*"),
                    ("s3:GetObjectVersion", "pointers/*"),
                    ("s3:GetObject", "tags/*"),
                    ("s3:GetObject", "agents/*"),
                    ("s3:GetObject", "images/*"),
                    ("s3:PutObject", "audit/*"),
                    ("s3:ListBucket", "list:pointers/*"),
                    ("s3:ListBucket", "list:tags/*"),
                    ("s3:ListBucket", "list:agents/*"),
                    ("s3:ListBucket", "list:images/*"),
                    ("s3:GetObject", "audit/*"),
                    ("s3:ListBucket", "list:audit/*"),
                ],
                other => return Err(format!("no expected grants for binary {other}")),
            };
            let mut expected = set(s3);
            let log_arn = format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{}:*", f.log_group);
            for a in ["logs:CreateLogStream", "logs:PutLogEvents"] {
                expected.insert((a.into(), log_arn.clone()));
            }
            for a in ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"] {
                expected.insert((a.into(), f.queue.clone()));
            }
            if f.binary == "promotion-fanout" {
                expected.insert(("sqs:SendMessage".into(), stack.queue_arn(&format!("{STACK_NAME}_agent-*"))));
            }
            diff(&f.role, &grants(&stack, &f.role)?, &expected)?;
        }
    }
    Ok(())
}

pub(crate) fn check_outputs(raw: &Value) -> Check {
    let stack = Stack::new(raw, &param_sets()[1])?;
    let outputs = stack.eval_some(&raw["Outputs"])?;
    let want = [
        "BucketName",
        "BucketArn",
        "VerifyUploadQueueUrl",
        "VerifyUploadDeadLetterQueueUrl",
        "RecordTagQueueUrl",
        "RecordTagDeadLetterQueueUrl",
        "PromotionFanoutQueueUrl",
        "PromotionFanoutDeadLetterQueueUrl",
        "PusherPolicyArn",
        "MaintainerPolicyArn",
        "PromoterPolicyArn",
        "AgentPolicyArn",
        "AgentQueuePrefix",
        "CliProfile",
    ];
    for k in want {
        if outputs[k]["Value"].is_null() {
            return Err(format!("no output {k}"));
        }
    }
    if outputs["AgentQueuePrefix"]["Value"] != format!("{STACK_NAME}_agent-") {
        return Err(format!(
            "AgentQueuePrefix is {}, not the prefix the policies use",
            outputs["AgentQueuePrefix"]["Value"]
        ));
    }
    let profile = outputs["CliProfile"]["Value"].as_str().unwrap_or_default();
    for line in
        [format!("store = \"s3://{BUCKET}/team-a/\""), "events = \"lambda\"".into(), format!("region = \"{REGION}\"")]
    {
        if !profile.contains(&line) {
            return Err(format!("CliProfile lacks {line}: {profile}"));
        }
    }
    Ok(())
}

/// Every check of the policy suite (checkov, run by infra/validate.sh) that the template skips
/// names its id and says why, next to the resource it concerns.
pub(crate) fn check_policy_suite_skips(raw: &Value) -> Check {
    let resources = raw["Resources"].as_object().ok_or("no Resources")?;
    for (name, r) in resources {
        let Some(skips) = r["Metadata"].get("checkov") else { continue };
        let list = skips["skip"].as_array().ok_or_else(|| format!("{name}: Metadata.checkov.skip must be a list"))?;
        if skips.as_object().is_some_and(|o| o.len() != 1) || list.is_empty() {
            return Err(format!("{name}: Metadata.checkov holds skips only, at least one"));
        }
        for s in list {
            let id = s["id"].as_str().unwrap_or_default();
            let why = s["comment"].as_str().unwrap_or_default();
            if !id.starts_with("CKV_") || why.split_whitespace().count() < 12 {
                return Err(format!("{name}: skipped check {id:?} needs its id and a reason of a sentence or more"));
            }
        }
    }
    Ok(())
}

pub(crate) fn all_checks() -> Vec<(&'static str, CheckFn)> {
    vec![
        ("bucket", check_bucket),
        ("tls only", check_tls_only),
        ("lifecycle", check_lifecycle),
        ("queues", check_queues),
        ("visibility", check_visibility),
        ("notifications", check_notifications),
        ("functions", check_functions),
        ("no wildcards", check_no_wildcards),
        ("function roles", check_function_roles),
        ("pusher", check_pusher),
        ("maintainer", check_maintainer),
        ("promoter", check_promoter),
        ("agent", check_agent),
        ("audit writers", check_audit_writers),
        ("policy names", check_policy_names),
        ("alarms", check_alarms),
        ("delete trail", check_delete_trail),
        ("outputs", check_outputs),
        ("policy suite skips", check_policy_suite_skips),
    ]
}
