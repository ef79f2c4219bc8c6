//! The build context: a tar of the context directory, streamed to the engine while it is being
//! written, filtered by `.dockerignore` exactly as the docker CLI does.
//!
//! # `.dockerignore` semantics (moby's patternmatcher, as used by the docker CLI)
//!
//! - One pattern per line; lines starting with `#` are comments; surrounding spaces are trimmed;
//!   a UTF-8 BOM on the first line is dropped.
//! - Patterns are relative to the context root and cleaned like Go's `filepath.Clean`
//!   (`./a//b/../c` is `a/c`); a leading `/` is ignored.
//! - `*` matches any run of characters but `/`, `?` one character but `/`, `[...]` a class,
//!   `\x` the character `x`; `**` matches any number of path segments, including none.
//! - `!pattern` is an exception: it re-includes what earlier patterns excluded. For each path
//!   the *last* pattern that matches decides.
//! - A path is excluded when it, **or one of its parent directories**, matches. An excluded
//!   directory is not even entered unless an exception pattern names something below it
//!   (`!dir/keep` makes `dir` visited, the same prefix test the CLI uses).
//! - The Dockerfile and `.dockerignore` are always sent (the CLI adds exceptions for them). The
//!   builder itself drops them from what `COPY` sees when `.dockerignore` lists them.
//!
//! # The archive
//!
//! Entries are written in lexical order, directory by directory, so the same tree always gives
//! the same bytes. Modes, modification times and symlinks are kept; owners are root (as the CLI
//! sends them). Sockets, FIFOs and devices are skipped with a warning. A Dockerfile outside the
//! context directory is added at the root under a generated name, and that name is appended to
//! the `.dockerignore` sent along so that `COPY . .` does not pick it up (again as the CLI does).

use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use s3dock_core::store::BoxReader;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

/// The name a Dockerfile from outside the context gets inside it.
pub const EXTERNAL_DOCKERFILE_NAME: &str = ".dockerfile.s3dock";

