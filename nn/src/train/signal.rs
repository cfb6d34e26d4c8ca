//! The stop flag of a training run: SIGINT (Ctrl-C) and SIGTERM record themselves; the loop
//! polls [`StopFlag::signal`] between steps, finishes the checkpoint and exits with
//! [`StopFlag::exit_code`] (130 for SIGINT, 143 for SIGTERM, as shells report them).
//!
//! Further signals change nothing: a second SIGTERM a few milliseconds after the first (as
//! process supervisors send) must not cost the run its checkpoint. SIGKILL still ends a run at
//! once; checkpoints are written atomically, so the previous one stays intact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

/// A shared "please stop" flag holding the number of the signal that set it (0: none).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicUsize>);

impl StopFlag {
    /// A flag that only [`request`](Self::request) sets (tests, embedding).
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// A flag set by SIGINT and SIGTERM (registering again adds handlers; call once).
    pub fn install() -> Result<StopFlag> {
        let stop = StopFlag::new();
        for sig in [SIGINT, SIGTERM] {
            flag::register_usize(sig, Arc::clone(&stop.0), sig as usize)
                .context("cannot install the signal handlers")?;
        }
        Ok(stop)
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.signal().is_some()
    }

    /// The signal that requested the stop (the last one when several arrived).
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// The exit status of a run stopped by this flag: 128 + the signal number.
    pub fn exit_code(&self) -> Option<u8> {
        self.signal().map(|s| (128 + s).clamp(0, 255) as u8)
    }

    /// The signal's name for messages.
    pub fn signal_name(&self) -> Option<&'static str> {
        self.signal().map(|s| match s {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => "a signal",
        })
    }

    /// Requests a stop as `signal` would.
    pub fn request(&self, signal: i32) {
        self.0.store(signal.max(1) as usize, Ordering::SeqCst);
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
        assert_eq!(seen_by_loop.exit_code(), None);
        stop.request(SIGTERM);
        assert!(seen_by_loop.requested());
        assert_eq!(seen_by_loop.exit_code(), Some(143));
        assert_eq!(seen_by_loop.signal_name(), Some("SIGTERM"));
        stop.request(SIGINT);
        assert_eq!(seen_by_loop.exit_code(), Some(130));
    }
}
