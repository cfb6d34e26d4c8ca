//! The input, output and output-gradient transforms (Bᵀ·d·B, Aᵀ·M·A, A·g·Aᵀ) over chunks of
//! tiles, and the de-interleaving of maps into column phases they read from.

use super::lanes::{by_isa, Lanes};
use super::{channel_ld, Planes, Tiles};
use crate::Isa;
use core::array::from_fn;

/// Copies rows top .. top + `rows` of each h × w plane of `src`, shifted by `off` (0 or 1)
/// rows and columns, into `rows` rows of m = n − 2 phases of `len` floats (zero elsewhere):
/// pixel (y, x) goes to row y + off − top, column q = x + off, into phase q % m at q / m.
/// Needs rows ≥ h + off − top (all of the plane from top on) or a band inside it, and
/// len ≥ ⌈(w + off) / m⌉.
pub(super) fn deinterleave<const N: usize>(
    isa: Isa,
    src: &[f32],
    hw: (usize, usize),
    top_off: (usize, usize),
    len: usize,
    rows: usize,
    dst: &mut [f32],
) {
    by_isa!(isa, deinterleave_with::<N>(src: &[f32], hw: (usize, usize), top_off: (usize, usize), len: usize, rows: usize, dst: &mut [f32]))
}

#[inline(always)]
fn deinterleave_with<L: Lanes, const N: usize>(
    src: &[f32],
    (h, w): (usize, usize),
    (top, off): (usize, usize),
    len: usize,
    rows: usize,
    dst: &mut [f32],
) {
    let m = N - 2;
    assert!(off < m && m * len >= w + off);
    // Source rows y0 .. y1 land at rows y + off − top of 0 .. rows.
    let y0 = top.saturating_sub(off).min(h);
    let y1 = (top + rows).saturating_sub(off).clamp(y0, h);
    let (lead, end) = (y0 + off - top.min(y0 + off), y1 + off - top.min(y1 + off));
    assert!(end <= rows);
    // Phase r holds columns q = m·i + r; the pixels land at off ≤ q < w + off, i.e. at
    // i in lo[r] .. hi[r].
    let lo: [usize; 4] = from_fn(|r| off.saturating_sub(r).div_ceil(m));
    let hi: [usize; 4] = from_fn(|r| (w + off).saturating_sub(r).div_ceil(m));
    for (plane, out) in src
        .chunks_exact(h * w)
        .zip(dst.chunks_exact_mut(rows * m * len))
    {
        // Zeros where no pixel lands (the rows outside, and each row's phase ends), not a
        // fill of the whole plane before it is written.
        out[..lead * m * len].fill(0.0);
        out[end * m * len..].fill(0.0);
        let lines = plane[y0 * w..y1 * w].chunks_exact(w.max(1));
        for (y, line) in lines.enumerate() {
            let row = &mut out[(lead + y) * m * len..][..m * len];
            for r in 0..m {
                for i in (0..lo[r]).chain(hi[r]..len) {
                    row[r * len + i] = 0.0;
                }
            }
            let row = row.as_mut_ptr();
            // Source column m·j + r lands in phase (r + off) % m at j + (r + off) / m.
            let at = |r: usize| (r + off) % m * len + (r + off) / m;
            let groups = w / m;
            // Whole vectors, then half ones (16 × 16 maps in F(4 × 4) have 4 groups a row).
            // SAFETY: m·groups ≤ w floats of `line`; each phase's stores reach at most
            // groups + 1 ≤ len floats into it (m·len ≥ w + off).
            let j = unsafe { split_run::<L, N>(line, row, &at, 0, groups) };
            let j = unsafe { split_run::<L::Half, N>(line, row, &at, j, groups) };
            for (x, &v) in line.iter().enumerate().skip(m * j) {
                let q = x + off;
                // SAFETY: q / m < len by the assertion.
                unsafe { *row.add(q % m * len + q / m) = v };
            }
        }
    }
}

