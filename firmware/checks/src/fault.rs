//! Fault injection for the boards' exit paths: the QEMU command line (semihosting
//! `SYS_GET_CMDLINE`) can ask a board binary to fail on purpose, so `scripts/firmware-test.sh`
//! proves that an `Err` and a panic exit QEMU with a failure code instead of hanging.

use tweedie_core::sampler::{sample, sample_scratch_len};
use tweedie_core::Preset;

use crate::gaussian::README;
use crate::{Failure, SEED};

/// A failure the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `fault=error`: core returns an `Err` (see [`short_scratch`]).
    Error,
    /// `fault=panic`: the board binary panics.
    Panic,
}

/// The fault named by `fault=error` or `fault=panic` anywhere in the command line.
pub fn requested(cmdline: &[u8]) -> Option<Fault> {
    let has = |word: &[u8]| cmdline.windows(word.len()).any(|w| w == word);
    if has(b"fault=error") {
        Some(Fault::Error)
    } else if has(b"fault=panic") {
        Some(Fault::Panic)
    } else {
        None
    }
}

/// The README run with a scratch buffer one element short, which core must refuse
/// (`Error::LengthMismatch`); `Ok` would mean core stopped checking.
pub fn short_scratch() -> Result<(), Failure> {
    const LEN: usize = 16;
    let mut x = [0.0f32; LEN];
    let mut scratch = [0.0f32; sample_scratch_len(LEN) - 1];
    let plan = Preset::VpUncondSigmoid.plan();
    let mut denoiser = README;
    sample(&mut denoiser, &plan, &mut x, 1, 0, SEED, &mut scratch).map_err(|error| Failure {
        check: "fault",
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tweedie_core::Error;

    #[test]
    fn parses_the_command_line() {
        assert_eq!(requested(b"fw.elf fault=error"), Some(Fault::Error));
        assert_eq!(requested(b"fault=panic"), Some(Fault::Panic));
        assert_eq!(requested(b"fw.elf"), None);
        assert_eq!(requested(b""), None);
    }

    #[test]
    fn short_scratch_is_an_error() {
        let err = short_scratch().unwrap_err();
        assert!(matches!(err.error, Error::LengthMismatch { .. }), "{err:?}");
    }
}
