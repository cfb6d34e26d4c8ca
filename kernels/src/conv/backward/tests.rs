//! The convolution backward against finite differences, its documented term order and
//! split invariance.

use super::super::gemm::{KC, MC_MAX};
use super::*;
use crate::gradcheck::{assert_grad, data, dot64, fd_grad, wide};
use half::f16;

use crate::isa::tests::isas;

/// x[c, iy, ix] with zero padding (signed indices).
fn at<T: Copy + Default>(x: &[T], c: usize, h: usize, w: usize, iy: isize, ix: isize) -> T {
    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
        x[(c * h + iy as usize) * w + ix as usize]
    } else {
        T::default()
    }
}

/// The forward from the definition, in f64.
fn conv64(c: &Conv2d, x: &[f64], h: usize, w: usize, wt: &[f64], b: &[f64]) -> Vec<f64> {
    let (oh, ow, k) = (c.out_size(h, w).0, c.out_size(h, w).1, c.kernel);
    let mut out = vec![0f64; c.c_out * oh * ow];
    for o in 0..c.c_out {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b[o];
                for ci in 0..c.c_in {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                            let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                            acc +=
                                wt[((o * c.c_in + ci) * k + ky) * k + kx] * at(x, ci, h, w, iy, ix);
                        }
                    }
                }
                out[(o * oh + oy) * ow + ox] = acc;
            }
        }
    }
    out
}

/// (c_in, c_out, kernel, stride, pad, h, w): 3×3 and 1×1, pad 1/0, stride 1/2, odd sizes,
/// a depth > KC in both products (c_out·9 > KC and oh·ow > KC), c_in > MC_MAX.
const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (3, 5, 3, 1, 1, 7, 9),
    (4, 7, 3, 2, 1, 9, 7),
    (4, 3, 3, 2, 1, 8, 8),
    (2, 6, 3, 1, 0, 6, 5),
    (3, 4, 3, 2, 0, 8, 7),
    (2, 3, 1, 1, 0, 5, 6),
    (3, 4, 1, 2, 0, 7, 7),
    (5, 45, 3, 1, 1, 3, 17),
    (3, 2, 3, 1, 1, 21, 19),
    (270, 2, 1, 1, 0, 3, 4),
    (1, 1, 3, 1, 1, 1, 1),
    // dW's 8-row transposes: full groups, a ragged group, 16-wide rows plus a tail.
    (11, 6, 3, 1, 1, 5, 19),
    (9, 5, 1, 1, 0, 4, 16),
    // A full 12-row panel of flipped weights with a depth tail (36 = 4·8 + 4).
    (16, 4, 3, 1, 1, 6, 10),
    // Wide maps: the input gradient takes the direct path (several K blocks with 13
    // channels: 13·9 < KC, so 45 output channels).
    super::super::tests::DIRECT_SHAPES[0],
    super::super::tests::DIRECT_SHAPES[2],
    super::super::tests::DIRECT_SHAPES[3],
    (3, 45, 3, 1, 1, 2, 30),
];
const _: () = assert!(45 * 9 > KC && 21 * 19 > KC && 270 > MC_MAX);

fn conv_of(&(ci, co, k, s, p, _, _): &(usize, usize, usize, usize, usize, usize, usize)) -> Conv2d {
    Conv2d {
        c_in: ci,
        c_out: co,
        kernel: k,
        stride: s,
        pad: p,
    }
}

