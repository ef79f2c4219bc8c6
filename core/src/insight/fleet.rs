//! The fleet of one app as the bucket tells it: every agent registration, whether its
//! heartbeat is stale, and whether it runs what its environment's pointer resolves to now.
//! `s3dock status`, `s3dock doctor` and `s3dock report` all read it through [`load`].

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use crate::ErrorKind;
use crate::docs::{AgentRegistration, AgentState};
use crate::error::Result;
use crate::layout;
use crate::names::{AppName, EnvName, ObjectKey};
use crate::registry::Registry;

/// What an environment's pointer resolves to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointerState {
    Image {
        image: String,
        seq: u64,
        /// Docker's id in the image's metadata, when the push recorded it.
        image_id: Option<String>,
    },
    /// No pointer file.
    Missing,
    /// A pointer that cannot be read or leads nowhere, with why.
    Broken(String),
}

/// One registered agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub key: ObjectKey,
    pub registration: AgentRegistration,
    pub heartbeat_age: Duration,
    /// The heartbeat is older than the TTL: the agent is probably down.
    pub stale: bool,
    /// Runs the image its environment's pointer resolves to (the same tag and, where both sides
    /// know it, the same image id); `None` when the pointer is missing or broken.
    pub converged: Option<bool>,
}

/// Whether an agent runs what the pointer names: the same tag *and*, when both sides know it,
/// the same image id (a tag re-pushed with other content is not what the agent runs).
pub fn runs_pointer(state: &AgentState, image: &str, image_id: Option<&str>) -> bool {
    state.image.as_deref() == Some(image)
        && match (state.image_id.as_deref(), image_id) {
            (Some(running), Some(wanted)) => running == wanted,
            _ => true,
        }
}

impl AgentRow {
    /// The state the agent reported (empty when it reported none yet).
    pub fn state(&self) -> AgentState {
        self.registration.state.clone().unwrap_or_default()
    }
}

/// The fleet of an app (or of one of its environments).
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub app: AppName,
    pub env: Option<EnvName>,
    pub checked_at: DateTime<Utc>,
    pub ttl: Duration,
    /// Every environment an agent serves, and the asked-for one.
    pub pointers: BTreeMap<EnvName, PointerState>,
    /// Sorted by environment, then agent id.
    pub agents: Vec<AgentRow>,
    /// Registrations that cannot be read or are filed under the wrong folder: `(key, why)`.
    pub errors: Vec<(String, String)>,
}

impl Fleet {
    pub fn stale(&self) -> impl Iterator<Item = &AgentRow> {
        self.agents.iter().filter(|a| a.stale)
    }

    /// Agents that run something other than what the pointer names.
    pub fn behind(&self) -> impl Iterator<Item = &AgentRow> {
        self.agents.iter().filter(|a| a.converged == Some(false))
    }
}

/// Reads the registrations of `app` (and `env`) and resolves the pointers they serve. Only an
/// unreachable store fails it; unreadable registrations and broken pointers are reported.
pub async fn load(registry: &Registry, app: &AppName, env: Option<&EnvName>, ttl: Duration) -> Result<Fleet> {
    let now = registry.clock().now();
    let mut agents: Vec<(ObjectKey, AgentRegistration)> = Vec::new();
    let mut errors = Vec::new();
    for (key, reg) in registry.list_agents(app, env).await? {
        match reg {
            Ok(r) if r.app_name == *app && env.is_none_or(|e| *e == r.environment) => agents.push((key, r)),
            Ok(r) => errors
                .push((key.to_string(), format!("filed under {key} but registers {}/{}", r.app_name, r.environment))),
            Err(e) => errors.push((key.to_string(), e)),
        }
    }
    agents.sort_by(|a, b| (&a.1.environment, &a.1.agent_id).cmp(&(&b.1.environment, &b.1.agent_id)));

    let mut envs: Vec<EnvName> = agents.iter().map(|(_, r)| r.environment.clone()).collect();
    envs.extend(env.cloned());
    envs.sort();
    envs.dedup();
    let mut pointers = BTreeMap::new();
    for e in envs {
        let state = pointer_state(registry, app, &e).await?;
        pointers.insert(e, state);
    }

    let rows = agents
        .into_iter()
        .map(|(key, registration)| {
            let heartbeat_age = now - registration.last_heartbeat;
            let state = registration.state.clone().unwrap_or_default();
            let converged = match pointers.get(&registration.environment) {
                Some(PointerState::Image { image, image_id, .. }) => {
                    Some(runs_pointer(&state, image, image_id.as_deref()))
                }
                _ => None,
            };
            AgentRow { key, registration, heartbeat_age, stale: heartbeat_age > ttl, converged }
        })
        .collect();
    Ok(Fleet { app: app.clone(), env: env.cloned(), checked_at: now, ttl, pointers, agents: rows, errors })
}

