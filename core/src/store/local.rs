//! A directory laid out exactly like the bucket: `root/images/...`, `root/pointers/...`.
//!
//! - Every write streams into a temp file under `root/.s3dock/tmp/`, is fsynced, and is
//!   renamed over the key's path (atomic on POSIX), then the directory is fsynced. A reader
//!   sees the old object or the new one, never a torn one.
//! - Conditional writes (and all writes, so an unconditional write cannot slip between a
//!   check and a rename) hold an exclusive `flock` on `root/.s3dock/locks/{stripe}.lock` (one of 256, chosen by the
//!   key's SHA-256) across
//!   "check the current version, rename". The lock is per key and held by the kernel, so
//!   compare-and-swap is correct across processes, and a crashed holder releases it.
//! - The ETag is the file's mtime in nanoseconds plus its size. Under the key lock each write
//!   sets the new file's mtime strictly after the current one's, so every version of a key
//!   gets a distinct ETag even when the clock is coarse or two writes land in one tick.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::memory::{check, paginate};
use super::*;

const META_DIR: &str = ".s3dock";

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref();
        std::fs::create_dir_all(root.join(META_DIR).join("tmp"))
            .and_then(|_| std::fs::create_dir_all(root.join(META_DIR).join("locks")))
            .map_err(|e| {
                StoreError::io(
                    format!("cannot create the local store at {}; check the path and its permissions", root.display()),
                    e,
                )
            })?;
        let root = root.canonicalize().map_err(|e| StoreError::io(format!("cannot open {}", root.display()), e))?;
        let store = LocalStore { root };
        store.remove_stale_temp_files();
        Ok(store)
    }

    /// Temp files are renamed into place or removed by the writer; only a writer killed
    /// mid-write leaves one. They are invisible (not under a key) but take space: remove those
    /// untouched for a day, long past any write still in progress. Best effort.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join(META_DIR).join("tmp")) else { return };
        let day = Duration::from_secs(24 * 3600);
        for e in entries.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key`.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        // ObjectKey refuses absolute paths and `.`/`..` segments, so this stays under root.
        self.root.join(key.as_str())
    }

    fn lock_path(&self, key: &ObjectKey) -> PathBuf {
        // 256 lock stripes: bounded lock files, negligible contention between unrelated keys.
        let digest = Sha256::digest(key.as_str().as_bytes());
        self.root.join(META_DIR).join("locks").join(format!("{:02x}.lock", digest[0]))
    }

    fn temp_path(&self) -> PathBuf {
        self.root.join(META_DIR).join("tmp").join(uuid::Uuid::new_v4().simple().to_string())
    }

    fn info_from(key: &ObjectKey, md: &std::fs::Metadata) -> ObjectInfo {
        let mtime = md.modified().unwrap_or(UNIX_EPOCH);
        let nanos = mtime.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let mut info = ObjectInfo::new(key.clone(), md.len(), ETag(format!("\"{nanos:x}-{:x}\"", md.len())));
        info.last_modified = Some(DateTime::<Utc>::from(mtime));
        info
    }

    fn stat(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        match std::fs::metadata(self.path_of(key)) {
            Ok(md) if md.is_file() => Ok(Some(Self::info_from(key, &md))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
                Ok(None)
            }
            Err(e) => Err(StoreError::io(format!("cannot read {}", self.path_of(key).display()), e)),
        }
    }

    /// Streams `body` into a fresh temp file, fsynced. The caller renames or removes it.
    async fn spool(&self, key: &ObjectKey, mut body: BoxReader) -> Result<PathBuf, StoreError> {
        let tmp = self.temp_path();
        let result = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            tokio::io::copy(&mut body, &mut f).await?;
            f.flush().await?;
            f.sync_all().await?;
            Ok::<_, std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            let hint = match e.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    " (the disk is full: free space there, or use another store; nothing was written)"
                }
                std::io::ErrorKind::PermissionDenied => " (check the directory's owner and permissions)",
                _ => "",
            };
            return Err(StoreError::io(format!("writing {key} to the local store {}{hint}", self.root.display()), e));
        }
        Ok(tmp)
    }

    /// Moves a spooled temp file to `key` if `precondition` holds, under the key's lock.
    async fn commit(
        &self,
        key: &ObjectKey,
        tmp: PathBuf,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        let this = self.clone();
        let key2 = key.clone();
        let tmp2 = tmp.clone();
        let res = tokio::task::spawn_blocking(move || this.commit_blocking(&key2, &tmp2, &precondition))
            .await
            .map_err(|e| StoreError::other_caused(format!("local store task failed: {e}"), false, e))
            .and_then(|r| r);
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn commit_blocking(
        &self,
        key: &ObjectKey,
        tmp: &Path,
        precondition: &Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        let dest = self.path_of(key);
        let ioerr = |what: &str, e| StoreError::io(format!("{what} {}", dest.display()), e);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path(key))
            .map_err(|e| ioerr("cannot open the lock for", e))?;
        lock.lock().map_err(|e| ioerr("cannot lock", e))?;
        // From here to the end of the function the key is ours; the lock is released when
        // `lock` is dropped (or by the kernel if this process dies).
        let current = self.stat(key)?;
        check(current.as_ref(), key, precondition)?;
        let now = SystemTime::now();
        let mtime = match current.as_ref().and_then(|c| c.last_modified) {
            Some(prev) => {
                let prev: SystemTime = prev.into();
                if now > prev { now } else { prev + Duration::from_nanos(1) }
            }
            None => now,
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(tmp)
            .map_err(|e| ioerr("cannot reopen the temp file for", e))?;
        f.set_modified(mtime).map_err(|e| ioerr("cannot set the mtime of", e))?;
        drop(f);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| ioerr("cannot create the folder for", e))?;
        std::fs::rename(tmp, &dest).map_err(|e| ioerr("cannot move the new object to", e))?;
        // Make the rename durable: fsync the directory that holds the new entry.
        if let Ok(dir) = std::fs::File::open(&parent) {
            let _ = dir.sync_all();
        }
        let md = std::fs::metadata(&dest).map_err(|e| ioerr("cannot read back", e))?;
        Ok(Self::info_from(key, &md))
    }

    /// Deletes `key` under its lock, only while it has `etag` if one is given.
    async fn remove(&self, key: &ObjectKey, etag: Option<ETag>) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(this.lock_path(&key))
                .map_err(|e| StoreError::io(format!("cannot open the lock for {key}"), e))?;
            lock.lock().map_err(|e| StoreError::io(format!("cannot lock {key}"), e))?;
            if let Some(etag) = etag {
                check(this.stat(&key)?.as_ref(), &key, &Precondition::IfMatch(etag))?;
            }
            match std::fs::remove_file(this.path_of(&key)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::io(format!("cannot delete {key}"), e)),
            }
        })
        .await
        .map_err(|e| StoreError::other_caused(format!("local store task failed: {e}"), false, e))?
    }

    fn walk(&self, dir: &Path, rel: &str, out: &mut Vec<(String, ObjectInfo)>) -> Result<(), StoreError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
                return Ok(());
            }
            Err(e) => return Err(StoreError::io(format!("cannot list {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(format!("cannot list {}", dir.display()), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if rel.is_empty() && name == META_DIR {
                continue;
            }
            let key_str = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let ft = entry.file_type().map_err(|e| StoreError::io(format!("cannot stat {key_str}"), e))?;
            if ft.is_dir() {
                self.walk(&entry.path(), &key_str, out)?;
            } else if ft.is_file()
                && let Ok(key) = ObjectKey::parse(&key_str)
                && let Ok(md) = entry.metadata()
            {
                out.push((key_str, Self::info_from(&key, &md)));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        self.stat(key)
    }

    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
        let path = self.path_of(key);
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(StoreError::NotFound { key: key.to_string() });
            }
            Err(e) => return Err(StoreError::io(format!("cannot open {}", path.display()), e)),
        };
        // Stat the open handle, not the path: the info then describes exactly these bytes even
        // if a writer renames a new version over the path right now.
        let md = f.metadata().await.map_err(|e| StoreError::io(format!("cannot stat {}", path.display()), e))?;
        if md.is_dir() {
            return Err(StoreError::NotFound { key: key.to_string() });
        }
        let info = Self::info_from(key, &md);
        if let Some(want) = &opts.if_match
            && want != &info.etag
        {
            return Err(StoreError::PreconditionFailed { key: key.to_string() });
        }
        if opts.offset > 0 {
            f.seek(std::io::SeekFrom::Start(opts.offset))
                .await
                .map_err(|e| StoreError::io(format!("cannot seek {}", path.display()), e))?;
        }
        let body = tokio::io::BufReader::with_capacity(256 * 1024, f);
        Ok(GetObject {
            info,
            body: match opts.length {
                Some(n) => Box::pin(body.take(n)),
                None => Box::pin(body),
            },
        })
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        body: Bytes,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        let tmp = self.spool(key, reader_from_bytes(body)).await?;
        self.commit(key, tmp, precondition).await
    }

    async fn put_stream(&self, key: &ObjectKey, body: BoxReader, opts: PutOptions) -> Result<ObjectInfo, StoreError> {
        let tmp = self.spool(key, body).await?;
        if let Some(check) = opts.commit_check
            && let Err(reason) = check().await
        {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(StoreError::Aborted { key: key.to_string(), reason });
        }
        self.commit(key, tmp, opts.precondition).await
    }

    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            // Walk only the deepest folder the prefix names in full.
            let dir_part = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let mut found = Vec::new();
            let start = if dir_part.is_empty() { this.root.clone() } else { this.root.join(dir_part) };
            if !dir_part.is_empty() && ObjectKey::parse(dir_part).is_err() {
                return Ok(ListPage::default());
            }
            this.walk(&start, dir_part, &mut found)?;
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(paginate(found.iter().map(|(k, i)| (k.as_str(), i.clone())), &prefix, delimited, token.as_deref(), 1000))
        })
        .await
        .map_err(|e| StoreError::other_caused(format!("local store task failed: {e}"), false, e))?
    }

    async fn copy(
        &self,
        src: &ObjectKey,
        dst: &ObjectKey,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        let obj = self.get(src, GetOptions::default()).await?;
        let tmp = self.spool(dst, obj.body).await?;
        self.commit(dst, tmp, precondition).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.remove(key, None).await
    }

    async fn delete_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError> {
        self.remove(key, Some(etag.clone())).await
    }

    fn precondition_support(&self) -> PreconditionSupport {
        PreconditionSupport::Native
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_removes_only_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let tmp = store.root().join(META_DIR).join("tmp");
        let (old, fresh) = (tmp.join("killed-writer"), tmp.join("writing-now"));
        std::fs::write(&old, b"partial").unwrap();
        std::fs::write(&fresh, b"partial").unwrap();
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_days_ago).unwrap();
        LocalStore::open(dir.path()).unwrap();
        assert!(!old.exists(), "a temp file untouched for two days is removed");
        assert!(fresh.exists(), "a recent one may belong to a write in progress");
    }
}