struct Grads {
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

/// Backward over the whole layer, starting from `init` in every gradient buffer.
fn backward(isa: Isa, c: &Conv2d, x: Map, wt: &[f32], dout: &[f32], init: f32) -> Grads {
    let Map { data: x, h, w } = x;
    let mut g = Grads {
        dx: vec![init; x.len()],
        dw: vec![init; wt.len()],
        db: vec![init; c.c_out],
    };
    let mut s = vec![f32::NAN; c.backward_scratch_len(h, w)];
    let wr = WeightsRef::F32(wt);
    c.backward_input(
        isa,
        MapMut::new(&mut g.dx, h, w),
        dout,
        wr,
        0..c.c_in,
        &mut s,
    )
    .unwrap();
    c.backward_params(
        isa,
        ConvGrads {
            dweight: &mut g.dw,
            dbias: &mut g.db,
        },
        dout,
        Map::new(x, h, w),
        0..c.c_out,
        &mut s,
    )
    .unwrap();
    g
}

#[test]
fn gradients_match_finite_differences_of_f64_forward() {
    for shape in SHAPES {
        let c = conv_of(shape);
        let (h, w) = (shape.5, shape.6);
        let (oh, ow) = c.out_size(h, w);
        let k2 = c.kernel * c.kernel;
        let x = data(c.c_in * h * w, 1);
        let wt = data(c.c_out * c.c_in * k2, 2);
        let b = data(c.c_out, 3);
        let r = data(c.c_out * oh * ow, 4);
        let (x64, w64, b64) = (wide(&x), wide(&wt), wide(&b));
        let want_dx = fd_grad(&x64, 1e-3, |v| dot64(&r, &conv64(&c, v, h, w, &w64, &b64)));
        let want_dw = fd_grad(&w64, 1e-3, |v| dot64(&r, &conv64(&c, &x64, h, w, v, &b64)));
        let want_db = fd_grad(&b64, 1e-3, |v| dot64(&r, &conv64(&c, &x64, h, w, &w64, v)));
        for isa in isas() {
            let g = backward(isa, &c, Map::new(&x, h, w), &wt, &r, 0.0);
            let what = format!("{isa:?} {shape:?}");
            assert_grad(&g.dx, &want_dx, 1e-5, &format!("dx {what}"));
            assert_grad(&g.dw, &want_dw, 1e-5, &format!("dw {what}"));
            assert_grad(&g.db, &want_db, 1e-6, &format!("db {what}"));
        }
    }
}

/// The documented term orders, with `step(acc, a, b)` = acc + a·b (portable) or
/// fma(a, b, acc) (SIMD).
fn reference_orders(
    c: &Conv2d,
    x: Map,
    wt: &[f32],
    dout: &[f32],
    init: f32,
    step: impl Fn(f32, f32, f32) -> f32,
) -> (Vec<f32>, Vec<f32>) {
    let Map { data: x, h, w } = x;
    let (oh, ow) = c.out_size(h, w);
    let k = c.kernel;
    let (s, p) = (c.stride as isize, c.pad as isize);
    let mut dx = vec![init; x.len()];
    for ci in 0..c.c_in {
        for y in 0..h {
            for xx in 0..w {
                let mut acc = init;
                let tap = |ky: usize, kx: usize| {
                    let (ny, nx) = (y as isize + p - ky as isize, xx as isize + p - kx as isize);
                    let hit = ny % s == 0 && nx % s == 0 && ny >= 0 && nx >= 0;
                    let hit = hit && ((ny / s) as usize) < oh && ((nx / s) as usize) < ow;
                    (hit, ny / s, nx / s)
                };
                let w_at =
                    |o: usize, ky: usize, kx: usize| wt[((o * c.c_in + ci) * k + ky) * k + kx];
                if c.stride == 1 {
                    // One chain over (o, flipped taps), the transposed convolution's GEMM.
                    for o in 0..c.c_out {
                        for ky in (0..k).rev() {
                            for kx in (0..k).rev() {
                                let (_, ny, nx) = tap(ky, kx);
                                let d = at(dout, o, oh, ow, ny, nx);
                                acc = step(acc, w_at(o, ky, kx), d);
                            }
                        }
                    }
                } else {
                    // Per tap (in order) that reaches the pixel, a chain over o from 0
                    // (the GEMM into columns), then added on (col2im).
                    for ky in 0..k {
                        for kx in 0..k {
                            let (hit, ny, nx) = tap(ky, kx);
                            if hit {
                                let mut col = 0.0;
                                for o in 0..c.c_out {
                                    let d = at(dout, o, oh, ow, ny, nx);
                                    col = step(col, w_at(o, ky, kx), d);
                                }
                                acc += col;
                            }
                        }
                    }
                }
                dx[(ci * h + y) * w + xx] = acc;
            }
        }
    }
    let mut dw = vec![init; wt.len()];
    for o in 0..c.c_out {
        for ci in 0..c.c_in {
            for ky in 0..k {
                for kx in 0..k {
                    let mut acc = init;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let iy = (oy * c.stride + ky) as isize - p;
                            let ix = (ox * c.stride + kx) as isize - p;
                            acc = step(acc, dout[(o * oh + oy) * ow + ox], at(x, ci, h, w, iy, ix));
                        }
                    }
                    dw[((o * c.c_in + ci) * k + ky) * k + kx] = acc;
                }
            }
        }
    }
    (dx, dw)
}

#[test]
fn bit_exact_to_documented_term_order_and_accumulate() {
    for shape in SHAPES {
        let c = conv_of(shape);
        let (h, w) = (shape.5, shape.6);
        let (oh, ow) = c.out_size(h, w);
        let x = data(c.c_in * h * w, 5);
        let wt = data(c.c_out * c.c_in * c.kernel * c.kernel, 6);
        let dout = data(c.c_out * oh * ow, 7);
        for isa in isas() {
            let step = move |acc: f32, a: f32, b: f32| {
                if isa.is_simd() {
                    a.mul_add(b, acc)
                } else {
                    acc + a * b
                }
            };
            // Starting from 0.5 checks that gradients accumulate onto the buffer.
            let (dx, dw) = reference_orders(&c, Map::new(&x, h, w), &wt, &dout, 0.5, step);
            let g = backward(isa, &c, Map::new(&x, h, w), &wt, &dout, 0.5);
            assert_eq!(g.dx, dx, "dx {isa:?} {shape:?}");
            assert_eq!(g.dw, dw, "dw {isa:?} {shape:?}");
        }
    }
}

