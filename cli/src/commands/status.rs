//! `s3dock status APP [ENV]`

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use s3dock_core::ErrorKind;
use s3dock_core::docs::AgentRegistration;
use s3dock_core::layout;
use s3dock_core::names::{AppName, EnvName};
use s3dock_engine::deploy::spec::parse_duration;
use serde_json::{Value, json};

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, Table, or_dash, time};

const LONG_ABOUT: &str = "\
Show the fleet: what every host agent of an app (and environment) runs, from agents/.

One row per registered agent: the environment, agent id and host, the image and color serving
traffic there, its health, the agent's status, the last deploy (result and time), the age of its
heartbeat (STALE when older than --ttl), and whether it runs the image the environment's pointer
resolves to now (converged) or not (behind). Registrations that cannot be read are listed as
errors, never hidden.

Examples:
  s3dock status myapp
  s3dock status myapp production --ttl 2m
  s3dock status myapp --json";

/// Show what each host agent runs, against the pointers
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct StatusArgs {
    /// The app, e.g. myapp
    pub app: AppName,
    /// Only this environment
    pub env: Option<EnvName>,
    /// Heartbeats older than this are STALE (the agent is probably down)
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_ttl)]
    pub ttl: Duration,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() { Err("the TTL must be more than 0, e.g. 10m".into()) } else { Ok(d) }
}

/// What an environment's pointer resolves to now.
#[derive(Debug, Clone)]
enum Pointer {
    Image { image: String, seq: u64 },
    Missing,
    Broken(String),
}

