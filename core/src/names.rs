//! Validated identifiers. Every name that can reach a bucket key, a Docker reference or a
//! queue is one of these newtypes, and the only way to build one is to parse it: an invalid
//! name is refused at the edge with a message that says what a valid one looks like.
//!
//! Rules (shared by apps, environments and agent ids): lowercase ASCII letters and digits,
//! separated by single `.`, `_` or `-` runs (Docker's repository-name grammar, so an app name
//! is always a valid image repository), starting and ending with a letter or digit, at most
//! [`MAX_NAME_LEN`] characters. That excludes `/`, `..`, spaces, uppercase, control and
//! non-ASCII characters and the empty string by construction.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest app, environment or agent name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// The longest semantic version accepted (build metadata included).
pub const MAX_VERSION_LEN: usize = 128;
/// S3's own limit on key length, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a name was refused. The message always ends with what a valid name looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {shown}: {reason}; {hint}")]
pub struct NameError {
    pub kind: &'static str,
    /// The offending input, quoted and escaped so control characters stay visible.
    pub shown: String,
    pub reason: String,
    pub hint: &'static str,
}

impl NameError {
    fn new(kind: &'static str, input: &str, reason: impl Into<String>, hint: &'static str) -> Self {
        let mut shown: String = format!("{input:?}");
        if shown.len() > 80 {
            let cut = shown.char_indices().nth(60).map(|(i, _)| i).unwrap_or(shown.len());
            shown = format!("{}…\" ({} bytes)", &shown[..cut], input.len());
        }
        NameError { kind, shown, reason: reason.into(), hint }
    }
}

const NAME_HINT: &str = "use lowercase letters, digits and single '.', '_' or '-' between them (e.g. my-app, web.api), at most 64 characters";

/// Checks the shared name grammar; `kind` names the thing in the error.
fn check_name(kind: &'static str, s: &str) -> Result<(), NameError> {
    let err = |reason: String| Err(NameError::new(kind, s, reason, NAME_HINT));
    if s.is_empty() {
        return err("it is empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return err(format!("it is {} characters long", s.chars().count()));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return err(format!("it contains the control character {:?}", c));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
        return err(format!("it contains the non-ASCII character {c:?}"));
    }
    if s.contains('/') {
        return err("it contains '/'".into());
    }
    if s.contains("..") {
        return err("it contains '..'".into());
    }
    if s.contains(' ') {
        return err("it contains a space".into());
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return err("it contains uppercase letters".into());
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return err(format!("it contains {c:?}"));
    }
    let first = s.chars().next().unwrap_or('-');
    let last = s.chars().last().unwrap_or('-');
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return err("it must start and end with a letter or digit".into());
    }
    // Docker allows '-' runs and "__", but not mixed separator runs like "._" or ".-".
    let bytes = s.as_bytes();
    for w in bytes.windows(2) {
        let (a, b) = (w[0] as char, w[1] as char);
        let sep = |c: char| matches!(c, '.' | '_' | '-');
        if sep(a) && sep(b) && !(a == '-' && b == '-') && !(a == '_' && b == '_') {
            return err(format!("it contains the separator run {:?}", format!("{a}{b}")));
        }
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check_name($kind, s)?;
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// An application: the Docker repository name and the first folder under every prefix.
    AppName,
    "app name"
);
name_type!(
    /// A deployment environment (`staging`, `production`, ...): one pointer file per app.
    EnvName,
    "environment name"
);
name_type!(
    /// A host agent's identity, unique per (app, env): its registration file name.
    AgentId,
    "agent id"
);

/// A semantic version as users type it (`v1.2.0`, `1.2.0-rc.1+build.5`).
///
/// Versions compare by semver precedence; the bucket key always uses the canonical spelling
/// `v{semver}` (so `1.2.0` and `v1.2.0` are the same tag), while [`Version::as_typed`] keeps
/// the user's spelling for lookups in buckets written by the original tool, which used it
/// verbatim.
#[derive(Debug, Clone)]
pub struct Version {
    semver: semver::Version,
    typed: String,
}

const VERSION_HINT: &str = "use a semantic version such as v1.2.0, 1.2.0-rc.1 or v2.0.0+build.7";

impl Version {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = |reason: String| Err(NameError::new("version", s, reason, VERSION_HINT));
        if s.is_empty() {
            return err("it is empty".into());
        }
        if s.len() > MAX_VERSION_LEN {
            return err(format!("it is {} characters long (at most {MAX_VERSION_LEN})", s.chars().count()));
        }
        if let Some(c) = s.chars().find(|c| c.is_control() || !c.is_ascii() || *c == '/' || *c == ' ') {
            return err(format!("it contains {c:?}"));
        }
        let bare = s.strip_prefix('v').unwrap_or(s);
        match semver::Version::parse(bare) {
            Ok(v) => Ok(Version { semver: v, typed: s.to_owned() }),
            Err(e) => err(format!("it is not a semantic version ({e})")),
        }
    }

    /// The canonical spelling used in keys: `v` + the semver string.
    pub fn canonical(&self) -> String {
        format!("v{}", self.semver)
    }

    /// The spelling the user typed.
    pub fn as_typed(&self) -> &str {
        &self.typed
    }

    pub fn semver(&self) -> &semver::Version {
        &self.semver
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.semver == other.semver
    }
}
impl Eq for Version {}
impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.semver.hash(state)
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Version {
    /// Semver precedence; build metadata breaks ties so the order is total and stable.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.semver.cmp_precedence(&other.semver).then_with(|| self.semver.cmp(&other.semver))
    }
}
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}
impl FromStr for Version {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

/// The git-derived image tag `YYYYMMDD-HHMM-hash7`: the HEAD commit's committer time in UTC
/// and the first seven hex digits of its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageTag {
    /// Sorts chronologically first, then by hash, which is the order users expect.
    time: NaiveDateTime,
    hash7: String,
}

