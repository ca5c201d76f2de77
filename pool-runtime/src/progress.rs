//! Progress reporting for long calls: a plain hook, and with the
//! `progress` feature an `indicatif` bar on stderr.

use std::sync::Arc;

/// Called with (items done, items in total when known).
pub(crate) type ProgressHook = Arc<dyn Fn(usize, Option<usize>) + Send + Sync>;

/// Reports one call's progress to its hook and bar.
pub(crate) struct Reporter {
    hook: Option<ProgressHook>,
    total: Option<usize>,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    /// `bar` draws a progress bar (feature `progress`; only when stderr is
    /// a terminal).
    pub(crate) fn new(hook: Option<ProgressHook>, total: Option<usize>, bar: bool) -> Reporter {
        #[cfg(feature = "progress")]
        let bar = bar.then(|| make_bar(total));
        #[cfg(not(feature = "progress"))]
        let _ = bar;
        Reporter {
            hook,
            total,
            #[cfg(feature = "progress")]
            bar,
        }
    }

    /// The call's item count, when known.
    pub(crate) fn total(&self) -> Option<usize> {
        self.total
    }

    /// `done` items have come back.
    pub(crate) fn update(&self, done: usize) {
        if let Some(hook) = &self.hook {
            hook(done, self.total);
        }
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        }
    }

    /// The call is over.
    pub(crate) fn finish(&self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(feature = "progress")]
fn make_bar(total: Option<usize>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    // A hidden target when stderr is not a terminal: nothing is written.
    let target = ProgressDrawTarget::stderr();
    let (bar, template) = match total {
        Some(n) => (
            ProgressBar::with_draw_target(Some(n as u64), target),
            "{bar:40} {pos}/{len} items  {per_sec}  ETA {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, target),
            "{spinner} {pos} items  {per_sec}  {elapsed}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
