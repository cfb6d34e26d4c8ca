//! PTX entry points (`nvptx64` only): thin `extern "ptx-kernel"` wrappers around the same
//! per-element bodies the CPU path calls. Built by `scripts/build-ptx.sh`; the host loads the
//! module and launches these by name. Kernel ABI: raw pointers plus `u32` sizes and `u64` seeds.

use core::arch::nvptx::{_block_dim_x, _block_idx_x, _thread_idx_x, trap};

/// On the GPU a panic (e.g. a failed bounds check) stops the thread with `trap`, which the host
/// sees as a launch error.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `trap` has no preconditions; it aborts the kernel.
    unsafe { trap() }
}

/// Global index of this thread in a 1-D launch.
#[inline(always)]
fn global_index() -> usize {
    // SAFETY: reading the special registers has no preconditions.
    unsafe { (_block_idx_x() * _block_dim_x() + _thread_idx_x()) as usize }
}

/// `out[i] = noise::gaussian(seed, chain, counter, first_element + i)` for `i < n`: the same
/// counter-based draws as `tweedie_core::noise::fill_gaussian`, one element per thread.
///
/// # Safety
/// `out` must point to `n` writable `f32` in device memory.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn noise_gaussian_f32(
    out: *mut f32,
    n: u32,
    seed: u64,
    chain: u64,
    counter: u64,
    first_element: u64,
) {
    let i = global_index();
    if i < n as usize {
        let z = tweedie_core::noise::gaussian(seed, chain, counter, first_element + i as u64);
        // SAFETY: i < n and the caller guarantees `out` holds n elements.
        unsafe { out.add(i).write(z) };
    }
}
