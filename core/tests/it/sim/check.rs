//! The invariant checker: reads the whole version history of the simulated bucket and the
//! actors' reports after a schedule, and lists every broken promise by class.

use std::collections::{BTreeMap, BTreeSet};

use md5::Digest as _;
use s3dock_core::docs::{self, AuditRecord, ImageMetadata, PointerDoc, PromotionMessage, TagDoc, TargetType};
use s3dock_core::layout::{self, BucketKey};
use s3dock_core::names::{ImageRef, ObjectKey};
use s3dock_core::registry::EventMode;
use s3dock_core::store::MemoryStore;
use s3dock_core::store::memory::Version as StoredVersion;

use super::actors::{Op, Outcome, Report, World};

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub class: &'static str,
    pub detail: String,
}

fn v(class: &'static str, detail: String) -> Violation {
    Violation { class, detail }
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(md5::Md5::digest(b))
}

fn current(store: &MemoryStore, key: &str) -> Option<bytes::Bytes> {
    store.versions(key).last().and_then(|v| v.body.clone())
}

/// Who wrote a document version (the acting user s3dock records).
fn author(key: &ObjectKey, body: &[u8]) -> Option<String> {
    match layout::classify(key) {
        Ok(BucketKey::ImageMetadata { .. }) => {
            serde_json::from_slice::<serde_json::Value>(body).ok()?.get("pushed_by")?.as_str().map(str::to_owned)
        }
        Ok(BucketKey::Tag { .. }) | Ok(BucketKey::Pointer { .. }) => {
            serde_json::from_slice::<serde_json::Value>(body).ok()?.get("promoted_by")?.as_str().map(str::to_owned)
        }
        _ => None,
    }
}

pub struct Checked {
    pub violations: Vec<Violation>,
}

