//! The deployer's local state: one small JSON file per (app, env), rewritten atomically at
//! every phase, so a deployer killed at any point finds out on restart what it was doing.
//!
//! Layout under the state directory:
//!
//! ```text
//! {state_dir}/{app}/{env}.json            this module's DeployState
//! {state_dir}/{app}/{env}.lock            held (flock) while a deployer works on the service
//! {state_dir}/{app}/{env}.upstream.json   the command and none drivers' record of the upstream
//! ```
//!
//! A spec with an `instance` uses `{env}@{instance}` in place of `{env}`.
//!
//! App and environment names are validated names (no `/`, no `..`), so these paths stay inside
//! the state directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use strum::{Display, EnumIter, EnumString, IntoStaticStr};

use chrono::{DateTime, Utc};
use s3dock_core::docs::DeployOutcome;
use s3dock_core::names::{AppName, EnvName, ImageRef};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::spec::{Color, DeploySpec};

/// The version of the state file this build writes; newer files are refused, not guessed at.
pub const STATE_SCHEMA_VERSION: u32 = 1;

/// Where a deploy stands. The state file is written *before* each phase's first action, so
/// after a crash the phase says what may have been done, never less.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr, Display, EnumString, EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Phase {
    /// No deploy in flight; traffic is on `old` (or nowhere, for a service never deployed).
    Idle,
    /// Removing a leftover, then creating and starting `new`. Traffic is on `old`.
    Starting,
    /// `new` runs and is being health checked. Traffic is on `old`.
    HealthCheck,
    /// The traffic driver is switching to `new`: traffic is on `old` or `new`, not known which.
    Switching,
    /// The switch returned: traffic is on `new`, being verified.
    Verifying,
    /// Going back to `old` after a failed switch or verification: traffic is on either.
    RollingBack,
    /// Traffic is on `new`; `old` gets its grace period, then is stopped and removed.
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One color's container as the state file knows it.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub color: Color,
    /// Unknown between the decision to create it and the engine's answer.
    #[serde(default)]
    pub container_id: Option<String>,
    /// `app:tag`.
    #[serde(with = "image_ref_text")]
    pub image: ImageRef,
    /// The engine's id of the image the container runs (`sha256:...`): what tells a re-pushed
    /// tag apart from the content already running under the same name. Absent in state files
    /// of older versions.
    #[serde(default)]
    pub image_id: Option<String>,
}

impl Slot {
    pub fn new(color: Color, container_id: Option<String>, image: ImageRef) -> Self {
        Slot { color, container_id, image, image_id: None }
    }
}

/// An [`ImageRef`] as its `app:tag` text.
mod image_ref_text {
    use s3dock_core::names::ImageRef;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(image: &ImageRef, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(image)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ImageRef, D::Error> {
        let text = String::deserialize(d)?;
        ImageRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The state file of one (app, env).
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployState {
    pub schema_version: u32,
    pub app: AppName,
    pub env: EnvName,
    pub phase: Phase,
    /// When idle: the container traffic is on. During a deploy: the one that served before it.
    #[serde(default)]
    pub old: Option<Slot>,
    /// During a deploy: the container being brought up. `None` when idle.
    #[serde(default)]
    pub new: Option<Slot>,
    /// The deploy in flight (or the last one): its id keys its audit record.
    #[serde(default)]
    pub deploy_id: Option<String>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub pointer_seq: Option<u64>,
    /// When traffic last moved, for the remaining drain grace after a restart.
    #[serde(default)]
    pub switched_at: Option<DateTime<Utc>>,
    /// Since when the container serving now has had the traffic (unchanged by deploys that
    /// failed), for the agent's registration.
    #[serde(default)]
    pub serving_since: Option<DateTime<Utc>>,
    /// The outcome of the last deploy, for the agent's state report.
    #[serde(default)]
    pub last_deploy: Option<DeployOutcome>,
    pub updated_at: DateTime<Utc>,
}

impl DeployState {
    pub fn empty(app: &AppName, env: &EnvName, now: DateTime<Utc>) -> Self {
        DeployState {
            schema_version: STATE_SCHEMA_VERSION,
            app: app.clone(),
            env: env.clone(),
            phase: Phase::Idle,
            old: None,
            new: None,
            deploy_id: None,
            started_at: None,
            pointer_seq: None,
            switched_at: None,
            serving_since: None,
            last_deploy: None,
            updated_at: now,
        }
    }

    /// The slot of `color`, among `old` and `new`.
    pub fn slot(&self, color: Color) -> Option<&Slot> {
        [self.new.as_ref(), self.old.as_ref()].into_iter().flatten().find(|s| s.color == color)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}; check that the state directory exists and is writable by this user")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: not a state file s3dock can read ({detail}); move it away, then run the deploy again: s3dock re-learns the service from its containers and the traffic driver"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{app}/{env}: another deploy of this service is running (it holds {path}); wait for it to finish, or stop the process that holds it"
    )]
    Busy { app: String, env: String, path: PathBuf },
}

impl StateError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StateError::Busy { .. } => true,
            StateError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                )
            }
            StateError::Corrupt { .. } => false,
        }
    }
}

