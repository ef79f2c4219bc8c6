//! What commands print: a result with both renderings (a human one for stdout, a JSON
//! document), plus hints and warnings for stderr. The choice between them is made once, in
//! [`emit`], so every command supports `--json` the same way.
//!
//! Text from the bucket is untrusted: every human-readable cell and message is passed through
//! [`clean`], so a hostile document cannot send escape sequences to a terminal.

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::exit::{self, CliError};

/// A command's result.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The `--json` document (an object).
    pub json: Value,
    /// What goes to stdout without `--json`; ends with a newline unless empty.
    pub text: String,
    /// Hints for stderr after the result (hidden by `-q`).
    pub notes: Vec<String>,
    /// Problems that did not fail the command: always on stderr, and in the JSON document as
    /// `"warnings"`.
    pub warnings: Vec<String>,
    /// A result that is printed in full but still fails the command (`doctor` with a failed
    /// check): the exit code of this class.
    pub exit: Option<s3dock_core::ErrorKind>,
}

impl Output {
    pub fn new(json: Value, text: impl Into<String>) -> Self {
        Output { json, text: text.into(), notes: Vec::new(), warnings: Vec::new(), exit: None }
    }

    /// Prints as a result, exits with the code of `kind`.
    pub fn exit_with(mut self, kind: s3dock_core::ErrorKind) -> Self {
        self.exit = Some(kind);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn warn(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    pub fn warn_all(mut self, warnings: impl IntoIterator<Item = String>) -> Self {
        self.warnings.extend(warnings);
        self
    }
}

/// How results are shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    pub json: bool,
    pub quiet: bool,
}

/// Prints a command's result or error and returns the process exit code.
pub fn emit(result: Result<Output, CliError>, mode: Mode, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let printed = match &result {
        Ok(output) => print_output(output, mode, out, err),
        Err(e) => print_error(e, mode, out, err),
    };
    let code = |result: Result<Output, CliError>| match result {
        Ok(o) => o.exit.map_or(exit::SUCCESS, exit::code),
        Err(e) => e.exit_code(),
    };
    match printed {
        Ok(()) => code(result),
        // The reader went away (`s3dock list apps | head -1`): not a failure of ours.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => code(result),
        Err(e) => {
            let _ = writeln!(err, "error: cannot write the output: {e}");
            exit::code(s3dock_core::ErrorKind::Internal)
        }
    }
}

fn print_output(output: &Output, mode: Mode, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<()> {
    if mode.json {
        let mut doc = output.json.clone();
        if !output.warnings.is_empty()
            && let Some(obj) = doc.as_object_mut()
        {
            obj.insert("warnings".into(), Value::from(output.warnings.clone()));
        }
        write_json(out, &doc)?;
    } else {
        out.write_all(output.text.as_bytes())?;
    }
    out.flush()?;
    for w in &output.warnings {
        writeln!(err, "warning: {}", clean(w))?;
    }
    if !mode.quiet {
        for n in &output.notes {
            writeln!(err, "{}", clean(n))?;
        }
    }
    Ok(())
}

fn print_error(e: &CliError, mode: Mode, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<()> {
    if mode.json {
        write_json(out, &e.to_json())?;
        out.flush()?;
    }
    writeln!(err, "error: {}", clean(e.message()))
}

fn write_json(out: &mut dyn Write, doc: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, doc)?;
    out.write_all(b"\n")
}

/// Turns a clap error into the CLI's: help and version go to stdout with exit 0; usage errors
/// print clap's message (and, with `--json`, the JSON error document) and exit 2.
pub fn emit_parse_error(e: &clap::Error, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    use clap::error::ErrorKind as K;
    if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion) {
        // clap picks stdout and colours for help itself; nothing untrusted is in it.
        let _ = e.print();
        return exit::SUCCESS;
    }
    if json {
        let cli_error = CliError::usage(clap_message(e));
        let _ = write_json(out, &cli_error.to_json());
    }
    // clap's own rendering keeps its usage line and the `--help` hint; the offending value
    // is echoed in it, so control characters are escaped (newlines of the layout kept).
    let rendered = e.render().to_string();
    let _ = write!(err, "{}", rendered.split('\n').map(clean).collect::<Vec<_>>().join("\n"));
    let code = e.exit_code();
    u8::try_from(code).unwrap_or(2)
}

/// clap's message on one line: its first paragraph without the `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let para: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let joined = para.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

/// Escapes control characters (terminal escapes, newlines) of untrusted text.
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for cells in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in cells.iter().enumerate().take(n) {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                if i + 1 < n {
                    line.extend(std::iter::repeat_n(' ', widths[i].saturating_sub(c.chars().count())));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `2025-07-22T10:18:00Z`.
/// `1.5 GiB`, `312 MiB`, `4.0 KiB`, `17 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[i])
    } else {
        format!("{v:.0} {}", UNITS[i])
    }
}

pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `-` for a missing value in a table.
pub fn or_dash(s: Option<impl ToString>) -> String {
    s.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::CliError;

    fn run(result: Result<Output, CliError>, mode: Mode) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = emit(result, mode, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn human_and_json_results() {
        let o = Output::new(serde_json::json!({"a": 1}), "A 1\n").note("hint").warn("careful");
        let (code, out, err) = run(Ok(o.clone()), Mode::default());
        assert_eq!((code, out.as_str()), (0, "A 1\n"));
        assert_eq!(err, "warning: careful\nhint\n");
        let (_, out, err) = run(Ok(o.clone()), Mode { json: true, quiet: true });
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "warnings": ["careful"]}));
        assert_eq!(err, "warning: careful\n", "quiet hides hints, never warnings");
    }

    #[test]
    fn errors_in_both_modes() {
        let e = CliError::conflict("tag exists; pass --force");
        let (code, out, err) = run(Err(e.clone()), Mode::default());
        assert_eq!((code, out.as_str(), err.as_str()), (4, "", "error: tag exists; pass --force\n"));
        let (code, out, err) = run(Err(e), Mode { json: true, quiet: false });
        assert_eq!(code, 4);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"]["kind"], "conflict");
        assert_eq!(v["error"]["exit_code"], 4);
        assert_eq!(err, "error: tag exists; pass --force\n");
    }

    #[test]
    fn tables_align_and_escape() {
        let mut t = Table::new(&["NAME", "VALUE", "NOTE"]);
        t.row(vec!["a".into(), "1".into(), "".into()]);
        t.row(vec!["longer".into(), "\u{1b}[31mred".into(), "x".into()]);
        assert_eq!(t.render(), "NAME    VALUE          NOTE\na       1\nlonger  \\u{1b}[31mred  x\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