/// The strided input gradient's GEMM split into row blocks (30·9 = 270 rows > MC_MAX) and
/// depth blocks (400 output channels > KC) keeps the documented order (too large for the
/// finite-difference tests that run over SHAPES).
#[test]
fn strided_input_gradient_in_blocks_keeps_the_term_order() {
    let shape = (30, 400, 3, 2, 1, 5, 6);
    let c = conv_of(&shape);
    let (h, w) = (shape.5, shape.6);
    let (oh, ow) = c.out_size(h, w);
    let x = data(c.c_in * h * w, 5);
    let wt = data(c.c_out * c.c_in * 9, 6);
    let dout = data(c.c_out * oh * ow, 7);
    for isa in isas() {
        let step = move |acc: f32, a: f32, b: f32| match isa.is_simd() {
            true => a.mul_add(b, acc),
            false => acc + a * b,
        };
        let (dx, _) = reference_orders(&c, Map::new(&x, h, w), &wt, &dout, 0.5, step);
        assert_eq!(
            backward(isa, &c, Map::new(&x, h, w), &wt, &dout, 0.5).dx,
            dx,
            "{isa:?}"
        );
    }
}

#[test]
fn every_split_gives_the_same_bits() {
    for shape in SHAPES {
        let c = conv_of(shape);
        let (h, w) = (shape.5, shape.6);
        let (oh, ow) = c.out_size(h, w);
        let kk = c.c_in * c.kernel * c.kernel;
        let x = data(c.c_in * h * w, 8);
        let wt = data(c.c_out * kk, 9);
        let dout = data(c.c_out * oh * ow, 10);
        let mut s = vec![0f32; c.backward_scratch_len(h, w)];
        for isa in isas() {
            let whole = backward(isa, &c, Map::new(&x, h, w), &wt, &dout, 0.25);
            for cuts in [&[1usize][..], &[2, 3], &[1, 7, 100, 193]] {
                let bounds = |n: usize| {
                    let mut b: Vec<usize> = cuts.iter().copied().filter(|&v| v < n).collect();
                    b.insert(0, 0);
                    b.push(n);
                    b
                };
                let mut dx = vec![0.25f32; x.len()];
                for r in bounds(c.c_in).windows(2) {
                    let part = &mut dx[r[0] * h * w..r[1] * h * w];
                    c.backward_input(
                        isa,
                        MapMut::new(part, h, w),
                        &dout,
                        WeightsRef::F32(&wt),
                        r[0]..r[1],
                        &mut s,
                    )
                    .unwrap();
                }
                assert_eq!(dx, whole.dx, "dx {isa:?} {shape:?} {cuts:?}");
                // The pre-flipped weight gives the same bits for every split.
                let mut flipped = vec![0f32; c.flipped_len()];
                c.flip_weights(WeightsRef::F32(&wt), &mut flipped).unwrap();
                let mut dx = vec![0.25f32; x.len()];
                for r in bounds(c.c_in).windows(2) {
                    let part = &mut dx[r[0] * h * w..r[1] * h * w];
                    c.backward_input_flipped(
                        isa,
                        MapMut::new(part, h, w),
                        &dout,
                        &flipped,
                        r[0]..r[1],
                        &mut s,
                    )
                    .unwrap();
                }
                assert_eq!(dx, whole.dx, "flipped dx {isa:?} {shape:?} {cuts:?}");
                let (mut dw, mut db) = (vec![0.25f32; wt.len()], vec![0.25f32; c.c_out]);
                for r in bounds(c.c_out).windows(2) {
                    c.backward_params(
                        isa,
                        ConvGrads {
                            dweight: &mut dw[r[0] * kk..r[1] * kk],
                            dbias: &mut db[r[0]..r[1]],
                        },
                        &dout,
                        Map::new(&x, h, w),
                        r[0]..r[1],
                        &mut s,
                    )
                    .unwrap();
                }
                assert_eq!(dw, whole.dw, "dw {isa:?} {shape:?} {cuts:?}");
                assert_eq!(db, whole.db, "db {isa:?} {shape:?} {cuts:?}");
            }
        }
    }
}

