//! The stop flag of a run: the [`STOP_SIGNALS`] (SIGINT from Ctrl-C, SIGTERM, SIGHUP, and
//! SIGUSR1/2, SIGALRM, SIGXCPU that batch systems send ahead of a limit) set it and record
//! which signal came; loops poll [`StopFlag::requested`], finish what must be finished and exit
//! with [`StopFlag::exit_code`] (128 + the signal: 130 for SIGINT, 143 for SIGTERM, as shells
//! report them). A signal the process inherited as ignored (`nohup`) stays ignored.
//!
//! [`StopFlag::install`] (training): further signals change nothing. A second SIGTERM a few
//! milliseconds after the first (as process supervisors send) must not cost the run its
//! checkpoint; SIGKILL still ends a run at once, and checkpoints are written atomically, so
//! the previous one stays intact. [`StopFlag::install_escalating`] (commands with nothing to
//! save, `host::run::interrupt`): a second signal ends the process at once, 128 + its number.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGALRM, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGXCPU};
use signal_hook::flag;

/// The signals that ask a run to stop instead of killing it: Ctrl-C, kill's default, a
/// closed terminal, and those a batch system sends ahead of a time limit (Slurm's
/// `--signal=USR1@120`, `ulimit -t`'s SIGXCPU, an alarm).
pub const STOP_SIGNALS: [i32; 7] = [SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGXCPU];

/// A signal's name for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        SIGALRM => "SIGALRM",
        SIGXCPU => "SIGXCPU",
        _ => "a signal",
    }
}

/// Whether `signal` was ignored when the process started (`nohup` ignores SIGHUP; a shell
/// without job control ignores SIGINT for `cmd &`): such a signal keeps being ignored, so a
/// run started that way goes on when its terminal closes.
fn ignored(signal: i32) -> bool {
    // SAFETY: sigaction with no new action only reads the current disposition into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// A shared "please stop" flag and the number of the last signal that set it (0: none).
#[derive(Debug, Clone, Default)]
pub struct StopFlag {
    set: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl StopFlag {
    /// A flag that only [`request`](Self::request) sets (tests, embedding).
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// A flag set by the [`STOP_SIGNALS`]; every further signal only records itself
    /// (registering again adds handlers; call once).
    pub fn install() -> Result<StopFlag> {
        Self::register(false)
    }

    /// A flag set by the [`STOP_SIGNALS`]; a signal arriving while the flag is already set
    /// ends the process at once with 128 + its number.
    pub fn install_escalating() -> Result<StopFlag> {
        Self::register(true)
    }

    fn register(escalate: bool) -> Result<StopFlag> {
        let stop = StopFlag::new();
        for sig in STOP_SIGNALS.into_iter().filter(|&s| !ignored(s)) {
            let context = "cannot install the signal handlers";
            if escalate {
                // Before the flag is set by this signal: only a later one exits.
                flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop.set))
                    .context(context)?;
            }
            flag::register_usize(sig, Arc::clone(&stop.signal), sig as usize).context(context)?;
            flag::register(sig, Arc::clone(&stop.set)).context(context)?;
        }
        Ok(stop)
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// The signal that requested the stop (the last one when several arrived).
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => i32::try_from(s).ok(),
        }
    }

    /// The exit status of a run stopped by this flag: 128 + the signal number.
    pub fn exit_code(&self) -> Option<u8> {
        self.signal()
            .map(|s| u8::try_from(128 + s).unwrap_or(u8::MAX))
    }

    /// The signal's name for messages.
    pub fn signal_name(&self) -> Option<&'static str> {
        self.signal().map(signal_name)
    }

    /// Requests a stop as `signal` would.
    pub fn request(&self, signal: i32) {
        self.signal
            .store(usize::try_from(signal).unwrap_or(0), Ordering::SeqCst);
        self.set.store(true, Ordering::SeqCst);
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
