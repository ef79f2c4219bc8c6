//! Invariants of the SAM template, `infra/template.yaml`.
//!
//! cfn-lint and `sam validate --lint` (run by `infra/validate.sh`) check that the template is
//! well-formed; this test checks what they cannot know: that the bucket keeps what s3dock
//! promises to keep, that events reach the functions with retries and a dead-letter queue, and
//! that every IAM grant is the one the code needs and no more (the expected grants below name
//! the call in `s3dock-core` each one is for). An IAM change must be made here and in the
//! template together.
//!
//! The template is parsed as plain YAML (it uses the long form of every intrinsic function) and
//! evaluated for concrete parameter values by a small interpreter of the intrinsic functions it
//! uses (`Ref`, `Fn::Sub`, `Fn::GetAtt`, `Fn::Join`, `Fn::Split`, `Fn::Select`, `Fn::If`,
//! `Fn::FindInMap`, conditions); anything else fails the test rather than being skipped. The
//! `mutations` module breaks a copy of the template in one way at a time and checks that the
//! matching assertion notices.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

const TEMPLATE: &str = include_str!("../../infra/template.yaml");
const CARGO_TOML: &str = include_str!("../Cargo.toml");
const SETTINGS_RS: &str = include_str!("../src/settings.rs");

const BUCKET: &str = "acme-images";
const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "111122223333";
const STACK_NAME: &str = "s3dock";

/// Sample keys, relative to the key prefix, one per part of the layout.
const IMAGE_KEY: &str = "images/myapp/202507/myapp-20250721-2118-f7a5a27.tar.gz";
const METADATA_KEY: &str = "images/myapp/202507/myapp-20250721-2118-f7a5a27.json";
const TAG_KEY: &str = "tags/myapp/v1.2.0.json";
const POINTER_KEY: &str = "pointers/myapp/production.json";
const PROBE_KEY: &str = "pointers/.probe/0123456789abcdef";
const AUDIT_KEY: &str = "audit/myapp/202507/20250721-1400-push-f7a5a27-9e107d9d.json";
/// The audit record of a deploy, as the agent writes it.
const DEPLOY_AUDIT_KEY: &str =
    "audit/myapp/202507/20250722-1018-deploy-f7a5a27-production-web-1-5f0c2a9b1d3e4f5a6b7c8d9e0f1a2b3c.json";
const ARCHIVE_KEY: &str = "archive/myapp/202507/myapp-20250721-2118-f7a5a27-archived-on-20250722-1018.tar.gz";
const AGENT_KEY: &str = "agents/myapp/production/web-1.json";

type Check = Result<(), String>;
type CheckFn = fn(&Value) -> Check;

fn raw_template() -> Value {
    serde_norway::from_str(TEMPLATE).expect("infra/template.yaml parses as YAML")
}

// ------------------------------------------------------------------ the interpreter

/// Parameter values for one evaluation; the template's defaults fill the rest.
#[derive(Debug, Clone)]
struct Params {
    prefix: String,
    envs: Vec<String>,
    timeout: Option<u64>,
    archive_expiration: Option<u64>,
}

impl Params {
    fn new(prefix: &str, envs: &[&str]) -> Params {
        Params {
            prefix: prefix.to_owned(),
            envs: envs.iter().map(|s| s.to_string()).collect(),
            timeout: None,
            archive_expiration: None,
        }
    }
}

/// The parameter sets most checks run under: no prefix with the default environments, and a
/// prefix with other environments.
fn param_sets() -> Vec<Params> {
    vec![Params::new("", &["staging", "production"]), Params::new("team-a/", &["qa", "production", "eu.prod-1"])]
}

/// The template evaluated for one set of parameters.
struct Stack<'a> {
    raw: &'a Value,
    params: BTreeMap<String, Value>,
    prefix: String,
}

fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a scalar, found {other}")),
    }
}

fn args<'v>(v: &'v Value, f: &str, n: usize) -> Result<&'v Vec<Value>, String> {
    match v {
        Value::Array(a) if a.len() == n => Ok(a),
        _ => Err(format!("{f} takes a list of {n} arguments: {v}")),
    }
}

impl<'a> Stack<'a> {
    fn new(raw: &'a Value, p: &Params) -> Result<Stack<'a>, String> {
        let mut params = BTreeMap::new();
        let decl = raw["Parameters"].as_object().ok_or("the template has no Parameters")?;
        for (name, d) in decl {
            let value = match name.as_str() {
                "BucketName" => json!(BUCKET),
                "KeyPrefix" => json!(p.prefix),
                "Environments" => json!(p.envs),
                "FunctionTimeout" if p.timeout.is_some() => json!(p.timeout),
                "ArchiveExpirationDays" if p.archive_expiration.is_some() => json!(p.archive_expiration),
                _ => match (&d["Default"], d["Type"].as_str()) {
                    (Value::Null, _) => return Err(format!("parameter {name} has no default")),
                    (v, Some("CommaDelimitedList")) => {
                        json!(scalar(v)?.split(',').map(str::to_owned).collect::<Vec<_>>())
                    }
                    (v, _) => v.clone(),
                },
            };
            params.insert(name.clone(), value);
        }
        Ok(Stack { raw, params, prefix: p.prefix.clone() })
    }

    fn resource_raw(&self, name: &str) -> Result<&'a Value, String> {
        self.raw["Resources"].get(name).ok_or_else(|| format!("no resource {name}"))
    }