pub async fn run(ctx: &Context, args: &StatusArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let now = registry.clock().now();
    let found = registry.list_agents(&args.app, args.env.as_ref()).await?;

    let mut agents: Vec<(String, AgentRegistration)> = Vec::new();
    let mut errors: Vec<(String, String)> = Vec::new();
    for (key, reg) in found {
        match reg {
            Ok(r) if r.app_name == args.app && args.env.as_ref().is_none_or(|e| *e == r.environment) => {
                agents.push((key.to_string(), r))
            }
            Ok(r) => errors
                .push((key.to_string(), format!("filed under {} but registers {}/{}", key, r.app_name, r.environment))),
            Err(e) => errors.push((key.to_string(), e)),
        }
    }
    agents.sort_by(|a, b| (&a.1.environment, &a.1.agent_id).cmp(&(&b.1.environment, &b.1.agent_id)));

    let mut envs: Vec<EnvName> = agents.iter().map(|(_, r)| r.environment.clone()).collect();
    envs.extend(args.env.clone());
    envs.sort();
    envs.dedup();
    let mut pointers: BTreeMap<EnvName, Pointer> = BTreeMap::new();
    for env in &envs {
        let p = match registry.resolve(&args.app, env).await {
            Ok(r) => {
                Pointer::Image { image: r.record.image.to_string(), seq: r.pointer.as_ref().map_or(0, |p| p.seq()) }
            }
            Err(e) if e.is_retryable() || e.kind() == ErrorKind::Unavailable => return Err(e.into()),
            // No pointer at all, or one that leads nowhere (reported, not fatal).
            Err(e) if e.kind() == ErrorKind::NotFound => {
                match registry.store().head(&layout::pointer(&args.app, env)).await? {
                    None => Pointer::Missing,
                    Some(_) => Pointer::Broken(e.to_string()),
                }
            }
            Err(e) => Pointer::Broken(e.to_string()),
        };
        pointers.insert(env.clone(), p);
    }

    let ttl = chrono::Duration::from_std(args.ttl).unwrap_or(chrono::Duration::MAX);
    let mut table = Table::new(&[
        "ENV",
        "AGENT",
        "HOST",
        "IMAGE",
        "COLOR",
        "HEALTH",
        "STATUS",
        "LAST DEPLOY",
        "HEARTBEAT",
        "POINTER",
    ]);
    let mut rows = Vec::new();
    for (key, r) in &agents {
        let state = r.state.clone().unwrap_or_default();
        let age = now - r.last_heartbeat;
        let stale = age > ttl;
        let pointer = pointers.get(&r.environment);
        let converged = match pointer {
            Some(Pointer::Image { image, .. }) => Some(state.image.as_deref() == Some(image.as_str())),
            _ => None,
        };
        let pointer_cell = match (pointer, converged) {
            (Some(Pointer::Image { .. }), Some(true)) => "converged".to_owned(),
            (Some(Pointer::Image { image, .. }), _) => format!("behind ({image})"),
            (Some(Pointer::Missing), _) => "no pointer".to_owned(),
            _ => "unknown".to_owned(),
        };
        let last = state.last_deploy.as_ref().map(|d| format!("{} {}", d.result, time(&d.at)));
        table.row(vec![
            r.environment.to_string(),
            r.agent_id.to_string(),
            r.host.clone(),
            or_dash(state.image.as_deref()),
            or_dash(state.color.as_deref()),
            or_dash(state.health.as_deref()),
            or_dash(state.status.as_deref()),
            or_dash(last),
            format!("{} ago{}", show_age(age), if stale { " STALE" } else { "" }),
            pointer_cell,
        ]);
        rows.push(json!({
            "key": key,
            "env": r.environment,
            "agent_id": r.agent_id,
            "host": r.host,
            "queue_url": r.queue_url,
            "version": r.version,
            "image": state.image,
            "color": state.color,
            "health": state.health,
            "since": state.since,
            "status": state.status,
            "message": state.message,
            "desired": state.desired,
            "pointer_seq": state.pointer_seq,
            "last_deploy": state.last_deploy,
            "last_heartbeat": r.last_heartbeat,
            "heartbeat_age_seconds": age.num_seconds(),
            "stale": stale,
            "converged": converged,
        }));
    }

    let mut text = String::new();
    for (env, p) in &pointers {
        text.push_str(&match p {
            Pointer::Image { image, seq } => format!("{env}: pointer -> {image} (seq {seq})\n"),
            Pointer::Missing => format!("{env}: no pointer\n"),
            Pointer::Broken(e) => format!("{env}: pointer unreadable: {e}\n"),
        });
    }
    if table.is_empty() {
        let scope = args.env.as_ref().map(|e| format!("{}/{e}", args.app)).unwrap_or_else(|| args.app.to_string());
        text.push_str(&format!("no agent is registered for {scope}\n"));
    } else {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&table.render());
    }
    for (key, e) in &errors {
        // Document errors already start with the key.
        let line = if e.starts_with(key.as_str()) { e.clone() } else { format!("{key}: {e}") };
        text.push_str(&format!("unreadable registration {line}\n"));
    }
    let stale = rows.iter().filter(|r| r["stale"] == true).count();

    let doc = json!({
        "app": args.app,
        "env": args.env,
        "ttl_seconds": args.ttl.as_secs(),
        "checked_at": now,
        "environments": pointers.iter().map(|(env, p)| match p {
            Pointer::Image { image, seq } => json!({"env": env, "pointer": {"image": image, "seq": seq}, "error": null}),
            Pointer::Missing => json!({"env": env, "pointer": null, "error": null}),
            Pointer::Broken(e) => json!({"env": env, "pointer": null, "error": e}),
        }).collect::<Vec<Value>>(),
        "agents": rows,
        "errors": errors.iter().map(|(k, e)| json!({"key": k, "error": e})).collect::<Vec<Value>>(),
    });
    let mut out = Output::new(doc, text);
    if stale > 0 {
        out = out.note(format!(
            "{stale} agent(s) have not sent a heartbeat within {}; check them (systemctl status s3dock-agent)",
            show_age(ttl)
        ));
    }
    Ok(out)
}

/// `4s`, `3m12s`, `2h05m`, `3d4h`.
fn show_age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ages_read_well() {
        let base = at("2025-07-22T10:00:00Z");
        let age = |secs: i64| show_age(base + chrono::Duration::seconds(secs) - base);
        assert_eq!(age(4), "4s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(7500), "2h05m");
        assert_eq!(age(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(age(-5), "0s", "a clock ahead of ours is not a negative age");
        assert!(parse_ttl("0s").is_err() && parse_ttl("10").is_err());
        assert_eq!(parse_ttl("2m").unwrap(), Duration::from_secs(120));
    }
}
