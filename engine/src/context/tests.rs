//! Unit tests of `context`.

use super::*;

fn excluded(patterns: &[&str], path: &str) -> bool {
    let text = patterns.join("\n");
    IgnoreMatcher::new(&parse_dockerignore(&text)).unwrap().matches(path)
}

#[test]
fn clean_is_go_filepath_clean() {
    for (input, want) in [
        ("", "."),
        (".", "."),
        ("a/b", "a/b"),
        ("a//b/", "a/b"),
        ("./a/./b", "a/b"),
        ("a/../b", "b"),
        ("a/b/../../..", ".."),
        ("../a", "../a"),
        ("/../a", "/a"),
        ("/", "/"),
        ("//a", "/a"),
    ] {
        assert_eq!(clean_path(input), want, "{input:?}");
    }
}

#[test]
fn dockerignore_files_are_read_like_the_cli() {
    let text = "\u{feff}# a comment\n  /abs/path  \n!/keep\n\n./x/../y\n   # not a comment: indented\ndir/\n! spaced\n";
    assert_eq!(parse_dockerignore(text), ["abs/path", "!keep", "y", "# not a comment: indented", "dir", "!spaced"]);
    assert!(IgnoreMatcher::new(&parse_dockerignore("!\n")).is_err());
    assert!(IgnoreMatcher::new(&parse_dockerignore("a[\n")).is_err());
}