    /// `Ref` of a resource: what CloudFormation returns for the types used here.
    fn ref_of(&self, name: &str) -> Result<Value, String> {
        let r = self.resource_raw(name)?;
        let prop = |p: &str| -> Result<Value, String> {
            self.eval(&r["Properties"][p])?.ok_or_else(|| format!("{name}.{p} is unset"))
        };
        Ok(match r["Type"].as_str().unwrap_or_default() {
            "AWS::S3::Bucket" => prop("BucketName")?,
            "AWS::SQS::Queue" => json!(format!("https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}")),
            "AWS::Logs::LogGroup" => prop("LogGroupName")?,
            "AWS::IAM::ManagedPolicy" => {
                json!(format!("arn:aws:iam::{ACCOUNT}:policy/s3dock/{}", scalar(&prop("ManagedPolicyName")?)?))
            }
            _ => json!(format!("ref:{name}")),
        })
    }

    fn get_att(&self, name: &str, attr: &str) -> Result<Value, String> {
        let r = self.resource_raw(name)?;
        Ok(match (r["Type"].as_str().unwrap_or_default(), attr) {
            ("AWS::S3::Bucket", "Arn") => json!(format!("arn:aws:s3:::{}", scalar(&self.ref_of(name)?)?)),
            ("AWS::SQS::Queue", "Arn") => json!(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")),
            ("AWS::SQS::Queue", "QueueName") => json!(name),
            ("AWS::Logs::LogGroup", "Arn") => {
                json!(format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{}:*", scalar(&self.ref_of(name)?)?))
            }
            ("AWS::IAM::Role", "Arn") => json!(format!("arn:aws:iam::{ACCOUNT}:role/{name}")),
            _ => json!(format!("getatt:{name}.{attr}")),
        })
    }

    fn var(&self, name: &str) -> Result<Value, String> {
        Ok(match name {
            "AWS::Partition" => json!("aws"),
            "AWS::Region" => json!(REGION),
            "AWS::AccountId" => json!(ACCOUNT),
            "AWS::StackName" => json!(STACK_NAME),
            "AWS::URLSuffix" => json!("amazonaws.com"),
            _ => match self.params.get(name) {
                Some(v) => v.clone(),
                None => self.ref_of(name)?,
            },
        })
    }

    fn sub(&self, text: &str, vars: &Map<String, Value>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').ok_or_else(|| format!("unclosed ${{ in {text:?}"))? + i;
            let name = &rest[i + 2..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(v) = vars.get(name) {
                out.push_str(&scalar(&self.eval(v)?.ok_or("Fn::Sub variable is NoValue")?)?);
            } else if let Some((res, attr)) = name.split_once('.') {
                out.push_str(&scalar(&self.get_att(res, attr)?)?);
            } else {
                out.push_str(&scalar(&self.var(name)?)?);
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn condition(&self, name: &str) -> Result<bool, String> {
        let c = self.raw["Conditions"].get(name).ok_or_else(|| format!("no condition {name}"))?;
        self.cond(c)
    }

    fn cond(&self, v: &Value) -> Result<bool, String> {
        let Some((f, a)) = v.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
            return Err(format!("not a condition: {v}"));
        };
        match f.as_str() {
            "Fn::Equals" => {
                let a = args(a, f, 2)?;
                let l = self.eval(&a[0])?.ok_or("Fn::Equals of NoValue")?;
                let r = self.eval(&a[1])?.ok_or("Fn::Equals of NoValue")?;
                Ok(scalar(&l)? == scalar(&r)?)
            }
            "Fn::Not" => Ok(!self.cond(&args(a, f, 1)?[0])?),
            "Fn::And" => {
                a.as_array().ok_or("Fn::And takes a list")?.iter().try_fold(true, |acc, c| Ok(acc && self.cond(c)?))
            }
            "Fn::Or" => {
                a.as_array().ok_or("Fn::Or takes a list")?.iter().try_fold(false, |acc, c| Ok(acc || self.cond(c)?))
            }
            "Condition" => self.condition(a.as_str().ok_or("Condition takes a name")?),
            other => Err(format!("{other} is not a condition function")),
        }
    }

    /// Evaluates a value; `None` is `AWS::NoValue` (the key or item is dropped).
    fn eval(&self, v: &Value) -> Result<Option<Value>, String> {
        match v {
            Value::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    if let Some(x) = self.eval(i)? {
                        out.push(x);
                    }
                }
                Ok(Some(Value::Array(out)))
            }
            Value::Object(o) if o.len() == 1 && o.keys().all(|k| k == "Ref" || k.starts_with("Fn::")) => {
                let (f, a) = o.iter().next().expect("one entry");
                self.intrinsic(f, a)
            }
            Value::Object(o) => {
                let mut out = Map::new();
                for (k, x) in o {
                    if let Some(x) = self.eval(x)? {
                        out.insert(k.clone(), x);
                    }
                }
                Ok(Some(Value::Object(out)))
            }
            other => Ok(Some(other.clone())),
        }
    }

    fn eval_some(&self, v: &Value) -> Result<Value, String> {
        self.eval(v)?.ok_or_else(|| format!("{v} is NoValue where a value is needed"))
    }

    fn intrinsic(&self, f: &str, a: &Value) -> Result<Option<Value>, String> {
        Ok(Some(match f {
            "Ref" => match a.as_str().ok_or("Ref takes a name")? {
                "AWS::NoValue" => return Ok(None),
                name => self.var(name)?,
            },
            "Fn::Sub" => match a {
                Value::String(s) => json!(self.sub(s, &Map::new())?),
                Value::Array(x) if x.len() == 2 => {
                    let text = x[0].as_str().ok_or("Fn::Sub's string must be a literal")?;
                    let vars = x[1].as_object().ok_or("Fn::Sub's variables must be a map")?;
                    json!(self.sub(text, vars)?)
                }
                _ => return Err(format!("bad Fn::Sub {a}")),
            },
            "Fn::GetAtt" => {
                let a = args(a, f, 2)?;
                self.get_att(a[0].as_str().ok_or("bad GetAtt")?, a[1].as_str().ok_or("bad GetAtt")?)?
            }
            "Fn::Join" => {
                let a = args(a, f, 2)?;
                let delim = a[0].as_str().ok_or("Fn::Join's delimiter must be a literal")?;
                let list = self.eval_some(&a[1])?;
                let parts: Vec<String> =
                    list.as_array().ok_or("Fn::Join needs a list")?.iter().map(scalar).collect::<Result<_, _>>()?;
                json!(parts.join(delim))
            }
            "Fn::Split" => {
                let a = args(a, f, 2)?;
                let delim = a[0].as_str().ok_or("Fn::Split's delimiter must be a literal")?;
                json!(scalar(&self.eval_some(&a[1])?)?.split(delim).collect::<Vec<_>>())
            }
            "Fn::Select" => {
                let a = args(a, f, 2)?;
                let i: usize = scalar(&self.eval_some(&a[0])?)?.parse().map_err(|_| "bad Fn::Select index")?;
                let list = self.eval_some(&a[1])?;
                list.as_array()
                    .and_then(|l| l.get(i))
                    .cloned()
                    .ok_or_else(|| format!("Fn::Select index {i} out of range of {list}"))?
            }
            "Fn::If" => {
                let a = args(a, f, 3)?;
                let c = self.condition(a[0].as_str().ok_or("Fn::If takes a condition name")?)?;
                return self.eval(&a[if c { 1 } else { 2 }]);
            }
            "Fn::FindInMap" => {
                let a = args(a, f, 3)?;
                let keys: Vec<String> =
                    a.iter().map(|k| self.eval_some(k).and_then(|v| scalar(&v))).collect::<Result<_, _>>()?;
                let v = &self.raw["Mappings"][&keys[0]][&keys[1]][&keys[2]];
                if v.is_null() {
                    return Err(format!("no mapping {keys:?}"));
                }
                v.clone()
            }
            other => return Err(format!("the test's interpreter does not know {other}")),
        }))
    }

    /// Every resource, evaluated, with its type.
    fn resources(&self) -> Result<BTreeMap<String, Value>, String> {
        let mut out = BTreeMap::new();
        for (name, r) in self.raw["Resources"].as_object().ok_or("no Resources")? {
            if let Some(cond) = r.get("Condition").and_then(Value::as_str)
                && !self.condition(cond)?
            {
                continue;
            }
            out.insert(name.clone(), self.eval(r).map_err(|e| format!("{name}: {e}"))?.unwrap_or_default());
        }
        Ok(out)
    }

    fn of_type(&self, ty: &str) -> Result<BTreeMap<String, Value>, String> {
        Ok(self.resources()?.into_iter().filter(|(_, r)| r["Type"] == ty).collect())
    }

    fn bucket_arn(&self) -> String {
        format!("arn:aws:s3:::{BUCKET}")
    }

    /// The ARN of an object, `key` relative to the prefix.
    fn object_arn(&self, key: &str) -> String {
        format!("arn:aws:s3:::{BUCKET}/{}{key}", self.prefix)
    }

    fn queue_arn(&self, name: &str) -> String {
        format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
    }
}

/// IAM's wildcard match: `*` any run of characters (`/` included), `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
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
struct Statement {
    /// The resource that holds it (role, managed policy, bucket or queue policy).
    owner: String,
    sid: String,
    allow: bool,
    actions: Vec<String>,
    resources: Vec<String>,
    principal: Value,
    condition: Value,
}

impl Statement {
    fn allows(&self, action: &str, resource: &str) -> bool {
        self.allow && self.actions.iter().any(|a| glob(a, action)) && self.resources.iter().any(|r| glob(r, resource))
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    }
}

fn document_statements(owner: &str, doc: &Value) -> Result<Vec<Statement>, String> {
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
fn statements(stack: &Stack) -> Result<Vec<Statement>, String> {
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
            "AWS::IAM::ManagedPolicy" | "AWS::S3::BucketPolicy" | "AWS::SQS::QueuePolicy" => {
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
fn grants(stack: &Stack, owner: &str) -> Result<BTreeSet<(String, String)>, String> {
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

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items.iter().map(|(a, r)| (a.to_string(), r.to_string())).collect()
}

fn diff(owner: &str, actual: &BTreeSet<(String, String)>, expected: &BTreeSet<(String, String)>) -> Check {
    let extra: Vec<_> = actual.difference(expected).collect();
    let missing: Vec<_> = expected.difference(actual).collect();
    if extra.is_empty() && missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{owner}: grants differ from what the code needs; extra {extra:?}, missing {missing:?}"))
    }
}

// ------------------------------------------------------------------ the checks

fn check_long_form(text: &str) -> Check {
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

fn check_bucket(raw: &Value) -> Check {
    let stack = Stack::new(raw, &param_sets()[1])?;
    let buckets = stack.of_type("AWS::S3::Bucket")?;
    let [(name, b)] = buckets.iter().collect::<Vec<_>>()[..] else {
        return Err(format!("expected exactly one bucket, found {}", buckets.len()));
    };
    let p = &b["Properties"];
    if p["BucketName"] != BUCKET {
        return Err(format!("{name} is not named by the BucketName parameter"));
    }
    if b["DeletionPolicy"] != "Retain" || b["UpdateReplacePolicy"] != "Retain" {
        return Err(format!("{name} must be retained when the stack is deleted or the bucket replaced"));
    }
    if p["VersioningConfiguration"]["Status"] != "Enabled" {
        return Err(format!("{name}: versioning must be enabled"));
    }
    let sse =
        &p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"];
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
    Ok(())
}

fn check_tls_only(raw: &Value) -> Check {
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

fn check_lifecycle(raw: &Value) -> Check {
    for expiry in [None, Some(400)] {
        for mut params in param_sets() {
            params.archive_expiration = expiry;
            let stack = Stack::new(raw, &params)?;
            let bucket = stack.of_type("AWS::S3::Bucket")?.into_values().next().ok_or("no bucket")?;
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

fn queues(stack: &Stack) -> Result<(BTreeMap<String, Value>, BTreeSet<String>), String> {
    let queues = stack.of_type("AWS::SQS::Queue")?;
    let mut dlqs = BTreeSet::new();
    for q in queues.values() {
        if let Some(t) = q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"].as_str() {
            dlqs.insert(t.to_owned());
        }
    }
    Ok((queues, dlqs))
}

fn check_queues(raw: &Value) -> Check {
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

fn allowed_timeouts(raw: &Value) -> Result<Vec<u64>, String> {
    let v = raw["Parameters"]["FunctionTimeout"]["AllowedValues"]
        .as_array()
        .ok_or("FunctionTimeout needs AllowedValues (the visibility mapping covers exactly those)")?;
    v.iter().map(|x| scalar(x)?.parse::<u64>().map_err(|e| e.to_string())).collect()
}

fn check_visibility(raw: &Value) -> Check {
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

fn check_notifications(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let bucket = stack.of_type("AWS::S3::Bucket")?.into_values().next().ok_or("no bucket")?;
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
struct Function {
    name: String,
    binary: String,
    queue: String,
    role: String,
    log_group: String,
    env: Value,
}

fn functions(stack: &Stack) -> Result<Vec<Function>, String> {
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

fn check_functions(raw: &Value) -> Check {
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
fn check_no_wildcards(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        for s in statements(&stack)? {
            let who = format!("{} {}", s.owner, s.sid);
            if !s.allow {
                // The one Deny is the bucket's TLS rule, which must cover every action.
                if s.owner != "BucketPolicy" {
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
                    || r.starts_with(&format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:"));
                if !ok {
                    return Err(format!("{who}: resource {r} is not this bucket, this account's queues or log groups"));
                }
                if r.starts_with("arn:aws:s3:::") && !r.starts_with(&format!("arn:aws:s3:::{BUCKET}")) {
                    return Err(format!("{who}: S3 resource {r} is not this bucket"));
                }
            }
            for a in &s.actions {
                let service = a.split(':').next().unwrap_or_default();
                let fits = s.resources.iter().all(|r| match service {
                    "s3" => r.starts_with("arn:aws:s3:::"),
                    "sqs" => r.starts_with("arn:aws:sqs:"),
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
fn check_function_roles(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        for f in functions(&stack)? {
            let s3: &[(&str, &str)] = match f.binary.as_str() {
                // verify_upload: get the metadata (event version) and the .tar.gz; head the push
                // audit key; reject: head, copy to archive/ (head of the target), delete; audit.
                "verify-upload" => &[
                    ("s3:GetObject", "images/*"),
                    ("s3:GetObjectVersion", "images/*"),
                    ("s3:GetObject", "audit/*"),
                    ("s3:GetObject", "archive/*"),
                    ("s3:PutObject", "audit/*"),
                    ("s3:PutObject", "archive/*"),
                    ("s3:AbortMultipartUpload", "archive/*"),
                    ("s3:DeleteObject", "images/*"),
                    ("s3:ListBucket", "list:images/*"),
                    ("s3:ListBucket", "list:audit/*"),
                    ("s3:ListBucket", "list:archive/*"),
                ],
                // record_tag: get the tag (event version); find_metadata: head + list images/APP/;
                // reject: copy to archive/, delete the tag; audit.
                "record-tag" => &[
                    ("s3:GetObject", "tags/*"),
                    ("s3:GetObjectVersion", "tags/*"),
                    ("s3:GetObject", "images/*"),
                    ("s3:GetObject", "archive/*"),
                    ("s3:PutObject", "audit/*"),
                    ("s3:PutObject", "archive/*"),
                    ("s3:DeleteObject", "tags/*"),
                    ("s3:ListBucket", "list:images/*"),
                    ("s3:ListBucket", "list:tags/*"),
                    ("s3:ListBucket", "list:archive/*"),
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
                expected.insert(("sqs:SendMessage".into(), stack.queue_arn("s3dock-agent-*")));
            }
            diff(&f.role, &grants(&stack, &f.role)?, &expected)?;
        }
    }
    Ok(())
}

fn policy_statements(stack: &Stack, policy: &str) -> Result<Vec<Statement>, String> {
    let st: Vec<Statement> = statements(stack)?.into_iter().filter(|s| s.owner == policy).collect();
    if st.is_empty() {
        return Err(format!("no managed policy {policy}"));
    }
    Ok(st)
}

/// Does any statement allow `action` on the object `key` (relative to the prefix)?
fn may(st: &[Statement], stack: &Stack, action: &str, key: &str) -> bool {
    st.iter().any(|s| s.allows(action, &stack.object_arn(key)))
}

const WRITES: [&str; 5] =
    ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload", "s3:PutObjectAcl"];

/// Every action a statement grants on keys, other than reads.
fn write_actions(st: &[Statement]) -> BTreeSet<String> {
    st.iter()
        .filter(|s| s.allow)
        .flat_map(|s| s.actions.iter().cloned())
        .filter(|a| !a.starts_with("s3:Get") && !a.starts_with("s3:List"))
        .collect()
}

fn check_pusher(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let st = policy_statements(&stack, "PusherPolicy")?;
        for key in [IMAGE_KEY, METADATA_KEY, TAG_KEY, POINTER_KEY, AUDIT_KEY, ARCHIVE_KEY, AGENT_KEY] {
            if !may(&st, &stack, "s3:GetObject", key) {
                return Err(format!("PusherPolicy cannot read {key}"));
            }
        }
        for (action, key) in [
            ("s3:PutObject", IMAGE_KEY),
            ("s3:PutObject", METADATA_KEY),
            ("s3:AbortMultipartUpload", IMAGE_KEY),
            ("s3:PutObject", TAG_KEY),
        ] {
            if !may(&st, &stack, action, key) {
                return Err(format!("PusherPolicy cannot {action} {key}: push and tag would fail"));
            }
        }
        for action in write_actions(&st).iter().map(String::as_str).chain(WRITES) {
            for key in [AUDIT_KEY, POINTER_KEY, PROBE_KEY, AGENT_KEY] {
                if may(&st, &stack, action, key) {
                    return Err(format!("PusherPolicy allows {action} on {key}"));
                }
            }
            // The documented decision: archive/ gets the copies of replaced content (PutObject,
            // and the abort of a failed multipart copy), never a delete.
            if may(&st, &stack, action, ARCHIVE_KEY) && !["s3:PutObject", "s3:AbortMultipartUpload"].contains(&action) {
                return Err(format!("PusherPolicy allows {action} on archive/"));
            }
            if may(&st, &stack, action, IMAGE_KEY) && action.starts_with("s3:Delete") {
                return Err(format!("PusherPolicy allows {action} on images/ (cleanup is an administrator's job)"));
            }
        }
    }
    Ok(())
}

fn check_promoter(raw: &Value) -> Check {
    let eight = ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"];
    let mut sets = param_sets();
    sets.push(Params::new("x/y/", &eight));
    sets.push(Params::new("", &["production"]));
    for params in sets {
        let stack = Stack::new(raw, &params)?;
        let st = policy_statements(&stack, "PromoterPolicy")?;
        for env in &params.envs {
            if !may(&st, &stack, "s3:PutObject", &format!("pointers/myapp/{env}.json")) {
                return Err(format!("PromoterPolicy cannot write the {env} pointer"));
            }
        }
        for action in ["s3:PutObject", "s3:DeleteObject"] {
            if !may(&st, &stack, action, PROBE_KEY) {
                return Err(format!("PromoterPolicy cannot {action} the conditional-write probe"));
            }
        }
        for action in write_actions(&st).iter().map(String::as_str).chain(WRITES) {
            for key in [
                "pointers/myapp/unlisted-env.json",
                "pointers/myapp/production.json.bak",
                IMAGE_KEY,
                METADATA_KEY,
                TAG_KEY,
                AUDIT_KEY,
                ARCHIVE_KEY,
                AGENT_KEY,
            ] {
                if may(&st, &stack, action, key) {
                    return Err(format!("PromoterPolicy allows {action} on {key} (environments {:?})", params.envs));
                }
            }
            if action != "s3:PutObject" && may(&st, &stack, action, POINTER_KEY) {
                return Err(format!("PromoterPolicy allows {action} on a pointer"));
            }
        }
    }
    Ok(())
}

fn check_agent(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let st = policy_statements(&stack, "AgentPolicy")?;
        for key in [IMAGE_KEY, METADATA_KEY, TAG_KEY, POINTER_KEY, AGENT_KEY] {
            if !may(&st, &stack, "s3:GetObject", key) {
                return Err(format!("AgentPolicy cannot read {key}"));
            }
        }
        if !may(&st, &stack, "s3:PutObject", AGENT_KEY) {
            return Err("AgentPolicy cannot write its registration".into());
        }
        // The documented decision: each deploy's audit record, a conditional create under
        // audit/ (PutObject only: no delete, no ACL, nothing elsewhere).
        if !may(&st, &stack, "s3:PutObject", DEPLOY_AUDIT_KEY) {
            return Err("AgentPolicy cannot write the audit record of a deploy".into());
        }
        for action in write_actions(&st).iter().map(String::as_str).chain(WRITES) {
            for key in [IMAGE_KEY, TAG_KEY, POINTER_KEY, PROBE_KEY, ARCHIVE_KEY] {
                if may(&st, &stack, action, key) {
                    return Err(format!("AgentPolicy allows {action} on {key}"));
                }
            }
            if action != "s3:PutObject"
                && (may(&st, &stack, action, AUDIT_KEY) || may(&st, &stack, action, DEPLOY_AUDIT_KEY))
            {
                return Err(format!("AgentPolicy allows {action} on audit/ (it may only create records)"));
            }
        }
        // ...and only as a conditional create: S3 refuses it without If-None-Match.
        for s in st.iter().filter(|s| s.allow && s.allows("s3:PutObject", &stack.object_arn(DEPLOY_AUDIT_KEY))) {
            if s.condition.pointer("/Null/s3:if-none-match").and_then(Value::as_str) != Some("false") {
                return Err(format!(
                    "AgentPolicy statement {} lets agents overwrite audit records: require s3:if-none-match",
                    s.sid
                ));
            }
        }
        let own = stack.queue_arn("s3dock-agent-web-1");
        for a in [
            "sqs:CreateQueue",
            "sqs:GetQueueUrl",
            "sqs:GetQueueAttributes",
            "sqs:SetQueueAttributes",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
        ] {
            if !st.iter().any(|s| s.allows(a, &own)) {
                return Err(format!("AgentPolicy cannot {a} its own queue"));
            }
            for other in [
                stack.queue_arn("s3dock-events"),
                stack.queue_arn("VerifyUploadQueue"),
                format!("arn:aws:sqs:{REGION}:999999999999:s3dock-agent-x"),
            ] {
                if st.iter().any(|s| s.allows(a, &other)) {
                    return Err(format!("AgentPolicy allows {a} on {other}"));
                }
            }
        }
        let agent_sqs = [
            "sqs:CreateQueue",
            "sqs:GetQueueUrl",
            "sqs:GetQueueAttributes",
            "sqs:SetQueueAttributes",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
        ];
        if st.iter().any(|s| s.actions.iter().any(|a| a.starts_with("sqs:") && !agent_sqs.contains(&a.as_str()))) {
            return Err("AgentPolicy grants SQS actions the agent does not make (send, delete queue, ...)".into());
        }
    }
    Ok(())
}

/// The audit trail is the functions' alone, but for one documented exception: the agent
/// policy may create records (`s3:PutObject`), for its deploys. No other managed policy may
/// write it, and no managed policy may delete or otherwise change it.
fn check_audit_writers(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let roles: BTreeSet<String> = functions(&stack)?.into_iter().map(|f| f.role).collect();
        for s in statements(&stack)? {
            if !s.allow || roles.contains(&s.owner) {
                continue;
            }
            for a in &s.actions {
                if s.owner == "AgentPolicy" && a == "s3:PutObject" {
                    continue;
                }
                if (a.starts_with("s3:Put") || a.starts_with("s3:Delete")) && s.allows(a, &stack.object_arn(AUDIT_KEY))
                {
                    return Err(format!("{} {} allows {a} on audit/", s.owner, s.sid));
                }
            }
        }
    }
    Ok(())
}

fn check_outputs(raw: &Value) -> Check {
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
        "PromoterPolicyArn",
        "AgentPolicyArn",
        "CliProfile",
    ];
    for k in want {
        if outputs[k]["Value"].is_null() {
            return Err(format!("no output {k}"));
        }
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

fn all_checks() -> Vec<(&'static str, CheckFn)> {
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
        ("promoter", check_promoter),
        ("agent", check_agent),
        ("audit writers", check_audit_writers),
        ("outputs", check_outputs),
    ]
}

#[test]
fn the_template_keeps_every_invariant() {
    let raw = raw_template();
    let mut failures = Vec::new();
    if let Err(e) = check_long_form(TEMPLATE) {
        failures.push(format!("long form: {e}"));
    }
    for (name, check) in all_checks() {
        if let Err(e) = check(&raw) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "infra/template.yaml breaks invariants:\n  {}", failures.join("\n  "));
}

#[test]
fn glob_matches_like_iam() {
    assert!(glob("images/*", "images/a/b.json"));
    assert!(glob("pointers/*/production.json", "pointers/app/production.json"));
    assert!(!glob("pointers/*/production.json", "pointers/app/staging.json"));
    assert!(glob("*", "audit/x"));
    assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
    assert!(!glob("images/*", "imagesX/a"));
}

/// Each assertion fails on a template broken in the way it guards against.
mod mutations {
    use super::*;

    fn statements_of<'v>(raw: &'v mut Value, pointer: &str) -> &'v mut Vec<Value> {
        raw.pointer_mut(pointer).and_then(Value::as_array_mut).unwrap_or_else(|| panic!("{pointer} is a list"))
    }

    fn broken(check: CheckFn, mutate: impl FnOnce(&mut Value)) -> String {
        let mut raw = raw_template();
        check(&raw).expect("the unmodified template passes this check");
        mutate(&mut raw);
        match check(&raw) {
            Ok(()) => panic!("the check did not notice the mutation"),
            Err(e) => e,
        }
    }

    fn sub(path: &str) -> Value {
        json!({"Fn::Sub": format!("arn:${{AWS::Partition}}:s3:::${{BucketName}}/${{KeyPrefix}}{path}")})
    }

    #[test]
    fn versioning_off() {
        let e = broken(check_bucket, |t| {
            t["Resources"]["Bucket"]["Properties"]["VersioningConfiguration"]["Status"] = json!("Suspended")
        });
        assert!(e.contains("versioning"), "{e}");
    }

    #[test]
    fn public_access_allowed() {
        let e = broken(check_bucket, |t| {
            t["Resources"]["Bucket"]["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] =
                json!(false)
        });
        assert!(e.contains("RestrictPublicBuckets"), "{e}");
    }

    #[test]
    fn bucket_deleted_with_the_stack() {
        let e = broken(check_bucket, |t| t["Resources"]["Bucket"]["DeletionPolicy"] = json!("Delete"));
        assert!(e.contains("retained"), "{e}");
    }

    #[test]
    fn plain_http_allowed() {
        let e = broken(check_tls_only, |t| {
            t["Resources"]["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"] =
                json!("true")
        });
        assert!(e.contains("SecureTransport"), "{e}");
    }

    #[test]
    fn multipart_uploads_never_aborted() {
        let e = broken(check_lifecycle, |t| {
            statements_of(t, "/Resources/Bucket/Properties/LifecycleConfiguration/Rules")
                .retain(|r| r["AbortIncompleteMultipartUpload"].is_null())
        });
        assert!(e.contains("multipart"), "{e}");
    }

    #[test]
    fn audit_trail_expired() {
        let e = broken(check_lifecycle, |t| {
            statements_of(t, "/Resources/Bucket/Properties/LifecycleConfiguration/Rules").push(json!({
                "Id": "oops", "Status": "Enabled", "Prefix": {"Fn::Sub": "${KeyPrefix}audit/"},
                "NoncurrentVersionExpiration": {"NoncurrentDays": 30}
            }))
        });
        assert!(e.contains("audit"), "{e}");
    }

    #[test]
    fn queue_without_dead_letter_queue() {
        let e = broken(check_queues, |t| {
            t["Resources"]["RecordTagQueue"]["Properties"].as_object_mut().expect("properties").remove("RedrivePolicy");
        });
        assert!(e.contains("RecordTagQueue") && e.contains("RedrivePolicy"), "{e}");
    }

    #[test]
    fn visibility_shorter_than_six_timeouts() {
        let e = broken(check_visibility, |t| {
            t["Resources"]["PromotionFanoutQueue"]["Properties"]["VisibilityTimeout"] = json!(900)
        });
        assert!(e.contains("PromotionFanoutQueue") && e.contains("6 x"), "{e}");
        let e = broken(check_visibility, |t| t["Mappings"]["EventQueue"]["900"]["VisibilityTimeout"] = json!(5000));
        assert!(e.contains("6 x the function timeout 900"), "{e}");
    }

    #[test]
    fn events_without_partial_batch_failures() {
        let e = broken(check_functions, |t| {
            t["Resources"]["VerifyUploadFunction"]["Properties"]["Events"]["ImageMetadataCreated"]["Properties"]["FunctionResponseTypes"] =
                json!([])
        });
        assert!(e.contains("ReportBatchItemFailures"), "{e}");
    }

    #[test]
    fn pusher_writes_the_audit_trail() {
        let e = broken(check_pusher, |t| {
            statements_of(t, "/Resources/PusherPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("audit/*")}))
        });
        assert!(e.contains("audit"), "{e}");
        let e = broken(check_audit_writers, |t| {
            statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": sub("audit/*")}))
        });
        assert!(e.contains("AgentPolicy") && e.contains("s3:DeleteObject"), "{e}");
        let e = broken(check_audit_writers, |t| {
            statements_of(t, "/Resources/PromoterPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("audit/*")}))
        });
        assert!(e.contains("PromoterPolicy"), "{e}");
    }

    #[test]
    fn agent_writes_beyond_its_deploy_records() {
        // PutObject on everything: audit/ stays allowed, but images/ and pointers/ are caught.
        let e = broken(check_agent, |t| {
            statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("*")}))
        });
        assert!(e.contains("AgentPolicy allows s3:PutObject on images/"), "{e}");
        let e = broken(check_agent, |t| {
            statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:PutObjectAcl", "Resource": sub("audit/*")}))
        });
        assert!(e.contains("may only create records"), "{e}");
        let e = broken(check_agent, |t| {
            statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
                .retain(|s| s["Sid"] != "AuditDeploys")
        });
        assert!(e.contains("audit record of a deploy"), "{e}");
        let e = broken(check_agent, |t| {
            for s in statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement") {
                if s["Sid"] == "AuditDeploys" {
                    s.as_object_mut().unwrap().remove("Condition");
                }
            }
        });
        assert!(e.contains("overwrite audit records"), "{e}");
    }

    #[test]
    fn pusher_moves_pointers_or_deletes_archives() {
        let e = broken(check_pusher, |t| {
            statements_of(t, "/Resources/PusherPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [sub("pointers/*")]}))
        });
        assert!(e.contains("pointers/"), "{e}");
        let e = broken(check_pusher, |t| {
            statements_of(t, "/Resources/PusherPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": sub("archive/*")}))
        });
        assert!(e.contains("archive/"), "{e}");
    }

    #[test]
    fn promoter_writes_any_pointer() {
        let e = broken(check_promoter, |t| {
            statements_of(t, "/Resources/PromoterPolicy/Properties/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("pointers/*")}))
        });
        assert!(e.contains("unlisted-env"), "{e}");
    }

    #[test]
    fn wildcard_action_or_resource() {
        let e = broken(check_no_wildcards, |t| {
            statements_of(t, "/Resources/RecordTagRole/Properties/Policies/0/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:*", "Resource": sub("tags/*")}))
        });
        assert!(e.contains("wildcard action s3:*"), "{e}");
        let e = broken(check_no_wildcards, |t| {
            for s in statements_of(t, "/Resources/PromotionFanoutRole/Properties/Policies/0/PolicyDocument/Statement") {
                if s["Sid"] == "NotifyAgentQueues" {
                    s["Resource"] = json!("*");
                }
            }
        });
        assert!(e.contains("Resource \"*\""), "{e}");
    }

    #[test]
    fn function_role_reaches_another_prefix() {
        let e = broken(check_function_roles, |t| {
            statements_of(t, "/Resources/VerifyUploadRole/Properties/Policies/0/PolicyDocument/Statement")
                .push(json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": sub("pointers/*")}))
        });
        assert!(e.contains("VerifyUploadRole") && e.contains("pointers/*"), "{e}");
        let e = broken(check_function_roles, |t| {
            for s in statements_of(t, "/Resources/PromotionFanoutRole/Properties/Policies/0/PolicyDocument/Statement") {
                if s["Sid"] == "NotifyAgentQueues" {
                    s["Resource"] = json!({"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*"});
                }
            }
        });
        assert!(e.contains("sqs:SendMessage"), "{e}");
    }

    #[test]
    fn notifications_from_any_bucket() {
        let e = broken(check_notifications, |t| {
            let s = &mut t["Resources"]["EventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
            s.as_object_mut().expect("statement").remove("Condition");
        });
        assert!(e.contains("aws:SourceArn"), "{e}");
    }

    #[test]
    fn short_form_intrinsics() {
        check_long_form(TEMPLATE).expect("the template uses the long form");
        let broken = TEMPLATE.replacen("{Fn::Sub: \"${KeyPrefix}archive/\"}", "!Sub \"${KeyPrefix}archive/\"", 1);
        assert_ne!(broken, TEMPLATE);
        assert!(check_long_form(&broken).unwrap_err().contains("short-form"));
    }
}
