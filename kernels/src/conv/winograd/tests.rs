//! Winograd against the direct convolution (forward, input and weight gradients), split
//! and ISA invariance, errors.

use super::super::Conv2d;
use super::*;
use crate::isa::tests::isas;
use crate::{MapMut, WeightsRef};
extern crate std;
use std::vec;
use std::vec::Vec;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Both forms of a convolution, and how much looser than F(2 × 2)'s the tolerance of each
/// is (F(4 × 4)'s transforms scale by up to 8 and divide by 6 and 24).
fn forms(conv: &Conv2d) -> [(Winograd, f32); 2] {
    let wg = Winograd::of(conv).unwrap();
    [(wg, 1.0), (wg.with_4x4_tiles(), F4_SLACK)]
}

const F4_SLACK: f32 = 4.0;

fn conv3(c_in: usize, c_out: usize) -> Conv2d {
    Conv2d {
        c_in,
        c_out,
        kernel: 3,
        stride: 1,
        pad: 1,
    }
}

/// |a − b| ≤ tol·(1 + |b|) elementwise.
fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

const SHAPES: [(usize, usize, usize, usize); 9] = [
    // c_in, c_out, h, w
    (9, 13, 70, 130), // several bands of tile rows, the last one ragged
    (1, 1, 1, 1),
    (6, 10, 24, 24),
    (3, 5, 5, 7),
    (32, 32, 16, 16),
    (13, 29, 9, 6),
    (64, 32, 8, 8),
    (8, 40, 32, 32),
    (400, 3, 4, 5),
];

