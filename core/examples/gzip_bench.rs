//! Measures s3dock's gzip and digests on a real file, to choose `GzipOptions::default()`.
//!
//! ```text
//! cargo run --release -p s3dock-core --example gzip_bench -- FILE [LEVEL:THREADS:BLOCK_KIB ...] [--runs N]
//! ```
//!
//! Without settings it runs a fixed list (levels 1 to 6, one and two threads, several block
//! sizes) and the system `gzip -1` and `gzip -6` for comparison; each setting runs `--runs`
//! times (default 2). The file should be in the page cache (read it once first) so the disk
//! does not set the pace. Prints Markdown rows: MB/s of input (1 MB = 10^6 bytes), compressed
//! size as a fraction of the input, CPU seconds (all threads, and children for `gzip`) and
//! CPU per wall second. Then the digests' throughput, and the push and pull paths as s3dock
//! runs them (compress then hash; hash then decompress) at the default options.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use md5::Md5;
use s3dock_core::digest::{HashingReader, digest_reader};
use s3dock_core::gzip::{GzipOptions, compress, decompress};
use s3dock_core::store::{BoxReader, reader_from_bytes};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

const MB: f64 = 1e6;

#[derive(Debug, Clone, Copy)]
enum Setting {
    S3dock(GzipOptions),
    SystemGzip(u32),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::S3dock(o) => {
                write!(f, "s3dock level {} threads {} block {} KiB", o.level, o.threads, o.block_size >> 10)
            }
            Setting::SystemGzip(level) => write!(f, "system gzip -{level}"),
        }
    }
}

fn s3dock(level: u32, threads: usize, block_kib: usize) -> Setting {
    Setting::S3dock(GzipOptions { level, threads, block_size: block_kib << 10 })
}

fn default_settings() -> Vec<Setting> {
    vec![
        Setting::SystemGzip(1),
        Setting::SystemGzip(6),
        s3dock(1, 1, 1024),
        s3dock(1, 2, 1024),
        s3dock(2, 1, 1024),
        s3dock(2, 2, 1024),
        s3dock(3, 1, 1024),
        s3dock(3, 2, 1024),
        s3dock(4, 2, 1024),
        s3dock(6, 1, 1024),
        s3dock(6, 2, 1024),
        s3dock(3, 2, 128),
        s3dock(3, 2, 256),
        s3dock(3, 2, 4096),
    ]
}

/// CPU seconds used so far by this process (all threads) and by its waited-for children.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the command name, which is in parentheses and may hold spaces; utime is
    // field 14 of the whole line, so index 11 here.
    let fields: Vec<f64> = stat[stat.rfind(')').expect("/proc/self/stat has a command name") + 2..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let tick = clock_ticks();
    ((fields[11] + fields[12]) / tick, (fields[13] + fields[14]) / tick)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn open(path: &Path) -> BoxReader {
    Box::pin(tokio::fs::File::open(path).await.expect("the input file opens"))
}

/// Reads a stream to its end, returning how many bytes it had.
async fn drain(mut reader: BoxReader) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf).await.expect("the stream reads") {
            0 => return total,
            n => total += n as u64,
        }
    }
}

struct Run {
    wall: f64,
    cpu: f64,
    output: u64,
}

async fn run(setting: Setting, path: &Path) -> Run {
    let (cpu0, children0) = cpu_seconds();
    let start = Instant::now();
    let output = match setting {
        Setting::S3dock(opts) => drain(compress(open(path).await, opts)).await,
        Setting::SystemGzip(level) => {
            let mut child = std::process::Command::new("gzip")
                .arg(format!("-{level}"))
                .arg("-c")
                .arg(path)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("gzip runs");
            let mut out = child.stdout.take().expect("stdout is piped");
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match out.read(&mut buf).expect("gzip's output reads") {
                    0 => break,
                    n => total += n as u64,
                }
            }
            assert!(child.wait().expect("gzip ends").success());
            total
        }
    };
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, children1) = cpu_seconds();
    Run { wall, cpu: (cpu1 - cpu0) + (children1 - children0), output }
}

