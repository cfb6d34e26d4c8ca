//! `GroupNorm32` (guided-diffusion `normalization(ch)`), fused with the FiLM modulation of
//! ResBlock's `use_scale_shift_norm` and the SiLU that follows every norm in the ADM U-Net.

use crate::elementwise::{silu_grad, silu_inplace};
use crate::{check_len, check_range, KernelError};

/// Lanes of the f64 partial sums: a fixed interleaving, so the statistics of a group never
/// depend on how the caller splits the groups.
const LANES: usize = 8;

/// Mean and biased variance of `x`, in one pass of f64 sums of x and x² (8 interleaved lanes).
/// In f64 the cancellation in E[x²] − μ² costs ~1e-16·μ²/σ² relative, negligible for any
/// activation an f32 network produces.
fn mean_var(x: &[f32]) -> (f64, f64) {
    dispatch!(mean_var_body, mean_var_avx2, x)
}

#[inline(always)]
fn mean_var_body(x: &[f32]) -> (f64, f64) {
    let mut s1 = [0f64; LANES];
    let mut s2 = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let v = c[l] as f64;
            s1[l] += v;
            s2[l] += v * v;
        }
    }
    mean_var_finish(&s1, &s2, tail, x.len())
}

/// [`mean_var_body`] with the lanes as two AVX vectors of four f64 each (LLVM does not
/// vectorise the portable loop's widening to f64): the same operations per lane, so the
/// same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mean_var_avx2(x: &[f32]) -> (f64, f64) {
    use core::arch::x86_64::*;
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
    // SAFETY: AVX2 by the caller's contract; every chunk holds LANES floats, s1 and s2 LANES.
    unsafe {
        let z = _mm256_setzero_pd();
        let (mut a_lo, mut a_hi, mut b_lo, mut b_hi) = (z, z, z, z);
        for c in chunks {
            let v = _mm256_loadu_ps(c.as_ptr());
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
            a_lo = _mm256_add_pd(a_lo, lo);
            a_hi = _mm256_add_pd(a_hi, hi);
            b_lo = _mm256_add_pd(b_lo, _mm256_mul_pd(lo, lo));
            b_hi = _mm256_add_pd(b_hi, _mm256_mul_pd(hi, hi));
        }
        _mm256_storeu_pd(s1.as_mut_ptr(), a_lo);
        _mm256_storeu_pd(s1.as_mut_ptr().add(4), a_hi);
        _mm256_storeu_pd(s2.as_mut_ptr(), b_lo);
        _mm256_storeu_pd(s2.as_mut_ptr().add(4), b_hi);
    }
    mean_var_finish(&s1, &s2, tail, x.len())
}

/// Mean and variance from the lanes' sums of x and x², the tail added in order.
#[inline(always)]
fn mean_var_finish(s1: &[f64; LANES], s2: &[f64; LANES], tail: &[f32], n: usize) -> (f64, f64) {
    let (mut a, mut b) = (tree(s1), tree(s2));
    for &v in tail {
        a += v as f64;
        b += v as f64 * v as f64;
    }
    let n = n as f64;
    let mean = a / n;
    (mean, (b / n - mean * mean).max(0.0))
}

fn tree(a: &[f64; LANES]) -> f64 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// Argument tuple of [`channel_forward`]: group constants, channel constants, whether FiLM
/// applies, whether SiLU follows, one channel of x and of y.
type FwdArgs<'a> = (&'a Pre, &'a Chan, bool, bool, &'a [f32], &'a mut [f32]);

/// One channel of the forward: y = (x − μ)·s + β, then y·fs + fb if FiLM, then SiLU.
#[inline(always)]
fn channel_forward((pre, ch, film, silu, xc, yc): FwdArgs) {
    for (y, &v) in yc.iter_mut().zip(xc) {
        *y = normalize(v, pre.mean_hi, pre.mean_lo, ch.s, ch.b);
    }
    if film {
        for y in yc.iter_mut() {
            *y = film_element(*y, ch.fs, ch.fb);
        }
    }
    if silu {
        silu_inplace(yc);
    }
}

simd_twins!(channel_forward_avx2, channel_forward_avx512, (args: FwdArgs), {
    channel_forward(args)
});

/// From a group's f64 mean and biased variance: μ split into two f32 parts (hi, lo) and
/// rstd = 1/sqrt(σ² + eps) in f64 (shared with the GPU kernel).
#[inline(always)]
pub(crate) fn group_affine(mean: f64, var: f64, eps: f32) -> (f32, f32, f64) {
    let rstd = 1.0 / libm::sqrt(var + eps as f64);
    let mean_hi = mean as f32;
    (mean_hi, (mean - mean_hi as f64) as f32, rstd)
}

/// The per-element body of [`GroupNorm::forward`] (shared with the GPU kernel): (v − μ)·s + β
/// with μ split into two f32 parts (`mean_hi + mean_lo`) so the centring stays accurate when
/// |μ| ≫ σ.
#[inline(always)]
pub(crate) fn normalize(v: f32, mean_hi: f32, mean_lo: f32, s: f32, b: f32) -> f32 {
    ((v - mean_hi) - mean_lo) * s + b
}

/// ResBlock's scale-shift modulation of one normalised element, y·(1 + scale) + shift, with
/// the channel's factor 1 + scale formed once by the caller.
#[inline(always)]
pub(crate) fn film_element(y: f32, factor: f32, shift: f32) -> f32 {
    y * factor + shift
}

/// A GroupNorm layer (guided-diffusion's `GroupNorm32`) over `channels` maps of `hw` pixels in
/// `groups` groups, then FiLM if [`NormAffine::film`] is given, then SiLU if `silu`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    /// Channels (a multiple of `groups`).
    pub channels: usize,
    /// Pixels per channel.
    pub hw: usize,
    /// Groups.
    pub groups: usize,
    /// The variance's ε.
    pub eps: f32,
    /// Whether SiLU follows (the ADM U-Net's `normalization` + `SiLU` pairs).
    pub silu: bool,
}