pub fn check(world: &World, reports: &[Report], stuck: Option<String>) -> Checked {
    let store = &world.store.inner;
    let mut out = Vec::new();
    if let Some(why) = stuck {
        out.push(v("stuck", why));
    }
    let keys = store.all_keys();
    let history: BTreeMap<String, Vec<StoredVersion>> = keys.iter().map(|k| (k.clone(), store.versions(k))).collect();
    let by_user: BTreeMap<&str, &Report> = reports.iter().map(|r| (r.user.as_str(), r)).collect();
    let corrupt_users: BTreeSet<&str> = reports
        .iter()
        .filter(|r| matches!(r.op, Op::CorruptPush { .. } | Op::FuturePush { .. }))
        .map(|r| r.user.as_str())
        .collect();

    // ---- archive/ and audit/ are write-once.
    let mut archive_bodies: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (k, vs) in &history {
        if k.starts_with(layout::ARCHIVE) || k.starts_with(layout::AUDIT) {
            if vs.len() > 1 || vs.iter().any(StoredVersion::is_delete_marker) {
                out.push(v("write-once-mutated", format!("{k} has {} versions (delete markers included)", vs.len())));
            }
            if k.starts_with(layout::ARCHIVE)
                && let Some(b) = &vs[0].body
            {
                archive_bodies.insert(b.to_vec());
            }
        }
    }

    // ---- the audit trail.
    let mut audits: Vec<(String, AuditRecord)> = Vec::new();
    for k in keys.iter().filter(|k| k.starts_with(layout::AUDIT)) {
        if let Some(b) = current(store, k)
            && let Ok(r) = docs::decode::<AuditRecord>(k, &b)
        {
            audits.push((k.clone(), r));
        }
    }
    let cleanup_keys: BTreeSet<String> = audits
        .iter()
        .filter(|(_, r)| r.event_type == "cleanup")
        .flat_map(|(_, r)| {
            let mut ks: Vec<String> = Vec::new();
            for field in ["keys", "deleted_keys"] {
                if let Some(a) = r.details.get(field).and_then(|x| x.as_array()) {
                    ks.extend(a.iter().filter_map(|x| x.as_str().map(str::to_owned)));
                }
            }
            ks
        })
        .collect();

    // ---- images/: nothing valid replaced or deleted without an archive copy or a cleanup record.
    for (k, vs) in history.iter().filter(|(k, _)| k.starts_with(layout::IMAGES)) {
        let key = ObjectKey::parse(k).expect("stored keys are valid");
        let is_meta = k.ends_with(layout::JSON_EXT);
        for (i, ver) in vs.iter().enumerate() {
            let Some(body) = &ver.body else { continue };
            let replaced = i + 1 < vs.len();
            if !replaced {
                continue;
            }
            let deleted = vs[i + 1].is_delete_marker();
            if archive_bodies.contains(&body.to_vec()) {
                continue;
            }
            if deleted && cleanup_keys.contains(k) {
                continue;
            }
            if is_meta {
                let raw: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                if raw.get("schema_version").and_then(|s| s.as_u64()).unwrap_or(0) > u64::from(docs::SCHEMA_VERSION) {
                    if deleted {
                        out.push(v(
                            "future-schema-destroyed",
                            format!("{k} (schema {:?}) was deleted", raw["schema_version"]),
                        ));
                    }
                    continue;
                }
                out.push(v(
                    "lost-content",
                    format!(
                        "{k} version {i} was {} without an archive copy or cleanup record",
                        if deleted { "deleted" } else { "replaced" }
                    ),
                ));
            } else {
                // An archive no metadata ever committed (named, with its checksum) is an
                // unfinished push: never valid.
                let md5 = md5_hex(body);
                let meta_key = layout::metadata_beside_archive(&key).map(|m| m.to_string()).unwrap_or_default();
                let meta_obj = ObjectKey::parse(&meta_key).ok();
                let committed = history.get(&meta_key).is_some_and(|mv| {
                    mv.iter().filter_map(|x| x.body.as_ref()).any(|b| {
                        let Ok(m) = docs::decode::<ImageMetadata>(&meta_key, b) else { return false };
                        let named = meta_obj.as_ref().map(|mk| archive_of(mk, &m)).unwrap_or_default();
                        // The ETag pins the very object; documents without one go by checksum.
                        let same_object = match &m.archive_etag {
                            Some(e) => s3dock_core::store::ETag(e.clone()) == ver.info.etag,
                            None => m.checksum == md5,
                        };
                        named == *k && same_object
                    })
                });
                if committed {
                    out.push(v(
                        "lost-content",
                        format!(
                            "{k} version {i} (md5 {md5}) was {} without an archive copy or cleanup record",
                            if deleted { "deleted" } else { "replaced" }
                        ),
                    ));
                }
            }
        }
    }

    // ---- pointers and tags lead to whole, consistent images.
    for k in keys.iter().filter(|k| k.starts_with(layout::POINTERS) || k.starts_with(layout::TAGS)) {
        let Some(body) = current(store, k) else { continue };
        let key = ObjectKey::parse(k).expect("stored keys are valid");
        let (app, what) = match layout::classify(&key) {
            Ok(BucketKey::Pointer { app, env }) => (app, format!("pointer {env}")),
            Ok(BucketKey::Tag { app, version }) => (app, format!("tag {}", version.canonical())),
            _ => continue,
        };
        let doc: PointerDoc = if k.starts_with(layout::TAGS) {
            match docs::decode::<TagDoc>(k, &body) {
                Ok(t) => PointerDoc {
                    schema_version: None,
                    target_type: t.target_type,
                    target_path: t.target_path,
                    promoted_at: t.promoted_at,
                    promoted_by: t.promoted_by,
                    git_hash: t.git_hash,
                    git_time: t.git_time,
                    source_image: t.source_image,
                    source_tag: None,
                    seq: None,
                    previous: None,
                    ..Default::default()
                },
                Err(_) => continue,
            }
        } else {
            match docs::decode::<PointerDoc>(k, &body) {
                Ok(p) => p,
                Err(e) => {
                    out.push(v("dangling-reference", format!("{what}: unreadable pointer: {e}")));
                    continue;
                }
            }
        };
        match resolve_offline(store, &app, &doc) {
            Ok(image) => {
                if let Err(why) = image_whole(store, &image) {
                    out.push(v("dangling-reference", format!("{what} -> {image}: {why}")));
                }
            }
            Err(why) => out.push(v("dangling-reference", format!("{what}: {why}"))),
        }
    }

    // ---- every current metadata document written by an honest pusher describes its archive.
    for k in keys.iter().filter(|k| k.starts_with(layout::IMAGES) && k.ends_with(layout::JSON_EXT)) {
        let Some(body) = current(store, k) else { continue };
        let key = ObjectKey::parse(k).expect("stored keys are valid");
        if author(&key, &body).is_some_and(|u| corrupt_users.contains(u.as_str())) {
            continue;
        }
        let Ok(meta) = docs::decode::<ImageMetadata>(k, &body) else { continue };
        let Some(image) = meta.image_ref() else { continue };
        if let Err(why) = image_whole(store, &image) {
            out.push(v("inconsistent-image", format!("{image}: {why}")));
        }
    }

    // ---- pointer seq chains, reported outcomes, audit counts.
    for k in keys.iter().filter(|k| k.starts_with(layout::POINTERS)) {
        let key = ObjectKey::parse(k).expect("stored keys are valid");
        let Ok(BucketKey::Pointer { env, .. }) = layout::classify(&key) else { continue };
        let docs_: Vec<PointerDoc> = history[k]
            .iter()
            .filter_map(|x| x.body.as_ref())
            .filter_map(|b| docs::decode::<PointerDoc>(k, b).ok())
            .collect();
        for w in docs_.windows(2) {
            if w[1].seq() != w[0].seq() + 1 {
                out.push(v("seq-chain", format!("{k}: seq {} followed by {}", w[0].seq(), w[1].seq())));
            }
        }
        for d in &docs_ {
            let records = audits
                .iter()
                .filter(|(_, r)| {
                    (r.event_type == "promotion" || r.event_type == "rollback")
                        && r.environment() == Some(env.as_str())
                        && r.details.get("seq").and_then(|s| s.as_u64()) == Some(d.seq())
                })
                .count();
            let writer = by_user.get(d.promoted_by.as_str());
            let must = match world.mode {
                EventMode::Lambda => true,
                EventMode::Inline => writer.is_some_and(|r| matches!(r.outcome, Outcome::Wrote { event_ok: true, .. })),
            };
            if records > 1 {
                out.push(v("duplicate-audit", format!("{k} seq {}: {records} promotion records", d.seq())));
            }
            if must && records == 0 {
                out.push(v(
                    "missing-audit",
                    format!("{k} seq {} (by {}): no promotion record", d.seq(), d.promoted_by),
                ));
            }
        }
    }
    for k in keys.iter().filter(|k| k.starts_with(layout::TAGS)) {
        for b in history[k].iter().filter_map(|x| x.body.as_ref()) {
            let Ok(t) = docs::decode::<TagDoc>(k, b) else { continue };
            let records = audits
                .iter()
                .filter(|(_, r)| {
                    r.event_type == "tag"
                        && r.user == t.promoted_by
                        && r.details.get("tag_path").and_then(|p| p.as_str()) == Some(k.as_str())
                })
                .count();
            let writer = by_user.get(t.promoted_by.as_str());
            let must = match world.mode {
                EventMode::Lambda => true,
                EventMode::Inline => writer.is_some_and(|r| matches!(r.outcome, Outcome::Wrote { event_ok: true, .. })),
            };
            if records > 1 {
                out.push(v("duplicate-audit", format!("{k} by {}: {records} tag records", t.promoted_by)));
            }
            if must && records == 0 {
                out.push(v("missing-audit", format!("{k} by {}: no tag record", t.promoted_by)));
            }
        }
    }
    for k in keys.iter().filter(|k| k.starts_with(layout::IMAGES) && k.ends_with(layout::JSON_EXT)) {
        for b in history[k].iter().filter_map(|x| x.body.as_ref()) {
            let Ok(m) = docs::decode::<ImageMetadata>(k, b) else { continue };
            let Some(user) = m.pushed_by.clone() else { continue };
            if corrupt_users.contains(user.as_str()) {
                continue;
            }
            let records = audits
                .iter()
                .filter(|(_, r)| {
                    r.event_type == "push"
                        && r.details.get("pushed_by").and_then(|p| p.as_str()) == Some(user.as_str())
                        && (r.details.get("checksum").and_then(|p| p.as_str()) == Some(m.checksum.as_str())
                            // A composed archive's record carries the digest its verifier read,
                            // or none: it is the push with this image id and size.
                            || (m.is_composed()
                                && r.details.get("image_id").and_then(|p| p.as_str()) == m.image_id.as_deref()
                                && r.details.get("size").and_then(|p| p.as_u64()) == Some(m.size)))
                })
                .count();
            let writer = by_user.get(user.as_str());
            let must = match world.mode {
                EventMode::Lambda => true,
                EventMode::Inline => writer.is_some_and(|r| matches!(r.outcome, Outcome::Wrote { event_ok: true, .. })),
            };
            if records > 1 {
                out.push(v("duplicate-audit", format!("{k} by {user}: {records} push records")));
            }
            if must && records == 0 {
                out.push(v("missing-audit", format!("{k} by {user}: no push record")));
            }
        }
    }
    let mut rejects: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (_, r) in audits.iter().filter(|(_, r)| r.event_type == "reject") {
        let path = r.details.get("path").and_then(|x| x.as_str()).unwrap_or_default().to_owned();
        let reason = r.details.get("reason").and_then(|x| x.as_str()).unwrap_or_default().to_owned();
        *rejects.entry((path, reason)).or_default() += 1;
    }
    for ((path, reason), n) in rejects {
        if n > 1 {
            out.push(v("duplicate-audit", format!("{path}: {n} reject records ({reason})")));
        }
    }

    // ---- what each command reported is what happened.
    for r in reports {
        let wrote_keys: Vec<&String> = history
            .iter()
            .filter(|(k, vs)| {
                (k.starts_with(layout::POINTERS) || k.starts_with(layout::TAGS) || k.starts_with(layout::IMAGES))
                    && vs.iter().filter_map(|x| x.body.as_ref()).any(|b| {
                        let key = ObjectKey::parse(k).expect("stored keys are valid");
                        author(&key, b).as_deref() == Some(r.user.as_str())
                    })
            })
            .map(|(k, _)| k)
            .collect();
        match (&r.op, &r.outcome) {
            (Op::Read { .. }, Outcome::Failed { kind: s3dock_core::ErrorKind::Integrity, message }) => {
                out.push(v("reader-inconsistent", format!("{}: {message}", r.user)));
            }
            (Op::Cleanup { .. } | Op::Read { .. } | Op::CorruptPush { .. } | Op::FuturePush { .. }, _) => {}
            (_, Outcome::Crashed) => {}
            (_, Outcome::Wrote { .. }) if wrote_keys.is_empty() => {
                out.push(v(
                    "false-report",
                    format!("{} ({:?}) reported a write, but nothing it wrote is in the history", r.user, r.op),
                ));
            }
            (_, Outcome::NoOp { why }) if !wrote_keys.is_empty() => {
                out.push(v(
                    "false-report",
                    format!("{} ({:?}) reported no change ({why}), but wrote {:?}", r.user, r.op, wrote_keys),
                ));
            }
            (_, Outcome::Failed { message, .. }) if !wrote_keys.is_empty() => {
                out.push(v(
                    "false-report",
                    format!("{} ({:?}) reported failure ({message}), but wrote {:?}", r.user, r.op, wrote_keys),
                ));
            }
            _ => {}
        }
    }

    // ---- agents hear about the current promotion exactly once.
    let sent = world.notifier.sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut per: BTreeMap<(String, String, u64), usize> = BTreeMap::new();
    for (queue, body) in &sent {
        if let Ok(m) = serde_json::from_str::<PromotionMessage>(body) {
            *per.entry((queue.clone(), m.env.to_string(), m.pointer_seq)).or_default() += 1;
        }
    }
    // A message may repeat (a delivery killed after sending is redelivered, and SQS itself is
    // at-least-once): agents act once per pointer seq. What must not happen is silence.
    let _ = &per;
    for env in &world.envs {
        let k = layout::pointer(&world.app, env).to_string();
        let Some(body) = current(store, &k) else { continue };
        let Ok(doc) = docs::decode::<PointerDoc>(&k, &body) else { continue };
        let writer = by_user.get(doc.promoted_by.as_str());
        let must = match world.mode {
            EventMode::Lambda => true,
            EventMode::Inline => writer.is_some_and(|r| matches!(r.outcome, Outcome::Wrote { event_ok: true, .. })),
        };
        // Promotions made before the schedule (the setup) had no agents to tell.
        if !must || doc.promoted_by == "setup" || resolve_offline(store, &world.app, &doc).is_err() {
            continue;
        }
        for queue in super::agent_queues(env) {
            if per.get(&(queue.clone(), env.to_string(), doc.seq())).copied().unwrap_or(0) == 0 {
                out.push(v("missing-notification", format!("{queue} never heard of {env} seq {}", doc.seq())));
            }
        }
    }

    // ---- the DLQ holds nothing but events that must wait for newer functions.
    for e in world.dlq.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let key = e.event.raw_key.clone();
        let future = current(store, &key)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j.get("schema_version").and_then(|s| s.as_u64()))
            .is_some_and(|s| s > u64::from(docs::SCHEMA_VERSION));
        if !future {
            out.push(v("dead-letter", format!("{key} ended in the DLQ after a redrive")));
        }
    }

    out.sort();
    out.dedup();
    Checked { violations: out }
}

