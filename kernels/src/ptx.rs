//! PTX entry points (`nvptx64` only): thin `extern "ptx-kernel"` wrappers around the same
//! per-element bodies the CPU path calls. Built by `scripts/build-ptx.sh`; the host loads the
//! module and launches these by name (host/src/backend/cuda). Kernel ABI: raw pointers plus
//! `u32` sizes, `f32` scalars and `u64` seeds; a null pointer means "absent" where documented.
//!
//! Launch shapes (the host's launch helpers follow them):
//! - element-wise and sampling kernels: 1-D, one thread per element, any block size;
//! - [`layers::group_norm_f32`]: one block of exactly [`layers::GN_THREADS`] threads per
//!   (image, group), grid (groups, batch);
//! - [`conv::conv2d_f32`]: blocks of [`conv::THREADS`] threads, grid
//!   (⌈oh·ow/TILE_N⌉, ⌈c_out/TILE_M⌉, batch);
//! - attention: 1-D, one thread per (image, head, query) row, then per output element.
//!
//! Floating point: llc may contract `a*b + c` into a fused multiply-add on the GPU, so results
//! can differ from the CPU path by rounding (a few ulp per operation); `host selftest` reports
//! the largest difference per kernel.

use core::arch::nvptx::{_block_dim_x, _block_idx_x, _thread_idx_x, trap};

pub mod conv;
pub mod layers;
pub mod sampling;

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
