//! IAM: policy statements, flattened, and how IAM matches them.

use super::*;

/// IAM's wildcard match: `*` any run of characters (`/` included), `?` one character.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let mut m = vec![vec![false; t.len() + 1]; p.len() + 1];
    m[0][0] = true;
    for i in 1..=p.len() {
        m[i][0] = m[i - 1][0] && p[i - 1] == '*';
        for j in 1..=t.len() {
            m[i][j] = match p[i - 1] {
                '*' => m[i - 1][j] || m[i][j - 1],
                '?' => m[i - 1][j - 1],
                c => m[i - 1][j - 1] && c == t[j - 1],
            };
        }
    }
    m[p.len()][t.len()]
}

// ------------------------------------------------------------------ policies

/// One policy statement, flattened.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    /// The resource that holds it (role, managed policy, bucket or queue policy).
    pub(crate) owner: String,
    pub(crate) sid: String,
    pub(crate) allow: bool,
    pub(crate) actions: Vec<String>,
    pub(crate) resources: Vec<String>,
    pub(crate) principal: Value,
    pub(crate) condition: Value,
}

/// What IAM knows about a request besides its action and resource: condition keys
/// (`s3:if-none-match`, `s3:ObjectCreationOperation`, `aws:PrincipalTag/KEY`) and their values.
pub(crate) type Context = BTreeMap<String, String>;

pub(crate) const IF_NONE_MATCH: &str = "s3:if-none-match";
pub(crate) const IF_MATCH: &str = "s3:if-match";
pub(crate) const CREATION: &str = "s3:ObjectCreationOperation";
pub(crate) const AGENT_TAG: &str = "aws:PrincipalTag/s3dock-agent-id";

