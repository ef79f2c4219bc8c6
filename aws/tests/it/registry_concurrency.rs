//! Sixteen promoters of one environment, 200 rounds each, through the registry on a local
//! store and on S3: every promotion either wins (a new pointer with the next seq) or re-reads
//! and retries after losing a race, or finds its target already current; the seq chain ends
//! with no gap and no duplicate, and every pointer records the one it replaced.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use s3dock_core::clock::SystemClock;
use s3dock_core::docs::{self, PointerDoc};
use s3dock_core::layout;
use s3dock_core::names::{EnvName, ImageRef};
use s3dock_core::registry::{Change, EventMode, PromoteSource, Registry};
use s3dock_core::store::{ObjectStore, read_small};
use s3dock_testkit::seed_image;

use crate::support::*;

const PROMOTERS: usize = 16;
const ROUNDS: usize = 200;
const IMAGES: [&str; 2] = ["web:20250720-1045-def5678", "web:20250721-2118-f7a5a27"];

async fn promoters(store: Arc<dyn ObjectStore>, label: &str) {
    let now = Utc::now();
    for i in IMAGES {
        seed_image(&*store, &ImageRef::parse(i).unwrap(), i.as_bytes(), now).await.unwrap();
    }
    let env = EnvName::parse("production").unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PROMOTERS {
        // One registry per promoter, as separate processes would have.
        let reg = Registry::new(store.clone(), Arc::new(SystemClock), format!("promoter-{p}"), EventMode::Lambda);
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let (mut won, mut unchanged, mut retries) = (Vec::new(), 0usize, 0u32);
            for round in 0..ROUNDS {
                let target = ImageRef::parse(IMAGES[(p + round) % 2]).unwrap();
                let out = reg
                    .promote(&PromoteSource::Image(target), &env)
                    .await
                    .unwrap_or_else(|e| panic!("promoter {p}, round {round}: {e}"));
                retries += out.attempts - 1;
                match out.change {
                    Change::Unchanged => unchanged += 1,
                    Change::Created | Change::Updated => won.push(out.seq),
                }
            }
            (won, unchanged, retries)
        }));
    }
    let mut seqs = Vec::new();
    let (mut unchanged, mut retries) = (0, 0);
    for t in tasks {
        let (w, u, r) = t.await.unwrap();
        seqs.extend(w);
        unchanged += u;
        retries += r;
    }
    let wins = seqs.len();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), wins, "{label}: a seq was handed out twice");
    assert_eq!(distinct, (1..=wins as u64).collect::<BTreeSet<_>>(), "{label}: the seq chain has a gap");
    assert_eq!(wins + unchanged, PROMOTERS * ROUNDS, "{label}: every promotion ended as a win or a no-op");
    let key = layout::pointer(&ImageRef::parse(IMAGES[0]).unwrap().app, &env);
    let (bytes, _) = read_small(&*store, &key, docs::MAX_DOC_BYTES).await.unwrap().unwrap();
    let last: PointerDoc = docs::decode(key.as_str(), &bytes).unwrap();
    assert_eq!(last.seq(), wins as u64, "{label}: the pointer holds the last seq");
    assert_eq!(last.previous.and_then(|p| p.seq), Some(wins as u64 - 1), "{label}: it records the one it replaced");
    eprintln!(
        "{label}: {PROMOTERS} promoters x {ROUNDS} rounds: {wins} pointer updates, {unchanged} no-ops, {retries} retries after a lost race, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(retries > 0, "{label}: the promoters never contended; the test proves nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_promoters_on_a_local_store() {
    let (_dir, store) = local_store();
    promoters(Arc::new(store), "local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_promoters_on_s3() {
    let Some(store) = s3_store("promoters").await else { return };
    promoters(Arc::new(store), "s3").await;
}
