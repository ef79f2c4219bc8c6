//! The bucket layout: the one place that builds and parses keys.
//!
//! ```text
//! images/{app}/{YYYYMM}/{app}-{YYYYMMDD-HHMM}-{hash7}.tar.gz   the image (docker save, gzipped)
//! images/{app}/{YYYYMM}/{app}-{YYYYMMDD-HHMM}-{hash7}.{rev}.tar.gz   a re-push's archive
//! images/{app}/{YYYYMM}/{app}-{YYYYMMDD-HHMM}-{hash7}.json     its metadata, written last
//! tags/{app}/{version}.json                                   semantic version -> image
//! pointers/{app}/{env}.json                                   environment -> image or tag
//! audit/{app}/{YYYYMM}/{YYYYMMDD-HHMM}-{event}-{hash7}[-{discriminator}].json
//! archive/{app}/{YYYYMM}/{file}-archived-on-{YYYYMMDD-HHMM}[-{n}].tar.gz|.json
//! agents/{app}/{env}/{agent-id}.json                          agent registration and state
//! leases/{app}/{YYYYMMDD-HHMM-hash7}/hold-{id}                a reference being made
//! leases/{app}/{YYYYMMDD-HHMM-hash7}/delete                   a deletion being made
//! ```
//!
//! The first push of a tag writes the archive at the key the tag implies. A push that replaces
//! it writes a new archive at a revision key (`.{rev}` before `.tar.gz`, unique to that push)
//! and names it in the metadata, so the metadata swap is the single step that moves readers
//! from one archive to the other; the old archive is deleted only after it was archived.
//!
//! `{YYYYMM}` of an image key is the month of the tag's own timestamp, so the key follows from
//! the tag alone. Buckets written by the original Go tool used the push month instead; readers
//! fall back to a search under `images/{app}/` (see `Registry::find_image`).
//!
//! Nothing outside this module formats a key.

use chrono::{DateTime, Utc};

use crate::names::{AgentId, AppName, EnvName, ImageTag, NameError, ObjectKey, Version};

pub const IMAGES: &str = "images/";
pub const TAGS: &str = "tags/";
pub const POINTERS: &str = "pointers/";
pub const AUDIT: &str = "audit/";
pub const ARCHIVE: &str = "archive/";
pub const AGENTS: &str = "agents/";
pub const LEASES: &str = "leases/";
/// Where the precondition probe writes its throw-away objects: a prefix of its own, so every
/// role (pushers, promoters, agents, maintainers) may write there without being able to touch
/// anything else, no event notification fires for it, and a lifecycle rule expires leftovers.
pub const PROBE_PREFIX: &str = "probe/";

pub const ARCHIVE_EXT: &str = ".tar.gz";
pub const JSON_EXT: &str = ".json";

fn key(s: String) -> ObjectKey {
    // Every key here is assembled from validated names and fixed literals, which can only
    // produce a valid key; a failure is a bug in this module, caught by the table test.
    ObjectKey::parse(&s).unwrap_or_else(|e| panic!("layout built an invalid key {s:?}: {e}"))
}

/// `{app}-{YYYYMMDD-HHMM}-{hash7}`: the file stem shared by an image and its metadata.
pub fn image_stem(app: &AppName, tag: &ImageTag) -> String {
    format!("{app}-{tag}")
}

pub fn image_archive(app: &AppName, tag: &ImageTag) -> ObjectKey {
    key(format!("{IMAGES}{app}/{}/{}{ARCHIVE_EXT}", tag.month(), image_stem(app, tag)))
}

pub fn image_metadata(app: &AppName, tag: &ImageTag) -> ObjectKey {
    key(format!("{IMAGES}{app}/{}/{}{JSON_EXT}", tag.month(), image_stem(app, tag)))
}

/// A re-push's archive: beside the canonical one, with `rev` (lowercase hex, unique to that push)
/// before the extension.
pub fn image_archive_revision(app: &AppName, tag: &ImageTag, rev: &str) -> ObjectKey {
    key(format!("{IMAGES}{app}/{}/{}.{}{ARCHIVE_EXT}", tag.month(), image_stem(app, tag), sanitize_rev(rev)))
}

