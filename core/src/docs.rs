//! The JSON documents that cross process boundaries: image metadata, tags, pointers, audit
//! records, agent registrations and the promotion message. Each is defined once, here or in a
//! submodule (`agents` for what agents write and read, `states` for their state words).
//!
//! Field names follow the original Go s3dock so its buckets stay readable; everything new is
//! an optional, additive field. What we write carries `schema_version`; a document without one
//! was written by the original tool and is read as version 0. A version newer than
//! [`SCHEMA_VERSION`] is refused, never guessed at.
//!
//! Every document read from a bucket is untrusted: [`decode`] bounds its size, checks it is a
//! JSON object, checks the version, deserializes and then validates the values (hex digests,
//! keys, names), so hostile JSON ends as a one-line [`DocError`], never a panic.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;
use strum::{Display, EnumIter, EnumString, IntoStaticStr};

use crate::names::{AppName, ImageRef, ObjectKey};

/// The schema version of every document this build writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Larger documents are refused unread: no s3dock document comes near this.
pub const MAX_DOC_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error(
        "{key}: {size} bytes is more than the {max} bytes an s3dock document may have; it was not written by s3dock — inspect it, then restore or delete it"
    )]
    TooLarge { key: String, size: u64, max: usize },
    #[error(
        "{key}: not valid s3dock JSON ({detail}); restore the previous version (S3 versioning) or write it again with s3dock"
    )]
    Malformed { key: String, detail: String },
    #[error("{key}: schema version {found} is newer than this s3dock understands (up to {supported}); upgrade s3dock")]
    UnsupportedVersion { key: String, found: u64, supported: u32 },
    #[error("{key}: {detail}; restore the previous version (S3 versioning) or write it again with s3dock")]
    Invalid { key: String, detail: String },
}

/// A document type: how to check its values once it parsed.
pub trait Document: Serialize + DeserializeOwned {
    /// Checks values that the type system cannot (digests, keys, names).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Parses and validates an untrusted document read from `key`.
pub fn decode<T: Document>(key: &str, bytes: &[u8]) -> Result<T, DocError> {
    if bytes.len() > MAX_DOC_BYTES {
        return Err(DocError::TooLarge { key: key.to_owned(), size: bytes.len() as u64, max: MAX_DOC_BYTES });
    }
    let malformed = |detail: String| DocError::Malformed { key: key.to_owned(), detail };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let Some(obj) = value.as_object() else {
        return Err(malformed("expected a JSON object".into()));
    };
    match obj.get("schema_version") {
        None | Some(serde_json::Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(found) if found > u64::from(SCHEMA_VERSION) => {
                return Err(DocError::UnsupportedVersion { key: key.to_owned(), found, supported: SCHEMA_VERSION });
            }
            Some(_) => {}
            None => {
                return Err(malformed(format!("schema_version must be a non-negative integer, found {v}")));
            }
        },
    }
    let doc: T = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    doc.validate().map_err(|detail| DocError::Invalid { key: key.to_owned(), detail })?;
    Ok(doc)
}

/// Serializes a document the way the original tool did (two-space indented JSON).
pub fn encode<T: Document>(doc: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, numbers, maps with string keys) cannot fail.
    let mut out = serde_json::to_vec_pretty(doc).expect("s3dock documents always serialize");
    out.push(b'\n');
    out
}

