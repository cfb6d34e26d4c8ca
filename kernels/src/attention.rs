//! The attention core of guided-diffusion's AttentionBlock: `QKVAttentionLegacy` and
//! `QKVAttention` (adm_unet.md §5). The surrounding GroupNorm, qkv / proj_out 1×1 convolutions
//! and the residual are separate kernels.

use crate::{check_len, check_min_len, check_range, KernelError};

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

/// Scratch floats [`qkv_attention`] needs for `t` positions: one row of attention weights.
pub fn attention_scratch_len(t: usize) -> usize {
    t
}

/// First rows of q, k and v of head `h` inside `qkv` = [3C, T].
fn head_rows(order: QkvOrder, channels: usize, ch: usize, h: usize) -> (usize, usize, usize) {
    match order {
        QkvOrder::Legacy => (h * 3 * ch, h * 3 * ch + ch, h * 3 * ch + 2 * ch),
        QkvOrder::New => (h * ch, channels + h * ch, 2 * channels + h * ch),
    }
}

/// Multi-head attention over T positions for the heads `h`: with ch = channels/heads and
/// s = ch^(−1/4) applied to q and k before their product (as the original, for f16 stability),
/// `w[t, ·] = softmax_s(Σ_c (q[c,t]·s)(k[c,s]·s))` in f32 and `a[c, t] = Σ_s w[t,s]·v[c,s]`;
/// `out` = [h.len()·ch, T], head-major (output channel = head·ch + c, relative to h.start).
#[allow(clippy::too_many_arguments)]
pub fn qkv_attention(
    qkv: &[f32],
    channels: usize,
    t: usize,
    heads: usize,
    order: QkvOrder,
    h: core::ops::Range<usize>,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    if heads == 0 || !channels.is_multiple_of(heads) || t == 0 {
        return Err(KernelError::Shape(
            "attention: channels must be a nonzero multiple of heads, T > 0",
        ));
    }
    let ch = channels / heads;
    check_len("attention qkv", 3 * channels * t, qkv.len())?;
    check_range("attention: head range outside 0..heads", &h, heads)?;
    check_len("attention output", h.len() * ch * t, out.len())?;
    check_min_len("attention scratch", attention_scratch_len(t), scratch.len())?;
    let row = &mut scratch[..t];
    let scale = 1.0 / libm::sqrtf(libm::sqrtf(ch as f32));
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
    Ok(())
}

/// row[s] = Σ_c (q[c,target]·scale)·(k[c,s]·scale), accumulated over c in order.
fn logits(q: &[f32], k: &[f32], t: usize, target: usize, scale: f32, row: &mut [f32]) {
    row.fill(0.0);
    for (qc, kc) in q.chunks_exact(t).zip(k.chunks_exact(t)) {
        let qs = qc[target] * scale;
        for (r, &kv) in row.iter_mut().zip(kc) {
            *r += qs * (kv * scale);
        }
    }
}

/// Softmax in place: exp(x − max) / Σ exp(x − max).
fn softmax_inplace(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for r in row.iter_mut() {
        *r = libm::expf(*r - max);
        sum += *r;
    }
    let inv = 1.0 / sum;
    for r in row.iter_mut() {
        *r *= inv;
    }
}

/// Σ a[s]·b[s] with 8 interleaved partial sums (fixed order, vectorisable).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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
        qkv_attention(qkv, c, t, heads, order, h, &mut out, &mut scratch).unwrap();
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
    fn rejects_bad_shapes() {
        let qkv = [0f32; 24];
        let mut out = [0f32; 8];
        let mut s = [0f32; 2];
        assert!(qkv_attention(&qkv, 4, 2, 3, QkvOrder::Legacy, 0..1, &mut out, &mut s).is_err());
        assert!(qkv_attention(&qkv, 4, 2, 2, QkvOrder::Legacy, 0..3, &mut out, &mut s).is_err());
        assert!(
            qkv_attention(&qkv, 4, 2, 2, QkvOrder::Legacy, 0..2, &mut out, &mut s[..1]).is_err()
        );
        assert!(qkv_attention(&qkv, 4, 2, 2, QkvOrder::Legacy, 0..1, &mut out, &mut s).is_err());
        assert!(qkv_attention(&qkv, 4, 2, 2, QkvOrder::Legacy, 0..2, &mut out, &mut s).is_ok());
    }
}
