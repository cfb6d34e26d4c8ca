//! The attention core of guided-diffusion's AttentionBlock: `QKVAttentionLegacy` and
//! `QKVAttention` (adm_unet.md §5). The surrounding GroupNorm, qkv / proj_out 1×1 convolutions
//! and the residual are separate kernels.

use crate::{check_len, check_min_len, check_range, elementwise, KernelError};

/// How the 3C rows of `qkv` are split into heads and q/k/v.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvOrder {
    /// `QKVAttentionLegacy` (use_new_attention_order=False, the FFHQ checkpoint): split heads
    /// first; head h owns rows h·3ch .. (h+1)·3ch, in order q (ch rows), k, v.
    Legacy,
    /// `QKVAttention`: split q | k | v first (C rows each), then heads; head h uses rows
    /// h·ch .. (h+1)·ch of each.
    New,
}

/// Scratch floats [`QkvAttention::forward`] needs for `t` positions: one row of attention weights.
pub fn attention_scratch_len(t: usize) -> usize {
    t
}

/// First rows of q, k and v of head `h` inside `qkv` = [3C, T].
pub(crate) fn head_rows(
    order: QkvOrder,
    channels: usize,
    ch: usize,
    h: usize,
) -> (usize, usize, usize) {
    match order {
        QkvOrder::Legacy => (h * 3 * ch, h * 3 * ch + ch, h * 3 * ch + 2 * ch),
        QkvOrder::New => (h * ch, channels + h * ch, 2 * channels + h * ch),
    }
}

/// The shape of one multi-head attention: `qkv` = [3·channels, t] → out [channels, t] with
/// `heads` heads of ch = channels/heads channels, q, k and v split as `order` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvAttention {
    /// Channels of the output (a third of qkv's rows).
    pub channels: usize,
    /// Positions (pixels).
    pub t: usize,
    /// Heads (dividing `channels`).
    pub heads: usize,
    /// How the rows of qkv are split into heads and q/k/v.
    pub order: QkvOrder,
}

impl QkvAttention {
    /// Multi-head attention over T positions for the heads `h`: with ch = channels/heads and
    /// s = ch^(−1/4) applied to q and k before their product (as the original, for f16
    /// stability), `w[t, ·] = softmax_s(Σ_c (q[c,t]·s)(k[c,s]·s))` in f32 and
    /// `a[c, t] = Σ_s w[t,s]·v[c,s]`; `out` = [h.len()·ch, T], head-major (output channel =
    /// head·ch + c, relative to h.start).
    pub fn forward(
        &self,
        qkv: &[f32],
        h: core::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (ch, t) = self.check(qkv)?;
        check_range("attention: head range outside 0..heads", &h, self.heads)?;
        check_len("attention output", h.len() * ch * t, out.len())?;
        check_min_len("attention scratch", attention_scratch_len(t), scratch.len())?;
        dispatch!(attend, attend_avx2, (qkv, *self, h, out, &mut scratch[..t]));
        Ok(())
    }

    /// Backward of [`QkvAttention::forward`] for the heads `h`: dqkv += ∂L/∂qkv, given the
    /// whole `qkv` [3C, T] and the whole `dout` = ∂L/∂a [C, T] (head-major like the forward's
    /// output). The softmax weights w are recomputed row by row exactly as the forward
    /// computes them (nothing saved). Per target t, with s = ch^(−1/4) (so d logit/dq =
    /// s·(k·s)): dw[t, ·] = Σ_c da[c, t]·v[c, ·]; dv[c, ·] += w[t, ·]·da[c, t];
    /// dℓ = w ⊙ (dw − ⟨w, dw⟩) (softmax backward); dq[c, t] += (Σ_s' dℓ[s']·k[c, s'])·s·s;
    /// dk[c, ·] += dℓ·(q[c, t]·s·s).
    /// Only the rows of the heads `h` in `dqkv` (whole [3C, T]) are touched, each accumulated
    /// in target order t = 0, 1, …, so calling head ranges one after another gives the bits of
    /// one call. (The rows of a head are not contiguous in the `New` order, so threads share
    /// the buffer by splitting the batch, not the heads; attention is < 0.2 % of the U-Net's
    /// work.)
    pub fn backward(
        &self,
        dqkv: &mut [f32],
        dout: &[f32],
        qkv: &[f32],
        h: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (_, t) = self.check(qkv)?;
        check_len("attention dqkv", 3 * self.channels * t, dqkv.len())?;
        check_len("attention dout", self.channels * t, dout.len())?;
        check_range("attention: head range outside 0..heads", &h, self.heads)?;
        check_min_len(
            "attention backward scratch",
            attention_backward_scratch_len(t),
            scratch.len(),
        )?;
        let args = (dqkv, dout, qkv, *self, h, &mut scratch[..2 * t]);
        dispatch!(attend_backward, attend_backward_avx2, args);
        Ok(())
    }

