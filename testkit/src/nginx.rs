//! Fixtures for the integration tests of the engine and of the host agent: a real nginx run as
//! a child process on loopback, a minimal HTTP/1.0 client, and a paced load loop that counts
//! failed requests during a traffic switch. Not used by production code.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use s3dock_engine::deploy::ColorPorts;

/// Debian's nginx.
pub const NGINX: &str = "/usr/sbin/nginx";

/// Whether nginx is installed; without it the caller skips, except under CI where a missing
/// nginx is a failure.
pub fn nginx_available() -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    crate::skip_unless_ci::<()>(&format!("nginx at {NGINX}"), "apt-get install nginx").is_some()
}

/// A port nothing listens on right now, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1").local_addr().expect("a local address").port()
}

/// Two different free ports for the two colors (both held at once, so they differ).
pub fn two_free_ports() -> ColorPorts {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    ColorPorts { blue: a.local_addr().expect("address").port(), green: b.local_addr().expect("address").port() }
}

/// nginx as a child process: `daemon off`, every path (pid, logs, temp) under `dir`,
/// proxying `127.0.0.1:{port}` to the upstream file s3dock's nginx driver writes. Stopped on
/// drop; the caller owns `dir`.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    pub upstream_name: String,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx with a hand-written upstream naming `initial_port` (nothing need listen
    /// there: the state before a service's first deploy). Waits, bounded, until it listens.
    pub async fn start(dir: PathBuf, upstream_name: &str, initial_port: u16) -> Nginx {
        std::fs::create_dir_all(dir.join("conf.d")).expect("nginx conf.d");
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx tmp");
        // Workers run as an unprivileged user when the tests run as root.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod the nginx dir");
        std::fs::write(
            dir.join("conf.d").join("upstream.conf"),
            format!("upstream {upstream_name} {{\n    server 127.0.0.1:{initial_port};\n}}\n"),
        )
        .expect("write the initial upstream");
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/client;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/conf.d/*.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream_name};
            proxy_connect_timeout 2s;
            proxy_read_timeout 5s;
        }}
    }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        let mut nginx = Nginx { dir, port, upstream_name: upstream_name.to_owned(), child: None };
        let child = Command::new(NGINX)
            .args(nginx.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        nginx.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return nginx;
            }
            if let Some(status) = nginx.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("nginx exited with {status}: {}", nginx.error_log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen on 127.0.0.1:{port}: {}", nginx.error_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `-p PREFIX -c CONF -e LOG`: what every nginx command for this instance needs.
    pub fn args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            format!("{}/", self.dir.display()),
            "-c".into(),
            self.dir.join("nginx.conf").display().to_string(),
            "-e".into(),
            self.dir.join("error.log").display().to_string(),
        ]
    }

    /// The file the driver owns (the server block `include`s it).
    pub fn upstream_file(&self) -> PathBuf {
        self.dir.join("conf.d").join("upstream.conf")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The driver's `test_command` for this instance.
    pub fn test_command(&self) -> Vec<String> {
        let mut c = vec![NGINX.to_owned(), "-t".into(), "-q".into()];
        c.extend(self.args());
        c
    }

    /// The driver's `reload_command` for this instance.
    pub fn reload_command(&self) -> Vec<String> {
        let mut c = vec![NGINX.to_owned(), "-s".into(), "reload".into()];
        c.extend(self.args());
        c
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new(NGINX).args(["-s", "stop"]).args(self.args()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0, a new connection, 3 s limit): the status and
/// the whole response.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(text)) => match text.split(' ').nth(1).and_then(|c| c.parse().ok()) {
            Some(code) => Ok((code, text)),
            None => Err(format!("not HTTP: {text:?}")),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Polls until `/` on `port` answers 200 with `marker` (an nginx reload takes effect
/// asynchronously), then requires 5 more answers in a row to be the same.
pub async fn assert_serves(port: u16, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = match http_get(port, "/").await {
            Ok((200, body)) if body.contains(marker) => break,
            Ok((code, body)) => format!("{code}: {body}"),
            Err(e) => e,
        };
        assert!(Instant::now() < deadline, "127.0.0.1:{port} never served {marker:?}; last: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let (code, body) = http_get(port, "/").await.expect("a response");
        assert!(code == 200 && body.contains(marker), "expected {marker:?}, got {code}: {body}");
    }
}

/// A bounded load loop: `workers` clients, each paced at `per_worker_rps`, each request a new
/// connection, until finished (or 120 s, or 100k requests).
pub struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<tokio::task::JoinHandle<LoadCount>>,
}

/// What a load loop saw.
#[derive(Debug, Default)]
pub struct LoadCount {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
    /// Which markers answered (the old page, the new one).
    pub seen: BTreeSet<String>,
}

impl LoadCount {
    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }
}

impl Load {
    /// Starts the loop; a request succeeds when it answers 200 with one of `markers`.
    pub fn start(port: u16, markers: &[&str], workers: usize, per_worker_rps: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let markers: Arc<Vec<String>> = Arc::new(markers.iter().map(|m| (*m).to_owned()).collect());
        let handles = (0..workers)
            .map(|_| {
                let (stop, markers) = (stop.clone(), markers.clone());
                tokio::spawn(async move {
                    let mut count = LoadCount::default();
                    let pace = Duration::from_secs(1) / per_worker_rps.max(1);
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(120)
                        && count.total() < 100_000
                    {
                        match http_get(port, "/").await {
                            Ok((200, body)) if markers.iter().any(|m| body.contains(m.as_str())) => {
                                count.ok += 1;
                                if let Some(m) = markers.iter().find(|m| body.contains(m.as_str())) {
                                    count.seen.insert(m.clone());
                                }
                            }
                            other => {
                                count.failed += 1;
                                if count.failures.len() < 5 {
                                    count.failures.push(format!("{other:?}"));
                                }
                            }
                        }
                        next += pace;
                        let now = Instant::now();
                        if next > now {
                            tokio::time::sleep(next - now).await;
                        } else {
                            next = now;
                        }
                    }
                    count
                })
            })
            .collect();
        Load { stop, started, workers: handles }
    }

    /// Stops the loop and sums what every client saw, with the time it ran.
    pub async fn finish(self) -> (LoadCount, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadCount::default();
        for w in self.workers {
            let c = w.await.expect("a load worker");
            total.ok += c.ok;
            total.failed += c.failed;
            total.failures.extend(c.failures);
            total.seen.extend(c.seen);
        }
        (total, self.started.elapsed())
    }
}
