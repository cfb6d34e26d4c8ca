//! The convolution's backward (training): the input gradient (transposed convolution, or
//! `conv/strided.rs` for strides > 1) and the weight and bias gradients, on the forward's
//! GEMM driver and microkernels.

use super::direct::Direct;
use super::gemm::{gemm, gemm_scratch_len, round_up, Block, Lhs, Out, MR, NR};
use super::pack::{pack_a, pack_b, pad_planes, Geometry};
#[cfg(target_arch = "x86_64")]
use super::transpose;
use super::{strided, Conv2d, ConvGrads, Map, MapMut, DIRECT_MAX_ROWS};
use crate::{check_len, check_min_len, check_range, Isa, KernelError, Weight, WeightsRef};

/// Backward (training). Both products reuse the forward's packed GEMM and microkernel:
/// dinput is the transposed convolution of dout (a stride-1 convolution with the kernel flipped
/// and c_in/c_out swapped, over dout dilated by the stride), dweight = dout · im2col(inp)ᵀ.
/// Every gradient is accumulated (`+=`) onto what the caller's buffer holds, one rounding per
/// term, in a documented order, so the result is bit-identical for any channel split and
/// batches sum in the order the caller calls.
impl Conv2d {
    /// Scratch floats one call of [`Conv2d::backward_input`] or [`Conv2d::backward_params`]
    /// (one thread) needs for an h × w input.
    /// With less (but at least the packed path's need), the input gradient is computed by the
    /// packed path: same bits.
    pub fn backward_scratch_len(&self, h: usize, w: usize) -> usize {
        let direct = self
            .direct_input(h, w)
            .map_or(0, |d| d.scratch_len(self.c_in));
        self.backward_packed_len(h, w).max(direct)
    }

    /// The least scratch both backward calls accept: the packed input gradient's, or the
    /// weight gradient's (its GEMM and the padded input copy).
    fn backward_packed_len(&self, h: usize, w: usize) -> usize {
        let (oh, ow) = self.out_size(h, w);
        let k2 = self.kernel * self.kernel;
        let params = gemm_scratch_len(self.c_out, oh * ow) + self.padded_len(h, w);
        let input = match self.stride {
            1 => gemm_scratch_len(self.c_in, self.c_out * k2),
            _ => strided::scratch_len(self, self.c_in, oh * ow),
        };
        input.max(params)
    }

    /// The direct geometry of the input gradient (a stride-1 convolution of dout padded by
    /// k − 1 − pad) for an h × w input, for small maps.
    fn direct_input(&self, h: usize, w: usize) -> Option<Direct> {
        let (oh, ow) = self.out_size(h, w);
        (self.stride == 1 && self.pad < self.kernel && self.c_in <= DIRECT_MAX_ROWS)
            .then(|| Direct::new(self.c_out, self.kernel, self.kernel - 1 - self.pad, oh, ow))
            .flatten()
    }

    /// Floats of the zero-padded copy of the input that [`Conv2d::backward_params`] packs from.
    fn padded_len(&self, h: usize, w: usize) -> usize {
        self.c_in * (h + 2 * self.pad) * (w + 2 * self.pad)
    }

    /// Checks the layer and the input size; returns the output size.
    fn check_backward(
        &self,
        h: usize,
        w: usize,
        dout: &[f32],
    ) -> Result<(usize, usize), KernelError> {
        if self.kernel == 0 || self.stride == 0 || self.c_in == 0 || self.c_out == 0 {
            return Err(KernelError::Shape(
                "conv2d backward: kernel, stride, c_in and c_out must be ≥ 1",
            ));
        }
        let (oh, ow) = self.out_size(h, w);
        if oh == 0 || ow == 0 {
            return Err(KernelError::Shape(
                "conv2d backward: kernel larger than the padded input",
            ));
        }
        check_len("conv2d backward dout", self.c_out * oh * ow, dout.len())?;
        Ok((oh, ow))
    }

    /// dinp += ∂L/∂inp for the input channels `ci` of an h × w input (`dinp` = planes of that
    /// size, `dinp.data.len() == ci.len()·h·w`), given the
    /// whole `dout` = ∂L/∂out [c_out, oh, ow]:
    /// dinp[c, y, x] += Σ_{o, ky, kx} W[o, c, ky, kx]·dout[o, (y + pad − ky)/stride, (x + pad − kx)/stride]
    /// over the terms whose quotients are exact and inside dout. Term order per element:
    /// o outer, then ky, kx descending (the flipped kernel's order), onto the value in `dinp`.
    /// Needs pad < kernel. A stride s > 1 computes over the dilated dout, s² times the
    /// useful work (the ADM U-Net has no strided convolution: it downsamples by pooling).
    /// A caller that runs many backward passes with the same weights should flip them once
    /// ([`Conv2d::flip_weights`]) and call [`Conv2d::backward_input_flipped`]: same bits.
    pub fn backward_input(
        &self,
        isa: Isa,
        dinp: MapMut,
        dout: &[f32],
        weight: WeightsRef,
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (c_in, k) = (self.c_in, self.kernel);
        check_len("conv2d weight", self.c_out * c_in * k * k, weight.len())?;
        match weight {
            WeightsRef::F32(wt) => self.backward_input_of(isa, dinp, dout, wt, ci, scratch),
            WeightsRef::F16(wt) => self.backward_input_of(isa, dinp, dout, wt, ci, scratch),
        }
    }

