//! Winograd convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016) for the 3 × 3, stride-1, padding-1 convolutions of the training step, in two forms:
//! F(2 × 2, 3 × 3) and F(4 × 4, 3 × 3).
//!
//! Each m × m block of output pixels (a tile, m = 2 or 4) is computed from the n × n input
//! window around it (n = m + 2) as Y = Aᵀ[Σ_c U_c ⊙ V_c]A, with V = BᵀdB the input window
//! transformed and U = GgGᵀ the 3 × 3 filter transformed: for each of the n² positions of a
//! transformed tile, the sum over input channels is one GEMM, U[p] (c_out × c_in) · V[p]
//! (c_in × tiles). That takes n² products per tile and channel pair where the direct
//! convolution takes 9m²: 2.25× fewer with F(2 × 2), whose transforms only add, subtract and
//! halve, and 4× fewer with F(4 × 4), whose transforms also scale by powers of two and whose
//! filter transform divides by 6 and 24 (a few times the rounding error of F(2 × 2)). The
//! input gradient of such a convolution is the same kind of convolution (weights flipped and
//! transposed, [`super::Conv2d::flip_weights`]), so it runs through [`Winograd::forward`]
//! too; the weight gradient is the adjoint of the forward: dU[p] = dM[p] · V[p]ᵀ with
//! dM = A·dY·Aᵀ per tile, and dW = Gᵀ·dU·G.
//!
//! The result is the convolution up to rounding (a different order of operations than
//! [`super::Conv2d`]'s, so not its bits), and every step has a fixed order: the bits depend
//! only on the inputs, the form and the ISA's FMA (as the GEMM's), not on threads or batch
//! splits.
//!
//! Maps are stored with their columns de-interleaved into m phases (column q in phase q mod m
//! at q / m), so that every transform is a loop of whole vectors over the tiles of a row.
//!
//! The transforms are generic over n (`const N`: 4 or 6); a [`Winograd`] holds m and picks
//! the instance at run time.
//!
//! This file is the [`Winograd`] layer and its drivers (bands and chunks of tiles, the n²
//! products on `conv/gemm.rs`); `filter.rs` the filter transform and its adjoint;
//! `transform.rs` the input, output and output-gradient transforms and the de-interleaving;
//! `lanes.rs` the f32 / eight-lane AVX2 arithmetic they are written in.

use super::backward::sum_f64;
use super::gemm::{
    first_terms, gemm, gemm_scratch_len, round_up, tile_with_spare, Block, Lhs, Out, KC, LINE,
    MC_MAX, MR, NR,
};
use super::microkernel::{microkernel, Panels};
use super::pack::{pack_a, pack_rows};
#[cfg(target_arch = "x86_64")]
use super::transpose;
use super::{ConvGrads, ConvParams, Map};
use crate::Isa;
use crate::{check_len, check_min_len, check_range, KernelError};
use core::array::from_fn;
use filter::{filter_transform, filter_transform_adjoint};
use transform::{deinterleave, dout_transform, input_transform, output_transform};

mod filter;
mod lanes;
mod transform;

/// Floats from one position's c_out × c_in matrix of the weight gradient to the next's: the
/// `pairs` values rounded up to a [`LINE`], plus one, so the n² values the adjoint filter
/// transform reads per weight do not share L1 sets (16 KiB apart at 64 × 64 channels).
fn position_ld(pairs: usize) -> usize {
    pairs.div_ceil(LINE) * LINE + LINE
}

/// Tiles transformed at a time by the forward: the width of its products, with F(2 × 2) one
/// NR-wide column block; with F(4 × 4) half of one (its 36 positions would otherwise spill a
/// chunk of 64 channels out of L2; the products then compute one 16-wide half of their
/// register tiles). A chunk's transformed tiles are stored [channel][position][chunk]
/// (channels [`channel_ld`] apart), so each tile's n² values lie a constant chunk apart, and
/// position p's matrix is rows `channel_ld` apart from offset p·chunk.
const fn forward_chunk<const N: usize>() -> usize {
    if N == 4 {
        NR
    } else {
        NR / 2
    }
}

/// Tiles transformed at a time by the weight gradient: the depth of its products, which
/// load and store their c_out × c_in sums once per chunk (a whole 32 × 32 map in F(4 × 4)).
/// The bits do not depend on it (every chunk continues the same chains of sums).
const WEIGHT_CHUNK: usize = 64;

