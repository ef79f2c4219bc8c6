//! A small interpreter of the intrinsic functions the template uses, for concrete parameters.

use super::*;

/// Parameter values for one evaluation; the template's defaults fill the rest.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) prefix: String,
    pub(crate) envs: Vec<String>,
    pub(crate) timeout: Option<u64>,
    pub(crate) archive_expiration: Option<u64>,
    pub(crate) audit_deletes: bool,
}

impl Params {
    pub(crate) fn new(prefix: &str, envs: &[&str]) -> Params {
        Params {
            prefix: prefix.to_owned(),
            envs: envs.iter().map(|s| s.to_string()).collect(),
            timeout: None,
            archive_expiration: None,
            audit_deletes: false,
        }
    }
}

/// The parameter sets most checks run under: no prefix with the default environments, and a
/// prefix with other environments.
pub(crate) fn param_sets() -> Vec<Params> {
    let mut with_trail = Params::new("team-a/", &["qa", "production", "eu.prod-1"]);
    with_trail.audit_deletes = true;
    vec![Params::new("", &["staging", "production"]), with_trail]
}

/// The template evaluated for one set of parameters.
pub(crate) struct Stack<'a> {
    pub(crate) raw: &'a Value,
    pub(crate) params: BTreeMap<String, Value>,
    pub(crate) prefix: String,
}

pub(crate) fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a scalar, found {other}")),
    }
}

pub(crate) fn args<'v>(v: &'v Value, f: &str, n: usize) -> Result<&'v Vec<Value>, String> {
    match v {
        Value::Array(a) if a.len() == n => Ok(a),
        _ => Err(format!("{f} takes a list of {n} arguments: {v}")),
    }
}

impl<'a> Stack<'a> {
    pub(crate) fn new(raw: &'a Value, p: &Params) -> Result<Stack<'a>, String> {
        let mut params = BTreeMap::new();
        let decl = raw["Parameters"].as_object().ok_or("the template has no Parameters")?;
        for (name, d) in decl {
            let value = match name.as_str() {
                "BucketName" => json!(BUCKET),
                "KeyPrefix" => json!(p.prefix),
                "Environments" => json!(p.envs),
                "FunctionTimeout" if p.timeout.is_some() => json!(p.timeout),
                "ArchiveExpirationDays" if p.archive_expiration.is_some() => json!(p.archive_expiration),
                "AuditDeletes" => json!(if p.audit_deletes { "true" } else { "false" }),
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

    pub(crate) fn resource_raw(&self, name: &str) -> Result<&'a Value, String> {
        self.raw["Resources"].get(name).ok_or_else(|| format!("no resource {name}"))
    }

    /// `Ref` of a resource: what CloudFormation returns for the types used here.
    pub(crate) fn ref_of(&self, name: &str) -> Result<Value, String> {
        let r = self.resource_raw(name)?;
        let prop = |p: &str| -> Result<Value, String> {
            self.eval(&r["Properties"][p])?.ok_or_else(|| format!("{name}.{p} is unset"))
        };
        Ok(match r["Type"].as_str().unwrap_or_default() {
            // A bucket without a name gets one CloudFormation makes up.
            "AWS::S3::Bucket" if r["Properties"].get("BucketName").is_none() => {
                json!(format!("s3dock-{}-gen", name.to_lowercase()))
            }
            "AWS::S3::Bucket" => prop("BucketName")?,
            "AWS::SNS::Topic" => json!(format!("arn:aws:sns:{REGION}:{ACCOUNT}:{name}")),
            "AWS::SQS::Queue" => json!(format!("https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}")),
            "AWS::Logs::LogGroup" => prop("LogGroupName")?,
            "AWS::IAM::ManagedPolicy" => {
                json!(format!("arn:aws:iam::{ACCOUNT}:policy/s3dock/{}", scalar(&prop("ManagedPolicyName")?)?))
            }
            _ => json!(format!("ref:{name}")),
        })
    }

    pub(crate) fn get_att(&self, name: &str, attr: &str) -> Result<Value, String> {
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

    pub(crate) fn var(&self, name: &str) -> Result<Value, String> {
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

    pub(crate) fn sub(&self, text: &str, vars: &Map<String, Value>) -> Result<String, String> {
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

    pub(crate) fn condition(&self, name: &str) -> Result<bool, String> {
        let c = self.raw["Conditions"].get(name).ok_or_else(|| format!("no condition {name}"))?;
        self.cond(c)
    }

    pub(crate) fn cond(&self, v: &Value) -> Result<bool, String> {
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
    pub(crate) fn eval(&self, v: &Value) -> Result<Option<Value>, String> {
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

    pub(crate) fn eval_some(&self, v: &Value) -> Result<Value, String> {
        self.eval(v)?.ok_or_else(|| format!("{v} is NoValue where a value is needed"))
    }

    pub(crate) fn intrinsic(&self, f: &str, a: &Value) -> Result<Option<Value>, String> {
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
    pub(crate) fn resources(&self) -> Result<BTreeMap<String, Value>, String> {
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

    pub(crate) fn of_type(&self, ty: &str) -> Result<BTreeMap<String, Value>, String> {
        Ok(self.resources()?.into_iter().filter(|(_, r)| r["Type"] == ty).collect())
    }

    pub(crate) fn bucket_arn(&self) -> String {
        format!("arn:aws:s3:::{BUCKET}")
    }

    /// The ARN of an object, `key` relative to the prefix.
    pub(crate) fn object_arn(&self, key: &str) -> String {
        format!("arn:aws:s3:::{BUCKET}/{}{key}", self.prefix)
    }

    pub(crate) fn queue_arn(&self, name: &str) -> String {
        format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
    }
}
