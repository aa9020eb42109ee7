//! Progress bars on stderr for long steps; hidden when stderr is not a terminal or with `--json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Makes progress bars, all visible or all hidden.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    visible: bool,
}

impl Progress {
    /// Visible only if `want` and stderr is a terminal.
    pub fn new(want: bool) -> Self {
        Self {
            visible: want && std::io::stderr().is_terminal(),
        }
    }

    fn bar(&self, len: u64, template: &str, msg: &str) -> ProgressBar {
        if !self.visible {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A bar counting bytes (file creation, warm-up).
    pub fn bytes(&self, total: u64, msg: &str) -> ProgressBar {
        self.bar(
            total,
            "{msg:<14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            msg,
        )
    }

    /// A bar counting milliseconds of a timed phase.
    pub fn timed(&self, millis: u64, msg: &str) -> ProgressBar {
        self.bar(millis.max(1), "{msg:<14} [{bar:30}] {elapsed}", msg)
    }

    /// A bar counting operations of a phase with a fixed op count.
    pub fn ops(&self, ops: u64, msg: &str) -> ProgressBar {
        self.bar(ops.max(1), "{msg:<14} [{bar:30}] {pos}/{len} ops", msg)
    }
}