/// The files of one (app, env) under a state directory.
#[derive(Debug, Clone)]
pub struct StateFiles {
    dir: PathBuf,
    env: String,
}

impl StateFiles {
    pub fn new(state_dir: &Path, app: &AppName, env: &EnvName) -> Self {
        StateFiles { dir: state_dir.join(app.as_str()), env: env.as_str().to_owned() }
    }

    /// The files of a spec's service: `{env}@{instance}.*` when it names an instance (`@` is
    /// never in an environment name, so no two services share a file).
    pub fn for_spec(state_dir: &Path, spec: &DeploySpec) -> Self {
        let mut files = StateFiles::new(state_dir, &spec.app, &spec.env);
        if let Some(i) = &spec.instance {
            files.env = format!("{}@{i}", spec.env);
        }
        files
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.env))
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.env))
    }

    pub fn upstream(&self) -> PathBuf {
        self.dir.join(format!("{}.upstream.json", self.env))
    }

    /// The state, or `None` when the service was never deployed from this directory.
    pub fn load(&self) -> Result<Option<DeployState>, StateError> {
        let path = self.state();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let corrupt = |detail: String| StateError::Corrupt { path: path.clone(), detail };
        let state: DeployState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.schema_version > STATE_SCHEMA_VERSION {
            return Err(corrupt(format!(
                "schema version {} is newer than this s3dock's {STATE_SCHEMA_VERSION}; upgrade s3dock",
                state.schema_version
            )));
        }
        Ok(Some(state))
    }

    pub fn save(&self, state: &DeployState) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(state).expect("a DeployState always serializes");
        bytes.push(b'\n');
        let path = self.state();
        write_atomic(&path, &bytes).map_err(|source| StateError::Io { path, source })
    }

    /// Takes the service's lock, waiting up to `wait` for another deployer to let go. The lock
    /// is an `flock` on the lock file: the kernel drops it when its holder exits, however it
    /// exits, so a crashed deployer never leaves it taken.
    pub async fn lock_service(&self, wait: Duration) -> Result<ServiceLock, StateError> {
        let path = self.lock();
        match lock_file(&path, wait).await {
            Ok(Some(file)) => Ok(ServiceLock { _file: file }),
            Ok(None) => Err(StateError::Busy {
                app: self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                env: self.env.clone(),
                path,
            }),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

/// Held while a deployer works on a service; dropping it releases the lock.
#[derive(Debug)]
pub struct ServiceLock {
    _file: File,
}

/// Takes an exclusive `flock` on `path` (created if needed), polling for up to `wait`;
/// `None` when someone else still holds it then. The lock lives as long as the returned file:
/// the kernel drops it when the file is closed, including when its process dies. Two opens in
/// the same process exclude each other too (flock locks belong to the open file).
///
/// A lock file another user created (root running `s3dock deploy` by hand on an agent's host)
/// may not be writable by this one: an `flock` needs no write access, so it is opened
/// read-only then. Files root creates are given to the owner of their directory anyway
/// ([`follow_owner`]).
pub async fn lock_file(path: &Path, wait: Duration) -> io::Result<Option<File>> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_following_owner(dir)?;
    }
    let file = match OpenOptions::new().create(true).truncate(false).write(true).open(path) {
        Ok(file) => {
            follow_owner(path);
            file
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && path.exists() => File::open(path)?,
        Err(e) => return Err(e),
    };
    // Real time: the lock is an OS resource its holder releases in real time (even when the
    // caller's clock is a paused test clock).
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Gives `path` to the owner of its directory when they differ. Only root can give a file
/// away, and only root creates files in a directory it does not own here: a hand-run
/// `sudo s3dock deploy` on a host whose agent runs as `s3dock`. Without this, the agent could
/// no longer open the lock or replace the state file root left behind. For anyone else the
/// `chown` is refused, harmlessly.
pub fn follow_owner(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }) else { return };
    let (Ok(owner), Ok(meta)) = (std::fs::metadata(dir), std::fs::symlink_metadata(path)) else { return };
    if owner.uid() != meta.uid() || owner.gid() != meta.gid() {
        let _ = std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()));
    }
}

