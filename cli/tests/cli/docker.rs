//! build, push and pull through the binary against the real Docker engine, to a local store and
//! to LocalStack; interrupted pushes; bad input.
//!
//! Images are built `FROM scratch` with the host's static busybox (no registry is reachable).
//! Without a Docker engine these tests skip with a message, unless `CI` is set.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Whether the engine answers; panics in CI when it does not.
fn docker_available() -> bool {
    s3dock_testkit::docker_available()
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

/// Removes the images of a repository when dropped.
struct Images(String);

impl Drop for Images {
    fn drop(&mut self) {
        let out = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}", &self.0]);
        for r in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = docker(&["rmi", "-f", r]);
        }
    }
}

fn unique_app() -> String {
    s3dock_testkit::unique("cli-test")
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", "2025-07-21T23:18:59+02:00")
        .env("GIT_COMMITTER_DATE", "2025-07-21T23:18:59+02:00")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A committed app in `dir`: busybox httpd serving a page with `marker`, plus `blob_mb` MiB of
/// incompressible bytes when asked (to make a push take a while).
fn committed_app(dir: &Path, app: &str, marker: &str, blob_mb: usize) {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let mut dockerfile =
        format!("FROM scratch\nLABEL io.s3dock.test.repository=\"{app}\"\nCOPY busybox /bin/busybox\nCOPY www /www\n");
    if blob_mb > 0 {
        std::fs::write(dir.join("blob"), s3dock_testkit::pseudo_random(blob_mb << 20, 1)).unwrap();
        dockerfile.push_str("COPY blob /blob\n");
    }
    dockerfile.push_str("CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n");
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("/bin/busybox (apt-get install busybox-static)");
    std::fs::write(dir.join("www/index.html"), format!("<h1>{marker}</h1>\n")).unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "app"]);
}

#[test]
fn build_push_pull_through_the_binary() {
    if !docker_available() {
        return;
    }
    let sb = Sandbox::new();
    let app = unique_app();
    let _images = Images(app.clone());
    let src = sb.dir.path().join("src");
    committed_app(&src, &app, "through the binary", 0);
    let ctx = src.to_str().unwrap();

    // Dirty tracked files are refused; untracked ones are not.
    std::fs::write(src.join("www/index.html"), "edited").unwrap();
    sb.s3dock(&["build", &app, "--context", ctx]).code(4).stderr_has("commit or stash");
    git(&src, &["checkout", "--", "www/index.html"]);
    std::fs::write(src.join("notes.txt"), "untracked").unwrap();
    let built = sb.s3dock(&["build", &app, "--context", ctx]).ok();
    let image = built.stdout.trim().to_owned();
    assert!(image.starts_with(&format!("{app}:20250721-2118-")), "{image}");
    assert_eq!(built.stdout, format!("{image}\n"), "build prints only the reference");

    let pushed = sb.s3dock(&["push", &image, "--json"]).ok();
    let j = pushed.json();
    assert!(j["skipped"].is_null(), "{j}");
    assert_eq!(
        j["size"].as_u64().unwrap(),
        std::fs::metadata(sb.store.join(j["archive_key"].as_str().unwrap())).unwrap().len()
    );
    sb.s3dock(&["push", &image]).ok().stdout_has("up to date");

    sb.s3dock(&["tag", &image, "v1.0.0"]).ok();
    sb.s3dock(&["promote", &app, "v1.0.0", "production"]).ok();
    let id = String::from_utf8(docker(&["image", "inspect", "--format", "{{.Id}}", &image]).stdout).unwrap();
    sb.s3dock(&["pull", &app, "production"]).ok().stdout_has("already loaded");
    assert!(docker(&["rmi", "-f", &image]).status.success());
    let pulled = sb.s3dock(&["pull", &app, "production", "--json"]).ok();
    assert!(pulled.json()["skipped"].is_null());
    let id_after = String::from_utf8(docker(&["image", "inspect", "--format", "{{.Id}}", &image]).stdout).unwrap();
    assert_eq!(id_after, id, "the round trip keeps the image id");
    sb.s3dock(&["pull", &app, "v1.0.0"]).ok().stdout_has("already loaded");
}

#[test]
fn bad_push_and_pull_input_explains_itself() {
    if !docker_available() {
        return;
    }
    let sb = Sandbox::new();
    let app = unique_app();
    sb.s3dock(&["push", &format!("{app}:latest")]).code(2).stderr_has("20250721-2118-f7a5a27");
    sb.s3dock(&["push", &format!("{app}:20250721-2118-f7a5a27")]).code(3).stderr_has("s3dock build");
    let r = sb.run_with(
        &["--store", sb.store.to_str().unwrap(), "push", &format!("{app}:20250721-2118-f7a5a27")],
        &[("DOCKER_HOST", "tcp://127.0.0.1:1")],
    );
    let r = r.code(6).stderr_has("DOCKER_HOST");
    assert!(r.elapsed < Duration::from_secs(20), "{:?}", r.elapsed);
    sb.s3dock(&["pull", &app, "production"]).code(3).stderr_has("s3dock promote");
    sb.s3dock(&["build", &app, "--context", "/nonexistent-dir"]).code(2);
    let plain = sb.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("Dockerfile"), "FROM scratch\n").unwrap();
    sb.s3dock(&["build", &app, "--context", plain.to_str().unwrap()]).code(4).stderr_has("git");
    assert!(snapshot(&sb.store).is_empty(), "nothing was written");
}

