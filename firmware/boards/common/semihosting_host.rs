//! What both board binaries do over semihosting, written once: the host's stdout as a
//! [`Report`], the checks (or the fault the QEMU command line asks for), the outcome lines and
//! QEMU's exit. Included with `#[path]` by each board's main.rs, which provides
//! `crate::semihosting` (its architecture's semihosting crate, same API) and `crate::halt`.

use tweedie_firmware_checks::fault::{self, Fault};
use tweedie_firmware_checks::{run_all, Clock, Failure, Line, Report};

use crate::semihosting::{debug, hio, nr};

/// Semihosting stdout (lines that cannot be written are lost: QEMU's host side is gone).
pub struct Host(Option<hio::HostStream>);

impl Host {
    /// The host's stdout, or a failed exit when there is none.
    pub fn open() -> Host {
        let host = Host(hio::hstdout().ok());
        if host.0.is_none() {
            fail(b"error: no semihosting stdout");
        }
        host
    }
}

impl Report for Host {
    fn line(&mut self, line: &[u8]) {
        if let Some(out) = self.0.as_mut() {
            let _ = out.write_all(line);
            let _ = out.write_all(b"\n");
        }
    }
}

#[cfg(feature = "fmt")]
impl core::fmt::Write for Host {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        match self.0.as_mut() {
            Some(out) => out.write_all(s.as_bytes()).map_err(|_| core::fmt::Error),
            None => Ok(()),
        }
    }
}

/// Prints `msg` and exits QEMU with failure.
pub fn fail(msg: &[u8]) -> ! {
    Host(hio::hstdout().ok()).line(msg);
    debug::exit(debug::EXIT_FAILURE);
    // Only reached without a debugger/QEMU to take the exit.
    crate::halt()
}

/// Runs the checks, or the fault that the QEMU command line requests.
pub fn run_requested(host: &mut Host, clock: &mut impl Clock) -> Result<(), Failure> {
    let mut buf = [0u8; 128];
    match fault::requested(cmdline(&mut buf)) {
        Some(Fault::Panic) => panic!("fault=panic on the command line"),
        Some(Fault::Error) => fault::short_scratch(),
        None => run_all(host, clock),
    }
}

/// Reports the outcome and exits QEMU: success only for `Ok` (then with the peak stack).
pub fn finish(host: &mut Host, result: Result<(), Failure>, peak_stack: fn() -> u64) -> ! {
    match result {
        Ok(()) => {
            host.cost("stack.peak-bytes", peak_stack());
            host.line(b"ok");
            debug::exit(debug::EXIT_SUCCESS);
        }
        Err(failure) => {
            let mut line = Line::new();
            line.text("error: check ")
                .text(failure.check)
                .text(" returned Err");
            host.line(line.as_bytes());
            #[cfg(feature = "fmt")]
            {
                use core::fmt::Write;
                let _ = writeln!(host, "{}", failure.error);
            }
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    crate::halt()
}

/// The QEMU command line (`-append`; semihosting `SYS_GET_CMDLINE`), empty if there is none.
fn cmdline(buf: &mut [u8; 128]) -> &[u8] {
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: the host writes at most block[1] bytes to buf, then the length to block[1].
    let rc = unsafe { crate::semihosting::syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    if rc != 0 {
        return &[];
    }
    &buf[..block[1].min(buf.len())]
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    #[cfg(feature = "fmt")]
    {
        use core::fmt::Write;
        let _ = writeln!(Host(hio::hstdout().ok()), "panic: {_info}");
    }
    fail(b"error: panic")
}