/// What scales and shifts the normalised values: the layer's γ and β (`[channels]` each) and,
/// for ResBlock's scale-shift norm, the FiLM `(scale, shift)` (`[channels]` each).
#[derive(Clone, Copy, Debug)]
pub struct NormAffine<'a> {
    /// γ.
    pub gamma: &'a [f32],
    /// β.
    pub beta: &'a [f32],
    /// FiLM (scale, shift), applied after the affine.
    pub film: Option<(&'a [f32], &'a [f32])>,
}

/// The gradients [`GroupNorm::backward`] accumulates into: the slices for the channels of its
/// groups (`dx` `[channels·hw]`, the others `[channels]`); `dfilm` exactly when the forward
/// had FiLM.
#[derive(Debug)]
pub struct NormGrads<'a> {
    /// ∂L/∂x.
    pub dx: &'a mut [f32],
    /// ∂L/∂γ.
    pub dgamma: &'a mut [f32],
    /// ∂L/∂β.
    pub dbeta: &'a mut [f32],
    /// ∂L/∂(scale, shift) of FiLM.
    pub dfilm: Option<(&'a mut [f32], &'a mut [f32])>,
}

impl GroupNorm {
    /// Checks the shape; returns channels per group.
    fn check(&self) -> Result<usize, KernelError> {
        let (channels, groups) = (self.channels, self.groups);
        if groups == 0 || !channels.is_multiple_of(groups) || self.hw == 0 {
            return Err(KernelError::Shape(
                "group norm: channels must be a nonzero multiple of groups, hw > 0",
            ));
        }
        Ok(channels / groups)
    }

    /// GroupNorm over `x` = [channels, hw] for the groups `g` (channels g.start·cpg .. g.end·cpg,
    /// cpg = channels/groups; `out` is exactly that slice of the output):
    /// `y = (x − μ_g)/sqrt(σ²_g + eps)·gamma[c] + beta[c]` with the biased variance (statistics in
    /// f64, one pass; the centring x − μ uses μ split into two f32 parts so it stays accurate when
    /// |μ| ≫ σ, then `y = (x − μ)·s_c + beta[c]` with `s_c = rstd·gamma[c]` in f32); then, if
    /// `p.film = Some((scale, shift))`, `y ← y·(1 + scale[c]) + shift[c]`
    /// (ResBlock's scale-shift norm, after the affine); then, if `silu`, y ← SiLU(y).
    pub fn forward(
        &self,
        x: &[f32],
        p: &NormAffine,
        g: core::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let cpg = self.check()?;
        let GroupNorm {
            channels,
            hw,
            groups,
            eps,
            silu: silu_after,
        } = *self;
        let NormAffine { gamma, beta, film } = *p;
        check_len("group norm input", channels * hw, x.len())?;
        check_len("group norm gamma", channels, gamma.len())?;
        check_len("group norm beta", channels, beta.len())?;
        if let Some((scale, shift)) = film {
            check_len("group norm FiLM scale", channels, scale.len())?;
            check_len("group norm FiLM shift", channels, shift.len())?;
        }
        check_range("group norm: group range outside 0..groups", &g, groups)?;
        check_len("group norm output", g.len() * cpg * hw, out.len())?;

        let group_len = cpg * hw;
        for (gi, out_g) in g.zip(out.chunks_exact_mut(group_len)) {
            let xg = &x[gi * group_len..(gi + 1) * group_len];
            let (mean, var) = mean_var(xg);
            let (mean_hi, mean_lo, rstd) = group_affine(mean, var, eps);
            for (j, (xc, yc)) in xg
                .chunks_exact(hw)
                .zip(out_g.chunks_exact_mut(hw))
                .enumerate()
            {
                let c = gi * cpg + j;
                let ch = Chan {
                    s: (rstd * gamma[c] as f64) as f32,
                    b: beta[c],
                    fs: film.map_or(1.0, |(scale, _)| 1.0 + scale[c]),
                    fb: film.map_or(0.0, |(_, shift)| shift[c]),
                };
                let pre = Pre {
                    mean_hi,
                    mean_lo,
                    rstd: 0.0, // unused by the forward
                };
                let args = (&pre, &ch, film.is_some(), silu_after, xc, yc);
                dispatch!(
                    channel_forward,
                    channel_forward_avx2,
                    channel_forward_avx512,
                    args
                );
            }
        }
        Ok(())
    }