/// Size of the chunks handed from the tar-writing thread to the reader.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the writer thread and the reader: bounds memory to ~0.5 MiB.
const CHANNEL_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the build context {path} is not a directory; pass the directory that holds your application's files")]
    NotADirectory { path: PathBuf },
    #[error("the Dockerfile {path} does not exist; create it or pass the right Dockerfile path")]
    DockerfileNotFound { path: PathBuf },
    #[error("{path}: {message}; fix or remove that pattern")]
    Dockerignore { path: PathBuf, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ContextError {
    let context = context.into();
    move |source| ContextError::Io { context, source }
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            part => out.push(part),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// The patterns of a `.dockerignore` file, normalised as the docker CLI reads them: comments and
/// blank lines dropped, each pattern cleaned, a leading `/` removed, `!` kept in front.
pub fn parse_dockerignore(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut patterns = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean_path(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        patterns.push(if invert { format!("!{cleaned}") } else { cleaned });
    }
    patterns
}

#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    /// `foo/**`: everything starting with `foo/`.
    Prefix(String),
    /// `**/foo` (only literal characters after the `**`).
    Suffix(String),
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

impl Pattern {
    /// The pattern-to-matcher translation of moby's patternmatcher, including its shortcuts
    /// (exact, prefix and suffix matches), which decide a few corner cases.
    fn compile(cleaned: &str, exclusion: bool) -> Result<Self, String> {
        #[derive(PartialEq)]
        enum Ty {
            Exact,
            Prefix,
            Suffix,
            Regex,
        }
        let chars: Vec<char> = cleaned.chars().collect();
        let mut re = String::from("^");
        let mut ty = Ty::Exact;
        let mut i = 0;
        let mut first = true;
        let mut in_class = false;
        while i < chars.len() {
            let ch = chars[i];
            i += 1;
            if in_class {
                // Inside a class `-` and a leading `^` keep their meaning; what would be a
                // nested class or a set operation for the regex crate is a literal for Go.
                let at_start = re.ends_with('[') || re.ends_with("[^");
                match ch {
                    // `[]a]` is a class holding `]` and `a`.
                    ']' if at_start => re.push_str("\\]"),
                    ']' => {
                        re.push(']');
                        in_class = false;
                    }
                    '\\' if i < chars.len() => {
                        re.push_str(&regex::escape(&chars[i].to_string()));
                        i += 1;
                    }
                    '[' | '&' | '~' | '\\' => re.push_str(&regex::escape(&ch.to_string())),
                    _ => re.push(ch),
                }
                first = false;
                continue;
            }
            match ch {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    // `**/` is the same as `**`.
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        if ty == Ty::Exact {
                            ty = Ty::Prefix;
                        } else {
                            re.push_str(".*");
                            ty = Ty::Regex;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        ty = Ty::Regex;
                    }
                    if first {
                        ty = Ty::Suffix;
                    }
                }
                '*' => {
                    re.push_str("[^/]*");
                    ty = Ty::Regex;
                }
                '?' => {
                    re.push_str("[^/]");
                    ty = Ty::Regex;
                }
                '\\' => match chars.get(i) {
                    Some(&next) => {
                        i += 1;
                        re.push_str(&regex::escape(&next.to_string()));
                        ty = Ty::Regex;
                    }
                    None => re.push_str("\\\\"),
                },
                '[' => {
                    re.push('[');
                    in_class = true;
                    ty = Ty::Regex;
                }
                ']' => {
                    re.push_str("\\]");
                    ty = Ty::Regex;
                }
                _ => re.push_str(&regex::escape(&ch.to_string())),
            }
            first = false;
        }
        let kind = match ty {
            Ty::Exact => MatchKind::Exact,
            Ty::Prefix => MatchKind::Prefix(cleaned[..cleaned.len() - 2].to_owned()),
            Ty::Suffix => MatchKind::Suffix(cleaned[2..].to_owned()),
            Ty::Regex => {
                re.push('$');
                MatchKind::Regex(regex::Regex::new(&re).map_err(|e| format!("invalid pattern {cleaned:?}: {e}"))?)
            }
        };
        Ok(Pattern { cleaned: cleaned.to_owned(), exclusion, kind })
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            MatchKind::Regex(re) => re.is_match(path),
        }
    }
}

/// A compiled `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
}