const TAG_HINT: &str = "an s3dock image tag looks like 20250721-2118-f7a5a27 (commit time in UTC, YYYYMMDD-HHMM, then 7 hex digits of the commit id); `s3dock build` makes one";

impl ImageTag {
    /// The length of `YYYYMMDD-HHMM-hash7`.
    pub const LEN: usize = 21;

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = |reason: &str| Err(NameError::new("image tag", s, reason, TAG_HINT));
        if s.len() != Self::LEN || !s.is_ascii() {
            return err("it is not of the form YYYYMMDD-HHMM-hash7");
        }
        let (date, rest) = s.split_at(8);
        let (time, hash) = (&rest[1..5], &rest[6..]);
        if &rest[0..1] != "-" || &rest[5..6] != "-" {
            return err("it is not of the form YYYYMMDD-HHMM-hash7");
        }
        if !hash.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
            return err("the commit hash must be 7 lowercase hex digits");
        }
        let Ok(d) = NaiveDate::parse_from_str(date, "%Y%m%d") else {
            return err("the date is not a valid YYYYMMDD");
        };
        if !date.chars().all(|c| c.is_ascii_digit()) || !time.chars().all(|c| c.is_ascii_digit()) {
            return err("the date and time must be digits");
        }
        let Ok(t) = NaiveTime::parse_from_str(time, "%H%M") else {
            return err("the time is not a valid HHMM");
        };
        Ok(ImageTag { time: NaiveDateTime::new(d, t), hash7: hash.to_owned() })
    }

    /// The tag of a commit: its committer time (any offset; converted to UTC) and id.
    pub fn from_commit(committed: DateTime<Utc>, commit_id_hex: &str) -> Result<Self, NameError> {
        let hash7: String = commit_id_hex.chars().take(7).collect::<String>().to_ascii_lowercase();
        Self::parse(&format!("{}-{}", committed.format("%Y%m%d-%H%M"), hash7))
    }

    /// `YYYYMMDD-HHMM`, the `git_time` field of the documents.
    pub fn time_str(&self) -> String {
        self.time.format("%Y%m%d-%H%M").to_string()
    }

    /// `YYYYMM`: the month folder of the image key.
    pub fn month(&self) -> String {
        self.time.format("%Y%m").to_string()
    }

    pub fn hash7(&self) -> &str {
        &self.hash7
    }

    /// The commit time (minute precision) in UTC.
    pub fn time(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.time)
    }
}

impl fmt::Display for ImageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.time_str(), self.hash7)
    }
}
impl FromStr for ImageTag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

/// `app:YYYYMMDD-HHMM-hash7`, the Docker reference of an s3dock image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    pub app: AppName,
    pub tag: ImageTag,
}

