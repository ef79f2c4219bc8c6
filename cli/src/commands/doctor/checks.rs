//! The checks of `s3dock doctor`, in the order they run. Each returns its lines; a check whose
//! precondition failed is skipped with the reason, never run against a store known to be
//! unreachable.

use std::sync::Arc;

use s3dock_aws::S3Store;
use s3dock_aws::s3::Versioning;
use s3dock_aws::sts::{IdentityError, StsSettings, caller_identity};
use s3dock_core::ErrorKind;
use s3dock_core::clock::SystemClock;
use s3dock_core::insight::{dangling, fleet, liveness};
use s3dock_core::names::AppName;
use s3dock_core::registry::{EventMode, Registry};
use s3dock_core::store::{LocalStore, ObjectStore, StoreError, probe};
use s3dock_engine::docker::{BollardEngine, DockerEngine};
use serde_json::json;

use super::{Check, DoctorArgs};
use crate::commands::status::show_age;
use crate::config::Events;
use crate::context::Context;
use crate::settings::{Settings, StoreLocation};

/// Runs every check.
pub async fn run_all(ctx: &Context, args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let settings = match ctx.settings() {
        Ok(s) => s,
        Err(e) => {
            out.push(Check::failure(
                "config",
                e.kind(),
                e.message(),
                "the message says what to fix; s3dock config list shows the profiles",
            ));
            out.push(docker().await);
            return out;
        }
    };
    out.push(config(&settings));

    let store = match open(&settings, &mut out).await {
        Some(s) => s,
        None => {
            out.push(docker().await);
            return out;
        }
    };
    let registry = Registry::new(store.clone(), Arc::new(SystemClock), settings.user.value.clone(), EventMode::Lambda);
    let apps = match &args.app {
        Some(app) => Ok(vec![app.clone()]),
        None => registry.list_apps().await.map_err(|e| e.to_string()),
    };

    out.push(preconditions(&*store).await);
    out.extend(functions(&settings, &registry, &apps, args).await);
    out.push(docker().await);
    out.extend(agents(&registry, &apps, args).await);
    if let Some(app) = &args.app {
        out.extend(references(&registry, app).await);
    }
    out
}

fn config(s: &Settings) -> Check {
    let file = if s.config_exists {
        format!("{} ({})", s.config.path.display(), s.config.source)
    } else {
        format!("{} ({}, absent: built-in defaults)", s.config.path.display(), s.config.source)
    };
    Check::ok(
        "config",
        format!(
            "file {file}; profile {} ({}); store {} ({}); events {} ({})",
            s.profile.value,
            s.profile.source,
            s.store.value.url(),
            s.store.source,
            s.events.value.as_str(),
            s.events.source
        ),
    )
    .with(json!({
        "config": {"path": s.config.path, "source": s.config.source.to_string(), "exists": s.config_exists},
        "profile": {"value": s.profile.value, "source": s.profile.source.to_string()},
        "store": {"value": s.store.value.url(), "source": s.store.source.to_string()},
        "events": {"value": s.events.value.as_str(), "source": s.events.source.to_string()},
        "user": {"value": s.user.value, "source": s.user.source.to_string()},
    }))
}