    /// [`Conv2d::backward_input`] for weights stored as `W` (length checked).
    fn backward_input_of<W: Weight>(
        &self,
        isa: Isa,
        dinp: MapMut,
        dout: &[f32],
        wt: &[W],
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (c_in, k, row0) = (self.c_in, self.kernel, ci.start);
        let weight = FlippedWeight {
            pack: |blk: Block, a: &mut [f32]| pack_a_flipped(wt, c_in, k, blk.shifted(row0), a),
            tap: |c: usize, o: usize, q: usize| wt[(o * c_in + c) * k * k + q].to_f32(),
        };
        self.backward_input_with(isa, dinp, dout, ci, scratch, weight)
    }

    /// Floats of [`Conv2d::flip_weights`]'s output: as many as the weight.
    pub fn flipped_len(&self) -> usize {
        self.c_out * self.k_total()
    }

    /// The weight as the input gradient reads it, transposed and flipped:
    /// `flipped[(c·c_out + o)·k² + (k−1−ky)·k + (k−1−kx)] = W[o, c, ky, kx]` (f16 widened).
    pub fn flip_weights(&self, weight: WeightsRef, flipped: &mut [f32]) -> Result<(), KernelError> {
        let k2 = self.kernel * self.kernel;
        check_len("conv2d weight", self.flipped_len(), weight.len())?;
        check_len("conv2d flipped weight", self.flipped_len(), flipped.len())?;
        for c in 0..self.c_in {
            for o in 0..self.c_out {
                let dst = &mut flipped[(c * self.c_out + o) * k2..][..k2];
                let src = (o * self.c_in + c) * k2;
                for (q, d) in dst.iter_mut().enumerate() {
                    *d = match weight {
                        WeightsRef::F32(wt) => wt[src + k2 - 1 - q],
                        WeightsRef::F16(wt) => wt[src + k2 - 1 - q].to_f32(),
                    };
                }
            }
        }
        Ok(())
    }

    /// [`Conv2d::backward_input`] with the weight already flipped by
    /// [`Conv2d::flip_weights`]: packing its rows is a plain copy (bit-identical result).
    pub fn backward_input_flipped(
        &self,
        isa: Isa,
        dinp: MapMut,
        dout: &[f32],
        flipped: &[f32],
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("conv2d flipped weight", self.flipped_len(), flipped.len())?;
        let (co, k2) = (self.c_out, self.kernel * self.kernel);
        let (depth, row0) = (co * k2, ci.start);
        let weight = FlippedWeight {
            pack: |blk: Block, a: &mut [f32]| pack_a(isa, flipped, depth, blk.shifted(row0), a),
            tap: |c: usize, o: usize, q: usize| flipped[(c * co + o) * k2 + k2 - 1 - q],
        };
        self.backward_input_with(isa, dinp, dout, ci, scratch, weight)
    }

    /// The input gradient: for stride 1, the transposed convolution's GEMM with A (the flipped
    /// weight rows of `ci`) packed by `weight.pack`; for larger strides, the GEMM into columns
    /// and col2im of `conv/strided.rs`, reading `weight.tap`.
    fn backward_input_with(
        &self,
        isa: Isa,
        dinp: MapMut,
        dout: &[f32],
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
        weight: FlippedWeight<impl FnMut(Block, &mut [f32]), impl Fn(usize, usize, usize) -> f32>,
    ) -> Result<(), KernelError> {
        let (h, w) = (dinp.h, dinp.w);
        let (oh, ow) = self.check_backward(h, w, dout)?;
        if self.pad >= self.kernel {
            return Err(KernelError::Shape("conv2d backward: pad must be < kernel"));
        }
        check_range(
            "conv2d backward: input channel range outside 0..c_in",
            &ci,
            self.c_in,
        )?;
        check_len("conv2d backward dinp", ci.len() * h * w, dinp.data.len())?;
        check_min_len(
            "conv2d backward scratch",
            self.backward_packed_len(h, w),
            scratch.len(),
        )?;
        if self.stride > 1 {
            strided::input_gradient(self, isa, dinp, dout, ci, scratch, weight.tap);
            return Ok(());
        }
        if let Some(d) = self.direct_input(h, w) {
            if scratch.len() >= d.scratch_len(ci.len()) {
                let a = Lhs {
                    m: ci.len(),
                    init: None,
                    pack: weight.pack,
                };
                d.run(isa, a, dout, 0..h, Out::Dense(dinp.data), scratch);
                return Ok(());
            }
        }
        // The transposed convolution: dout dilated by the stride to (h + 2·pad − k + 1) rows,
        // padded by k − 1 − pad, convolved at stride 1 with the flipped kernel gives h rows.
        let geo = Geometry {
            c_in: self.c_out,
            kernel: self.kernel,
            stride: 1,
            pad: self.kernel - 1 - self.pad,
            h: h + 2 * self.pad + 1 - self.kernel,
            w: w + 2 * self.pad + 1 - self.kernel,
            ow: w,
            n: h * w,
            dil: self.stride,
            real_h: oh,
            real_w: ow,
        };
        let depth = self.c_out * self.kernel * self.kernel;
        let a = Lhs {
            m: ci.len(),
            init: None,
            pack: weight.pack,
        };
        let pack_b = |blk: Block, b: &mut [f32]| pack_b(&geo, dout, blk, b);
        gemm(isa, a, h * w, depth, pack_b, Out::Dense(dinp.data), scratch);
        Ok(())
    }