fn sanitize_rev(rev: &str) -> String {
    let mut r: String = rev.chars().filter(|c| c.is_ascii_hexdigit()).map(|c| c.to_ascii_lowercase()).collect();
    r.truncate(32);
    if r.is_empty() { "0".into() } else { r }
}

/// The archive key that belongs beside a metadata key (same folder and stem).
pub fn archive_beside_metadata(meta: &ObjectKey) -> Option<ObjectKey> {
    let stem = meta.as_str().strip_suffix(JSON_EXT)?;
    Some(key(format!("{stem}{ARCHIVE_EXT}")))
}

/// The metadata key of the image an archive key belongs to (a revision archive's too).
pub fn metadata_beside_archive(archive: &ObjectKey) -> Option<ObjectKey> {
    match classify(archive) {
        Ok(BucketKey::ImageArchive { app, tag, month, .. }) => {
            Some(key(format!("{IMAGES}{app}/{month}/{}{JSON_EXT}", image_stem(&app, &tag))))
        }
        _ => None,
    }
}

pub fn images_prefix(app: &AppName) -> String {
    format!("{IMAGES}{app}/")
}

pub fn images_month_prefix(app: &AppName, month: &str) -> String {
    format!("{IMAGES}{app}/{month}/")
}

/// The canonical tag key (`v` + semver).
pub fn tag(app: &AppName, version: &Version) -> ObjectKey {
    key(format!("{TAGS}{app}/{}{JSON_EXT}", version.canonical()))
}

/// Every key a version may live under, canonical first: the original tool stored the version
/// exactly as typed, so `1.2.0` and `v1.2.0` are both looked for.
pub fn tag_candidates(app: &AppName, version: &Version) -> Vec<ObjectKey> {
    let canonical = version.canonical();
    let mut out = vec![tag(app, version)];
    for alt in [version.as_typed().to_owned(), canonical.trim_start_matches('v').to_owned()] {
        if alt != canonical && !out.iter().any(|k| k.as_str().ends_with(&format!("/{alt}{JSON_EXT}"))) {
            out.push(key(format!("{TAGS}{app}/{alt}{JSON_EXT}")));
        }
    }
    out
}

pub fn tags_prefix(app: &AppName) -> String {
    format!("{TAGS}{app}/")
}

pub fn pointer(app: &AppName, env: &EnvName) -> ObjectKey {
    key(format!("{POINTERS}{app}/{env}{JSON_EXT}"))
}

pub fn pointers_prefix(app: &AppName) -> String {
    format!("{POINTERS}{app}/")
}

pub fn probe(id: &str) -> ObjectKey {
    key(format!("{PROBE_PREFIX}{}", sanitize(id)))
}

/// Keeps a discriminator key-safe and short: letters, digits, `.`, `_`, `+`, `-`.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') { c } else { '_' })
        .collect();
    out.truncate(100);
    out
}

/// `audit/{app}/{YYYYMM}/{YYYYMMDD-HHMM}-{event}-{hash7}[-{discriminator...}].json`.
///
/// The time is the time of the audited fact (the promotion's `promoted_at`, the metadata's
/// `created_at`), never the time the record is written, and the discriminator names the
/// event's identity (environment and pointer seq, version, checksum prefix). So two different
/// events never share a key, and the same event delivered twice maps to the same key, which
/// the conditional create turns into a no-op.
pub fn audit(app: &AppName, at: DateTime<Utc>, event: &str, hash7: &str, discriminators: &[&str]) -> ObjectKey {
    let mut name = audit_fact_prefix(app, at, event, hash7);
    for d in discriminators.iter().filter(|d| !d.is_empty()) {
        name.push('-');
        name.push_str(&sanitize(d));
    }
    key(format!("{name}{JSON_EXT}"))
}

/// The start every [`audit`] key of one fact shares, whatever its discriminators:
/// `audit/{app}/{YYYYMM}/{YYYYMMDD-HHMM}-{event}-{hash7}`. `s3dock doctor` lists it to find the
/// record a function wrote for a document.
pub fn audit_fact_prefix(app: &AppName, at: DateTime<Utc>, event: &str, hash7: &str) -> String {
    format!("{AUDIT}{app}/{}/{}-{}-{}", at.format("%Y%m"), at.format("%Y%m%d-%H%M"), sanitize(event), sanitize(hash7))
}

