//! Fault injection for the crash tests: `S3DOCK_AGENT_CRASH_AT=<point>` (read once at start by
//! the binary) makes the agent stop dead at that point of its first deploy that reaches it, so
//! a test can SIGKILL it exactly there and check that the restart converges.
//!
//! At the point, the agent writes `s3dock-agent: fault injection: reached <point>` on stderr
//! and the deploy waits forever (the rest of the agent keeps running until it is killed). The
//! points: `after-pull` (the image is loaded, no container started), the deployer's phases
//! `starting`, `health-check`, `switching`, `verifying`, `rolling-back`, `draining` (reached
//! once the state file records them, before their first action), and `probe-ok` (the first
//! successful health probe: in the middle of the health check).
//!
//! Never set it in production: an agent stopped at a fault point deploys nothing more.

use std::io::Write;

use s3dock_engine::deploy::{DeployEvent, Phase};

/// The environment variable the binary reads.
pub const CRASH_AT_ENV: &str = "S3DOCK_AGENT_CRASH_AT";

/// Where to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    AfterPull,
    Phase(Phase),
    ProbeOk,
}

impl FaultPoint {
    pub const NAMES: [&'static str; 8] =
        ["after-pull", "starting", "health-check", "probe-ok", "switching", "verifying", "rolling-back", "draining"];

    pub fn parse(s: &str) -> Result<FaultPoint, String> {
        Ok(match s {
            "after-pull" => FaultPoint::AfterPull,
            "probe-ok" => FaultPoint::ProbeOk,
            "starting" => FaultPoint::Phase(Phase::Starting),
            "health-check" => FaultPoint::Phase(Phase::HealthCheck),
            "switching" => FaultPoint::Phase(Phase::Switching),
            "verifying" => FaultPoint::Phase(Phase::Verifying),
            "rolling-back" => FaultPoint::Phase(Phase::RollingBack),
            "draining" => FaultPoint::Phase(Phase::Draining),
            other => {
                return Err(format!(
                    "{CRASH_AT_ENV}={other:?} is not a fault point; use one of {}",
                    FaultPoint::NAMES.join(", ")
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AfterPull => "after-pull",
            FaultPoint::ProbeOk => "probe-ok",
            FaultPoint::Phase(p) => p.as_str(),
        }
    }

    /// Whether a deployer event is this point.
    pub fn matches(self, event: &DeployEvent) -> bool {
        match (self, event) {
            (FaultPoint::Phase(want), DeployEvent::Phase { phase, .. }) => want == *phase,
            (FaultPoint::ProbeOk, DeployEvent::Probe { ok: true, streak: 1, .. }) => true,
            _ => false,
        }
    }
}

/// Announces the point on stderr and never returns.
pub async fn stop_here(point: FaultPoint) -> ! {
    announce(point);
    std::future::pending::<()>().await;
    unreachable!("a pending future never completes")
}

fn announce(point: FaultPoint) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "s3dock-agent: fault injection: reached {}", point.name());
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3dock_engine::deploy::Color;

    #[test]
    fn names_round_trip_and_match_events() {
        for name in FaultPoint::NAMES {
            assert_eq!(FaultPoint::parse(name).unwrap().name(), name);
        }
        assert!(FaultPoint::parse("idle").unwrap_err().contains("after-pull, starting"));
        let p = FaultPoint::parse("health-check").unwrap();
        assert!(p.matches(&DeployEvent::Phase { phase: Phase::HealthCheck, color: Some(Color::Blue) }));
        assert!(!p.matches(&DeployEvent::Phase { phase: Phase::Starting, color: None }));
        let p = FaultPoint::ProbeOk;
        assert!(p.matches(&DeployEvent::Probe { color: Color::Green, ok: true, streak: 1 }));
        assert!(!p.matches(&DeployEvent::Probe { color: Color::Green, ok: false, streak: 0 }));
        assert!(!FaultPoint::AfterPull.matches(&DeployEvent::Probe { color: Color::Green, ok: true, streak: 1 }));
    }
}