impl ImageRef {
    pub fn new(app: AppName, tag: ImageTag) -> Self {
        ImageRef { app, tag }
    }

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let Some((app, tag)) = s.rsplit_once(':') else {
            return Err(NameError::new(
                "image reference",
                s,
                "it has no ':'",
                "write APP:TAG, e.g. myapp:20250721-2118-f7a5a27",
            ));
        };
        Ok(ImageRef { app: AppName::parse(app)?, tag: ImageTag::parse(tag)? })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.app, self.tag)
    }
}
impl FromStr for ImageRef {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

/// A key relative to the store root (the bucket, or the bucket's configured prefix).
///
/// Keys built by [`crate::layout`] are always valid; keys arriving from outside (S3 events,
/// listings) are parsed here, which refuses absolute paths, `.`/`..` segments, empty segments
/// and control characters, so no key can escape a local store's directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

const KEY_HINT: &str = "object keys are relative paths such as images/app/202507/app-20250721-2118-f7a5a27.json";

impl ObjectKey {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = |reason: String| Err(NameError::new("object key", s, reason, KEY_HINT));
        if s.is_empty() {
            return err("it is empty".into());
        }
        if s.len() > MAX_KEY_LEN {
            return err(format!("it is {} bytes long (at most {MAX_KEY_LEN})", s.len()));
        }
        if s.starts_with('/') || s.ends_with('/') {
            return err("it starts or ends with '/'".into());
        }
        if s.contains('\\') {
            return err("it contains '\\'".into());
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return err(format!("it contains the control character {c:?}"));
        }
        for seg in s.split('/') {
            if seg.is_empty() {
                return err("it has an empty path segment".into());
            }
            if seg == "." || seg == ".." {
                return err(format!("it has a {seg:?} path segment"));
            }
        }
        Ok(ObjectKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last path segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl FromStr for ObjectKey {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_app_names() {
        for s in ["myapp", "my-app", "web.api", "a", "app_1", "a__b", "a--b", "0day", &"a".repeat(64)] {
            assert!(AppName::parse(s).is_ok(), "{s} should be valid");
        }
    }

    #[test]
    fn bad_app_names_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("a/b", "'/'"),
            ("a..b", "'..'"),
            ("..", "'..'"),
            ("my app", "space"),
            ("MyApp", "uppercase"),
            ("appé", "non-ASCII"),
            ("app\n", "control"),
            ("app\u{7}", "control"),
            ("-app", "start and end"),
            ("app-", "start and end"),
            (".hidden", "start and end"),
            ("a._b", "separator run"),
            ("a:b", "':'"),
        ];
        for (input, why) in cases {
            let e = AppName::parse(input).expect_err(input);
            let msg = e.to_string();
            assert!(msg.contains(why), "{input:?}: {msg}");
            assert!(msg.contains("use lowercase letters"), "{msg}");
        }
        let long = "a".repeat(300);
        let msg = AppName::parse(&long).unwrap_err().to_string();
        assert!(msg.contains("300 characters"), "{msg}");
        assert!(msg.len() < 400, "the message stays short: {msg}");
    }

    #[test]
    fn env_and_agent_share_the_grammar() {
        assert!(EnvName::parse("production").is_ok());
        assert!(EnvName::parse("Prod").is_err());
        assert!(AgentId::parse("host-1.eu").is_ok());
        assert!(AgentId::parse("host/1").is_err());
    }

    #[test]
    fn versions() {
        let v = Version::parse("v1.2.0").unwrap();
        assert_eq!(v.canonical(), "v1.2.0");
        assert_eq!(Version::parse("1.2.0").unwrap(), v);
        assert_eq!(Version::parse("1.2.0-rc.1+build.5").unwrap().canonical(), "v1.2.0-rc.1+build.5");
        for bad in [
            "",
            "v1",
            "1.2",
            "latest",
            "v1.2.0/x",
            "v1.2.0 ",
            "vv1.2.0",
            "1.2.0\n",
            &format!("1.0.0-{}", "a".repeat(200)),
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
        let mut vs: Vec<Version> = ["v1.10.0", "v1.2.0", "1.2.0-rc.1", "v1.1.5", "v2.0.0-alpha", "v1.2.0-beta"]
            .iter()
            .map(|s| Version::parse(s).unwrap())
            .collect();
        vs.sort();
        let got: Vec<String> = vs.iter().map(|v| v.canonical()).collect();
        assert_eq!(got, ["v1.1.5", "v1.2.0-beta", "v1.2.0-rc.1", "v1.2.0", "v1.10.0", "v2.0.0-alpha"]);
    }

    #[test]
    fn image_tags() {
        let t = ImageTag::parse("20250721-2118-f7a5a27").unwrap();
        assert_eq!(t.month(), "202507");
        assert_eq!(t.time_str(), "20250721-2118");
        assert_eq!(t.hash7(), "f7a5a27");
        assert_eq!(t.to_string(), "20250721-2118-f7a5a27");
        for bad in [
            "20250721-2118-F7A5A27",
            "20250732-2118-f7a5a27",
            "20250721-2518-f7a5a27",
            "20250721-2118-f7a5a2",
            "20250721-2118-f7a5a27x",
            "2025072-12118-f7a5a27",
            "latest",
            "20250721_2118_f7a5a27",
            "+0250721-2118-f7a5a27",
        ] {
            assert!(ImageTag::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tag_from_commit_is_utc() {
        let t = DateTime::parse_from_rfc3339("2025-07-21T23:18:59+02:00").unwrap().with_timezone(&Utc);
        let tag = ImageTag::from_commit(t, "F7A5A27E1234567890").unwrap();
        assert_eq!(tag.to_string(), "20250721-2118-f7a5a27");
    }

    #[test]
    fn image_refs() {
        let r = ImageRef::parse("my-app.web:20250721-2118-f7a5a27").unwrap();
        assert_eq!(r.app.as_str(), "my-app.web");
        assert_eq!(r.to_string(), "my-app.web:20250721-2118-f7a5a27");
        assert!(ImageRef::parse("myapp").is_err());
        assert!(ImageRef::parse("myapp:latest").is_err());
        assert!(ImageRef::parse("My/App:20250721-2118-f7a5a27").is_err());
    }

    #[test]
    fn object_keys() {
        assert!(ObjectKey::parse("images/a/202507/a-20250721-2118-f7a5a27.json").is_ok());
        assert!(ObjectKey::parse("incoming/x y+z.json").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/", "a\\b", "a\u{0}b", &"k".repeat(1025)] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
