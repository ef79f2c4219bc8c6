//! The storage contract: what every `ObjectStore` must do, written once over `&dyn ObjectStore`
//! and run against each implementation:
//!
//! - `memory`: `MemoryStore` with 2 keys per listing page (pagination everywhere);
//! - `local`: `LocalStore` in a temp dir;
//! - `s3`: `S3Store` on the endpoint from `S3DOCK_TEST_S3_ENDPOINT` (LocalStack), fresh bucket;
//! - `s3_prefixed`: the same with a key prefix holding a space and a `+`;
//! - `moto`: `S3Store` on moto when `S3DOCK_TEST_MOTO_ENDPOINT` is set. moto is the lighter
//!   second target; checks relying on something it does not honour are skipped there with a
//!   message (see [`Caps::MOTO`]).
//!
//! Every check uses its own keys, and S3 targets get a fresh bucket per check, so checks can run
//! in parallel. For S3 targets each multipart-shaped check also proves, through
//! ListMultipartUploads, that no upload was left behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use s3dock_aws::S3Store;
use s3dock_core::store::faults::IgnorePreconditions;
use s3dock_core::store::{
    ETag, GetOptions, LocalStore, MemoryStore, ObjectStore, Precondition, PutOptions, StoreError, list_all,
    list_prefixes, probe_preconditions, read_to_vec, reader_from_bytes,
};
use tempfile::TempDir;

pub(crate) use crate::store_compose::compose;
use crate::support::*;

/// What a target honours beyond the core contract.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// `If-Match` on CompleteMultipartUpload (`If-None-Match: *` there is part of the core).
    pub(crate) multipart_if_match: bool,
    /// `head` returns the write id a `put_stream` stored (S3 user metadata, memory). The local
    /// store never loses a response, so it keeps none.
    pub(crate) write_ids: bool,
    /// `If-Match` on DeleteObject honoured by the server itself (the S3 store also compares
    /// the ETag first, so `delete_if` holds either way outside a race).
    pub(crate) server_conditional_delete: bool,
}

impl Caps {
    const FULL: Caps = Caps { multipart_if_match: true, write_ids: true, server_conditional_delete: true };
    const LOCAL: Caps = Caps { write_ids: false, ..Caps::FULL };

    /// moto 5.2.5, measured with this suite: it completes a multipart upload whatever its
    /// If-Match says (If-None-Match: * is honoured). Everything else in the contract passes. Like
    /// LocalStack it ignores both conditions on CopyObject, which `S3Store::copy` covers with a
    /// HEAD first. The CAS counter (store_concurrency) does not run on moto: its docs say it is
    /// not safe under concurrent writers.
    const MOTO: Caps = Caps { multipart_if_match: false, write_ids: true, server_conditional_delete: false };
}

/// One store under test and what is needed to check it.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    store: Arc<dyn ObjectStore>,
    /// A store of the same kind (S3: the same bucket) wrapped in `IgnorePreconditions`, which
    /// the probe must refuse.
    careless: Box<dyn ObjectStore>,
    /// For S3 targets: a raw client, to look for leftover multipart uploads.
    s3: Option<S3Fixture>,
    pub(crate) caps: Caps,
    _dir: Option<TempDir>,
}

impl Target {
    fn memory() -> Target {
        Target {
            name: "memory",
            store: Arc::new(MemoryStore::with_page_size(2)),
            careless: Box::new(IgnorePreconditions(MemoryStore::new())),
            s3: None,
            caps: Caps::FULL,
            _dir: None,
        }
    }

    fn local() -> Target {
        let (dir, store) = local_store();
        let careless = Box::new(IgnorePreconditions(LocalStore::open(dir.path().join("careless")).expect("open")));
        Target { name: "local", store: Arc::new(store), careless, s3: None, caps: Caps::LOCAL, _dir: Some(dir) }
    }

    fn s3(name: &'static str, fixture: S3Fixture, caps: Caps) -> Target {
        let store: S3Store = fixture.store.clone();
        Target {
            name,
            careless: Box::new(IgnorePreconditions(store.clone())),
            store: Arc::new(store),
            s3: Some(fixture),
            caps,
            _dir: None,
        }
    }

