//! The indicatif progress bar behind the library's `Progress` trait. It draws
//! on stderr only when stderr is a terminal, so cron logs stay clean.

use std::io::IsTerminal;

use imgstore_store::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar on stderr, or nothing.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar unless `quiet` or stderr is not a terminal.
    pub fn new(quiet: bool) -> Bar {
        let show = !quiet && std::io::stderr().is_terminal();
        Bar {
            bar: show.then(|| ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())),
        }
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        bar.reset();
        let style = match total {
            Some(t) => {
                bar.set_length(t);
                ProgressStyle::with_template(
                    "{msg:>4} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
            }
            None => ProgressStyle::with_template("{msg:>4} {spinner} {bytes} {bytes_per_sec}"),
        };
        bar.set_style(style.expect("template is valid").progress_chars("=> "));
        bar.set_message(what.to_string());
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
