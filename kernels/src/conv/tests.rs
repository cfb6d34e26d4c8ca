//! The convolution forward against its definition (bit for bit in the documented order),
//! split invariance, f16 weights and errors.

use super::gemm::{KC, MC_MAX, NC};
use super::*;
use crate::isa::tests::isas;
use half::f16;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = (i as u32)
                .wrapping_add(seed.wrapping_mul(0x9E37_79B9))
                .wrapping_mul(2654435761);
            ((v ^ (v >> 15)) >> 8) as f32 / 8388608.0 - 1.0
        })
        .collect()
}

/// Direct convolution from the definition, in the documented term order, with the given
/// step `acc ← step(acc, w, x)`; padding contributes x = 0 terms like the GEMM.
fn reference(
    conv: &Conv2d,
    x: &[f32],
    h: usize,
    w: usize,
    wt: &[f32],
    b: &[f32],
    step: impl Fn(f32, f32, f32) -> f32,
) -> Vec<f32> {
    let (oh, ow) = conv.out_size(h, w);
    let k = conv.kernel;
    let mut out = vec![0f32; conv.c_out * oh * ow];
    for o in 0..conv.c_out {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b[o];
                for ci in 0..conv.c_in {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * conv.stride + ky) as isize - conv.pad as isize;
                            let ix = (ox * conv.stride + kx) as isize - conv.pad as isize;
                            let v = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                            {
                                x[(ci * h + iy as usize) * w + ix as usize]
                            } else {
                                0.0
                            };
                            acc = step(acc, wt[((o * conv.c_in + ci) * k + ky) * k + kx], v);
                        }
                    }
                }
                out[(o * oh + oy) * ow + ox] = acc;
            }
        }
    }
    out
}

fn run(isa: Isa, conv: &Conv2d, x: Map, p: ConvParams, co: core::ops::Range<usize>) -> Vec<f32> {
    let (h, w) = (x.h, x.w);
    let (oh, ow) = conv.out_size(h, w);
    let mut out = vec![f32::NAN; co.len() * oh * ow];
    let mut scratch = vec![f32::NAN; conv.scratch_len(h, w)];
    conv.forward_with(isa, x, p, co, &mut out, &mut scratch)
        .unwrap();
    out
}

/// (c_in, c_out, kernel, stride, pad, h, w): 3×3 and 1×1, pad 1/0, stride 1/2, odd sizes,
/// tiles wrapping output rows, K > KC (several K blocks), c_out > MC_MAX (several M blocks);
/// the wide ones take the direct path ([`DIRECT_SHAPES`]).
const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    DIRECT_SHAPES[0],
    DIRECT_SHAPES[1],
    DIRECT_SHAPES[2],
    DIRECT_SHAPES[3],
    (3, 5, 3, 1, 1, 7, 9),
    (4, 7, 3, 2, 1, 9, 7),
    (2, 6, 3, 1, 0, 6, 5),
    (3, 4, 3, 2, 0, 8, 8),
    (2, 3, 1, 1, 0, 5, 6),
    (3, 4, 1, 2, 0, 7, 7),
    (5, 13, 3, 1, 1, 3, 17),
    (45, 9, 3, 1, 1, 6, 6),
    (2, 270, 3, 1, 1, 4, 5),
    (1, 1, 3, 1, 1, 1, 1),
];
const _: () = assert!(45 * 9 > KC && 270 > MC_MAX);

#[test]
fn portable_is_bit_exact_to_direct_formula() {
    for &(ci, co, k, s, p, h, w) in SHAPES {
        let conv = Conv2d {
            c_in: ci,
            c_out: co,
            kernel: k,
            stride: s,
            pad: p,
        };
        let x = data(ci * h * w, 1);
        let wt = data(co * ci * k * k, 2);
        let b = data(co, 3);
        let want = reference(&conv, &x, h, w, &wt, &b, |acc, a, v| acc + a * v);
        let got = run(
            Isa::PORTABLE,
            &conv,
            Map::new(&x, h, w),
            ConvParams {
                weight: WeightsRef::F32(&wt),
                bias: &b,
            },
            0..co,
        );
        assert_eq!(got, want, "shape {:?}", (ci, co, k, s, p, h, w));
    }
}