    pub(crate) fn st(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// S3 targets: no multipart upload may be left in progress.
    pub(crate) async fn assert_no_uploads(&self, context: &str) {
        if let Some(f) = &self.s3 {
            let left = f.uploads_in_progress().await;
            assert!(left.is_empty(), "{}: {context}: multipart uploads left behind: {left:?}", self.name);
        }
    }

    fn skip(&self, what: &str) {
        eprintln!("{}: skipped ({what})", self.name);
    }

    async fn finish(self) {
        if let Some(f) = self.s3 {
            f.cleanup().await;
        }
    }
}

async fn get_bytes(
    store: &dyn ObjectStore,
    k: &str,
    opts: GetOptions,
) -> Result<(Vec<u8>, s3dock_core::store::ObjectInfo), StoreError> {
    let obj = store.get(&key(k), opts).await?;
    let info = obj.info.clone();
    let body =
        read_to_vec(obj.body).await.map_err(|e| StoreError::Io { context: format!("reading {k}"), source: e })?;
    Ok((body, info))
}

pub(crate) async fn must_read(t: &Target, k: &str) -> Vec<u8> {
    get_bytes(t.st(), k, GetOptions::default()).await.unwrap_or_else(|e| panic!("{}: get {k}: {e}", t.name)).0
}

pub(crate) fn stale_etag() -> ETag {
    ETag("\"0123456789abcdef0123456789abcdef\"".into())
}

// ---- the checks -------------------------------------------------------------------------------

async fn round_trip(t: &Target) {
    let k = "contract/round-trip/a.json";
    let put = t.st().put_bytes(&key(k), Bytes::from_static(b"{\"v\":1}"), Precondition::None).await.expect("put");
    assert_eq!(put.size, 7, "{}", t.name);
    assert_eq!(put.key.as_str(), k);
    let head = t.st().head(&key(k)).await.expect("head").expect("present after put");
    assert_eq!((head.size, &head.etag), (7, &put.etag), "{}: head after put", t.name);
    assert!(head.last_modified.is_some(), "{}: head has a modification time", t.name);
    let (body, info) = get_bytes(t.st(), k, GetOptions::default()).await.expect("get");
    assert_eq!(body, b"{\"v\":1}");
    assert_eq!((info.size, &info.etag), (7, &put.etag), "{}: get info", t.name);
    // Overwrite: a new version with a new ETag.
    let put2 = t.st().put_bytes(&key(k), Bytes::from_static(b"{\"v\":22}"), Precondition::None).await.expect("put 2");
    assert_ne!(put2.etag, put.etag, "{}: a new version must get a new ETag", t.name);
    assert_eq!(must_read(t, k).await, b"{\"v\":22}");
    // Empty objects exist too.
    let e =
        t.st().put_bytes(&key("contract/round-trip/empty"), Bytes::new(), Precondition::IfAbsent).await.expect("empty");
    assert_eq!(e.size, 0);
    assert_eq!(must_read(t, "contract/round-trip/empty").await, b"");
}

async fn missing_objects(t: &Target) {
    let k = key("contract/missing/nothing.json");
    assert!(t.st().head(&k).await.expect("head").is_none(), "{}", t.name);
    let e = t.st().get(&k, GetOptions::default()).await.expect_err("get of a missing key");
    assert!(matches!(&e, StoreError::NotFound { key } if key == k.as_str()), "{}: {e:?}", t.name);
    let e = t.st().get(&k, GetOptions { offset: 5, ..Default::default() }).await.expect_err("ranged get");
    assert!(e.is_not_found(), "{}: {e:?}", t.name);
    let e = t.st().copy(&k, &key("contract/missing/dst"), Precondition::None).await.expect_err("copy");
    assert!(e.is_not_found(), "{}: {e:?}", t.name);
}

async fn if_absent(t: &Target) {
    let k = key("contract/if-absent/pointer.json");
    let first = t.st().put_bytes(&k, Bytes::from_static(b"first"), Precondition::IfAbsent).await.expect("create");
    let e = t.st().put_bytes(&k, Bytes::from_static(b"second"), Precondition::IfAbsent).await.expect_err("exists");
    assert!(matches!(&e, StoreError::PreconditionFailed { key } if key == k.as_str()), "{}: {e:?}", t.name);
    assert!(!e.is_retryable());
    let head = t.st().head(&k).await.expect("head").expect("present");
    assert_eq!(head.etag, first.etag, "{}: the losing create must not change the object", t.name);
    assert_eq!(must_read(t, k.as_str()).await, b"first");
}

async fn if_match(t: &Target) {
    let k = key("contract/if-match/pointer.json");
    let v1 = t.st().put_bytes(&k, Bytes::from_static(b"v1"), Precondition::IfAbsent).await.expect("create");
    let v2 =
        t.st().put_bytes(&k, Bytes::from_static(b"v2"), Precondition::IfMatch(v1.etag.clone())).await.expect("cas");
    assert_ne!(v2.etag, v1.etag);
    // v1's ETag is stale now: a compare-and-swap based on it must lose.
    let e = t.st().put_bytes(&k, Bytes::from_static(b"v3"), Precondition::IfMatch(v1.etag.clone())).await.unwrap_err();
    assert!(matches!(&e, StoreError::PreconditionFailed { key } if key == k.as_str()), "{}: {e:?}", t.name);
    let e = t.st().put_bytes(&k, Bytes::from_static(b"v3"), Precondition::IfMatch(stale_etag())).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: {e:?}", t.name);
    assert_eq!(must_read(t, k.as_str()).await, b"v2");
    let head = t.st().head(&k).await.expect("head").expect("present");
    assert_eq!(head.etag, v2.etag, "{}: the ETag put_bytes returned is the object's", t.name);
    // If-Match on a key that does not exist is NotFound (S3: 404 NoSuchKey), not a lost race.
    let missing = key("contract/if-match/missing.json");
    let e = t.st().put_bytes(&missing, Bytes::from_static(b"x"), Precondition::IfMatch(v2.etag)).await.unwrap_err();
    assert!(matches!(&e, StoreError::NotFound { key } if key == missing.as_str()), "{}: {e:?}", t.name);
    assert!(t.st().head(&missing).await.expect("head").is_none());
}

async fn put_stream_small(t: &Target) {
    let k = key("contract/stream-small/a.bin");
    let data = pseudo_random(300_000, 1);
    let reader = TestReader::new(data.clone());
    let opts = PutOptions { size_hint: Some(data.len() as u64), ..Default::default() };
    let info = t.st().put_stream(&k, reader.boxed(), opts).await.expect("put_stream");
    assert_eq!(info.size, data.len() as u64, "{}", t.name);
    let (body, got) = get_bytes(t.st(), k.as_str(), GetOptions::default()).await.expect("get");
    assert_eq!(sha256_hex(&body), sha256_hex(&data), "{}: content", t.name);
    assert_eq!(got.etag, info.etag);
    // The precondition applies to the streaming path as well.
    let e = t
        .st()
        .put_stream(
            &k,
            reader_from_bytes(b"other".to_vec()),
            PutOptions { precondition: Precondition::IfAbsent, ..Default::default() },
        )
        .await
        .unwrap_err();
    assert!(e.is_precondition_failed(), "{}: {e:?}", t.name);
    let opts = PutOptions { precondition: Precondition::IfMatch(info.etag.clone()), ..Default::default() };
    let v2 = t.st().put_stream(&k, reader_from_bytes(b"v2".to_vec()), opts).await.expect("cas stream");
    assert_eq!(must_read(t, k.as_str()).await, b"v2");
    assert_ne!(v2.etag, info.etag);
}

/// 12 MiB: three parts of the S3 test stores' 5 MiB (two full, one short), read from a body that
/// arrives in odd-sized chunks.
const BIG: usize = 12 * 1024 * 1024 + 12_345;

async fn put_stream_multipart(t: &Target) {
    let k = key("contract/stream-big/image.tar.gz");
    let data = pseudo_random(BIG, 2);
    let info = t.st().put_stream(&k, TestReader::new(data.clone()).boxed(), PutOptions::default()).await.expect("put");
    assert_eq!(info.size, BIG as u64, "{}", t.name);
    let (body, got) = get_bytes(t.st(), k.as_str(), GetOptions::default()).await.expect("get");
    assert_eq!(body.len(), BIG, "{}: size", t.name);
    assert_eq!(sha256_hex(&body), sha256_hex(&data), "{}: content (part order, part boundaries)", t.name);
    assert_eq!((got.size, &got.etag), (BIG as u64, &info.etag), "{}: info", t.name);
    t.assert_no_uploads("after a completed upload").await;

    // An exact multiple of the part size ends with an empty read: no empty last part.
    let exact = key("contract/stream-big/exact.bin");
    let data2 = pseudo_random(2 * TEST_PART_SIZE, 3);
    t.st().put_stream(&exact, TestReader::new(data2.clone()).boxed(), PutOptions::default()).await.expect("exact");
    assert_eq!(sha256_hex(&must_read(t, exact.as_str()).await), sha256_hex(&data2), "{}", t.name);

    // Preconditions on a multipart body are checked when it completes.
    let opts = PutOptions { precondition: Precondition::IfAbsent, ..Default::default() };
    let e = t.st().put_stream(&k, TestReader::new(pseudo_random(BIG, 4)).boxed(), opts).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: IfAbsent on an existing key: {e:?}", t.name);
    t.assert_no_uploads("after a failed IfAbsent completion").await;
    let fresh = key("contract/stream-big/fresh.bin");
    let opts = PutOptions { precondition: Precondition::IfAbsent, ..Default::default() };
    t.st().put_stream(&fresh, TestReader::new(pseudo_random(BIG, 5)).boxed(), opts).await.expect("multipart create");
    if !t.caps.multipart_if_match {
        t.skip("If-Match on CompleteMultipartUpload");
        return;
    }
    let opts = PutOptions { precondition: Precondition::IfMatch(stale_etag()), ..Default::default() };
    let e = t.st().put_stream(&k, TestReader::new(pseudo_random(BIG, 5)).boxed(), opts).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: stale IfMatch: {e:?}", t.name);
    assert_eq!(t.st().head(&k).await.expect("head").expect("present").etag, info.etag, "{}: unchanged", t.name);
    t.assert_no_uploads("after a failed IfMatch completion").await;
    let data3 = pseudo_random(BIG, 6);
    let opts = PutOptions { precondition: Precondition::IfMatch(info.etag.clone()), ..Default::default() };
    let v2 = t.st().put_stream(&k, TestReader::new(data3.clone()).boxed(), opts).await.expect("multipart cas");
    assert_ne!(v2.etag, info.etag);
    assert_eq!(sha256_hex(&must_read(t, k.as_str()).await), sha256_hex(&data3), "{}", t.name);
    t.assert_no_uploads("after conditional completions").await;
}

async fn commit_check(t: &Target) {
    for (label, size) in [("small", 1000), ("multipart", BIG)] {
        let k = key(&format!("contract/commit-check/{label}.bin"));
        // Err: nothing becomes visible.
        let reader = TestReader::new(pseudo_random(size, 7));
        let read = reader.counter();
        let seen = Arc::new(AtomicU64::new(u64::MAX));
        let seen2 = seen.clone();
        let opts = PutOptions {
            commit_check: Some(s3dock_core::store::commit_check(move || {
                seen2.store(read.load(Ordering::SeqCst), Ordering::SeqCst);
                Err("same MD5 as the stored image".into())
            })),
            ..Default::default()
        };
        let e = t.st().put_stream(&k, reader.boxed(), opts).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Aborted { key, reason } if key == k.as_str() && reason.to_string().contains("same MD5")),
            "{} {label}: {e:?}",
            t.name
        );
        assert_eq!(seen.load(Ordering::SeqCst), size as u64, "{} {label}: the check runs after the whole body", t.name);
        assert!(t.st().head(&k).await.expect("head").is_none(), "{} {label}: aborted write is visible", t.name);
        t.assert_no_uploads(&format!("{label} commit_check Err")).await;

