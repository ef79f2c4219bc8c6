//! References that lead nowhere: pointers whose image is gone (or that cannot be read or
//! resolved) and tags whose image is gone. A reader of such a pointer cannot deploy, and an
//! agent serving it stays on what it runs; `s3dock doctor APP` reports them as failures.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::names::AppName;
use crate::registry::Registry;

/// What kind of document dangles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Referrer {
    Pointer,
    Tag,
}

/// One reference that leads nowhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dangling {
    pub referrer: Referrer,
    /// The pointer or tag file.
    pub key: String,
    /// Why it leads nowhere (one line).
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// Every pointer and tag of `app` that does not lead to an image in the bucket. Only an
/// unreachable store (or a retryable failure) is an error.
pub async fn find(registry: &Registry, app: &AppName) -> Result<Vec<Dangling>> {
    let mut out = Vec::new();
    for e in registry.list_envs(app).await? {
        let fix = format!(
            "promote an image that exists (s3dock promote {app}:TAG {env}), or re-push the missing one",
            env = e.env
        );
        match (&e.pointer, &e.image) {
            (Ok(_), Ok(_)) => {}
            (Err(why), _) | (Ok(_), Err(why)) => {
                out.push(Dangling { referrer: Referrer::Pointer, key: e.key.to_string(), problem: why.clone(), fix })
            }
        }
    }
    for t in registry.list_tags(app).await? {
        let version = t.version.canonical();
        let fix =
            format!("re-push the image, or move the tag to one that exists (s3dock tag {app}:TAG {version} --force)");
        let problem = match (&t.doc, &t.image) {
            (Err(why), _) => Some(why.clone()),
            (Ok(doc), None) => Some(format!("{} targets {:?}, which is not an image of {app}", t.key, doc.target_path)),
            (Ok(_), Some(image)) => match registry.image(image).await {
                Ok(_) => None,
                Err(e) if e.is_retryable() => return Err(e),
                Err(e @ (Error::NotFound { .. } | Error::Integrity { .. } | Error::Document(_))) => {
                    Some(format!("{} names {image}, but {e}", t.key))
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(problem) = problem {
            out.push(Dangling { referrer: Referrer::Tag, key: t.key.to_string(), problem, fix });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::clock::ManualClock;
    use crate::layout;
    use crate::names::{EnvName, ImageRef, Version};
    use crate::registry::{EventMode, PromoteSource};
    use crate::store::{MemoryStore, ObjectStore};
    use crate::testing::{put_raw, seed_image};

    #[tokio::test]
    async fn finds_pointers_and_tags_whose_image_is_gone() {
        let t0 = Utc.with_ymd_and_hms(2025, 7, 22, 10, 0, 0).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let registry = Registry::new(store.clone(), Arc::new(ManualClock::new(t0)), "t", EventMode::Lambda);
        let app = AppName::parse("web").unwrap();
        let (a1, a2) = (
            ImageRef::parse("web:20250720-1045-def5678").unwrap(),
            ImageRef::parse("web:20250721-2118-f7a5a27").unwrap(),
        );
        for i in [&a1, &a2] {
            seed_image(&*store, i, i.to_string().as_bytes(), t0).await.unwrap();
        }
        registry.tag(&a1, &Version::parse("v1.0.0").unwrap(), false).await.unwrap();
        registry.tag(&a2, &Version::parse("v2.0.0").unwrap(), false).await.unwrap();
        registry.promote(&PromoteSource::Image(a1.clone()), &EnvName::parse("prod").unwrap()).await.unwrap();
        registry
            .promote(
                &PromoteSource::Version(app.clone(), Version::parse("v2.0.0").unwrap()),
                &EnvName::parse("staging").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(find(&registry, &app).await.unwrap(), vec![], "a healthy bucket has nothing dangling");

        // a2's metadata and archive disappear (a cleanup by hand, a lifecycle rule).
        store.delete(&layout::image_metadata(&app, &a2.tag)).await.unwrap();
        store.delete(&layout::image_archive(&app, &a2.tag)).await.unwrap();
        put_raw(&*store, "pointers/web/qa.json", "{").await.unwrap();
        let found = find(&registry, &app).await.unwrap();
        let keys: Vec<(Referrer, &str)> = found.iter().map(|d| (d.referrer, d.key.as_str())).collect();
        assert_eq!(
            keys,
            [
                (Referrer::Pointer, "pointers/web/qa.json"),
                (Referrer::Pointer, "pointers/web/staging.json"),
                (Referrer::Tag, "tags/web/v2.0.0.json"),
            ]
        );
        assert!(found[1].problem.contains(&a2.to_string()), "{}", found[1].problem);
        assert!(found[2].fix.contains("--force"), "{}", found[2].fix);
    }
}