/// De-interleaves the groups j.. of m source columns of `line` into `row` (phase r's group j at
/// `at(r)` + j) whole L::N groups at a time while they fit in `groups`; returns the next j.
///
/// # Safety
/// `line` must hold m·groups floats; `row` must be valid for writing at `at(r)` + groups.
#[inline(always)]
unsafe fn split_run<L: Lanes, const N: usize>(
    line: &[f32],
    row: *mut f32,
    at: &impl Fn(usize) -> usize,
    mut j: usize,
    groups: usize,
) -> usize {
    let m = N - 2;
    assert!(line.len() >= m * groups);
    while j + L::N <= groups {
        // SAFETY: m·(j + N) ≤ m·groups floats of `line`; the stores as the caller vouches.
        unsafe {
            let s = line.as_ptr().add(m * j);
            if m == 2 {
                let (a, b) = L::load_split(s);
                a.store(row.add(at(0) + j));
                b.store(row.add(at(1) + j));
            } else {
                // Phases 0 and 2 are the evens' evens and odds, 1 and 3 the odds'.
                let (e0, o0) = L::load_split(s);
                let (e1, o1) = L::load_split(s.add(2 * L::N));
                let ((p0, p2), (p1, p3)) = (L::split(e0, e1), L::split(o0, o1));
                for (r, p) in [p0, p1, p2, p3].into_iter().enumerate() {
                    p.store(row.add(at(r) + j));
                }
            }
        }
        j += L::N;
    }
    j
}

/// Bᵀ·x for one column or row x of an n × n window: with F(2 × 2),
/// Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]; with F(4 × 4),
/// Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0;
/// 0 4 0 −5 0 1] (as sums with exact power-of-two scalings).
#[inline(always)]
fn bt<L: Lanes, const N: usize>(x: [L; N]) -> [L; N] {
    let mut y = x;
    if N == 4 {
        (y[0], y[1], y[2], y[3]) = (x[0] - x[2], x[1] + x[2], x[2] - x[1], x[1] - x[3]);
    } else {
        let k = |c: f32, v: L| L::splat(c) * v;
        let (s1, d1) = (x[4] - k(4.0, x[2]), x[3] - k(4.0, x[1]));
        let (s2, d2) = (x[4] - x[2], k(2.0, x[3] - x[1]));
        y[0] = k(4.0, x[0] - x[2]) - x[2] + x[4];
        (y[1], y[2], y[3], y[4]) = (s1 + d1, s1 - d1, s2 + d2, s2 - d2);
        y[5] = k(4.0, x[1] - x[3]) - x[3] + x[5];
    }
    y
}

/// Aᵀ·x for one column or row x of an n × n transformed tile; the first m values are the
/// result. With F(2 × 2), Aᵀ = [1 1 1 0; 0 1 −1 −1]; with F(4 × 4),
/// Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1].
#[inline(always)]
fn at<L: Lanes, const N: usize>(x: [L; N]) -> [L; N] {
    let mut y = x;
    if N == 4 {
        (y[0], y[1]) = (x[0] + x[1] + x[2], x[1] - x[2] - x[3]);
    } else {
        let k = |c: f32, v: L| L::splat(c) * v;
        let (a, b) = (x[1] + x[2], x[1] - x[2]);
        let (c, d) = (x[3] + x[4], x[3] - x[4]);
        (y[0], y[1]) = (x[0] + a + c, b + k(2.0, d));
        (y[2], y[3]) = (a + k(4.0, c), b + k(8.0, d) + x[5]);
    }
    y
}

/// A·x for the first m values of x (one column or row of an m × m output-gradient tile): the
/// adjoint of [`at`], n values.
#[inline(always)]
fn a_times<L: Lanes, const N: usize>(x: [L; N]) -> [L; N] {
    let mut y = x;
    if N == 4 {
        (y[0], y[1], y[2], y[3]) = (x[0], x[0] + x[1], x[0] - x[1], -x[1]);
    } else {
        let k = |c: f32, v: L| L::splat(c) * v;
        let (e, o) = (x[0] + x[2], x[1] + x[3]);
        let (e4, o4) = (x[0] + k(4.0, x[2]), k(2.0, x[1]) + k(8.0, x[3]));
        (y[0], y[1], y[2]) = (x[0], e + o, e - o);
        (y[3], y[4], y[5]) = (e4 + o4, e4 - o4, x[3]);
    }
    y
}

/// Bᵀ·d·B for an n × n window d.
#[inline(always)]
fn input_tile<L: Lanes, const N: usize>(d: [[L; N]; N]) -> [[L; N]; N] {
    // cols[q] = column q of Bᵀ·d; row i of the result is Bᵀ times row i of Bᵀ·d. (Plain
    // loops, not array::from_fn: its closures are not always inlined into the AVX2 caller,
    // and out of line every vector operation would be a call.)
    let mut cols = d;
    for (q, col) in cols.iter_mut().enumerate() {
        let mut x = d[0];
        for (i, v) in x.iter_mut().enumerate() {
            *v = d[i][q];
        }
        *col = bt::<L, N>(x);
    }
    let mut v = cols;
    for (i, row) in v.iter_mut().enumerate() {
        let mut x = cols[0];
        for (q, c) in x.iter_mut().enumerate() {
            *c = cols[q][i];
        }
        *row = bt::<L, N>(x);
    }
    v
}