/// Follows a pointer through tags to an image, reading the bucket directly.
fn resolve_offline(
    store: &MemoryStore,
    app: &s3dock_core::names::AppName,
    doc: &PointerDoc,
) -> Result<ImageRef, String> {
    let mut t = doc.target_type;
    let mut path = doc.target_path.clone();
    for _ in 0..s3dock_core::bucket::MAX_DEPTH {
        match t {
            TargetType::Image => return s3dock_core::bucket::target_image(app, &path),
            TargetType::Tag => {
                let body = current(store, &path).ok_or_else(|| format!("tag {path} is missing"))?;
                let tag: TagDoc = docs::decode(&path, &body).map_err(|e| e.to_string())?;
                t = tag.target_type;
                path = tag.target_path;
            }
        }
    }
    Err("pointer chain too deep".into())
}

/// The image's current metadata exists, names an archive that exists, and matches its bytes.
fn image_whole(store: &MemoryStore, image: &ImageRef) -> Result<(), String> {
    let meta_key = find_metadata_offline(store, image).ok_or("its metadata is missing")?;
    let body = current(store, &meta_key).ok_or("its metadata is missing")?;
    let meta: ImageMetadata = docs::decode(&meta_key, &body).map_err(|e| format!("unreadable metadata: {e}"))?;
    let meta_obj = ObjectKey::parse(&meta_key).expect("stored keys are valid");
    let archive_key = archive_of(&meta_obj, &meta);
    let archive = current(store, &archive_key).ok_or_else(|| format!("{archive_key} is missing"))?;
    if let Some(index) = &meta.layers {
        // Every range of an indexed archive is what its digest says; a composed archive has no
        // whole-object checksum to compare.
        let mut at = 0usize;
        for r in &index.ranges {
            let bytes = archive
                .get(at..at + r.length as usize)
                .ok_or_else(|| format!("{archive_key} is shorter than its index"))?;
            if hex::encode(sha2::Sha256::digest(bytes)) != r.sha256 {
                return Err(format!("{archive_key}: the range at {at} does not match its index"));
            }
            at += r.length as usize;
        }
        if at != archive.len() {
            return Err(format!("{archive_key} holds {} bytes, its index {at}", archive.len()));
        }
        if meta.is_composed() {
            return Ok(());
        }
    }
    let md5 = md5_hex(&archive);
    if md5 != meta.checksum || archive.len() as u64 != meta.size {
        return Err(format!(
            "{archive_key} holds md5 {md5} ({} bytes), its metadata says {} ({} bytes)",
            archive.len(),
            meta.checksum,
            meta.size
        ));
    }
    Ok(())
}

fn find_metadata_offline(store: &MemoryStore, image: &ImageRef) -> Option<String> {
    let k = layout::image_metadata(&image.app, &image.tag).to_string();
    current(store, &k).map(|_| k)
}

/// The archive a metadata document names.
pub fn archive_of(meta_key: &ObjectKey, meta: &ImageMetadata) -> String {
    s3dock_core::bucket::archive_key(meta_key, meta).map(|k| k.to_string()).unwrap_or_default()
}
