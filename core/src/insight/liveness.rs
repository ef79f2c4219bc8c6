//! Are the event functions alive? With `events = "lambda"` nothing but the functions writes
//! the audit records of pushes, tags and promotions, so the newest of each kind in the bucket
//! must have its record, written by a function (`recorded_by: lambda`), within a lag. The
//! record's key follows from the document (see [`crate::layout::audit`]), so it is found by
//! listing one narrow prefix; the lag is the time between the two objects' `last_modified`.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::docs::{self, AuditRecord, EventType, ImageMetadata, PointerAction, PointerDoc, TagDoc};
use crate::error::{Error, Result};
use crate::layout::{self, BucketKey};
use crate::names::AppName;
use crate::store::{ObjectInfo, ObjectStore, list_all, read_small};

/// The kinds of write each function answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// `images/**.json`, answered by verify-upload.
    Push,
    /// `tags/**.json`, answered by record-tag.
    Tag,
    /// `pointers/**.json`, answered by promotion-fanout.
    Promotion,
}

impl Subject {
    pub const ALL: [Subject; 3] = [Subject::Push, Subject::Tag, Subject::Promotion];

    /// The function that writes this kind's records.
    pub fn function(self) -> &'static str {
        match self {
            Subject::Push => "verify-upload",
            Subject::Tag => "record-tag",
            Subject::Promotion => "promotion-fanout",
        }
    }

    fn prefix(self, app: &AppName) -> String {
        match self {
            Subject::Push => layout::images_prefix(app),
            Subject::Tag => layout::tags_prefix(app),
            Subject::Promotion => layout::pointers_prefix(app),
        }
    }

    fn is_mine(self, key: &crate::names::ObjectKey) -> bool {
        matches!(
            (self, layout::classify(key)),
            (Subject::Push, Ok(BucketKey::ImageMetadata { .. }))
                | (Subject::Tag, Ok(BucketKey::Tag { .. }))
                | (Subject::Promotion, Ok(BucketKey::Pointer { .. }))
        )
    }
}

/// What was found for the newest write of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Liveness {
    /// Nothing of this kind is in the bucket yet: nothing to tell.
    NothingYet,
    /// A function wrote the record, `lag_ms` after the document.
    Recorded { audit_key: String, lag_ms: i64 },
    /// The record exists but something else wrote it (a CLI with `events = "inline"`), so the
    /// function had nothing to do and its liveness cannot be told from it.
    RecordedByOther { audit_key: String, recorded_by: String },
    /// No record yet, but the document is younger than the lag.
    Pending { age_ms: i64 },
    /// No record, and the document is older than the lag: the function is not working.
    Missing { age_ms: i64 },
    /// The document cannot be read, so its record cannot be looked for.
    Unreadable { why: String },
}

/// The newest write of one kind and what was found for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub subject: Subject,
    pub function: &'static str,
    /// The newest document of the kind, if any.
    pub key: Option<String>,
    pub written_at: Option<DateTime<Utc>>,
    pub liveness: Liveness,
}

/// Looks, for each kind, at the newest document among `apps` and for its function-written
/// audit record. A document without a record is [`Liveness::Missing`] once older than `lag`.
pub async fn check(store: &dyn ObjectStore, apps: &[AppName], lag: Duration, now: DateTime<Utc>) -> Result<Vec<Probe>> {
    let mut out = Vec::new();
    for subject in Subject::ALL {
        let mut newest: Option<(AppName, ObjectInfo)> = None;
        for app in apps {
            for o in list_all(store, &subject.prefix(app)).await? {
                if subject.is_mine(&o.key) && newest.as_ref().is_none_or(|(_, n)| o.last_modified > n.last_modified) {
                    newest = Some((app.clone(), o));
                }
            }
        }
        let Some((app, doc)) = newest else {
            out.push(Probe {
                subject,
                function: subject.function(),
                key: None,
                written_at: None,
                liveness: Liveness::NothingYet,
            });
            continue;
        };
        let liveness = match find_record(store, subject, &app, &doc).await? {
            Err(why) => Liveness::Unreadable { why },
            Ok(Some((audit, rec))) if rec.recorded_by.as_deref() == Some("lambda") => {
                let lag = match (audit.last_modified, doc.last_modified) {
                    (Some(a), Some(d)) => (a - d).num_milliseconds().max(0),
                    _ => 0,
                };
                Liveness::Recorded { audit_key: audit.key.to_string(), lag_ms: lag }
            }
            Ok(Some((audit, rec))) => Liveness::RecordedByOther {
                audit_key: audit.key.to_string(),
                recorded_by: rec.recorded_by.unwrap_or_else(|| "an older tool".to_owned()),
            },
            Ok(None) => {
                let age = doc.last_modified.map_or(Duration::zero(), |t| now - t);
                if age > lag {
                    Liveness::Missing { age_ms: age.num_milliseconds() }
                } else {
                    Liveness::Pending { age_ms: age.num_milliseconds().max(0) }
                }
            }
        };
        out.push(Probe {
            subject,
            function: subject.function(),
            key: Some(doc.key.to_string()),
            written_at: doc.last_modified,
            liveness,
        });
    }
    Ok(out)
}