/// The store checks up to "the bucket answers": store, credentials, bucket, versioning.
/// `None` when the store cannot be used (the rest is skipped).
async fn open(settings: &Settings, out: &mut Vec<Check>) -> Option<Arc<dyn ObjectStore>> {
    match &settings.store.value {
        StoreLocation::Local(path) => {
            if !path.is_dir() {
                out.push(Check::warning(
                    "store",
                    format!("the local store {} does not exist yet", path.display()),
                    "it is created by the first push; or point --store / the profile's store at the right directory",
                ));
                out.push(Check::skipped("bucket", "no store to check yet"));
                return None;
            }
            let store = match LocalStore::open(path) {
                Ok(s) => s,
                Err(e) => {
                    out.push(store_failure("store", e));
                    return None;
                }
            };
            out.push(Check::ok("store", format!("local directory {}", store.root().display())));
            out.push(Check::skipped("credentials", "a local store needs no credentials"));
            let store: Arc<dyn ObjectStore> = Arc::new(store);
            match store.list_page("", true, None).await {
                Ok(_) => out.push(Check::ok("bucket", "the directory can be listed")),
                Err(e) => {
                    out.push(store_failure("bucket", e));
                    return None;
                }
            }
            out.push(Check::skipped(
                "versioning",
                "a local directory keeps no versions (archive/ keeps what s3dock replaces)",
            ));
            Some(store)
        }
        StoreLocation::S3(cfg) => {
            let store = match S3Store::connect(cfg.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    out.push(store_failure("store", e));
                    return None;
                }
            };
            out.push(Check::ok("store", format!("{} on {}", cfg.url(), store.endpoint())));
            out.push(credentials(cfg).await);
            if let Err(e) = store.list_page("", true, None).await {
                out.push(store_failure("bucket", e));
                out.push(Check::skipped("versioning", "the bucket cannot be reached"));
                return None;
            }
            out.push(Check::ok("bucket", format!("s3://{}/{} can be listed", cfg.bucket, cfg.prefix)));
            out.push(match store.versioning().await {
                Ok(Versioning::Enabled) => Check::ok("versioning", "enabled: overwritten pointers, tags and images can be recovered"),
                Ok(v) => Check::warning(
                    "versioning",
                    format!("{} on {}: an overwritten or deleted object cannot be recovered", if v == Versioning::Suspended { "suspended" } else { "off" }, cfg.bucket),
                    format!("aws s3api put-bucket-versioning --bucket {} --versioning-configuration Status=Enabled (the stack's bucket has it on)", cfg.bucket),
                ),
                // Reading the setting needs s3:GetBucketVersioning, which the s3dock policies
                // do not all grant: not knowing is a warning, not a broken setup.
                Err(e) => Check::warning(
                    "versioning",
                    format!("cannot read the bucket's versioning: {e}"),
                    "grant s3:GetBucketVersioning to check it, or check it in the S3 console",
                ),
            });
            Some(Arc::new(store))
        }
    }
}

fn store_failure(name: &str, e: StoreError) -> Check {
    let fix = store_fix(&e);
    let message = e.to_string();
    Check::failure(name, s3dock_core::Error::from(e).kind(), message, fix)
}

/// What to do about a store error, for a check line.
fn store_fix(e: &StoreError) -> String {
    match e {
        StoreError::NoSuchBucket { bucket } => {
            format!(
                "create the bucket (cd infra && sam deploy), or fix the store URL: s3://{bucket} is what is configured"
            )
        }
        StoreError::AccessDenied { .. } => {
            "check AWS_PROFILE / AWS_ACCESS_KEY_ID and that the policy (STACK-pusher or STACK-promoter) is attached"
                .to_owned()
        }
        StoreError::NoCredentials { .. } => {
            "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or aws_profile in the s3dock profile"
                .to_owned()
        }
        StoreError::Unreachable { .. } => "check the endpoint URL, the network and that the service runs".to_owned(),
        StoreError::PreconditionsIgnored { .. } => {
            "s3dock refuses to promote on this store; use AWS S3, LocalStack or a local directory store".to_owned()
        }
        _ => "see the message; run with -v for details".to_owned(),
    }
}

async fn credentials(cfg: &s3dock_aws::S3Config) -> Check {
    let sts = StsSettings {
        region: cfg.region.clone(),
        endpoint: cfg.endpoint.clone(),
        aws_profile: cfg.aws_profile.clone(),
    };
    match caller_identity(&sts).await {
        Ok(id) => Check::ok("credentials", format!("{} (account {})", id.arn, id.account))
            .with(json!({"arn": id.arn, "account": id.account, "user_id": id.user_id})),
        Err(e @ IdentityError::NoCredentials { .. }) => Check::failure(
            "credentials",
            ErrorKind::Unavailable,
            e.to_string(),
            "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or aws_profile in the s3dock profile",
        ),
        Err(e @ IdentityError::Refused { .. }) => Check::failure(
            "credentials",
            ErrorKind::Unavailable,
            e.to_string(),
            "the keys are wrong, expired or deactivated: renew them (aws sso login, aws configure) or pick another AWS_PROFILE",
        ),
        // A custom endpoint may not implement STS at all (MinIO, some emulators): the
        // bucket check below tells whether the credentials work there.
        Err(e) if cfg.endpoint.is_some() => Check::warning(
            "credentials",
            format!("cannot tell the caller's identity: {e}"),
            "the endpoint may not implement STS; the bucket check below shows whether the credentials work",
        ),
        Err(e) => {
            Check::failure("credentials", ErrorKind::Unavailable, e.to_string(), "check the network and the region")
        }
    }
}