#[test]
fn simd_is_bit_exact_to_fused_formula() {
    // Every SIMD path (AVX2 and AVX-512 alike) rounds once per fused multiply-add, so all
    // agree bit for bit with the fused formula and so with each other.
    for isa in isas().into_iter().filter(|i| i.is_simd()) {
        for &(ci, co, k, s, p, h, w) in SHAPES {
            let conv = Conv2d {
                c_in: ci,
                c_out: co,
                kernel: k,
                stride: s,
                pad: p,
            };
            let x = data(ci * h * w, 4);
            let wt = data(co * ci * k * k, 5);
            let b = data(co, 6);
            let want = reference(&conv, &x, h, w, &wt, &b, |acc, a, v| a.mul_add(v, acc));
            let got = run(
                isa,
                &conv,
                Map::new(&x, h, w),
                ConvParams {
                    weight: WeightsRef::F32(&wt),
                    bias: &b,
                },
                0..co,
            );
            assert_eq!(got, want, "{isa:?} shape {:?}", (ci, co, k, s, p, h, w));
        }
    }
}

#[test]
fn close_to_f64_convolution() {
    // Independent of the term order: an f64 evaluation agrees to f32 round-off.
    let conv = Conv2d {
        c_in: 40,
        c_out: 9,
        kernel: 3,
        stride: 1,
        pad: 1,
    };
    let (h, w) = (6, 6);
    let x = data(40 * 36, 7);
    let wt = data(9 * 40 * 9, 8);
    let b = data(9, 9);
    let exact = reference(&conv, &x, h, w, &wt, &b, |acc, a, v| {
        (acc as f64 + a as f64 * v as f64) as f32
    });
    for isa in isas() {
        let got = run(
            isa,
            &conv,
            Map::new(&x, h, w),
            ConvParams {
                weight: WeightsRef::F32(&wt),
                bias: &b,
            },
            0..9,
        );
        for (g, e) in got.iter().zip(&exact) {
            assert!((g - e).abs() < 1e-4, "{g} vs {e}");
        }
    }
}

#[test]
fn hand_computed_box_filter() {
    // Ones kernel on x = 1..9 (3×3), pad 1: each output is the sum of its 3×3 neighbourhood.
    let conv = Conv2d {
        c_in: 1,
        c_out: 1,
        kernel: 3,
        stride: 1,
        pad: 1,
    };
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let want = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0];
    for isa in isas() {
        assert_eq!(
            run(
                isa,
                &conv,
                Map::new(&x, 3, 3),
                ConvParams {
                    weight: WeightsRef::F32(&[1.0; 9]),
                    bias: &[0.0]
                },
                0..1
            ),
            want
        );
        // Stride 2 (+ bias 1): the windows centred on input pixels (0,0), (0,2), (2,0), (2,2).
        let s2 = Conv2d { stride: 2, ..conv };
        assert_eq!(
            run(
                isa,
                &s2,
                Map::new(&x, 3, 3),
                ConvParams {
                    weight: WeightsRef::F32(&[1.0; 9]),
                    bias: &[1.0]
                },
                0..1
            ),
            [13.0, 17.0, 25.0, 29.0]
        );
    }
    // 1×1: a per-pixel channel mix, out = 2·x0 − x1 + 0.5.
    let c1 = Conv2d {
        c_in: 2,
        c_out: 1,
        kernel: 1,
        stride: 1,
        pad: 0,
    };
    let x = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
    assert_eq!(
        run(
            Isa::PORTABLE,
            &c1,
            Map::new(&x, 1, 3),
            ConvParams {
                weight: WeightsRef::F32(&[2.0, -1.0]),
                bias: &[0.5]
            },
            0..1
        ),
        [-7.5, -15.5, -23.5]
    );
}

/// Shapes the direct path takes (wide maps): pad 1 and 0, 1×1, several K blocks, ragged
/// output channels.
pub(super) const DIRECT_SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 4] = [
    (3, 5, 3, 1, 1, 4, 30),
    (45, 13, 3, 1, 1, 3, 30),
    (5, 7, 1, 1, 0, 2, 32),
    (3, 4, 3, 1, 0, 10, 34),
];

#[test]
fn direct_and_packed_paths_give_the_same_bits() {
    for &(ci, co, k, s, p, h, w) in &DIRECT_SHAPES {
        let conv = Conv2d {
            c_in: ci,
            c_out: co,
            kernel: k,
            stride: s,
            pad: p,
        };
        assert!(conv.direct(h, w).is_some(), "{:?}", (ci, co, h, w));
        let (oh, ow) = conv.out_size(h, w);
        let x = data(ci * h * w, 13);
        let wt = data(co * ci * k * k, 14);
        let b = data(co, 15);
        let packed_len = gemm_scratch_len(co, conv.k_total());
        for isa in isas() {
            for co_r in [0..co, 1..co - 1] {
                let direct = run(
                    isa,
                    &conv,
                    Map::new(&x, h, w),
                    ConvParams {
                        weight: WeightsRef::F32(&wt),
                        bias: &b,
                    },
                    co_r.clone(),
                );
                let mut out = vec![f32::NAN; co_r.len() * oh * ow];
                let mut s = vec![f32::NAN; packed_len];
                let wr = WeightsRef::F32(&wt);
                conv.forward_with(
                    isa,
                    Map::new(&x, h, w),
                    ConvParams {
                        weight: wr,
                        bias: &b,
                    },
                    co_r.clone(),
                    &mut out,
                    &mut s,
                )
                .unwrap();
                assert_eq!(direct, out, "{isa:?} {:?} {co_r:?}", (ci, co, k, p, h, w));
            }
        }
    }
}

