//! SIGINT, SIGTERM and the other stop signals (`tweedie_nn::train::signal::STOP_SIGNALS`:
//! SIGHUP, SIGUSR1/2, SIGALRM, SIGXCPU) for the commands that write outputs (sample, restore,
//! denoise, convert, evaluate, merge…), on the one signal mechanism of the project
//! ([`StopFlag`]): the first signal sets the flag, long loops poll [`requested`], and [`check`]
//! turns it into the error [`Interrupted`]. Unwinding drops the staged outputs
//! (output_policy), so the paths keep what they held, and `main` exits 128 + the signal number
//! (130, 143, 129 …) with one line. A second signal ends the process at once; a staging entry
//! it leaves is removed by the next run.

use std::fmt;
use std::sync::OnceLock;

use anyhow::Result;
use tweedie_nn::train::signal::{signal_name, StopFlag};

static STOP: OnceLock<StopFlag> = OnceLock::new();

/// A run stopped by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    /// The signal number (2 SIGINT, 15 SIGTERM, 1 SIGHUP …).
    pub signal: i32,
}

impl Interrupted {
    /// The conventional exit code: 128 + the signal number.
    pub fn exit_code(self) -> u8 {
        u8::try_from(128 + self.signal).unwrap_or(u8::MAX)
    }

    fn name(self) -> &'static str {
        signal_name(self.signal)
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stopped by {}; the outputs were left as they were",
            self.name()
        )
    }
}

impl std::error::Error for Interrupted {}

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> Result<()> {
    if STOP.get().is_none() {
        let flag = StopFlag::install_escalating()?;
        let _ = STOP.set(flag);
    }
    Ok(())
}

/// Whether a signal asked the run to stop.
pub fn requested() -> bool {
    STOP.get().is_some_and(StopFlag::requested)
}

/// `Err(Interrupted)` once a signal asked the run to stop.
pub fn check() -> Result<()> {
    match STOP.get() {
        Some(stop) if stop.requested() => Err(Interrupted {
            signal: stop.signal().unwrap_or(2),
        }
        .into()),
        _ => Ok(()),
    }
}
