//! `GroupNorm32` (guided-diffusion `normalization(ch)`), fused with the FiLM modulation of
//! ResBlock's `use_scale_shift_norm` and the SiLU that follows every norm in the ADM U-Net.

use crate::elementwise::silu_inplace;
use crate::{check_len, check_range, KernelError};

/// Lanes of the f64 partial sums: a fixed interleaving, so the statistics of a group never
/// depend on how the caller splits the groups.
const LANES: usize = 8;

/// Mean and biased variance of `x`, in one pass of f64 sums of x and x² (8 interleaved lanes).
/// In f64 the cancellation in E[x²] − μ² costs ~1e-16·μ²/σ² relative, negligible for any
/// activation an f32 network produces.
fn mean_var(x: &[f32]) -> (f64, f64) {
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
    let (mut a, mut b) = (tree(&s1), tree(&s2));
    for &v in tail {
        a += v as f64;
        b += v as f64 * v as f64;
    }
    let n = x.len() as f64;
    let mean = a / n;
    (mean, (b / n - mean * mean).max(0.0))
}

fn tree(a: &[f64; LANES]) -> f64 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// GroupNorm over `x` = [channels, hw] for the groups `g` (channels g.start·cpg .. g.end·cpg,
/// cpg = channels/groups; `out` is exactly that slice of the output):
/// `y = (x − μ_g)/sqrt(σ²_g + eps)·gamma[c] + beta[c]` with the biased variance (statistics in
/// f64, one pass; the centring x − μ uses μ split into two f32 parts so it stays accurate when
/// |μ| ≫ σ, then `y = (x − μ)·s_c + beta[c]` with `s_c = rstd·gamma[c]` in f32); then, if
/// `film = Some((scale, shift))`, `y ← y·(1 + scale[c]) + shift[c]`
/// (ResBlock's scale-shift norm, after the affine); then, if `silu_after`, y ← SiLU(y).
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    channels: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
    film: Option<(&[f32], &[f32])>,
    silu_after: bool,
    g: core::ops::Range<usize>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if groups == 0 || !channels.is_multiple_of(groups) || hw == 0 {
        return Err(KernelError::Shape(
            "group norm: channels must be a nonzero multiple of groups, hw > 0",
        ));
    }
    let cpg = channels / groups;
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
        let rstd = 1.0 / libm::sqrt(var + eps as f64);
        let mean_hi = mean as f32;
        let mean_lo = (mean - mean_hi as f64) as f32;
        for (j, (xc, yc)) in xg
            .chunks_exact(hw)
            .zip(out_g.chunks_exact_mut(hw))
            .enumerate()
        {
            let c = gi * cpg + j;
            let s = (rstd * gamma[c] as f64) as f32;
            let b = beta[c];
            for (y, &v) in yc.iter_mut().zip(xc) {
                *y = ((v - mean_hi) - mean_lo) * s + b;
            }
            if let Some((scale, shift)) = film {
                let (fs, fb) = (1.0 + scale[c], shift[c]);
                for y in yc.iter_mut() {
                    *y = *y * fs + fb;
                }
            }
            if silu_after {
                silu_inplace(yc);
            }
        }
    }
    Ok(())
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
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        c: usize,
        hw: usize,
        groups: usize,
        gamma: &[f32],
        beta: &[f32],
        film: Option<(&[f32], &[f32])>,
        act: bool,
    ) -> Vec<f64> {
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
                let want = reference(&x, c, hw, groups, &gamma, &beta, film, act);
                let mut y = vec![0f32; c * hw];
                group_norm(
                    &x,
                    c,
                    hw,
                    groups,
                    1e-5,
                    &gamma,
                    &beta,
                    film,
                    act,
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
                    group_norm(
                        &x,
                        c,
                        hw,
                        groups,
                        1e-5,
                        &gamma,
                        &beta,
                        film,
                        act,
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
        group_norm(
            &[1.0, 3.0],
            1,
            2,
            1,
            0.0,
            &[2.0],
            &[0.5],
            None,
            false,
            0..1,
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [-1.5, 2.5]);
        // FiLM: (1 + 1)·y + 1.
        group_norm(
            &[1.0, 3.0],
            1,
            2,
            1,
            0.0,
            &[2.0],
            &[0.5],
            Some((&[1.0], &[1.0])),
            false,
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
        let mut y = [0f32; 6];
        assert!(group_norm(&x, 4, 3, 3, 1e-5, &p, &p, None, false, 0..1, &mut y).is_err());
        assert!(group_norm(&x, 4, 3, 2, 1e-5, &p, &p, None, false, 0..3, &mut y).is_err());
        assert!(group_norm(&x, 4, 3, 2, 1e-5, &p, &p, None, false, 0..2, &mut y).is_err());
        assert!(group_norm(&x, 4, 3, 2, 1e-5, &p[..3], &p, None, false, 0..1, &mut y).is_err());
        assert!(group_norm(
            &x,
            4,
            3,
            2,
            1e-5,
            &p,
            &p,
            Some((&p, &p[..2])),
            false,
            0..1,
            &mut y
        )
        .is_err());
        assert!(group_norm(&x, 4, 3, 2, 1e-5, &p, &p, None, false, 0..1, &mut y).is_ok());
    }
}

/// Throughput of GroupNorm + FiLM + SiLU on the largest ADM map (128 × 256²):
/// `cargo test -p tweedie-kernels --release group_norm_throughput -- --ignored --nocapture`.
#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn group_norm_throughput() {
        let (c, hw) = (128, 256 * 256);
        let x: Vec<f32> = (0..c * hw)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let p = vec![0.5f32; c];
        let mut y = vec![0f32; c * hw];
        for (film, act) in [(None, false), (None, false), (Some((&p[..], &p[..])), true)] {
            let t0 = std::time::Instant::now();
            group_norm(&x, c, hw, 32, 1e-5, &p, &p, film, act, 0..32, &mut y).unwrap();
            let dt = t0.elapsed().as_secs_f64();
            println!(
                "film {} silu {act}: {dt:.4} s, {:.2} ns/element",
                film.is_some(),
                dt * 1e9 / (c * hw) as f64
            );
        }
    }
}
