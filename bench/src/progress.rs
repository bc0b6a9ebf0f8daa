//! What a run shows while it goes: progress bars and one-line messages on stderr (the bars are
//! hidden with `--no-progress`; the messages are printed either way).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The run's bars and messages.
pub struct Progress {
    multi: MultiProgress,
    shown: bool,
}

impl Progress {
    pub fn new(shown: bool) -> Self {
        let multi = MultiProgress::with_draw_target(if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Self { multi, shown }
    }

    /// One line on stderr, above the bars when they are shown.
    pub fn say(&self, text: String) {
        if self.shown {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// A new bar of `len` steps named `label`.
    pub fn bar(&self, len: u64, label: &str) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>22} [{bar:40}] {pos:>9}/{len:9} {per_sec:>14} {msg}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        pb.set_prefix(label.to_string());
        pb
    }
}