    /// dweight += ∂L/∂W and dbias += ∂L/∂b for the output channels `co` (`grads.dweight`
    /// holds rows co of W, `co.len()·c_in·k·k`; `grads.dbias.len() == co.len()`), given the
    /// whole `inp` [c_in, h, w] and `dout` [c_out, oh, ow]:
    /// dW[o, k] += Σ_n dout[o, n]·im2col(inp)[k, n], terms in pixel order n = 0, 1, … onto the
    /// value in `dweight`; `db[o] += Σ_n dout[o, n]`, summed in f64 (8 interleaved lanes) and
    /// added once.
    pub fn backward_params(
        &self,
        isa: Isa,
        grads: ConvGrads,
        dout: &[f32],
        inp: Map,
        co: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let ConvGrads { dweight, dbias } = grads;
        let Map { data: inp, h, w } = inp;
        let (oh, ow) = self.check_backward(h, w, dout)?;
        let k_total = self.k_total();
        check_len("conv2d input", self.c_in * h * w, inp.len())?;
        check_range(
            "conv2d backward: output channel range outside 0..c_out",
            &co,
            self.c_out,
        )?;
        check_len("conv2d backward dweight", co.len() * k_total, dweight.len())?;
        check_len("conv2d backward dbias", co.len(), dbias.len())?;
        check_min_len(
            "conv2d backward scratch",
            self.backward_packed_len(h, w),
            scratch.len(),
        )?;
        let n = oh * ow;
        let rows = &dout[co.start * n..co.end * n];
        for (db, row) in dbias.iter_mut().zip(rows.chunks_exact(n)) {
            *db += sum_f64(row) as f32;
        }
        let geo = Geometry {
            c_in: self.c_in,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
            h,
            w,
            ow,
            n,
            dil: 1,
            real_h: h,
            real_w: w,
        };
        // im2col(inp)ᵀ is packed from a zero-padded copy, so its rows are plain shifted windows
        // (no bounds test per element: this packing costs as much as the products at 32 or
        // 64 output channels).
        let (scratch, padded) = scratch.split_at_mut(gemm_scratch_len(self.c_out, n));
        let padded: &[f32] = match self.pad {
            0 => inp, // already its own padded copy
            _ => {
                let padded = &mut padded[..self.padded_len(h, w)];
                pad_planes(inp, h, w, self.pad, padded);
                padded
            }
        };
        let a = Lhs {
            m: co.len(),
            init: None,
            pack: |blk: Block, a: &mut [f32]| pack_a(isa, rows, n, blk, a),
        };
        let pack_b = |blk: Block, b: &mut [f32]| pack_b_t(isa, &geo, padded, blk, b);
        gemm(isa, a, k_total, n, pack_b, Out::Dense(dweight), scratch);
        Ok(())
    }
}

/// How the input gradient reads the transposed, flipped weight: packed rows for the GEMM
/// (`pack(block, a)`, as [`pack_a`] lays them out) and single taps for the strided path
/// (`tap(c, o, ky·k + kx)` = W[o, c, ky, kx]).
struct FlippedWeight<P, T> {
    pack: P,
    tap: T,
}

/// Σ x in f64 with 8 interleaved lanes (a fixed order), combined as a balanced tree.
pub(super) fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &v in tail {
        s += v as f64;
    }
    s
}