    /// Backward of [`GroupNorm::forward`] (same arguments after the gradients) for the groups `g`,
    /// recomputing the group statistics and the pre-activation exactly as the forward does, so
    /// the forward need save nothing but its input `x`. Reads the whole `dout` = ∂L/∂y
    /// [channels, hw]; accumulates (`+=`) into the slices for the groups' channels only:
    /// `dx` [g.len()·cpg·hw], `dgamma`, `dbeta` [g.len()·cpg] and, iff `p.film` is given,
    /// `grads.dfilm = Some((dscale, dshift))` [g.len()·cpg]. With x̂ = (x − μ)·rstd, y₁ = x̂·γ + β,
    /// z = y₁·(1 + scale) + shift, y = SiLU(z) and n = cpg·hw:
    /// gz = dy·SiLU′(z), dy₁ = gz·(1 + scale), dscale += Σ gz·y₁, dshift += Σ gz,
    /// dγ += Σ dy₁·x̂, dβ += Σ dy₁ (sums over the channel's pixels),
    /// dx += rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) with dx̂ = dy₁·γ (means over the group).
    /// Per element all arithmetic is f32; the sums over a channel are f32 lanes per block of
    /// [`BLOCK`] pixels, accumulated in f64 (see [`channel_sums`]), then added to the f32 buffers
    /// once per call.
    pub fn backward(
        &self,
        grads: NormGrads,
        dout: &[f32],
        x: &[f32],
        p: &NormAffine,
        g: core::ops::Range<usize>,
    ) -> Result<(), KernelError> {
        let cpg = self.check()?;
        let GroupNorm {
            channels,
            hw,
            groups,
            eps,
            silu: silu_after,
        } = *self;
        let NormAffine { gamma, beta, film } = *p;
        let NormGrads {
            dx,
            dgamma,
            dbeta,
            mut dfilm,
        } = grads;
        check_len("group norm input", channels * hw, x.len())?;
        check_len("group norm dout", channels * hw, dout.len())?;
        check_len("group norm gamma", channels, gamma.len())?;
        check_len("group norm beta", channels, beta.len())?;
        check_range("group norm: group range outside 0..groups", &g, groups)?;
        let nc = g.len() * cpg;
        check_len("group norm dx", nc * hw, dx.len())?;
        check_len("group norm dgamma", nc, dgamma.len())?;
        check_len("group norm dbeta", nc, dbeta.len())?;
        match (&film, &dfilm) {
            (Some((scale, shift)), Some((dscale, dshift))) => {
                check_len("group norm FiLM scale", channels, scale.len())?;
                check_len("group norm FiLM shift", channels, shift.len())?;
                check_len("group norm dscale", nc, dscale.len())?;
                check_len("group norm dshift", nc, dshift.len())?;
            }
            (None, None) => {}
            _ => {
                return Err(KernelError::Shape(
                    "group norm backward: dfilm must be given exactly when film is",
                ))
            }
        }

        let group_len = cpg * hw;
        let mut gz_cache = [0f32; GZ_CACHE];
        for (gl, gi) in g.enumerate() {
            let at = gi * group_len;
            let xg = &x[at..at + group_len];
            let (mean, var) = mean_var(xg);
            let rstd = 1.0 / libm::sqrt(var + eps as f64);
            let pre = Pre {
                mean_hi: mean as f32,
                mean_lo: (mean - (mean as f32) as f64) as f32,
                rstd: rstd as f32,
            };
            // Pass 1: per-channel parameter gradients and the two group means of dx̂; gz is kept
            // for pass 2 when the group fits the cache.
            let cached = silu_after && group_len <= GZ_CACHE;
            let (mut s1, mut s2) = (0f64, 0f64);
            for j in 0..cpg {
                let c = gi * cpg + j;
                let ch = pre.channel(c, rstd, gamma, beta, film);
                let (xc, dyc) = (&x[c * hw..(c + 1) * hw], &dout[c * hw..(c + 1) * hw]);
                let keep = &mut gz_cache[if cached { j * hw..(j + 1) * hw } else { 0..0 }];
                // Σ gz·y₁, Σ gz, Σ dy₁·x̂, Σ dy₁
                let sums = if silu_after {
                    dispatch!(
                        channel_sums::<true>,
                        channel_sums_avx2,
                        channel_sums_avx512,
                        (&pre, &ch, xc, dyc, keep)
                    )
                } else {
                    dispatch!(
                        channel_sums::<false>,
                        channel_sums_avx2,
                        channel_sums_avx512,
                        (&pre, &ch, xc, dyc, keep)
                    )
                };
                let l = gl * cpg + j;
                if let Some((dscale, dshift)) = dfilm.as_mut() {
                    dscale[l] += sums[0] as f32;
                    dshift[l] += sums[1] as f32;
                }
                dgamma[l] += sums[2] as f32;
                dbeta[l] += sums[3] as f32;
                s1 += gamma[c] as f64 * sums[3];
                s2 += gamma[c] as f64 * sums[2];
            }
            let m = [
                (s1 / group_len as f64) as f32,
                (s2 / group_len as f64) as f32,
            ];
            // Pass 2: dx, recomputing dy₁ (cheaper than a scratch buffer of the group's size).
            for j in 0..cpg {
                let c = gi * cpg + j;
                let ch = pre.channel(c, rstd, gamma, beta, film);
                let (xc, dyc) = (&x[c * hw..(c + 1) * hw], &dout[c * hw..(c + 1) * hw]);
                let dxc = &mut dx[(gl * cpg + j) * hw..][..hw];
                let args = (&pre, &ch, gamma[c], m, xc, dyc, dxc);
                if cached {
                    let gz = &gz_cache[j * hw..(j + 1) * hw];
                    dispatch!(
                        channel_dx_kept,
                        channel_dx_kept_avx2,
                        channel_dx_kept_avx512,
                        (args, gz)
                    );
                } else if silu_after {
                    dispatch!(channel_dx::<true>, channel_dx_avx2, channel_dx_avx512, args);
                } else {
                    dispatch!(
                        channel_dx::<false>,
                        channel_dx_avx2,
                        channel_dx_avx512,
                        args
                    );
                }
            }
        }
        Ok(())
    }
}

/// Elements per block of the backward's f32 sums: each of the [`LANES`] lanes adds at most
/// BLOCK/LANES = 32 terms in f32 (relative rounding ≲ 32·2⁻²⁴ on a sum of like-signed terms)
/// before the block's lanes go into f64, so the accuracy does not degrade with the map size
/// while the per-element work stays in vectorisable f32.
const BLOCK: usize = 256;

/// Floats of gz = dy·SiLU′(z) the backward keeps from pass 1 for pass 2 (16 KiB of stack;
/// each costs an exponential and a division): every group of the bundled U-Nets (at most 4
/// channels of 32 × 32) fits; larger groups recompute gz, which gives the same bits.
const GZ_CACHE: usize = 4096;

/// Argument tuple of [`channel_sums`]: group and channel constants, one channel of x and dy,
/// and where to keep the channel's gz (empty: nowhere).
type SumArgs<'a> = (&'a Pre, &'a Chan, &'a [f32], &'a [f32], &'a mut [f32]);

simd_twins!(channel_sums_avx2, channel_sums_avx512<const SILU: bool>, (args: SumArgs) -> [f64; 4], {
    // SAFETY: AVX2 by the caller's contract.
    unsafe { channel_sums_simd::<SILU>(args) }
});