/// The precondition probe, one operation at a time: the conditions s3dock relies on (a
/// failure each when ignored) and those it only reports (a warning each).
async fn preconditions(store: &dyn ObjectStore) -> Check {
    let report = match probe(store).await {
        Ok(r) => r,
        Err(e) => {
            let mut c = store_failure("preconditions", e);
            c.summary = format!("the probe could not run: {}", c.summary);
            return c;
        }
    };
    let details = serde_json::to_value(&report.checks).unwrap_or_default();
    if !report.probed {
        return Check::ok("preconditions", "conditional writes are native to this store (nothing to probe)")
            .with(details);
    }
    let ignored = report.ignored();
    let optional: Vec<&str> =
        report.checks.iter().filter(|c| !c.required && !c.honoured).map(|c| c.operation).collect();
    let honoured: Vec<&str> = report.checks.iter().filter(|c| c.honoured).map(|c| c.operation).collect();
    if !ignored.is_empty() {
        let e = StoreError::PreconditionsIgnored { store: store.url(), operations: ignored.join(", ") };
        return store_failure("preconditions", e).with(details);
    }
    if !optional.is_empty() {
        return Check::warning(
            "preconditions",
            format!("honoured: {}; ignored, not relied on: {}", honoured.join(", "), optional.join(", ")),
            "nothing to do: s3dock does not need these (it checks ETags itself before deleting)",
        )
        .with(details);
    }
    Check::ok("preconditions", format!("honoured: {}", honoured.join(", "))).with(details)
}

async fn functions(
    settings: &Settings,
    registry: &Registry,
    apps: &Result<Vec<AppName>, String>,
    args: &DoctorArgs,
) -> Vec<Check> {
    if settings.events.value == Events::Inline {
        return vec![Check::skipped(
            "functions",
            "events = \"inline\": this CLI writes the audit trail itself, no function to check",
        )];
    }
    let apps = match apps {
        Ok(a) => a,
        Err(e) => {
            return vec![Check::failure(
                "functions",
                ErrorKind::Unavailable,
                format!("cannot list the apps: {e}"),
                "see the message",
            )];
        }
    };
    let lag = chrono::Duration::from_std(args.lag).unwrap_or(chrono::Duration::MAX);
    let probes = match liveness::check(&**registry.store(), apps, lag, registry.clock().now()).await {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::failure(
                "functions",
                e.kind(),
                format!("cannot read the bucket: {e}"),
                "see the message",
            )];
        }
    };
    probes.into_iter().map(|p| function_line(p, lag)).collect()
}

fn function_line(p: liveness::Probe, lag: chrono::Duration) -> Check {
    use liveness::Liveness as L;
    let name = format!("functions.{}", p.function);
    let what = match p.subject {
        liveness::Subject::Push => "push",
        liveness::Subject::Tag => "tag",
        liveness::Subject::Promotion => "promotion",
    };
    let key = p.key.clone().unwrap_or_default();
    let ms = |v: i64| show_age(chrono::Duration::milliseconds(v));
    let logs = format!(
        "check the function's log (aws logs tail /s3dock/STACK/{}) and its dead-letter queue (docs/deploy-aws.md, Troubleshooting)",
        p.function
    );
    let details = serde_json::to_value(&p).unwrap_or_default();
    let check = match &p.liveness {
        L::NothingYet => Check::skipped(name, format!("no {what} in the bucket yet")),
        L::Recorded { lag_ms, .. } if chrono::Duration::milliseconds(*lag_ms) > lag => Check::warning(
            name,
            format!(
                "{} recorded the newest {what} ({key}) {} after it, more than --lag {}",
                p.function,
                ms(*lag_ms),
                show_age(lag)
            ),
            format!("the function is slow or was retried; {logs}"),
        ),
        L::Recorded { lag_ms, .. } => {
            Check::ok(name, format!("recorded the newest {what} ({key}) {} after it", ms(*lag_ms)))
        }
        L::RecordedByOther { recorded_by, .. } => Check::warning(
            name,
            format!(
                "the newest {what} ({key}) was recorded by {recorded_by}, not by {}: its liveness cannot be told",
                p.function
            ),
            "a profile with events = \"inline\" wrote it; use events = \"lambda\" everywhere with the stack",
        ),
        L::Pending { age_ms } => Check::warning(
            name,
            format!(
                "the newest {what} ({key}, {} ago) has no audit record yet, within --lag {}",
                ms(*age_ms),
                show_age(lag)
            ),
            "run doctor again in a minute",
        ),
        L::Missing { age_ms } => Check::failure(
            name,
            ErrorKind::Unavailable,
            format!(
                "no audit record written by {} for the newest {what} ({key}, {} ago; --lag {}): the function is not running or failing",
                p.function,
                ms(*age_ms),
                show_age(lag)
            ),
            logs,
        ),
        L::Unreadable { why } => {
            Check::warning(name, format!("cannot look for the record of {key}: {why}"), "fix or remove the document")
        }
    };
    check.with(details)
}