#[test]
fn input_gradient_direct_and_packed_paths_give_the_same_bits() {
    let mut direct_shapes = 0;
    for shape in SHAPES {
        let c = conv_of(shape);
        let (h, w) = (shape.5, shape.6);
        if c.direct_input(h, w).is_none() {
            continue;
        }
        direct_shapes += 1;
        let (oh, ow) = c.out_size(h, w);
        let wt = data(c.c_out * c.c_in * c.kernel * c.kernel, 16);
        let dout = data(c.c_out * oh * ow, 17);
        for isa in isas() {
            for ci in [0..c.c_in, 1..c.c_in] {
                let mut both = [
                    vec![0.5f32; ci.len() * h * w],
                    vec![0.5f32; ci.len() * h * w],
                ];
                let lens = [c.backward_scratch_len(h, w), c.backward_packed_len(h, w)];
                for (dx, len) in both.iter_mut().zip(lens) {
                    let mut s = vec![f32::NAN; len];
                    let wr = WeightsRef::F32(&wt);
                    c.backward_input(isa, MapMut::new(dx, h, w), &dout, wr, ci.clone(), &mut s)
                        .unwrap();
                }
                assert_eq!(both[0], both[1], "{isa:?} {shape:?} {ci:?}");
            }
        }
    }
    assert!(direct_shapes >= 3);
}

#[test]
fn f16_weights_and_errors() {
    let c = conv_of(&SHAPES[0]);
    let (h, w) = (7, 9);
    let x = data(c.c_in * h * w, 11);
    let w16: Vec<f16> = data(c.c_out * c.c_in * 9, 12)
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
    let dout = data(c.c_out * h * w, 13);
    let mut s = vec![0f32; c.backward_scratch_len(h, w)];
    let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    c.backward_input(
        Isa::PORTABLE,
        MapMut::new(&mut a, h, w),
        &dout,
        WeightsRef::F16(&w16),
        0..3,
        &mut s,
    )
    .unwrap();
    c.backward_input(
        Isa::PORTABLE,
        MapMut::new(&mut b, h, w),
        &dout,
        WeightsRef::F32(&w32),
        0..3,
        &mut s,
    )
    .unwrap();
    assert_eq!(a, b);
    let wr = WeightsRef::F32(&w32);
    let p = Isa::PORTABLE;
    // f16 weights flipped (widened once) give the same bits as the f32 values.
    let mut flipped = vec![0f32; c.flipped_len()];
    c.flip_weights(WeightsRef::F16(&w16), &mut flipped).unwrap();
    let mut f = vec![0f32; x.len()];
    c.backward_input_flipped(p, MapMut::new(&mut f, h, w), &dout, &flipped, 0..3, &mut s)
        .unwrap();
    assert_eq!(f, b);
    assert!(c
        .backward_input_flipped(
            p,
            MapMut::new(&mut f, h, w),
            &dout,
            &flipped[1..],
            0..3,
            &mut s
        )
        .is_err());
    assert!(c.flip_weights(wr, &mut flipped[1..]).is_err());
    assert!(c
        .flip_weights(WeightsRef::F32(&w32[1..]), &mut flipped)
        .is_err());
    assert!(c
        .backward_input(p, MapMut::new(&mut a, h, w), &dout[1..], wr, 0..3, &mut s)
        .is_err());
    assert!(c
        .backward_input(p, MapMut::new(&mut a, h, w), &dout, wr, 0..4, &mut s)
        .is_err());
    assert!(c
        .backward_input(p, MapMut::new(&mut a[1..], h, w), &dout, wr, 0..3, &mut s)
        .is_err());
    assert!(c
        .backward_input(
            p,
            MapMut::new(&mut a, h, w),
            &dout,
            WeightsRef::F32(&w32[1..]),
            0..3,
            &mut s
        )
        .is_err());
    assert!(c
        .backward_input(p, MapMut::new(&mut a, h, w), &dout, wr, 0..3, &mut s[1..])
        .is_err());
    let big_pad = Conv2d { pad: 3, ..c };
    let (oh, ow) = big_pad.out_size(h, w);
    let d2 = vec![0f32; c.c_out * oh * ow];
    assert!(big_pad
        .backward_input(p, MapMut::new(&mut a, h, w), &d2, wr, 0..3, &mut s)
        .is_err());
    // backward_params with [dw, db, x] cut at the front by the given counts.
    let mut params_ok = |cut: [usize; 3], rows: core::ops::Range<usize>| {
        let [cw, cb, cx] = cut;
        let (mut dw, mut db) = (vec![0f32; w32.len()], vec![0f32; c.c_out]);
        let grads = ConvGrads {
            dweight: &mut dw[cw..],
            dbias: &mut db[cb..],
        };
        c.backward_params(p, grads, &dout, Map::new(&x[cx..], h, w), rows, &mut s)
            .is_ok()
    };
    assert!(params_ok([0; 3], 0..5));
    assert!(!params_ok([0, 1, 0], 0..5), "short bias gradient");
    assert!(!params_ok([1, 0, 0], 0..5), "short weight gradient");
    assert!(!params_ok([0, 0, 1], 0..5), "short input");
    assert!(!params_ok([0; 3], 0..6), "rows past the last");
}
