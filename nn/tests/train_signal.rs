//! SIGTERM sets the training loop's stop flag and the process keeps running, so the loop can
//! write its checkpoint. (SIGINT is registered by the same loop in `StopFlag::install`; it is
//! not raised here because, once the flag is set, a second signal ends the process by design.)

use signal_hook::consts::SIGTERM;
use signal_hook::low_level::raise;
use tweedie_nn::train::signal::StopFlag;

#[test]
fn sigterm_sets_the_stop_flag() {
    let stop = StopFlag::install().unwrap();
    let seen_by_loop = stop.clone();
    assert!(!seen_by_loop.requested());
    raise(SIGTERM).unwrap();
    assert!(seen_by_loop.requested());
}