        // Ok: the write proceeds, and the check ran exactly once.
        let calls = Arc::new(AtomicU64::new(0));
        let calls2 = calls.clone();
        let opts = PutOptions {
            commit_check: Some(s3dock_core::store::commit_check(move || {
                calls2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })),
            ..Default::default()
        };
        let data = pseudo_random(size, 8);
        t.st().put_stream(&k, TestReader::new(data.clone()).boxed(), opts).await.expect("commit_check Ok");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sha256_hex(&must_read(t, k.as_str()).await), sha256_hex(&data), "{} {label}", t.name);
    }
}

async fn body_error(t: &Target) {
    // Inside the first part (the single-request path) and after two full parts (multipart).
    for (label, fail_at) in [("small", 4000), ("multipart", 2 * TEST_PART_SIZE + 100)] {
        let k = key(&format!("contract/body-error/{label}.bin"));
        let reader = TestReader::new(pseudo_random(BIG, 9)).failing_at(fail_at);
        let e = t.st().put_stream(&k, reader.boxed(), PutOptions::default()).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionReset),
            "{} {label}: {e:?}",
            t.name
        );
        assert!(t.st().head(&k).await.expect("head").is_none(), "{} {label}: broken body is visible", t.name);
        t.assert_no_uploads(&format!("{label} body error")).await;
    }
    // A broken body must not damage the version already there.
    let k = key("contract/body-error/existing.bin");
    let v1 = t.st().put_bytes(&k, Bytes::from_static(b"keep me"), Precondition::None).await.expect("put");
    let reader = TestReader::new(pseudo_random(BIG, 10)).failing_at(TEST_PART_SIZE + 1);
    let opts = PutOptions { precondition: Precondition::IfMatch(v1.etag.clone()), ..Default::default() };
    t.st().put_stream(&k, reader.boxed(), opts).await.unwrap_err();
    assert_eq!(must_read(t, k.as_str()).await, b"keep me", "{}", t.name);
    t.assert_no_uploads("overwrite with a broken body").await;
}