pub fn audit_prefix(app: &AppName) -> String {
    format!("{AUDIT}{app}/")
}

/// `archive/{app}/{YYYYMM}/{stem}-archived-on-{YYYYMMDD-HHMM}[-{suffix}]{ext}`; the caller
/// retries with a numbered suffix when the conditional create finds the name taken.
pub fn archive(
    app: &AppName,
    month: &str,
    stem: &str,
    archived_on: DateTime<Utc>,
    suffix: &str,
    ext: &str,
) -> ObjectKey {
    let suffix = if suffix.is_empty() { String::new() } else { format!("-{}", sanitize(suffix)) };
    key(format!(
        "{ARCHIVE}{app}/{month}/{}-archived-on-{}{suffix}{ext}",
        sanitize(stem),
        archived_on.format("%Y%m%d-%H%M")
    ))
}

/// The archive stem of a tag file: `tag-{version}` (its key has no image stem of its own).
pub fn tag_archive_stem(version: &Version) -> String {
    format!("tag-{}", version.canonical())
}

pub fn archive_prefix(app: &AppName) -> String {
    format!("{ARCHIVE}{app}/")
}

pub fn agent(app: &AppName, env: &EnvName, id: &AgentId) -> ObjectKey {
    key(format!("{AGENTS}{app}/{env}/{id}{JSON_EXT}"))
}

pub fn agents_prefix(app: &AppName, env: Option<&EnvName>) -> String {
    match env {
        Some(env) => format!("{AGENTS}{app}/{env}/"),
        None => format!("{AGENTS}{app}/"),
    }
}

/// The leases of one image: holds (references being made) and its deletion claim.
pub fn leases_prefix(app: &AppName, tag: &ImageTag) -> String {
    format!("{LEASES}{app}/{tag}/")
}

/// A hold on an image, taken by a command about to reference it (`id` unique to the command).
pub fn hold(app: &AppName, tag: &ImageTag, id: &str) -> ObjectKey {
    key(format!("{}hold-{}", leases_prefix(app, tag), sanitize(id)))
}

/// The claim a deleter (cleanup, a rejected upload) takes on an image before deleting it.
pub fn tombstone(app: &AppName, tag: &ImageTag) -> ObjectKey {
    key(format!("{}delete", leases_prefix(app, tag)))
}

/// What a key is, as far as s3dock is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketKey {
    /// `revision` is set for a re-push's archive (`{stem}.{rev}.tar.gz`).
    ImageArchive {
        app: AppName,
        month: String,
        tag: ImageTag,
        revision: Option<String>,
    },
    ImageMetadata {
        app: AppName,
        month: String,
        tag: ImageTag,
    },
    Tag {
        app: AppName,
        version: Version,
    },
    Pointer {
        app: AppName,
        env: EnvName,
    },
    Audit {
        app: AppName,
    },
    Archive {
        app: AppName,
    },
    Agent {
        app: AppName,
        env: EnvName,
        id: AgentId,
    },
    Lease {
        app: AppName,
        tag: ImageTag,
    },
}

impl BucketKey {
    pub fn app(&self) -> &AppName {
        match self {
            BucketKey::ImageArchive { app, .. }
            | BucketKey::ImageMetadata { app, .. }
            | BucketKey::Tag { app, .. }
            | BucketKey::Pointer { app, .. }
            | BucketKey::Audit { app }
            | BucketKey::Archive { app }
            | BucketKey::Agent { app, .. }
            | BucketKey::Lease { app, .. } => app,
        }
    }
}

/// Why a key is not one of s3dock's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("{key}: not under a known prefix (images/, tags/, pointers/, audit/, archive/, agents/, leases/)")]
    UnknownPrefix { key: String },
    #[error("{key}: does not follow the bucket layout ({reason})")]
    Malformed { key: String, reason: String },
}