fn check_hex(field: &str, s: &str, len: usize) -> Result<(), String> {
    if s.len() == len && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(format!("{field} must be {len} lowercase hex digits, found {:?}", truncate(s)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn check_key(field: &str, s: &str) -> Result<(), String> {
    ObjectKey::parse(s).map(|_| ()).map_err(|e| format!("{field}: {e}"))
}

fn check_len(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max || s.chars().any(char::is_control) {
        Err(format!("{field} is longer than {max} bytes or holds control characters"))
    } else {
        Ok(())
    }
}

/// The metadata beside an image archive. Written last: its presence commits the push.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// MD5 of the `.tar.gz`, lowercase hex; empty for a composed archive (see
    /// [`LayerIndex::composed`](crate::layers::LayerIndex::composed)).
    pub checksum: String,
    /// Size of the `.tar.gz` in bytes.
    pub size: u64,
    pub created_at: DateTime<Utc>,
    /// The commit id (full, or the 7-digit prefix in buckets of the original tool).
    pub git_hash: String,
    /// `YYYYMMDD-HHMM`, the commit time in UTC.
    pub git_time: String,
    /// `app:YYYYMMDD-HHMM-hash7`.
    pub image_tag: String,
    pub app_name: String,
    /// SHA-256 of the `.tar.gz`, lowercase hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Docker's content id of the image (`sha256:...`), what `docker inspect` shows as Id.
    #[serde(default)]
    pub image_id: Option<String>,
    /// `os/arch[/variant]` of the image.
    #[serde(default)]
    pub platform: Option<String>,
    /// Who ran the push, as they claimed it (the verifier adds the S3 principal to the audit).
    #[serde(default)]
    pub pushed_by: Option<String>,
    /// Where the source lives (the image's `org.opencontainers.image.source` label).
    #[serde(default)]
    pub source: Option<String>,
    /// `docker-archive` (classic `docker save`) or `oci-archive` (containerd image store).
    #[serde(default)]
    pub format: Option<String>,
    /// When this push replaced different content under the same tag: where the replaced
    /// metadata was archived.
    #[serde(default)]
    pub archived_previous: Option<String>,
    /// The key of the archive, when it is not the one beside this document (a re-push writes
    /// its archive at a revision key; absent means `{same stem}.tar.gz`).
    #[serde(default)]
    pub archive_path: Option<String>,
    /// The ETag of the archive when it was committed: readers fetch exactly that object.
    #[serde(default)]
    pub archive_etag: Option<String>,
    /// Bytes of the uncompressed tar, the bound a pull holds decompression to.
    #[serde(default)]
    pub tar_size: Option<u64>,
    /// Unique to the push that wrote this document: a push whose response was lost
    /// recognizes its own commit by it.
    #[serde(default)]
    pub write_id: Option<String>,
    /// What this push replaced under the same tag (set by a re-push of different content).
    #[serde(default)]
    pub replaced: Option<ReplacedImage>,
    /// The write ids of the documents this one replaced, newest first (see
    /// [`MAX_RECENT_WRITES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_writes: Vec<String>,
    /// Where each layer's compressed bytes are in the archive, with per-range digests (archives
    /// in the layered layout; absent for older ones, which stay readable as they are).
    #[serde(default)]
    pub layers: Option<crate::layers::LayerIndex>,
}

impl ImageMetadata {
    /// Whether the archive was composed from ranges of earlier archives: its whole-object
    /// digests are not in the metadata, its ranges' are.
    pub fn is_composed(&self) -> bool {
        self.layers.as_ref().is_some_and(|l| l.composed)
    }

    /// Eight hex digits that identify the archive's content in audit keys: the MD5's first
    /// eight, or for a composed archive the first eight of its last range's SHA-256.
    pub fn content_id8(&self) -> String {
        match (&self.layers, self.checksum.is_empty()) {
            (Some(l), true) => l.ranges.last().map(|r| r.sha256.chars().take(8).collect()).unwrap_or_default(),
            _ => self.checksum.chars().take(8).collect(),
        }
    }
}

/// How many earlier write ids a document remembers. A writer whose response was lost reads
/// the key back: its write landed if the document there is its own, or names it among the
/// writes it replaced (others may have written on top of it before it could look).
pub const MAX_RECENT_WRITES: usize = 16;

/// The `recent_writes` of a document replacing one with `write_id` and `recent`.
pub fn recent_writes(write_id: Option<&str>, recent: &[String]) -> Vec<String> {
    write_id.map(str::to_owned).into_iter().chain(recent.iter().cloned()).take(MAX_RECENT_WRITES).collect()
}

fn check_recent(recent: &[String]) -> Result<(), String> {
    if recent.len() > MAX_RECENT_WRITES {
        return Err(format!("recent_writes has {} entries, at most {MAX_RECENT_WRITES}", recent.len()));
    }
    recent.iter().try_for_each(|w| check_len("recent_writes", w, 200))
}

/// The content a re-push replaced: enough for the audit and for agents to see the change.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedImage {
    #[serde(default)]
    pub image_id: Option<String>,
    pub checksum: String,
    /// Whether the replaced image was referenced (a tag, a pointer or an agent) and the push
    /// was forced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

impl Document for ImageMetadata {
    fn validate(&self) -> Result<(), String> {
        if let Some(index) = &self.layers {
            index.validate(self.size).map_err(|e| format!("layers: {e}"))?;
        }
        if !(self.checksum.is_empty() && self.is_composed()) {
            check_hex("checksum", &self.checksum, 32)?;
        }
        if let Some(sha) = &self.sha256 {
            check_hex("sha256", sha, 64)?;
        }
        AppName::parse(&self.app_name).map_err(|e| format!("app_name: {e}"))?;
        check_len("git_hash", &self.git_hash, 64)?;
        check_len("git_time", &self.git_time, 32)?;
        check_len("image_tag", &self.image_tag, 200)?;
        for (f, v) in [("platform", &self.platform), ("pushed_by", &self.pushed_by), ("write_id", &self.write_id)] {
            if let Some(v) = v {
                check_len(f, v, 200)?;
            }
        }
        if let Some(id) = &self.image_id {
            check_image_id("image_id", id)?;
        }
        if let Some(s) = &self.source {
            check_len("source", s, 2048)?;
        }
        if let Some(e) = &self.archive_etag {
            check_len("archive_etag", e, 200)?;
        }
        check_recent(&self.recent_writes)?;
        if let Some(path) = &self.archive_path {
            // Only an archive of this very image: a document must not send readers elsewhere.
            let key = ObjectKey::parse(path).map_err(|e| format!("archive_path: {e}"))?;
            let image = self.image_ref().ok_or("image_tag is not app:tag")?;
            match crate::layout::classify(&key) {
                Ok(crate::layout::BucketKey::ImageArchive { app, tag, .. }) if app == image.app && tag == image.tag => {
                }
                _ => return Err(format!("archive_path {:?} is not an archive of {image}", truncate(path))),
            }
        }
        Ok(())
    }
}

/// Whether `id` is a Docker content id (`sha256:` and 64 lowercase hex digits).
pub fn is_image_id(id: &str) -> bool {
    check_image_id("image_id", id).is_ok()
}

/// Docker's content id: `sha256:` and 64 lowercase hex digits. Anything else (`postgres:16`)
/// would be taken for a reference by the engine, and a pull would skip what it should verify.
fn check_image_id(field: &str, id: &str) -> Result<(), String> {
    match id.strip_prefix("sha256:") {
        Some(hex) if check_hex(field, hex, 64).is_ok() => Ok(()),
        _ => Err(format!("{field} must be sha256: and 64 lowercase hex digits, found {:?}", truncate(id))),
    }
}

impl ImageMetadata {
    /// The image reference this metadata describes, if `image_tag` holds one.
    pub fn image_ref(&self) -> Option<ImageRef> {
        ImageRef::parse(&self.image_tag).ok()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    #[default]
    Image,
    Tag,
}

impl std::fmt::Display for TargetType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetType::Image => "image",
            TargetType::Tag => "tag",
        })
    }
}