async fn ranged_get(t: &Target) {
    let k = "contract/range/a.bin";
    let data = pseudo_random(1000, 11);
    let v = t.st().put_bytes(&key(k), Bytes::from(data.clone()), Precondition::None).await.expect("put");
    let (body, info) = get_bytes(t.st(), k, GetOptions { offset: 10, ..Default::default() }).await.expect("range");
    assert_eq!(body, &data[10..], "{}", t.name);
    assert_eq!((info.size, &info.etag), (1000, &v.etag), "{}: info describes the whole object", t.name);
    let opts = GetOptions { offset: 999, if_match: Some(v.etag.clone()), ..Default::default() };
    let (body, info) = get_bytes(t.st(), k, opts).await.expect("last byte");
    assert_eq!((body.as_slice(), info.size), (&data[999..], 1000));
    let e = get_bytes(t.st(), k, GetOptions { offset: 10, if_match: Some(stale_etag()), ..Default::default() })
        .await
        .unwrap_err();
    assert!(e.is_precondition_failed(), "{}: a resumed download of a replaced object: {e:?}", t.name);
    let e = get_bytes(t.st(), k, GetOptions { if_match: Some(stale_etag()), ..Default::default() }).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: {e:?}", t.name);
    // Resuming a download that had already finished: an empty body, the full info.
    let opts = GetOptions { offset: 1000, if_match: Some(v.etag.clone()), ..Default::default() };
    let (body, info) = get_bytes(t.st(), k, opts).await.expect("offset == size");
    assert!(body.is_empty(), "{}", t.name);
    assert_eq!((info.size, &info.etag), (1000, &v.etag), "{}", t.name);
    let opts = GetOptions { offset: 1000, if_match: Some(stale_etag()), ..Default::default() };
    let e = get_bytes(t.st(), k, opts).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: offset == size with a stale ETag: {e:?}", t.name);
}

