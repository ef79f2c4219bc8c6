//! `s3dock deploy --blue-green APP ENV --service FILE`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use s3dock_core::clock::SystemClock;
use s3dock_core::names::{AppName, EnvName};
use s3dock_core::transfer::Progress;
use s3dock_engine::agent_config::ServiceFile;
use s3dock_engine::deploy::{DeployReport, DeployRequest, DeployResult, Deployer, traffic_switch};
use s3dock_engine::ship::{self, PullRequest, PullTarget};
use s3dock_engine::{BollardEngine, DockerEngine};
use serde_json::{Value, json};

use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;
use crate::progress::Bar;

/// Where the agent keeps its state files by default (`state_dir` in its configuration): the
/// same directory, so the two share the service lock and never interleave.
pub use s3dock_engine::agent_config::DEFAULT_STATE_DIR;

const LONG_ABOUT: &str = "\
Deploy what an environment points to on this host, blue-green, as the host agent would.

--blue-green is required: it is the only strategy. The image the pointer resolves to is pulled
(verified, skipped when the engine has it), started beside the serving container on the other
color's port, health checked, given the traffic (the service's driver: nginx, a command, or
none), verified, and the old container is drained and removed. Any failure before the switch
removes the new container; a failure after it switches back. Traffic never reaches a container
that has not passed its health check.

--service FILE is a service spec (TOML, docs/agent.md) or the agent's own configuration, whose
[[service]] for APP ENV is used, together with its state_dir. Use the agent's file on a host
that runs the agent: the deploy then takes the same per-service lock, and an interrupted deploy
of either is settled by the next run of either.

The result is one line; a deploy that failed or rolled back exits 4 with the reason. Every
deploy that ran leaves an audit record (deploy, or rollback for a switch back, recorded_by cli).

Examples:
  s3dock deploy --blue-green myapp production --service /etc/s3dock/agent.toml
  s3dock deploy --blue-green myapp staging --service web.toml --state-dir ./state --json";

