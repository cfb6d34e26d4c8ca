//! SIGTERM and SIGINT set the training loop's stop flag and the process keeps running, so the
//! loop can write its checkpoint; a second signal (supervisors often send two) changes nothing
//! but the recorded signal, which sets the exit code (128 + its number).

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::low_level::raise;
use tweedie_nn::train::signal::StopFlag;

#[test]
fn signals_set_the_stop_flag_and_never_end_the_process() {
    // A signal ignored at start stays ignored (nohup; SIGINT under `cmd &` without job
    // control): give this process the defaults whatever shell started the tests.
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: setting a disposition before any handler of this test binary exists.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let stop = StopFlag::install().unwrap();
    let seen_by_loop = stop.clone();
    assert!(!seen_by_loop.requested());
    raise(SIGTERM).unwrap();
    assert!(seen_by_loop.requested());
    assert_eq!(seen_by_loop.exit_code(), Some(143));
    raise(SIGTERM).unwrap();
    raise(SIGINT).unwrap();
    // Still running: the last signal decides the exit code.
    assert_eq!(seen_by_loop.exit_code(), Some(130));
    assert_eq!(seen_by_loop.signal_name(), Some("SIGINT"));
}
