//! Git facts through libgit2: the HEAD commit an image is built from, and whether the working
//! tree still matches it.
//!
//! The tag `YYYYMMDD-HHMM-hash7` promises that the image was built from that commit, so a build
//! is refused while tracked files differ from HEAD (in the working tree or staged). Untracked
//! and ignored files do not block it: they are not part of the commit, and a `.dockerignore`
//! decides whether they reach the build.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use git2::{ErrorCode, Repository, Status, StatusOptions};
use s3dock_core::names::ImageTag;

/// How many changed files a [`GitError::Dirty`] lists by name.
pub const MAX_LISTED_FILES: usize = 10;

/// What the build needs to know about the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitFacts {
    /// The HEAD commit id, full hex.
    pub commit: String,
    /// The HEAD commit's committer time, in UTC.
    pub committed_at: DateTime<Utc>,
    /// `YYYYMMDD-HHMM-hash7` of the HEAD commit.
    pub tag: ImageTag,
    /// The `origin` remote's URL without credentials, if there is one.
    pub source_url: Option<String>,
    /// The repository's working tree root.
    pub workdir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{path} is not inside a git repository; run s3dock build inside a git repository (git init && git commit)")]
    NotARepository { path: PathBuf },
    #[error("{path} is a bare git repository; run s3dock build in a checkout with a working tree")]
    Bare { path: PathBuf },
    #[error("the git repository at {workdir} has no commits yet; commit your files first (git add -A && git commit)")]
    NoCommits { workdir: PathBuf },
    #[error(
        "tracked files have uncommitted changes ({}{}); commit or stash them, untracked files do not block a build",
        files.join(", "),
        more_suffix(*more)
    )]
    Dirty {
        /// Up to [`MAX_LISTED_FILES`] changed paths, relative to the working tree root.
        files: Vec<String>,
        /// How many more changed paths there are.
        more: usize,
    },
    #[error("git failed {context}: {message}; check the repository with `git status`")]
    Git { context: String, message: String },
}

fn more_suffix(more: usize) -> String {
    if more == 0 { String::new() } else { format!(" and {more} more") }
}

fn git_error(context: &str, e: git2::Error) -> GitError {
    GitError::Git { context: context.to_owned(), message: e.message().to_owned() }
}

/// Changes that make the working tree differ from HEAD, for tracked files. `WT_NEW` (untracked)
/// and `IGNORED` are deliberately absent.
fn dirty_mask() -> Status {
    Status::INDEX_NEW
        | Status::INDEX_MODIFIED
        | Status::INDEX_DELETED
        | Status::INDEX_RENAMED
        | Status::INDEX_TYPECHANGE
        | Status::WT_MODIFIED
        | Status::WT_DELETED
        | Status::WT_TYPECHANGE
        | Status::WT_RENAMED
        | Status::CONFLICTED
}

/// Every tracked path whose working tree or index content differs from HEAD, sorted.
fn changed_files(repo: &Repository) -> Result<Vec<String>, GitError> {
    let mut opts = StatusOptions::new();
    opts.include_untracked(false).include_ignored(false).include_unmodified(false);
    let statuses = repo.statuses(Some(&mut opts)).map_err(|e| git_error("reading the working tree status", e))?;
    let mut files: Vec<String> = statuses
        .iter()
        .filter(|s| s.status().intersects(dirty_mask()))
        .map(|s| String::from_utf8_lossy(s.path_bytes()).into_owned())
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// A remote URL fit for an image label: any `user[:password]@` of a `scheme://` URL removed.
pub fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if let Some((_, host)) = authority.rsplit_once('@') {
            return format!("{scheme}://{host}{path}");
        }
    }
    url.to_owned()
}

