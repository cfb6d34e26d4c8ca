//! Layer kernels on the device, sharing the CPU kernels' per-element bodies: SiLU, the residual
//! addition, Linear (one output per thread, the CPU's fixed-order `dot`), GroupNorm (one block
//! per group; f64 statistics through a shared-memory reduction, then the CPU's `normalize`,
//! `film_element` and `silu`) and the attention core (the CPU's `logits`, `softmax_inplace`
//! and `dot`, one row per thread). Tensors are batched NCHW: `[batch, C, H·W]`.

use core::arch::asm;
use core::arch::nvptx::{_block_idx_x, _block_idx_y, _syncthreads, _thread_idx_x};
use core::slice;

use super::global_index;
use crate::attention::{dot as attn_dot, head_rows, logits, softmax_inplace};
use crate::elementwise::silu;
use crate::embedding::timestep_embedding_element;
use crate::norm::{film_element, group_affine, normalize};
use crate::resample::avg4;
use crate::{QkvOrder, Weight};

/// Threads per block of [`group_norm_f32`] (the reduction assumes exactly this many).
pub const GN_THREADS: usize = 256;

/// `x[i] = silu(x[i])` for `i < n`.
///
/// # Safety
/// `x` holds `n` writable `f32`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn silu_f32(x: *mut f32, n: u32) {
    let i = global_index();
    if i < n as usize {
        // SAFETY: i < n.
        unsafe { x.add(i).write(silu(*x.add(i))) };
    }
}

/// `dst[i] += src[i]` for `i < n` (the residual addition, as `add_inplace`).
///
/// # Safety
/// `dst` and `src` hold `n` `f32`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn add_f32(dst: *mut f32, src: *const f32, n: u32) {
    let i = global_index();
    if i < n as usize {
        // SAFETY: i < n.
        unsafe { *dst.add(i) += *src.add(i) };
    }
}

/// `y[b, o] = W[o, :]·x[b, :] + bias[o]`, one thread per (b, o), with the CPU's `dot`.
///
/// # Safety
/// `x` holds batch·in, `w` out·in, `bias` out and `y` batch·out elements.
unsafe fn linear<W: Weight>(
    x: *const f32,
    w: *const W,
    bias: *const f32,
    y: *mut f32,
    batch: u32,
    in_features: u32,
    out_features: u32,
) {
    let i = global_index();
    let (nin, nout) = (in_features as usize, out_features as usize);
    if i >= batch as usize * nout {
        return;
    }
    let (b, o) = (i / nout, i % nout);
    // SAFETY: the rows lie inside the buffers by the caller's contract.
    unsafe {
        let row = slice::from_raw_parts(w.add(o * nin), nin);
        let xb = slice::from_raw_parts(x.add(b * nin), nin);
        y.add(i).write(crate::linear::dot(row, xb) + *bias.add(o));
    }
}

/// [`linear`] with f32 weights.
///
/// # Safety
/// See [`linear`].
#[no_mangle]
pub unsafe extern "ptx-kernel" fn linear_f32(
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    batch: u32,
    in_features: u32,
    out_features: u32,
) {
    // SAFETY: forwarded contract.
    unsafe { linear(x, w, bias, y, batch, in_features, out_features) }
}

/// [`linear`] with f16 weights (widened exactly to f32 per element).
///
/// # Safety
/// See [`linear`].
#[no_mangle]
pub unsafe extern "ptx-kernel" fn linear_f16w(
    x: *const f32,
    w: *const half::f16,
    bias: *const f32,
    y: *mut f32,
    batch: u32,
    in_features: u32,
    out_features: u32,
) {
    // SAFETY: forwarded contract.
    unsafe { linear(x, w, bias, y, batch, in_features, out_features) }
}