#[test]
fn forward_matches_the_direct_convolution() {
    for isa in isas() {
        for &(ci, co, h, w) in &SHAPES {
            let conv = conv3(ci, co);
            let (x, wt, b) = (data(ci * h * w, 1), data(co * ci * 9, 2), data(co, 3));
            let mut want = vec![0.0; co * h * w];
            let mut s = vec![0.0; conv.scratch_len(h, w)];
            conv.forward_with(
                isa,
                Map::new(&x, h, w),
                ConvParams {
                    weight: WeightsRef::F32(&wt),
                    bias: &b,
                },
                0..co,
                &mut want,
                &mut s,
            )
            .unwrap();
            for (wg, slack) in forms(&conv) {
                let mut u = vec![0.0; wg.weights_len()];
                wg.transform_weights(&wt, &mut u).unwrap();
                let mut s = vec![f32::NAN; wg.scratch_len(h, w)];
                let mut got = vec![f32::NAN; co * h * w];
                wg.forward(isa, Map::new(&x, h, w), &u, Some(&b), &mut got, &mut s)
                    .unwrap();
                let tol = slack * 2e-6 * (ci as f32 * 9.0).sqrt();
                assert_close(&got, &want, tol, "forward");
                // Without bias it adds onto `out`.
                let before = data(co * h * w, 4);
                let mut acc = before.clone();
                wg.forward(isa, Map::new(&x, h, w), &u, None, &mut acc, &mut s)
                    .unwrap();
                for o in 0..co {
                    for i in 0..h * w {
                        let e = before[o * h * w + i] + (want[o * h * w + i] - b[o]);
                        let g = acc[o * h * w + i];
                        assert!(
                            (g - e).abs() <= tol * (2.0 + e.abs()),
                            "accumulate: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn input_gradient_through_the_transposed_form() {
    for isa in isas() {
        for &(ci, co, h, w) in &SHAPES {
            let conv = conv3(ci, co);
            let (dy, wt) = (data(co * h * w, 5), data(co * ci * 9, 6));
            let start = data(ci * h * w, 7);
            let mut want = start.clone();
            let mut s = vec![0.0; conv.backward_scratch_len(h, w)];
            conv.backward_input(
                isa,
                MapMut::new(&mut want, h, w),
                &dy,
                WeightsRef::F32(&wt),
                0..ci,
                &mut s,
            )
            .unwrap();
            let mut flipped = vec![0.0; conv.flipped_len()];
            conv.flip_weights(WeightsRef::F32(&wt), &mut flipped)
                .unwrap();
            for (wg, slack) in forms(&conv) {
                let wg = wg.transposed();
                let mut u = vec![0.0; wg.weights_len()];
                wg.transform_weights(&flipped, &mut u).unwrap();
                let mut got = start.clone();
                let mut s = vec![f32::NAN; wg.scratch_len(h, w)];
                wg.forward(isa, Map::new(&dy, h, w), &u, None, &mut got, &mut s)
                    .unwrap();
                let tol = slack * (2e-6 * (co as f32 * 9.0).sqrt() + 1e-6);
                assert_close(&got, &want, tol, "dx");
            }
        }
    }
}

#[test]
fn weight_gradient_matches_the_direct_convolution() {
    for isa in isas() {
        for &(ci, co, h, w) in &SHAPES {
            let conv = conv3(ci, co);
            let (x, dy) = (data(ci * h * w, 8), data(co * h * w, 9));
            let (dw0, db0) = (data(co * ci * 9, 10), data(co, 11));
            let (mut want_w, mut want_b) = (dw0.clone(), db0.clone());
            let mut s = vec![0.0; conv.backward_scratch_len(h, w)];
            conv.backward_params(
                isa,
                ConvGrads {
                    dweight: &mut want_w,
                    dbias: &mut want_b,
                },
                &dy,
                Map::new(&x, h, w),
                0..co,
                &mut s,
            )
            .unwrap();
            for (wg, slack) in forms(&conv) {
                let (mut got_w, mut got_b) = (dw0.clone(), db0.clone());
                let mut s = vec![f32::NAN; wg.backward_scratch_len(h, w)];
                wg.backward_params(
                    isa,
                    ConvGrads {
                        dweight: &mut got_w,
                        dbias: &mut got_b,
                    },
                    &dy,
                    Map::new(&x, h, w),
                    &mut s,
                )
                .unwrap();
                assert_eq!(got_b, want_b, "the bias gradient is the same sum");
                let tol = slack * 3e-6 * ((h * w) as f32).sqrt();
                assert_close(&got_w, &want_w, tol, "dweight");
            }
        }
    }
}

/// Two samples' transformed weight gradients summed, then one adjoint transform: the sum
/// of the two samples' weight gradients (up to rounding), and the bias gradients of both.
#[test]
fn transformed_weight_gradients_add_across_samples() {
    let isa = Isa::detected();
    let (ci, co, h, w) = (13, 17, 12, 10);
    for (wg, slack) in forms(&conv3(ci, co)) {
        let xs = [data(ci * h * w, 20), data(ci * h * w, 21)];
        let dys = [data(co * h * w, 22), data(co * h * w, 23)];
        let mut s = vec![f32::NAN; wg.backward_scratch_len(h, w)];
        let (mut want_w, mut want_b) = (data(co * ci * 9, 24), data(co, 25));
        let (mut got_w, mut got_b) = (want_w.clone(), want_b.clone());
        let mut du = vec![0.0; wg.weight_gradient_len()];
        for (x, dy) in xs.iter().zip(&dys) {
            wg.backward_params(
                isa,
                ConvGrads {
                    dweight: &mut want_w,
                    dbias: &mut want_b,
                },
                dy,
                Map::new(x, h, w),
                &mut s,
            )
            .unwrap();
            wg.backward_params_transformed(
                isa,
                ConvGrads {
                    dweight: &mut du,
                    dbias: &mut got_b,
                },
                dy,
                Map::new(x, h, w),
                &mut s,
            )
            .unwrap();
        }
        wg.weight_gradient(&du, &mut got_w).unwrap();
        assert_eq!(got_b, want_b);
        assert_close(&got_w, &want_w, slack * 1e-5, "dweight");
        assert!(wg.weight_gradient(&du[1..], &mut got_w).is_err());
        let short = wg.backward_scratch_len(h, w) - wg.weight_gradient_len() - 1;
        assert!(wg
            .backward_params_transformed(
                isa,
                ConvGrads {
                    dweight: &mut du,
                    dbias: &mut got_b
                },
                &dys[0],
                Map::new(&xs[0], h, w),
                &mut s[..short]
            )
            .is_err());
    }
}

/// Splitting a map into pixel ranges of whole tile rows (as threads do) gives the bits of
/// the whole map, on every ISA, in maps of one band and of several (ragged) bands.
#[test]
fn pixel_ranges_give_the_bits_of_the_whole_map() {
    for isa in isas() {
        for (ci, co, h, w) in [(24, 20, 37, 64), (9, 13, 70, 130), (8, 12, 11, 14)] {
            for (wg, _) in forms(&conv3(ci, co)) {
                let (x, wt, b) = (data(ci * h * w, 1), data(co * ci * 9, 2), data(co, 3));
                let mut u = vec![0.0; wg.weights_len()];
                wg.transform_weights(&wt, &mut u).unwrap();
                let mut s = vec![f32::NAN; wg.scratch_len(h, w)];
                let mut whole = vec![f32::NAN; co * h * w];
                wg.forward(isa, Map::new(&x, h, w), &u, Some(&b), &mut whole, &mut s)
                    .unwrap();
                // The forward's own copy of the weights gives the same bits.
                let mut only = vec![0.0; wg.forward_weights_len()];
                let mut ws = vec![0.0; wg.weights_len()];
                wg.transform_forward_weights(&wt, &mut only, &mut ws)
                    .unwrap();
                let u = only;
                let band = wg.pixels_per_tile_row(w);
                let tile_rows = h.div_ceil(wg.tile());
                for parts in [1, 2, 3, tile_rows] {
                    let mut got = vec![f32::NAN; co * h * w];
                    for j in 0..parts {
                        let cut = |j: usize| (tile_rows * j / parts * band).min(h * w);
                        let px = cut(j)..cut(j + 1);
                        let mut rows: Vec<&mut [f32]> = got
                            .chunks_exact_mut(h * w)
                            .map(|p| &mut p[px.clone()])
                            .collect();
                        wg.forward_pixels(
                            isa,
                            Map::new(&x, h, w),
                            ConvParams {
                                weight: &u,
                                bias: &b,
                            },
                            px,
                            &mut rows,
                            &mut s,
                        )
                        .unwrap();
                    }
                    assert_eq!(got, whole, "{ci}->{co} at {h}x{w}, {parts} parts");
                }
                // A range that cuts a tile row is refused, not computed.
                let mut rows: Vec<&mut [f32]> = whole
                    .chunks_exact_mut(h * w)
                    .map(|p| &mut p[1..band])
                    .collect();
                let r = wg.forward_pixels(
                    isa,
                    Map::new(&x, h, w),
                    ConvParams {
                        weight: &u,
                        bias: &b,
                    },
                    1..band,
                    &mut rows,
                    &mut s,
                );
                assert!(r.is_err());
            }
        }
    }
}

#[test]
fn isas_give_the_same_bits() {
    let isas = isas();
    // Ragged row panels of 8 and 4 rows; products 16 or fewer and up to 32 columns wide.
    for (ci, co, h, w) in [(24, 20, 11, 14), (16, 28, 9, 20)] {
        isas_agree_on(&isas, (ci, co, h, w));
    }
}

fn isas_agree_on(isas: &[Isa], (ci, co, h, w): (usize, usize, usize, usize)) {
    for (wg, _) in forms(&conv3(ci, co)) {
        let (x, wt, b) = (data(ci * h * w, 1), data(co * ci * 9, 2), data(co, 3));
        let mut u = vec![0.0; wg.weights_len()];
        wg.transform_weights(&wt, &mut u).unwrap();
        let run = |isa: Isa| {
            let mut s = vec![0.0; wg.scratch_len(h, w).max(wg.backward_scratch_len(h, w))];
            let mut y = vec![0.0; co * h * w];
            wg.forward(isa, Map::new(&x, h, w), &u, Some(&b), &mut y, &mut s)
                .unwrap();
            let (mut dw, mut db) = (vec![0.0; co * ci * 9], vec![0.0; co]);
            wg.backward_params(
                isa,
                ConvGrads {
                    dweight: &mut dw,
                    dbias: &mut db,
                },
                &y,
                Map::new(&x, h, w),
                &mut s,
            )
            .unwrap();
            (y, dw)
        };
        let simd: Vec<_> = isas
            .iter()
            .filter(|i| i.is_simd())
            .map(|&i| run(i))
            .collect();
        for r in &simd[1..] {
            assert_eq!(r, &simd[0], "every SIMD ISA fuses the same products");
        }
    }
}

#[test]
fn errors_not_panics() {
    assert_eq!(
        Winograd::of(&Conv2d {
            c_in: 2,
            c_out: 2,
            kernel: 3,
            stride: 2,
            pad: 1
        }),
        None
    );
    assert_eq!(
        Winograd::of(&Conv2d {
            c_in: 2,
            c_out: 2,
            kernel: 1,
            stride: 1,
            pad: 0
        }),
        None
    );
    assert_eq!(Winograd::of(&conv3(0, 2)), None);
    let wg = Winograd::of(&conv3(2, 3)).unwrap();
    let isa = Isa::detected();
    let u = vec![0.0; wg.weights_len()];
    let mut s = vec![0.0; wg.scratch_len(4, 4)];
    let mut out = vec![0.0; 3 * 16];
    let x = vec![0.0; 2 * 16];
    assert!(wg
        .forward(isa, Map::new(&x[1..], 4, 4), &u, None, &mut out, &mut s)
        .is_err());
    assert!(wg
        .forward(isa, Map::new(&x, 4, 4), &u[1..], None, &mut out, &mut s)
        .is_err());
    assert!(wg
        .forward(
            isa,
            Map::new(&x, 4, 4),
            &u,
            Some(&[0.0; 2]),
            &mut out,
            &mut s
        )
        .is_err());
    assert!(wg
        .forward(isa, Map::new(&x, 4, 4), &u, None, &mut out, &mut s[1..])
        .is_err());
    assert!(wg
        .transform_weights(&[0.0; 5], &mut vec![0.0; wg.weights_len()])
        .is_err());
    let mut dw = vec![0.0; 54];
    let mut db = vec![0.0; 3];
    let mut s = vec![0.0; wg.backward_scratch_len(4, 4)];
    assert!(wg
        .backward_params(
            isa,
            ConvGrads {
                dweight: &mut dw,
                dbias: &mut db
            },
            &out[1..],
            Map::new(&x, 4, 4),
            &mut s
        )
        .is_err());
    assert!(wg
        .backward_params(
            isa,
            ConvGrads {
                dweight: &mut dw[1..],
                dbias: &mut db
            },
            &out,
            Map::new(&x, 4, 4),
            &mut s
        )
        .is_err());
    assert!(wg
        .backward_params(
            isa,
            ConvGrads {
                dweight: &mut dw,
                dbias: &mut db
            },
            &out,
            Map::new(&x, 4, 4),
            &mut s[1..]
        )
        .is_err());
    assert!(wg
        .backward_params(
            isa,
            ConvGrads {
                dweight: &mut dw,
                dbias: &mut db
            },
            &out,
            Map::new(&x, 4, 4),
            &mut s
        )
        .is_ok());
}