    /// Checks the shape and the length of qkv; returns (ch, t).
    fn check(&self, qkv: &[f32]) -> Result<(usize, usize), KernelError> {
        let (channels, t, heads) = (self.channels, self.t, self.heads);
        if heads == 0 || !channels.is_multiple_of(heads) || t == 0 {
            return Err(KernelError::Shape(
                "attention: channels must be a nonzero multiple of heads, T > 0",
            ));
        }
        check_len("attention qkv", 3 * channels * t, qkv.len())?;
        Ok((channels / heads, t))
    }

    /// Channels per head and s = ch^(−1/4).
    #[inline(always)]
    fn ch_scale(&self) -> (usize, f32) {
        let ch = self.channels / self.heads;
        (ch, 1.0 / libm::sqrtf(libm::sqrtf(ch as f32)))
    }
}

/// Arguments of [`attend`]: qkv, shape, heads, out, one row of scratch.
type AttendArgs<'a> = (
    &'a [f32],
    QkvAttention,
    core::ops::Range<usize>,
    &'a mut [f32],
    &'a mut [f32],
);

// AVX2 twins only: AVX-512 twins of these bodies (the same bits) ran 25–40 % slower on Zen 4
// (64 channels, 64 positions, 1 thread: forward 70 against 51 µs, backward 145 against 111).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(args: AttendArgs) {
    attend(args)
}

/// The body of [`QkvAttention::forward`] (shapes checked).
#[inline(always)]
fn attend((qkv, shape, h, out, row): AttendArgs) {
    let QkvAttention {
        channels, t, order, ..
    } = shape;
    let (ch, scale) = shape.ch_scale();
    for (head, out_h) in h.zip(out.chunks_exact_mut(ch * t)) {
        let (q0, k0, v0) = head_rows(order, channels, ch, head);
        let q = &qkv[q0 * t..(q0 + ch) * t];
        let k = &qkv[k0 * t..(k0 + ch) * t];
        let v = &qkv[v0 * t..(v0 + ch) * t];
        for target in 0..t {
            logits(q, k, t, target, scale, row);
            softmax_inplace(row);
            for (c, vc) in v.chunks_exact(t).enumerate() {
                out_h[c * t + target] = dot(row, vc);
            }
        }
    }
}

/// Scratch floats [`QkvAttention::backward`] needs for `t` positions: one row of attention
/// weights and one of their gradients.
pub fn attention_backward_scratch_len(t: usize) -> usize {
    2 * t
}

/// Arguments of [`attend_backward`]: dqkv, dout, qkv, shape, heads, two rows of scratch.
type BackwardArgs<'a> = (
    &'a mut [f32],
    &'a [f32],
    &'a [f32],
    QkvAttention,
    core::ops::Range<usize>,
    &'a mut [f32],
);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_backward_avx2(args: BackwardArgs) {
    attend_backward(args)
}

