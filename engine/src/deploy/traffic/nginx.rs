//! The nginx driver: one upstream file, checked, reloaded, and proven.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use s3dock_core::names::{AppName, EnvName};

use super::command::{run_checked, show_argv};
use super::{TrafficError, TrafficSwitch, Upstream};
use crate::deploy::net::{HttpProbe, http_get};
use crate::deploy::spec::{Color, ColorPorts};
use crate::deploy::state::{lock_file, remove_durably, write_atomic};

/// The path the probe server answers on.
pub const PROBE_PATH: &str = "/s3dock/upstream";

/// How long one question to the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The nginx driver's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    pub app: AppName,
    pub env: EnvName,
    /// To recognize an upstream file written by hand before the first deploy.
    pub ports: ColorPorts,
    pub upstream_file: PathBuf,
    pub upstream_name: String,
    pub test_command: Vec<String>,
    pub reload_command: Vec<String>,
    pub timeout: Duration,
    /// Where the running nginx answers which upstream it loaded (`traffic.probe`); `None`
    /// turns the proof off (`probe = "off"`).
    pub probe: Option<SocketAddr>,
}

/// `driver = "nginx"`. The switch, step by step:
///
/// 0. Take the lock of the upstream file's directory (`.s3dock-nginx.lock`, an `flock`). A
///    reload loads every upstream file, so the switches of all services behind one nginx, in
///    this process or another, run one at a time: another service's reload must not land
///    between this service's write and a check that fails (nginx would then run a file this
///    switch is about to restore).
/// 1. Keep the current file's bytes (or its absence): that is what a failure restores.
/// 2. Write the new file atomically (temporary file, fsync, rename, fsync of the directory):
///    nginx never reads half a file, even if the host dies mid-write.
/// 3. Run the test command (`nginx -t`). It checks the whole configuration with the new file.
///    If it fails, put the previous file back and return [`TrafficError::Rejected`] *without
///    reloading*: the running nginx still has the old configuration in memory, and the file on
///    disk matches it again, so a reload someone else triggers later cannot pick up a
///    configuration that was refused.
/// 4. Reload gracefully (`nginx -s reload`): the master starts workers with the new upstream
///    and lets the old workers finish the requests they accepted, so no request is dropped.
///    If the reload command fails, restore the previous file as well; whether the running
///    nginx reloaded is then unknown, which the error says ([`TrafficError::traffic_unchanged`]
///    is false), and the deployer switches back explicitly.
///
/// `nginx -s reload` only signals the master and returns: a configuration the master then
/// refuses (a port it cannot bind), or a file its configuration does not include, changes
/// nothing, and the file on disk says otherwise. So the file also holds a small `server` on a
/// loopback probe address (`traffic.probe`) that answers with the upstream of the very file
/// it is part of; [`TrafficSwitch::routed`] asks it, so what the deployer goes by is what the
/// running master serves.
#[derive(Debug)]
pub struct NginxSwitch {
    pub(super) cfg: NginxConfig,
}

/// The lock shared by every nginx switch whose upstream file is in the same directory.
pub(super) const NGINX_LOCK_FILE: &str = ".s3dock-nginx.lock";

impl NginxSwitch {
    pub fn new(cfg: NginxConfig) -> Self {
        NginxSwitch { cfg }
    }

    /// The probe server's `server_name`, which the probe request sends as its `Host`: unique
    /// per upstream, so several services can share one probe address.
    pub fn probe_host(&self) -> String {
        format!("s3dock-probe.{}", self.cfg.upstream_name.to_ascii_lowercase().replace('_', "-"))
    }

    /// The file's content for `to`.
    pub fn render(&self, to: &Upstream) -> String {
        let mut text = format!(
            "# Written by s3dock for {app} ({env}); replaced at every deploy, do not edit.\n\
             # s3dock-color: {color}\n\
             upstream {name} {{\n    server {address};\n}}\n",
            app = self.cfg.app,
            env = self.cfg.env,
            color = to.color,
            name = self.cfg.upstream_name,
            address = to.address(),
        );
        if let Some(probe) = self.cfg.probe {
            text.push_str(&format!(
                "# s3dock asks the running nginx which upstream it loaded (loopback only).\n\
                 server {{\n    listen {probe};\n    server_name {host};\n    access_log off;\n    \
                 location = {PROBE_PATH} {{\n        default_type text/plain;\n        \
                 return 200 \"s3dock-upstream {name} {color} {address}\\n\";\n    }}\n}}\n",
                host = self.probe_host(),
                name = self.cfg.upstream_name,
                color = to.color,
                address = to.address(),
            ));
        }
        text
    }

