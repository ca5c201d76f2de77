//! Progress reporting for long calls: a plain hook, and a status line on
//! stderr when stderr is a terminal: with the `progress` feature an
//! `indicatif` bar, without it a plain text line with the same numbers.
//!
//! The line is drawn on the terminal's last row, below a scrolling region
//! made of the rows above it (as `apt` draws its progress): what the program
//! and its workers print scrolls inside that region and never tears the
//! line, although the workers are other processes writing to the same
//! terminal, which no in-process lock could order. Each redraw is one
//! `write` that saves the cursor, draws on the last row and restores the
//! cursor, so a worker's line lands entirely before or after it. The line
//! is redrawn on a steady tick, so elapsed time, rate and ETA move while a
//! slow item runs.
//!
//! If SIGINT (Ctrl-C) or SIGTERM ends the process while a line is shown,
//! a handler first gives the terminal its last row back (see
//! [`on_signal`]), then lets the signal do what it did before.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Called with (items done, items in total when known).
pub(crate) type ProgressHook = Arc<dyn Fn(usize, Option<usize>) + Send + Sync>;

/// How often the line is redrawn while nothing comes back.
const TICK: Duration = Duration::from_millis(200);

/// Reports one call's progress to its hook and status line.
pub(crate) struct Reporter {
    hook: Option<ProgressHook>,
    total: Option<usize>,
    line: Option<Line>,
}

impl Reporter {
    /// `bar` draws a status line on stderr, only when stderr is a terminal.
    pub(crate) fn new(hook: Option<ProgressHook>, total: Option<usize>, bar: bool) -> Reporter {
        let line = if bar { Line::start(total) } else { None };
        Reporter { hook, total, line }
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
        if let Some(line) = &self.line {
            line.update(done);
        }
    }

    /// The call is over: the line's last state stays, as an ordinary line.
    /// Calling it again does nothing.
    pub(crate) fn finish(&self) {
        if let Some(line) = &self.line {
            line.finish();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        // A call dropped early (an `imap` not consumed to its end) still
        // gives the terminal its last row back.
        self.finish();
    }
}

/// The status line of one call.
enum Line {
    /// The `indicatif` bar, drawn through the status row.
    #[cfg(feature = "progress")]
    Bar {
        bar: indicatif::ProgressBar,
        status: Arc<StatusRow>,
    },
    /// A text line redrawn by a ticker thread.
    #[cfg(not(feature = "progress"))]
    Plain(plain::Plain),
}

impl Line {
    /// `None` when stderr is not a terminal: nothing is written then.
    fn start(total: Option<usize>) -> Option<Line> {
        let status = Arc::new(StatusRow::open()?);
        #[cfg(feature = "progress")]
        return Some(bar::start(total, status));
        #[cfg(not(feature = "progress"))]
        Some(Line::Plain(plain::Plain::start(total, status)))
    }

    fn update(&self, done: usize) {
        match self {
            #[cfg(feature = "progress")]
            Line::Bar { bar, .. } => bar.set_position(done as u64),
            #[cfg(not(feature = "progress"))]
            Line::Plain(plain) => plain.update(done),
        }
    }

    /// Idempotent.
    fn finish(&self) {
        match self {
            #[cfg(feature = "progress")]
            Line::Bar { bar, status } => {
                bar.finish(); // stops the ticker, draws the last state
                status.close();
            }
            #[cfg(not(feature = "progress"))]
            Line::Plain(plain) => plain.finish(),
        }
    }
}

/// The terminal's last row, kept for the status line while the rows above
/// it scroll. Restored when closed or dropped.
#[derive(Debug)]
pub(crate) struct StatusRow {
    state: Mutex<RowState>,
}

#[derive(Debug)]
struct RowState {
    /// The terminal's height when the region was last set, 0 once closed.
    rows: u16,
    /// The last text drawn, shown as an ordinary line when closing.
    last: String,
}

impl StatusRow {
    /// Reserves the last row of the terminal on stderr; `None` if stderr
    /// is not a terminal or has fewer than 3 rows.
    fn open() -> Option<StatusRow> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let (rows, _) = terminal_size()?;
        if rows < 3 {
            return None;
        }
        // A fresh line, then back up: if the cursor was on the last row the
        // screen scrolls by one, so the cursor is above the reserved row.
        let mut out = String::from("\n\x1b[1A");
        out.push_str(&region(rows));
        on_signal::opened();
        emit(&out);
        Some(StatusRow {
            state: Mutex::new(RowState {
                rows,
                last: String::new(),
            }),
        })
    }

