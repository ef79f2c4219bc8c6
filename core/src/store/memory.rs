//! An in-memory store for tests: the reference behaviour of the contract suite.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use tokio::io::AsyncReadExt;

use super::*;

#[derive(Debug)]
struct Entry {
    body: Bytes,
    info: ObjectInfo,
}

#[derive(Debug)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Entry>>,
    next_etag: AtomicU64,
    page_size: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_page_size(1000)
    }

    /// A store that lists at most `page_size` keys per page, to exercise pagination.
    pub fn with_page_size(page_size: usize) -> Self {
        MemoryStore { objects: Mutex::new(BTreeMap::new()), next_etag: AtomicU64::new(1), page_size: page_size.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock can only come from a test assertion elsewhere; the
        // map itself is never left half-updated, so the poisoned data is still consistent.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces an object's bytes behind the store's back (tests: corruption).
    pub fn corrupt(&self, key: &ObjectKey, body: impl Into<Bytes>) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(key.as_str()) {
            e.body = body.into();
            e.info.size = e.body.len() as u64;
        }
    }

    fn write(&self, key: &ObjectKey, body: Bytes, precondition: &Precondition) -> Result<ObjectInfo, StoreError> {
        let mut map = self.lock();
        check(map.get(key.as_str()).map(|e| &e.info), key, precondition)?;
        let etag = ETag(format!("\"mem-{}\"", self.next_etag.fetch_add(1, Ordering::SeqCst)));
        let info = ObjectInfo { key: key.clone(), size: body.len() as u64, etag, last_modified: Some(Utc::now()) };
        map.insert(key.as_str().to_owned(), Entry { body, info: info.clone() });
        Ok(info)
    }
}

/// The precondition rules every store follows (S3's semantics).
pub(crate) fn check(current: Option<&ObjectInfo>, key: &ObjectKey, p: &Precondition) -> Result<(), StoreError> {
    match (p, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::IfAbsent, None) => Ok(()),
        (Precondition::IfAbsent, Some(_)) => Err(StoreError::PreconditionFailed { key: key.to_string() }),
        (Precondition::IfMatch(_), None) => Err(StoreError::NotFound { key: key.to_string() }),
        (Precondition::IfMatch(want), Some(info)) if &info.etag == want => Ok(()),
        (Precondition::IfMatch(_), Some(_)) => Err(StoreError::PreconditionFailed { key: key.to_string() }),
    }
}

/// Splits listed keys into one page, as S3's ListObjectsV2 would: keys and (when delimited)
/// common prefixes in one sorted sequence, each counting once against the page size; the
/// continuation token is the last item returned.
pub(crate) fn paginate<'a>(
    keys: impl Iterator<Item = (&'a str, ObjectInfo)>,
    prefix: &str,
    delimited: bool,
    token: Option<&str>,
    page_size: usize,
) -> ListPage {
    let mut page = ListPage::default();
    let mut last: Option<String> = None;
    let mut count = 0;
    for (key, info) in keys {
        if !key.starts_with(prefix) {
            continue;
        }
        if let Some(t) = token
            && (key <= t || (t.ends_with('/') && key.starts_with(t)))
        {
            continue;
        }
        let common =
            if delimited { key[prefix.len()..].find('/').map(|pos| &key[..prefix.len() + pos + 1]) } else { None };
        if let Some(p) = common
            && page.prefixes.last().map(String::as_str) == Some(p)
        {
            continue;
        }
        if count == page_size {
            page.next = last;
            return page;
        }
        count += 1;
        match common {
            Some(p) => {
                page.prefixes.push(p.to_owned());
                last = Some(p.to_owned());
            }
            None => {
                last = Some(key.to_owned());
                page.objects.push(info);
            }
        }
    }
    page
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn url(&self) -> String {
        "memory://".into()
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(self.lock().get(key.as_str()).map(|e| e.info.clone()))
    }

    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
        let map = self.lock();
        let e = map.get(key.as_str()).ok_or_else(|| StoreError::NotFound { key: key.to_string() })?;
        if let Some(want) = &opts.if_match
            && want != &e.info.etag
        {
            return Err(StoreError::PreconditionFailed { key: key.to_string() });
        }
        let start = (opts.offset as usize).min(e.body.len());
        Ok(GetObject { info: e.info.clone(), body: reader_from_bytes(e.body.slice(start..)) })
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        body: Bytes,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        self.write(key, body, &precondition)
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        mut body: BoxReader,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let mut buf = Vec::new();
        body.read_to_end(&mut buf).await.map_err(|e| StoreError::io(format!("reading the body for {key}"), e))?;
        if let Some(check) = opts.commit_check {
            check().await.map_err(|reason| StoreError::Aborted { key: key.to_string(), reason })?;
        }
        self.write(key, Bytes::from(buf), &opts.precondition)
    }

    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        let map = self.lock();
        let iter = map.range(prefix.to_owned()..).map(|(k, e)| (k.as_str(), e.info.clone()));
        Ok(paginate(
            iter.take_while(|(k, _)| k.starts_with(prefix)),
            prefix,
            delimited,
            token.as_deref(),
            self.page_size,
        ))
    }

    async fn copy(
        &self,
        src: &ObjectKey,
        dst: &ObjectKey,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        let body = {
            let map = self.lock();
            map.get(src.as_str())
                .map(|e| e.body.clone())
                .ok_or_else(|| StoreError::NotFound { key: src.to_string() })?
        };
        self.write(dst, body, &precondition)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.lock().remove(key.as_str());
        Ok(())
    }

    fn precondition_support(&self) -> PreconditionSupport {
        PreconditionSupport::Native
    }
}
