//! An in-memory, versioned store for tests: the reference behaviour of the contract suite.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::*;
use crate::clock::{Clock, SystemClock};

/// One version of a key: its bytes, or a delete marker (`body: None`).
#[derive(Debug, Clone)]
pub struct Version {
    pub body: Option<Bytes>,
    pub info: ObjectInfo,
}

impl Version {
    pub fn is_delete_marker(&self) -> bool {
        self.body.is_none()
    }
}

/// An in-memory bucket with S3 versioning always on: every write adds a version with its own
/// id, a delete adds a delete marker, and old versions stay readable by id. Tests and the
/// protocol simulation read the whole history through [`MemoryStore::versions`].
#[derive(Debug)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Vec<Version>>>,
    next_etag: AtomicU64,
    page_size: usize,
    clock: Arc<dyn Clock>,
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
        MemoryStore {
            objects: Mutex::new(BTreeMap::new()),
            next_etag: AtomicU64::new(1),
            page_size: page_size.max(1),
            clock: Arc::new(SystemClock),
        }
    }

    /// Stamps `last_modified` from `clock` (the simulation's) instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Version>>> {
        // A panic while holding the lock can only come from a test assertion elsewhere; the
        // map itself is never left half-updated, so the poisoned data is still consistent.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces an object's bytes behind the store's back (tests: corruption).
    pub fn corrupt(&self, key: &ObjectKey, body: impl Into<Bytes>) {
        let mut map = self.lock();
        if let Some(v) = map.get_mut(key.as_str()).and_then(|h| h.last_mut())
            && v.body.is_some()
        {
            let body = body.into();
            v.info.size = body.len() as u64;
            v.body = Some(body);
        }
    }

    /// Every version ever written under `key`, oldest first (delete markers included).
    pub fn versions(&self, key: &str) -> Vec<Version> {
        self.lock().get(key).cloned().unwrap_or_default()
    }

    /// Every key that ever had a version, in key order.
    pub fn all_keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn current(map: &BTreeMap<String, Vec<Version>>, key: &str) -> Option<Version> {
        map.get(key).and_then(|h| h.last()).filter(|v| v.body.is_some()).cloned()
    }

    fn add_delete_marker(&self, map: &mut BTreeMap<String, Vec<Version>>, key: &ObjectKey) {
        let n = self.next_etag.fetch_add(1, Ordering::SeqCst);
        let mut info = ObjectInfo::new(key.clone(), 0, ETag(String::new()));
        info.version_id = Some(format!("v{n}"));
        info.last_modified = Some(self.clock.now());
        map.entry(key.as_str().to_owned()).or_default().push(Version { body: None, info });
    }

    fn write(
        &self,
        key: &ObjectKey,
        body: Bytes,
        precondition: &Precondition,
        write_id: Option<String>,
    ) -> Result<ObjectInfo, StoreError> {
        let mut map = self.lock();
        check(Self::current(&map, key.as_str()).as_ref().map(|v| &v.info), key, precondition)?;
        let n = self.next_etag.fetch_add(1, Ordering::SeqCst);
        let info = ObjectInfo {
            key: key.clone(),
            size: body.len() as u64,
            etag: ETag(format!("\"mem-{n}\"")),
            last_modified: Some(self.clock.now()),
            version_id: Some(format!("v{n}")),
            write_id,
        };
        map.entry(key.as_str().to_owned()).or_default().push(Version { body: Some(body), info: info.clone() });
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
        Ok(Self::current(&self.lock(), key.as_str()).map(|v| v.info))
    }

    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
        let map = self.lock();
        let not_found = || StoreError::NotFound { key: key.to_string() };
        let v = match &opts.version_id {
            Some(id) => map
                .get(key.as_str())
                .and_then(|h| h.iter().find(|v| v.info.version_id.as_deref() == Some(id)))
                .filter(|v| v.body.is_some())
                .cloned()
                .ok_or_else(not_found)?,
            None => Self::current(&map, key.as_str()).ok_or_else(not_found)?,
        };
        if let Some(want) = &opts.if_match
            && want != &v.info.etag
        {
            return Err(StoreError::PreconditionFailed { key: key.to_string() });
        }
        // `current` and the version lookup only return versions with a body.
        let body = v.body.unwrap_or_default();
        let start = (opts.offset as usize).min(body.len());
        let end = opts.length.map_or(body.len(), |n| start.saturating_add(n as usize).min(body.len()));
        Ok(GetObject { info: v.info, body: reader_from_bytes(body.slice(start..end)) })
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        body: Bytes,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        self.write(key, body, &precondition, None)
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
        self.write(key, Bytes::from(buf), &opts.precondition, opts.write_id)
    }

    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        let map = self.lock();
        let iter = map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, h)| h.last().filter(|v| v.body.is_some()).map(|v| (k.as_str(), v.info.clone())));
        Ok(paginate(iter, prefix, delimited, token.as_deref(), self.page_size))
    }

    async fn copy(
        &self,
        src: &ObjectKey,
        dst: &ObjectKey,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        let body = Self::current(&self.lock(), src.as_str())
            .and_then(|v| v.body)
            .ok_or_else(|| StoreError::NotFound { key: src.to_string() })?;
        self.write(dst, body, &precondition, None)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let mut map = self.lock();
        if Self::current(&map, key.as_str()).is_some() {
            self.add_delete_marker(&mut map, key);
        }
        Ok(())
    }

    async fn delete_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError> {
        let mut map = self.lock();
        check(Self::current(&map, key.as_str()).as_ref().map(|v| &v.info), key, &Precondition::IfMatch(etag.clone()))?;
        self.add_delete_marker(&mut map, key);
        Ok(())
    }

    fn precondition_support(&self) -> PreconditionSupport {
        PreconditionSupport::Native
    }
}