#[test]
fn every_split_gives_the_same_bits() {
    for &(ci, co, k, s, p, h, w) in SHAPES {
        let conv = Conv2d {
            c_in: ci,
            c_out: co,
            kernel: k,
            stride: s,
            pad: p,
        };
        let (oh, ow) = conv.out_size(h, w);
        let x = data(ci * h * w, 10);
        let wt = data(co * ci * k * k, 11);
        let b = data(co, 12);
        for isa in isas() {
            let whole = run(
                isa,
                &conv,
                Map::new(&x, h, w),
                ConvParams {
                    weight: WeightsRef::F32(&wt),
                    bias: &b,
                },
                0..co,
            );
            // Cuts that put channels in different microkernel rows and M blocks.
            for cuts in [&[1usize][..], &[co / 2], &[1, 2, 7], &[5, 11, 97, 193]] {
                let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < co).collect();
                bounds.insert(0, 0);
                bounds.push(co);
                let mut split = Vec::new();
                for r in bounds.windows(2) {
                    split.extend(run(
                        isa,
                        &conv,
                        Map::new(&x, h, w),
                        ConvParams {
                            weight: WeightsRef::F32(&wt),
                            bias: &b,
                        },
                        r[0]..r[1],
                    ));
                }
                assert_eq!(split.len(), co * oh * ow);
                assert_eq!(
                    split,
                    whole,
                    "{isa:?} shape {:?} cuts {cuts:?}",
                    (ci, co, k, s, p, h, w)
                );
            }
        }
    }
}

#[test]
fn every_pixel_split_gives_the_same_bits() {
    for &(ci, co, k, s, p, h, w) in SHAPES {
        let conv = Conv2d {
            c_in: ci,
            c_out: co,
            kernel: k,
            stride: s,
            pad: p,
        };
        let (oh, ow) = conv.out_size(h, w);
        let n = oh * ow;
        let x = data(ci * h * w, 16);
        let w16: Vec<f16> = data(co * ci * k * k, 17)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let b = data(co, 18);
        for wt in [
            WeightsRef::F16(&w16),
            WeightsRef::F32(&data(co * ci * k * k, 17)),
        ] {
            for isa in isas() {
                let whole = run(
                    isa,
                    &conv,
                    Map::new(&x, h, w),
                    ConvParams {
                        weight: wt,
                        bias: &b,
                    },
                    0..co,
                );
                // Cuts inside a column tile, at tile edges and inside an output row, and
                // at row starts (the direct path's row ranges).
                for cuts in [
                    &[1usize][..],
                    &[n / 2],
                    &[3, NR, NR + 5],
                    &[NC - 1, NC + NR],
                    &[ow, 3 * ow],
                ] {
                    let mut got = vec![f32::NAN; co * n];
                    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < n).collect();
                    bounds.insert(0, 0);
                    bounds.push(n);
                    for r in bounds.windows(2) {
                        let mut rows: Vec<&mut [f32]> = got
                            .chunks_exact_mut(n)
                            .map(|row| &mut row[r[0]..r[1]])
                            .collect();
                        let mut scratch = vec![f32::NAN; conv.scratch_len(h, w)];
                        conv.forward_pixels(
                            isa,
                            Map::new(&x, h, w),
                            ConvParams {
                                weight: wt,
                                bias: &b,
                            },
                            r[0]..r[1],
                            &mut rows,
                            &mut scratch,
                        )
                        .unwrap();
                    }
                    assert_eq!(got, whole, "{isa:?} {:?} cuts {cuts:?}", (ci, co, k, s, p));
                }
            }
        }
    }
}