/// Classifies a key. The inverse of the builders above; the event handlers use it to route.
pub fn classify(key: &ObjectKey) -> Result<BucketKey, ClassifyError> {
    let k = key.as_str();
    let bad = |reason: &str| ClassifyError::Malformed { key: k.to_owned(), reason: reason.to_owned() };
    let name_err = |e: NameError| ClassifyError::Malformed { key: k.to_owned(), reason: e.to_string() };
    let parts: Vec<&str> = k.split('/').collect();
    match parts.as_slice() {
        ["images", app, month, file] => {
            let app = AppName::parse(app).map_err(name_err)?;
            check_month(month).map_err(|r| bad(&r))?;
            let (stem, is_archive) = if let Some(s) = file.strip_suffix(ARCHIVE_EXT) {
                (s, true)
            } else if let Some(s) = file.strip_suffix(JSON_EXT) {
                (s, false)
            } else {
                return Err(bad("image files end in .tar.gz or .json"));
            };
            let rest = stem
                .strip_prefix(app.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .ok_or_else(|| bad("the file name does not start with the app name"))?;
            // A re-push's archive carries its revision before the extension.
            let (tag, revision) = match rest.split_once('.') {
                Some((t, rev)) if is_archive => {
                    let ok = !rev.is_empty()
                        && rev.len() <= 32
                        && rev.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
                    if !ok {
                        return Err(bad("an archive revision is 1 to 32 lowercase hex digits"));
                    }
                    (t, Some(rev.to_owned()))
                }
                _ => (rest, None),
            };
            let tag = ImageTag::parse(tag).map_err(name_err)?;
            let month = (*month).to_owned();
            Ok(if is_archive {
                BucketKey::ImageArchive { app, month, tag, revision }
            } else {
                BucketKey::ImageMetadata { app, month, tag }
            })
        }
        ["tags", app, file] => {
            let app = AppName::parse(app).map_err(name_err)?;
            let v = file.strip_suffix(JSON_EXT).ok_or_else(|| bad("tag files end in .json"))?;
            Ok(BucketKey::Tag { app, version: Version::parse(v).map_err(name_err)? })
        }
        ["pointers", app, file] => {
            let app = AppName::parse(app).map_err(name_err)?;
            let env = file.strip_suffix(JSON_EXT).ok_or_else(|| bad("pointer files end in .json"))?;
            Ok(BucketKey::Pointer { app, env: EnvName::parse(env).map_err(name_err)? })
        }
        ["audit", app, _month, _file] => Ok(BucketKey::Audit { app: AppName::parse(app).map_err(name_err)? }),
        ["archive", app, _month, _file] => Ok(BucketKey::Archive { app: AppName::parse(app).map_err(name_err)? }),
        ["agents", app, env, file] => {
            let app = AppName::parse(app).map_err(name_err)?;
            let env = EnvName::parse(env).map_err(name_err)?;
            let id = file.strip_suffix(JSON_EXT).ok_or_else(|| bad("agent files end in .json"))?;
            Ok(BucketKey::Agent { app, env, id: AgentId::parse(id).map_err(name_err)? })
        }
        ["leases", app, tag, file] => {
            let app = AppName::parse(app).map_err(name_err)?;
            let tag = ImageTag::parse(tag).map_err(name_err)?;
            if *file != "delete" && !file.starts_with("hold-") {
                return Err(bad("leases are named delete or hold-{id}"));
            }
            Ok(BucketKey::Lease { app, tag })
        }
        [first, ..] if ["images", "tags", "pointers", "audit", "archive", "agents", "leases"].contains(first) => {
            Err(bad("wrong number of path segments"))
        }
        _ => Err(ClassifyError::UnknownPrefix { key: k.to_owned() }),
    }
}

fn check_month(m: &str) -> Result<(), String> {
    let ok = m.len() == 6 && m.chars().all(|c| c.is_ascii_digit()) && matches!(m[4..6].parse::<u32>(), Ok(1..=12));
    if ok { Ok(()) } else { Err(format!("{m:?} is not a YYYYMM month folder")) }
}

/// Decodes a key as S3 event notifications deliver it: form-URL-encoded, so a space arrives
/// as `+`, a literal `+` as `%2B`, and some emulators encode `/` as `%2F`. Decoding is the same
/// for AWS, LocalStack and moto.
pub fn decode_event_key(raw: &str) -> Result<ObjectKey, NameError> {
    let decoded: String =
        form_urlencoded::parse(format!("k={raw}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default();
    ObjectKey::parse(&decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn app(s: &str) -> AppName {
        AppName::parse(s).unwrap()
    }

    /// The seed's folder structure, byte for byte.
    #[test]
    fn seed_folder_structure() {
        let a = app("myapp");
        let tag = ImageTag::parse("20250721-2118-f7a5a27").unwrap();
        let at = |s: &str| Utc.datetime_from_str_compat(s);
        let table: Vec<(ObjectKey, &str)> = vec![
            (image_archive(&a, &tag), "images/myapp/202507/myapp-20250721-2118-f7a5a27.tar.gz"),
            (image_metadata(&a, &tag), "images/myapp/202507/myapp-20250721-2118-f7a5a27.json"),
            (tag_key(&a, "v1.2.0"), "tags/myapp/v1.2.0.json"),
            (tag_key(&a, "v1.1.5"), "tags/myapp/v1.1.5.json"),
            (pointer(&a, &EnvName::parse("production").unwrap()), "pointers/myapp/production.json"),
            (pointer(&a, &EnvName::parse("staging").unwrap()), "pointers/myapp/staging.json"),
            (
                audit(&a, at("20250721-1400"), "push", "f7a5a27", &[]),
                "audit/myapp/202507/20250721-1400-push-f7a5a27.json",
            ),
            (
                audit(&a, at("20250721-1430"), "tag", "f7a5a27", &[]),
                "audit/myapp/202507/20250721-1430-tag-f7a5a27.json",
            ),
            (
                audit(&a, at("20250721-2118"), "promotion", "f7a5a27", &[]),
                "audit/myapp/202507/20250721-2118-promotion-f7a5a27.json",
            ),
            (
                archive(&a, &tag.month(), &image_stem(&a, &tag), at("20250722-1018"), "", ARCHIVE_EXT),
                "archive/myapp/202507/myapp-20250721-2118-f7a5a27-archived-on-20250722-1018.tar.gz",
            ),
            (
                archive(&a, &tag.month(), &image_stem(&a, &tag), at("20250722-1018"), "", JSON_EXT),
                "archive/myapp/202507/myapp-20250721-2118-f7a5a27-archived-on-20250722-1018.json",
            ),
        ];
        for (built, want) in table {
            assert_eq!(built.as_str(), want);
        }
    }

    fn tag_key(a: &AppName, v: &str) -> ObjectKey {
        tag(a, &Version::parse(v).unwrap())
    }

    trait Compat {
        fn datetime_from_str_compat(&self, s: &str) -> DateTime<Utc>;
    }
    impl Compat for Utc {
        fn datetime_from_str_compat(&self, s: &str) -> DateTime<Utc> {
            let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d-%H%M").unwrap();
            Utc.from_utc_datetime(&naive)
        }
    }

    #[test]
    fn audit_discriminators_keep_events_apart() {
        let a = app("myapp");
        let t = Utc.with_ymd_and_hms(2025, 7, 21, 21, 18, 30).unwrap();
        let staging = audit(&a, t, "promotion", "f7a5a27", &["staging", "seq7"]);
        let prod = audit(&a, t, "promotion", "f7a5a27", &["production", "seq3"]);
        assert_ne!(staging, prod);
        assert_eq!(staging.as_str(), "audit/myapp/202507/20250721-2118-promotion-f7a5a27-staging-seq7.json");
        let weird = audit(&a, t, "tag", "f7a5a27", &["v1.0.0+build/1 x"]);
        assert_eq!(weird.file_name(), "20250721-2118-tag-f7a5a27-v1.0.0+build_1_x.json");
        let fact = audit_fact_prefix(&a, t, "promotion", "f7a5a27");
        assert_eq!(fact, "audit/myapp/202507/20250721-2118-promotion-f7a5a27");
        assert!(staging.as_str().starts_with(&fact) && prod.as_str().starts_with(&fact));
    }

    #[test]
    fn classify_round_trips() {
        let a = app("my-app.web");
        let tag = ImageTag::parse("20250721-2118-f7a5a27").unwrap();
        let env = EnvName::parse("production").unwrap();
        let v = Version::parse("1.0.0-rc.1+b.2").unwrap();
        let id = AgentId::parse("host-1").unwrap();
        assert!(matches!(classify(&image_archive(&a, &tag)), Ok(BucketKey::ImageArchive { .. })));
        assert_eq!(
            classify(&image_metadata(&a, &tag)).unwrap(),
            BucketKey::ImageMetadata { app: a.clone(), month: "202507".into(), tag: tag.clone() }
        );
        assert_eq!(classify(&super::tag(&a, &v)).unwrap(), BucketKey::Tag { app: a.clone(), version: v.clone() });
        assert_eq!(classify(&pointer(&a, &env)).unwrap(), BucketKey::Pointer { app: a.clone(), env: env.clone() });
        assert_eq!(
            classify(&agent(&a, &env, &id)).unwrap(),
            BucketKey::Agent { app: a.clone(), env: env.clone(), id: id.clone() }
        );
        let rev = image_archive_revision(&a, &tag, "3f9c2a1b");
        assert_eq!(rev.as_str(), "images/my-app.web/202507/my-app.web-20250721-2118-f7a5a27.3f9c2a1b.tar.gz");
        assert_eq!(
            classify(&rev).unwrap(),
            BucketKey::ImageArchive {
                app: a.clone(),
                month: "202507".into(),
                tag: tag.clone(),
                revision: Some("3f9c2a1b".into())
            }
        );
        assert_eq!(metadata_beside_archive(&rev), Some(image_metadata(&a, &tag)), "a revision belongs to its image");
        assert_eq!(classify(&hold(&a, &tag, "abc")).unwrap(), BucketKey::Lease { app: a.clone(), tag: tag.clone() });
        assert_eq!(tombstone(&a, &tag).as_str(), "leases/my-app.web/20250721-2118-f7a5a27/delete");
        // An image pushed by the original tool in a later month still classifies.
        let legacy = ObjectKey::parse("images/my-app.web/202508/my-app.web-20250721-2118-f7a5a27.json").unwrap();
        assert!(matches!(classify(&legacy), Ok(BucketKey::ImageMetadata { month, .. }) if month == "202508"));
    }

    #[test]
    fn classify_refuses_what_is_not_ours() {
        for k in [
            "incoming/x.json",
            "images/myapp/202507/other-20250721-2118-f7a5a27.json",
            "images/myapp/2025-07/myapp-20250721-2118-f7a5a27.json",
            "images/myapp/202507/myapp-20250721-2118-f7a5a27.zip",
            "images/myapp/myapp-20250721-2118-f7a5a27.json",
            "tags/myapp/latest.json",
            "pointers/MyApp/production.json",
            "pointers/.probe/123",
            "pointers/myapp/prod/extra.json",
            "images/myapp/202507/myapp-20250721-2118-f7a5a27.XYZ.tar.gz",
            "images/myapp/202507/myapp-20250721-2118-f7a5a27.abc.json",
            "leases/myapp/20250721-2118-f7a5a27/other",
        ] {
            assert!(classify(&ObjectKey::parse(k).unwrap()).is_err(), "{k}");
        }
    }

    #[test]
    fn event_keys_are_form_decoded() {
        assert_eq!(decode_event_key("incoming/x+y%2Bz.json").unwrap().as_str(), "incoming/x y+z.json");
        assert_eq!(decode_event_key("incoming/x%20y%2Bz.json").unwrap().as_str(), "incoming/x y+z.json");
        assert_eq!(
            decode_event_key("tags%2Fmyapp%2Fv1.0.0%2Bb.1.json").unwrap().as_str(),
            "tags/myapp/v1.0.0+b.1.json"
        );
        assert_eq!(decode_event_key("a/100%25.json").unwrap().as_str(), "a/100%.json");
        assert!(decode_event_key("a%2F..%2Fb").is_err());
        assert!(decode_event_key("").is_err());
    }

    #[test]
    fn tag_candidates_cover_the_original_spelling() {
        let a = app("myapp");
        let keys: Vec<String> =
            tag_candidates(&a, &Version::parse("1.2.0").unwrap()).iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["tags/myapp/v1.2.0.json", "tags/myapp/1.2.0.json"]);
        let keys: Vec<String> =
            tag_candidates(&a, &Version::parse("v1.2.0").unwrap()).iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["tags/myapp/v1.2.0.json", "tags/myapp/1.2.0.json"]);
    }
}
