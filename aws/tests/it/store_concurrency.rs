//! Compare-and-swap under contention: many writers increment one counter object with
//! read -> `IfMatch` write -> on `PreconditionFailed` re-read and retry. If a store let two
//! writers both succeed from the same version (a lost update), some value would be written
//! twice and the final count would fall short, so each check proves:
//! - the final value equals the number of successful writes (tasks x rounds), and
//! - every value 1..=N was written by exactly one successful write, and each task's successes
//!   are among them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use s3dock_core::names::ObjectKey;
use s3dock_core::store::{GetOptions, LocalStore, MemoryStore, ObjectStore, Precondition, StoreError, read_to_vec};

use crate::support::*;

const TASKS: usize = 16;
const ROUNDS: usize = 200;

/// Reduced for S3: LocalStack serves every request from one Python process on the 2 shared
/// cores (about 650 requests/s here), and with 16 writers each increment costs about 7 lost
/// races, each a read and a write. 16 x 200 would take about 70 s; 16 x 50 (800 increments,
/// about 12,000 requests) keeps the contention and takes about 18 s.
const S3_ROUNDS: usize = 50;

/// Processes x tasks per process x rounds for the cross-process check.
const PROCS: usize = 4;
const PROC_TASKS: usize = 4;
const PROC_ROUNDS: usize = 50;

const WORKER_DIR_ENV: &str = "S3DOCK_CAS_WORKER_DIR";
const WORKER_OUT_ENV: &str = "S3DOCK_CAS_WORKER_OUT";

fn counter_key() -> ObjectKey {
    key("pointers/counter/prod.json")
}

/// What one task did: the values its successful writes stored, and how many races it lost.
#[derive(Debug, Default)]
struct TaskReport {
    written: Vec<u64>,
    conflicts: u64,
}

/// One successful increment: read the counter, write n+1 if it is still the version read.
async fn increment(store: &dyn ObjectStore, k: &ObjectKey, conflicts: &mut u64) -> Result<u64, StoreError> {
    loop {
        let obj = store.get(k, GetOptions::default()).await?;
        let etag = obj.info.etag.clone();
        let body = read_to_vec(obj.body)
            .await
            .map_err(|e| StoreError::Io { context: "reading the counter".into(), source: e })?;
        let n: u64 = std::str::from_utf8(&body)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("the counter holds {body:?}: a torn or mixed write"));
        // Let other writers run between the read and the write, or the in-memory store (which
        // never suspends) would serialize every task and nothing would contend.
        tokio::task::yield_now().await;
        match store.put_bytes(k, Bytes::from((n + 1).to_string()), Precondition::IfMatch(etag)).await {
            Ok(_) => return Ok(n + 1),
            Err(e) if e.is_precondition_failed() => *conflicts += 1,
            Err(e) => return Err(e),
        }
    }
}

async fn run_task(store: Arc<dyn ObjectStore>, rounds: usize) -> TaskReport {
    let k = counter_key();
    let mut report = TaskReport::default();
    for _ in 0..rounds {
        let v = increment(store.as_ref(), &k, &mut report.conflicts).await.unwrap_or_else(|e| panic!("increment: {e}"));
        report.written.push(v);
    }
    report
}

async fn read_counter(store: &dyn ObjectStore) -> u64 {
    let obj = store.get(&counter_key(), GetOptions::default()).await.expect("read the counter");
    String::from_utf8(read_to_vec(obj.body).await.expect("body")).expect("utf-8").trim().parse().expect("a number")
}

/// Every value 1..=total written exactly once, and the counter at total.
fn check_accounting(name: &str, reports: &[TaskReport], total: usize, final_value: u64) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (task, r) in reports.iter().enumerate() {
        // A task's own successes are strictly increasing: it only ever moves the counter forward.
        assert!(r.written.windows(2).all(|w| w[0] < w[1]), "{name}: task {task} wrote {:?}", r.written);
        for v in &r.written {
            if let Some(other) = seen.insert(*v, task) {
                panic!("{name}: value {v} was written by tasks {other} and {task}: a lost update");
            }
        }
    }
    let successes: usize = reports.iter().map(|r| r.written.len()).sum();
    assert_eq!(successes, total, "{name}: successful increments");
    assert_eq!(final_value, total as u64, "{name}: final counter value");
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (1..=total as u64).collect::<Vec<_>>(), "{name}: values");
}