/// GroupNorm (+ optional FiLM, + optional SiLU) as `norm::GroupNorm::forward`, one block of
/// [`GN_THREADS`] threads per (group = blockIdx.x, image = blockIdx.y). `film` is a ResBlock's
/// `emb_layers` output `[batch, 2·channels]` (scale, then shift) or null; `out` may equal `x` (each element is read before any
/// thread of the block writes, thanks to the barrier after the statistics).
///
/// # Safety
/// `x`, `out` hold batch·channels·hw, `gamma`, `beta` channels, `film` (unless null)
/// batch·2·channels `f32`; groups divides channels; the block has exactly GN_THREADS threads.
#[no_mangle]
// The ABI is fixed (scripts/ptx/entries.txt, the host's launches): one scalar per parameter.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn group_norm_f32(
    x: *const f32,
    gamma: *const f32,
    beta: *const f32,
    film: *const f32,
    out: *mut f32,
    channels: u32,
    hw: u32,
    groups: u32,
    eps: f32,
    silu_after: u32,
) {
    let sums: *mut f64;
    // SAFETY: declares this kernel's static shared array (2·GN_THREADS f64) and takes its
    // generic address; no other effect.
    unsafe {
        asm!(
            ".shared .align 8 .b8 gn_sums[4096];",
            "cvta.shared.u64 {p}, gn_sums;",
            p = out(reg64) sums,
        );
    }
    let (tid, g, b) = unsafe {
        // SAFETY: special registers.
        (
            _thread_idx_x() as usize,
            _block_idx_x() as usize,
            _block_idx_y() as usize,
        )
    };
    let (channels, hw) = (channels as usize, hw as usize);
    let cpg = channels / groups as usize;
    let len = cpg * hw;
    let base = (b * channels + g * cpg) * hw;
    // SAFETY: every index below stays inside the group `base .. base + len` or the shared
    // array of 2·GN_THREADS f64 (caller's contract on sizes and block shape).
    unsafe {
        let (mut s1, mut s2) = (0f64, 0f64);
        let mut j = tid;
        while j < len {
            let v = *x.add(base + j) as f64;
            s1 += v;
            s2 += v * v;
            j += GN_THREADS;
        }
        *sums.add(tid) = s1;
        *sums.add(GN_THREADS + tid) = s2;
        _syncthreads();
        let mut half = GN_THREADS / 2;
        while half > 0 {
            if tid < half {
                *sums.add(tid) += *sums.add(tid + half);
                *sums.add(GN_THREADS + tid) += *sums.add(GN_THREADS + tid + half);
            }
            _syncthreads();
            half /= 2;
        }
        let n = len as f64;
        let mean = *sums / n;
        let var = (*sums.add(GN_THREADS) / n - mean * mean).max(0.0);
        let (mean_hi, mean_lo, rstd) = group_affine(mean, var, eps);
        let mut j = tid;
        while j < len {
            let c = g * cpg + j / hw;
            let s = (rstd * *gamma.add(c) as f64) as f32;
            let mut y = normalize(*x.add(base + j), mean_hi, mean_lo, s, *beta.add(c));
            if !film.is_null() {
                let f = film.add(2 * b * channels);
                y = film_element(y, 1.0 + *f.add(c), *f.add(channels + c));
            }
            if silu_after != 0 {
                y = silu(y);
            }
            out.add(base + j).write(y);
            j += GN_THREADS;
        }
    }
}

/// The q, k, v rows of (image b, head) as slices of `t` columns each.
///
/// # Safety
/// `qkv` holds batch·3·channels·t `f32`.
unsafe fn qkv_head<'a>(
    qkv: *const f32,
    b: usize,
    channels: usize,
    t: usize,
    heads: usize,
    head: usize,
    legacy: u32,
) -> (&'a [f32], &'a [f32], &'a [f32]) {
    let ch = channels / heads;
    let order = if legacy != 0 {
        QkvOrder::Legacy
    } else {
        QkvOrder::New
    };
    let (q0, k0, v0) = head_rows(order, channels, ch, head);
    // SAFETY: the rows lie inside image b's [3C, T] block.
    unsafe {
        let img = qkv.add(b * 3 * channels * t);
        (
            slice::from_raw_parts(img.add(q0 * t), ch * t),
            slice::from_raw_parts(img.add(k0 * t), ch * t),
            slice::from_raw_parts(img.add(v0 * t), ch * t),
        )
    }
}

/// Attention weights: for each (image, head, query) row r, `weights[r·t ..][..t]` =
/// softmax of the scaled logits, exactly as `attention::QkvAttention::forward` computes its row.
///
/// # Safety
/// `qkv` holds batch·3·channels·t, `weights` batch·heads·t·t `f32`; heads divides channels.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attention_weights_f32(
    qkv: *const f32,
    weights: *mut f32,
    batch: u32,
    channels: u32,
    t: u32,
    heads: u32,
    legacy: u32,
) {
    let r = global_index();
    let (channels, t, heads) = (channels as usize, t as usize, heads as usize);
    if r >= batch as usize * heads * t {
        return;
    }
    let (b, head, target) = (r / (heads * t), r / t % heads, r % t);
    let ch = channels / heads;
    let scale = 1.0 / libm::sqrtf(libm::sqrtf(ch as f32));
    // SAFETY: the caller's sizes; row r is this thread's own.
    unsafe {
        let (q, k, _) = qkv_head(qkv, b, channels, t, heads, head, legacy);
        let row = slice::from_raw_parts_mut(weights.add(r * t), t);
        logits(q, k, t, target, scale, row);
        softmax_inplace(row);
    }
}

