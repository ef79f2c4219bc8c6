//! The actors of a schedule: people and CI (push, tag, promote, rollback, cleanup), writers
//! s3dock must survive (a corrupted upload, a newer s3dock), the three functions fed from the
//! event queue, and agents reading what the pointers say.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use s3dock_core::ErrorKind;
use s3dock_core::docs::{self, ImageMetadata};
use s3dock_core::events::{EventError, Handlers, Notifier, Origin, Outcome as EventOutcome};
use s3dock_core::layout;
use s3dock_core::names::{AppName, EnvName, ImageRef, ImageTag, Version};
use s3dock_core::push::{PushFacts, PushPlan};
use s3dock_core::registry::{Change, EventMode, PromoteSource, Registry};
use s3dock_core::store::{BoxReader, GetOptions, ObjectStore, Precondition, reader_from_bytes};
use tokio::io::AsyncReadExt;

use super::sched::{Decision, GateKind, Sched, SimClock};
use super::store::{EventQueue, QueuedEvent, SimStore};

/// How an actor's operation ended, as the actor reports it to its user.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The operation changed the bucket (`seq` for pointers). `event_ok` is false when the
    /// command warned that its inline event handling failed.
    Wrote {
        seq: Option<u64>,
        event_ok: bool,
    },
    /// The command said nothing needed doing.
    NoOp {
        why: String,
    },
    Failed {
        kind: ErrorKind,
        message: String,
    },
    Crashed,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// The acting user: unique per actor, so documents name who wrote them.
    pub user: String,
    pub op: Op,
    pub outcome: Outcome,
}

/// What an actor was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Push {
        tag: ImageTag,
        content: u8,
        image_id: u8,
        interrupted: bool,
        force: bool,
    },
    Tag {
        tag: ImageTag,
        version: Version,
        force: bool,
    },
    Promote {
        source: Source,
        env: EnvName,
    },
    Rollback {
        env: EnvName,
    },
    Cleanup {
        keep: usize,
    },
    /// A push in the layered layout, composed from earlier archives where it can.
    LayeredPush {
        tag: ImageTag,
        top: u8,
        interrupted: bool,
    },
    /// Writes an archive and metadata whose checksum does not match (a buggy writer).
    CorruptPush {
        tag: ImageTag,
    },
    /// Writes image metadata of a newer schema (a newer s3dock during an upgrade).
    FuturePush {
        tag: ImageTag,
    },
    Read {
        env: EnvName,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Image(ImageTag),
    Version(Version),
}

/// Everything the actors of one schedule share.
pub struct World {
    pub sched: Arc<Sched>,
    pub store: Arc<SimStore>,
    pub clock: Arc<SimClock>,
    pub queue: Arc<EventQueue>,
    pub notifier: Arc<SimNotifier>,
    pub mode: EventMode,
    pub app: AppName,
    pub envs: Vec<EnvName>,
    /// Events that failed too often (the DLQ), and those that failed even after a redrive.
    pub dlq: Mutex<Vec<QueuedEvent>>,
    /// The event each function actor is handling (redelivered if it crashes).
    pub in_flight: Mutex<Vec<Option<QueuedEvent>>>,
    pub results: Mutex<Vec<(QueuedEvent, Result<EventOutcome, EventError>)>>,
}

/// Receives before an event goes to the DLQ.
pub const MAX_RECEIVES: u32 = 6;

/// Records what agents were sent, through the scheduler (SQS can fail too).
#[derive(Debug)]
pub struct SimNotifier {
    pub sched: Arc<Sched>,
    pub sent: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl Notifier for SimNotifier {
    fn check_queue(&self, _queue_url: &str) -> Result<(), String> {
        Ok(())
    }

    async fn send(&self, queue_url: &str, body: &str) -> Result<(), EventError> {
        match self.sched.gate(GateKind::Write, format!("sqs send {queue_url}")).await {
            Decision::FailBefore | Decision::Throttle => Err(EventError::transient("injected: SQS unavailable")),
            Decision::Crash { .. } => std::future::pending().await,
            Decision::Proceed | Decision::LoseResponse => {
                self.sent.lock().unwrap_or_else(|p| p.into_inner()).push((queue_url.to_owned(), body.to_owned()));
                Ok(())
            }
        }
    }
}

/// The archive bytes of content variant `n` (the same variant is the same bytes, so two pushes
/// can upload identical content under different image ids).
pub fn content(tag: &ImageTag, n: u8) -> Vec<u8> {
    format!("docker-save of {tag} content {n} ").repeat(3).into_bytes()
}

pub fn image_id(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

/// A body that fails half way, like `docker save` killed or Ctrl-C.
fn broken(bytes: Vec<u8>) -> BoxReader {
    let half = bytes.len() / 2;
    let head = reader_from_bytes(bytes[..half].to_vec());
    Box::pin(head.chain(Failing))
}

struct Failing;

impl tokio::io::AsyncRead for Failing {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("interrupted by the user")))
    }
}