impl IgnoreMatcher {
    /// Compiles patterns as [`parse_dockerignore`] returns them (`!` marks an exception).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let mut compiled = Vec::new();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let p = clean_path(p);
            let (exclusion, body) = match p.strip_prefix('!') {
                Some("") => return Err("illegal exclusion pattern \"!\"".into()),
                Some(body) => (true, body),
                None => (false, p.as_str()),
            };
            compiled.push(Pattern::compile(body, exclusion)?);
        }
        Ok(IgnoreMatcher { patterns: compiled })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is excluded: the last
    /// pattern matching it or one of its parent directories decides.
    pub fn matches(&self, path: &str) -> bool {
        let path = clean_path(path);
        if path == "." {
            return false;
        }
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut excluded = false;
        for p in &self.patterns {
            // An inclusion cannot change an excluded path, nor an exception an included one.
            if p.exclusion != excluded {
                continue;
            }
            if p.matches(&path) || parents.iter().any(|parent| p.matches(parent)) {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether an exception pattern names something inside `dir`, so an excluded `dir` must
    /// still be walked (a plain prefix test on the pattern text, as the CLI does).
    fn exception_inside(&self, dir: &str) -> bool {
        let dir = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exclusion).any(|p| format!("{}/", p.cleaned).starts_with(&dir))
    }
}

/// A Dockerfile from outside the context, added under [`EXTERNAL_DOCKERFILE_NAME`].
struct ExternalDockerfile {
    name: String,
    contents: Vec<u8>,
    mtime: u64,
    /// What to send as `.dockerignore`: the original plus the generated name.
    dockerignore: Vec<u8>,
    dockerignore_meta: Option<Metadata>,
}

struct Plan {
    root: PathBuf,
    matcher: IgnoreMatcher,
    external: Option<ExternalDockerfile>,
}

/// A `/`-separated relative path, if `path` is inside `root` (both canonical).
fn relative_inside(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let parts = parts?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Starts streaming the build context tar of `context_dir` and returns it with the
/// Dockerfile's name inside the context. The tar is written on its own thread into a bounded
/// channel, so memory stays small whatever the context's size, and writing stops when the
/// reader is dropped. A file that cannot be read mid-way fails the reader with that error.
pub fn context_tar(context_dir: &Path, dockerfile: &Path) -> Result<(BoxReader, String), ContextError> {
    let root = match std::fs::canonicalize(context_dir) {
        Ok(root) => root,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ContextError::NotADirectory { path: context_dir.to_path_buf() });
        }
        Err(e) => return Err(io_error(format!("opening the build context {}", context_dir.display()))(e)),
    };
    if !root.is_dir() {
        return Err(ContextError::NotADirectory { path: context_dir.to_path_buf() });
    }
    let dockerfile_path = match std::fs::canonicalize(dockerfile) {
        Ok(p) if p.is_file() => p,
        Ok(_) => return Err(ContextError::DockerfileNotFound { path: dockerfile.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ContextError::DockerfileNotFound { path: dockerfile.to_path_buf() });
        }
        Err(e) => return Err(io_error(format!("opening the Dockerfile {}", dockerfile.display()))(e)),
    };

    let ignore_path = root.join(".dockerignore");
    let (ignore_text, ignore_meta) = match std::fs::read(&ignore_path) {
        Ok(bytes) => {
            (Some(bytes), Some(std::fs::symlink_metadata(&ignore_path).map_err(io_error("reading .dockerignore"))?))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
        Err(e) => return Err(io_error(format!("reading {}", ignore_path.display()))(e)),
    };
    let mut patterns =
        ignore_text.as_deref().map(|b| parse_dockerignore(&String::from_utf8_lossy(b))).unwrap_or_default();
    let bad_pattern = |message| ContextError::Dockerignore { path: ignore_path.clone(), message };
    let matcher = IgnoreMatcher::new(&patterns).map_err(bad_pattern)?;

    let (dockerfile_name, external) = match relative_inside(&root, &dockerfile_path) {
        Some(rel) => (rel, None),
        None => {
            let contents = std::fs::read(&dockerfile_path)
                .map_err(io_error(format!("reading the Dockerfile {}", dockerfile.display())))?;
            let mtime = std::fs::metadata(&dockerfile_path).map(|m| m.mtime().max(0) as u64).unwrap_or(0);
            let mut name = EXTERNAL_DOCKERFILE_NAME.to_owned();
            let mut n = 0;
            while std::fs::symlink_metadata(root.join(&name)).is_ok() {
                n += 1;
                name = format!("{EXTERNAL_DOCKERFILE_NAME}.{n}");
            }
            let mut dockerignore = ignore_text.clone().unwrap_or_else(|| b".dockerignore".to_vec());
            dockerignore.extend_from_slice(format!("\n{name}\n").as_bytes());
            let ext = ExternalDockerfile {
                name: name.clone(),
                contents,
                mtime,
                dockerignore,
                dockerignore_meta: ignore_meta,
            };
            (name, Some(ext))
        }
    };
    // Always send the Dockerfile and .dockerignore, as the CLI does: an exception for each one
    // the patterns would exclude.
    let mut keep = Vec::new();
    if matcher.matches(".dockerignore") {
        keep.push("!.dockerignore".to_owned());
    }
    if external.is_none() && matcher.matches(&dockerfile_name) {
        keep.push(format!("!{dockerfile_name}"));
    }
    let matcher = if keep.is_empty() {
        matcher
    } else {
        patterns.extend(keep);
        IgnoreMatcher::new(&patterns).map_err(bad_pattern)?
    };

    let plan = Plan { root, matcher, external };
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    std::thread::Builder::new()
        .name("s3dock-context".into())
        .spawn(move || {
            let mut builder = tar::Builder::new(ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) });
            let written = write_dir(&mut builder, &plan, &plan.root, "")
                .and_then(|()| builder.into_inner())
                .and_then(|mut w| w.flush());
            if let Err(e) = written {
                // The reader may be gone already; then nobody needs the error.
                let _ = tx.blocking_send(Err(e));
            }
        })
        .map_err(io_error("starting the build context writer"))?;
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok((Box::pin(StreamReader::new(stream)), dockerfile_name))
}

