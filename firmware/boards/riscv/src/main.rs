//! tweedie-core's firmware checks on RV32IMAC under QEMU `virt`: runs `run_all`, prints its
//! lines over semihosting, then the peak stack (painted) and the instruction costs
//! (`minstret`, exact under `-icount shift=0`), and exits QEMU with success, or failure on an
//! `Err`, a panic or a trap: it never hangs.
#![no_std]
#![no_main]

use core::arch::asm;

use riscv_semihosting::{debug, hio, nr};
use tweedie_firmware_checks::fault::{self, Fault};
use tweedie_firmware_checks::{run_all, Clock, Failure, Line, Report};

/// Semihosting stdout (lines that cannot be written are lost: QEMU's host side is gone).
struct Host(Option<hio::HostStream>);

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

fn fail(msg: &[u8]) -> ! {
    Host(hio::hstdout().ok()).line(msg);
    debug::exit(debug::EXIT_FAILURE);
    // Only reached without a debugger/QEMU to take the exit.
    loop {
        riscv::asm::wfi();
    }
}

/// `minstret` as 64 bits (rv32: read the high half again until it did not move).
struct Minstret;

impl Clock for Minstret {
    fn instructions(&mut self) -> Option<u64> {
        loop {
            let (hi, lo, hi2): (u32, u32, u32);
            // SAFETY: reads of counter CSRs, available in M-mode.
            unsafe {
                asm!("csrr {0}, minstreth", "csrr {1}, minstret", "csrr {2}, minstreth",
                     out(reg) hi, out(reg) lo, out(reg) hi2, options(nomem, nostack));
            }
            if hi == hi2 {
                return Some((u64::from(hi) << 32) | u64::from(lo));
            }
        }
    }
}

const PAINT: u32 = 0x5a5a_5a5a;

extern "C" {
    static mut __estack: u32;
    static mut _stack_start: u32;
}

fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: copies sp.
    unsafe { asm!("mv {}, sp", out(reg) sp, options(nomem, nostack)) };
    sp
}

/// Fills the free stack below the current frame with [`PAINT`].
fn paint_stack() {
    let bottom = &raw mut __estack as usize;
    let top = stack_pointer() - 256;
    let mut p = bottom;
    while p < top {
        // SAFETY: [__estack, sp − 256) is free stack.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Bytes of stack ever used: from the top down to the lowest word that lost its paint.
fn peak_stack() -> u64 {
    let bottom = &raw mut __estack as usize;
    let top = &raw mut _stack_start as usize;
    let mut p = bottom;
    // SAFETY: reads inside the stack region [__estack, _stack_start).
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    (top - p) as u64
}

#[riscv_rt::entry]
fn main() -> ! {
    paint_stack();
    let mut host = Host(hio::hstdout().ok());
    if host.0.is_none() {
        fail(b"error: no semihosting stdout");
    }
    let mut buf = [0u8; 128];
    let result = match fault::requested(cmdline(&mut buf)) {
        Some(Fault::Panic) => panic!("fault=panic on the command line"),
        Some(Fault::Error) => fault::short_scratch(),
        None => run_all(&mut host, &mut Minstret),
    };
    finish(&mut host, result)
}

/// Reports the outcome and exits QEMU: success only for `Ok`.
fn finish(host: &mut Host, result: Result<(), Failure>) -> ! {
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
    loop {
        riscv::asm::wfi();
    }
}

/// The QEMU command line (`-append`; semihosting `SYS_GET_CMDLINE`), empty if there is none.
fn cmdline(buf: &mut [u8; 128]) -> &[u8] {
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: the host writes at most block[1] bytes to buf, then the length to block[1].
    let rc = unsafe { riscv_semihosting::syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
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

/// Every exception without a handler of its own (riscv-rt would loop forever).
#[export_name = "ExceptionHandler"]
fn exception(_frame: &riscv_rt::TrapFrame) -> ! {
    fail(b"error: trap")
}