/// Attention output `out[b, head·ch + c, target] = Σ_s w[target, s]·v[c, s]` (the CPU's `dot`),
/// one thread per output element, from [`attention_weights_f32`]'s rows.
///
/// # Safety
/// As [`attention_weights_f32`]; `out` holds batch·channels·t `f32`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attention_output_f32(
    qkv: *const f32,
    weights: *const f32,
    out: *mut f32,
    batch: u32,
    channels: u32,
    t: u32,
    heads: u32,
    legacy: u32,
) {
    let i = global_index();
    let (channels, t, heads) = (channels as usize, t as usize, heads as usize);
    if i >= batch as usize * channels * t {
        return;
    }
    let ch = channels / heads;
    let (b, oc, target) = (i / (channels * t), i / t % channels, i % t);
    let (head, c) = (oc / ch, oc % ch);
    // SAFETY: the caller's sizes.
    unsafe {
        let (_, _, v) = qkv_head(qkv, b, channels, t, heads, head, legacy);
        let row = slice::from_raw_parts(weights.add(((b * heads + head) * t + target) * t), t);
        out.add(i).write(attn_dot(row, &v[c * t..(c + 1) * t]));
    }
}

/// `out[b, i] = timestep_embedding_element(t[b], i, dim, max_period)`, one thread per element
/// of `[batch, dim]`.
///
/// # Safety
/// `t` holds `batch`, `out` batch·dim `f32`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn timestep_embedding_f32(
    t: *const f32,
    out: *mut f32,
    batch: u32,
    dim: u32,
    max_period: f32,
) {
    let i = global_index();
    let dim = dim as usize;
    if i < batch as usize * dim {
        // SAFETY: i < batch·dim, i / dim < batch.
        unsafe {
            let v = timestep_embedding_element(*t.add(i / dim), i % dim, dim, max_period);
            out.add(i).write(v);
        }
    }
}

/// Nearest 2× upsampling of `planes` maps of h×w: `out[p, y, x] = x[p, y/2, x/2]`, one thread
/// per output element.
///
/// # Safety
/// `x` holds planes·h·w, `out` planes·4·h·w `f32`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn upsample_nearest2x_f32(
    x: *const f32,
    out: *mut f32,
    planes: u32,
    h: u32,
    w: u32,
) {
    let i = global_index();
    let (h, w) = (h as usize, w as usize);
    let (oh, ow) = (2 * h, 2 * w);
    if i < planes as usize * oh * ow {
        let (p, y, xx) = (i / (oh * ow), i / ow % oh, i % ow);
        // SAFETY: (p, y/2, xx/2) lies inside plane p of the input.
        unsafe { out.add(i).write(*x.add((p * h + y / 2) * w + xx / 2)) };
    }
}

/// 2×2 average pooling of `planes` maps of h×w (even) with the CPU's [`avg4`], one thread per
/// output element.
///
/// # Safety
/// `x` holds planes·h·w, `out` planes·(h/2)·(w/2) `f32`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn avg_pool2x2_f32(
    x: *const f32,
    out: *mut f32,
    planes: u32,
    h: u32,
    w: u32,
) {
    let i = global_index();
    let (h, w) = (h as usize, w as usize);
    let (oh, ow) = (h / 2, w / 2);
    if i < planes as usize * oh * ow {
        let (p, y, xx) = (i / (oh * ow), i / ow % oh, i % ow);
        // SAFETY: rows 2y, 2y+1 and columns 2xx, 2xx+1 lie inside plane p.
        unsafe {
            let r0 = x.add((p * h + 2 * y) * w + 2 * xx);
            let r1 = r0.add(w);
            out.add(i).write(avg4(*r0, *r0.add(1), *r1, *r1.add(1)));
        }
    }
}

/// The decoder's channel concatenation: `dst[b, first + c, p] = src[b, c, p]` for a
/// `[batch, src_channels, hw]` source into a `[batch, dst_channels, hw]` destination, one
/// thread per source element.
///
/// # Safety
/// `src` holds batch·src_channels·hw, `dst` batch·dst_channels·hw `f32`;
/// first + src_channels ≤ dst_channels.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn copy_channels_f32(
    dst: *mut f32,
    src: *const f32,
    batch: u32,
    src_channels: u32,
    dst_channels: u32,
    first: u32,
    hw: u32,
) {
    let i = global_index();
    let (sc, dc, hw) = (src_channels as usize, dst_channels as usize, hw as usize);
    if i < batch as usize * sc * hw {
        let (b, c, p) = (i / (sc * hw), i / hw % sc, i % hw);
        // SAFETY: the caller's sizes.
        unsafe {
            dst.add((b * dc + first as usize + c) * hw + p)
                .write(*src.add(i))
        };
    }
}

/// `x[b, c, p] += bias[b·stride + c]`: a ResBlock without scale-shift adds its `emb_layers`
/// output to every pixel; one thread per element of `[batch, channels, hw]`.
///
/// # Safety
/// `x` holds batch·channels·hw `f32`, `bias` covers (batch−1)·stride + channels.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn add_channel_bias_f32(
    x: *mut f32,
    bias: *const f32,
    stride: u32,
    batch: u32,
    channels: u32,
    hw: u32,
) {
    let i = global_index();
    let (c, hw) = (channels as usize, hw as usize);
    if i < batch as usize * c * hw {
        let (b, ch) = (i / (c * hw), i / hw % c);
        // SAFETY: the caller's sizes.
        unsafe { *x.add(i) += *bias.add(b * stride as usize + ch) };
    }
}
