//! The stop flag of a training run: SIGINT (Ctrl-C) and SIGTERM set it; the loop polls
//! [`StopFlag::requested`] between steps, writes a checkpoint and exits. A second SIGINT or
//! SIGTERM while the flag is already set terminates the process at once (exit code 1), so a
//! stuck run can still be killed from the keyboard.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

/// A shared "please stop" flag, and the number of the last signal that set it (0: none).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>, Arc<AtomicUsize>);

impl StopFlag {
    /// A flag that only [`request`](Self::request) sets (tests, embedding).
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// A flag set by SIGINT and SIGTERM (registering again adds handlers; call once).
    pub fn install() -> Result<StopFlag> {
        let stop = StopFlag::new();
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the shutdown action checks the flag *before* this signal sets it,
            // so the first signal only sets the flag and the second one exits.
            flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop.0))
                .context("cannot install the signal handlers")?;
            flag::register_usize(sig, Arc::clone(&stop.1), sig as usize)
                .context("cannot install the signal handlers")?;
            flag::register(sig, Arc::clone(&stop.0))
                .context("cannot install the signal handlers")?;
        }
        Ok(stop)
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The signal that requested the stop (SIGINT 2, SIGTERM 15), if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.1.load(Ordering::SeqCst) {
            0 => None,
            sig => i32::try_from(sig).ok(),
        }
    }

    /// Requests a stop (as a signal would).
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_sets_the_flag_for_every_clone() {
        let stop = StopFlag::new();
        let seen_by_loop = stop.clone();
        assert!(!seen_by_loop.requested());
        stop.request();
        assert!(seen_by_loop.requested());
    }
}
