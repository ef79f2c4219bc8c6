//! The compose contract (part of the storage contract, run on every target by
//! `store_contract`): an object made of uploaded bytes and copied ranges of other objects,
//! conditioned on each source's ETag; nothing visible and no upload left when it fails.

use bytes::Bytes;
use s3dock_core::store::{CopyRange, ObjectStore, Piece, PieceStream, Precondition, PutOptions};

use crate::store_contract::{Target, must_read, stale_etag};
use crate::support::*;

const MIB: usize = 1 << 20;

fn stream(pieces: Vec<std::io::Result<Piece>>) -> PieceStream {
    s3dock_core::store::compose::stream_of(pieces)
}

pub(crate) async fn compose(t: &Target) {
    let st: &dyn ObjectStore = t.st();
    let (a, b) = (pseudo_random(12 * MIB, 21), pseudo_random(3 * MIB, 22));
    let ka = key("contract/compose/a.bin");
    let kb = key("contract/compose/b.bin");
    let ia = st.put_stream(&ka, TestReader::new(a.clone()).boxed(), PutOptions::default()).await.expect("put a");
    let ib = st.put_bytes(&kb, Bytes::from(b.clone()), Precondition::None).await.expect("put b");
    let range = |k: &s3dock_core::names::ObjectKey, etag: &s3dock_core::store::ETag, offset: usize, length: usize| {
        Piece::Copy(CopyRange { key: k.clone(), etag: etag.clone(), offset: offset as u64, length: length as u64 })
    };
    let small = pseudo_random(100 * 1024, 23);
    // Long enough to be cut into parts (S3 targets use 5 MiB parts) with at least a minimum
    // part left behind for the range after it.
    let middle = pseudo_random(13 * MIB, 24);
    // Small bytes before a large range (completed with the range's first bytes), a small range
    // (downloaded), a large range after a run of bytes, and a few bytes to end with.
    let pieces = vec![
        Ok(Piece::Data(Bytes::from(small.clone()))),
        Ok(range(&ka, &ia.etag, MIB, 7 * MIB)),
        Ok(Piece::Data(Bytes::from(middle.clone()))),
        Ok(range(&kb, &ib.etag, 0, MIB)),
        Ok(range(&ka, &ia.etag, 0, 6 * MIB)),
        Ok(Piece::Data(Bytes::from_static(b"end"))),
    ];
    let mut want = small.clone();
    want.extend_from_slice(&a[MIB..8 * MIB]);
    want.extend_from_slice(&middle);
    want.extend_from_slice(&b[..MIB]);
    want.extend_from_slice(&a[..6 * MIB]);
    want.extend_from_slice(b"end");
    let dst = key("contract/compose/out.tar.gz");
    let opts =
        PutOptions { precondition: Precondition::IfAbsent, write_id: Some("w-compose".into()), ..Default::default() };
    let info = st.compose(&dst, stream(pieces), opts).await.unwrap_or_else(|e| panic!("{}: compose: {e}", t.name));
    assert_eq!(info.size, want.len() as u64, "{}", t.name);
    let got = must_read(t, dst.as_str()).await;
    assert_eq!(sha256_hex(&got), sha256_hex(&want), "{}: composed content", t.name);
    if t.caps.write_ids {
        assert_eq!(st.head(&dst).await.unwrap().unwrap().write_id.as_deref(), Some("w-compose"), "{}", t.name);
    }
    t.assert_no_uploads("after a composed upload").await;

    // A source that changed since the plan: refused, nothing written, nothing left.
    let stale = key("contract/compose/stale.bin");
    let pieces = vec![Ok(Piece::Data(Bytes::from(small.clone()))), Ok(range(&ka, &stale_etag(), 0, 6 * MIB))];
    let e = st.compose(&stale, stream(pieces), PutOptions::default()).await.unwrap_err();
    assert!(e.is_retryable(), "{}: a changed source is worth a retry without reuse: {e:?}", t.name);
    assert!(st.head(&stale).await.unwrap().is_none(), "{}: nothing visible", t.name);
    let pieces = vec![Ok(range(&kb, &stale_etag(), 0, 1000))];
    assert!(st.compose(&stale, stream(pieces), PutOptions::default()).await.is_err(), "{}: small range", t.name);
    assert!(st.head(&stale).await.unwrap().is_none(), "{}: nothing visible", t.name);
    t.assert_no_uploads("after a refused source").await;

    // The destination's condition holds as for any write; a failing body aborts.
    let pieces = vec![Ok(range(&ka, &ia.etag, 0, 6 * MIB))];
    let opts = PutOptions { precondition: Precondition::IfAbsent, ..Default::default() };
    let e = st.compose(&dst, stream(pieces), opts).await.unwrap_err();
    assert!(e.is_precondition_failed(), "{}: IfAbsent on an existing key: {e:?}", t.name);
    let broken = key("contract/compose/broken.bin");
    let pieces = vec![Ok(range(&ka, &ia.etag, 0, 6 * MIB)), Err(std::io::Error::other("docker save failed"))];
    assert!(st.compose(&broken, stream(pieces), PutOptions::default()).await.is_err(), "{}", t.name);
    assert!(st.head(&broken).await.unwrap().is_none(), "{}: nothing visible", t.name);
    t.assert_no_uploads("after failed composes").await;
}