fn throughput(name: &str, len: usize, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    println!("| {name} | {:.0} MB/s |", len as f64 / MB / start.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut path: Option<PathBuf> = None;
    let mut settings = Vec::new();
    let mut runs = 2;
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            runs = args.next().and_then(|n| n.parse().ok()).expect("--runs takes a number");
        } else if let [level, threads, block] = arg.split(':').collect::<Vec<_>>()[..] {
            let parse = |s: &str| s.parse::<usize>().expect("LEVEL:THREADS:BLOCK_KIB are numbers");
            settings.push(s3dock(parse(level) as u32, parse(threads), parse(block)));
        } else {
            path = Some(PathBuf::from(arg));
        }
    }
    let Some(path) = path else {
        eprintln!("usage: gzip_bench FILE [LEVEL:THREADS:BLOCK_KIB ...] [--runs N]");
        std::process::exit(2);
    };
    if settings.is_empty() {
        settings = default_settings();
    }
    // Read once to warm the page cache, without holding the file: peak memory is reported
    // after the compression runs, and must not include the input.
    let len = std::io::copy(&mut std::fs::File::open(&path).expect("the input file opens"), &mut std::io::sink())
        .expect("the input file reads") as f64;
    println!("input: {} ({:.1} MB), {} cores", path.display(), len / MB, num_cores());
    println!();
    println!("| setting | run | input MB/s | compressed/input | CPU s | CPU/wall |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for setting in settings {
        for i in 1..=runs {
            let r = run(setting, &path).await;
            println!(
                "| {setting} | {i} | {:.1} | {:.3} | {:.1} | {:.2} |",
                len / MB / r.wall,
                r.output as f64 / len,
                r.cpu,
                r.cpu / r.wall
            );
        }
    }

    println!();
    println!("peak resident memory after the compression runs: {}", peak_rss());

    let data = std::fs::read(&path).expect("the input file reads");
    println!();
    println!("| digest (one core) | throughput |");
    println!("| --- | ---: |");
    for _ in 0..runs {
        throughput("MD5", data.len(), || {
            std::hint::black_box(Md5::digest(&data));
        });
        throughput("SHA-256", data.len(), || {
            std::hint::black_box(Sha256::digest(&data));
        });
        throughput("MD5 + SHA-256 + size (digest_reader)", data.len(), || {
            digest_reader(&data[..]).expect("in memory");
        });
    }

    let opts = GzipOptions::default();
    println!();
    println!("default options: {opts:?}");
    println!("| path | run | input MB/s | compressed/input | CPU/wall |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for i in 1..=runs {
        // Push: compress, then hash the compressed bytes as the upload reads them.
        let (cpu0, _) = cpu_seconds();
        let start = Instant::now();
        let hashed = HashingReader::new(compress(open(&path).await, opts));
        let handle = hashed.handle();
        drain(Box::pin(hashed)).await;
        let wall = start.elapsed().as_secs_f64();
        let compressed = handle.digests().expect("the stream ended").size;
        let cpu = (cpu_seconds().0 - cpu0) / wall;
        println!(
            "| push: compress + hash | {i} | {:.1} | {:.3} | {cpu:.2} |",
            len / MB / wall,
            compressed as f64 / len
        );

        // Pull: hash the compressed bytes, then decompress them (from memory).
        let archive = {
            let mut v = Vec::with_capacity(compressed as usize);
            compress(open(&path).await, opts).read_to_end(&mut v).await.expect("compresses");
            v
        };
        let (cpu0, _) = cpu_seconds();
        let start = Instant::now();
        let plain = drain(decompress(Box::pin(HashingReader::new(reader_from_bytes(archive))))).await;
        let wall = start.elapsed().as_secs_f64();
        assert_eq!(plain, data.len() as u64, "the round trip gives the input back");
        let cpu = (cpu_seconds().0 - cpu0) / wall;
        println!("| pull: hash + decompress | {i} | {:.1} | | {cpu:.2} |", len / MB / wall);
    }
}

/// `VmHWM` of this process: the most memory it has held resident.
fn peak_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).map_or("unknown".into(), |v| v.trim().to_string())
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
