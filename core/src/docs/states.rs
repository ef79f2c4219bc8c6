//! The closed sets of words agents and deployers write into documents: a deploy's result,
//! an agent's status and its container's health. Serde maps each to its wire word (the
//! same words the documents held as plain strings before).

use serde::{Deserialize, Serialize};
use strum::{Display, EnumIter, EnumString, IntoStaticStr};

// Each enum's words come from serde (the wire) and from strum (`as_str`, `Display`, `FromStr`),
// both from the variant names in kebab-case; a test checks that they agree for every variant.

/// How a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, Display, EnumString, EnumIter)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum DeployResult {
    /// Traffic is on a new container of the image.
    Succeeded,
    /// The image was already serving and healthy: nothing done, nothing audited.
    Unchanged,
    /// The deploy was abandoned; traffic stays on the previous container.
    Failed,
    /// Traffic reached the new container, failed there, and was switched back.
    RolledBack,
    /// Abandoned before the switch because the caller wants something else now (the pointer
    /// moved); traffic stays on the previous container. Not the image's fault.
    Superseded,
}

impl DeployResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// `failed` and `rolled-back`: the image (or its verification) failed, and trying the same
    /// image again at once would fail the same way.
    pub fn is_failure(self) -> bool {
        matches!(self, DeployResult::Failed | DeployResult::RolledBack)
    }
}

/// Where an agent's service stands, as its registration's `status` says it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, IntoStaticStr, Display, EnumString, EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum AgentStatus {
    /// Started, not reconciled yet.
    #[default]
    Starting,
    /// The pointer's image serves.
    Converged,
    /// A pull or deploy is running.
    Deploying,
    /// The last deploy (or pull) of the desired image failed; the previous container keeps
    /// serving.
    Failed,
    /// The environment has no pointer: nothing to deploy.
    NoPointer,
    /// The last reconcile could not run (`message` says why); the next one tries again.
    Error,
    /// The agent stopped (its last registration before exiting).
    Stopped,
}

impl AgentStatus {
    /// The registration's wire value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The serving container's health, as the registration reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, Display, EnumString, EnumIter)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words the documents held as strings before these were enums: serde writes and
    /// reads exactly them, and `as_str` agrees.
    #[test]
    fn wire_words_are_unchanged() {
        fn check<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + std::fmt::Display>(
            pairs: &[(T, &str)],
        ) {
            for (v, word) in pairs {
                assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{word}\""));
                assert_eq!(&serde_json::from_str::<T>(&format!("\"{word}\"")).unwrap(), v);
                assert_eq!(v.to_string(), *word);
            }
        }
        use AgentStatus as A;
        use DeployResult as D;
        check(&[
            (D::Succeeded, "succeeded"),
            (D::Unchanged, "unchanged"),
            (D::Failed, "failed"),
            (D::RolledBack, "rolled-back"),
            (D::Superseded, "superseded"),
        ]);
        check(&[
            (A::Starting, "starting"),
            (A::Converged, "converged"),
            (A::Deploying, "deploying"),
            (A::Failed, "failed"),
            (A::NoPointer, "no-pointer"),
            (A::Error, "error"),
            (A::Stopped, "stopped"),
        ]);
        check(&[(Health::Healthy, "healthy"), (Health::Unhealthy, "unhealthy"), (Health::Unknown, "unknown")]);
        assert!(serde_json::from_str::<Health>("\"Healthy\"").is_err());
    }

    /// serde's word (the wire) and strum's (`as_str`, `Display`, `FromStr`) are the same for
    /// every variant, so a variant added later cannot have two names.
    #[test]
    fn serde_and_strum_words_agree() {
        fn check<T>()
        where
            T: strum::IntoEnumIterator + Serialize + std::str::FromStr + Copy + PartialEq + std::fmt::Debug,
            T: std::fmt::Display + Into<&'static str>,
        {
            for v in T::iter() {
                let word: &'static str = v.into();
                assert_eq!(serde_json::to_value(v).unwrap(), serde_json::Value::String(word.to_owned()), "{v:?}");
                assert_eq!(v.to_string(), word);
                assert!(word.parse::<T>().is_ok_and(|p| p == v), "{word} parses back to {v:?}");
            }
        }
        check::<DeployResult>();
        check::<AgentStatus>();
        check::<Health>();
        check::<crate::docs::EventType>();
        use strum::IntoEnumIterator;
        assert_eq!(crate::docs::EventType::ALL.to_vec(), crate::docs::EventType::iter().collect::<Vec<_>>());
        assert!("Healthy".parse::<Health>().is_err());
    }
}