/// V[c][p][g] = (Bᵀ·d·B)[p] for tile t0 + g = ty·tw + tx of the chunk from t0 (g < chunk,
/// valid tiles only), d the n × n window of padded rows m·ty .. m·ty + n, columns
/// m·tx .. m·tx + n of channel c: in the de-interleaved copy ([`deinterleave`], offset 1),
/// column m·tx + j is phase j % m at tx + j / m.
pub(super) fn input_transform<const N: usize>(
    isa: Isa,
    t: &Tiles,
    t0: (usize, usize),
    c: usize,
    padded: &[f32],
    v: &mut [f32],
) {
    by_isa!(isa, input_transform_with::<N>(t: &Tiles, t0: (usize, usize), c: usize, padded: &[f32], v: &mut [f32]))
}

#[inline(always)]
fn input_transform_with<L: Lanes, const N: usize>(
    t: &Tiles,
    (t0, chunk): (usize, usize),
    c: usize,
    padded: &[f32],
    v: &mut [f32],
) {
    let (m, len) = (N - 2, t.input_len());
    let ld = channel_ld::<N>(chunk);
    let plane_len = t.input_plane();
    assert!(t.m == m && padded.len() >= c * plane_len && v.len() >= c * ld);
    for ci in 0..c {
        let plane = &padded[ci * plane_len..][..plane_len];
        let dst = v[ci * ld..][..N * N * chunk].as_mut_ptr();
        for_runs::<L>(t, t0, chunk, |g, ty, tx, lanes| {
            // Rows m·ty .. m·ty + n of the plane (m·len floats each).
            let src = plane[m * ty * m * len..][..N * m * len].as_ptr();
            // SAFETY: the loads reach at most (m − 1)·len + 1 + tx + lanes ≤ m·len into each
            // of `src`'s n rows (tx + lanes ≤ tw = len − 1); the stores
            // (n² − 1)·chunk + g + lanes ≤ n²·chunk.
            unsafe {
                match lanes {
                    n if n == L::N => input_tiles::<L, N>(src.add(tx), len, dst.add(g), chunk),
                    n if n == L::Half::N => {
                        input_tiles::<L::Half, N>(src.add(tx), len, dst.add(g), chunk)
                    }
                    _ => input_tiles::<f32, N>(src.add(tx), len, dst.add(g), chunk),
                }
            }
        });
    }
}

/// Calls `f(g, ty, tx, lanes)` for the tiles t0 + g (g < chunk, tile < t.n()) in order: runs
/// of L::N tiles of one tile row (`lanes` = L::N) where the row allows, else of
/// L::Half::N, else single tiles (`lanes` = 1).
#[inline(always)]
fn for_runs<L: Lanes>(
    t: &Tiles,
    t0: usize,
    chunk: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let end = chunk.min(t.n() - t0);
    let mut g = 0;
    while g < end {
        let (ty, tx) = ((t0 + g) / t.tw, (t0 + g) % t.tw);
        let fits = |n: usize| g + n <= end && tx + n <= t.tw;
        let lanes = [L::N, L::Half::N]
            .into_iter()
            .find(|&n| fits(n))
            .unwrap_or(1);
        f(g, ty, tx, lanes);
        g += lanes;
    }
}

/// [`input_tile`] of the L::N tiles whose rows start at `src` (row stride m·len: the m phases
/// of `len` floats), stored at dst + p·stride.
///
/// # Safety
/// src must be valid for reading n rows to (m − 1)·len + 1 + N; dst for writing N floats at
/// each p·stride.
#[inline(always)]
unsafe fn input_tiles<L: Lanes, const N: usize>(
    src: *const f32,
    len: usize,
    dst: *mut f32,
    stride: usize,
) {
    let m = N - 2;
    // SAFETY: the caller's contract.
    unsafe {
        let mut d = [[L::splat(0.0); N]; N];
        for (i, row) in d.iter_mut().enumerate() {
            let r = src.add(i * m * len);
            for (j, x) in row.iter_mut().enumerate() {
                *x = L::load(r.add(j % m * len + j / m));
            }
        }
        let v = input_tile::<L, N>(d);
        for (p, x) in v.as_flattened().iter().enumerate() {
            x.store(dst.add(p * stride));
        }
    }
}