/// Resolves one environment's pointer; only an unreachable store is an error.
pub async fn pointer_state(registry: &Registry, app: &AppName, env: &EnvName) -> Result<PointerState> {
    Ok(match registry.resolve(app, env).await {
        Ok(r) => PointerState::Image {
            image: r.record.image.to_string(),
            seq: r.pointer.as_ref().map_or(0, |p| p.seq()),
            image_id: r.record.metadata.image_id.clone(),
        },
        Err(e) if e.is_retryable() || e.kind() == ErrorKind::Unavailable => return Err(e),
        // No pointer at all, or one that leads nowhere (reported, not fatal).
        Err(e) if e.kind() == ErrorKind::NotFound => match registry.store().head(&layout::pointer(app, env)).await? {
            None => PointerState::Missing,
            Some(_) => PointerState::Broken(e.to_string()),
        },
        Err(e) => PointerState::Broken(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::clock::ManualClock;
    use crate::docs::{self, SCHEMA_VERSION};
    use crate::names::{AgentId, ImageRef};
    use crate::registry::{EventMode, PromoteSource};
    use crate::store::{MemoryStore, ObjectStore};
    use crate::testing::{put_raw, seed_image};

    fn registration(env: &str, id: &str, image: Option<&str>, heartbeat: DateTime<Utc>) -> AgentRegistration {
        AgentRegistration {
            schema_version: Some(SCHEMA_VERSION),
            agent_id: AgentId::parse(id).unwrap(),
            app_name: AppName::parse("web").unwrap(),
            environment: EnvName::parse(env).unwrap(),
            queue_url: None,
            host: format!("{id}.example"),
            last_heartbeat: heartbeat,
            state: image.map(|i| AgentState { image: Some(i.into()), ..AgentState::default() }),
            version: None,
        }
    }

    #[tokio::test]
    async fn marks_stale_behind_and_broken() {
        let t0 = Utc.with_ymd_and_hms(2025, 7, 22, 10, 0, 0).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(t0));
        let registry = Registry::new(store.clone(), clock.clone(), "t", EventMode::Lambda);
        let (a1, a2) = ("web:20250720-1045-def5678", "web:20250721-2118-f7a5a27");
        for i in [a1, a2] {
            seed_image(&*store, &ImageRef::parse(i).unwrap(), i.as_bytes(), t0).await.unwrap();
        }
        registry
            .promote(&PromoteSource::Image(ImageRef::parse(a2).unwrap()), &EnvName::parse("prod").unwrap())
            .await
            .unwrap();
        let app = AppName::parse("web").unwrap();
        let regs = [
            registration("prod", "h1", Some(a2), t0 - Duration::minutes(1)),
            registration("prod", "h2", Some(a1), t0 - Duration::minutes(30)),
            registration("qa", "h3", None, t0),
        ];
        for r in &regs {
            let key = layout::agent(&app, &r.environment, &r.agent_id);
            put_raw(&*store, key.as_str(), docs::encode(r)).await.unwrap();
        }
        put_raw(&*store, "agents/web/prod/h9.json", "not json").await.unwrap();
        let other_app =
            AgentRegistration { app_name: AppName::parse("api").unwrap(), ..registration("prod", "h4", None, t0) };
        put_raw(&*store, "agents/web/prod/h4.json", docs::encode(&other_app)).await.unwrap();

        let fleet = load(&registry, &app, None, Duration::minutes(10)).await.unwrap();
        let ids: Vec<&str> = fleet.agents.iter().map(|a| a.registration.agent_id.as_str()).collect();
        assert_eq!(ids, ["h1", "h2", "h3"]);
        assert_eq!(fleet.stale().map(|a| a.registration.agent_id.as_str()).collect::<Vec<_>>(), ["h2"]);
        assert_eq!(fleet.behind().map(|a| a.registration.agent_id.as_str()).collect::<Vec<_>>(), ["h2"]);
        assert_eq!(fleet.agents[0].converged, Some(true));
        assert_eq!(fleet.agents[2].converged, None, "qa has no pointer");
        assert_eq!(fleet.pointers[&EnvName::parse("qa").unwrap()], PointerState::Missing);
        assert!(
            matches!(&fleet.pointers[&EnvName::parse("prod").unwrap()], PointerState::Image { image, seq: 1, .. } if image == a2),
            "{:?}",
            fleet.pointers
        );
        assert_eq!(fleet.errors.len(), 2, "{:?}", fleet.errors);

        // A pointer to a tag that was removed is broken, not an error.
        put_raw(
            &*store,
            "pointers/web/qa.json",
            r#"{"target_type":"tag","target_path":"tags/web/v9.0.0.json","promoted_at":"2025-07-22T10:00:00Z","promoted_by":"t","git_hash":"","git_time":""}"#,
        )
        .await
        .unwrap();
        let qa = EnvName::parse("qa").unwrap();
        let fleet = load(&registry, &app, Some(&qa), Duration::minutes(10)).await.unwrap();
        assert!(
            matches!(&fleet.pointers[&qa], PointerState::Broken(why) if why.contains("v9.0.0")),
            "{:?}",
            fleet.pointers
        );
        assert_eq!(fleet.agents.len(), 1);
    }

    /// The agents compared tag strings: one still running an older push of the same tag was
    /// reported converged.
    #[test]
    fn an_agent_running_older_content_of_the_same_tag_is_behind() {
        let state = |id: Option<&str>| AgentState {
            image: Some("web:20250721-2118-f7a5a27".into()),
            image_id: id.map(str::to_owned),
            ..Default::default()
        };
        let tag = "web:20250721-2118-f7a5a27";
        assert!(runs_pointer(&state(Some("sha256:aa")), tag, Some("sha256:aa")));
        assert!(!runs_pointer(&state(Some("sha256:old")), tag, Some("sha256:aa")));
        // Either side without an id (an older agent, an older push): the tag decides.
        assert!(runs_pointer(&state(None), tag, Some("sha256:aa")));
        assert!(runs_pointer(&state(Some("sha256:aa")), tag, None));
        assert!(!runs_pointer(&state(Some("sha256:aa")), "web:20250722-0000-0000000", Some("sha256:aa")));
    }
}