/// Hands fixed-size chunks to the async side; blocks while the channel is full.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the build context reader was dropped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

/// Fails with `UnexpectedEof` if the file is shorter than its header said: a file that shrinks
/// while being sent must not produce a corrupt archive.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
    path: PathBuf,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while the build context was being sent; build again", self.path.display()),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn header(meta: &Metadata, entry_type: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(entry_type);
    h.set_size(size);
    h.set_mode(meta.permissions().mode() & 0o7777);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

enum Source {
    Disk(PathBuf),
    /// The external Dockerfile.
    Dockerfile,
    /// `.dockerignore` with the external Dockerfile's name appended.
    Dockerignore,
}

fn write_dir<W: Write>(b: &mut tar::Builder<W>, plan: &Plan, dir: &Path, rel: &str) -> io::Result<()> {
    let mut entries: Vec<(String, Source)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| with_path(e, dir))? {
        let entry = entry.map_err(|e| with_path(e, dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        entries.push((name, Source::Disk(entry.path())));
    }
    if rel.is_empty()
        && let Some(ext) = &plan.external
    {
        entries.retain(|(name, _)| name != ".dockerignore");
        entries.push((ext.name.clone(), Source::Dockerfile));
        entries.push((".dockerignore".into(), Source::Dockerignore));
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    for (name, source) in entries {
        let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        let path = match source {
            Source::Disk(path) => path,
            Source::Dockerfile | Source::Dockerignore => {
                let Some(ext) = &plan.external else { continue };
                let (data, mode, mtime) = match source {
                    Source::Dockerfile => (&ext.contents, 0o600, ext.mtime),
                    _ => match &ext.dockerignore_meta {
                        Some(m) => (&ext.dockerignore, m.permissions().mode() & 0o7777, m.mtime().max(0) as u64),
                        None => (&ext.dockerignore, 0o600, ext.mtime),
                    },
                };
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(mode);
                h.set_mtime(mtime);
                h.set_uid(0);
                h.set_gid(0);
                b.append_data(&mut h, &rel_path, data.as_slice())?;
                continue;
            }
        };
        let meta = std::fs::symlink_metadata(&path).map_err(|e| with_path(e, &path))?;
        let ft = meta.file_type();
        if plan.matcher.matches(&rel_path) {
            // An excluded directory is still walked when an exception names something inside
            // it; its own entry is not sent (the CLI does the same).
            if ft.is_dir() && plan.matcher.exception_inside(&rel_path) {
                write_dir(b, plan, &path, &rel_path)?;
            }
            continue;
        }
        if ft.is_dir() {
            let mut h = header(&meta, tar::EntryType::Directory, 0);
            b.append_data(&mut h, format!("{rel_path}/"), io::empty())?;
            write_dir(b, plan, &path, &rel_path)?;
        } else if ft.is_file() {
            let file = std::fs::File::open(&path).map_err(|e| with_path(e, &path))?;
            let mut h = header(&meta, tar::EntryType::Regular, meta.len());
            let reader = ExactReader { inner: file, remaining: meta.len(), path: path.clone() };
            b.append_data(&mut h, &rel_path, reader)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| with_path(e, &path))?;
            let mut h = header(&meta, tar::EntryType::Symlink, 0);
            b.append_link(&mut h, &rel_path, &target)?;
        } else {
            tracing::warn!(path = %rel_path, "skipping a socket, FIFO or device file: it cannot be part of a build context");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