    /// Draws `text` (one line, cut to the terminal's width) on the last row.
    fn draw(&self, text: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.rows == 0 {
            return;
        }
        let mut out = String::new();
        let (rows, cols) = terminal_size().unwrap_or((state.rows, 80));
        if rows != state.rows && rows >= 3 {
            // Resized: clear the old status row, which is now inside or
            // beyond the screen, and reserve the new last row.
            out.push_str(&format!(
                "\x1b7\x1b[{};1H\x1b[2K\x1b8",
                state.rows.min(rows)
            ));
            out.push_str(&region(rows));
            state.rows = rows;
        }
        let text: String = text.chars().take(usize::from(cols)).collect();
        out.push_str(&format!("\x1b7\x1b[{};1H\x1b[2K{text}\x1b8", state.rows));
        emit(&out);
        state.last = text;
    }

    /// Gives the last row back: clears it, resets the scrolling region
    /// (unless another call's line still uses it) and prints the last text
    /// drawn as an ordinary line.
    fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.rows == 0 {
            return;
        }
        let reset = if on_signal::closed() { "\x1b[r" } else { "" };
        let mut out = format!("\x1b7\x1b[{};1H\x1b[2K{reset}\x1b8", state.rows);
        if !state.last.is_empty() {
            out.push_str(&state.last);
            out.push('\n');
        }
        emit(&out);
        state.rows = 0;
    }
}

impl Drop for StatusRow {
    fn drop(&mut self) {
        self.close();
    }
}

/// Restores the terminal when SIGINT or SIGTERM ends the process while a
/// status row is open: without it the scrolling region would outlive the
/// program, and the shell's prompt would scroll above a stale line.
///
/// The handler is installed when the first row opens and stays (it does
/// nothing while no row is open). It writes a fixed reset sequence, then
/// hands the signal on: to the handler that was installed before it, or,
/// if that was the default action, it restores the default and raises the
/// signal again, so the process ends by that signal as it would have. A
/// signal that was ignored is left alone. A handler installed later (say
/// by the `ctrlc` crate) replaces this one, which only loses the reset.
/// Worker processes are started by `exec` and do not inherit it.
mod on_signal {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Status rows open now.
    static OPEN: AtomicUsize = AtomicUsize::new(0);
    /// The actions in place before ours, per entry of [`SIGNALS`]; set once,
    /// before ours is installed.
    static PREVIOUS: OnceLock<[libc::sigaction; 2]> = OnceLock::new();
    const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];
    /// Reset the scrolling region, clear the last row (999 is clamped to
    /// it), keep the cursor where it was.
    const RESET: &[u8] = b"\x1b7\x1b[r\x1b[999;1H\x1b[2K\x1b8";

    /// A status row opens: install the handler the first time.
    pub(super) fn opened() {
        OPEN.fetch_add(1, Ordering::SeqCst);
        PREVIOUS.get_or_init(|| {
            // SAFETY: a zeroed `sigaction` is a valid value (no handler,
            // empty mask, no flags), then filled in by the kernel.
            let mut previous: [libc::sigaction; 2] = unsafe { std::mem::zeroed() };
            for (sig, old) in SIGNALS.iter().zip(previous.iter_mut()) {
                // SAFETY: reads the current action into a live local.
                unsafe { libc::sigaction(*sig, std::ptr::null(), old) };
            }
            previous
        });
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let Some(previous) = PREVIOUS.get() else {
                return;
            };
            for (sig, old) in SIGNALS.iter().zip(previous) {
                if old.sa_sigaction == libc::SIG_IGN {
                    continue;
                }
                // SAFETY: a zeroed `sigaction` is valid; the handler below
                // only makes async-signal-safe calls (write, sigaction,
                // raise) and calls the previous handler as it expects.
                unsafe {
                    let mut ours: libc::sigaction = std::mem::zeroed();
                    ours.sa_sigaction = handler as *const () as libc::sighandler_t;
                    ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                    libc::sigemptyset(&mut ours.sa_mask);
                    libc::sigaction(*sig, &ours, std::ptr::null_mut());
                }
            }
        });
    }

    /// A status row closed; whether it was the last one open.
    pub(super) fn closed() -> bool {
        OPEN.fetch_sub(1, Ordering::SeqCst) == 1
    }

    extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        if OPEN.load(Ordering::SeqCst) > 0 {
            // SAFETY: write(2) of a static buffer is async-signal-safe.
            unsafe { libc::write(libc::STDERR_FILENO, RESET.as_ptr().cast(), RESET.len()) };
        }
        let previous = PREVIOUS
            .get()
            .and_then(|all| SIGNALS.iter().position(|&s| s == sig).map(|i| all[i]));
        match previous {
            Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
                // SAFETY: `old` is the handler the process installed before
                // ours, called with the arguments its flags promise it.
                unsafe {
                    if old.sa_flags & libc::SA_SIGINFO != 0 {
                        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                            std::mem::transmute(old.sa_sigaction);
                        f(sig, info, ctx);
                    } else {
                        let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                        f(sig);
                    }
                }
            }
            _ => {
                // SAFETY: restores the default action and raises the signal
                // again; it is delivered when this handler returns, and ends
                // the process as it would have without us.
                unsafe {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &default, std::ptr::null_mut());
                    libc::raise(sig);
                }
            }
        }
    }
}