/// Deploy an environment's image on this host (blue-green, health checked)
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct DeployArgs {
    /// Deploy blue-green (required: the only strategy; the flag keeps room for others)
    #[arg(long, required = true)]
    pub blue_green: bool,
    /// The app, e.g. myapp
    pub app: AppName,
    /// The environment whose pointer names the image, e.g. production
    pub env: EnvName,
    /// A service spec (TOML), or the agent's configuration (its [[service]] for APP ENV)
    #[arg(long, value_name = "FILE")]
    pub service: PathBuf,
    /// State files and the service lock [default: the agent configuration's state_dir, else /var/lib/s3dock]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// This host's name in the audit record [default: the agent configuration's host, else the host name]
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

/// Reads `path`: a service spec, or an agent configuration (it has `[[service]]` tables), in
/// which case the entry for (app, env) is taken.
pub fn service_file(path: &Path, app: &AppName, env: &EnvName) -> Result<ServiceFile, CliError> {
    ServiceFile::load(path, app, env).map_err(|e| CliError::usage(format!("--service {e}")))
}

pub async fn run(ctx: &Context, args: &DeployArgs) -> Result<Output, CliError> {
    let file = service_file(&args.service, &args.app, &args.env)?;
    let state_dir = args.state_dir.clone().or(file.state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let host =
        args.host.clone().or(file.host).or_else(|| ctx.env.hostname.clone()).unwrap_or_else(|| "localhost".to_owned());
    let spec = file.spec;
    let traffic = traffic_switch(&spec, &state_dir)
        .map_err(|e| CliError::usage(format!("--service {}: {e}", args.service.display())))?;
    let settings = ctx.settings()?;
    let registry = Arc::new(ctx.open_registry(&settings).await?);
    let engine = Arc::new(BollardEngine::connect().await?);

    let progress = Progress::default();
    let bar = Bar::start(ctx, "pull", progress.clone());
    let req = PullRequest { app: args.app.clone(), target: PullTarget::Env(args.env.clone()), keep: None };
    let pulled = ship::pull(&*engine, &registry, &req, &progress).await;
    bar.finish();
    let pulled = pulled?;
    let seq = pulled.resolved.pointer.as_ref().map(|p| p.seq());

    let deployer = Deployer::new(
        engine.clone() as Arc<dyn DockerEngine>,
        traffic,
        Arc::new(SystemClock),
        &state_dir,
        host.clone(),
    )
    .with_audit(registry.clone(), "cli");
    let request = DeployRequest {
        image: pulled.image.clone(),
        pointer_seq: seq,
        pull_time: Some(std::time::Duration::from_secs_f64(pulled.seconds)),
        still_wanted: None,
    };
    ctx.info(&format!("deploying {} to {} (blue-green) on {host}", pulled.image, args.env));
    // Ctrl-C and SIGTERM stop the deploy at its next safe point (see `s3dock deploy --help`).
    let token = ctx.interrupt_token();
    let report = deployer.deploy(&spec, &request, &token).await?;

    let mut doc = report_json(&report);
    doc["pointer_seq"] = json!(seq);
    doc["host"] = json!(host);
    doc["state_dir"] = json!(state_dir.display().to_string());
    doc["pull"] = json!({"skipped": pulled.skipped, "bytes": pulled.bytes, "seconds": pulled.seconds});
    let audit_warning = match &report.audit {
        Some(Err(e)) => Some(format!("the deploy's audit record could not be written ({e}); the deploy stands")),
        _ => None,
    };
    let image = &report.image;
    let text = match report.result {
        DeployResult::Succeeded => {
            let was = report.previous_image.as_ref().map(|p| format!(", was {p}")).unwrap_or_default();
            let color = report.color.map(|c| c.to_string()).unwrap_or_default();
            format!(
                "deployed {image} to {} on {color}{was} ({:.1}s; {})\n",
                args.env,
                report.duration.as_secs_f64(),
                timings(&report)
            )
        }
        DeployResult::Unchanged => {
            let color = report.color.map(|c| c.to_string()).unwrap_or_default();
            format!("{} already runs {image} on {color} and it is healthy; nothing to do\n", args.env)
        }
        DeployResult::Failed | DeployResult::RolledBack | DeployResult::Superseded => {
            let what = if report.result == DeployResult::RolledBack { "rolled back" } else { "failed" };
            let audit = match &report.audit {
                Some(Ok(key)) => format!(" (audit: {key})"),
                _ => String::new(),
            };
            let reason = report.message.as_deref().unwrap_or("no reason given");
            if token.is_cancelled() {
                // Ctrl-C or SIGTERM stopped it before the switch: undone, nothing changed.
                return Err(CliError::interrupted(format!(
                    "deploy of {image} to {} interrupted: {reason}{audit}",
                    args.env
                )));
            }
            return Err(CliError::conflict(format!("deploy of {image} to {} {what}: {reason}{audit}", args.env)));
        }
    };
    // Valid but risky settings are said, not silently accepted (drain = "0s" with nginx...).
    let mut out = Output::new(doc, text).warn_all(spec.warnings()).warn_all(audit_warning);
    if let Some(r) = &report.recovered {
        out = out.note(format!("an interrupted deploy was settled first: {}", r.action));
    }
    Ok(out)
}

fn timings(report: &DeployReport) -> String {
    let order = ["pull", "recover", "start", "health", "switch", "verify", "rollback", "drain"];
    order
        .iter()
        .filter_map(|k| report.timings.get(*k).map(|d| format!("{k} {:.1}s", d.as_secs_f64())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report_json(r: &DeployReport) -> Value {
    json!({
        "app": r.app,
        "env": r.env,
        "image": r.image.to_string(),
        "result": r.result.as_str(),
        "color": r.color.map(|c| c.to_string()),
        "container_id": r.container_id,
        "previous_image": r.previous_image,
        "deploy_id": r.deploy_id,
        "message": r.message,
        "timings_ms": r.timings_ms(),
        "duration_ms": r.duration.as_millis() as u64,
        "audit_key": r.audit.as_ref().and_then(|a| a.as_ref().ok()).map(|k| k.as_str()),
        "recovered": r.recovered.as_ref().map(|x| json!({
            "found": x.found.as_str(),
            "serving": x.serving.map(|c| c.to_string()),
            "action": x.action,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (AppName, EnvName) {
        (AppName::parse("web").unwrap(), EnvName::parse("production").unwrap())
    }

    const SPEC: &str = "app = \"web\"\nenv = \"production\"\ncontainer_port = 80\nports = { blue = 18080, green = 18081 }\n[traffic]\ndriver = \"none\"\n";

    #[test]
    fn a_spec_file_or_an_agent_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (app, env) = names();
        let spec = dir.path().join("web.toml");
        std::fs::write(&spec, SPEC).unwrap();
        let f = service_file(&spec, &app, &env).unwrap();
        assert_eq!(f.spec.ports.green, 18081);
        assert!(f.state_dir.is_none());

        let agent = dir.path().join("agent.toml");
        std::fs::write(
            &agent,
            format!(
                "store = \"s3://b-1\"\nstate_dir = \"state\"\nhost = \"web-1\"\n[[service]]\napp = \"api\"\nenv = \"production\"\ncontainer_port = 80\nports = {{ blue = 1, green = 2 }}\n[[service]]\n{}",
                SPEC.replace("[traffic]", "[service.traffic]")
            ),
        )
        .unwrap();
        let f = service_file(&agent, &app, &env).unwrap();
        assert_eq!(f.spec.app, app);
        assert_eq!(f.state_dir, Some(dir.path().join("state")));
        assert_eq!(f.host.as_deref(), Some("web-1"));

        let staging = EnvName::parse("staging").unwrap();
        let e = service_file(&agent, &app, &staging).unwrap_err();
        assert!(
            e.message().contains("no [[service]] for web/staging (it serves: api/production, web/production)"),
            "{e}"
        );
        let e = service_file(&spec, &app, &staging).unwrap_err();
        assert!(e.message().contains("is the spec of web/production, not web/staging"), "{e}");
        std::fs::write(&spec, SPEC.replace("blue = 18080", "blue = 18081")).unwrap();
        let e = service_file(&spec, &app, &env).unwrap_err();
        assert!(e.message().contains("give each its own host port") && e.exit_code() == 2, "{e}");
        let e = service_file(&dir.path().join("missing.toml"), &app, &env).unwrap_err();
        assert!(e.message().contains("cannot read it"), "{e}");
    }
}