/// [`pack_a`] of the transposed, flipped weight of the input gradient (`blk`: at = row0,
/// len = mc):
/// A[c, (o·k + ky')·k + kx'] = W[o, c, k−1−ky', k−1−kx'] for the rows c = row0 .. row0+mc.
fn pack_a_flipped<W: Weight>(weight: &[W], c_in: usize, k: usize, blk: Block, a: &mut [f32]) {
    let Block {
        at: row0,
        len: mc,
        k0,
        kc,
    } = blk;
    let k2 = k * k;
    for (t, panel) in a.chunks_exact_mut(kc * MR).enumerate() {
        for i in 0..MR {
            let r = t * MR + i;
            if r >= mc {
                for kk in 0..kc {
                    panel[kk * MR + i] = 0.0;
                }
                continue;
            }
            // (o, rem) of depth k0 + kk, advanced without divisions (this runs once per
            // weight per sample, and at 8×8 maps it would otherwise rival the products).
            let (mut o, mut rem) = (k0 / k2, k0 % k2);
            for kk in 0..kc {
                let flipped = k2 - 1 - rem; // (k−1−ky')·k + (k−1−kx')
                panel[kk * MR + i] = weight[(o * c_in + row0 + r) * k2 + flipped].to_f32();
                rem += 1;
                if rem == k2 {
                    rem = 0;
                    o += 1;
                }
            }
        }
    }
}

/// [`pack_b`] of im2col(inp)ᵀ for the weight gradient: depth = output pixels p0 .. p0+pc,
/// columns = im2col rows r0 .. r0+rc:
/// b[(j/NR)·pc·NR + kk·NR + j%NR] = x[ci, oy·s + ky − pad, ox·s + kx − pad] for pixel
/// p0 + kk = (oy, ox) and row r0 + j = (ci, ky, kx) (0 in the padding and past rc), read from
/// `padded`, the input's planes zero-padded by `pad` ([`pad_planes`]). With SIMD and stride 1,
/// eight rows at a time are moved as 8 × 8 register transposes (a pure copy: same values).
fn pack_b_t(isa: Isa, geo: &Geometry, padded: &[f32], blk: Block, b: &mut [f32]) {
    // Depth: output pixels p0 .. p0+pc; columns: im2col rows r0 .. r0+rc.
    let Block {
        at: r0,
        len: rc,
        k0: p0,
        kc: pc,
    } = blk;
    let (k, s) = (geo.kernel, geo.stride);
    let wp = geo.w + 2 * geo.pad;
    let plane_len = (geo.h + 2 * geo.pad) * wp;
    // Where row j's window for output pixel (oy, ox) starts in `padded`.
    let origin = |j: usize| {
        let r = r0 + j;
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        ci * plane_len + ky * wp + kx
    };
    // The output row segments of the pixels p0 .. p0+pc: (first kk, oy, ox, length).
    let segments = || {
        let (mut oy, mut ox, mut kk) = (p0 / geo.ow, p0 % geo.ow, 0);
        core::iter::from_fn(move || {
            (kk < pc).then(|| {
                let len = (geo.ow - ox).min(pc - kk);
                let seg = (kk, oy, ox, len);
                (kk, ox, oy) = (kk + len, 0, oy + 1);
                seg
            })
        })
    };
    for j0 in (0..round_up(rc, NR)).step_by(8) {
        let base = (j0 / NR) * pc * NR + j0 % NR;
        #[cfg(target_arch = "x86_64")]
        if isa.is_simd() && s == 1 && j0 + 8 <= rc {
            let from: [usize; 8] = core::array::from_fn(|t| origin(j0 + t));
            for (kk, oy, ox, len) in segments() {
                let at = oy * wp + ox;
                let len8 = len / 8 * 8;
                let dst = &mut b[base + kk * NR..];
                // SAFETY: Isa::is_simd guarantees AVX2; every window holds len ≥ len8 values
                // (its row fits in the padded plane) and dst holds (len8 − 1)·NR + 8 values.
                unsafe {
                    let srcs = from.map(|f| padded[f + at..f + at + len].as_ptr());
                    transpose::transpose_rows(
                        srcs,
                        len8,
                        dst[..(len.max(1) - 1) * NR + 8].as_mut_ptr(),
                        NR,
                    );
                }
                for (t, &f) in from.iter().enumerate() {
                    for q in len8..len {
                        dst[q * NR + t] = padded[f + at + q];
                    }
                }
            }
            continue;
        }
        let _ = isa;
        for t in 0..8.min(round_up(rc, NR) - j0) {
            let j = j0 + t;
            if j >= rc {
                for kk in 0..pc {
                    b[base + t + kk * NR] = 0.0;
                }
                continue;
            }
            let from = origin(j);
            for (kk, oy, ox, len) in segments() {
                let src = &padded[from + oy * s * wp + ox * s..];
                let dst = &mut b[base + t + kk * NR..];
                for q in 0..len {
                    dst[q * NR] = src[q * s];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
