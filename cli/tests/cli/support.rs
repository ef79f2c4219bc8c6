//! Running the real binary in a sandbox: HOME and the XDG directories point into a temp dir
//! and the environment is cleared, so the developer's own config, store, S3DOCK_* and AWS_*
//! variables are never read or touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use s3dock_core::names::ImageRef;
use s3dock_core::store::LocalStore;
use serde_json::Value;
use tempfile::TempDir;

pub const A1: &str = "myapp:20250720-1045-def5678";
pub const A2: &str = "myapp:20250721-2118-f7a5a27";

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Asserts the exit code, showing everything the run printed when it differs.
    #[track_caller]
    pub fn code(self, want: i32) -> Self {
        assert_eq!(self.code, want, "s3dock {:?}\n--- stdout\n{}--- stderr\n{}", self.args, self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        self.code(0)
    }

    /// stdout as the one JSON document `--json` promises.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("s3dock {:?}: stdout is not one JSON document ({e}):\n{}", self.args, self.stdout)
        })
    }

    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(self.stderr.contains(needle), "s3dock {:?}: stderr lacks {needle:?}:\n{}", self.args, self.stderr);
        self
    }

    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(self.stdout.contains(needle), "s3dock {:?}: stdout lacks {needle:?}:\n{}", self.args, self.stdout);
        self
    }
}

/// A temp HOME with XDG directories, and a local store directory beside them.
pub struct Sandbox {
    pub dir: TempDir,
    pub store: PathBuf,
    /// Extra environment for every run (AWS settings for S3 tests).
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        for d in ["home", "config", "data"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("sandbox dirs");
        }
        let store = dir.path().join("store");
        Sandbox { dir, store, env: Vec::new() }
    }

    pub fn config_home(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn data_home(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the binary looks for its config file by default.
    pub fn config_file(&self) -> PathBuf {
        self.config_home().join("s3dock").join("config.toml")
    }

    pub fn write_config(&self, text: &str) {
        let p = self.config_file();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_s3dock"));
        c.env_clear()
            .env("HOME", self.dir.path().join("home"))
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("XDG_DATA_HOME", self.data_home())
            .env("USER", "tester")
            // Never ask an instance metadata service for credentials or a region.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .current_dir(self.dir.path());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs the binary with `args` exactly as given.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.command();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let start = Instant::now();
        let out = c.output().expect("the s3dock binary runs");
        Run {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
            elapsed: start.elapsed(),
        }
    }

    /// Runs against the sandbox's local store (`--store DIR` first).
    pub fn s3dock(&self, args: &[&str]) -> Run {
        let store = self.store.to_str().expect("utf-8 temp path").to_owned();
        let mut all = vec!["--store", store.as_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Seeds images into the sandbox's local store as completed pushes.
    pub fn seed(&self, images: &[&str]) {
        seed_local(&self.store, images);
    }
}

pub fn seed_local(dir: &Path, images: &[&str]) {
    let store = LocalStore::open(dir).expect("open the local store");
    rt().block_on(async {
        for r in images {
            let image = ImageRef::parse(r).expect("a valid test image");
            let at = Utc.with_ymd_and_hms(2025, 7, 22, 10, 0, 0).unwrap();
            s3dock_testkit::seed_image(&store, &image, format!("archive of {r}").as_bytes(), at)
                .await
                .expect("seed an image");
        }
    });
}

/// Writes raw bytes at a key of a local store (hostile fixtures).
pub fn put_raw(dir: &Path, key: &str, body: &str) {
    let store = LocalStore::open(dir).expect("open the local store");
    rt().block_on(s3dock_testkit::put_raw(&store, key, body.to_owned())).expect("write a fixture");
}

/// Every object of a local store (key -> bytes), the store's own `.s3dock/` folder excluded.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".s3dock" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The keys of a snapshot under a prefix.
pub fn keys_under(snap: &BTreeMap<String, Vec<u8>>, prefix: &str) -> Vec<String> {
    snap.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
}
