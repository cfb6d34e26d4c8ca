//! `nn.Conv2d` on the device as a tiled implicit GEMM in shared memory: out[m, n] =
//! Σ_k W[m, k]·im2col(x)[k, n] + bias[m] with m = output channel, n = output pixel and
//! k = (c_in, ky, kx) in PyTorch's weight order. Each block computes a TILE_M × TILE_N tile,
//! staging TILE_K-deep slices of W and of the (never materialised) im2col matrix in shared
//! memory; each of its 256 threads accumulates 4 × 4 outputs in registers. f32 accumulation;
//! the order of the sums differs from the CPU's packed GEMM (rounding-level differences).
//! `conv2d_tc_*` is the tensor-core variant (`mma.sync` m16n8k16, operands rounded to f16,
//! f32 accumulation), used only when the host asks for it (`--tensor-cores`) until proven.

use core::arch::asm;
use core::arch::nvptx::{_block_idx_x, _block_idx_y, _block_idx_z, _syncthreads, _thread_idx_x};

use crate::Weight;

/// Output channels per block tile.
pub const TILE_M: usize = 64;
/// Output pixels per block tile.
pub const TILE_N: usize = 64;
/// Depth of one shared-memory stage.
pub const TILE_K: usize = 16;
/// Threads per block (16 × 16, each 4 × 4 outputs).
pub const THREADS: usize = 256;
const SIDE: usize = 16;
const PER: usize = 4;