/// Floats from one channel's transformed chunk of `chunk` tiles to the next's: the n²·chunk
/// values (2 KiB for a forward chunk of F(2 × 2), which would put a product's B rows into two
/// L1 sets) plus one [`LINE`]. (Position n² − 1's row of a forward product, NR floats from
/// (n² − 1)·chunk, ends inside the channel.)
const fn channel_ld<const N: usize>(chunk: usize) -> usize {
    N * N * chunk + LINE
}

/// The Winograd form of a 3 × 3, stride-1, padding-1 convolution from `c_in` to `c_out`
/// channels (PyTorch weight layout [c_out, c_in, 3, 3]), with output tiles of m × m pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Winograd {
    c_in: usize,
    c_out: usize,
    m: usize,
}

/// The tile grid of an h × w map: th × tw tiles of m × m output pixels (the last row or
/// column of tiles partly outside when m does not divide h or w).
#[derive(Clone, Copy, Debug)]
struct Tiles {
    h: usize,
    w: usize,
    m: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(h: usize, w: usize, m: usize) -> Tiles {
        Tiles {
            h,
            w,
            m,
            th: h.div_ceil(m),
            tw: w.div_ceil(m),
        }
    }

    fn n(&self) -> usize {
        self.th * self.tw
    }

    /// The first `rows` rows of tiles as a map of their own (`rows` ≤ th).
    fn band(&self, rows: usize) -> Tiles {
        Tiles {
            h: self.h.min(self.m * rows),
            th: rows,
            ..*self
        }
    }

    /// Floats of one phase of a de-interleaved, zero-padded input row: tw + 1 (padded column
    /// q in phase q % m at q / m; the last window reaches q = m·tw + 1).
    fn input_len(&self) -> usize {
        self.tw + 1
    }

    /// Floats of one de-interleaved, zero-padded input plane: m·th + 2 rows of m phases.
    fn input_plane(&self) -> usize {
        (self.m * self.th + 2) * self.m * self.input_len()
    }

    /// Floats of one de-interleaved output-gradient plane: m·th rows of m phases of tw.
    fn output_plane(&self) -> usize {
        self.m * self.th * self.m * self.tw
    }
}

/// Tiles the forward de-interleaves and transforms per band of whole tile rows: bands bound
/// the scratch (and keep a band's padded input in L2) whatever the map, at the price of
/// copying two halo rows per band. The bits do not depend on it (every tile is computed alone).
const BAND_TILES: usize = 256;

/// Rows of tiles per band of the forward on maps `tw` tiles wide (at least one).
fn band_rows(tw: usize) -> usize {
    BAND_TILES.div_ceil(tw.max(1))
}

/// The output planes the forward writes: where channel o's rows lie.
trait Planes {
    /// Channel o's output, from the first row the call computes.
    fn plane(&mut self, o: usize) -> &mut [f32];
}

/// c_out whole planes of `len` floats, back to back.
struct Contiguous<'a> {
    out: &'a mut [f32],
    len: usize,
}

impl Planes for Contiguous<'_> {
    fn plane(&mut self, o: usize) -> &mut [f32] {
        &mut self.out[o * self.len..][..self.len]
    }
}

/// One slice per channel (a pixel range of each plane).
struct Pieces<'a, 'b>(&'a mut [&'b mut [f32]]);

impl Planes for Pieces<'_, '_> {
    fn plane(&mut self, o: usize) -> &mut [f32] {
        self.0[o]
    }
}

/// Calls `$self.$f::<N>(args)` for the form's n.
macro_rules! by_form {
    ($self:ident.$f:ident($($a:expr),*)) => {
        match $self.m {
            2 => $self.$f::<4>($($a),*),
            _ => $self.$f::<6>($($a),*),
        }
    };
}

impl Winograd {
    /// The F(2 × 2, 3 × 3) form of `conv` if it is a 3 × 3, stride-1, padding-1 convolution
    /// with channels.
    pub fn of(conv: &super::Conv2d) -> Option<Winograd> {
        let fits = conv.kernel == 3 && conv.stride == 1 && conv.pad == 1;
        (fits && conv.c_in > 0 && conv.c_out > 0).then_some(Winograd {
            c_in: conv.c_in,
            c_out: conv.c_out,
            m: 2,
        })
    }

    /// [`Winograd::of`] for convolutions with 8 channels or more in and out: with fewer, the
    /// products are too thin to pay for the transforms (1 → 32 channels at 32 × 32, 1 thread:
    /// forward 40 µs against the direct 20, weight gradient 182 against 63; 32 → 1 about even).
    fn with_channels_enough(conv: &super::Conv2d) -> Option<Winograd> {
        Winograd::of(conv).filter(|_| conv.c_in.min(conv.c_out) >= 8)
    }

