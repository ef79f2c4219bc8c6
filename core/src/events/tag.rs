//! `tags/**.json` created: check the target image, audit the tag, reject a bad one.

use super::*;

impl Handlers {
    /// `tags/**.json` created: check the target image exists, then audit `tag`. A current tag
    /// whose target is missing or whose document is unreadable is archived and audited
    /// `reject`, and deleted only when no pointer follows it.
    pub async fn record_tag(
        &self,
        app: &AppName,
        version: &Version,
        key: &ObjectKey,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let doc = match self.read_event_doc(key, ev).await? {
            Read::Doc(d) => d,
            Read::Gone(reason) => return Ok(Outcome::Superseded { reason, audit_key: None }),
        };
        let suspect = || Suspect {
            key: key.clone(),
            info: doc.info.clone(),
            stem: layout::tag_archive_stem(version),
            ext: layout::JSON_EXT,
        };
        let tag_doc: TagDoc = match docs::decode(key.as_str(), &doc.bytes) {
            Ok(d) => d,
            Err(e @ DocError::UnsupportedVersion { .. }) => return Err(newer_schema(&e)),
            Err(e) if !doc.current => {
                return Ok(Outcome::Superseded {
                    reason: format!("an unreadable version, since replaced: {e}"),
                    audit_key: None,
                });
            }
            Err(e) => return self.reject_tag(app, suspect(), "unknown", e.to_string(), key, ev).await,
        };
        let image = match bucket::target_image(app, &tag_doc.target_path) {
            Ok(i) => i,
            Err(reason) if doc.current => {
                return self.reject_tag(app, suspect(), "unknown", reason, key, ev).await;
            }
            Err(reason) => return Ok(Outcome::Superseded { reason, audit_key: None }),
        };
        if doc.current && bucket::find_metadata(&*self.store, &image).await?.is_none() {
            let reason = format!("{key} targets {image}, which is not in the bucket");
            return self.reject_tag(app, suspect(), image.tag.hash7(), reason, key, ev).await;
        }
        // The version alone is not the tag's identity: a forced move away and back within a
        // minute writes two documents. The digest of this document's bytes is (and is the same
        // for every redelivery of the same write).
        let doc_id = hex::encode(&<md5::Md5 as sha2::Digest>::digest(&doc.bytes)[..4]);
        let audit_key = layout::audit(
            app,
            tag_doc.promoted_at,
            EventType::Tag.as_str(),
            image.tag.hash7(),
            &[&version.canonical(), &doc_id],
        );
        let mut rec = self.record(
            EventType::Tag,
            app,
            tag_doc.promoted_at,
            &tag_doc.promoted_by,
            (&tag_doc.git_hash, &tag_doc.git_time),
        );
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(TagDetails {
            image_reference: image.to_string(),
            version: version.canonical(),
            tag_path: key.to_string(),
            forced: tag_doc.previous.is_some(),
            previous_target: tag_doc
                .previous
                .as_ref()
                .map(|p| p.source_image.clone().unwrap_or_else(|| p.target_path.clone())),
            archived_to: tag_doc.archived_to.clone(),
        })
        .unwrap_or_default();
        if !bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await? {
            return Ok(Outcome::Duplicate { audit_key });
        }
        if doc.current {
            Ok(Outcome::Recorded { audit_key, notified: vec![] })
        } else {
            Ok(Outcome::Superseded {
                reason: format!("{key} was moved again since; recorded"),
                audit_key: Some(audit_key),
            })
        }
    }

    /// Rejects a tag file (kept in place while a pointer follows it).
    async fn reject_tag(
        &self,
        app: &AppName,
        suspect: Suspect,
        hash7: &str,
        reason: String,
        key: &ObjectKey,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let suspects = [suspect];
        let r = Rejection { image: None, suspects: &suspects, hash7, reason, tag_followers: Some(key) };
        self.reject(app, r, ev).await
    }
}
