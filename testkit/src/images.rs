//! Test images `FROM scratch` with the host's static busybox (no registry is reachable): the
//! files of an app that busybox httpd serves on 8080, and writing them as a build context.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// busybox httpd serving `/www` on 8080: the default command of [`httpd_files`].
pub const HTTPD: &str = r#"["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]"#;

/// A Docker health check on the served page.
const HEALTHCHECK: &str = "HEALTHCHECK --interval=1s --timeout=3s --retries=2 CMD [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/\"]\n";

/// The host's static busybox, copied into images as `/bin/busybox`.
pub fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("/bin/busybox is needed for the image tests: apt-get install busybox-static")
}

/// The classic builder shares cached layers between builds of identical steps, and removing
/// an image prunes its untagged parents: a test removing its image can pull a shared layer from
/// under a concurrent build ("unknown parent image ID"). Every test image therefore starts with a
/// label naming its own repository, so no two tests (or two concurrent runs) share a layer.
pub fn isolating_label(repo: &str) -> String {
    format!("LABEL io.s3dock.test.repository=\"{repo}\"\n")
}

/// The build context of an app served by busybox httpd on 8080: its Dockerfile (`FROM scratch`,
/// layers isolated by `repo`, `cmd` or [`HTTPD`], a Docker health check if `healthcheck`), busybox
/// and `www` (file name, content) under `/www`.
pub fn httpd_files(repo: &str, cmd: Option<&str>, healthcheck: bool, www: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let dockerfile = format!(
        "FROM scratch\n{}COPY busybox /bin/busybox\nCOPY www /www\nEXPOSE 8080\n{}CMD {}\n",
        isolating_label(repo),
        if healthcheck { HEALTHCHECK } else { "" },
        cmd.unwrap_or(HTTPD)
    );
    let mut files = vec![("Dockerfile".to_owned(), dockerfile.into_bytes()), ("busybox".to_owned(), busybox())];
    files.extend(www.iter().map(|(name, content)| (format!("www/{name}"), content.to_vec())));
    files
}

/// Writes build-context files under `dir`, creating directories; executables (ELF) get mode
/// 0755.
pub fn write_context(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a file in a directory")).expect("create the directory");
        std::fs::write(&path, data).expect("write a context file");
        if data.starts_with(b"\x7fELF") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("make it executable");
        }
    }
}