    /// The same convolution in F(4 × 4, 3 × 3) form.
    pub fn with_4x4_tiles(self) -> Winograd {
        Winograd { m: 4, ..self }
    }

    /// The output tile side m (2 or 4).
    pub fn tile(&self) -> usize {
        self.m
    }

    /// The form of `conv` that pays on an h × w map, if any: F(4 × 4) from 16 tiles of 4 × 4
    /// (16 × 16 maps), else F(2 × 2) from 16 tiles of 2 × 2 ([`Winograd::worthwhile`]); none
    /// below 8 channels in or out.
    pub fn for_map(conv: &super::Conv2d, h: usize, w: usize) -> Option<Winograd> {
        Winograd::form_for(conv, h, w, 16)
    }

    /// The form of `conv` whose weight gradient pays on an h × w map, if any: F(4 × 4) from
    /// 64 tiles of 4 × 4 (32 × 32 maps), else F(2 × 2) from 16 tiles of 2 × 2; none below 8
    /// channels in or out. (The weight gradient's products have the tiles as their depth and
    /// its transformed sums grow with the positions: on 16 × 16 maps F(4 × 4) has 16 tiles and
    /// 36 positions to F(2 × 2)'s 64 and 16, and F(2 × 2) is faster there despite 1.8× the
    /// products: 64 → 64 channels, 109 against 91 GFLOP/s direct-equivalent; on 32 × 32 maps
    /// F(4 × 4), 171 against 121.)
    pub fn for_weight_gradient(conv: &super::Conv2d, h: usize, w: usize) -> Option<Winograd> {
        Winograd::form_for(conv, h, w, 64)
    }

    /// F(4 × 4) from `tiles_4x4` tiles of 4 × 4, else F(2 × 2) where
    /// [`Winograd::worthwhile`], for convolutions with channels enough.
    fn form_for(conv: &super::Conv2d, h: usize, w: usize, tiles_4x4: usize) -> Option<Winograd> {
        let wg = Winograd::with_channels_enough(conv)?;
        if Tiles::new(h, w, 4).n() >= tiles_4x4 {
            Some(wg.with_4x4_tiles())
        } else {
            Winograd::worthwhile(h, w).then_some(wg)
        }
    }

    /// The convolution computing this one's input gradient (channels swapped, same form); its
    /// weights are this one's flipped by [`super::Conv2d::flip_weights`].
    pub fn transposed(&self) -> Winograd {
        Winograd {
            c_in: self.c_out,
            c_out: self.c_in,
            m: self.m,
        }
    }

    /// Whether an h × w map has tiles enough for the F(2 × 2) form to beat the direct
    /// convolution, forward, input gradient and weight gradient alike: the products are as
    /// wide as the map has tiles, and below 16 tiles (8 × 8 maps: half a register tile, which
    /// the SIMD kernels compute alone) they waste more than the transforms save. (Measured at
    /// 64 channels, 8 × 8, GFLOP/s direct-equivalent: forward ~147 against ~50; weight
    /// gradient about even per call, 63–67 against 64, and cheaper in a trainer that sums the
    /// transformed gradient over samples and pays the adjoint transform once.)
    pub fn worthwhile(h: usize, w: usize) -> bool {
        Tiles::new(h, w, 2).n() >= 16
    }

    /// Positions of a transformed tile (n²).
    fn positions(&self) -> usize {
        (self.m + 2) * (self.m + 2)
    }

    /// Floats of the transformed weights: n² matrices of c_out × c_in, followed (when a
    /// product fits one block of the GEMM: depth ≤ KC, rows ≤ MC_MAX) by the same n² packed
    /// as the products' A operand.
    pub fn weights_len(&self) -> usize {
        self.positions() * self.c_out * self.c_in
            + if self.one_block() {
                self.packed_len()
            } else {
                0
            }
    }

    /// Floats of the transformed weights the forward alone needs: only the packed copy when
    /// there is one (then half of [`Winograd::weights_len`]), else the n² matrices.
    pub fn forward_weights_len(&self) -> usize {
        if self.one_block() {
            self.packed_len()
        } else {
            self.weights_len()
        }
    }

