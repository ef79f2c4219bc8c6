//! `s3dock status APP [ENV]`

use std::time::Duration;

use clap::Args;
use s3dock_core::insight::fleet::{self, AgentRow, Fleet, PointerState};
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
heartbeat (STALE when older than --ttl), whether it runs the image the environment's pointer
resolves to now (converged) or not (behind), and the agent's last message. Images are compared
by Docker image id where both sides know it: an agent running an older push of the same tag is
behind. Registrations that cannot be read are listed as errors, never hidden.

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

pub(crate) fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() { Err("the TTL must be more than 0, e.g. 10m".into()) } else { Ok(d) }
}

pub async fn run(ctx: &Context, args: &StatusArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let ttl = chrono::Duration::from_std(args.ttl).unwrap_or(chrono::Duration::MAX);
    let fleet = fleet::load(&registry, &args.app, args.env.as_ref(), ttl).await?;

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
        "MESSAGE",
    ]);
    let mut rows = Vec::new();
    for a in &fleet.agents {
        let r = &a.registration;
        let state = a.state();
        let pointer_cell = match (fleet.pointers.get(&r.environment), a.converged) {
            (Some(PointerState::Image { .. }), Some(true)) => "converged".to_owned(),
            (Some(PointerState::Image { image, .. }), _) if state.image.as_deref() == Some(image.as_str()) => {
                format!("behind ({image}, other content)")
            }
            (Some(PointerState::Image { image, .. }), _) => format!("behind ({image})"),
            (Some(PointerState::Missing), _) => "no pointer".to_owned(),
            _ => "unknown".to_owned(),
        };
        let last = state.last_deploy.as_ref().map(|d| format!("{} {}", d.result, time(&d.at)));
        table.row(vec![
            r.environment.to_string(),
            r.agent_id.to_string(),
            r.host.clone(),
            or_dash(state.image.as_deref()),
            or_dash(state.color.as_deref()),
            or_dash(state.health.map(|h| h.as_str())),
            or_dash(state.status.map(|s| s.as_str())),
            or_dash(last),
            format!("{} ago{}", show_age(a.heartbeat_age), if a.stale { " STALE" } else { "" }),
            pointer_cell,
            short(state.message.as_deref()),
        ]);
        rows.push(agent_json(a));
    }

    let mut text = String::new();
    for (env, p) in &fleet.pointers {
        text.push_str(&match p {
            PointerState::Image { image, seq, .. } => format!("{env}: pointer -> {image} (seq {seq})\n"),
            PointerState::Missing => format!("{env}: no pointer\n"),
            PointerState::Broken(e) => format!("{env}: pointer unreadable: {e}\n"),
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
    for (key, e) in &fleet.errors {
        // Document errors already start with the key.
        let line = if e.starts_with(key.as_str()) { e.clone() } else { format!("{key}: {e}") };
        text.push_str(&format!("unreadable registration {line}\n"));
    }
    let stale = fleet.stale().count();

    let doc = json!({
        "app": args.app,
        "env": args.env,
        "ttl_seconds": args.ttl.as_secs(),
        "checked_at": fleet.checked_at,
        "environments": pointers_json(&fleet),
        "agents": rows,
        "errors": fleet.errors.iter().map(|(k, e)| json!({"key": k, "error": e})).collect::<Vec<Value>>(),
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

/// One agent as `status --json` (and `report`) show it.
pub(crate) fn agent_json(a: &AgentRow) -> Value {
    let r = &a.registration;
    let state = a.state();
    json!({
        "key": a.key.as_str(),
        "env": r.environment,
        "agent_id": r.agent_id,
        "host": r.host,
        "queue_url": r.queue_url,
        "version": r.version,
        "image": state.image,
        "image_id": state.image_id,
        "color": state.color,
        "health": state.health,
        "since": state.since,
        "status": state.status,
        "message": state.message,
        "desired": state.desired,
        "pointer_seq": state.pointer_seq,
        "last_deploy": state.last_deploy,
        "last_heartbeat": r.last_heartbeat,
        "heartbeat_age_seconds": a.heartbeat_age.num_seconds(),
        "stale": a.stale,
        "converged": a.converged,
    })
}

/// The environments' pointers as `status --json` shows them.
pub(crate) fn pointers_json(fleet: &Fleet) -> Vec<Value> {
    fleet
        .pointers
        .iter()
        .map(|(env, p)| match p {
            PointerState::Image { image, seq, image_id } => {
                json!({"env": env, "pointer": {"image": image, "seq": seq, "image_id": image_id}, "error": null})
            }
            PointerState::Missing => json!({"env": env, "pointer": null, "error": null}),
            PointerState::Broken(e) => json!({"env": env, "pointer": null, "error": e}),
        })
        .collect()
}

/// The table's cut of a message (the JSON has it whole).
fn short(message: Option<&str>) -> String {
    const MAX: usize = 60;
    match message {
        None => "-".to_owned(),
        Some(m) if m.chars().count() <= MAX => m.to_owned(),
        Some(m) => format!("{}…", m.chars().take(MAX - 1).collect::<String>()),
    }
}

/// `4s`, `3m12s`, `2h05m`, `3d4h`.
pub(crate) fn show_age(d: chrono::Duration) -> String {
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
    fn long_messages_are_cut_in_the_table() {
        assert_eq!(short(Some(&"x".repeat(100))).chars().count(), 60);
        assert_eq!(short(None), "-");
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