/// The body of the [`channel_sums`] twins: its sums over gz (kept, or dy itself without SiLU)
/// in AVX vectors, the same operations per lane as [`sums_by`], so the same bits.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn channel_sums_simd<const SILU: bool>((pre, ch, xc, dyc, keep): SumArgs) -> [f64; 4] {
    if keep.is_empty() {
        if SILU {
            return sums_by::<true, false>(pre, ch, xc, dyc);
        }
        // SAFETY: AVX2 by the caller's contract.
        return unsafe { sums_of_gz_avx2(pre, ch, xc, dyc) };
    }
    keep_gz::<SILU>(pre, ch, xc, dyc, keep);
    // SAFETY: AVX2 by the caller's contract.
    unsafe { sums_of_gz_avx2(pre, ch, xc, keep) }
}

/// `sums_by::<_, true>` in AVX vectors: per block, the f32 lanes as one vector per sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sums_of_gz_avx2(pre: &Pre, ch: &Chan, xc: &[f32], g: &[f32]) -> [f64; 4] {
    use core::arch::x86_64::*;
    let mut total = [0f64; 4];
    for (xb, gb) in xc.chunks(BLOCK).zip(g.chunks(BLOCK)) {
        let mut acc = [[0f32; LANES]; 4];
        let (xl, gl) = (xb.chunks_exact(LANES), gb.chunks_exact(LANES));
        let (xt, gt) = (xl.remainder(), gl.remainder());
        // SAFETY: AVX2 by the caller's contract; every chunk and acc row holds LANES floats.
        unsafe {
            let splat = _mm256_set1_ps;
            let (mh, ml, rstd) = (splat(pre.mean_hi), splat(pre.mean_lo), splat(pre.rstd));
            let (sc, b, fs) = (splat(ch.s), splat(ch.b), splat(ch.fs));
            let mut a = [_mm256_setzero_ps(); 4];
            for (xv, gv) in xl.zip(gl) {
                let (v, gz) = (_mm256_loadu_ps(xv.as_ptr()), _mm256_loadu_ps(gv.as_ptr()));
                // The operations of Chan::element_of_gz, in its order (no FMA).
                let cen = _mm256_sub_ps(_mm256_sub_ps(v, mh), ml);
                let y1 = _mm256_add_ps(_mm256_mul_ps(cen, sc), b);
                let xhat = _mm256_mul_ps(cen, rstd);
                let dy1 = _mm256_mul_ps(gz, fs);
                a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(gz, y1));
                a[1] = _mm256_add_ps(a[1], gz);
                a[2] = _mm256_add_ps(a[2], _mm256_mul_ps(dy1, xhat));
                a[3] = _mm256_add_ps(a[3], dy1);
            }
            for (row, v) in acc.iter_mut().zip(a) {
                _mm256_storeu_ps(row.as_mut_ptr(), v);
            }
        }
        for (l, (&v, &gz)) in xt.iter().zip(gt).enumerate() {
            add_terms(&mut acc, l, ch.element_of_gz(pre, v, gz));
        }
        add_block(&mut total, &acc);
    }
    total
}

/// Adds one element's terms of the four pass-1 sums to lane `l` of `acc`.
#[inline(always)]
fn add_terms(acc: &mut [[f32; LANES]; 4], l: usize, (xhat, y1, gz, dy1): (f32, f32, f32, f32)) {
    acc[0][l] += gz * y1;
    acc[1][l] += gz;
    acc[2][l] += dy1 * xhat;
    acc[3][l] += dy1;
}

/// Adds a block's lanes to the f64 totals (each row's lanes as a fixed tree).
#[inline(always)]
fn add_block(total: &mut [f64; 4], acc: &[[f32; LANES]; 4]) {
    for (t, a) in total.iter_mut().zip(acc) {
        *t += tree(&a.map(f64::from));
    }
}

/// Writes each element's gz to `keep`.
#[inline(always)]
fn keep_gz<const SILU: bool>(pre: &Pre, ch: &Chan, xc: &[f32], dyc: &[f32], keep: &mut [f32]) {
    assert_eq!(keep.len(), xc.len());
    for ((k, &v), &dy) in keep.iter_mut().zip(xc).zip(dyc) {
        *k = ch.gz::<SILU>(pre, v, dy);
    }
}

/// The four sums of pass 1 over one channel: [Σ gz·y₁, Σ gz, Σ dy₁·x̂, Σ dy₁], element i
/// added to f32 lane i mod [`LANES`] of its [`BLOCK`], the blocks' lanes summed in f64 in
/// a fixed order (independent of how the caller splits the groups). When `keep` is not
/// empty, each element's gz is first written there and the sums read it back (same values).
#[inline(always)]
fn channel_sums<const SILU: bool>((pre, ch, xc, dyc, keep): SumArgs) -> [f64; 4] {
    if keep.is_empty() {
        return sums_by::<SILU, false>(pre, ch, xc, dyc);
    }
    keep_gz::<SILU>(pre, ch, xc, dyc, keep);
    sums_by::<SILU, true>(pre, ch, xc, keep)
}

/// [`channel_sums`] over `g` = dy (GZ false) or the elements' gz (GZ true).
#[inline(always)]
fn sums_by<const SILU: bool, const GZ: bool>(
    pre: &Pre,
    ch: &Chan,
    xc: &[f32],
    g: &[f32],
) -> [f64; 4] {
    let mut total = [0f64; 4];
    for (xb, db) in xc.chunks(BLOCK).zip(g.chunks(BLOCK)) {
        let mut acc = [[0f32; LANES]; 4];
        let (xl, dl) = (xb.chunks_exact(LANES), db.chunks_exact(LANES));
        let (xt, dt) = (xl.remainder(), dl.remainder());
        let element = |v: f32, g: f32| match GZ {
            true => ch.element_of_gz(pre, v, g),
            false => ch.element::<SILU>(pre, v, g),
        };
        for (xv, dv) in xl.zip(dl) {
            for l in 0..LANES {
                add_terms(&mut acc, l, element(xv[l], dv[l]));
            }
        }
        for (l, (&v, &dy)) in xt.iter().zip(dt).enumerate() {
            add_terms(&mut acc, l, element(v, dy));
        }
        add_block(&mut total, &acc);
    }
    total
}

