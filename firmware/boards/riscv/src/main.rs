//! tweedie-core's firmware checks on RV32IMAC under QEMU `virt`: runs `run_all`, prints its
//! lines over semihosting, then the peak stack (painted) and the instruction costs
//! (`minstret`, exact under `-icount shift=0`), and exits QEMU with success, or failure on an
//! `Err`, a panic or a trap: it never hangs.
#![no_std]
#![no_main]

use core::arch::asm;

use riscv_semihosting as semihosting;
use tweedie_firmware_checks::Clock;

#[path = "../../common/semihosting_host.rs"]
mod host;
use host::{fail, finish, run_requested, Host};

/// Stops here for good (only reached without a debugger/QEMU to take the exit).
fn halt() -> ! {
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
    let mut host = Host::open();
    let result = run_requested(&mut host, &mut Minstret);
    finish(&mut host, result, peak_stack)
}

/// Every exception without a handler of its own (riscv-rt would loop forever).
#[export_name = "ExceptionHandler"]
fn exception(_frame: &riscv_rt::TrapFrame) -> ! {
    fail(b"error: trap")
}