pub(crate) fn ctx(pairs: &[(&str, &str)]) -> Context {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Every shape of request S3 authorizes as `s3:PutObject`, by the condition keys it carries.
/// S3 sets `s3:ObjectCreationOperation` to true for the calls that make an object appear
/// (PutObject, CopyObject, CompleteMultipartUpload) and to false for CreateMultipartUpload,
/// UploadPart and UploadPartCopy, which take no conditional header.
pub(crate) fn put_shapes() -> Vec<(&'static str, Context)> {
    vec![
        ("an unconditional PutObject, CopyObject or CompleteMultipartUpload", ctx(&[(CREATION, "true")])),
        (
            "a PutObject or CompleteMultipartUpload with If-None-Match: *",
            ctx(&[(CREATION, "true"), (IF_NONE_MATCH, "*")]),
        ),
        ("a PutObject or CompleteMultipartUpload with If-Match", ctx(&[(CREATION, "true"), (IF_MATCH, "\"e1\"")])),
        ("a CreateMultipartUpload, UploadPart or UploadPartCopy", ctx(&[(CREATION, "false")])),
    ]
}

/// The request shapes of `action`: the PutObject shapes, or one without condition keys.
pub(crate) fn shapes(action: &str) -> Vec<(&'static str, Context)> {
    if action == "s3:PutObject" { put_shapes() } else { vec![("a request", Context::new())] }
}

/// Fills in policy variables (`${aws:PrincipalTag/KEY}`) from the context; `None` when one is
/// missing, which leaves the statement unmatched, as IAM does.
fn substitute(pattern: &str, c: &Context) -> Result<Option<String>, String> {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').ok_or_else(|| format!("unclosed ${{ in {pattern}"))? + i;
        let name = &rest[i + 2..end];
        if !name.starts_with("aws:") {
            return Err(format!("unknown policy variable ${{{name}}} in {pattern}"));
        }
        match c.get(name) {
            Some(v) => out.push_str(v),
            None => return Ok(None),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// Whether a statement's `Condition` holds in the context. Only the operators this template
/// uses are known; any other fails the test rather than being guessed.
pub(crate) fn condition_holds(cond: &Value, c: &Context) -> Result<bool, String> {
    let Some(ops) = cond.as_object() else {
        return if cond.is_null() { Ok(true) } else { Err(format!("a Condition that is not a map: {cond}")) };
    };
    for (op, tests) in ops {
        let tests = tests.as_object().ok_or_else(|| format!("{op} takes a map: {tests}"))?;
        for (key, want) in tests {
            let wants = strings(want);
            if wants.is_empty() {
                return Err(format!("{op} {key}: no value"));
            }
            let have = c.get(key);
            let ok = match op.as_str() {
                "Null" => match wants[..] {
                    [ref w] if w == "true" => have.is_none(),
                    [ref w] if w == "false" => have.is_some(),
                    _ => return Err(format!("Null {key} takes \"true\" or \"false\"")),
                },
                "Bool" => have.is_some_and(|h| wants.iter().any(|w| w.eq_ignore_ascii_case(h))),
                "StringEquals" | "ArnEquals" => have.is_some_and(|h| wants.iter().any(|w| w == h)),
                "StringLike" | "ArnLike" => have.is_some_and(|h| wants.iter().any(|w| glob(w, h))),
                other => return Err(format!("the test does not know the condition operator {other}")),
            };
            if !ok {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl Statement {
    /// Whether this statement applies to the request (action, resource with its policy
    /// variables filled in, condition), whatever its effect.
    pub(crate) fn matches(&self, action: &str, resource: &str, c: &Context) -> Result<bool, String> {
        if !self.actions.iter().any(|a| glob(a, action)) {
            return Ok(false);
        }
        let mut hit = false;
        for r in &self.resources {
            if substitute(r, c)?.is_some_and(|r| glob(&r, resource)) {
                hit = true;
                break;
            }
        }
        if !hit {
            return Ok(false);
        }
        condition_holds(&self.condition, c).map_err(|e| format!("{} {}: {e}", self.owner, self.sid))
    }

    /// Whether this statement allows `action` on `resource` in some request shape, for the
    /// agent `web-1`: what its holder can do at all (a deliberately generous reading, for
    /// checks that something is never possible).
    pub(crate) fn allows(&self, action: &str, resource: &str) -> bool {
        self.allow
            && shapes(action).into_iter().any(|(_, mut c)| {
                c.insert(AGENT_TAG.into(), "web-1".into());
                self.matches(action, resource, &c).unwrap_or(true)
            })
    }
}

/// IAM's decision for one request over the statements of one principal: an explicit Deny
/// wins, otherwise any Allow, otherwise the implicit deny.
pub(crate) fn decide(st: &[Statement], action: &str, resource: &str, c: &Context) -> Result<bool, String> {
    let mut allowed = false;
    for s in st {
        if s.matches(action, resource, c)? {
            if !s.allow {
                return Ok(false);
            }
            allowed = true;
        }
    }
    Ok(allowed)
}

/// The request shapes of `action` on `resource` that `st` allows, with `base` added to each.
pub(crate) fn allowed_shapes(
    st: &[Statement],
    action: &str,
    resource: &str,
    base: &Context,
) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for (name, mut c) in shapes(action) {
        c.extend(base.clone());
        if decide(st, action, resource, &c)? {
            out.push(name);
        }
    }
    Ok(out)
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    }
}

pub(crate) fn document_statements(owner: &str, doc: &Value) -> Result<Vec<Statement>, String> {
    let list = match &doc["Statement"] {
        Value::Array(a) => a.clone(),
        s @ Value::Object(_) => vec![s.clone()],
        other => return Err(format!("{owner}: a policy document without statements: {other}")),
    };
    let mut out = Vec::new();
    for s in list {
        for forbidden in ["NotAction", "NotResource", "NotPrincipal"] {
            if s.get(forbidden).is_some() {
                return Err(format!("{owner}: {forbidden} is not allowed (it grants by exclusion): {s}"));
            }
        }
        out.push(Statement {
            owner: owner.to_owned(),
            sid: s["Sid"].as_str().unwrap_or("").to_owned(),
            allow: match s["Effect"].as_str() {
                Some("Allow") => true,
                Some("Deny") => false,
                _ => return Err(format!("{owner}: statement without Effect Allow/Deny: {s}")),
            },
            actions: strings(&s["Action"]),
            resources: strings(&s["Resource"]),
            principal: s["Principal"].clone(),
            condition: s["Condition"].clone(),
        });
    }
    Ok(out)
}

/// Every permission statement of the stack (trust policies excepted).
pub(crate) fn statements(stack: &Stack) -> Result<Vec<Statement>, String> {
    let mut out = Vec::new();
    for (name, r) in stack.resources()? {
        let p = &r["Properties"];
        match r["Type"].as_str().unwrap_or_default() {
            "AWS::IAM::Role" => {
                for pol in p["Policies"].as_array().cloned().unwrap_or_default() {
                    out.extend(document_statements(&name, &pol["PolicyDocument"])?);
                }
                if p.get("ManagedPolicyArns").is_some() {
                    return Err(format!(
                        "{name}: AWS-managed policies cannot be checked here; write the statements inline"
                    ));
                }
            }
            "AWS::IAM::ManagedPolicy" | "AWS::S3::BucketPolicy" | "AWS::SQS::QueuePolicy" | "AWS::SNS::TopicPolicy" => {
                out.extend(document_statements(&name, &p["PolicyDocument"])?);
            }
            "AWS::IAM::Policy" | "AWS::IAM::UserPolicy" | "AWS::IAM::GroupPolicy" | "AWS::IAM::RolePolicy" => {
                return Err(format!(
                    "{name}: put policies in the role or a managed policy, where this test reads them"
                ));
            }
            "AWS::Serverless::Function" if p.get("Policies").is_some() => {
                return Err(format!("{name}: SAM policy templates hide the grants; give the function its own role"));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `(action, resource)` grants of one owner, with S3 ARNs made relative to the key prefix
/// (`images/*`) and the bucket's `s3:ListBucket` expanded to `list:PREFIX` per s3:prefix
/// condition value.
pub(crate) fn grants(stack: &Stack, owner: &str) -> Result<BTreeSet<(String, String)>, String> {
    let mut out = BTreeSet::new();
    let objects = format!("arn:aws:s3:::{BUCKET}/{}", stack.prefix);
    for s in statements(stack)?.into_iter().filter(|s| s.owner == owner) {
        if !s.allow {
            return Err(format!("{owner}: unexpected Deny {}", s.sid));
        }
        for a in &s.actions {
            for r in &s.resources {
                if a == "s3:ListBucket" {
                    if r != &stack.bucket_arn() {
                        return Err(format!("{owner}: s3:ListBucket on {r}"));
                    }
                    let prefixes = strings(&s.condition["StringLike"]["s3:prefix"]);
                    let others: Vec<&String> = s.condition.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                    if prefixes.is_empty() || others.len() != 1 {
                        return Err(format!("{owner}: s3:ListBucket without an s3:prefix condition ({})", s.condition));
                    }
                    for p in prefixes {
                        let rel = p
                            .strip_prefix(stack.prefix.as_str())
                            .ok_or_else(|| format!("{owner}: s3:prefix {p} outside the key prefix"))?;
                        out.insert((a.clone(), format!("list:{rel}")));
                    }
                } else if a.starts_with("s3:") {
                    let rel =
                        r.strip_prefix(&objects).ok_or_else(|| format!("{owner}: {a} on {r}, outside {objects}*"))?;
                    out.insert((a.clone(), rel.to_owned()));
                } else {
                    out.insert((a.clone(), r.clone()));
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items.iter().map(|(a, r)| (a.to_string(), r.to_string())).collect()
}

pub(crate) fn diff(owner: &str, actual: &BTreeSet<(String, String)>, expected: &BTreeSet<(String, String)>) -> Check {
    let extra: Vec<_> = actual.difference(expected).collect();
    let missing: Vec<_> = expected.difference(actual).collect();
    if extra.is_empty() && missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{owner}: grants differ from what the code needs; extra {extra:?}, missing {missing:?}"))
    }
}