/// The body of [`QkvAttention::backward`] (shapes checked).
#[inline(always)]
fn attend_backward((dqkv, dout, qkv, shape, h, scratch): BackwardArgs) {
    let QkvAttention {
        channels, t, order, ..
    } = shape;
    let (ch, scale) = shape.ch_scale();
    let (w, dl) = scratch.split_at_mut(t);
    for head in h {
        let (q0, k0, v0) = head_rows(order, channels, ch, head);
        let q = &qkv[q0 * t..(q0 + ch) * t];
        let k = &qkv[k0 * t..(k0 + ch) * t];
        let v = &qkv[v0 * t..(v0 + ch) * t];
        let da = &dout[head * ch * t..(head + 1) * ch * t];
        for target in 0..t {
            logits(q, k, t, target, scale, w);
            softmax_inplace(w);
            // dw (in dl) and dv.
            dl.fill(0.0);
            for (c, vc) in v.chunks_exact(t).enumerate() {
                let g = da[c * t + target];
                let dv = &mut dqkv[(v0 + c) * t..(v0 + c + 1) * t];
                for ((d, &vs), (dvs, &ws)) in dl.iter_mut().zip(vc).zip(dv.iter_mut().zip(&*w)) {
                    *d += g * vs;
                    *dvs += ws * g;
                }
            }
            // Softmax backward: dℓ = w ⊙ (dw − ⟨w, dw⟩).
            let wdw = dot(w, dl);
            for (d, &ws) in dl.iter_mut().zip(&*w) {
                *d = ws * (*d - wdw);
            }
            for c in 0..ch {
                let kc = &k[c * t..(c + 1) * t];
                dqkv[(q0 + c) * t + target] += dot(dl, kc) * scale * scale;
                let a = q[c * t + target] * scale * scale;
                let dk = &mut dqkv[(k0 + c) * t..(k0 + c + 1) * t];
                for (d, &l) in dk.iter_mut().zip(&*dl) {
                    *d += l * a;
                }
            }
        }
    }
}

/// row[s] = Σ_c (q[c,target]·scale)·(k[c,s]·scale), accumulated over c in order.
#[inline(always)]
pub(crate) fn logits(q: &[f32], k: &[f32], t: usize, target: usize, scale: f32, row: &mut [f32]) {
    row.fill(0.0);
    for (qc, kc) in q.chunks_exact(t).zip(k.chunks_exact(t)) {
        let qs = qc[target] * scale;
        for (r, &kv) in row.iter_mut().zip(kc) {
            *r += qs * (kv * scale);
        }
    }
}

/// Softmax in place: exp(x − max) / Σ exp(x − max). The exponential is
/// [`elementwise::exp`] (≤ 2 ulp, branch-free: ~10× cheaper than libm's `expf` once the loop
/// vectorises; arguments below −87 give ~1e-38 instead of 0, nothing against a sum ≥ 1), and
/// max and sum use [`LANES`] interleaved partials in a fixed order, so every loop vectorises
/// and the weights do not depend on anything but the row.
#[inline(always)]
pub(crate) fn softmax_inplace(row: &mut [f32]) {
    let max = lanes(row, f32::NEG_INFINITY, f32::max);
    for r in row.iter_mut() {
        *r = elementwise::exp(*r - max);
    }
    let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
    for r in row.iter_mut() {
        *r *= inv;
    }
}

/// Partial results per lane of the reductions.
const LANES: usize = 8;

/// The reduction `op` of `row`: element i folded into lane i mod [`LANES`] from `init`, the
/// lanes combined pairwise, then the tail in order.
#[inline(always)]
fn lanes(row: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = op(acc[l], c[l]);
        }
    }
    let mut r = tree_of(acc, &op);
    for &v in tail {
        r = op(r, v);
    }
    r
}

/// op(op(op(a0, a1), op(a2, a3)), op(op(a4, a5), op(a6, a7))). Not inlined: seeing this
/// pairing, LLVM would keep the lanes of the loops before it in shuffled 4-wide halves
/// (measured), instead of one 8-wide vector.
#[inline(never)]
fn tree_of(a: [f32; LANES], op: &impl Fn(f32, f32) -> f32) -> f32 {
    op(
        op(op(a[0], a[1]), op(a[2], a[3])),
        op(op(a[4], a[5]), op(a[6], a[7])),
    )
}