impl World {
    pub fn registry(&self, user: &str) -> Registry {
        let reg = Registry::new(self.store.clone(), self.clock.clone(), user, self.mode);
        reg.with_notifier(self.notifier.clone())
    }

    fn failed(e: &s3dock_core::Error) -> Outcome {
        Outcome::Failed { kind: e.kind(), message: e.to_string() }
    }

    fn event_ok<T>(ev: &Option<Result<T, EventError>>) -> bool {
        !matches!(ev, Some(Err(_)))
    }

    /// Runs one client operation.
    pub async fn run(&self, user: String, op: Op) -> Report {
        let outcome = match &op {
            Op::Push { tag, content: c, image_id: id, interrupted, force } => {
                self.push(&user, tag, *c, *id, *interrupted, *force).await
            }
            Op::Tag { tag, version, force } => {
                let reg = self.registry(&user);
                match reg.tag(&ImageRef::new(self.app.clone(), tag.clone()), version, *force).await {
                    Ok(o) if o.change == Change::Unchanged => Outcome::NoOp { why: "unchanged".into() },
                    Ok(o) => Outcome::Wrote { seq: None, event_ok: Self::event_ok(&o.event) },
                    Err(e) => Self::failed(&e),
                }
            }
            Op::Promote { source, env } => {
                let reg = self.registry(&user);
                let src = match source {
                    Source::Image(t) => PromoteSource::Image(ImageRef::new(self.app.clone(), t.clone())),
                    Source::Version(v) => PromoteSource::Version(self.app.clone(), v.clone()),
                };
                match reg.promote(&src, env).await {
                    Ok(o) if o.change == Change::Unchanged => Outcome::NoOp { why: "unchanged".into() },
                    Ok(o) => Outcome::Wrote { seq: Some(o.seq), event_ok: Self::event_ok(&o.event) },
                    Err(e) => Self::failed(&e),
                }
            }
            Op::Rollback { env } => {
                let reg = self.registry(&user);
                match reg.rollback(&self.app, env).await {
                    Ok(o) if o.change == Change::Unchanged => Outcome::NoOp { why: "unchanged".into() },
                    Ok(o) => Outcome::Wrote { seq: Some(o.seq), event_ok: Self::event_ok(&o.event) },
                    Err(e) => Self::failed(&e),
                }
            }
            Op::Cleanup { keep } => {
                let reg = self.registry(&user);
                match reg.cleanup(Some(&self.app), *keep, chrono::Duration::seconds(60), false).await {
                    Ok(r) => {
                        let deleted: usize = r.apps.iter().map(|a| a.deleted.len()).sum();
                        if deleted == 0 {
                            Outcome::NoOp { why: "nothing to delete".into() }
                        } else {
                            Outcome::Wrote { seq: None, event_ok: true }
                        }
                    }
                    Err(e) => Self::failed(&e),
                }
            }
            Op::LayeredPush { tag, top, interrupted } => self.layered_push(&user, tag, *top, *interrupted).await,
            Op::CorruptPush { tag } => self.raw_push(&user, tag, false).await,
            Op::FuturePush { tag } => self.raw_push(&user, tag, true).await,
            Op::Read { env } => self.read(&user, env).await,
        };
        Report { user, op, outcome }
    }