/// Sets the scrolling region to every row but the last, keeping the cursor
/// where it is (setting a region moves it to the top-left corner).
fn region(rows: u16) -> String {
    format!("\x1b7\x1b[1;{}r\x1b8", rows - 1)
}

/// Writes `out` to stderr in one `write` (stderr is unbuffered): another
/// process's output cannot land between the cursor's save and restore.
fn emit(out: &str) {
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// The size of the terminal on stderr: (rows, columns).
fn terminal_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stderr()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// Items per second, rounded: one decimal below 10/s, none above.
pub(crate) fn format_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "-/s".to_owned()
    } else if per_sec < 10.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{per_sec:.0}/s")
    }
}

/// A duration in whole seconds: `42s`, `3m07s`, `2h05m`.
pub(crate) fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// The plain status line: `412/1000 items  206/s  2s elapsed, ETA 3s`.
#[cfg(any(test, not(feature = "progress")))]
pub(crate) fn plain_text(done: usize, total: Option<usize>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let per_sec = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let rate = format_rate(per_sec);
    let elapsed = format_duration(elapsed);
    match total {
        Some(total) => {
            let eta = if done >= total {
                "0s".to_owned()
            } else if per_sec > 0.0 {
                format_duration(Duration::from_secs_f64((total - done) as f64 / per_sec))
            } else {
                "-".to_owned()
            };
            format!("{done}/{total} items  {rate}  {elapsed} elapsed, ETA {eta}")
        }
        None => format!("{done} items  {rate}  {elapsed} elapsed"),
    }
}

#[cfg(feature = "progress")]
mod bar {
    use std::sync::{Arc, Mutex, PoisonError};

    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

    use super::{Line, StatusRow, TICK, format_duration, format_rate};

    /// A bar drawn on the status row, ticking steadily.
    pub(super) fn start(total: Option<usize>, status: Arc<StatusRow>) -> Line {
        // At most 20 draws a second, however fast results come back.
        let target = ProgressDrawTarget::term_like_with_hz(
            Box::new(RowTerm {
                status: Arc::clone(&status),
                pending: Mutex::new(String::new()),
            }),
            20,
        );
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::with_draw_target(Some(n as u64), target),
                "{bar:40} {pos}/{len} items  {rate}  {elapsed_s} elapsed, ETA {eta_s}",
            ),
            None => (
                ProgressBar::with_draw_target(None, target),
                "{spinner} {pos} items  {rate}  {elapsed_s} elapsed",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(
                style
                    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&format_rate(s.per_sec()));
                    })
                    .with_key(
                        "elapsed_s",
                        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = w.write_str(&format_duration(s.elapsed()));
                        },
                    )
                    .with_key("eta_s", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&format_duration(s.eta()));
                    }),
            );
        }
        bar.enable_steady_tick(TICK);
        Line::Bar { bar, status }
    }

    /// What indicatif draws on: collects one frame, then draws its text on
    /// the status row. Cursor moves are ignored: the row is fixed.
    #[derive(Debug)]
    struct RowTerm {
        status: Arc<StatusRow>,
        pending: Mutex<String>,
    }

    impl indicatif::TermLike for RowTerm {
        fn width(&self) -> u16 {
            super::terminal_size().map_or(80, |(_, cols)| cols)
        }
        fn height(&self) -> u16 {
            super::terminal_size().map_or(24, |(rows, _)| rows)
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)?;
            self.write_str("\n")
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            let frame =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
            // The last non-empty line of the frame, without the padding
            // indicatif adds to reach the right edge.
            if let Some(text) = frame
                .split(['\n', '\r'])
                .map(str::trim_end)
                .rfind(|line| !line.is_empty())
            {
                self.status.draw(text);
            }
            Ok(())
        }
    }
}