async fn docker() -> Check {
    let hint = "build, push, pull and deploy need it: start Docker, or set DOCKER_HOST (not needed to promote)";
    let engine = match BollardEngine::connect().await {
        Ok(e) => e,
        Err(e) => return Check::warning("docker", format!("the Docker engine is not reachable: {e}"), hint),
    };
    match engine.version().await {
        Ok(v) => Check::ok(
            "docker",
            format!(
                "Docker {} ({}/{}) at {}, API {} (engine up to {})",
                v.server_version,
                v.os,
                v.arch,
                engine.host(),
                v.api_version,
                v.server_api_version
            ),
        )
        .with(json!({
            "host": engine.host(),
            "server_version": v.server_version,
            "api_version": v.api_version,
            "server_api_version": v.server_api_version,
            "min_api_version": v.min_api_version,
        })),
        Err(e) => Check::warning("docker", format!("the Docker engine did not answer: {e}"), hint),
    }
}

async fn agents(registry: &Registry, apps: &Result<Vec<AppName>, String>, args: &DoctorArgs) -> Vec<Check> {
    let apps = match apps {
        Ok(a) => a,
        Err(e) => {
            return vec![Check::failure(
                "agents",
                ErrorKind::Unavailable,
                format!("cannot list the apps: {e}"),
                "see the message",
            )];
        }
    };
    let ttl = chrono::Duration::from_std(args.ttl).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    for app in apps {
        let fleet = match fleet::load(registry, app, None, ttl).await {
            Ok(f) => f,
            Err(e) => {
                out.push(Check::failure(format!("agents {app}"), e.kind(), e.to_string(), "see the message"));
                continue;
            }
        };
        for (key, why) in &fleet.errors {
            out.push(Check::warning(
                format!("agents {app}"),
                format!("unreadable registration {key}: {why}"),
                "delete it if the agent is gone, or restart the agent to rewrite it",
            ));
        }
        for env in fleet.pointers.keys() {
            let name = format!("agents {app}/{env}");
            let mine: Vec<&fleet::AgentRow> =
                fleet.agents.iter().filter(|a| a.registration.environment == *env).collect();
            let stale: Vec<String> = mine
                .iter()
                .filter(|a| a.stale)
                .map(|a| {
                    format!(
                        "{} on {} ({} ago)",
                        a.registration.agent_id,
                        a.registration.host,
                        show_age(a.heartbeat_age)
                    )
                })
                .collect();
            let behind: Vec<String> = mine
                .iter()
                .filter(|a| a.converged == Some(false) && !a.stale)
                .map(|a| {
                    let s = a.state();
                    let why = s.message.map(|m| format!(": {m}")).unwrap_or_default();
                    format!("{} runs {}{why}", a.registration.agent_id, s.image.as_deref().unwrap_or("nothing"))
                })
                .collect();
            let pointer = match &fleet.pointers[env] {
                fleet::PointerState::Image { image, .. } => image.clone(),
                fleet::PointerState::Missing => "no pointer".to_owned(),
                fleet::PointerState::Broken(_) => "a broken pointer".to_owned(),
            };
            let details = json!({
                "app": app, "env": env, "registered": mine.len(), "pointer": pointer,
                "agents": mine.iter().map(|a| crate::commands::status::agent_json(a)).collect::<Vec<_>>(),
            });
            let behind_text = format!("{} do not run the pointer's {pointer}: {}", behind.len(), behind.join("; "));
            let check = if !stale.is_empty() {
                let mut summary = format!(
                    "{} of {} agent(s) stale, heartbeat older than --ttl {}: {}",
                    stale.len(),
                    mine.len(),
                    show_age(ttl),
                    stale.join(", ")
                );
                if !behind.is_empty() {
                    summary.push_str(&format!("; {behind_text}"));
                }
                Check::failure(
                    name,
                    ErrorKind::Unavailable,
                    summary,
                    format!(
                        "check the host (systemctl status s3dock-agent; journalctl -u s3dock-agent); if it is gone, delete its registration under agents/{app}/{env}/"
                    ),
                )
            } else if !behind.is_empty() {
                Check::warning(
                    name,
                    format!("{} agent(s), {behind_text}", mine.len()),
                    format!("a deploy is running or failed: see s3dock status {app} {env} and the agent's log"),
                )
            } else {
                Check::ok(name, format!("{} agent(s), all fresh and running {pointer}", mine.len()))
            };
            out.push(check.with(details));
        }
    }
    if out.is_empty() {
        out.push(Check::skipped("agents", "no agent is registered"));
    }
    out
}