/// The git facts of the repository containing `dir` (which may be any folder inside it).
/// Refuses a repository without commits or whose tracked files differ from HEAD. A detached
/// HEAD is fine.
pub fn inspect_repo(dir: &Path) -> Result<GitFacts, GitError> {
    let repo = match Repository::discover(dir) {
        Ok(repo) => repo,
        Err(e) if e.code() == ErrorCode::NotFound => return Err(GitError::NotARepository { path: dir.to_path_buf() }),
        Err(e) => return Err(git_error("opening the repository", e)),
    };
    let Some(workdir) = repo.workdir().map(Path::to_path_buf) else {
        return Err(GitError::Bare { path: repo.path().to_path_buf() });
    };
    let head = match repo.head() {
        Ok(head) => head,
        Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => {
            return Err(GitError::NoCommits { workdir });
        }
        Err(e) => return Err(git_error("reading HEAD", e)),
    };
    let commit = head.peel_to_commit().map_err(|e| git_error("reading the HEAD commit", e))?;

    let mut files = changed_files(&repo)?;
    if !files.is_empty() {
        let more = files.len().saturating_sub(MAX_LISTED_FILES);
        files.truncate(MAX_LISTED_FILES);
        return Err(GitError::Dirty { files, more });
    }

    let id = commit.id().to_string();
    // Git stores the committer time as seconds since the epoch plus the committer's offset;
    // the seconds alone are the UTC instant.
    let seconds = commit.committer().when().seconds();
    let committed_at = DateTime::from_timestamp(seconds, 0).ok_or_else(|| GitError::Git {
        context: "reading the HEAD commit".into(),
        message: format!("commit {id} has an impossible committer time ({seconds})"),
    })?;
    let tag = ImageTag::from_commit(committed_at, &id)
        .map_err(|e| GitError::Git { context: "deriving the image tag".into(), message: e.to_string() })?;
    let source_url = match repo.find_remote("origin") {
        Ok(remote) => remote.url().map(strip_credentials),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(git_error("reading the origin remote", e)),
    };
    Ok(GitFacts { commit: id, committed_at, tag, source_url, workdir })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use git2::{IndexAddOption, Oid, Signature, Time};

    /// 2025-07-21T23:18:59+02:00, i.e. 21:18:59 UTC.
    pub(crate) const WHEN: i64 = 1_753_132_739;
    pub(crate) const OFFSET_MINUTES: i32 = 120;

    /// Stages everything (like `git add -A`) and commits it at `WHEN` with a +02:00 offset.
    pub(crate) fn commit_all(repo: &Repository, message: &str) -> Oid {
        let mut index = repo.index().unwrap();
        index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::new("Tester", "tester@example.com", &Time::new(WHEN, OFFSET_MINUTES)).unwrap();
        let parents: Vec<_> = repo.head().ok().and_then(|h| h.peel_to_commit().ok()).into_iter().collect();
        let parents: Vec<_> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap()
    }

    fn repo_with_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Repository, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        for (name, body) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        let oid = commit_all(&repo, "first");
        (dir, repo, oid)
    }

    #[test]
    fn clean_repository_gives_the_utc_tag() {
        let (dir, repo, oid) = repo_with_files(&[("a.txt", "a"), ("sub/b.txt", "b")]);
        repo.remote("origin", "https://builder:s3cr3t@example.com/team/app.git").unwrap();
        let facts = inspect_repo(&dir.path().join("sub")).unwrap();
        assert_eq!(facts.commit, oid.to_string());
        assert_eq!(facts.committed_at.to_rfc3339(), "2025-07-21T21:18:59+00:00");
        assert_eq!(facts.tag.to_string(), format!("20250721-2118-{}", &oid.to_string()[..7]));
        assert_eq!(facts.source_url.as_deref(), Some("https://example.com/team/app.git"));
        assert_eq!(facts.workdir, dir.path());
    }

    #[test]
    fn modified_tracked_files_refuse() {
        let (dir, _repo, _) = repo_with_files(&[("a.txt", "a"), ("b.txt", "b")]);
        std::fs::write(dir.path().join("b.txt"), "changed").unwrap();
        std::fs::remove_file(dir.path().join("a.txt")).unwrap();
        match inspect_repo(dir.path()) {
            Err(GitError::Dirty { files, more }) => {
                assert_eq!(files, ["a.txt", "b.txt"]);
                assert_eq!(more, 0);
            }
            other => panic!("expected Dirty, got {other:?}"),
        }
    }

    #[test]
    fn staged_only_changes_refuse() {
        let (dir, repo, _) = repo_with_files(&[("a.txt", "a")]);
        std::fs::write(dir.path().join("new.txt"), "new").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("new.txt")).unwrap();
        index.write().unwrap();
        let err = inspect_repo(dir.path()).unwrap_err();
        assert!(matches!(&err, GitError::Dirty { files, .. } if files == &["new.txt"]), "{err:?}");
        assert!(err.to_string().contains("commit or stash"), "{err}");
    }

    #[test]
    fn untracked_and_ignored_files_do_not_block() {
        let (dir, _repo, oid) = repo_with_files(&[("a.txt", "a"), (".gitignore", "*.log\n")]);
        std::fs::write(dir.path().join("notes.txt"), "untracked").unwrap();
        std::fs::write(dir.path().join("debug.log"), "ignored").unwrap();
        std::fs::create_dir(dir.path().join("newdir")).unwrap();
        std::fs::write(dir.path().join("newdir/x"), "untracked too").unwrap();
        assert_eq!(inspect_repo(dir.path()).unwrap().commit, oid.to_string());
    }

    #[test]
    fn detached_head_works() {
        let (dir, repo, first) = repo_with_files(&[("a.txt", "a")]);
        std::fs::write(dir.path().join("a.txt"), "second").unwrap();
        let second = commit_all(&repo, "second");
        assert_ne!(first, second);
        repo.set_head_detached(first).unwrap();
        repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).unwrap();
        assert!(repo.head_detached().unwrap());
        let facts = inspect_repo(dir.path()).unwrap();
        assert_eq!(facts.commit, first.to_string());
        assert_eq!(facts.source_url, None);
    }

    #[test]
    fn no_commits_and_no_repository() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect_repo(dir.path()).unwrap_err();
        assert!(matches!(err, GitError::NotARepository { .. }), "{err:?}");
        assert!(err.to_string().contains("git init && git commit"), "{err}");

        Repository::init(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        let err = inspect_repo(dir.path()).unwrap_err();
        assert!(matches!(err, GitError::NoCommits { .. }), "{err:?}");
        assert!(err.to_string().contains("commit your files first"), "{err}");
    }

    #[test]
    fn bare_repositories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        Repository::init_bare(dir.path()).unwrap();
        assert!(matches!(inspect_repo(dir.path()), Err(GitError::Bare { .. })));
    }

    #[test]
    fn dirty_lists_at_most_ten_files() {
        let names: Vec<String> = (0..13).map(|i| format!("f{i:02}.txt")).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let (dir, _repo, _) = repo_with_files(&files);
        for n in &names {
            std::fs::write(dir.path().join(n), "changed").unwrap();
        }
        match inspect_repo(dir.path()) {
            Err(GitError::Dirty { files, more }) => {
                assert_eq!(files.len(), MAX_LISTED_FILES);
                assert_eq!(files[0], "f00.txt");
                assert_eq!(more, 3);
                let msg = GitError::Dirty { files, more }.to_string();
                assert!(msg.contains("and 3 more"), "{msg}");
            }
            other => panic!("expected Dirty, got {other:?}"),
        }
    }

    #[test]
    fn credentials_are_stripped_from_urls() {
        assert_eq!(strip_credentials("https://u:p@example.com/a/b.git"), "https://example.com/a/b.git");
        assert_eq!(strip_credentials("https://token@example.com/a.git"), "https://example.com/a.git");
        assert_eq!(strip_credentials("ssh://git@example.com:22/a.git"), "ssh://example.com:22/a.git");
        assert_eq!(strip_credentials("https://example.com/a@b.git"), "https://example.com/a@b.git");
        assert_eq!(strip_credentials("git@example.com:team/app.git"), "git@example.com:team/app.git");
        assert_eq!(strip_credentials("/srv/git/app.git"), "/srv/git/app.git");
    }
}
