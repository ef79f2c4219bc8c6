//! Colour, on terminals only, and never when `NO_COLOR` is set (https://no-color.org):
//! `NO_COLOR` (non-empty) turns it off whatever else says; `CLICOLOR_FORCE` (non-empty, not
//! `0`) turns it on without a terminal; otherwise a terminal gets colour. clap's help follows
//! the same rules (anstream), and so do the log lines on stderr ([`colors_allowed`]).

/// The colours s3dock uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    Green,
    Yellow,
    Red,
    Dim,
    Bold,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Red => "31",
            Paint::Dim => "2",
            Paint::Bold => "1",
        }
    }
}

/// Whether to colour one output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    enabled: bool,
}

impl Style {
    pub fn plain() -> Self {
        Style { enabled: false }
    }

    pub fn coloured() -> Self {
        Style { enabled: true }
    }

    /// From the environment's `NO_COLOR` / `CLICOLOR_FORCE` and whether the stream is a terminal.
    pub fn detect(no_color: Option<&str>, clicolor_force: Option<&str>, is_terminal: bool) -> Self {
        Style { enabled: colors_allowed(no_color, clicolor_force, is_terminal) }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `text` in `paint`, or as it is without colour.
    pub fn paint(&self, text: &str, paint: Paint) -> String {
        if self.enabled { format!("\u{1b}[{}m{text}\u{1b}[0m", paint.code()) } else { text.to_owned() }
    }
}

/// The rule: `NO_COLOR` beats `CLICOLOR_FORCE`, which beats the terminal test. Empty values
/// count as unset.
pub fn colors_allowed(no_color: Option<&str>, clicolor_force: Option<&str>, is_terminal: bool) -> bool {
    if no_color.is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if clicolor_force.is_some_and(|v| !v.is_empty() && v != "0") {
        return true;
    }
    is_terminal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_wins() {
        assert!(!colors_allowed(Some("1"), Some("1"), true));
        assert!(colors_allowed(Some(""), None, true), "an empty NO_COLOR is unset");
        assert!(colors_allowed(None, Some("1"), false));
        assert!(!colors_allowed(None, Some("0"), false));
        assert!(!colors_allowed(None, None, false));
        assert_eq!(Style::plain().paint("ok", Paint::Green), "ok");
        assert_eq!(Style::coloured().paint("ok", Paint::Green), "\u{1b}[32mok\u{1b}[0m");
    }
}
