//! Listings: ListObjectsV2 pages under the store's prefix, the prefix stripped on the way out.

use s3dock_core::names::ObjectKey;
use s3dock_core::store::{ETag, ListPage, ObjectInfo, StoreError};

use super::{S3Store, to_chrono};

impl S3Store {
    pub(super) async fn list_objects(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
    ) -> Result<ListPage, StoreError> {
        let mut req =
            self.client.list_objects_v2().bucket(&self.cfg.bucket).prefix(format!("{}{prefix}", self.cfg.prefix));
        if delimited {
            req = req.delimiter("/");
        }
        if let Some(t) = token {
            req = req.continuation_token(t);
        }
        if let Some(n) = self.cfg.list_page_size {
            req = req.max_keys(n);
        }
        let out = req.send().await.map_err(|e| self.ctx.map("listing", prefix, e))?;
        let strip = |k: &str| k.strip_prefix(self.cfg.prefix.as_str()).map(str::to_owned);
        let mut page = ListPage::default();
        for o in out.contents() {
            // Keys that are not valid s3dock keys (written by other tools) are not ours to show.
            let Some(key) = o.key().and_then(strip).and_then(|k| ObjectKey::parse(&k).ok()) else {
                continue;
            };
            let mut info = ObjectInfo::new(
                key,
                o.size().unwrap_or(0).max(0) as u64,
                ETag(o.e_tag().unwrap_or_default().to_owned()),
            );
            info.last_modified = to_chrono(o.last_modified());
            page.objects.push(info);
        }
        page.prefixes = out.common_prefixes().iter().filter_map(|p| p.prefix().and_then(strip)).collect();
        if out.is_truncated() == Some(true) {
            page.next = out.next_continuation_token().map(str::to_owned);
        }
        Ok(page)
    }
}