    /// Reads back the upstream block of what [`NginxSwitch::render`] wrote. A file written by
    /// hand (before the first deploy) is understood when its `server` port is one of the
    /// colors' ports.
    pub fn parse(&self, text: &str) -> Option<Upstream> {
        let mut color = None;
        let mut server = None;
        let mut in_upstream = false;
        for line in text.lines().map(str::trim) {
            if let Some(c) = line.strip_prefix("# s3dock-color:") {
                color = c.trim().parse().ok();
            } else if line.starts_with("upstream ") && line.ends_with('{') {
                in_upstream = true;
            } else if in_upstream && line.starts_with('}') {
                in_upstream = false;
            } else if in_upstream && let Some(rest) = line.strip_prefix("server ") {
                let address = rest.split([';', ' ']).next().unwrap_or("");
                server = split_address(address);
            }
        }
        let (host, port) = server?;
        let color = color.or_else(|| self.cfg.ports.color_of(port))?;
        Some(Upstream { host, port, color })
    }

    /// Reads the probe server's answer: `s3dock-upstream NAME COLOR HOST:PORT`.
    fn parse_probe(&self, body: &str) -> Result<Upstream, String> {
        let mut words = body.split_whitespace();
        let (Some("s3dock-upstream"), Some(name), Some(color), Some(address)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(format!(
                "answered {:?}, which is not s3dock's probe",
                body.chars().take(80).collect::<String>()
            ));
        };
        if name != self.cfg.upstream_name {
            return Err(format!(
                "answers for the upstream {name}, not {}; give this service its own traffic.probe",
                self.cfg.upstream_name
            ));
        }
        let color: Color = color.parse().map_err(|_| format!("names the color {color:?}"))?;
        let (host, port) = split_address(address).ok_or_else(|| format!("names the address {address:?}"))?;
        Ok(Upstream { host, port, color })
    }

    fn restore(&self, previous: &Option<Vec<u8>>) -> std::io::Result<()> {
        match previous {
            Some(bytes) => write_atomic(&self.cfg.upstream_file, bytes),
            None => remove_durably(&self.cfg.upstream_file),
        }
    }
}