/// `create_dir_all`, each directory it creates given to its parent's owner.
fn create_dir_following_owner(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_following_owner(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            follow_owner(dir);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `bytes` so that a reader (or a restart after a crash) sees the old
/// content or the new, never a mix: write a temporary file beside it, fsync it, rename it over
/// `path`, then fsync the directory so the rename itself survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_dir_following_owner(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.s3dock-tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        follow_owner(path);
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` durably (the directory is fsynced); an absent file is not an error.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// The state file's phase words (serde) and `as_str`/`Display`/`FromStr` (strum) agree for
    /// every phase.
    #[test]
    fn serde_and_strum_phase_words_agree() {
        use strum::IntoEnumIterator;
        for p in Phase::iter() {
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::Value::String(p.as_str().to_owned()), "{p:?}");
            assert_eq!(p.to_string(), p.as_str());
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
        }
        assert_eq!(Phase::HealthCheck.as_str(), "health-check");
        assert_eq!(Phase::RollingBack.as_str(), "rolling-back");
    }

    fn names() -> (AppName, EnvName) {
        (AppName::parse("web").unwrap(), EnvName::parse("production").unwrap())
    }

    #[test]
    fn state_round_trips_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let (app, env) = names();
        let files = StateFiles::new(dir.path(), &app, &env);
        assert!(files.load().unwrap().is_none());
        let mut state = DeployState::empty(&app, &env, Utc::now());
        state.phase = Phase::HealthCheck;
        state.new =
            Some(Slot::new(Color::Green, Some("abc".into()), ImageRef::parse("web:20250721-2118-f7a5a27").unwrap()));
        files.save(&state).unwrap();
        assert_eq!(files.load().unwrap().unwrap(), state);
        assert_eq!(state.slot(Color::Green).unwrap().container_id.as_deref(), Some("abc"));
        assert!(state.slot(Color::Blue).is_none());
        let text = std::fs::read_to_string(files.state()).unwrap();
        assert!(text.contains("\"phase\": \"health-check\""), "{text}");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(files.state().parent().unwrap()).unwrap().count(), 1);

        std::fs::write(files.state(), b"{\"schema_version\": 1, \"phase\": \"exploding\"}").unwrap();
        let e = files.load().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }) && e.to_string().contains("move it away"), "{e}");
        let mut future = serde_json::to_value(&state).unwrap();
        future["schema_version"] = 9.into();
        std::fs::write(files.state(), serde_json::to_vec(&future).unwrap()).unwrap();
        assert!(files.load().unwrap_err().to_string().contains("upgrade s3dock"));
    }

    #[tokio::test]
    async fn one_deployer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (app, env) = names();
        let files = StateFiles::new(dir.path(), &app, &env);
        let held = files.lock_service(Duration::ZERO).await.unwrap();
        let started = Instant::now();
        let e = files.lock_service(Duration::from_millis(300)).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(e.is_retryable() && e.to_string().contains("another deploy"), "{e}");
        drop(held);
        // Not `Duration::ZERO`: a child another test is forking at this instant shares the lock
        // file's description until it execs (the fd is close-on-exec), so the release can lag.
        files.lock_service(Duration::from_secs(5)).await.unwrap();
    }

    #[test]
    fn atomic_writes_replace_and_removals_tolerate_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.conf");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        remove_durably(&path).unwrap();
        remove_durably(&path).unwrap();
        assert!(!path.exists());
    }

    /// `sudo s3dock deploy` on a host whose agent runs as another user: what root creates in the
    /// state directory belongs to the directory's owner, and a lock file the agent cannot write
    /// is still a lock it can take.
    #[tokio::test]
    async fn files_root_leaves_behind_stay_usable_by_the_directorys_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let (app, env) = names();
        let files = StateFiles::new(dir.path(), &app, &env);
        let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        if as_root {
            // The state directory belongs to the agent's user (any other uid will do).
            std::os::unix::fs::chown(dir.path(), Some(4242), Some(4242)).unwrap();
        }
        let _held = files.lock_service(Duration::ZERO).await.unwrap();
        files.save(&DeployState::empty(&app, &env, Utc::now())).unwrap();
        for path in [files.state(), files.lock(), files.state().parent().unwrap().to_path_buf()] {
            let owner = std::fs::metadata(dir.path()).unwrap().uid();
            assert_eq!(std::fs::metadata(&path).unwrap().uid(), owner, "{}", path.display());
        }
        drop(_held);
        // A lock file nobody may write: flock works on a read-only descriptor.
        std::fs::set_permissions(files.lock(), std::fs::Permissions::from_mode(0o444)).unwrap();
        let other = StateFiles::new(dir.path(), &app, &env);
        let held = other.lock_service(Duration::ZERO).await.unwrap();
        assert!(files.lock_service(Duration::ZERO).await.is_err(), "still exclusive");
        drop(held);
    }
}
