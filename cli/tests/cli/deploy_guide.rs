//! The host setup blocks of docs/deploy-aws.md, exercised as written: the first nginx upstream
//! file with its site (nginx -t), and the sudoers alternative for hosts whose polkit is older
//! than 0.106 (visudo, then `sudo -n -l` for a throw-away user). Each block is the fenced block
//! after a `<!-- tested: NAME -->` marker, so the page and the test cannot drift apart.

use std::path::Path;
use std::process::Command;

use s3dock_engine::deploy::spec::{Color, ColorPorts};
use s3dock_engine::deploy::traffic::{NginxConfig, NginxSwitch};

fn guide() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy-aws.md")).expect("the guide")
}

/// The fenced block after `<!-- tested: NAME -->`.
fn block(name: &str) -> String {
    let text = guide();
    let marker = format!("<!-- tested: {name} -->");
    let after = text.split(&marker).nth(1).unwrap_or_else(|| panic!("no {marker} in docs/deploy-aws.md"));
    let body = after.split_once("```").and_then(|(_, rest)| rest.split_once('\n')).map(|(_, rest)| rest).unwrap();
    body.split("```").next().unwrap().to_owned()
}

fn tool(name: &str) -> Option<String> {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Skips (or fails in CI) when a tool is missing.
fn need(name: &str) -> Option<String> {
    match tool(name) {
        Some(p) => Some(p),
        None => s3dock_testkit::skip_unless_ci(name, ".ci/run installs it"),
    }
}

#[test]
fn the_first_upstream_file_makes_the_site_valid_and_the_agent_reads_it() {
    let upstream = block("first-upstream");
    // The agent's nginx driver recognizes the hand-written file as blue.
    let switch = NginxSwitch::new(NginxConfig {
        app: "web".parse().unwrap(),
        env: "production".parse().unwrap(),
        ports: ColorPorts { blue: 18080, green: 18081 },
        upstream_file: "/etc/nginx/s3dock/web-production.conf".into(),
        upstream_name: "s3dock_web_production".into(),
        test_command: vec![],
        reload_command: vec![],
        timeout: std::time::Duration::from_secs(5),
        probe: None,
    });
    let parsed = switch.parse(&upstream).expect("the agent understands the first upstream file");
    assert_eq!((parsed.color, parsed.port), (Color::Blue, 18080));

    let Some(nginx) = need("nginx") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("s3dock")).unwrap();
    let site = block("site").replace("/etc/nginx/s3dock/", &format!("{}/s3dock/", d.display()));
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/tmp;\n{site}\n}}\n",
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let test =
        || Command::new(&nginx).args(["-t", "-q", "-p"]).arg(d).arg("-c").arg(d.join("nginx.conf")).output().unwrap();
    // Without the upstream file the site does not load: that is why the guide writes it first.
    let out = test();
    assert!(!out.status.success(), "nginx -t passes without the upstream file?");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s3dock_web_production"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(d.join("s3dock/web-production.conf"), &upstream).unwrap();
    let out = test();
    assert!(out.status.success(), "nginx -t: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throw-away user and a sudoers file for it, removed when dropped.
struct SudoFixture {
    user: String,
    file: std::path::PathBuf,
}

impl Drop for SudoFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = Command::new("userdel").arg(&self.user).status();
    }
}

#[test]
fn the_sudoers_alternative_allows_exactly_the_two_commands() {
    let rule = block("sudoers");
    assert!(rule.contains(
        "NOPASSWD: /usr/bin/systemctl start s3dock-nginx-test.service, /usr/bin/systemctl reload nginx.service"
    ));
    let Some(visudo) =
        need("visudo").or_else(|| Path::new("/usr/sbin/visudo").exists().then(|| "/usr/sbin/visudo".into()))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s3dock-agent-nginx");
    std::fs::write(&file, &rule).unwrap();
    let out = Command::new(&visudo).arg("-c").arg("-f").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "visudo -c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Installing it for real needs root, sudo and useradd.
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || tool("sudo").is_none() || tool("useradd").is_none() || !Path::new("/etc/sudoers.d").is_dir() {
        s3dock_testkit::skip_unless_ci::<()>(
            "root with sudo and useradd (installing the sudoers rule)",
            ".ci/run runs as root and installs sudo",
        );
        return;
    }
    let user = format!("s3dt{}", std::process::id() % 100_000);
    let fixture = SudoFixture { user: user.clone(), file: format!("/etc/sudoers.d/zz-s3dock-test-{user}").into() };
    let ok = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"])
        .arg(&user)
        .status()
        .unwrap();
    assert!(ok.success(), "useradd {user}");
    let mine = rule
        .replace("Defaults:s3dock ", &format!("Defaults:{user} "))
        .replace("\ns3dock ALL=", &format!("\n{user} ALL="));
    assert_ne!(mine, rule);
    std::fs::write(&fixture.file, &mine).unwrap();
    let ok = Command::new("chmod").arg("0440").arg(&fixture.file).status().unwrap();
    assert!(ok.success());
    let out = Command::new(&visudo).arg("-c").output().unwrap();
    assert!(out.status.success(), "the whole sudo configuration stays valid: {}", String::from_utf8_lossy(&out.stdout));

    // As the user: `sudo -n -l CMD` exits 0 only for an allowed command, without running it.
    let allowed = |cmd: &[&str]| {
        Command::new("runuser")
            .args(["-u", &user, "--", "sudo", "-n", "-l"])
            .args(cmd)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(allowed(&["/usr/bin/systemctl", "start", "s3dock-nginx-test.service"]));
    assert!(allowed(&["/usr/bin/systemctl", "reload", "nginx.service"]));
    for refused in [
        &["/usr/bin/systemctl", "stop", "nginx.service"][..],
        &["/usr/bin/systemctl", "start", "nginx.service"],
        &["/usr/bin/systemctl", "reload", "nginx.service", "ssh.service"],
        &["/usr/bin/systemctl", "start", "s3dock-nginx-test.service", "--now"],
        &["/usr/sbin/nginx", "-s", "stop"],
        &["/bin/sh", "-c", "id"],
    ] {
        assert!(!allowed(refused), "{refused:?} must be refused");
    }
    drop(fixture);
}