#[cfg(not(feature = "progress"))]
mod plain {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::thread::JoinHandle;
    use std::time::Instant;

    use super::{StatusRow, TICK, plain_text};

    /// The plain text line, redrawn every tick by its own thread.
    pub(super) struct Plain {
        done: Arc<AtomicUsize>,
        total: Option<usize>,
        started: Instant,
        status: Arc<StatusRow>,
        stop: Mutex<Option<mpsc::Sender<()>>>,
        ticker: Mutex<Option<JoinHandle<()>>>,
    }

    impl Plain {
        pub(super) fn start(total: Option<usize>, status: Arc<StatusRow>) -> Plain {
            let done = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let (stop, stopped) = mpsc::channel::<()>();
            let ticker = {
                let done = Arc::clone(&done);
                let status = Arc::clone(&status);
                std::thread::Builder::new()
                    .name("pool-progress".into())
                    .spawn(move || {
                        // Ends when `finish` drops the sender.
                        while let Err(mpsc::RecvTimeoutError::Timeout) = {
                            let text =
                                plain_text(done.load(Ordering::Relaxed), total, started.elapsed());
                            status.draw(&text);
                            stopped.recv_timeout(TICK)
                        } {}
                    })
                    .ok()
            };
            Plain {
                done,
                total,
                started,
                status,
                stop: Mutex::new(Some(stop)),
                ticker: Mutex::new(ticker),
            }
        }

        pub(super) fn update(&self, done: usize) {
            self.done.store(done, Ordering::Relaxed);
        }

        /// Stops the ticker, draws the last state and closes the row.
        /// Idempotent.
        pub(super) fn finish(&self) {
            drop(
                self.stop
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
            let ticker = self
                .ticker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(ticker) = ticker {
                let _ = ticker.join();
            }
            let done = self.done.load(Ordering::Relaxed);
            self.status
                .draw(&plain_text(done, self.total, self.started.elapsed()));
            self.status.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{format_duration, format_rate, plain_text};

    #[test]
    fn rates_are_rounded() {
        assert_eq!(format_rate(614.2095), "614/s");
        assert_eq!(format_rate(4.25), "4.2/s");
        assert_eq!(format_rate(0.0), "-/s");
        assert_eq!(format_rate(f64::NAN), "-/s");
    }

    #[test]
    fn durations_are_whole_seconds() {
        assert_eq!(format_duration(Duration::from_millis(42_900)), "42s");
        assert_eq!(format_duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(format_duration(Duration::from_secs(7500)), "2h05m");
    }

    #[test]
    fn the_plain_line_has_count_rate_elapsed_and_eta() {
        assert_eq!(
            plain_text(412, Some(1000), Duration::from_secs(2)),
            "412/1000 items  206/s  2s elapsed, ETA 2s"
        );
        assert_eq!(
            plain_text(0, Some(10), Duration::ZERO),
            "0/10 items  -/s  0s elapsed, ETA -"
        );
        assert_eq!(
            plain_text(10, Some(10), Duration::from_secs(1)),
            "10/10 items  10/s  1s elapsed, ETA 0s"
        );
        assert_eq!(
            plain_text(30, None, Duration::from_secs(3)),
            "30 items  10/s  3s elapsed"
        );
    }
}