/// Docker's documented `.dockerignore` examples and moby's patternmatcher tests.
#[test]
fn docker_documented_patterns() {
    let table: &[(&[&str], &str, bool)] = &[
        // docs.docker.com: "*/temp*", "*/*/temp*", "temp?"
        (&["*/temp*"], "somedir/temporary.txt", true),
        (&["*/temp*"], "somedir/temp", true),
        (&["*/temp*"], "somedir/temp/inside.txt", true),
        (&["*/temp*"], "temporary.txt", false),
        (&["*/temp*"], "a/b/temporary.txt", false),
        (&["*/*/temp*"], "somedir/subdir/temporary.txt", true),
        (&["*/*/temp*"], "somedir/temporary.txt", false),
        (&["temp?"], "tempa", true),
        (&["temp?"], "tempab", false),
        (&["temp?"], "dir/tempa", false),
        // "**" across segments
        (&["**/*.go"], "main.go", true),
        (&["**/*.go"], "cmd/app/main.go", true),
        (&["**/*.go"], "main.go.txt", false),
        // exceptions, last match wins
        (&["*.md", "!README.md"], "README.md", false),
        (&["*.md", "!README.md"], "CHANGES.md", true),
        (&["*.md", "!README*.md", "README-secret.md"], "README-secret.md", true),
        (&["*.md", "!README*.md", "README-secret.md"], "README-public.md", false),
        (&["*.md", "README-secret.md", "!README*.md"], "README-secret.md", false),
        (&["!README.md", "*.md"], "README.md", true),
        // a parent directory matching excludes everything below it
        (&["docs"], "docs/a/b.txt", true),
        (&["docs", "!docs/keep.md"], "docs/keep.md", false),
        (&["docs", "!docs/keep.md"], "docs/other.md", true),
        (&["docs/"], "docs/x", true),
        (&["/docs"], "docs/x", true),
        (&["./docs/../build"], "build/out", true),
        // moby patternmatcher table
        (&["**"], "file", true),
        (&["**"], "dir/file", true),
        (&["**/"], "dir/file", true),
        (&["**/file"], "file", true),
        (&["**/file"], "dir/file", true),
        (&["**/file"], "dir/dir/file", true),
        (&["**/file*"], "dir/dir/file.txt", true),
        (&["**/file*txt"], "dir/dir/file.txt", true),
        (&["**/file*.txt"], "dir/dir/file.txt", true),
        (&["**/**/*.txt"], "dir/dir/file.txt", true),
        (&["**/**/*.txt2"], "dir/dir/file.txt", false),
        (&["**/*.txt"], "file.txt", true),
        (&["**/**/*.txt"], "file.txt", true),
        (&["a**/*.txt"], "a/file.txt", true),
        (&["a**/*.txt"], "a/dir/file.txt", true),
        (&["a**/*.txt"], "a/dir/dir/file.txt", true),
        (&["a/*.txt"], "a/dir/file.txt", false),
        (&["a/*.txt"], "a/file.txt", true),
        (&["a/*.txt**"], "a/file.txt", true),
        (&["a[b-d]e"], "ae", false),
        (&["a[b-d]e"], "ace", true),
        (&["a[b-d]e"], "aae", false),
        (&["a[^b-d]e"], "aze", true),
        (&["a[^b-d]e"], "ace", false),
        (&["a[]x]e"], "a]e", true),
        (&["a[*]e"], "a*e", true),
        (&["a[*]e"], "abe", false),
        (&[".*"], ".foo", true),
        (&[".*"], "foo", false),
        (&["abc.def"], "abcdef", false),
        (&["abc.def"], "abc.def", true),
        (&["abc.def"], "abcZdef", false),
        (&["abc?def"], "abcZdef", true),
        (&["abc?def"], "abcdef", false),
        (&["a\\\\"], "a\\", true),
        (&["**/foo/bar"], "foo/bar", true),
        (&["**/foo/bar"], "dir/foo/bar", true),
        (&["**/foo/bar"], "dir/dir2/foo/bar", true),
        (&["abc/**"], "abc", false),
        (&["abc/**"], "abc/def", true),
        (&["abc/**"], "abc/def/ghi", true),
        (&["**/.foo"], ".foo", true),
        (&["**/.foo"], "bar.foo", false),
        (&["a(b)c/def"], "a(b)c/def", true),
        (&["a(b)c/def"], "a(b)c/xyz", false),
        (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
        (
            &["dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        (&["dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", true),
        // nothing excludes the context root itself
        (&["**"], ".", false),
    ];
    for (patterns, path, want) in table {
        assert_eq!(excluded(patterns, path), *want, "patterns {patterns:?} path {path:?}");
    }
}

#[test]
fn exceptions_below_an_excluded_directory_are_found() {
    let m = IgnoreMatcher::new(&parse_dockerignore("build\n!build/keep/me.txt\n")).unwrap();
    assert!(m.has_exceptions());
    assert!(m.exception_inside("build"));
    assert!(m.exception_inside("build/keep"));
    assert!(!m.exception_inside("build/other"));
    assert!(!m.exception_inside("bui"));
}

async fn entries_of(reader: BoxReader) -> Vec<(String, tar::EntryType, u32, Vec<u8>, Option<String>)> {
    let bytes = s3dock_core::store::read_to_vec(reader).await.unwrap();
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_owned();
        let ty = entry.header().entry_type();
        let mode = entry.header().mode().unwrap();
        let link = entry.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
        assert_eq!(entry.header().uid().unwrap(), 0);
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((path, ty, mode, data, link));
    }
    out
}

fn write(root: &Path, rel: &str, data: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[tokio::test]
async fn context_tar_honours_dockerignore_and_keeps_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "Dockerfile", "FROM scratch\n");
    write(
        root,
        ".dockerignore",
        "# ignore\nsecret.txt\n*.log\n!keep.log\nbuild\n!build/dist\nDockerfile\n.dockerignore\n",
    );
    write(root, "app/main.sh", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(root.join("app/main.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(root, "secret.txt", "s3cr3t");
    write(root, "debug.log", "noise");
    write(root, "keep.log", "kept");
    write(root, "build/tmp/obj.o", "o");
    write(root, "build/dist/app.bin", "bin");
    std::os::unix::fs::symlink("app/main.sh", root.join("run")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("agent.sock")).unwrap();

    let (reader, name) = context_tar(root, &root.join("Dockerfile")).unwrap();
    assert_eq!(name, "Dockerfile");
    let entries = entries_of(reader).await;
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [".dockerignore", "Dockerfile", "app", "app/main.sh", "build/dist", "build/dist/app.bin", "keep.log", "run"]
    );
    let script = entries.iter().find(|e| e.0 == "app/main.sh").unwrap();
    assert_eq!(script.2 & 0o777, 0o755);
    assert_eq!(script.3, b"#!/bin/sh\necho hi\n");
    let link = entries.iter().find(|e| e.0 == "run").unwrap();
    assert_eq!(link.1, tar::EntryType::Symlink);
    assert_eq!(link.4.as_deref(), Some("app/main.sh"));
    // The .dockerignore goes out unchanged.
    let ignore = entries.iter().find(|e| e.0 == ".dockerignore").unwrap();
    assert_eq!(ignore.3, std::fs::read(root.join(".dockerignore")).unwrap());

    // Same tree, same bytes.
    let a = s3dock_core::store::read_to_vec(context_tar(root, &root.join("Dockerfile")).unwrap().0).await.unwrap();
    let b = s3dock_core::store::read_to_vec(context_tar(root, &root.join("Dockerfile")).unwrap().0).await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn a_dockerfile_in_an_excluded_directory_is_still_sent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "docker/web/Dockerfile", "FROM scratch\n");
    write(root, "docker/other", "x");
    write(root, ".dockerignore", "docker\n");
    let (reader, name) = context_tar(root, &root.join("docker/web/Dockerfile")).unwrap();
    assert_eq!(name, "docker/web/Dockerfile");
    let names: Vec<String> = entries_of(reader).await.into_iter().map(|e| e.0).collect();
    assert_eq!(names, [".dockerignore", "docker/web/Dockerfile"]);
}

#[tokio::test]
async fn a_dockerfile_outside_the_context_gets_a_generated_name() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Dockerfile.web", "FROM scratch\nCOPY . /\n");
    let root = dir.path().join("ctx");
    write(&root, "index.html", "<h1>hi</h1>");
    let (reader, name) = context_tar(&root, &dir.path().join("Dockerfile.web")).unwrap();
    assert_eq!(name, EXTERNAL_DOCKERFILE_NAME);
    let entries = entries_of(reader).await;
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, [EXTERNAL_DOCKERFILE_NAME, ".dockerignore", "index.html"]);
    assert_eq!(entries[0].3, b"FROM scratch\nCOPY . /\n");
    assert_eq!(String::from_utf8_lossy(&entries[1].3), format!(".dockerignore\n{EXTERNAL_DOCKERFILE_NAME}\n"));

    // An existing .dockerignore is extended, not replaced.
    write(&root, ".dockerignore", "*.tmp");
    let (reader, _) = context_tar(&root, &dir.path().join("Dockerfile.web")).unwrap();
    let entries = entries_of(reader).await;
    let ignore = entries.iter().find(|e| e.0 == ".dockerignore").unwrap();
    assert_eq!(String::from_utf8_lossy(&ignore.3), format!("*.tmp\n{EXTERNAL_DOCKERFILE_NAME}\n"));
}