async fn references(registry: &Registry, app: &AppName) -> Vec<Check> {
    match dangling::find(registry, app).await {
        Ok(found) if found.is_empty() => {
            vec![Check::ok("pointers, tags", format!("every pointer and tag of {app} leads to an image in the bucket"))]
        }
        Ok(found) => found
            .into_iter()
            .map(|d| {
                let name = match d.referrer {
                    dangling::Referrer::Pointer => "pointers",
                    dangling::Referrer::Tag => "tags",
                };
                let details = json!({"key": d.key});
                Check::failure(name, ErrorKind::Integrity, format!("{} dangles: {}", d.key, d.problem), d.fix)
                    .with(details)
            })
            .collect(),
        Err(e) => vec![Check::failure("pointers, tags", e.kind(), e.to_string(), "see the message")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;

    #[test]
    fn store_errors_keep_their_exit_class() {
        let e = StoreError::NoSuchBucket { bucket: "b".into() };
        let c = store_failure("bucket", e);
        assert_eq!((c.kind, exit::code(c.kind.unwrap())), (Some(ErrorKind::Unavailable), 6));
        assert!(c.fix.unwrap().contains("create the bucket"));
        let c = store_failure(
            "x",
            StoreError::PreconditionsIgnored { store: "s3://b".into(), operations: "PutObject If-Match".into() },
        );
        assert_eq!(c.kind, Some(ErrorKind::Conflict));
    }

    #[test]
    fn function_lines_follow_the_liveness() {
        use super::super::Status;
        use liveness::{Liveness as L, Probe, Subject};
        let lag = chrono::Duration::minutes(5);
        let probe = |liveness| Probe {
            subject: Subject::Promotion,
            function: "promotion-fanout",
            key: Some("pointers/web/prod.json".into()),
            written_at: None,
            liveness,
        };
        for (liveness, status, kind) in [
            (L::NothingYet, Status::Skipped, None),
            (L::Recorded { audit_key: "a".into(), lag_ms: 1_500 }, Status::Ok, None),
            (L::Recorded { audit_key: "a".into(), lag_ms: 600_000 }, Status::Warning, None),
            (L::RecordedByOther { audit_key: "a".into(), recorded_by: "cli".into() }, Status::Warning, None),
            (L::Pending { age_ms: 10_000 }, Status::Warning, None),
            (L::Missing { age_ms: 3_600_000 }, Status::Failure, Some(ErrorKind::Unavailable)),
            (L::Unreadable { why: "bad".into() }, Status::Warning, None),
        ] {
            let c = function_line(probe(liveness.clone()), lag);
            assert_eq!((c.status, c.kind), (status, kind), "{liveness:?}");
            assert_eq!(c.name, "functions.promotion-fanout");
        }
        let c = function_line(probe(L::Missing { age_ms: 3_600_000 }), lag);
        assert!(c.summary.contains("pointers/web/prod.json") && c.summary.contains("1h00m ago"), "{}", c.summary);
    }
}