    /// [`Winograd::transform_weights`] keeping only what the forward reads
    /// ([`Winograd::forward_weights_len`] floats in `u`); `scratch` takes the
    /// [`Winograd::weights_len`] floats of the whole transform.
    pub fn transform_forward_weights(
        &self,
        weight: &[f32],
        u: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len(
            "winograd forward weight",
            self.forward_weights_len(),
            u.len(),
        )?;
        check_min_len("winograd weight scratch", self.weights_len(), scratch.len())?;
        let whole = &mut scratch[..self.weights_len()];
        self.transform_weights(weight, whole)?;
        u.copy_from_slice(&whole[self.weights_len() - u.len()..]);
        Ok(())
    }

    /// The n² plain matrices and the packed copy of transformed weights `u` of either length
    /// ([`Winograd::weights_len`], [`Winograd::forward_weights_len`]; the plain part is
    /// empty in the second when there is a packed copy).
    fn forward_parts<'u>(&self, u: &'u [f32]) -> (&'u [f32], &'u [f32]) {
        let plain = self.positions() * self.c_out * self.c_in;
        if self.one_block() && u.len() == self.packed_len() {
            (&[], u)
        } else {
            u.split_at(plain)
        }
    }

    /// Whether `len` floats are transformed weights the forward takes.
    fn forward_weights_fit(&self, len: usize) -> bool {
        len == self.weights_len() || len == self.forward_weights_len()
    }

    /// `u[p·c_out·c_in + o·c_in + c] = (G·W[o, c]·Gᵀ)[p]` for the 3 × 3 filters of `weight`
    /// ([c_out, c_in, 3, 3]), then their packed copy; done once per weight update, so the
    /// forward, run once per sample, never packs.
    pub fn transform_weights(&self, weight: &[f32], u: &mut [f32]) -> Result<(), KernelError> {
        let pairs = self.c_out * self.c_in;
        check_len("winograd weight", 9 * pairs, weight.len())?;
        check_len("winograd transformed weight", self.weights_len(), u.len())?;
        by_form!(self.transform_weights_n(weight, u));
        Ok(())
    }

    fn transform_weights_n<const N: usize>(&self, weight: &[f32], u: &mut [f32]) {
        let (ci, co) = (self.c_in, self.c_out);
        let pairs = co * ci;
        let (plain, packed) = u.split_at_mut(N * N * pairs);
        // BLOCK filters at a time through `block` ([position][filter]), so that each position's
        // matrix is written a cache line at a time (its matrices are c_out·c_in floats apart,
        // 16 KiB at 64 × 64 channels: one value per filter would hit one L1 set n² times).
        const BLOCK: usize = 16;
        let mut block = [0f32; 36 * BLOCK];
        for (b, gs) in weight.chunks(9 * BLOCK).enumerate() {
            let n = gs.len() / 9;
            for (k, g) in gs.chunks_exact(9).enumerate() {
                for (p, v) in filter_transform::<N>(g).as_flattened().iter().enumerate() {
                    block[p * BLOCK + k] = *v;
                }
            }
            for (p, vs) in block.chunks_exact(BLOCK).take(N * N).enumerate() {
                plain[p * pairs + b * BLOCK..][..n].copy_from_slice(&vs[..n]);
            }
        }
        let a_len = round_up(co, MR) * ci;
        for (p, a) in packed.chunks_exact_mut(a_len).enumerate() {
            let all = Block {
                at: 0,
                len: co,
                k0: 0,
                kc: ci,
            };
            // A copy: the same values on any path.
            pack_a(Isa::detected(), &plain[p * pairs..][..pairs], ci, all, a);
        }
    }

    fn check_forward_weights(&self, u: &[f32]) -> Result<(), KernelError> {
        if self.forward_weights_fit(u.len()) {
            return Ok(());
        }
        check_len("winograd transformed weight", self.weights_len(), u.len())
    }

    /// Whether each product's A operand (c_out × c_in) is one block of the GEMM (depth ≤ KC,
    /// rows ≤ MC_MAX): then the weights are packed once and B is read in place.
    fn one_block(&self) -> bool {
        self.c_in <= KC && self.c_out <= MC_MAX
    }

    /// Floats of the n² transformed weight matrices packed as the products' A operand.
    fn packed_len(&self) -> usize {
        self.positions() * round_up(self.c_out, MR) * self.c_in
    }

    /// Floats between two channels of a chunk buffer of the forward and of the weight gradient.
    fn channel_lds(&self) -> (usize, usize) {
        match self.m {
            2 => (
                channel_ld::<4>(forward_chunk::<4>()),
                channel_ld::<4>(WEIGHT_CHUNK),
            ),
            _ => (
                channel_ld::<6>(forward_chunk::<6>()),
                channel_ld::<6>(WEIGHT_CHUNK),
            ),
        }
    }

    /// Scratch floats [`Winograd::forward`] and [`Winograd::forward_pixels`] need for an
    /// h × w map (one band of at most [`band_rows`] tile rows at a time, whatever the range).
    pub fn scratch_len(&self, h: usize, w: usize) -> usize {
        let t = Tiles::new(h, w, self.m);
        let band = t.band(band_rows(t.tw).min(t.th));
        self.c_out
            + self.c_in * band.input_plane()
            + self.channel_lds().0 * (self.c_in + self.c_out)
            + gemm_scratch_len(self.c_out, self.c_in)
    }

    /// Output pixels of one row of tiles of a map `w` wide (m·w): the granule of the pixel
    /// ranges [`Winograd::forward_pixels`] takes.
    pub fn pixels_per_tile_row(&self, w: usize) -> usize {
        self.m * w
    }

    /// The convolution of `x` [c_in, h, w] with the weights `u` transformed by
    /// [`Winograd::transform_weights`] (or [`Winograd::transform_forward_weights`]): `out`
    /// [c_out, h, w] = bias + conv(x) when `bias` is given, else `out` += conv(x).
    pub fn forward(
        &self,
        isa: Isa,
        x: Map,
        u: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let Map { data: inp, h, w } = x;
        let (ci, co) = (self.c_in, self.c_out);
        check_len("winograd input", ci * h * w, inp.len())?;
        self.check_forward_weights(u)?;
        check_len("winograd output", co * h * w, out.len())?;
        if let Some(b) = bias {
            check_len("winograd bias", co, b.len())?;
        }
        check_min_len("winograd scratch", self.scratch_len(h, w), scratch.len())?;
        if h == 0 || w == 0 {
            return Ok(());
        }
        let mut planes = Contiguous { out, len: h * w };
        let rows = 0..h.div_ceil(self.m);
        let f = WinoForward { isa, x, u, bias };
        by_form!(self.forward_n(&f, rows, &mut planes, scratch));
        Ok(())
    }

    /// [`Winograd::forward`] (with bias; `p.weight` = the transformed weights `u`) for the
    /// output pixels `px` (numbered y·w + x) only: `rows[o]` receives out[o, px]. `px` must
    /// start and end on whole rows of tiles (multiples of [`Winograd::pixels_per_tile_row`], or
    /// the map's end). Every tile is computed as by [`Winograd::forward`], so threads splitting
    /// a map this way get its bits.
    pub fn forward_pixels(
        &self,
        isa: Isa,
        x: Map,
        p: ConvParams<&[f32]>,
        px: core::ops::Range<usize>,
        rows: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let ConvParams { weight: u, bias } = p;
        let Map { data: inp, h, w } = x;
        let (ci, co) = (self.c_in, self.c_out);
        check_len("winograd input", ci * h * w, inp.len())?;
        self.check_forward_weights(u)?;
        check_len("winograd bias", co, bias.len())?;
        check_range("winograd: pixel range outside 0..h·w", &px, h * w)?;
        let band = self.pixels_per_tile_row(w).max(1);
        let whole = |p: usize| p.is_multiple_of(band) || p == h * w;
        if !(whole(px.start) && whole(px.end)) {
            return Err(KernelError::Shape(
                "winograd: pixel range does not cover whole rows of tiles",
            ));
        }
        check_len("winograd output rows", co, rows.len())?;
        for r in rows.iter() {
            check_len("winograd output row", px.len(), r.len())?;
        }
        check_min_len("winograd scratch", self.scratch_len(h, w), scratch.len())?;
        if px.is_empty() {
            return Ok(());
        }
        let tile_rows = px.start / band..px.end.div_ceil(band);
        let mut planes = Pieces(rows);
        let f = WinoForward {
            isa,
            x,
            u,
            bias: Some(bias),
        };
        by_form!(self.forward_n(&f, tile_rows, &mut planes, scratch));
        Ok(())
    }

    fn forward_n<const N: usize>(
        &self,
        f: &WinoForward,
        tile_rows: core::ops::Range<usize>,
        out: &mut dyn Planes,
        scratch: &mut [f32],
    ) {
        let (isa, Map { data: inp, h, w }) = (f.isa, f.x);
        let (ci, co) = (self.c_in, self.c_out);
        let ld = channel_ld::<N>(forward_chunk::<N>());
        let t = Tiles::new(h, w, N - 2);
        let most = band_rows(t.tw).min(t.th);
        let (zeros, rest) = scratch.split_at_mut(co);
        let (padded, rest) = rest.split_at_mut(ci * t.band(most).input_plane());
        let (v, rest) = rest.split_at_mut(ld * ci);
        let (m, gs) = rest.split_at_mut(ld * co);
        zeros.fill(0.0);
        let mut offs = [0u32; KC];
        if self.one_block() {
            // Row c of position p's B lies at c·ld from p·chunk: read in place.
            for (c, o) in offs[..ci].iter_mut().enumerate() {
                *o = (c * ld) as u32;
            }
        }
        let first = tile_rows.start;
        for r0 in tile_rows.clone().step_by(most) {
            // The band of tile rows r0 .. r1: padded rows m·r0 .. m·r1 + 2 of the input.
            let r1 = (r0 + most).min(tile_rows.end);
            let b = Tiles {
                h: h.min(t.m * r1) - t.m * r0,
                th: r1 - r0,
                ..t
            };
            let rows = b.m * b.th + 2;
            let padded = &mut padded[..ci * b.input_plane()];
            deinterleave::<N>(isa, inp, (h, w), (t.m * r0, 1), b.input_len(), rows, padded);
            let at = t.m * (r0 - first);
            self.band_n::<N>(f, &b, (padded, &offs), (zeros, v, m, gs), (out, at));
        }
    }

    /// The tiles of band `b` (its input de-interleaved in `padded`) into `out`'s planes from
    /// row `at`, chunk after chunk.
    #[allow(clippy::type_complexity)]
    fn band_n<const N: usize>(
        &self,
        f: &WinoForward,
        b: &Tiles,
        (padded, offs): (&[f32], &[u32; KC]),
        (zeros, v, m, gs): (&[f32], &mut [f32], &mut [f32], &mut [f32]),
        (out, at): (&mut dyn Planes, usize),
    ) {
        let (isa, u, bias) = (f.isa, f.u, f.bias);
        let (ci, co) = (self.c_in, self.c_out);
        let (positions, chunk) = (N * N, forward_chunk::<N>());
        let ld = channel_ld::<N>(chunk);
        let one_block = self.one_block();
        let (u, packed) = self.forward_parts(u);
        let a_len = round_up(co, MR) * ci;
        let t = b;
        for t0 in (0..t.n()).step_by(chunk) {
            let nt = chunk.min(t.n() - t0);
            input_transform::<N>(isa, t, (t0, chunk), ci, padded, v);
            for p in 0..positions {
                let v_p = &v[p * chunk..];
                if one_block {
                    let a_p = &packed[p * a_len..][..a_len];
                    let b = (v_p, &offs[..ci]);
                    let spare = &mut gs[..MR * NR];
                    let out = (&mut m[p * chunk..], ld);
                    chunk_product(isa, a_p, b, (co, nt), out, spare, zeros);
                    continue;
                }
                let u_p = &u[p * co * ci..][..co * ci];
                let m_p = Out::Strided {
                    c: &mut m[p * chunk..],
                    ld,
                };
                let a = Lhs {
                    m: co,
                    init: Some(zeros),
                    pack: |blk: Block, a: &mut [f32]| pack_a(isa, u_p, ci, blk, a),
                };
                let pack_b = |blk: Block, b: &mut [f32]| pack_rows(v_p, ld, blk, b);
                gemm(isa, a, nt, ci, pack_b, m_p, gs);
            }
            output_transform::<N>(isa, t, (t0, chunk), co, m, bias, (out, at));
        }
    }

    /// Scratch floats [`Winograd::backward_params`] (and
    /// [`Winograd::backward_params_transformed`]) needs for an h × w map.
    pub fn backward_scratch_len(&self, h: usize, w: usize) -> usize {
        let t = Tiles::new(h, w, self.m);
        self.c_in * t.input_plane()
            + self.c_out * t.output_plane()
            + self.channel_lds().1 * (self.c_in + self.c_out)
            + self.weight_gradient_len()
            + gemm_scratch_len(self.c_out, WEIGHT_CHUNK)
    }

    /// Floats of the weight gradient in transformed form (n² matrices of c_out × c_in, a cache
    /// line more than their size apart, against L1 set conflicts).
    pub fn weight_gradient_len(&self) -> usize {
        self.positions() * position_ld(self.c_out * self.c_in)
    }

    /// The parameter gradients of [`Winograd::forward`] with bias, given its input `inp`
    /// `[c_in, h, w]` and `dout` = ∂L/∂out `[c_out, h, w]`: `dweight` `[c_out, c_in, 3, 3]` +=
    /// ∂L/∂W (this sample's gradient computed whole, then added), `dbias[o] += Σ dout[o]` (in
    /// f64, as [`super::Conv2d::backward_params`]). The two steps of
    /// [`Winograd::backward_params_transformed`] and [`Winograd::weight_gradient`] in one.
    pub fn backward_params(
        &self,
        isa: Isa,
        grads: ConvGrads,
        dout: &[f32],
        x: Map,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let ConvGrads { dweight, dbias } = grads;
        let (h, w) = (x.h, x.w);
        check_len(
            "winograd dweight",
            9 * self.c_out * self.c_in,
            dweight.len(),
        )?;
        check_min_len(
            "winograd backward scratch",
            self.backward_scratch_len(h, w),
            scratch.len(),
        )?;
        let (du, rest) = scratch.split_at_mut(self.weight_gradient_len());
        du.fill(0.0);
        let transformed = ConvGrads { dweight: du, dbias };
        self.backward_params_transformed(isa, transformed, dout, x, rest)?;
        self.weight_gradient(du, dweight)
    }

    /// `du` += ∂L/∂U, the weight gradient in transformed form (`dU[p] = Σ_tiles dM[p]·V[p]ᵀ`, see
    /// the module doc; [`Winograd::weight_gradient_len`] floats), and `dbias[o] += Σ dout[o]`
    /// (f64, as [`super::Conv2d::backward_params`]). Summing dU over several samples and then
    /// taking [`Winograd::weight_gradient`] once costs one adjoint filter transform per weight
    /// instead of one per sample. `scratch`: [`Winograd::backward_scratch_len`] less
    /// [`Winograd::weight_gradient_len`] floats suffice.
    pub fn backward_params_transformed(
        &self,
        isa: Isa,
        grads: ConvGrads,
        dout: &[f32],
        x: Map,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let ConvGrads { dweight: du, dbias } = grads;
        let Map { data: inp, h, w } = x;
        let (ci, co) = (self.c_in, self.c_out);
        check_len("winograd input", ci * h * w, inp.len())?;
        check_len("winograd dout", co * h * w, dout.len())?;
        check_len(
            "winograd transformed dweight",
            self.weight_gradient_len(),
            du.len(),
        )?;
        check_len("winograd dbias", co, dbias.len())?;
        let need = self.backward_scratch_len(h, w) - self.weight_gradient_len();
        check_min_len("winograd backward scratch", need, scratch.len())?;
        if h == 0 || w == 0 {
            return Ok(());
        }
        for (db, row) in dbias.iter_mut().zip(dout.chunks_exact(h * w)) {
            *db += sum_f64(row) as f32;
        }
        by_form!(self.backward_params_n(isa, du, dout, inp, (h, w), scratch));
        Ok(())
    }

    fn backward_params_n<const N: usize>(
        &self,
        isa: Isa,
        du: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        (h, w): (usize, usize),
        scratch: &mut [f32],
    ) {
        let (ci, co) = (self.c_in, self.c_out);
        let (chunk, ld) = (WEIGHT_CHUNK, channel_ld::<N>(WEIGHT_CHUNK));
        let t = Tiles::new(h, w, N - 2);
        let (padded, rest) = scratch.split_at_mut(ci * t.input_plane());
        let (dsplit, rest) = rest.split_at_mut(co * t.output_plane());
        let (v, rest) = rest.split_at_mut(ld * ci);
        let (dm, gs) = rest.split_at_mut(ld * co);
        let du_ld = position_ld(co * ci);
        let rows = t.m * t.th;
        deinterleave::<N>(isa, inp, (h, w), (0, 1), t.input_len(), rows + 2, padded);
        deinterleave::<N>(isa, dout, (h, w), (0, 0), t.tw, rows, dsplit);
        // The sum over tiles is the products' depth: chunk after chunk onto the running sums
        // in `du` (the same chain of fused multiply-adds as one pass over every tile).
        for t0 in (0..t.n()).step_by(chunk) {
            let nt = chunk.min(t.n() - t0);
            input_transform::<N>(isa, &t, (t0, chunk), ci, padded, v);
            dout_transform::<N>(isa, &t, (t0, chunk), co, dsplit, dm);
            for p in 0..N * N {
                let (dm_p, v_p) = (&dm[p * chunk..], &v[p * chunk..]);
                let a = Lhs {
                    m: co,
                    init: None,
                    pack: |blk: Block, a: &mut [f32]| pack_a(isa, dm_p, ld, blk, a),
                };
                let pack_b = |blk: Block, b: &mut [f32]| pack_rows_t(isa, v_p, ld, blk, b);
                let out = Out::Dense(&mut du[p * du_ld..][..co * ci]);
                gemm(isa, a, ci, nt, pack_b, out, gs);
            }
        }
    }

    /// `dweight` `[c_out, c_in, 3, 3]` += Gᵀ·dU·G for the transformed weight gradient `du` of
    /// [`Winograd::backward_params_transformed`].
    pub fn weight_gradient(&self, du: &[f32], dweight: &mut [f32]) -> Result<(), KernelError> {
        let pairs = self.c_out * self.c_in;
        check_len(
            "winograd transformed dweight",
            self.weight_gradient_len(),
            du.len(),
        )?;
        check_len("winograd dweight", 9 * pairs, dweight.len())?;
        by_form!(self.weight_gradient_n(du, dweight));
        Ok(())
    }

    fn weight_gradient_n<const N: usize>(&self, du: &[f32], dweight: &mut [f32]) {
        let du_ld = position_ld(self.c_out * self.c_in);
        for (i, dw) in dweight.chunks_exact_mut(9).enumerate() {
            let d: [[f32; N]; N] = from_fn(|r| from_fn(|c| du[(r * N + c) * du_ld + i]));
            for (a, b) in dw.iter_mut().zip(filter_transform_adjoint::<N>(&d)) {
                *a += b;
            }
        }
    }
}