async fn listing(t: &Target) {
    // 23 keys under one prefix, plus neighbours that must not show up.
    let mut want: Vec<String> = (0..20).map(|i| format!("contract/list/k{i:02}.json")).collect();
    want.extend([
        "contract/list/sub/a.json".into(),
        "contract/list/sub/b.json".into(),
        "contract/list/z/deep/c".into(),
    ]);
    for k in want.iter().chain(["contract/lis".to_owned(), "contract/listing-not/x".to_owned()].iter()) {
        t.st().put_bytes(&key(k), Bytes::from(k.clone()), Precondition::None).await.expect("put");
    }
    want.sort();
    let all = list_all(t.st(), "contract/list/").await.expect("list_all");
    let got: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(got, want, "{}: every key once, in order, across pages", t.name);
    let one = all.iter().find(|o| o.key.as_str() == "contract/list/k03.json").expect("k03");
    assert_eq!(one.size, "contract/list/k03.json".len() as u64);
    let head = t.st().head(&one.key).await.expect("head").expect("present");
    assert_eq!(one.etag, head.etag, "{}: listed ETag", t.name);

    // The first page of a store with small pages says there is more.
    let first = t.st().list_page("contract/list/", false, None).await.expect("page");
    if first.objects.len() < want.len() {
        assert!(first.next.is_some(), "{}: a partial page must carry a continuation token", t.name);
    }

    // Delimited: the "folders" directly under the prefix, and only the files at that level.
    let dirs = list_prefixes(t.st(), "contract/list/").await.expect("prefixes");
    assert_eq!(dirs, vec!["contract/list/sub/", "contract/list/z/"], "{}", t.name);
    let mut files = Vec::new();
    let mut token = None;
    loop {
        let page = t.st().list_page("contract/list/", true, token).await.expect("delimited page");
        files.extend(page.objects.into_iter().map(|o| o.key.to_string()));
        match page.next {
            Some(n) => token = Some(n),
            None => break,
        }
    }
    assert_eq!(files.len(), 20, "{}: delimited listing holds only the top-level files: {files:?}", t.name);

    // Many folders: the common prefixes themselves span pages.
    for i in 0..12 {
        t.st()
            .put_bytes(&key(&format!("contract/apps/app-{i:02}/x.json")), Bytes::new(), Precondition::None)
            .await
            .expect("put");
    }
    let apps = list_prefixes(t.st(), "contract/apps/").await.expect("app folders");
    let want_apps: Vec<String> = (0..12).map(|i| format!("contract/apps/app-{i:02}/")).collect();
    assert_eq!(apps, want_apps, "{}", t.name);

    assert!(list_all(t.st(), "contract/nothing-here/").await.expect("empty").is_empty());
}

