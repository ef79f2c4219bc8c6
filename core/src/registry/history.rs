//! The audit trail.

use super::*;

impl Registry {
    /// The audit trail of an app, newest first, filtered by environment and event type.
    pub async fn history(&self, app: &AppName, q: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        let mut months = list_prefixes(&*self.store, &layout::audit_prefix(app)).await?;
        months.sort_by(|a, b| b.cmp(a));
        let limit = if q.limit == 0 { usize::MAX } else { q.limit };
        let mut out: Vec<HistoryEntry> = Vec::new();
        for month in months {
            let objects = list_all(&*self.store, &month).await?;
            let mut entries = futures::stream::iter(objects)
                .map(|o| async move {
                    let rec = match read_small(&*self.store, &o.key, docs::MAX_DOC_BYTES).await {
                        Ok(Some((b, _))) => docs::decode::<AuditRecord>(o.key.as_str(), &b).map_err(|e| e.to_string()),
                        Ok(None) => Err("deleted while listing".into()),
                        Err(e) => return Err(Error::from(e)),
                    };
                    Ok(HistoryEntry { key: o.key, record: rec })
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            entries.retain(|e| match &e.record {
                Ok(r) => {
                    (q.types.is_empty() || q.types.iter().any(|t| t == &r.event_type))
                        && q.env.as_ref().is_none_or(|env| r.environment() == Some(env.as_str()))
                }
                // Unreadable records are shown unless a filter asks for something specific.
                Err(_) => q.types.is_empty() && q.env.is_none(),
            });
            entries.sort_by(|a, b| {
                let ta = a.record.as_ref().map(|r| r.timestamp).ok();
                let tb = b.record.as_ref().map(|r| r.timestamp).ok();
                tb.cmp(&ta).then_with(|| b.key.cmp(&a.key))
            });
            out.extend(entries);
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    /// Writes an audit record directly (deploys, cleanup), never overwriting one.
    pub async fn audit(&self, key: &ObjectKey, record: &AuditRecord) -> Result<bool> {
        Ok(bucket::write_audit(&*self.store, &*self.clock, key, record).await?)
    }

    /// The archive folder listing of an app (for `list` and tests).
    pub async fn list_archive(&self, app: &AppName) -> Result<Vec<ObjectInfo>> {
        Ok(list_all(&*self.store, &layout::archive_prefix(app)).await?)
    }
}