    async fn layered_push(&self, user: &str, tag: &ImageTag, top: u8, interrupted: bool) -> Outcome {
        let reg = self.registry(user);
        let image = ImageRef::new(self.app.clone(), tag.clone());
        let (tar, image_id) = super::layered::archive(tag, top);
        let facts = PushFacts {
            image_id: image_id.clone(),
            git_hash: format!("{}{}", tag.hash7(), "0".repeat(33)),
            git_time: tag.time_str(),
            format: Some("docker-archive".into()),
            ..Default::default()
        };
        let plan = match reg.plan_push(&image, &image_id, true).await {
            Ok(PushPlan::Skip { .. }) => return Outcome::NoOp { why: "skipped: same image id".into() },
            Ok(PushPlan::Upload(plan)) => plan,
            Err(e) => return Self::failed(&e),
        };
        let open = {
            let tar = tar.clone();
            move || if interrupted { broken(tar.clone()) } else { reader_from_bytes(tar.clone()) }
        };
        let reopen = || -> futures::future::BoxFuture<'static, s3dock_core::Result<BoxReader>> {
            let r = open();
            Box::pin(async move { Ok(r) })
        };
        let gzip = s3dock_core::gzip::GzipOptions { level: 1, threads: 1, block_size: 64 * 1024 };
        match reg.push_layered(&image, &facts, open(), &reopen, plan, gzip, true).await {
            Ok(o) if o.skipped.is_some() => Outcome::NoOp { why: o.skipped.unwrap_or_default() },
            Ok(o) => Outcome::Wrote { seq: None, event_ok: World::event_ok(&o.event) },
            Err(e) => Self::failed(&e),
        }
    }

    async fn push(&self, user: &str, tag: &ImageTag, c: u8, id: u8, interrupted: bool, force: bool) -> Outcome {
        let reg = self.registry(user);
        let image = ImageRef::new(self.app.clone(), tag.clone());
        let image_id = image_id(id);
        let facts = PushFacts {
            image_id: image_id.clone(),
            git_hash: format!("{}{}", tag.hash7(), "0".repeat(33)),
            git_time: tag.time_str(),
            platform: Some("linux/amd64".into()),
            source: None,
            format: Some("docker-archive".into()),
            tar_bytes: None,
        };
        let plan = match reg.plan_push(&image, &image_id, force).await {
            Ok(PushPlan::Skip { .. }) => return Outcome::NoOp { why: "skipped: same image id".into() },
            Ok(PushPlan::Upload(plan)) => plan,
            Err(e) => return Self::failed(&e),
        };
        let bytes = content(tag, c);
        let body = if interrupted { broken(bytes) } else { reader_from_bytes(bytes) };
        match reg.push_archive(&image, &facts, body, plan).await {
            Ok(o) if o.skipped.is_some() => Outcome::NoOp { why: o.skipped.unwrap_or_default() },
            Ok(o) => Outcome::Wrote { seq: None, event_ok: World::event_ok(&o.event) },
            Err(e) => Self::failed(&e),
        }
    }

    /// Writes an archive and its metadata straight to the bucket, like a writer that is not
    /// this s3dock: a buggy one (`future = false`: the checksum does not match) or a newer one
    /// (`future = true`: a valid upload whose documents carry a schema this build does not know).
    async fn raw_push(&self, user: &str, tag: &ImageTag, future: bool) -> Outcome {
        let image = ImageRef::new(self.app.clone(), tag.clone());
        let bytes = content(tag, 9);
        let d = s3dock_core::digest::digest_reader(&bytes[..]).expect("hashing bytes in memory");
        let meta = ImageMetadata {
            schema_version: Some(if future { 99 } else { docs::SCHEMA_VERSION }),
            checksum: if future { d.md5.clone() } else { "0".repeat(32) },
            size: d.size,
            created_at: self.clock.step_time(),
            git_hash: format!("{}{}", tag.hash7(), "0".repeat(33)),
            git_time: tag.time_str(),
            image_tag: image.to_string(),
            app_name: self.app.to_string(),
            sha256: None,
            image_id: Some(image_id(9)),
            platform: None,
            pushed_by: Some(user.to_owned()),
            source: None,
            format: None,
            ..Default::default()
        };
        let archive = layout::image_archive(&self.app, tag);
        let meta_key = layout::image_metadata(&self.app, tag);
        if let Err(e) = self.store.put_bytes(&archive, Bytes::from(bytes), Precondition::IfAbsent).await {
            return Outcome::Failed { kind: ErrorKind::Unavailable, message: e.to_string() };
        }
        let mut json: serde_json::Value = serde_json::to_value(&meta).expect("metadata serializes");
        json["schema_version"] = serde_json::json!(meta.schema_version);
        let body = Bytes::from(serde_json::to_vec_pretty(&json).expect("json serializes"));
        match self.store.put_bytes(&meta_key, body, Precondition::IfAbsent).await {
            Ok(_) => Outcome::Wrote { seq: None, event_ok: true },
            Err(e) => Outcome::Failed { kind: ErrorKind::Unavailable, message: e.to_string() },
        }
    }

    /// An agent's view: resolve the environment, then read the archive the metadata names and
    /// check it against the metadata, as a pull would before loading it.
    async fn read(&self, user: &str, env: &EnvName) -> Outcome {
        let reg = self.registry(user);
        let resolved = match reg.resolve(&self.app, env).await {
            Ok(r) => r,
            Err(e) => return Self::failed(&e),
        };
        let rec = resolved.record;
        let obj = match self.store.get(&rec.archive_key, GetOptions::default()).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => {
                return Outcome::Failed {
                    kind: ErrorKind::NotFound,
                    message: format!("{} deleted meanwhile", rec.archive_key),
                };
            }
            Err(e) => return Outcome::Failed { kind: ErrorKind::Unavailable, message: e.to_string() },
        };
        let bytes = s3dock_core::store::read_to_vec(obj.body).await.unwrap_or_default();
        let d = s3dock_core::digest::digest_reader(&bytes[..]).expect("hashing bytes in memory");
        if d.md5 != rec.metadata.checksum || d.size != rec.metadata.size {
            return Outcome::Failed {
                kind: ErrorKind::Integrity,
                message: format!(
                    "{} has md5 {} size {}, its metadata says md5 {} size {}",
                    rec.archive_key, d.md5, d.size, rec.metadata.checksum, rec.metadata.size
                ),
            };
        }
        Outcome::NoOp { why: format!("read {}", rec.image) }
    }

    /// A function container: takes events from the queue until told to stop.
    pub async fn function(&self, slot: usize) -> Report {
        let handlers = Handlers::new(self.store.clone(), self.clock.clone(), Origin::Lambda, "fn")
            .with_notifier(self.notifier.clone());
        loop {
            self.sched.gate(GateKind::Queue, "receive".into()).await;
            let dup = self.sched.chance(0.15);
            let Some(mut ev) = self.queue.take(&self.sched, self.sched.step(), dup) else { continue };
            self.in_flight.lock().unwrap_or_else(|p| p.into_inner())[slot] = Some(ev.clone());
            self.sched.note(format!(
                "fn{slot} handles event #{} {} etag {} version {}{}",
                ev.id,
                ev.event.raw_key,
                ev.event.etag.as_deref().unwrap_or("-"),
                ev.event.version_id.as_deref().unwrap_or("-"),
                if dup { " (a copy stays queued)" } else { "" }
            ));
            let result = handlers.handle(&ev.event).await;
            self.sched.note(format!("fn{slot} event #{} -> {result:?}", ev.id));
            self.in_flight.lock().unwrap_or_else(|p| p.into_inner())[slot] = None;
            if let Err(e) = &result
                && e.is_retryable()
            {
                ev.not_before = self.sched.step() + 3;
                self.redeliver(ev.clone());
            }
            self.results.lock().unwrap_or_else(|p| p.into_inner()).push((ev, result));
        }
    }

    /// Puts an event back (visibility timeout), or in the DLQ after too many receives.
    pub fn redeliver(&self, mut ev: QueuedEvent) {
        ev.receives += 1;
        if ev.receives >= MAX_RECEIVES {
            self.dlq.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
        } else {
            self.queue.requeue(ev);
        }
    }
}

impl SimClock {
    pub fn step_time(&self) -> chrono::DateTime<chrono::Utc> {
        s3dock_core::clock::Clock::now(self)
    }
}
