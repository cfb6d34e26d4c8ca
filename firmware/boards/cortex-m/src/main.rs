//! tweedie-core's firmware checks on Cortex-M under QEMU: runs `run_all`, prints its lines over
//! semihosting, then the peak stack (painted) and the instruction costs (SysTick under
//! `-icount shift=0`, calibrated against a loop of known length), and exits QEMU with
//! success, or failure on an `Err`, a panic or a fault: it never hangs.
//!
//! thumbv7em-none-eabihf runs on `mps2-an386` (Cortex-M4F), thumbv6m-none-eabi on `microbit`
//! (Cortex-M0, nRF51); build.rs picks the memory map by target.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting as semihosting;
use tweedie_firmware_checks::{Clock, Report};

#[path = "../../common/semihosting_host.rs"]
mod host;
use host::{fail, finish, run_requested, Host};

/// Stops here for good (only reached without a debugger/QEMU to take the exit).
fn halt() -> ! {
    loop {
        cortex_m::asm::bkpt();
    }
}

/// SysTick wraps (every 2^24 ticks), counted by its exception.
static WRAPS: AtomicU32 = AtomicU32::new(0);
const RELOAD: u32 = 0x00ff_ffff;

#[exception]
fn SysTick() {
    // Only this handler writes WRAPS (load + store: thumbv6m has no atomic read-modify-write).
    WRAPS.store(WRAPS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Core-clock ticks since `start_systick`, 64 bit.
fn ticks() -> u64 {
    loop {
        let wraps = WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == wraps {
            return (u64::from(wraps) << 24) + u64::from(RELOAD - current);
        }
    }
}

/// Instructions in [`calibration_loop`]: 10 per iteration.
const CALIBRATION_ITERS: u32 = 100_000;
const CALIBRATION_INSTRUCTIONS: u64 = 10 * CALIBRATION_ITERS as u64;

/// Exactly 10 instructions per iteration (8 nops, subs, bne): under `-icount shift=0` every
/// instruction is 1 ns of virtual time, whatever it is.
fn calibration_loop() {
    // SAFETY: only r0 (declared) and the flags change.
    unsafe {
        asm!(
            "2:",
            "nop", "nop", "nop", "nop", "nop", "nop", "nop", "nop",
            "subs {n}, {n}, #1",
            "bne 2b",
            n = inout(reg) CALIBRATION_ITERS => _,
            options(nomem, nostack),
        );
    }
}

/// SysTick on the core clock, converted to instructions with a calibrated ratio.
struct SysTickClock {
    ticks_per_calibration: u64,
}

impl Clock for SysTickClock {
    fn instructions(&mut self) -> Option<u64> {
        (self.ticks_per_calibration > 0)
            .then(|| ticks() * CALIBRATION_INSTRUCTIONS / self.ticks_per_calibration)
    }
}

const PAINT: u32 = 0x5a5a_5a5a;

extern "C" {
    static mut __sheap: u32;
    static mut _stack_start: u32;
}

/// Fills the free stack below the current frame with [`PAINT`].
fn paint_stack() {
    let bottom = &raw mut __sheap as usize;
    let top = cortex_m::register::msp::read() as usize - 256;
    let mut p = bottom;
    while p < top {
        // SAFETY: [__sheap, sp − 256) is free stack (no heap in this binary).
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Bytes of stack ever used: from the top down to the lowest word that lost its paint.
fn peak_stack() -> u64 {
    let bottom = &raw mut __sheap as usize;
    let top = &raw mut _stack_start as usize;
    let mut p = bottom;
    // SAFETY: reads inside [__sheap, _stack_start), all RAM.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    (top - p) as u64
}

#[entry]
fn main() -> ! {
    paint_stack();
    let mut host = Host::open();
    let Some(mut core) = cortex_m::Peripherals::take() else {
        fail(b"error: core peripherals taken");
    };
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(RELOAD);
    core.SYST.clear_current();
    core.SYST.enable_interrupt();
    core.SYST.enable_counter();
    // The cleared counter reads 0 until its first reload: wait for that.
    while SYST::get_current() == 0 {}
    let before = ticks();
    calibration_loop();
    let mut clock = SysTickClock {
        ticks_per_calibration: ticks().saturating_sub(before),
    };
    host.cost(
        "systick.ticks-per-1M-instructions",
        clock.ticks_per_calibration,
    );
    let result = run_requested(&mut host, &mut clock);
    finish(&mut host, result, peak_stack)
}

#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    fail(b"error: hard fault")
}