async fn contend(name: &str, store: Arc<dyn ObjectStore>, tasks: usize, rounds: usize) {
    store
        .put_bytes(&counter_key(), Bytes::from_static(b"0"), Precondition::IfAbsent)
        .await
        .expect("create the counter");
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|_| tokio::spawn(run_task(store.clone(), rounds))).collect();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(h.await.expect("task panicked"));
    }
    let final_value = read_counter(store.as_ref()).await;
    check_accounting(name, &reports, tasks * rounds, final_value);
    let conflicts: u64 = reports.iter().map(|r| r.conflicts).sum();
    eprintln!(
        "{name}: {tasks} tasks x {rounds} rounds: {} increments, {conflicts} lost races, {:.1?}",
        tasks * rounds,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_cas_counter() {
    contend("memory", Arc::new(MemoryStore::new()), TASKS, ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_store_cas_counter() {
    let (_dir, store) = local_store();
    contend("local", Arc::new(store), TASKS, ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_cas_counter() {
    let Some(store) = s3_store("cas-counter").await else { return };
    contend("s3", Arc::new(store), TASKS, S3_ROUNDS).await;
}

/// The kernel's `flock` is what makes LocalStore's compare-and-swap safe between processes:
/// run several copies of this test binary (each with several tasks) on one directory.
#[test]
fn local_store_cas_across_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("bucket");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = LocalStore::open(&root).expect("open");
    rt.block_on(store.put_bytes(&counter_key(), Bytes::from_static(b"0"), Precondition::IfAbsent)).expect("counter");

    let exe = std::env::current_exe().expect("the test binary");
    let started = Instant::now();
    let children: Vec<_> = (0..PROCS)
        .map(|i| {
            let out = dir.path().join(format!("worker-{i}.txt"));
            let child = Command::new(&exe)
                .args(["--ignored", "--exact", "store_concurrency::cas_worker", "--test-threads=1"])
                .env(WORKER_DIR_ENV, &root)
                .env(WORKER_OUT_ENV, &out)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a worker process");
            (child, out)
        })
        .collect();
    let mut reports = Vec::new();
    for (i, (child, out)) in children.into_iter().enumerate() {
        let output = child.wait_with_output().expect("wait for the worker");
        assert!(
            output.status.success(),
            "worker {i} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        reports.extend(read_worker_report(&out));
    }
    assert_eq!(reports.len(), PROCS * PROC_TASKS, "every worker task reported");
    let final_value = rt.block_on(read_counter(&store));
    check_accounting("local, across processes", &reports, PROCS * PROC_TASKS * PROC_ROUNDS, final_value);
    eprintln!("local across {PROCS} processes x {PROC_TASKS} tasks x {PROC_ROUNDS} rounds: {:.1?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// One line per task: its conflicts, then the values it wrote.
fn read_worker_report(path: &Path) -> Vec<TaskReport> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("worker report {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let mut nums = line.split_whitespace().map(|n| n.parse::<u64>().expect("a number"));
            let conflicts = nums.next().expect("conflicts");
            TaskReport { conflicts, written: nums.collect() }
        })
        .collect()
}

/// The worker side of `local_store_cas_across_processes`, in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process, started by local_store_cas_across_processes"]
async fn cas_worker() {
    let (Ok(root), Ok(out)) = (std::env::var(WORKER_DIR_ENV), std::env::var(WORKER_OUT_ENV)) else {
        panic!("cas_worker runs only as a child of local_store_cas_across_processes");
    };
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(root).expect("open"));
    let handles: Vec<_> = (0..PROC_TASKS).map(|_| tokio::spawn(run_task(store.clone(), PROC_ROUNDS))).collect();
    let mut lines = String::new();
    for h in handles {
        let r = h.await.expect("task panicked");
        let written: Vec<String> = r.written.iter().map(u64::to_string).collect();
        lines.push_str(&format!("{} {}\n", r.conflicts, written.join(" ")));
    }
    std::fs::write(out, lines).expect("write the report");
}