async fn copy(t: &Target) {
    let src = key("contract/copy/src.tar.gz");
    let dst = key("contract/copy/archive/src-archived.tar.gz");
    t.st().put_bytes(&src, Bytes::from_static(b"image bytes"), Precondition::None).await.expect("put");
    let c = t.st().copy(&src, &dst, Precondition::None).await.expect("copy");
    assert_eq!(c.size, 11);
    assert_eq!(must_read(t, dst.as_str()).await, b"image bytes");
    assert_eq!(t.st().head(&dst).await.expect("head").expect("copied").etag, c.etag, "{}: copy's ETag", t.name);

    {
        // The archive path: never overwrite an existing archive object.
        t.st().put_bytes(&src, Bytes::from_static(b"new image"), Precondition::None).await.expect("replace");
        let e = t.st().copy(&src, &dst, Precondition::IfAbsent).await.unwrap_err();
        assert!(matches!(&e, StoreError::PreconditionFailed { key } if key == dst.as_str()), "{}: {e:?}", t.name);
        assert_eq!(must_read(t, dst.as_str()).await, b"image bytes", "{}: the archive must stay intact", t.name);
        let fresh = key("contract/copy/archive/fresh.tar.gz");
        t.st().copy(&src, &fresh, Precondition::IfAbsent).await.expect("copy to a fresh key");
        assert_eq!(must_read(t, fresh.as_str()).await, b"new image");
    }

    // A large object: S3 test stores copy it part by part (UploadPartCopy).
    let big = key("contract/copy/big.bin");
    let data = pseudo_random(BIG, 12);
    t.st().put_stream(&big, TestReader::new(data.clone()).boxed(), PutOptions::default()).await.expect("put big");
    let big_dst = key("contract/copy/archive/big.bin");
    let c = t.st().copy(&big, &big_dst, Precondition::IfAbsent).await.expect("big copy");
    assert_eq!(c.size, BIG as u64);
    assert_eq!(sha256_hex(&must_read(t, big_dst.as_str()).await), sha256_hex(&data), "{}: big copy content", t.name);
    let e = t.st().copy(&big, &big_dst, Precondition::IfAbsent).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: big copy onto an existing key: {e:?}", t.name);
    t.assert_no_uploads("after copies").await;
}

async fn delete(t: &Target) {
    let k = key("contract/delete/a.json");
    t.st().delete(&k).await.expect("deleting a missing key is fine");
    t.st().put_bytes(&k, Bytes::from_static(b"x"), Precondition::None).await.expect("put");
    t.st().delete(&k).await.expect("delete");
    assert!(t.st().head(&k).await.expect("head").is_none(), "{}", t.name);
    assert!(t.st().get(&k, GetOptions::default()).await.unwrap_err().is_not_found());
    t.st().delete(&k).await.expect("deleting twice is fine");
    // Gone means gone for conditional writes too: IfAbsent succeeds again.
    t.st().put_bytes(&k, Bytes::from_static(b"y"), Precondition::IfAbsent).await.expect("recreate");
}

/// Deletes of exactly the version inspected: cleanup and rejected uploads rely on it.
async fn delete_if(t: &Target) {
    let k = key("contract/delete-if/a.json");
    let v1 = t.st().put_bytes(&k, Bytes::from_static(b"one"), Precondition::None).await.expect("put");
    let v2 = t.st().put_bytes(&k, Bytes::from_static(b"two"), Precondition::None).await.expect("put");
    let e = t.st().delete_if(&k, &v1.etag).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: a stale ETag must not delete: {e:?}", t.name);
    assert_eq!(must_read(t, k.as_str()).await, b"two", "{}", t.name);
    // The ETag as S3 spells it, or without its quotes: the same tag.
    let bare = ETag(v2.etag.normalized().to_owned());
    t.st().delete_if(&k, &bare).await.unwrap_or_else(|e| panic!("{}: delete_if the current ETag: {e}", t.name));
    assert!(t.st().head(&k).await.expect("head").is_none(), "{}", t.name);
    let e = t.st().delete_if(&k, &v2.etag).await.unwrap_err();
    assert!(e.is_not_found(), "{}: delete_if of a missing key: {e:?}", t.name);
}

/// A writer whose response was lost recognizes its own object by the write id it stored.
async fn write_ids(t: &Target) {
    if !t.caps.write_ids {
        return t.skip("no write ids: this store never loses a response");
    }
    for (label, size, multipart) in [("small", 100, false), ("tiny multipart", 10, true), ("multipart", BIG, false)] {
        let k = key(&format!("contract/write-id/{label}.bin"));
        let opts = PutOptions { write_id: Some(format!("wid-{size}")), multipart, ..Default::default() };
        let put = t.st().put_stream(&k, TestReader::new(pseudo_random(size, 3)).boxed(), opts).await.expect("put");
        assert_eq!(put.write_id.as_deref(), Some(format!("wid-{size}").as_str()), "{} {label}", t.name);
        let head = t.st().head(&k).await.expect("head").expect("present");
        assert_eq!(head.write_id.as_deref(), Some(format!("wid-{size}").as_str()), "{} {label}: head", t.name);
        assert_eq!(head.etag, put.etag, "{} {label}", t.name);
    }
    t.assert_no_uploads("after write-id puts").await;
}