/// A semantic-version tag: `tags/{app}/{version}.json`, always pointing at an image.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagDoc {
    #[serde(default)]
    pub schema_version: Option<u32>,
    pub target_type: TargetType,
    /// The image archive key (`images/.../*.tar.gz`).
    pub target_path: String,
    pub promoted_at: DateTime<Utc>,
    pub promoted_by: String,
    pub git_hash: String,
    pub git_time: String,
    /// `app:tag` of the image.
    #[serde(default)]
    pub source_image: Option<String>,
    #[serde(default)]
    pub source_tag: Option<String>,
    /// The canonical version (`v1.2.0`).
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub image_id: Option<String>,
    /// Set by a forced move: what the tag pointed to before.
    #[serde(default)]
    pub previous: Option<PreviousTarget>,
    /// Set by a forced move: where the replaced tag file was archived.
    #[serde(default)]
    pub archived_to: Option<String>,
    /// Unique to the command that wrote this document (lost-response recognition).
    #[serde(default)]
    pub write_id: Option<String>,
    /// The write ids of the documents this one replaced, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_writes: Vec<String>,
}

impl Document for TagDoc {
    fn validate(&self) -> Result<(), String> {
        check_key("target_path", &self.target_path)?;
        check_len("promoted_by", &self.promoted_by, 200)?;
        check_len("git_hash", &self.git_hash, 64)?;
        check_len("git_time", &self.git_time, 32)?;
        for v in [&self.source_image, &self.source_tag, &self.version, &self.write_id].into_iter().flatten() {
            check_len("source", v, 200)?;
        }
        if let Some(id) = &self.image_id {
            check_image_id("image_id", id)?;
        }
        check_recent(&self.recent_writes)
    }
}