/// `127.0.0.1:8080` or `[::1]:8080` -> (host, port).
fn split_address(address: &str) -> Option<(String, u16)> {
    if let Some(v6) = address.strip_prefix('[') {
        let (host, port) = v6.split_once("]:")?;
        return Some((host.to_owned(), port.parse().ok()?));
    }
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

#[async_trait]
impl TrafficSwitch for NginxSwitch {
    fn driver(&self) -> &'static str {
        "nginx"
    }

    async fn current(&self) -> Result<Option<Upstream>, TrafficError> {
        let path = &self.cfg.upstream_file;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TrafficError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                    unchanged: true,
                });
            }
        };
        let parsed = self.parse(&text);
        if parsed.is_none() {
            tracing::warn!(
                file = %path.display(),
                "the upstream file names no color s3dock knows; it is replaced at the next switch"
            );
        }
        Ok(parsed)
    }

    async fn switch(&self, to: &Upstream) -> Result<(), TrafficError> {
        let path = &self.cfg.upstream_file;
        let io = |context: String, unchanged: bool| move |source| TrafficError::Io { context, source, unchanged };
        // 0. One switch at a time per nginx. The wait covers another switch's two commands.
        let lock_path = path.parent().unwrap_or(Path::new(".")).join(NGINX_LOCK_FILE);
        let _lock = match lock_file(&lock_path, self.cfg.timeout * 2).await {
            Ok(Some(file)) => file,
            Ok(None) => {
                return Err(TrafficError::Command {
                    command: "nginx switch".into(),
                    detail: format!(
                        "another switch held {} for more than {}s",
                        lock_path.display(),
                        (self.cfg.timeout * 2).as_secs()
                    ),
                    unchanged: true,
                });
            }
            Err(e) => return Err(io(format!("locking {}", lock_path.display()), true)(e)),
        };
        // 1. What a failure restores.
        let previous = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(format!("reading {}", path.display()), true)(e)),
        };
        // 2. The new file, atomically.
        write_atomic(path, self.render(to).as_bytes()).map_err(io(format!("writing {}", path.display()), true))?;
        // 3. Check the whole configuration before nginx is asked to load it.
        if let Err(detail) = run_checked(&self.cfg.test_command, &[], self.cfg.timeout).await {
            self.restore(&previous).map_err(io(
                format!(
                    "the configuration check failed ({detail}) and restoring the previous {} failed too",
                    path.display()
                ),
                // Not reloaded, so the running nginx is unchanged; the file is not.
                true,
            ))?;
            return Err(TrafficError::Rejected { command: show_argv(&self.cfg.test_command), detail });
        }
        // 4. Graceful reload.
        if let Err(detail) = run_checked(&self.cfg.reload_command, &[], self.cfg.timeout).await {
            let restored = match self.restore(&previous) {
                Ok(()) => "the previous upstream file is restored".to_owned(),
                Err(e) => format!("restoring the previous upstream file failed too ({e})"),
            };
            return Err(TrafficError::Command {
                command: show_argv(&self.cfg.reload_command),
                detail: format!("{detail}; {restored}; whether nginx reloaded is unknown"),
                unchanged: false,
            });
        }
        tracing::info!(app = %self.cfg.app, env = %self.cfg.env, upstream = %to, "nginx reload requested");
        Ok(())
    }

    async fn routed(&self) -> Result<Option<Upstream>, TrafficError> {
        let Some(probe) = self.cfg.probe else { return self.current().await };
        let host = probe.ip().to_string();
        let host_header = self.probe_host();
        let request = HttpProbe { host_header: Some(&host_header), ..HttpProbe::new(&host, probe.port(), PROBE_PATH) };
        let not_loaded = |why: String| TrafficError::Unknown {
            detail: format!(
                "the running nginx {why} on {probe} (s3dock's probe in {}): its configuration is not the upstream file s3dock wrote — the file is not included in nginx's configuration, it was never reloaded, or nginx refused the reload (see its error log: a probe port another process holds is refused too; set traffic.probe to a free loopback port)",
                self.cfg.upstream_file.display()
            ),
        };
        match http_get(&request, PROBE_TIMEOUT, 512).await {
            Ok((200, body)) => self.parse_probe(&body).map(Some).map_err(not_loaded),
            Ok((code, _)) => Err(not_loaded(format!("answers HTTP {code}"))),
            Err(e) => Err(not_loaded(format!("does not answer ({e})"))),
        }
    }

    fn proves(&self) -> bool {
        self.cfg.probe.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(color: Color, port: u16) -> Upstream {
        Upstream { host: "127.0.0.1".into(), port, color }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn nginx(dir: &Path, test: Vec<String>, reload: Vec<String>) -> NginxSwitch {
        NginxSwitch::new(NginxConfig {
            app: AppName::parse("web").unwrap(),
            env: EnvName::parse("production").unwrap(),
            ports: ColorPorts { blue: 18080, green: 18081 },
            upstream_file: dir.join("conf.d").join("web.conf"),
            upstream_name: "s3dock_web_production".into(),
            test_command: test,
            reload_command: reload,
            timeout: Duration::from_secs(5),
            probe: None,
        })
    }

    #[test]
    fn the_upstream_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = nginx(dir.path(), sh("true"), sh("true"));
        let green = up(Color::Green, 18081);
        let text = n.render(&green);
        assert!(text.contains("upstream s3dock_web_production {\n    server 127.0.0.1:18081;\n}"), "{text}");
        assert_eq!(n.parse(&text), Some(green.clone()));
        let v6 = Upstream { host: "::1".into(), port: 18080, color: Color::Blue };
        assert!(n.render(&v6).contains("server [::1]:18080;"));
        assert_eq!(n.parse(&n.render(&v6)), Some(v6));
        // Written by hand before the first deploy: the port says the color.
        assert_eq!(
            n.parse("upstream s3dock_web_production {\n    server 127.0.0.1:18080 max_fails=0;\n}\n"),
            Some(up(Color::Blue, 18080))
        );
        assert_eq!(n.parse("upstream x {\n server 127.0.0.1:9999;\n}\n"), None);
        assert_eq!(n.parse("garbage"), None);

        // With the probe: a server block after the upstream, answering for this file.
        n.cfg.probe = Some("127.0.0.1:24680".parse().unwrap());
        let text = n.render(&green);
        assert!(text.contains("listen 127.0.0.1:24680;"), "{text}");
        assert!(text.contains("server_name s3dock-probe.s3dock-web-production;"), "{text}");
        assert!(
            text.contains("return 200 \"s3dock-upstream s3dock_web_production green 127.0.0.1:18081\\n\";"),
            "{text}"
        );
        assert_eq!(n.parse(&text), Some(green.clone()), "the probe's server block is not the upstream");
        assert_eq!(n.parse_probe("s3dock-upstream s3dock_web_production green 127.0.0.1:18081\n").unwrap(), green);
        assert!(n.parse_probe("s3dock-upstream other blue 127.0.0.1:1\n").unwrap_err().contains("own traffic.probe"));
        assert!(n.parse_probe("<html>").unwrap_err().contains("not s3dock's probe"));
    }

    #[test]
    fn default_probes_are_stable_loopback_ports_below_the_ephemeral_range() {
        use crate::deploy::spec::default_probe;
        let a = default_probe(Path::new("/etc/nginx/s3dock/web-production.conf"));
        assert_eq!(a, default_probe(Path::new("/etc/nginx/s3dock/web-production.conf")));
        assert!(a.ip().is_loopback() && (20000..30000).contains(&a.port()), "{a}");
        assert_ne!(a, default_probe(Path::new("/etc/nginx/s3dock/web-staging.conf")));
    }

    #[tokio::test]
    async fn nginx_switch_reloads_after_a_passing_check() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let n = nginx(
            dir.path(),
            sh(&format!("echo test >> {}", log.display())),
            sh(&format!("echo reload >> {}", log.display())),
        );
        assert_eq!(n.current().await.unwrap(), None);
        n.switch(&up(Color::Blue, 18080)).await.unwrap();
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Blue, 18080)));
        n.switch(&up(Color::Green, 18081)).await.unwrap();
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Green, 18081)));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "test\nreload\ntest\nreload\n");
    }

    /// A reload that "succeeds" without nginx loading anything: the file says green, the
    /// running nginx (here: nothing on the probe address) does not.
    #[tokio::test]
    async fn a_reload_that_changed_nothing_is_not_taken_for_a_switch() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = nginx(dir.path(), sh("true"), sh("true"));
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        n.cfg.probe = Some(free);
        assert!(n.proves());
        n.switch(&up(Color::Green, 18081)).await.unwrap();
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Green, 18081)), "the file was written");
        let e = n.routed().await.unwrap_err().to_string();
        assert!(e.contains("does not answer") && e.contains("not the upstream file s3dock wrote"), "{e}");
        n.cfg.probe = None;
        assert_eq!(n.routed().await.unwrap(), Some(up(Color::Green, 18081)), "probe off: the file is all there is");
    }

    #[tokio::test]
    async fn a_refused_check_restores_the_file_and_never_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let reloads = dir.path().join("reloads");
        let reload = sh(&format!("echo reload >> {}", reloads.display()));
        let ok = nginx(dir.path(), sh("true"), reload.clone());
        ok.switch(&up(Color::Blue, 18080)).await.unwrap();
        let before = std::fs::read(&ok.cfg.upstream_file).unwrap();

        let refusing = nginx(dir.path(), sh("echo 'nginx: [emerg] unexpected \"}\" in x.conf:3' >&2; exit 1"), reload);
        let e = refusing.switch(&up(Color::Green, 18081)).await.unwrap_err();
        assert!(e.traffic_unchanged(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("unexpected") && msg.contains("nothing was reloaded"), "{msg}");
        assert_eq!(std::fs::read(&refusing.cfg.upstream_file).unwrap(), before, "the previous file is back");
        assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "reload\n", "no second reload");

        // With no previous file, a refused first switch leaves no file behind.
        let fresh = tempfile::tempdir().unwrap();
        let n = nginx(fresh.path(), sh("exit 1"), sh("true"));
        n.switch(&up(Color::Blue, 18080)).await.unwrap_err();
        assert!(!n.cfg.upstream_file.exists());
        let left: Vec<_> = std::fs::read_dir(n.cfg.upstream_file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [NGINX_LOCK_FILE], "no temporary file is left");
    }

    #[tokio::test]
    async fn a_failed_reload_restores_the_file_and_says_traffic_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let n = nginx(dir.path(), sh("true"), sh("true"));
        n.switch(&up(Color::Blue, 18080)).await.unwrap();
        let failing = nginx(dir.path(), sh("true"), sh("echo 'no pid file' >&2; exit 1"));
        let e = failing.switch(&up(Color::Green, 18081)).await.unwrap_err();
        assert!(!e.traffic_unchanged());
        assert!(e.to_string().contains("no pid file"), "{e}");
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Blue, 18080)));
        let slow = nginx(dir.path(), sh("sleep 5"), sh("true"));
        let slow = NginxSwitch { cfg: NginxConfig { timeout: Duration::from_millis(200), ..slow.cfg } };
        let started = std::time::Instant::now();
        let e = slow.switch(&up(Color::Green, 18081)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "killed at the timeout");
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Blue, 18080)));
    }

    #[tokio::test]
    async fn switches_of_one_nginx_run_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // Each check records its start and end around a pause: overlapping switches would
        // interleave the lines.
        let test = sh(&format!("echo start >> {l}; sleep 0.3; echo end >> {l}", l = log.display()));
        let a = nginx(dir.path(), test.clone(), sh("true"));
        let mut b_cfg = nginx(dir.path(), test, sh("true")).cfg;
        b_cfg.upstream_file = dir.path().join("conf.d").join("other.conf");
        let b = NginxSwitch::new(b_cfg);
        let (blue, green) = (up(Color::Blue, 18080), up(Color::Green, 18081));
        let (ra, rb) = tokio::join!(a.switch(&blue), b.switch(&green));
        ra.unwrap();
        rb.unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "start\nend\nstart\nend\n");
    }
}