/// Argument tuple of [`channel_dx`]: group and channel constants, γ of the channel, the
/// group means m, one channel of x, dy and dx.
type DxArgs<'a> = (
    &'a Pre,
    &'a Chan,
    f32,
    [f32; 2],
    &'a [f32],
    &'a [f32],
    &'a mut [f32],
);

simd_twins!(channel_dx_avx2, channel_dx_avx512<const SILU: bool>, (args: DxArgs), {
    channel_dx::<SILU>(args)
});

/// Pass 2 over one channel: dx += rstd·((dy₁·γ − m[0]) − x̂·m[1]), m = the group means of
/// dx̂ and dx̂·x̂.
#[inline(always)]
fn channel_dx<const SILU: bool>((pre, ch, gc, m, xc, dyc, dxc): DxArgs) {
    for ((d, &v), &dy) in dxc.iter_mut().zip(xc).zip(dyc) {
        let (xhat, _, _, dy1) = ch.element::<SILU>(pre, v, dy);
        *d += pre.rstd * ((dy1 * gc - m[0]) - xhat * m[1]);
    }
}

simd_twins!(channel_dx_kept_avx2, channel_dx_kept_avx512, (args: (DxArgs, &[f32])), {
    channel_dx_kept(args)
});

/// [`channel_dx`] from the gz pass 1 kept (`dyc` unused).
#[inline(always)]
fn channel_dx_kept(((pre, ch, gc, m, xc, _, dxc), gzc): (DxArgs, &[f32])) {
    for ((d, &v), &gz) in dxc.iter_mut().zip(xc).zip(gzc) {
        let (xhat, _, _, dy1) = ch.element_of_gz(pre, v, gz);
        *d += pre.rstd * ((dy1 * gc - m[0]) - xhat * m[1]);
    }
}

/// Per-group constants of the backward's recomputation of the forward.
struct Pre {
    mean_hi: f32,
    mean_lo: f32,
    rstd: f32,
}

/// Per-channel constants: the forward's s = rstd·γ, β and the FiLM factor and shift.
struct Chan {
    s: f32,
    b: f32,
    fs: f32,
    fb: f32,
}

impl Pre {
    fn channel(
        &self,
        c: usize,
        rstd: f64,
        gamma: &[f32],
        beta: &[f32],
        film: Option<(&[f32], &[f32])>,
    ) -> Chan {
        let (fs, fb) = film.map_or((1.0, 0.0), |(scale, shift)| (1.0 + scale[c], shift[c]));
        Chan {
            s: (rstd * gamma[c] as f64) as f32,
            b: beta[c],
            fs,
            fb,
        }
    }
}

impl Chan {
    /// (x̂, y₁, gz, dy₁) of one element with input v and upstream gradient dy; y₁ and z are
    /// the forward's values bit for bit (a FiLM factor 1 and shift 0 change nothing). SILU:
    /// whether the forward applied SiLU after the norm (a const, so each loop is branch-free).
    #[inline(always)]
    fn element<const SILU: bool>(&self, pre: &Pre, v: f32, dy: f32) -> (f32, f32, f32, f32) {
        self.element_of_gz(pre, v, self.gz::<SILU>(pre, v, dy))
    }

    /// The gz of [`Chan::element`].
    #[inline(always)]
    fn gz<const SILU: bool>(&self, pre: &Pre, v: f32, dy: f32) -> f32 {
        if SILU {
            let y1 = ((v - pre.mean_hi) - pre.mean_lo) * self.s + self.b;
            dy * silu_grad(y1 * self.fs + self.fb)
        } else {
            dy
        }
    }

