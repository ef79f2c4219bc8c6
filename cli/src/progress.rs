//! Progress bars for transfers: on stderr, only when stderr is a terminal and neither `--json`
//! nor `-q` was given. The engine only counts bytes; a ticker task turns the counts into a bar,
//! so nothing in the transfer path knows about terminals.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use s3dock_core::transfer::Progress;

use crate::context::Context;

/// A bar following a byte counter until dropped or finished.
pub struct Bar {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// Starts a bar for `counter`; its total may be learned later.
    pub fn start(ctx: &Context, label: &str, counter: Progress) -> Bar {
        if ctx.flags.quiet || ctx.flags.json || !std::io::stderr().is_terminal() {
            return Bar { bar: None, ticker: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
        let style =
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_owned());
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let t = counter.total();
                if t > 0 && b.length() != Some(t) {
                    b.set_length(t);
                }
                let pos = counter.bytes();
                // The total of an export is an estimate (the image's size): never let the bar
                // claim more than 100%.
                if let Some(len) = b.length()
                    && pos > len
                {
                    b.set_length(pos);
                }
                b.set_position(pos);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar { bar: Some(bar), ticker: Some(ticker) }
    }

    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop();
    }
}