#[test]
fn bad_inputs_are_refused_before_streaming() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "file", "x");
    let missing = context_tar(dir.path(), &dir.path().join("Dockerfile")).err().unwrap();
    assert!(matches!(missing, ContextError::DockerfileNotFound { .. }), "{missing:?}");
    let not_dir = context_tar(&dir.path().join("file"), &dir.path().join("file")).err().unwrap();
    assert!(matches!(not_dir, ContextError::NotADirectory { .. }), "{not_dir:?}");
    let absent = context_tar(&dir.path().join("absent"), &dir.path().join("file")).err().unwrap();
    assert!(matches!(absent, ContextError::NotADirectory { .. }), "{absent:?}");
    write(dir.path(), "Dockerfile", "FROM scratch");
    write(dir.path(), ".dockerignore", "[unclosed\n");
    let bad = context_tar(dir.path(), &dir.path().join("Dockerfile")).err().unwrap();
    assert!(matches!(bad, ContextError::Dockerignore { .. }), "{bad:?}");
}

#[tokio::test]
async fn a_large_context_streams_through_the_bounded_channel() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Dockerfile", "FROM scratch\n");
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let (reader, _) = context_tar(dir.path(), &dir.path().join("Dockerfile")).unwrap();
    let entries = entries_of(reader).await;
    let got = entries.iter().find(|e| e.0 == "big.bin").unwrap();
    assert!(got.3 == big, "big.bin differs after the round trip");
}