/// The convolution's shape, as the kernel arguments give it.
#[derive(Clone, Copy)]
struct Shape {
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Shape {
    /// Element (k, n) of im2col(x) for one image: 0 in the zero padding.
    ///
    /// # Safety
    /// `x` holds c_in·h·w `f32`; k < c_in·kernel², n < oh·ow.
    #[inline(always)]
    unsafe fn im2col(&self, x: *const f32, k: usize, n: usize) -> f32 {
        let kk = self.kernel * self.kernel;
        let (ci, ky, kx) = (k / kk, k % kk / self.kernel, k % self.kernel);
        let (oy, ox) = (n / self.ow, n % self.ow);
        let iy = (oy * self.stride + ky) as isize - self.pad as isize;
        let ix = (ox * self.stride + kx) as isize - self.pad as isize;
        if iy < 0 || ix < 0 || iy >= self.h as isize || ix >= self.w as isize {
            0.0
        } else {
            // SAFETY: (ci, iy, ix) is inside the image.
            unsafe { *x.add((ci * self.h + iy as usize) * self.w + ix as usize) }
        }
    }
}

/// The tiled implicit GEMM for image blockIdx.z (see the module docs).
///
/// # Safety
/// Buffer sizes as [`conv2d_f32`]; launched with [`THREADS`] threads per block.
unsafe fn conv2d<W: Weight>(
    x: *const f32,
    wt: *const W,
    bias: *const f32,
    out: *mut f32,
    s: Shape,
) {
    let smem: *mut f32;
    // SAFETY: declares this kernel's static shared tiles (A: TILE_K × TILE_M, B: TILE_K × TILE_N
    // f32, 8 KiB) and takes their generic address.
    unsafe {
        asm!(
            ".shared .align 16 .b8 conv_tiles[8192];",
            "cvta.shared.u64 {p}, conv_tiles;",
            p = out(reg64) smem,
        );
    }
    // SAFETY: special registers.
    let (tid, bn, bm, b) = unsafe {
        (
            _thread_idx_x() as usize,
            _block_idx_x() as usize,
            _block_idx_y() as usize,
            _block_idx_z() as usize,
        )
    };
    let (tx, ty) = (tid % SIDE, tid / SIDE);
    let (m0, n0) = (bm * TILE_M, bn * TILE_N);
    let k_total = s.c_in * s.kernel * s.kernel;
    let npix = s.oh * s.ow;
    // SAFETY: image b's input; every index is bounds-checked against the shape below.
    let xb = unsafe { x.add(b * s.c_in * s.h * s.w) };
    let (a_tile, b_tile) = (smem, unsafe { smem.add(TILE_K * TILE_M) });
    let mut acc = [[0f32; PER]; PER];
    let mut k0 = 0;
    while k0 < k_total {
        // Stage W[m0.., k0..] (transposed: A[k][m]) and im2col[k0.., n0..] (B[k][n]).
        for r in 0..(TILE_K * TILE_M / THREADS) {
            let idx = tid + r * THREADS;
            let (m, k) = (idx / TILE_K, idx % TILE_K);
            let (gm, gk) = (m0 + m, k0 + k);
            let v = if gm < s.c_out && gk < k_total {
                // SAFETY: gm < c_out, gk < k_total.
                unsafe { (*wt.add(gm * k_total + gk)).to_f32() }
            } else {
                0.0
            };
            // SAFETY: k·TILE_M + m < TILE_K·TILE_M.
            unsafe { a_tile.add(k * TILE_M + m).write(v) };
        }
        for r in 0..(TILE_K * TILE_N / THREADS) {
            let idx = tid + r * THREADS;
            let (k, n) = (idx / TILE_N, idx % TILE_N);
            let (gk, gn) = (k0 + k, n0 + n);
            let v = if gk < k_total && gn < npix {
                // SAFETY: gk < k_total, gn < oh·ow.
                unsafe { s.im2col(xb, gk, gn) }
            } else {
                0.0
            };
            // SAFETY: k·TILE_N + n < TILE_K·TILE_N.
            unsafe { b_tile.add(k * TILE_N + n).write(v) };
        }
        // SAFETY: every thread of the block reaches both barriers.
        unsafe { _syncthreads() };
        for k in 0..TILE_K {
            let mut av = [0f32; PER];
            let mut bv = [0f32; PER];
            for i in 0..PER {
                // SAFETY: inside the tiles.
                unsafe {
                    av[i] = *a_tile.add(k * TILE_M + ty + SIDE * i);
                    bv[i] = *b_tile.add(k * TILE_N + tx + SIDE * i);
                }
            }
            for i in 0..PER {
                for j in 0..PER {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        // SAFETY: as above.
        unsafe { _syncthreads() };
        k0 += TILE_K;
    }
    for (i, row) in acc.iter().enumerate() {
        let m = m0 + ty + SIDE * i;
        if m >= s.c_out {
            continue;
        }
        for (j, &v) in row.iter().enumerate() {
            let n = n0 + tx + SIDE * j;
            if n < npix {
                // SAFETY: m < c_out, n < oh·ow.
                unsafe {
                    out.add((b * s.c_out + m) * npix + n)
                        .write(v + *bias.add(m))
                };
            }
        }
    }
}

/// Conv2d with f32 weights: x [batch, c_in, h, w], weight [c_out, c_in, k, k], bias [c_out],
/// out [batch, c_out, oh, ow]; grid (⌈oh·ow/TILE_N⌉, ⌈c_out/TILE_M⌉, batch), block [`THREADS`].
///
/// # Safety
/// Buffers of those sizes; oh, ow the true output size for (h, w, kernel, stride, pad).
#[no_mangle]
// The ABI is fixed (scripts/ptx/entries.txt, the host's launches): one scalar per parameter.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn conv2d_f32(
    x: *const f32,
    weight: *const f32,
    bias: *const f32,
    out: *mut f32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
) {
    let s = shape([c_in, h, w, c_out, kernel, stride, pad, oh, ow]);
    // SAFETY: forwarded contract.
    unsafe { conv2d(x, weight, bias, out, s) }
}

/// [`conv2d_f32`] with f16 weights (widened exactly to f32 when staged).
///
/// # Safety
/// As [`conv2d_f32`].
#[no_mangle]
// The ABI is fixed (scripts/ptx/entries.txt, the host's launches): one scalar per parameter.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn conv2d_f16w(
    x: *const f32,
    weight: *const half::f16,
    bias: *const f32,
    out: *mut f32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
) {
    let s = shape([c_in, h, w, c_out, kernel, stride, pad, oh, ow]);
    // SAFETY: forwarded contract.
    unsafe { conv2d(x, weight, bias, out, s) }
}

/// The entries' scalar arguments, in their order, as a [`Shape`].
fn shape([c_in, h, w, c_out, k, st, p, oh, ow]: [u32; 9]) -> Shape {
    Shape {
        c_in: c_in as usize,
        h: h as usize,
        w: w as usize,
        c_out: c_out as usize,
        kernel: k as usize,
        stride: st as usize,
        pad: p as usize,
        oh: oh as usize,
        ow: ow as usize,
    }
}

/// Warps per block of the tensor-core conv: 2 (output channels) × 4 (pixels), each computing a
/// 32 × 16 piece of the block's TILE_M × TILE_N tile with `mma.sync` m16n8k16.
const TC_WARPS_N: usize = 4;

/// One `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`: acc += A·B for a warp, with the
/// PTX ISA's fragment layouts (A 4 × f16x2, B 2 × f16x2, C/D 4 × f32 held here as bits).
///
/// # Safety
/// All 32 lanes of the warp must execute it together (sm_80+).
#[inline(always)]
unsafe fn mma_m16n8k16(acc: &mut [u32; 4], a: [u32; 4], b: [u32; 2]) {
    // SAFETY: register-only instruction; the caller keeps the warp converged.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{0},{1},{2},{3}}}, {{{4},{5},{6},{7}}}, {{{8},{9}}}, {{{0},{1},{2},{3}}};",
            inout(reg32) acc[0],
            inout(reg32) acc[1],
            inout(reg32) acc[2],
            inout(reg32) acc[3],
            in(reg32) a[0],
            in(reg32) a[1],
            in(reg32) a[2],
            in(reg32) a[3],
            in(reg32) b[0],
            in(reg32) b[1],
        );
    }
}