async fn special_keys(t: &Target) {
    // Keys as the event handlers see them (`incoming/x y+z.json`), plus characters that need
    // escaping in URLs, query strings and copy sources.
    let keys = ["contract/keys/x y+z.json", "contract/keys/a%20b&c=d?.json", "contract/keys/ünï cødé.json"];
    for (i, k) in keys.iter().enumerate() {
        let body = Bytes::from(format!("body {i}"));
        let v = t
            .st()
            .put_bytes(&key(k), body.clone(), Precondition::IfAbsent)
            .await
            .unwrap_or_else(|e| panic!("{}: put {k}: {e}", t.name));
        assert_eq!(t.st().head(&key(k)).await.expect("head").expect("present").etag, v.etag, "{}: {k}", t.name);
        assert_eq!(must_read(t, k).await, body.as_ref(), "{}: {k}", t.name);
        let copy = format!("{k}.copy");
        t.st()
            .copy(&key(k), &key(&copy), Precondition::IfAbsent)
            .await
            .unwrap_or_else(|e| panic!("{}: copy {k}: {e}", t.name));
        assert_eq!(must_read(t, &copy).await, body.as_ref(), "{}: copy of {k}", t.name);
        t.st().put_bytes(&key(k), Bytes::from_static(b"v2"), Precondition::IfMatch(v.etag)).await.expect("cas");
    }
    let listed: Vec<String> =
        list_all(t.st(), "contract/keys/").await.expect("list").into_iter().map(|o| o.key.to_string()).collect();
    let mut want: Vec<String> = keys.iter().flat_map(|k| [k.to_string(), format!("{k}.copy")]).collect();
    want.sort();
    assert_eq!(listed, want, "{}", t.name);
    let prefixed = list_all(t.st(), "contract/keys/x y+").await.expect("list with a special prefix");
    assert_eq!(prefixed.len(), 2, "{}: {prefixed:?}", t.name);
    for k in &want {
        t.st().delete(&key(k)).await.expect("delete");
    }
    assert!(list_all(t.st(), "contract/keys/").await.expect("list").is_empty(), "{}", t.name);
}

async fn probe(t: &Target) {
    probe_preconditions(t.st()).await.unwrap_or_else(|e| panic!("{}: the probe must pass: {e}", t.name));
    let report = s3dock_core::store::probe(t.st()).await.expect("probe");
    if report.probed {
        let ops: Vec<&str> = report.checks.iter().map(|c| c.operation).collect();
        assert_eq!(
            ops,
            [
                "PutObject If-None-Match",
                "PutObject If-Match",
                "CompleteMultipartUpload If-None-Match",
                "CompleteMultipartUpload If-Match",
                "CopyObject If-None-Match",
                "DeleteObject If-Match"
            ],
            "{}",
            t.name
        );
        for c in &report.checks {
            let expect = match c.operation {
                "CompleteMultipartUpload If-Match" => t.caps.multipart_if_match,
                // The S3 store compares the ETag before it sends a conditional delete.
                "DeleteObject If-Match" => true,
                _ => true,
            };
            assert_eq!(c.honoured, expect, "{}: {c:?}", t.name);
        }
        let _ = t.caps.server_conditional_delete;
    }
    let e = probe_preconditions(t.careless.as_ref()).await.expect_err("a careless store must be refused");
    assert!(
        matches!(&e, StoreError::PreconditionsIgnored { store, .. } if store.starts_with("careless+")),
        "{}: {e:?}",
        t.name
    );
    assert!(list_all(t.st(), "probe/").await.expect("list").is_empty(), "{}: probe objects left", t.name);
    t.assert_no_uploads("after the probe").await;
}

// ---- the matrix -------------------------------------------------------------------------------

macro_rules! contract_suite {
    ($($check:ident),+ $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $check() {
                let t = super::Target::memory();
                super::$check(&t).await;
            })+
        }
        mod local {
            $(#[tokio::test]
            async fn $check() {
                let t = super::Target::local();
                super::$check(&t).await;
            })+
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(f) = crate::support::s3_fixture(stringify!($check), false).await else { return };
                let t = super::Target::s3("s3", f, super::Caps::FULL);
                super::$check(&t).await;
                t.finish().await;
            })+
        }
        mod s3_prefixed {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(f) = crate::support::s3_fixture(stringify!($check), true).await else { return };
                let t = super::Target::s3("s3 with a prefix", f, super::Caps::FULL);
                super::$check(&t).await;
                t.finish().await;
            })+
        }
        mod moto {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(f) = crate::support::moto_fixture(stringify!($check)).await else { return };
                let t = super::Target::s3("moto", f, super::Caps::MOTO);
                super::$check(&t).await;
                t.finish().await;
            })+
        }
    };
}

contract_suite!(
    round_trip,
    missing_objects,
    if_absent,
    if_match,
    put_stream_small,
    put_stream_multipart,
    commit_check,
    body_error,
    ranged_get,
    listing,
    copy,
    delete,
    delete_if,
    write_ids,
    special_keys,
    probe,
    compose,
);

// ---- S3 only ----------------------------------------------------------------------------------

