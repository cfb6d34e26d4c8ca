//! Progress reporting on stderr: an indicatif bar (steps/s, ETA, a message such as the live
//! PSNR) on a terminal, a plain line every 10% otherwise, nothing with `--quiet`. Shared by
//! worker threads (`&Progress` is `Sync`).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::errln;
use indicatif::{ProgressBar, ProgressStyle};

enum Mode {
    Quiet,
    Bar(ProgressBar),
    Lines,
}

/// Progress over `total` units (chain-steps).
pub struct Progress {
    mode: Mode,
    total: u64,
    done: AtomicU64,
    start: Instant,
    estimated: AtomicBool,
    message: Mutex<String>,
}

/// Seconds as a short human string.
pub fn human_seconds(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.1} s")
    } else if s < 5400.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

impl Progress {
    /// A reporter for `total` units; `what` names them (e.g. "chain-steps").
    pub fn new(total: u64, quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} chain-steps {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            total: total.max(1),
            done: AtomicU64::new(0),
            start: Instant::now(),
            estimated: AtomicBool::new(false),
            message: Mutex::new(String::new()),
        }
    }

    /// Prints a line (above the bar on a terminal); nothing when quiet.
    pub fn println(&self, line: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => bar.println(line),
            Mode::Lines => errln!("{line}"),
        }
    }

    /// A short status message (e.g. `PSNR 23.1 dB`).
    pub fn set_message(&self, msg: String) {
        match &self.mode {
            Mode::Bar(bar) => bar.set_message(msg),
            Mode::Lines => {
                if let Ok(mut m) = self.message.lock() {
                    *m = msg;
                }
            }
            Mode::Quiet => {}
        }
    }

    /// Adds `n` units; prints the time estimate once the first units are done, then a line
    /// per 10% in plain mode.
    pub fn advance(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        let now = before + n;
        let elapsed = self.start.elapsed().as_secs_f64();
        if !self.estimated.swap(true, Ordering::Relaxed) {
            let estimate = elapsed / now as f64 * self.total as f64;
            if estimate > 5.0 {
                self.println(&format!("estimated time: {}", human_seconds(estimate)));
            }
        }
        match &self.mode {
            Mode::Bar(bar) => bar.inc(n),
            Mode::Lines => {
                if before * 10 / self.total != now * 10 / self.total {
                    let rate = now as f64 / elapsed.max(1e-9);
                    let eta = (self.total.saturating_sub(now)) as f64 / rate.max(1e-9);
                    let msg = self.message.lock().map(|m| m.clone()).unwrap_or_default();
                    errln!(
                        "progress: {now}/{} chain-steps ({}%), {rate:.1}/s, ETA {} {msg}",
                        self.total,
                        now * 100 / self.total,
                        human_seconds(eta)
                    );
                }
            }
            Mode::Quiet => {}
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}