/// out[o][at + m·ty + a][m·tx + b] = init + (Aᵀ·M·A)[a][b] for M[p] = m[o][p][g] and the
/// valid tiles t0 + g = ty·tw + tx of the chunk from t0 ([`at`]), out[o] being plane o of
/// the [`Planes`]; init is bias[o], or the value in `out` when there is no bias.
pub(super) fn output_transform<const N: usize>(
    isa: Isa,
    t: &Tiles,
    t0: (usize, usize),
    c: usize,
    m: &[f32],
    bias: Option<&[f32]>,
    out: (&mut dyn Planes, usize),
) {
    by_isa!(isa, output_transform_with::<N>(t: &Tiles, t0: (usize, usize), c: usize, m: &[f32], bias: Option<&[f32]>, out: (&mut dyn Planes, usize)))
}

#[inline(always)]
fn output_transform_with<L: Lanes, const N: usize>(
    t: &Tiles,
    (t0, chunk): (usize, usize),
    c: usize,
    mt: &[f32],
    bias: Option<&[f32]>,
    (out, at): (&mut dyn Planes, usize),
) {
    let (h, w, m) = (t.h, t.w, N - 2);
    let ld = channel_ld::<N>(chunk);
    assert!(t.m == m && mt.len() >= c * ld);
    for o in 0..c {
        let init = bias.map(|b| b[o]);
        let src = mt[o * ld..][..N * N * chunk].as_ptr();
        let plane = &mut out.plane(o)[at * w..][..h * w];
        for_runs::<L>(t, t0, chunk, |g, ty, tx, lanes| {
            let lines = m.min(h - m * ty);
            let dst = plane[m * ty * w..][..lines * w].as_mut_ptr();
            // SAFETY: the loads reach at most (n² − 1)·chunk + g + lanes ≤ n²·chunk; the
            // stores m·(tx + lanes) ≤ w when whole tiles are written, else m·x + cols ≤ w, in
            // each of `lines` rows.
            unsafe {
                if lanes == L::N && m * (tx + L::N) <= w {
                    output_tiles::<L, N>(src.add(g), chunk, init, dst.add(m * tx), w, lines, m);
                } else if lanes == L::Half::N && lanes > 1 && m * (tx + lanes) <= w {
                    let (s, d) = (src.add(g), dst.add(m * tx));
                    output_tiles::<L::Half, N>(s, chunk, init, d, w, lines, m);
                } else {
                    for (k, x) in (tx..tx + lanes).enumerate() {
                        let cols = m.min(w - m * x);
                        let (s, d) = (src.add(g + k), dst.add(m * x));
                        output_tiles::<f32, N>(s, chunk, init, d, w, lines, cols);
                    }
                }
            }
        });
    }
}

/// The output pixels of the L::N tiles whose transformed values lie at src + p·stride: `lines`
/// rows (row stride w) of m·N pixels from dst (`cols` = m), or of `cols` < m pixels (f32
/// only: a width's last, partial tile).
///
/// # Safety
/// src must be valid for reading N floats at each p·stride; dst for writing `cols`·N floats in
/// each of `lines` rows.
#[inline(always)]
unsafe fn output_tiles<L: Lanes, const N: usize>(
    src: *const f32,
    stride: usize,
    init: Option<f32>,
    dst: *mut f32,
    w: usize,
    lines: usize,
    cols: usize,
) {
    let m = N - 2;
    debug_assert!(cols == m || L::N == 1);
    // SAFETY: the caller's contract.
    unsafe {
        // c[j] = column j of Aᵀ·M (m values); each row a of Aᵀ·M times A.
        let mut c = [[L::splat(0.0); N]; N];
        for (j, col) in c.iter_mut().enumerate() {
            let mut x = *col;
            for (i, v) in x.iter_mut().enumerate() {
                *v = L::load(src.add((i * N + j) * stride));
            }
            *col = at::<L, N>(x);
        }
        for a in 0..lines {
            let mut x = c[0];
            for (j, v) in x.iter_mut().enumerate() {
                *v = c[j][a];
            }
            let y = at::<L, N>(x);
            let line = dst.add(a * w);
            let put = |v: L, px: *mut f32| {
                let base = init.map_or_else(|| L::load(px), L::splat);
                (base + v).store(px);
            };
            if cols < m {
                for (b, &v) in y.iter().enumerate().take(cols) {
                    put(v, line.add(b));
                }
            } else if m == 2 {
                let (lo, hi) = L::interleave(y[0], y[1]);
                put(lo, line);
                put(hi, line.add(L::N));
            } else {
                // Two rounds of pairing: (y0, y2) and (y1, y3), then the pairs.
                let ((p, q), (r, s)) = (L::interleave(y[0], y[2]), L::interleave(y[1], y[3]));
                let ((o0, o1), (o2, o3)) = (L::interleave(p, r), L::interleave(q, s));
                for (k, v) in [o0, o1, o2, o3].into_iter().enumerate() {
                    put(v, line.add(k * L::N));
                }
            }
        }
    }
}