/// What a pointer replaced: enough to roll back to it.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousTarget {
    pub target_type: TargetType,
    pub target_path: String,
    #[serde(default)]
    pub source_image: Option<String>,
    #[serde(default)]
    pub source_tag: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
}

/// Why a pointer was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointerAction {
    Promote,
    Rollback,
}

/// An environment pointer: `pointers/{app}/{env}.json`, to an image or to a tag.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointerDoc {
    #[serde(default)]
    pub schema_version: Option<u32>,
    pub target_type: TargetType,
    /// An image archive key, or a tag key.
    pub target_path: String,
    pub promoted_at: DateTime<Utc>,
    pub promoted_by: String,
    pub git_hash: String,
    pub git_time: String,
    #[serde(default)]
    pub source_image: Option<String>,
    #[serde(default)]
    pub source_tag: Option<String>,
    /// Generation number: 1 for the first pointer s3dock writes, +1 on every update. Pointers
    /// of the original tool have none and count as 0.
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub previous: Option<PreviousTarget>,
    #[serde(default)]
    pub action: Option<PointerAction>,
    /// Unique to the command that wrote this document (lost-response recognition).
    #[serde(default)]
    pub write_id: Option<String>,
    /// The write ids of the documents this one replaced, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_writes: Vec<String>,
}

/// The highest pointer generation accepted: far beyond any real history, far enough below
/// `u64::MAX` that `seq + 1` never overflows on a document someone else wrote.
pub const MAX_SEQ: u64 = 1 << 53;

impl Document for PointerDoc {
    fn validate(&self) -> Result<(), String> {
        check_key("target_path", &self.target_path)?;
        check_len("promoted_by", &self.promoted_by, 200)?;
        check_len("git_hash", &self.git_hash, 64)?;
        check_len("git_time", &self.git_time, 32)?;
        if let Some(p) = &self.previous {
            check_key("previous.target_path", &p.target_path)?;
        }
        if let Some(w) = &self.write_id {
            check_len("write_id", w, 200)?;
        }
        if self.seq.is_some_and(|s| s > MAX_SEQ) {
            return Err(format!("seq {} is beyond any real history (at most {MAX_SEQ})", self.seq.unwrap_or_default()));
        }
        check_recent(&self.recent_writes)
    }
}

impl PointerDoc {
    pub fn seq(&self) -> u64 {
        self.seq.unwrap_or(0)
    }

    pub fn as_previous(&self) -> PreviousTarget {
        PreviousTarget {
            target_type: self.target_type,
            target_path: self.target_path.clone(),
            source_image: self.source_image.clone(),
            source_tag: self.source_tag.clone(),
            seq: Some(self.seq()),
        }
    }

    /// What the pointer names, for people: `app:tag` or the version.
    pub fn describe_target(&self) -> String {
        match self.target_type {
            TargetType::Tag => self.source_tag.clone().unwrap_or_else(|| self.target_path.clone()),
            TargetType::Image => self.source_image.clone().unwrap_or_else(|| self.target_path.clone()),
        }
    }
}

/// The kinds of audit record s3dock writes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr, Display, EnumString, EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum EventType {
    Push,
    Tag,
    Promotion,
    Rollback,
    Reject,
    Archive,
    Deploy,
    Cleanup,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::Push,
        EventType::Tag,
        EventType::Promotion,
        EventType::Rollback,
        EventType::Reject,
        EventType::Archive,
        EventType::Deploy,
        EventType::Cleanup,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// An audit record: `audit/{app}/{YYYYMM}/...json`, created once, never overwritten.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// Kept as a string so records of kinds added later still list.
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    /// The acting user as the writer claims it.
    pub user: String,
    pub app_name: String,
    pub git_hash: String,
    pub git_time: String,
    pub details: serde_json::Value,
    /// The identity S3 reported for the write (event handlers only).
    #[serde(default)]
    pub principal: Option<String>,
    /// Who wrote the record: `cli`, `lambda` or `agent`.
    #[serde(default)]
    pub recorded_by: Option<String>,
    /// Unique to the handler run that wrote the record: the promotion record is the fan-out's
    /// claim, and a handler whose response was lost recognizes its own claim by it.
    #[serde(default)]
    pub write_id: Option<String>,
}