/// One checked forward call: the microkernels, the input planes, the transformed weights and
/// the bias (`None`: accumulate onto the output).
struct WinoForward<'a> {
    isa: Isa,
    x: Map<'a>,
    u: &'a [f32],
    bias: Option<&'a [f32]>,
}

/// out[i·ld + g] = Σ_k A[i, k]·B[k, g] for the m rows of the packed A (one block: depth
/// `offs.len()` ≤ KC, m ≤ MC_MAX) and the nt ≤ NR columns of B, whose rows lie at `offs`
/// (the chunk's transformed tiles, read in place): the one-panel case of [`gemm`], with
/// every element's terms in the same order (zero, then k = 0, 1, …). Computed in place in
/// `out` (a chunk buffer: every row has NR columns, those past nt are scratch), with the
/// rows past m of the last panel in `spare` (MR·NR floats), so no tile is copied.
fn chunk_product(
    isa: Isa,
    a: &[f32],
    b: (&[f32], &[u32]),
    (m, nt): (usize, usize),
    (out, ld): (&mut [f32], usize),
    spare: &mut [f32],
    zeros: &[f32],
) {
    let depth = b.1.len();
    for (t, a_pan) in a.chunks_exact(depth * MR).enumerate() {
        let i0 = t * MR;
        let mr = MR.min(m - i0);
        let start = first_terms(Some(zeros), 0, i0, mr);
        let mut c = tile_with_spare(&mut out[i0 * ld..], ld, mr, spare);
        let panels = Panels {
            kc: depth,
            a: a_pan,
            b: b.0,
            b_rows: b.1,
        };
        microkernel(isa, panels, &mut c, start.as_ref(), (mr, nt));
    }
}