/// Σ a[s]·b[s] with 8 interleaved partial sums (fixed order, vectorisable).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = tree_of(acc, &|a, b| a + b);
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(7919))
                    >> 8) as f32
                    / 4194304.0
                    - 2.0
            })
            .collect()
    }

    /// Direct f64 formula with explicit q/k/v extraction per the two orders (adm_unet.md §5).
    fn reference(qkv: &[f32], c: usize, t: usize, heads: usize, order: QkvOrder) -> Vec<f64> {
        let ch = c / heads;
        let at = |row: usize, pos: usize| qkv[row * t + pos] as f64;
        let mut out = vec![0f64; c * t];
        for h in 0..heads {
            let (qr, kr, vr) = match order {
                QkvOrder::Legacy => (h * 3 * ch, h * 3 * ch + ch, h * 3 * ch + 2 * ch),
                QkvOrder::New => (h * ch, c + h * ch, 2 * c + h * ch),
            };
            for tt in 0..t {
                let w: Vec<f64> = (0..t)
                    .map(|s| {
                        (0..ch)
                            .map(|cc| at(qr + cc, tt) * at(kr + cc, s))
                            .sum::<f64>()
                            / (ch as f64).sqrt()
                    })
                    .collect();
                let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = w.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for cc in 0..ch {
                    out[(h * ch + cc) * t + tt] = (0..t).map(|s| e[s] / z * at(vr + cc, s)).sum();
                }
            }
        }
        out
    }

    fn run(
        qkv: &[f32],
        c: usize,
        t: usize,
        heads: usize,
        order: QkvOrder,
        h: core::ops::Range<usize>,
    ) -> Vec<f32> {
        let ch = c / heads;
        let mut out = vec![f32::NAN; h.len() * ch * t];
        let mut scratch = vec![0f32; attention_scratch_len(t)];
        QkvAttention {
            channels: c,
            t,
            heads,
            order,
        }
        .forward(qkv, h, &mut out, &mut scratch)
        .unwrap();
        out
    }

    #[test]
    fn matches_direct_formula_both_orders() {
        for &(c, t, heads) in &[(4, 5, 1), (8, 7, 2), (12, 16, 3), (16, 9, 4)] {
            let qkv = data(3 * c * t, (c * t) as u32);
            for order in [QkvOrder::Legacy, QkvOrder::New] {
                let want = reference(&qkv, c, t, heads, order);
                let got = run(&qkv, c, t, heads, order, 0..heads);
                let m = want.iter().fold(1f64, |a, v| a.max(v.abs()));
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5 * m,
                        "{order:?} c={c} t={t} heads={heads}: {g} vs {w}"
                    );
                }
                // Head by head gives the same bits.
                let ch = c / heads;
                for hh in 0..heads {
                    assert_eq!(
                        run(&qkv, c, t, heads, order, hh..hh + 1),
                        got[hh * ch * t..(hh + 1) * ch * t]
                    );
                }
            }
        }
    }

    #[test]
    fn orders_differ_and_single_position_returns_v() {
        // T = 1: the softmax weight is 1, so a = v exactly; Legacy v rows are 2..3 (ch = 1),
        // New v rows are the last C rows.
        let qkv = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(run(&qkv, 2, 1, 2, QkvOrder::Legacy, 0..2), [3.0, 6.0]);
        assert_eq!(run(&qkv, 2, 1, 2, QkvOrder::New, 0..2), [5.0, 6.0]);
    }

    #[test]
    fn hand_computed_two_positions() {
        // One head, ch = 1, T = 2: q = [1, 0], k = [0, ln 3], v = [10, 20]. Scale ch^(-1/2) = 1.
        // Position 0: logits [0, ln 3] → weights [1/4, 3/4] → 17.5; position 1: logits 0 → 15.
        let qkv = [1.0, 0.0, 0.0, 3f32.ln(), 10.0, 20.0];
        let out = run(&qkv, 1, 2, 1, QkvOrder::Legacy, 0..1);
        assert!(
            (out[0] - 17.5).abs() < 1e-5 && (out[1] - 15.0).abs() < 1e-6,
            "{out:?}"
        );
    }

    #[test]
    fn softmax_matches_f64_and_handles_extremes() {
        // Rows of the attention sizes (T = 64, 256) and ragged lengths, logits spread over
        // ±40 so some weights underflow the f32 range relative to the max.
        for t in [1, 7, 64, 131, 256] {
            let row: Vec<f32> = data(t, t as u32).iter().map(|v| v * 20.0).collect();
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            let mut got = row.clone();
            softmax_inplace(&mut got);
            for (g, &v) in got.iter().zip(&row) {
                let want = (v as f64 - m).exp() / z;
                // Rounding x − max in f32 alone costs |x − max|·2⁻²⁴ relative in e^(x − max).
                let tol = (4.0 + (v as f64 - m).abs()) * f32::EPSILON as f64;
                assert!(
                    (*g as f64 - want).abs() <= tol * want + 1e-30,
                    "t={t}: {g} vs {want}"
                );
            }
        }
        // A logit 1000 below the others weighs (almost) nothing, not NaN; equal logits are
        // uniform; a NaN logit poisons its row instead of vanishing.
        let mut row = [0.0f32, -1000.0, 0.0, 0.0];
        softmax_inplace(&mut row);
        assert!(
            row[1] < 1e-37 && (row[0] - 1.0 / 3.0).abs() < 1e-7,
            "{row:?}"
        );
        assert_eq!(row[0], row[2]);
        let mut row = [1.0f32, f32::NAN, 2.0];
        softmax_inplace(&mut row);
        assert!(row.iter().all(|v| v.is_nan()), "{row:?}");
    }

    #[test]
    fn rejects_bad_shapes() {
        let qkv = [0f32; 24];
        let mut out = [0f32; 8];
        let mut s = [0f32; 2];
        assert!(QkvAttention {
            channels: 4,
            t: 2,
            heads: 3,
            order: QkvOrder::Legacy
        }
        .forward(&qkv, 0..1, &mut out, &mut s)
        .is_err());
        assert!(QkvAttention {
            channels: 4,
            t: 2,
            heads: 2,
            order: QkvOrder::Legacy
        }
        .forward(&qkv, 0..3, &mut out, &mut s)
        .is_err());
        assert!(QkvAttention {
            channels: 4,
            t: 2,
            heads: 2,
            order: QkvOrder::Legacy
        }
        .forward(&qkv, 0..2, &mut out, &mut s[..1])
        .is_err());
        assert!(QkvAttention {
            channels: 4,
            t: 2,
            heads: 2,
            order: QkvOrder::Legacy
        }
        .forward(&qkv, 0..1, &mut out, &mut s)
        .is_err());
        assert!(QkvAttention {
            channels: 4,
            t: 2,
            heads: 2,
            order: QkvOrder::Legacy
        }
        .forward(&qkv, 0..2, &mut out, &mut s)
        .is_ok());
    }

    /// The forward in f64 over f64 inputs (for finite differences).
    fn forward64(qkv: &[f64], c: usize, t: usize, heads: usize, order: QkvOrder) -> Vec<f64> {
        let ch = c / heads;
        let mut out = vec![0f64; c * t];
        for h in 0..heads {
            let (qr, kr, vr) = head_rows(order, c, ch, h);
            for tt in 0..t {
                let l: Vec<f64> = (0..t)
                    .map(|s| {
                        (0..ch)
                            .map(|cc| qkv[(qr + cc) * t + tt] * qkv[(kr + cc) * t + s])
                            .sum::<f64>()
                            / (ch as f64).sqrt()
                    })
                    .collect();
                let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for cc in 0..ch {
                    out[(h * ch + cc) * t + tt] = (0..t)
                        .map(|s| e[s] / z * qkv[(vr + cc) * t + s])
                        .sum::<f64>();
                }
            }
        }
        out
    }

    #[test]
    fn backward_matches_finite_differences_both_orders() {
        use crate::gradcheck::{assert_grad, data as rnd, dot64, fd_grad, wide};
        for &(c, t, heads) in &[(4, 5, 1), (6, 4, 2), (12, 7, 3), (8, 9, 4)] {
            let qkv = rnd(3 * c * t, (c * t) as u32);
            let r = rnd(c * t, 99);
            for order in [QkvOrder::Legacy, QkvOrder::New] {
                let want = fd_grad(&wide(&qkv), 1e-4, |v| {
                    dot64(&r, &forward64(v, c, t, heads, order))
                });
                let mut dqkv = vec![0f32; qkv.len()];
                let mut s = vec![f32::NAN; attention_backward_scratch_len(t)];
                QkvAttention {
                    channels: c,
                    t,
                    heads,
                    order,
                }
                .backward(&mut dqkv, &r, &qkv, 0..heads, &mut s)
                .unwrap();
                assert_grad(
                    &dqkv,
                    &want,
                    2e-5,
                    &format!("{order:?} c={c} t={t} heads={heads}"),
                );
                // Head by head, onto a nonzero start, gives the same bits as one call.
                let mut whole = vec![0.5f32; qkv.len()];
                QkvAttention {
                    channels: c,
                    t,
                    heads,
                    order,
                }
                .backward(&mut whole, &r, &qkv, 0..heads, &mut s)
                .unwrap();
                let mut split = vec![0.5f32; qkv.len()];
                for hh in (0..heads).rev() {
                    QkvAttention {
                        channels: c,
                        t,
                        heads,
                        order,
                    }
                    .backward(&mut split, &r, &qkv, hh..hh + 1, &mut s)
                    .unwrap();
                }
                assert_eq!(split, whole);
            }
        }
        // A single position: a = v, so dv = da and dq = dk = 0.
        let mut d = [0f32; 6];
        let mut s = [0f32; 2];
        QkvAttention {
            channels: 2,
            t: 1,
            heads: 2,
            order: QkvOrder::Legacy,
        }
        .backward(
            &mut d,
            &[7.0, 8.0],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            0..2,
            &mut s,
        )
        .unwrap();
        assert_eq!(d, [0.0, 0.0, 7.0, 0.0, 0.0, 8.0]);
        // Errors.
        let q = [0f32; 24];
        let dq = [0f32; 24];
        let r = [0f32; 8];
        let o = QkvOrder::New;
        let s = [0f32; 4];
        // backward with the buffers cut at the front by [dq, r, s] and the given heads.
        let ok = |heads: usize, cut: [usize; 3], hr: core::ops::Range<usize>| {
            let [cd, cr, cs] = cut;
            let (mut dq, mut s) = (dq, s);
            let shape = QkvAttention {
                channels: 4,
                t: 2,
                heads,
                order: o,
            };
            shape
                .backward(&mut dq[cd..], &r[cr..], &q, hr, &mut s[..4 - cs])
                .is_ok()
        };
        assert!(ok(2, [0; 3], 0..2));
        assert!(!ok(3, [0; 3], 0..1), "heads do not divide the channels");
        assert!(!ok(2, [0; 3], 0..3), "heads past the last");
        assert!(!ok(2, [0, 1, 0], 0..2), "short output gradient");
        assert!(!ok(2, [1, 0, 0], 0..2), "short qkv gradient");
        assert!(!ok(2, [0, 0, 1], 0..2), "short scratch");
    }

    /// The AVX2 twins compute the portable bodies' bits (no FMA, same order), so attention
    /// does not depend on the CPU's vector width.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_twins_give_the_portable_bits() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        // 37 positions: whole 8-lane blocks and a tail.
        let (c, t, heads) = (12, 37, 3);
        let qkv = data(3 * c * t, 41);
        let dout = data(c * t, 42);
        for order in [QkvOrder::Legacy, QkvOrder::New] {
            let shape = QkvAttention {
                channels: c,
                t,
                heads,
                order,
            };
            let (mut a, mut b) = (vec![0f32; c * t], vec![0f32; c * t]);
            let (mut s1, mut s2) = (vec![0f32; 2 * t], vec![0f32; 2 * t]);
            attend((&qkv, shape, 0..heads, &mut a, &mut s1[..t]));
            // SAFETY (both): the CPU has AVX2 (checked above).
            unsafe { attend_avx2((&qkv, shape, 0..heads, &mut b, &mut s2[..t])) };
            assert_eq!(a, b);
            let (mut da, mut db) = (vec![0.5f32; 3 * c * t], vec![0.5f32; 3 * c * t]);
            attend_backward((&mut da, &dout, &qkv, shape, 0..heads, &mut s1));
            unsafe { attend_backward_avx2((&mut db, &dout, &qkv, shape, 0..heads, &mut s2)) };
            assert_eq!(da, db);
        }
    }
}