    /// [`Chan::element`] given its gz.
    #[inline(always)]
    fn element_of_gz(&self, pre: &Pre, v: f32, gz: f32) -> (f32, f32, f32, f32) {
        let cen = (v - pre.mean_hi) - pre.mean_lo;
        let y1 = cen * self.s + self.b;
        (cen * pre.rstd, y1, gz, gz * self.fs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(97))
                    >> 8) as f32
                    / 4194304.0
                    - 1.5
            })
            .collect()
    }

    /// Direct f64 GroupNorm (+FiLM, +SiLU) from the definition.
    fn reference(x: &[f32], norm: &GroupNorm, p: &NormAffine) -> Vec<f64> {
        let (c, hw, groups, act) = (norm.channels, norm.hw, norm.groups, norm.silu);
        let NormAffine { gamma, beta, film } = *p;
        let cpg = c / groups;
        let mut y = vec![0f64; c * hw];
        for g in 0..groups {
            let xs: Vec<f64> = x[g * cpg * hw..(g + 1) * cpg * hw]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            for j in 0..cpg {
                let ch = g * cpg + j;
                for p in 0..hw {
                    let mut v = (x[ch * hw + p] as f64 - mean) / (var + 1e-5).sqrt()
                        * gamma[ch] as f64
                        + beta[ch] as f64;
                    if let Some((s, b)) = film {
                        v = v * (1.0 + s[ch] as f64) + b[ch] as f64;
                    }
                    if act {
                        v /= 1.0 + (-v).exp();
                    }
                    y[ch * hw + p] = v;
                }
            }
        }
        y
    }

    #[test]
    fn matches_reference_for_group_sizes_1_to_4() {
        for cpg in 1..=4 {
            let groups = 3;
            let c = cpg * groups;
            let hw = 10;
            // An offset makes |mean| ≫ std in some groups, which a one-pass variance gets wrong.
            let x: Vec<f32> = data(c * hw, cpg as u32)
                .iter()
                .enumerate()
                .map(|(i, v)| v + if i < cpg * hw { 100.0 } else { 0.0 })
                .collect();
            let gamma = data(c, 11);
            let beta = data(c, 12);
            let scale = data(c, 13);
            let shift = data(c, 14);
            for (film, act) in [
                (None, false),
                (None, true),
                (Some((&scale[..], &shift[..])), false),
                (Some((&scale[..], &shift[..])), true),
            ] {
                let want = reference(
                    &x,
                    &GroupNorm {
                        channels: c,
                        hw,
                        groups,
                        eps: 1e-5,
                        silu: act,
                    },
                    &NormAffine {
                        gamma: &gamma,
                        beta: &beta,
                        film,
                    },
                );
                let mut y = vec![0f32; c * hw];
                GroupNorm {
                    channels: c,
                    hw,
                    groups,
                    eps: 1e-5,
                    silu: act,
                }
                .forward(
                    &x,
                    &NormAffine {
                        gamma: &gamma,
                        beta: &beta,
                        film,
                    },
                    0..groups,
                    &mut y,
                )
                .unwrap();
                let m = want.iter().fold(1f64, |a, v| a.max(v.abs()));
                for (a, b) in y.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() <= 2e-6 * m, "cpg {cpg}: {a} vs {b}");
                }
                // Split invariance: one group at a time gives the same bits.
                let mut y2 = vec![0f32; c * hw];
                for gi in 0..groups {
                    let r = gi * cpg * hw..(gi + 1) * cpg * hw;
                    GroupNorm {
                        channels: c,
                        hw,
                        groups,
                        eps: 1e-5,
                        silu: act,
                    }
                    .forward(
                        &x,
                        &NormAffine {
                            gamma: &gamma,
                            beta: &beta,
                            film,
                        },
                        gi..gi + 1,
                        &mut y2[r],
                    )
                    .unwrap();
                }
                assert_eq!(y, y2);
            }
        }
    }

    #[test]
    fn hand_computed() {
        // One group of one channel, x = [1, 3]: mean 2, var 1, normalised ±1/sqrt(1+eps).
        let mut y = [0f32; 2];
        GroupNorm {
            channels: 1,
            hw: 2,
            groups: 1,
            eps: 0.0,
            silu: false,
        }
        .forward(
            &[1.0, 3.0],
            &NormAffine {
                gamma: &[2.0],
                beta: &[0.5],
                film: None,
            },
            0..1,
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [-1.5, 2.5]);
        // FiLM: (1 + 1)·y + 1.
        GroupNorm {
            channels: 1,
            hw: 2,
            groups: 1,
            eps: 0.0,
            silu: false,
        }
        .forward(
            &[1.0, 3.0],
            &NormAffine {
                gamma: &[2.0],
                beta: &[0.5],
                film: Some((&[1.0], &[1.0])),
            },
            0..1,
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [-2.0, 6.0]);
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = [0f32; 12];
        let p = [1f32; 4];
        // 4 channels of 3 pixels; y holds one group of 2 channels.
        let ok = |groups: usize,
                  gamma: &[f32],
                  film: Option<(&[f32], &[f32])>,
                  g: core::ops::Range<usize>| {
            let mut y = [0f32; 6];
            let norm = GroupNorm {
                channels: 4,
                hw: 3,
                groups,
                eps: 1e-5,
                silu: false,
            };
            let affine = NormAffine {
                gamma,
                beta: &p,
                film,
            };
            norm.forward(&x, &affine, g, &mut y).is_ok()
        };
        assert!(ok(2, &p, None, 0..1));
        assert!(!ok(3, &p, None, 0..1), "groups do not divide the channels");
        assert!(!ok(2, &p, None, 0..3), "groups past the last");
        assert!(!ok(2, &p, None, 0..2), "output shorter than the groups");
        assert!(!ok(2, &p[..3], None, 0..1), "short gamma");
        assert!(!ok(2, &p, Some((&p, &p[..2])), 0..1), "short FiLM shift");
    }
}

#[cfg(test)]
mod backward_tests {
    use super::*;
    use crate::gradcheck::{assert_grad, data, dot64, fd_grad, wide};

    /// The forward from the definition in f64; p = [x | gamma | beta | scale | shift].
    fn forward64(p: &[f64], c: usize, hw: usize, groups: usize, film: bool, act: bool) -> Vec<f64> {
        let (x, rest) = p.split_at(c * hw);
        let (gamma, rest) = rest.split_at(c);
        let (beta, rest) = rest.split_at(c);
        let (scale, shift) = rest.split_at(c);
        let cpg = c / groups;
        let n = (cpg * hw) as f64;
        let mut y = vec![0f64; c * hw];
        for g in 0..groups {
            let xs = &x[g * cpg * hw..(g + 1) * cpg * hw];
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            for ch in g * cpg..(g + 1) * cpg {
                for q in 0..hw {
                    let mut v =
                        (x[ch * hw + q] - mean) / (var + 1e-5).sqrt() * gamma[ch] + beta[ch];
                    if film {
                        v = v * (1.0 + scale[ch]) + shift[ch];
                    }
                    if act {
                        v /= 1.0 + (-v).exp();
                    }
                    y[ch * hw + q] = v;
                }
            }
        }
        y
    }

    struct Case {
        c: usize,
        hw: usize,
        groups: usize,
        x: Vec<f32>,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        scale: Vec<f32>,
        shift: Vec<f32>,
    }

    fn case(cpg: usize) -> Case {
        case_sized(cpg, 5)
    }