/// [`pack_rows`] of the transpose of `src` (row stride `ld`; `blk`: at = n0, len = nc):
/// b[(j/NR)·kc·NR + kk·NR + j%NR] = src[n0 + j, k0 + kk], eight columns at a time as 8 × 8
/// register transposes where the CPU has AVX2 (a pure copy: same values).
fn pack_rows_t(isa: Isa, src: &[f32], ld: usize, blk: Block, b: &mut [f32]) {
    let Block {
        at: n0,
        len: nc,
        k0,
        kc,
    } = blk;
    for j0 in (0..round_up(nc, NR)).step_by(8) {
        let base = (j0 / NR) * kc * NR + j0 % NR;
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if isa.is_simd() && j0 + 8 <= nc {
            let kc8 = kc / 8 * 8;
            let row = |u: usize| src[(n0 + j0 + u) * ld + k0..][..kc].as_ptr();
            if kc8 > 0 {
                let dst = &mut b[base..base + (kc8 - 1) * NR + 8];
                // SAFETY: AVX2 by Isa::is_simd; each row holds kc ≥ kc8 floats and dst
                // (kc8 − 1)·NR + 8.
                unsafe {
                    transpose::transpose_rows(core::array::from_fn(row), kc8, dst.as_mut_ptr(), NR)
                };
            }
            done = kc8;
        }
        let _ = isa;
        for u in 0..8 {
            let j = j0 + u;
            for kk in done..kc {
                b[base + u + kk * NR] = if j < nc {
                    src[(n0 + j) * ld + k0 + kk]
                } else {
                    0.0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
