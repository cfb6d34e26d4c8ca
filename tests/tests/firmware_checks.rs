//! The firmware checks (firmware/checks) run natively on x86_64: their hash lines must equal
//! `firmware/golden.txt`, the values `scripts/firmware-test.sh` demands from every
//! microcontroller target under QEMU. So a board matches the desktop bit for bit, or fails.

use tweedie_firmware_checks::{run_all, NoClock, Report};

const GOLDEN: &str = include_str!("../../firmware/golden.txt");

#[derive(Default)]
struct Lines(String);

impl Report for Lines {
    fn line(&mut self, line: &[u8]) {
        self.0
            .push_str(std::str::from_utf8(line).expect("report lines are ASCII"));
        self.0.push('\n');
    }
}

#[test]
fn native_hashes_equal_the_golden_file() {
    let mut lines = Lines::default();
    run_all(&mut lines, &mut NoClock).unwrap();
    // Without a clock there are no cost lines: every line is a hash.
    assert!(lines.0.lines().all(|l| l.starts_with("hash ")));
    assert_eq!(lines.0.lines().count(), 12);
    if lines.0 != GOLDEN {
        panic!(
            "firmware checks differ from firmware/golden.txt; got:\n{}",
            lines.0
        );
    }
}