/// Two adjacent f16 of a shared tile as one `f16x2` register (the lower address in the low half).
///
/// # Safety
/// `p` is 4-byte aligned and inside the tile.
#[inline(always)]
unsafe fn pair(p: *const u16) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { *(p as *const u32) }
}

/// The tensor-core variant of [`conv2d`]: the same tiles and grid, operands rounded to f16
/// (weights and im2col values) and multiplied on the tensor cores with f32 accumulation. Shared
/// tiles: A[m][k] and B[n][k] (k contiguous, as the row/col fragments read them).
///
/// # Safety
/// As [`conv2d`]; launched with [`THREADS`] threads (8 warps) per block, on sm_80 or newer.
unsafe fn conv2d_tc<W: Weight>(
    x: *const f32,
    wt: *const W,
    bias: *const f32,
    out: *mut f32,
    s: Shape,
) {
    let smem: *mut u16;
    // SAFETY: declares this kernel's static shared tiles (2 × 64 × 16 f16, 4 KiB) and takes
    // their generic address.
    unsafe {
        asm!(
            ".shared .align 16 .b8 tc_tiles[4096];",
            "cvta.shared.u64 {p}, tc_tiles;",
            p = out(reg64) smem,
        );
    }
    // SAFETY: special registers.
    let (tid, bn, bm, b) = unsafe {
        (
            _thread_idx_x() as usize,
            _block_idx_x() as usize,
            _block_idx_y() as usize,
            _block_idx_z() as usize,
        )
    };
    let (warp, lane) = (tid / 32, tid % 32);
    let (wm, wn) = (warp / TC_WARPS_N * 32, warp % TC_WARPS_N * 16);
    let (g, t) = (lane / 4, lane % 4);
    let (m0, n0) = (bm * TILE_M, bn * TILE_N);
    let k_total = s.c_in * s.kernel * s.kernel;
    let npix = s.oh * s.ow;
    // SAFETY: image b's input; every index is bounds-checked against the shape below.
    let xb = unsafe { x.add(b * s.c_in * s.h * s.w) };
    let (a_tile, b_tile) = (smem, unsafe { smem.add(TILE_M * TILE_K) });
    let mut acc = [[[0u32; 4]; 2]; 2];
    let mut k0 = 0;
    while k0 < k_total {
        for r in 0..(TILE_M * TILE_K / THREADS) {
            let idx = tid + r * THREADS;
            let (m, k) = (idx / TILE_K, idx % TILE_K);
            let (gm, gk) = (m0 + m, k0 + k);
            let v = if gm < s.c_out && gk < k_total {
                // SAFETY: gm < c_out, gk < k_total.
                unsafe { (*wt.add(gm * k_total + gk)).to_f32() }
            } else {
                0.0
            };
            // SAFETY: m·TILE_K + k < TILE_M·TILE_K.
            unsafe {
                a_tile
                    .add(m * TILE_K + k)
                    .write(half::f16::from_f32(v).to_bits())
            };
        }
        for r in 0..(TILE_K * TILE_N / THREADS) {
            // Consecutive threads take consecutive pixels (coalesced reads of x).
            let idx = tid + r * THREADS;
            let (k, n) = (idx / TILE_N, idx % TILE_N);
            let (gk, gn) = (k0 + k, n0 + n);
            let v = if gk < k_total && gn < npix {
                // SAFETY: gk < k_total, gn < oh·ow.
                unsafe { s.im2col(xb, gk, gn) }
            } else {
                0.0
            };
            // SAFETY: n·TILE_K + k < TILE_N·TILE_K.
            unsafe {
                b_tile
                    .add(n * TILE_K + k)
                    .write(half::f16::from_f32(v).to_bits())
            };
        }
        // SAFETY: every thread of the block reaches both barriers.
        unsafe { _syncthreads() };
        for (mi, acc_m) in acc.iter_mut().enumerate() {
            let row = wm + mi * 16 + g;
            // SAFETY: rows < TILE_M, columns 2t (+8) + 1 < TILE_K; even offsets are 4-aligned.
            let a = unsafe {
                [
                    pair(a_tile.add(row * TILE_K + 2 * t)),
                    pair(a_tile.add((row + 8) * TILE_K + 2 * t)),
                    pair(a_tile.add(row * TILE_K + 2 * t + 8)),
                    pair(a_tile.add((row + 8) * TILE_K + 2 * t + 8)),
                ]
            };
            for (ni, c) in acc_m.iter_mut().enumerate() {
                let col = wn + ni * 8 + g;
                // SAFETY: col < TILE_N; as above.
                let bf = unsafe {
                    [
                        pair(b_tile.add(col * TILE_K + 2 * t)),
                        pair(b_tile.add(col * TILE_K + 2 * t + 8)),
                    ]
                };
                // SAFETY: the whole block (all warps converged) runs this loop.
                unsafe { mma_m16n8k16(c, a, bf) };
            }
        }
        // SAFETY: as above.
        unsafe { _syncthreads() };
        k0 += TILE_K;
    }
    for (mi, acc_m) in acc.iter().enumerate() {
        for (ni, c) in acc_m.iter().enumerate() {
            for (r, &bits) in c.iter().enumerate() {
                // C fragment: c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g + 8.
                let m = m0 + wm + mi * 16 + g + 8 * (r / 2);
                let n = n0 + wn + ni * 8 + 2 * t + r % 2;
                if m < s.c_out && n < npix {
                    // SAFETY: m < c_out, n < oh·ow.
                    unsafe {
                        out.add((b * s.c_out + m) * npix + n)
                            .write(f32::from_bits(bits) + *bias.add(m))
                    };
                }
            }
        }
    }
}

