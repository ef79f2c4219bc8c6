// Build facts for `--version`: the git commit the binary was built from and the build date,
// as the environment variables `S3DOCK_COMMIT` and `S3DOCK_BUILD_DATE`. Shared by the agent
// (`agent/build.rs` includes this file).
//
// Outside a git checkout (a source tarball, `cargo install` from a registry) or without git,
// the commit is `unknown`; the build never fails for it. `SOURCE_DATE_EPOCH`, when set, is
// the build date (reproducible builds); otherwise today's date in UTC.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `YYYY-MM-DD` of a Unix time (days to civil date, proleptic Gregorian).
fn date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let dir = Path::new(&dir);
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch refs (a commit writes the
    // branch's loose ref file) and packed-refs (a gc). Only paths that exist are named: cargo
    // would rerun the script at every build for a missing one.
    let watch = |path: String| {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    if let Some(git_dir) = git(dir, &["rev-parse", "--absolute-git-dir"]) {
        watch(format!("{git_dir}/HEAD"));
        if let Some(common) = git(dir, &["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
            watch(format!("{common}/refs/heads"));
            watch(format!("{common}/packed-refs"));
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let now = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    });
    println!("cargo:rustc-env=S3DOCK_COMMIT={commit}");
    println!("cargo:rustc-env=S3DOCK_BUILD_DATE={}", date(now));
}