    /// Three groups of `cpg` channels of `hw` pixels.
    fn case_sized(cpg: usize, hw: usize) -> Case {
        let groups = 3;
        let c = cpg * groups;
        // An offset group (|mean| ≫ std) checks the centring.
        let x = data(c * hw, cpg as u32)
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i < cpg * hw { 20.0 } else { 0.0 })
            .collect();
        Case {
            c,
            hw,
            groups,
            x,
            gamma: data(c, 11).iter().map(|v| v + 1.0).collect(),
            beta: data(c, 12),
            scale: data(c, 13),
            shift: data(c, 14),
        }
    }

    /// [dx | dgamma | dbeta | dscale | dshift] over the groups `g`, from `init`.
    fn backward(
        k: &Case,
        dout: &[f32],
        film: bool,
        act: bool,
        g: core::ops::Range<usize>,
        init: f32,
    ) -> Vec<f32> {
        let cpg = k.c / k.groups;
        let nc = g.len() * cpg;
        let mut dx = vec![init; nc * k.hw];
        let mut dp = vec![init; 4 * nc];
        let (dgamma, rest) = dp.split_at_mut(nc);
        let (dbeta, rest) = rest.split_at_mut(nc);
        let (dscale, dshift) = rest.split_at_mut(nc);
        let filmv = film.then_some((&k.scale[..], &k.shift[..]));
        GroupNorm {
            channels: k.c,
            hw: k.hw,
            groups: k.groups,
            eps: 1e-5,
            silu: act,
        }
        .backward(
            NormGrads {
                dx: &mut dx,
                dgamma,
                dbeta,
                dfilm: film.then_some((dscale, dshift)),
            },
            dout,
            &k.x,
            &NormAffine {
                gamma: &k.gamma,
                beta: &k.beta,
                film: filmv,
            },
            g,
        )
        .unwrap();
        dx.extend(dp);
        dx
    }

    #[test]
    fn gradients_match_finite_differences_for_group_sizes_1_to_4() {
        for cpg in 1..=4 {
            let k = case(cpg);
            let r = data(k.c * k.hw, 20 + cpg as u32);
            let p: Vec<f64> = [&k.x, &k.gamma, &k.beta, &k.scale, &k.shift]
                .iter()
                .flat_map(|v| wide(v))
                .collect();
            for (film, act) in [(false, false), (false, true), (true, false), (true, true)] {
                let want = fd_grad(&p, 1e-4, |v| {
                    dot64(&r, &forward64(v, k.c, k.hw, k.groups, film, act))
                });
                let got = backward(&k, &r, film, act, 0..k.groups, 0.0);
                let what = format!("cpg {cpg} film {film} silu {act}");
                let n = k.c * k.hw;
                assert_grad(&got[..n], &want[..n], 2e-5, &format!("dx {what}"));
                let parts = [&want[n..], if film { &want[n + 2 * k.c..] } else { &[] }];
                assert_grad(
                    &got[n..n + 2 * k.c],
                    &parts[0][..2 * k.c],
                    2e-5,
                    &format!("dgamma/dbeta {what}"),
                );
                if film {
                    assert_grad(
                        &got[n + 2 * k.c..],
                        parts[1],
                        2e-5,
                        &format!("dscale/dshift {what}"),
                    );
                } else {
                    assert!(got[n + 2 * k.c..].iter().all(|&v| v == 0.0));
                }
            }
        }
    }

    /// Maps longer than a [`BLOCK`] with a ragged tail (hw mod 8 ≠ 0) exercise the f32 lanes,
    /// the block flushes and the tail of [`channel_sums`].
    #[test]
    fn large_maps_match_finite_differences() {
        let hw = 2 * BLOCK + 13;
        let k = case_sized(2, hw);
        let r = data(k.c * hw, 77);
        let p: Vec<f64> = [&k.x, &k.gamma, &k.beta, &k.scale, &k.shift]
            .iter()
            .flat_map(|v| wide(v))
            .collect();
        for (film, act) in [(false, true), (true, true), (true, false)] {
            let want = fd_grad(&p, 1e-4, |v| {
                dot64(&r, &forward64(v, k.c, hw, k.groups, film, act))
            });
            let got = backward(&k, &r, film, act, 0..k.groups, 0.0);
            let n = k.c * hw;
            let what = format!("hw {hw} film {film} silu {act}");
            assert_grad(&got[..n], &want[..n], 2e-5, &format!("dx {what}"));
            // Parameter gradients are sums over 525 pixels: the same relative tolerance.
            let m = if film { 4 * k.c } else { 2 * k.c };
            assert_grad(
                &got[n..n + m],
                &want[n..n + m],
                2e-5,
                &format!("params {what}"),
            );
        }
    }

    /// One compilation's twins of the channel kernels (AVX2 or AVX-512).
    #[cfg(target_arch = "x86_64")]
    struct Twins {
        forward: unsafe fn(FwdArgs),
        sums_silu: unsafe fn(SumArgs) -> [f64; 4],
        sums: unsafe fn(SumArgs) -> [f64; 4],
        dx: unsafe fn(DxArgs),
        dx_kept: unsafe fn((DxArgs, &[f32])),
    }

    /// The AVX2 and AVX-512 twins compute the same bits as the portable bodies (no FMA, same
    /// order), so the gradients do not depend on the CPU's vector width either.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_twins_give_the_portable_bits() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let x: Vec<f32> = data(2 * BLOCK + 13, 5)
            .iter()
            .map(|v| 3.0 * v + 0.7)
            .collect();
        // SAFETY: the CPU has AVX2 (checked above).
        assert_eq!(mean_var_body(&x), unsafe { mean_var_avx2(&x) });
        let avx2 = Twins {
            forward: channel_forward_avx2,
            sums_silu: channel_sums_avx2::<true>,
            sums: channel_sums_avx2::<false>,
            dx: channel_dx_avx2::<true>,
            dx_kept: channel_dx_kept_avx2,
        };
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { twins_give_the_portable_bits(&avx2) };
        if std::is_x86_feature_detected!("avx512f") {
            let avx512 = Twins {
                forward: channel_forward_avx512,
                sums_silu: channel_sums_avx512::<true>,
                sums: channel_sums_avx512::<false>,
                dx: channel_dx_avx512::<true>,
                dx_kept: channel_dx_kept_avx512,
            };
            // SAFETY: the CPU has AVX-512F (checked just above) and AVX2.
            unsafe { twins_give_the_portable_bits(&avx512) };
        }
    }

    /// # Safety
    /// The CPU must have the features the twins were compiled with.
    #[cfg(target_arch = "x86_64")]
    unsafe fn twins_give_the_portable_bits(t: &Twins) {
        let hw = 2 * BLOCK + 13;
        let x: Vec<f32> = data(hw, 5).iter().map(|v| 3.0 * v + 0.7).collect();
        let dy = data(hw, 6);
        let (mean, var) = mean_var(&x);
        let rstd = 1.0 / (var + 1e-5).sqrt();
        let pre = Pre {
            mean_hi: mean as f32,
            mean_lo: (mean - (mean as f32) as f64) as f32,
            rstd: rstd as f32,
        };
        let ch = pre.channel(0, rstd, &[1.3], &[0.2], Some((&[0.4], &[-0.3])));
        // SAFETY (all twin calls): the caller's contract.
        for silu in [false, true] {
            let mut y = vec![0f32; hw];
            let mut y2 = vec![0f32; hw];
            channel_forward((&pre, &ch, true, silu, &x, &mut y));
            unsafe { (t.forward)((&pre, &ch, true, silu, &x, &mut y2)) };
            assert_eq!(y, y2);
        }
        // Recomputing gz or keeping it (portable or SIMD) gives the same sums and dx.
        let sums = channel_sums::<true>((&pre, &ch, &x, &dy, &mut []));
        let (mut gz, mut gz2) = (vec![0f32; hw], vec![0f32; hw]);
        assert_eq!(sums, unsafe {
            (t.sums_silu)((&pre, &ch, &x, &dy, &mut []))
        });
        assert_eq!(sums, channel_sums::<true>((&pre, &ch, &x, &dy, &mut gz)));
        assert_eq!(sums, unsafe {
            (t.sums_silu)((&pre, &ch, &x, &dy, &mut gz2))
        });
        assert_eq!(gz, gz2);
        // Without SiLU the SIMD sums run over dy itself.
        assert_eq!(
            channel_sums::<false>((&pre, &ch, &x, &dy, &mut [])),
            unsafe { (t.sums)((&pre, &ch, &x, &dy, &mut [])) }
        );
        let mut dx = vec![0.5f32; hw];
        let (mut dx2, mut dx3, mut dx4) = (dx.clone(), dx.clone(), dx.clone());
        let m = [0.1, -0.2];
        channel_dx::<true>((&pre, &ch, 1.3, m, &x, &dy, &mut dx));
        unsafe { (t.dx)((&pre, &ch, 1.3, m, &x, &dy, &mut dx2)) };
        channel_dx_kept(((&pre, &ch, 1.3, m, &x, &[], &mut dx3), &gz));
        unsafe { (t.dx_kept)(((&pre, &ch, 1.3, m, &x, &[], &mut dx4), &gz)) };
        assert_eq!(dx, dx2);
        assert_eq!(dx, dx3);
        assert_eq!(dx, dx4);
    }

    #[test]
    fn every_split_gives_the_same_bits_and_accumulates() {
        for cpg in 1..=4 {
            let k = case(cpg);
            let r = data(k.c * k.hw, 30);
            let (n, nc) = (k.c * k.hw, k.c);
            for (film, act) in [(false, true), (true, true)] {
                let zero = backward(&k, &r, film, act, 0..k.groups, 0.0);
                let whole = backward(&k, &r, film, act, 0..k.groups, 0.5);
                for (a, b) in whole.iter().zip(&zero) {
                    assert!((a - (b + 0.5)).abs() <= 1e-6 * (1.0 + b.abs()));
                }
                // One group at a time, reassembled into the [dx | dγ | dβ | ds | dsh] layout.
                let mut split = vec![0f32; whole.len()];
                for gi in 0..k.groups {
                    let part = backward(&k, &r, film, act, gi..gi + 1, 0.5);
                    let (pn, pc) = (cpg * k.hw, cpg);
                    split[gi * pn..(gi + 1) * pn].copy_from_slice(&part[..pn]);
                    for q in 0..4 {
                        let dst = n + q * nc + gi * pc;
                        split[dst..dst + pc].copy_from_slice(&part[pn + q * pc..pn + (q + 1) * pc]);
                    }
                }
                assert_eq!(split, whole, "cpg {cpg} film {film}");
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let k = case(2);
        let (c, hw, nc) = (k.c, k.hw, k.c);
        let r = vec![0f32; c * hw];
        let (mut dx, mut a, mut b, mut s, mut t) = (
            vec![0f32; c * hw],
            vec![0f32; nc],
            vec![0f32; nc],
            vec![0f32; nc],
            vec![0f32; nc],
        );
        let f = Some((&k.scale[..], &k.shift[..]));
        let run = |dx: &mut [f32],
                   a: &mut [f32],
                   b: &mut [f32],
                   df: Option<(&mut [f32], &mut [f32])>,
                   f,
                   dout: &[f32]| {
            GroupNorm {
                channels: c,
                hw,
                groups: k.groups,
                eps: 1e-5,
                silu: true,
            }
            .backward(
                NormGrads {
                    dx,
                    dgamma: a,
                    dbeta: b,
                    dfilm: df,
                },
                dout,
                &k.x,
                &NormAffine {
                    gamma: &k.gamma,
                    beta: &k.beta,
                    film: f,
                },
                0..k.groups,
            )
        };
        assert!(run(&mut dx, &mut a, &mut b, Some((&mut s, &mut t)), f, &r).is_ok());
        assert!(run(&mut dx, &mut a, &mut b, None, None, &r).is_ok());
        assert!(run(&mut dx, &mut a, &mut b, None, f, &r).is_err());
        assert!(run(&mut dx, &mut a, &mut b, Some((&mut s, &mut t)), None, &r).is_err());
        assert!(run(&mut dx, &mut a, &mut b, Some((&mut s[1..], &mut t)), f, &r).is_err());
        assert!(run(&mut dx[1..], &mut a, &mut b, None, None, &r).is_err());
        assert!(run(&mut dx, &mut a[1..], &mut b, None, None, &r).is_err());
        assert!(run(&mut dx, &mut a, &mut b, None, None, &r[1..]).is_err());
        let mut small = vec![0f32; 2 * hw];
        assert!(GroupNorm {
            channels: c,
            hw,
            groups: k.groups,
            eps: 1e-5,
            silu: false
        }
        .backward(
            NormGrads {
                dx: &mut small,
                dgamma: &mut a[..2],
                dbeta: &mut b[..2],
                dfilm: None
            },
            &r,
            &k.x,
            &NormAffine {
                gamma: &k.gamma,
                beta: &k.beta,
                film: None
            },
            3..4
        )
        .is_err());
    }
}