/// [`conv2d_f32`] on the tensor cores (operands rounded to f16, f32 accumulation; sm_80+),
/// behind the host's `--tensor-cores` flag until proven on a GPU.
///
/// # Safety
/// As [`conv2d_f32`].
#[no_mangle]
// The ABI is fixed (scripts/ptx/entries.txt, the host's launches): one scalar per parameter.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn conv2d_tc_f32w(
    x: *const f32,
    weight: *const f32,
    bias: *const f32,
    out: *mut f32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
) {
    let s = shape([c_in, h, w, c_out, kernel, stride, pad, oh, ow]);
    // SAFETY: forwarded contract.
    unsafe { conv2d_tc(x, weight, bias, out, s) }
}

/// [`conv2d_tc_f32w`] with f16 weights.
///
/// # Safety
/// As [`conv2d_f32`].
#[no_mangle]
// The ABI is fixed (scripts/ptx/entries.txt, the host's launches): one scalar per parameter.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn conv2d_tc_f16w(
    x: *const f32,
    weight: *const half::f16,
    bias: *const f32,
    out: *mut f32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
) {
    let s = shape([c_in, h, w, c_out, kernel, stride, pad, oh, ow]);
    // SAFETY: forwarded contract.
    unsafe { conv2d_tc(x, weight, bias, out, s) }
}