impl Document for AuditRecord {
    fn validate(&self) -> Result<(), String> {
        check_len("event_type", &self.event_type, 64)?;
        check_len("user", &self.user, 200)?;
        Ok(())
    }
}

impl AuditRecord {
    /// The environment the record concerns, if any (`details.environment`).
    pub fn environment(&self) -> Option<&str> {
        self.details.get("environment").and_then(|v| v.as_str())
    }
}

/// `details` of a `push` record (original field names first).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushDetails {
    pub image_reference: String,
    pub s3_path: String,
    pub checksum: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub was_skipped: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub was_archived: bool,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub metadata_path: Option<String>,
    /// `download` (the verifier re-read the archive), `streamed` (hashed during the upload)
    /// or `superseded` (replaced by a later push before its event was handled; its content
    /// was archived by that push).
    #[serde(default)]
    pub verified: Option<String>,
    #[serde(default)]
    pub pushed_by: Option<String>,
    /// A re-push of different content under a referenced tag, allowed by `--force`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// The image id the push replaced, if it replaced one.
    #[serde(default)]
    pub replaced_image_id: Option<String>,
}

/// `details` of a `tag` record.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagDetails {
    pub image_reference: String,
    pub version: String,
    pub tag_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    #[serde(default)]
    pub previous_target: Option<String>,
    #[serde(default)]
    pub archived_to: Option<String>,
}

/// `details` of a `promotion` or `rollback` record.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromotionDetails {
    pub environment: String,
    pub source: String,
    pub source_type: String,
    pub pointer_path: String,
    #[serde(default)]
    pub previous_target: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub image_reference: Option<String>,
    /// Agents notified (event handlers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notified: Vec<String>,
}

/// `details` of a `reject` or `archive` record.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiveDetails {
    pub path: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archived_to: Vec<String>,
    #[serde(default)]
    pub image_reference: Option<String>,
    /// Whether the bad objects were deleted after archiving; they stay while a tag, pointer or
    /// agent references them (`referenced_by`), or when someone else changed them first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referenced_by: Vec<String>,
}

/// `details` of a `cleanup` record: one per image deleted, written before its deletion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanupDetails {
    pub image_reference: String,
    /// The keys deleted (metadata first, then archives).
    pub keys: Vec<String>,
    pub bytes: u64,
    pub reason: String,
}

/// What a lease object says (`leases/{app}/{tag}/...`): who holds it, since when. Holds are
/// taken by commands about to reference an image; the delete lease by whoever is about to
/// delete it. Each side writes its lease and then looks for the other's, so one always sees
/// the other (see `bucket::lease`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseDoc {
    pub schema_version: u32,
    /// `hold` or `delete`.
    pub kind: String,
    pub by: String,
    pub at: DateTime<Utc>,
    pub write_id: String,
}

impl Document for LeaseDoc {
    fn validate(&self) -> Result<(), String> {
        check_len("by", &self.by, 200)?;
        check_len("write_id", &self.write_id, 200)?;
        if self.kind != "hold" && self.kind != "delete" {
            return Err(format!("kind must be hold or delete, found {:?}", truncate(&self.kind)));
        }
        Ok(())
    }
}

/// `details` of a `deploy` or host `rollback` record written by an agent or `s3dock deploy`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployDetails {
    pub environment: String,
    pub image_reference: String,
    pub host: String,
    /// `succeeded`, `failed` or `rolled-back`.
    pub result: DeployResult,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub previous_image: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Milliseconds per phase (pull, start, health, switch, drain).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub timings_ms: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub pointer_seq: Option<u64>,
    #[serde(default)]
    pub agent_id: Option<String>,
}

mod agents;
pub use agents::{AgentRegistration, AgentState, DeployOutcome, PromotionMessage};
mod states;
pub use states::{AgentStatus, DeployResult, Health};

#[cfg(test)]
mod tests;