/// The audit record of `doc`, if written; `Err(why)` when `doc` cannot be read or resolved.
async fn find_record(
    store: &dyn ObjectStore,
    subject: Subject,
    app: &AppName,
    doc: &ObjectInfo,
) -> Result<std::result::Result<Option<(ObjectInfo, AuditRecord)>, String>> {
    let key = &doc.key;
    let Some((bytes, _)) = read_small(store, key, docs::MAX_DOC_BYTES).await? else {
        return Ok(Err(format!("{key} disappeared while it was read")));
    };
    let detail = |rec: &AuditRecord, field: &str| rec.details.get(field).cloned();
    // The fact's time and image, which name the record's key, and how to recognize the record.
    type Matcher = Box<dyn Fn(&AuditRecord) -> bool + Send + Sync>;
    let (at, event, hash7, matches): (DateTime<Utc>, EventType, String, Matcher) = match subject {
        Subject::Push => {
            let meta: ImageMetadata = match docs::decode(key.as_str(), &bytes) {
                Ok(m) => m,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let Some(image) = meta.image_ref() else {
                return Ok(Err(format!("{key}: image_tag {:?} is not an image reference", meta.image_tag)));
            };
            let (path, checksum) = (key.to_string(), meta.checksum.clone());
            let m: Matcher = Box::new(move |r| {
                r.event_type == EventType::Push.as_str()
                    && (detail(r, "metadata_path") == Some(path.clone().into())
                        || detail(r, "checksum") == Some(checksum.clone().into()))
            });
            (meta.created_at, EventType::Push, image.tag.hash7().to_owned(), m)
        }
        Subject::Tag => {
            let tag: TagDoc = match docs::decode(key.as_str(), &bytes) {
                Ok(t) => t,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let image = match crate::bucket::target_image(app, &tag.target_path) {
                Ok(i) => i,
                Err(why) => return Ok(Err(format!("{key}: {why}"))),
            };
            let (path, reference) = (key.to_string(), image.to_string());
            let m: Matcher = Box::new(move |r| {
                r.event_type == EventType::Tag.as_str()
                    && detail(r, "tag_path") == Some(path.clone().into())
                    && detail(r, "image_reference") == Some(reference.clone().into())
            });
            (tag.promoted_at, EventType::Tag, image.tag.hash7().to_owned(), m)
        }
        Subject::Promotion => {
            let pointer: PointerDoc = match docs::decode(key.as_str(), &bytes) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let image = match crate::bucket::resolve_doc(store, app, &pointer).await {
                Ok(i) => i,
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => return Ok(Err(e.to_string())),
            };
            let event = if pointer.action == Some(PointerAction::Rollback) {
                EventType::Rollback
            } else {
                EventType::Promotion
            };
            let (path, seq) = (key.to_string(), pointer.seq());
            let m: Matcher = Box::new(move |r| {
                r.event_type == event.as_str()
                    && detail(r, "pointer_path") == Some(path.clone().into())
                    && detail(r, "seq") == Some(seq.into())
            });
            (pointer.promoted_at, event, image.tag.hash7().to_owned(), m)
        }
    };
    let prefix = layout::audit_fact_prefix(app, at, event.as_str(), &hash7);
    for o in list_all(store, &prefix).await? {
        let Some((b, _)) = read_small(store, &o.key, docs::MAX_DOC_BYTES).await.map_err(Error::from)? else {
            continue;
        };
        if let Ok(rec) = docs::decode::<AuditRecord>(o.key.as_str(), &b)
            && matches(&rec)
        {
            return Ok(Ok(Some((o, rec))));
        }
    }
    Ok(Ok(None))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::clock::ManualClock;
    use crate::events::{Handlers, ObjectEvent, Origin};
    use crate::names::{EnvName, ImageRef, Version};
    use crate::registry::{EventMode, PromoteSource, Registry};
    use crate::store::{LocalStore, ObjectStore};
    use crate::testing::seed_image;

    fn status(probes: &[Probe]) -> Vec<(Subject, &'static str)> {
        probes
            .iter()
            .map(|p| {
                let s = match p.liveness {
                    Liveness::NothingYet => "nothing",
                    Liveness::Recorded { .. } => "recorded",
                    Liveness::RecordedByOther { .. } => "other",
                    Liveness::Pending { .. } => "pending",
                    Liveness::Missing { .. } => "missing",
                    Liveness::Unreadable { .. } => "unreadable",
                };
                (p.subject, s)
            })
            .collect()
    }

    #[tokio::test]
    async fn tells_recorded_pending_missing_and_other_writers_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let t0 = Utc.with_ymd_and_hms(2025, 7, 22, 10, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        let app = AppName::parse("web").unwrap();
        let apps = [app.clone()];
        let lag = Duration::minutes(5);
        assert_eq!(
            status(&check(&*store, &apps, lag, Utc::now()).await.unwrap()),
            [(Subject::Push, "nothing"), (Subject::Tag, "nothing"), (Subject::Promotion, "nothing"),]
        );

        // Lambda mode: the registry writes no audit; nothing answers yet.
        let registry = Registry::new(store.clone(), clock.clone(), "t", EventMode::Lambda);
        let image = ImageRef::parse("web:20250721-2118-f7a5a27").unwrap();
        seed_image(&*store, &image, b"archive", t0).await.unwrap();
        registry.tag(&image, &Version::parse("v1.0.0").unwrap(), false).await.unwrap();
        let env = EnvName::parse("prod").unwrap();
        registry.promote(&PromoteSource::Image(image.clone()), &env).await.unwrap();
        let now = Utc::now();
        assert_eq!(
            status(&check(&*store, &apps, lag, now).await.unwrap()),
            [(Subject::Push, "pending"), (Subject::Tag, "pending"), (Subject::Promotion, "pending"),]
        );
        let later = now + Duration::minutes(6);
        let probes = check(&*store, &apps, lag, later).await.unwrap();
        assert_eq!(
            status(&probes),
            [(Subject::Push, "missing"), (Subject::Tag, "missing"), (Subject::Promotion, "missing"),]
        );
        assert_eq!(probes[2].key.as_deref(), Some("pointers/web/prod.json"));
        assert_eq!(probes[2].function, "promotion-fanout");

        // The functions answer (the same handlers, as a Lambda runs them).
        let lambda = Handlers::new(store.clone(), clock.clone(), Origin::Lambda, "fn");
        for key in
            ["images/web/202507/web-20250721-2118-f7a5a27.json", "tags/web/v1.0.0.json", "pointers/web/prod.json"]
        {
            let ev = ObjectEvent::for_key(crate::names::ObjectKey::parse(key).unwrap());
            let out = lambda.handle(&ev).await;
            assert!(matches!(out, Ok(crate::events::Outcome::Recorded { .. })), "{key}: {out:?}");
        }
        let probes = check(&*store, &apps, lag, later).await.unwrap();
        assert_eq!(
            status(&probes),
            [(Subject::Push, "recorded"), (Subject::Tag, "recorded"), (Subject::Promotion, "recorded"),]
        );
        assert!(matches!(&probes[2].liveness, Liveness::Recorded { lag_ms, .. } if *lag_ms < 60_000), "{probes:?}");

        // An inline CLI promotes next: its own record says nothing about the function.
        let inline = Registry::new(store.clone(), clock.clone(), "t", EventMode::Inline);
        let other = ImageRef::parse("web:20250722-0900-abcdef1").unwrap();
        seed_image(&*store, &other, b"other", t0).await.unwrap();
        inline.promote(&PromoteSource::Image(other), &env).await.unwrap();
        let probes = check(&*store, &apps, lag, later).await.unwrap();
        assert!(matches!(&probes[2].liveness, Liveness::RecordedByOther { recorded_by, .. } if recorded_by == "cli"));
    }
}