/// A versioned bucket (the stack turns versioning on): every write returns its version id, an
/// old version stays readable by id after it is replaced (what the event handlers read), and
/// a delete leaves the object gone for readers of the current version.
#[tokio::test]
async fn s3_versioned_bucket_serves_the_version_an_event_names() {
    let Some(f) = s3_fixture("versioned", false).await else { return };
    f.client
        .put_bucket_versioning()
        .bucket(f.bucket())
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning");
    let st = &f.store;
    let k = key("images/app/202507/app-20250721-2118-f7a5a27.json");
    let v1 = st.put_bytes(&k, Bytes::from_static(b"first"), Precondition::IfAbsent).await.expect("v1");
    let v2 = st.put_bytes(&k, Bytes::from_static(b"second"), Precondition::IfMatch(v1.etag.clone())).await.expect("v2");
    let (id1, id2) = (v1.version_id.clone().expect("a version id"), v2.version_id.clone().expect("a version id"));
    assert_ne!(id1, id2);
    let old = st.get(&k, GetOptions { version_id: Some(id1), ..Default::default() }).await.expect("read v1");
    assert_eq!(old.info.etag, v1.etag);
    assert_eq!(read_to_vec(old.body).await.unwrap(), b"first");
    let head = st.head(&k).await.unwrap().unwrap();
    assert_eq!((head.etag, head.version_id), (v2.etag.clone(), Some(id2)));
    // A conditional delete of the replaced version must not delete the current one.
    assert!(st.delete_if(&k, &v1.etag).await.unwrap_err().is_precondition_failed());
    st.delete_if(&k, &v2.etag).await.expect("delete the current version");
    assert!(st.head(&k).await.unwrap().is_none());
    f.cleanup().await;
}

/// The prefix is added on the way in and stripped on the way out; nothing outside it is seen.
#[tokio::test]
async fn s3_prefix_isolation() {
    let Some(f) = s3_fixture("prefix-isolation", true).await else { return };
    let prefix = f.store.prefix().to_owned();
    assert!(prefix.ends_with("team a/x+y/"), "{prefix}");
    f.store.put_bytes(&key("images/a/x.json"), Bytes::from_static(b"in"), Precondition::None).await.expect("put");
    let raw = f.raw_keys(&prefix).await;
    assert_eq!(raw, vec![format!("{prefix}images/a/x.json")]);
    // Neighbours outside the prefix, and keys inside it that are not valid s3dock keys.
    let parent = prefix.trim_end_matches("x+y/").to_owned();
    f.put_raw(&format!("{parent}images/a/outside.json"), b"out").await;
    f.put_raw(&format!("{parent}x+y-sibling/images/a/y.json"), b"out").await;
    f.put_raw(&format!("{prefix}images/a//double-slash.json"), b"bad").await;
    f.put_raw(&format!("{prefix}images/a/./dot.json"), b"bad").await;
    let listed: Vec<String> =
        list_all(&f.store, "images/").await.expect("list").into_iter().map(|o| o.key.to_string()).collect();
    assert_eq!(listed, vec!["images/a/x.json"]);
    assert_eq!(list_prefixes(&f.store, "").await.expect("prefixes"), vec!["images/"]);
    assert!(f.store.url().ends_with("/team a/x+y"), "{}", f.store.url());
    f.cleanup().await;
}

/// The store's URL names the bucket and prefix, and parses back to the same configuration.
#[tokio::test]
async fn s3_url_round_trips() {
    let Some(store) = s3_store_prefixed("url").await else { return };
    let url = store.url();
    assert!(url.starts_with(&format!("s3://{}/", store.bucket())), "{url}");
    let parsed = s3dock_aws::S3Config::from_url(&url).expect("parse");
    assert_eq!((parsed.bucket.as_str(), parsed.prefix.as_str()), (store.bucket(), store.prefix()));
}

/// S3 copies cannot be compare-and-swapped (see `S3Store::copy`): refused clearly, never
/// emulated, and nothing is written.
#[tokio::test]
async fn s3_copy_with_if_match_is_refused() {
    let Some(f) = s3_fixture("copy-if-match", false).await else { return };
    let (src, dst) = (key("images/a/src.json"), key("archive/a/dst.json"));
    f.store.put_bytes(&src, Bytes::from_static(b"src"), Precondition::None).await.expect("put");
    let v = f.store.put_bytes(&dst, Bytes::from_static(b"dst"), Precondition::None).await.expect("put");
    let e = f.store.copy(&src, &dst, Precondition::IfMatch(v.etag)).await.unwrap_err();
    assert!(matches!(&e, StoreError::Other { retryable: false, message, .. } if message.contains("If-Match")), "{e:?}");
    assert_eq!(
        read_to_vec(f.store.get(&dst, GetOptions::default()).await.expect("get").body).await.expect("read"),
        b"dst"
    );
    f.cleanup().await;
}