#[test]
fn forward_pixels_rejects_bad_rows() {
    let c = Conv2d {
        c_in: 2,
        c_out: 3,
        kernel: 3,
        stride: 1,
        pad: 1,
    };
    let (x, wt, b) = (vec![0f32; 2 * 16], vec![0f32; 3 * 2 * 9], [0f32; 3]);
    let mut s = vec![0f32; c.scratch_len(4, 4)];
    let mut out = [0f32; 3 * 16];
    let wr = WeightsRef::F32(&wt);
    let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(16).map(|r| &mut r[4..12]).collect();
    assert!(c
        .forward_pixels(
            Isa::PORTABLE,
            Map::new(&x, 4, 4),
            ConvParams {
                weight: wr,
                bias: &b
            },
            4..12,
            &mut rows,
            &mut s
        )
        .is_ok());
    assert!(c
        .forward_pixels(
            Isa::PORTABLE,
            Map::new(&x, 4, 4),
            ConvParams {
                weight: wr,
                bias: &b
            },
            4..11,
            &mut rows,
            &mut s
        )
        .is_err());
    assert!(c
        .forward_pixels(
            Isa::PORTABLE,
            Map::new(&x, 4, 4),
            ConvParams {
                weight: wr,
                bias: &b
            },
            12..20,
            &mut rows,
            &mut s
        )
        .is_err());
    assert!(c
        .forward_pixels(
            Isa::PORTABLE,
            Map::new(&x, 4, 4),
            ConvParams {
                weight: wr,
                bias: &b
            },
            4..12,
            &mut rows[1..],
            &mut s
        )
        .is_err());
}

#[test]
fn f16_weights_equal_their_f32_values() {
    for &(ci, co, k, s, p, h, w) in SHAPES {
        let conv = Conv2d {
            c_in: ci,
            c_out: co,
            kernel: k,
            stride: s,
            pad: p,
        };
        let x = data(ci * h * w, 13);
        let w16: Vec<f16> = data(co * ci * k * k, 14)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let b = data(co, 15);
        for isa in isas() {
            let a = run(
                isa,
                &conv,
                Map::new(&x, h, w),
                ConvParams {
                    weight: WeightsRef::F16(&w16),
                    bias: &b,
                },
                0..co,
            );
            let c = run(
                isa,
                &conv,
                Map::new(&x, h, w),
                ConvParams {
                    weight: WeightsRef::F32(&w32),
                    bias: &b,
                },
                0..co,
            );
            assert_eq!(a, c);
        }
    }
}

#[test]
fn out_size_and_errors() {
    let c = Conv2d {
        c_in: 2,
        c_out: 3,
        kernel: 3,
        stride: 2,
        pad: 1,
    };
    assert_eq!(c.out_size(7, 8), (4, 4));
    assert_eq!(
        Conv2d {
            stride: 1,
            pad: 0,
            ..c
        }
        .out_size(2, 5),
        (0, 3)
    );
    // Degenerate layers size their scratch without panicking (the calls then fail).
    for bad in [
        Conv2d {
            c_in: 0,
            stride: 1,
            ..c
        },
        Conv2d {
            c_out: 0,
            stride: 1,
            ..c
        },
        Conv2d {
            kernel: 0,
            stride: 1,
            ..c
        },
    ] {
        let _ = (bad.scratch_len(8, 32), bad.backward_scratch_len(8, 32));
    }
    let (h, w) = (4, 4);
    let x = [0f32; 2 * 16];
    let wt = vec![0f32; 3 * 2 * 9];
    let b = [0f32; 3];
    let out = vec![0f32; 3 * 4];
    let s = vec![0f32; c.scratch_len(h, w)];
    // forward of `conv` with the inputs cut at the front by the given counts.
    let ok = |conv: Conv2d, cut: [usize; 4], co: core::ops::Range<usize>| {
        let [cx, cw, cb, cs] = cut;
        let (mut out, mut s) = (out.clone(), s.clone());
        let p = ConvParams {
            weight: WeightsRef::F32(&wt[cw..]),
            bias: &b[cb..],
        };
        conv.forward(Map::new(&x[cx..], h, w), p, co, &mut out, &mut s[cs..])
            .is_ok()
    };
    assert!(ok(c, [0; 4], 0..3));
    assert!(!ok(c, [1, 0, 0, 0], 0..3), "short input");
    assert!(!ok(c, [0, 1, 0, 0], 0..3), "short weights");
    assert!(!ok(c, [0, 0, 1, 0], 0..3), "short bias");
    assert!(!ok(c, [0; 4], 0..4), "channels past c_out");
    assert!(!ok(c, [0; 4], 0..2), "output longer than the channels");
    assert!(!ok(c, [0, 0, 0, 1], 0..3), "short scratch");
    assert!(!ok(Conv2d { stride: 0, ..c }, [0; 4], 0..3), "stride 0");
}