/// dM[o][p][g] = (A·g·Aᵀ)[p] for the m × m output-gradient tile g of channel o (zero outside
/// the map) at the valid tiles t0 + g = ty·tw + tx of the chunk from t0: the adjoint of the
/// output transform. `dsplit` holds dout de-interleaved ([`deinterleave`] with no offset):
/// g's column j is phase j at tx of rows m·ty .. m·ty + m.
pub(super) fn dout_transform<const N: usize>(
    isa: Isa,
    t: &Tiles,
    t0: (usize, usize),
    c: usize,
    dsplit: &[f32],
    dm: &mut [f32],
) {
    by_isa!(isa, dout_transform_with::<N>(t: &Tiles, t0: (usize, usize), c: usize, dsplit: &[f32], dm: &mut [f32]))
}

#[inline(always)]
fn dout_transform_with<L: Lanes, const N: usize>(
    t: &Tiles,
    (t0, chunk): (usize, usize),
    c: usize,
    dsplit: &[f32],
    dm: &mut [f32],
) {
    let (tw, m) = (t.tw, N - 2);
    let ld = channel_ld::<N>(chunk);
    let plane_len = t.output_plane();
    assert!(t.m == m && dsplit.len() >= c * plane_len && dm.len() >= c * ld);
    for o in 0..c {
        let plane = &dsplit[o * plane_len..][..plane_len];
        let dst = dm[o * ld..][..N * N * chunk].as_mut_ptr();
        for_runs::<L>(t, t0, chunk, |g, ty, tx, lanes| {
            let src = plane[m * ty * m * tw..][..m * m * tw].as_ptr();
            // SAFETY: the loads reach at most (m − 1)·tw + tx + lanes ≤ m·tw into each of the
            // m rows of `src`; the stores (n² − 1)·chunk + g + lanes ≤ n²·chunk.
            unsafe {
                match lanes {
                    n if n == L::N => dout_tiles::<L, N>(src.add(tx), tw, dst.add(g), chunk),
                    n if n == L::Half::N => {
                        dout_tiles::<L::Half, N>(src.add(tx), tw, dst.add(g), chunk)
                    }
                    _ => dout_tiles::<f32, N>(src.add(tx), tw, dst.add(g), chunk),
                }
            }
        });
    }
}

/// A·g·Aᵀ of the L::N tiles whose m rows start at `src` (row stride m·tw: the m phases of
/// tw floats), stored at dst + p·stride.
///
/// # Safety
/// src must be valid for reading m rows to (m − 1)·tw + N; dst for writing N floats at each
/// p·stride.
#[inline(always)]
unsafe fn dout_tiles<L: Lanes, const N: usize>(
    src: *const f32,
    tw: usize,
    dst: *mut f32,
    stride: usize,
) {
    let m = N - 2;
    // SAFETY: the caller's contract.
    unsafe {
        // cols[j] = A times column j of the tile (n values; columns past m unused).
        let mut cols = [[L::splat(0.0); N]; N];
        for (j, col) in cols.iter_mut().enumerate().take(m) {
            let mut x = *col;
            for (i, v) in x.iter_mut().enumerate().take(m) {
                *v = L::load(src.add(i * m * tw + j * tw));
            }
            *col = a_times::<L, N>(x);
        }
        for i in 0..N {
            let mut x = cols[0];
            for (j, v) in x.iter_mut().enumerate() {
                *v = cols[j][i];
            }
            let r = a_times::<L, N>(x);
            for (j, x) in r.into_iter().enumerate() {
                x.store(dst.add((i * N + j) * stride));
            }
        }
    }
}