/// Starts `s3dock push`, waits until the upload is under way (`started` says so), then sends
/// `signal` and returns the exit status (`None` if killed by the signal).
fn interrupt_push(sb: &Sandbox, args: &[&str], signal: &str, started: impl Fn() -> bool) -> Option<i32> {
    let mut cmd = sb.command();
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn s3dock push");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started() {
        assert!(Instant::now() < deadline, "the upload never started");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("push finished before it could be interrupted: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    // Bounded: an interrupted push must end by itself, promptly.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("s3dock push did not end within 30 s of SIGINT/SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("interrupted push said: {}", String::from_utf8_lossy(&out.stderr));
    out.status.code()
}

#[test]
fn an_interrupted_push_to_a_local_store_commits_nothing() {
    if !docker_available() {
        return;
    }
    let sb = Sandbox::new();
    let app = unique_app();
    let _images = Images(app.clone());
    let src = sb.dir.path().join("src");
    committed_app(&src, &app, "big", 160);
    let image = sb.s3dock(&["build", &app, "--context", src.to_str().unwrap()]).ok().stdout.trim().to_owned();
    let store = sb.store.to_str().unwrap().to_owned();
    let tmp = sb.store.join(".s3dock/tmp");
    let spooling = || std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some());
    for signal in ["INT", "KILL"] {
        let code = interrupt_push(&sb, &["--store", &store, "push", &image], signal, spooling);
        match signal {
            "INT" => assert_eq!(code, Some(130)),
            _ => assert_eq!(code, None),
        }
        assert!(keys_under(&snapshot(&sb.store), "images/").is_empty(), "{signal}: nothing under images/");
        if signal == "INT" {
            assert!(!spooling(), "an interrupted push removes its temp file");
        }
    }
    // A later push completes normally.
    sb.s3dock(&["push", &image]).ok().stdout_has("pushed");
}

#[test]
fn an_interrupted_push_to_localstack_leaves_no_upload_and_no_metadata() {
    if !docker_available() {
        return;
    }
    let Some(endpoint) = s3dock_testkit::s3::s3_endpoint() else { return };
    if endpoint == "aws" {
        eprintln!("SKIPPED: the interrupted-push test creates buckets, which it does only on an emulator");
        return;
    }
    let rt = rt();
    let bucket = s3dock_testkit::unique("s3dock-cli-int");
    rt.block_on(s3dock_testkit::s3::create_test_bucket(&endpoint, &bucket));
    let mut sb = Sandbox::new();
    sb.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ];
    sb.write_config(&format!(
        "[profiles.default]\nstore = \"s3://{bucket}/team\"\nendpoint = \"{endpoint}\"\npath_style = true\nregion = \"us-east-1\"\n"
    ));
    let app = unique_app();
    let _images = Images(app.clone());
    let src = sb.dir.path().join("src");
    committed_app(&src, &app, "big", 160);
    let image = sb.run(&["build", &app, "--context", src.to_str().unwrap()]).ok().stdout.trim().to_owned();

    let client = {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    };
    let uploads =
        || rt.block_on(client.list_multipart_uploads().bucket(&bucket).send()).map(|o| o.uploads().len()).unwrap_or(0);
    let keys = || {
        rt.block_on(client.list_objects_v2().bucket(&bucket).send())
            .map(|o| o.contents().iter().filter_map(|c| c.key().map(str::to_owned)).collect::<Vec<_>>())
            .unwrap_or_default()
    };

    let code = interrupt_push(&sb, &["push", &image], "INT", || uploads() > 0);
    assert_eq!(code, Some(130));
    assert_eq!(uploads(), 0, "Ctrl-C aborts the multipart upload");
    assert!(keys().iter().all(|k| !k.contains("/images/")), "{:?}", keys());

    let code = interrupt_push(&sb, &["push", &image], "KILL", || uploads() > 0);
    assert_eq!(code, None);
    assert!(
        keys().iter().all(|k| !k.contains("/images/")),
        "a killed push leaves no metadata and no visible archive: {:?}",
        keys()
    );

    sb.run(&["push", &image]).ok().stdout_has("pushed");
    assert!(keys().iter().any(|k| k.ends_with(".json") && k.contains("/images/")));
}

/// A 1 MiB tmpfs mounted for the test, unmounted when dropped.
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    fn mount(at: &Path) -> Option<TinyDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", at.to_str().unwrap()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the disk-full case is not checked");
        }
        ok.then(|| TinyDisk(at.to_path_buf()))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_a_local_store_fails_cleanly() {
    if !docker_available() {
        return;
    }
    let sb = Sandbox::new();
    let Some(disk) = TinyDisk::mount(&sb.dir.path().join("tiny")) else { return };
    let app = unique_app();
    let _images = Images(app.clone());
    let src = sb.dir.path().join("src");
    committed_app(&src, &app, "too big for the disk", 0);
    let image = sb.s3dock(&["build", &app, "--context", src.to_str().unwrap()]).ok().stdout.trim().to_owned();
    let store = disk.0.join("store");
    let r = sb.run(&["--store", store.to_str().unwrap(), "push", &image]);
    let r = r.stderr_has("disk is full");
    assert_ne!(r.code, 0);
    assert!(keys_under(&snapshot(&store), "images/").is_empty(), "nothing visible under images/");
}
