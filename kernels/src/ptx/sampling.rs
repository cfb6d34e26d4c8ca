//! The sampling template on the device: x₀ and the fused update of eq. 11/24, one kernel per
//! step, through `tweedie_core::sampler::update_element` and the core's counter-based noise.

use tweedie_core::noise;
use tweedie_core::sampler::{ChainNoise, UpdateCoefficients};
use tweedie_core::tweedie::{output_to_denoised, NetOutput};

use super::global_index;

/// x₀ for a buffer of chains: `x[i] = std · gaussian(seed, first_chain + c, COUNTER_INIT, e)`
/// with c = i / chain_len, e = i % chain_len (as `tweedie_core::sampler::init_state`).
///
/// # Safety
/// `x` must hold `n` writable `f32`; `chain_len > 0`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn init_state_f32(
    x: *mut f32,
    n: u32,
    chain_len: u32,
    std: f32,
    seed: u64,
    first_chain: u64,
) {
    let i = global_index();
    if i < n as usize && chain_len > 0 {
        let (c, e) = (i / chain_len as usize, i % chain_len as usize);
        let z = noise::gaussian(seed, first_chain + c as u64, noise::COUNTER_INIT, e as u64);
        // SAFETY: i < n.
        unsafe { x.add(i).write(std * z) };
    }
}

/// One template step for every chain of the buffer, in place:
/// `x[i] = update_element(x[i], d[i], g[i], n, coef)` with n = the chain's draw for element e at
/// `counter` (0 when `noise == 0`, as `ChainNoise::draw`). `lik_grad` may be null
/// (unconditional: g = 0). A non-finite result sets `*nonfinite = 1` (never cleared here).
///
/// # Safety
/// `x`, `denoised` (and `lik_grad` unless null) hold `n` `f32`; `nonfinite` one `u32`;
/// `chain_len > 0`.
#[no_mangle]
// The ABI is fixed (scripts/ptx/entries.txt, the host's launches): one scalar per parameter.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn template_update_f32(
    x: *mut f32,
    denoised: *const f32,
    lik_grad: *const f32,
    nonfinite: *mut u32,
    n: u32,
    chain_len: u32,
    drift: f32,
    likelihood: f32,
    noise_std: f32,
    seed: u64,
    first_chain: u64,
    counter: u64,
) {
    let i = global_index();
    if i >= n as usize || chain_len == 0 {
        return;
    }
    let coef = UpdateCoefficients {
        drift,
        likelihood,
        noise: noise_std,
    };
    let (c, e) = (i / chain_len as usize, i % chain_len as usize);
    let key = ChainNoise {
        seed,
        chain: first_chain + c as u64,
        counter,
    };
    // SAFETY: i < n for every buffer (caller's contract); lik_grad only read when non-null.
    unsafe {
        let g = if lik_grad.is_null() {
            0.0
        } else {
            *lik_grad.add(i)
        };
        let v = tweedie_core::sampler::update_element(
            *x.add(i),
            *denoised.add(i),
            g,
            key.draw(&coef, e),
            &coef,
        );
        x.add(i).write(v);
        if !v.is_finite() {
            nonfinite.write(1);
        }
    }
}

/// `dst[i] = factor · src[i]` (a VP network's input √ᾱ·x); `dst` may equal `src`.
///
/// # Safety
/// `dst` and `src` hold `n` `f32`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn scale_f32(dst: *mut f32, src: *const f32, n: u32, factor: f32) {
    let i = global_index();
    if i < n as usize {
        // SAFETY: i < n.
        unsafe { dst.add(i).write(factor * *src.add(i)) };
    }
}

/// D from the network output, as `Parameterization::denoised_from_output`: for chain c and
/// element e < chain_len, `d[i] = output_to_denoised(output, x[i], net[c·net_stride + e], coef)`
/// (`output` 0 = ε, 1 = score), or the network output itself (`output` 2 = denoised). The
/// network's chain stride exceeds chain_len when it also outputs variances (learn_sigma).
///
/// # Safety
/// `d`, `x` hold `n` `f32`, `net` (n / chain_len)·net_stride; chain_len ≤ net_stride.
#[no_mangle]
// The ABI is fixed (scripts/ptx/entries.txt, the host's launches): one scalar per parameter.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn denoised_from_output_f32(
    d: *mut f32,
    x: *const f32,
    net: *const f32,
    n: u32,
    chain_len: u32,
    net_stride: u32,
    output: u32,
    coef: f64,
) {
    let i = global_index();
    if i >= n as usize || chain_len == 0 {
        return;
    }
    let (c, e) = (i / chain_len as usize, i % chain_len as usize);
    // SAFETY: the caller's sizes.
    unsafe {
        let y = *net.add(c * net_stride as usize + e);
        let v = match output {
            0 => output_to_denoised(NetOutput::Eps, *x.add(i), y, coef),
            1 => output_to_denoised(NetOutput::Score, *x.add(i), y, coef),
            _ => y,
        };
        d.add(i).write(v);
    }
}
