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

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::{
    first_terms, gemm, gemm_scratch_len, microkernel, pack_a, pack_rows, round_up, sum_f64,
    tile_with_spare, Isa, Out, KC, LINE, MC_MAX, MR, NR,
};
use crate::{check_len, check_min_len, check_range, KernelError};
use core::array::from_fn;
use core::ops::{Add, Mul, Neg, Sub};

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
    /// the AVX2 kernel computes alone) they waste more than the transforms save. (Measured at
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
            pack_a(
                Isa::detected(), // a copy: the same values on any path
                &plain[p * pairs..][..pairs],
                ci,
                0,
                co,
                0,
                ci,
                a,
            );
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

    /// The convolution of `inp` [c_in, h, w] with the weights `u` transformed by
    /// [`Winograd::transform_weights`] (or [`Winograd::transform_forward_weights`]): `out`
    /// [c_out, h, w] = bias + conv(inp) when `bias` is given, else `out` += conv(inp).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        isa: Isa,
        inp: &[f32],
        h: usize,
        w: usize,
        u: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
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
        by_form!(self.forward_n(isa, inp, (h, w), u, bias, rows, &mut planes, scratch));
        Ok(())
    }

    /// [`Winograd::forward`] (with bias) for the output pixels `px` (numbered y·w + x) only:
    /// `rows[o]` receives out[o, px]. `px` must start and end on whole rows of tiles
    /// (multiples of [`Winograd::pixels_per_tile_row`], or the map's end). Every tile is
    /// computed as by [`Winograd::forward`], so threads splitting a map this way get its bits.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_pixels(
        &self,
        isa: Isa,
        inp: &[f32],
        h: usize,
        w: usize,
        u: &[f32],
        bias: &[f32],
        px: core::ops::Range<usize>,
        rows: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
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
        let bias = Some(bias);
        by_form!(self.forward_n(isa, inp, (h, w), u, bias, tile_rows, &mut planes, scratch));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_n<const N: usize>(
        &self,
        isa: Isa,
        inp: &[f32],
        (h, w): (usize, usize),
        u: &[f32],
        bias: Option<&[f32]>,
        tile_rows: core::ops::Range<usize>,
        out: &mut dyn Planes,
        scratch: &mut [f32],
    ) {
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
            self.band_n::<N>(
                isa,
                &b,
                u,
                bias,
                (padded, &offs),
                (zeros, v, m, gs),
                (out, at),
            );
        }
    }

    /// The tiles of band `b` (its input de-interleaved in `padded`) into `out`'s planes from
    /// row `at`, chunk after chunk.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn band_n<const N: usize>(
        &self,
        isa: Isa,
        b: &Tiles,
        u: &[f32],
        bias: Option<&[f32]>,
        (padded, offs): (&[f32], &[u32; KC]),
        (zeros, v, m, gs): (&[f32], &mut [f32], &mut [f32], &mut [f32]),
        (out, at): (&mut dyn Planes, usize),
    ) {
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
                    chunk_product(isa, a_p, b, co, nt, (&mut m[p * chunk..], ld), spare, zeros);
                    continue;
                }
                let u_p = &u[p * co * ci..][..co * ci];
                let m_p = Out::Strided {
                    c: &mut m[p * chunk..],
                    ld,
                };
                gemm(
                    isa,
                    Some(zeros),
                    co,
                    nt,
                    ci,
                    |m0, mc, k0, kc, a| pack_a(isa, u_p, ci, m0, mc, k0, kc, a),
                    |k0, kc, n0, nc, b| pack_rows(v_p, ld, k0, kc, n0, nc, b),
                    m_p,
                    gs,
                );
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
    #[allow(clippy::too_many_arguments)]
    pub fn backward_params(
        &self,
        isa: Isa,
        dweight: &mut [f32],
        dbias: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        h: usize,
        w: usize,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
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
        self.backward_params_transformed(isa, du, dbias, dout, inp, h, w, rest)?;
        self.weight_gradient(du, dweight)
    }

    /// `du` += ∂L/∂U, the weight gradient in transformed form (`dU[p] = Σ_tiles dM[p]·V[p]ᵀ`, see
    /// the module doc; [`Winograd::weight_gradient_len`] floats), and `dbias[o] += Σ dout[o]`
    /// (f64, as [`super::Conv2d::backward_params`]). Summing dU over several samples and then
    /// taking [`Winograd::weight_gradient`] once costs one adjoint filter transform per weight
    /// instead of one per sample. `scratch`: [`Winograd::backward_scratch_len`] less
    /// [`Winograd::weight_gradient_len`] floats suffice.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_params_transformed(
        &self,
        isa: Isa,
        du: &mut [f32],
        dbias: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        h: usize,
        w: usize,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
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
                gemm(
                    isa,
                    None,
                    co,
                    ci,
                    nt,
                    |m0, mc, k0, kc, a| pack_a(isa, dm_p, ld, m0, mc, k0, kc, a),
                    |k0, kc, n0, nc, b| pack_rows_t(isa, v_p, ld, k0, kc, n0, nc, b),
                    Out::Dense(&mut du[p * du_ld..][..co * ci]),
                    gs,
                );
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

/// out[i·ld + g] = Σ_k A[i, k]·B[k, g] for the m rows of the packed A (one block: depth
/// `offs.len()` ≤ KC, m ≤ MC_MAX) and the nt ≤ NR columns of B, whose rows lie at `offs`
/// (the chunk's transformed tiles, read in place): the one-panel case of [`gemm`], with
/// every element's terms in the same order (zero, then k = 0, 1, …). Computed in place in
/// `out` (a chunk buffer: every row has NR columns, those past nt are scratch), with the
/// rows past m of the last panel in `spare` (MR·NR floats), so no tile is copied.
#[allow(clippy::too_many_arguments)]
fn chunk_product(
    isa: Isa,
    a: &[f32],
    b: (&[f32], &[u32]),
    m: usize,
    nt: usize,
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
        microkernel(
            isa,
            depth,
            a_pan,
            b.0,
            b.1,
            &mut c,
            start.as_ref(),
            (mr, nt),
        );
    }
}

/// G·(a, b, c) for one column or row of a 3 × 3 filter: with F(2 × 2),
/// G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]; with F(4 × 4),
/// G = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙; 1/24 1/12 ⅙; 1/24 −1/12 ⅙; 0 0 1].
fn g_col<const N: usize>(a: f32, b: f32, c: f32) -> [f32; N] {
    let mut y = [0.0; N];
    if N == 4 {
        (y[0], y[1], y[2], y[3]) = (a, 0.5 * (a + b + c), 0.5 * (a - b + c), c);
    } else {
        // Products with the reciprocals, not divisions (done for every weight at every step).
        let (sixth, a24) = (1.0 / 6.0, 1.0 / 24.0);
        let (e, o) = (a + 4.0 * c, 2.0 * b);
        y[0] = 0.25 * a;
        y[1] = -(a + b + c) * sixth;
        y[2] = -(a - b + c) * sixth;
        y[3] = (e + o) * a24;
        y[4] = (e - o) * a24;
        y[5] = c;
    }
    y
}

/// Gᵀ·d for one column or row d of an n × n transformed gradient: the adjoint of [`g_col`].
fn g_col_adjoint<const N: usize>(d: [f32; N]) -> [f32; 3] {
    if N == 4 {
        let (a, b, c, e) = (d[0], d[1], d[2], d[3]);
        [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + e]
    } else {
        let (s, t) = (d[1] + d[2], d[3] + d[4]);
        let (u, v) = (d[1] - d[2], d[3] - d[4]);
        let (sixth, a12, a24) = (1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0);
        [
            0.25 * d[0] - s * sixth + t * a24,
            v * a12 - u * sixth,
            (t - s) * sixth + d[5],
        ]
    }
}

/// G·g·Gᵀ for a 3 × 3 filter g (row-major).
fn filter_transform<const N: usize>(g: &[f32]) -> [[f32; N]; N] {
    // Columns of G·g (n values each), then each row of G·g times Gᵀ.
    let c: [[f32; N]; 3] = from_fn(|j| g_col::<N>(g[j], g[3 + j], g[6 + j]));
    from_fn(|i| g_col::<N>(c[0][i], c[1][i], c[2][i]))
}

/// Gᵀ·D·G for an n × n D: the adjoint of [`filter_transform`].
fn filter_transform_adjoint<const N: usize>(d: &[[f32; N]; N]) -> [f32; 9] {
    let c: [[f32; 3]; N] = from_fn(|i| g_col_adjoint::<N>(d[i]));
    let mut g = [0f32; 9];
    for j in 0..3 {
        let col = g_col_adjoint::<N>(from_fn(|i| c[i][j]));
        for (i, v) in col.iter().enumerate() {
            g[3 * i + j] = *v;
        }
    }
    g
}

/// What the transforms compute with: one f32 (the portable code, and every row's tail) or
/// eight of them ([`V8`], AVX2). The transforms add, subtract, flip signs and multiply by
/// constants, each operation rounded on its own (no fused multiply-adds), so both give the
/// same bits. Loads and stores take raw pointers: the transforms check their buffers' lengths
/// once per row, not once per value (the checks cost as much as the sums).
trait Lanes:
    Copy + Add<Output = Self> + Sub<Output = Self> + Neg<Output = Self> + Mul<Output = Self>
{
    /// Floats per value.
    const N: usize;
    /// The same with half the lanes (for runs too short for N; f32 for f32).
    type Half: Lanes;
    /// p[0 .. N].
    ///
    /// # Safety
    /// p must be valid for reading N floats.
    unsafe fn load(p: *const f32) -> Self;
    /// p[0 .. N] = self.
    ///
    /// # Safety
    /// p must be valid for writing N floats.
    unsafe fn store(self, p: *mut f32);
    /// N copies of x.
    fn splat(x: f32) -> Self;
    /// The even and the odd floats of a[0 .. N], b[0 .. N] laid end to end.
    fn split(a: Self, b: Self) -> (Self, Self);
    /// a[0], b[0], a[1], b[1], …: floats 0 .. N in the first value, N .. 2N in the second.
    fn interleave(a: Self, b: Self) -> (Self, Self);
    /// The even and the odd floats of p[0 .. 2N].
    ///
    /// # Safety
    /// p must be valid for reading 2N floats.
    #[inline(always)]
    unsafe fn load_split(p: *const f32) -> (Self, Self) {
        // SAFETY: the caller's contract.
        unsafe { Self::split(Self::load(p), Self::load(p.add(Self::N))) }
    }
}

impl Lanes for f32 {
    const N: usize = 1;
    type Half = f32;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { *p = self }
    }
    #[inline(always)]
    fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn split(a: f32, b: f32) -> (f32, f32) {
        (a, b)
    }
    #[inline(always)]
    fn interleave(a: f32, b: f32) -> (f32, f32) {
        (a, b)
    }
}

#[cfg(target_arch = "x86_64")]
use v8::V8;

/// Eight f32 in an AVX register. Only the functions that [`by_isa`] compiles for AVX2 and
/// enters when [`Isa::is_simd`] vouched for it create and use them.
#[cfg(target_arch = "x86_64")]
mod v8 {
    use super::Lanes;
    use core::arch::x86_64::*;
    use core::ops::{Add, Mul, Neg, Sub};

    #[derive(Clone, Copy)]
    pub(super) struct V8(__m256);

    /// Four f32 in an SSE register (runs of 4 tiles: the tile rows of 8 × 8 maps).
    #[derive(Clone, Copy)]
    pub(super) struct V4(__m128);

    // SAFETY (the intrinsics below): a V8 or V4 exists only on a CPU with AVX2 (see above);
    // the pointers follow the trait's contracts.

    /// +, −, × and sign flip (xor with −0.0, as f32's negation) of a register type.
    macro_rules! lane_ops {
        ($t:ident, $add:ident, $sub:ident, $mul:ident, $xor:ident, $set1:ident) => {
            impl Add for $t {
                type Output = $t;
                #[inline(always)]
                fn add(self, o: $t) -> $t {
                    $t(unsafe { $add(self.0, o.0) })
                }
            }

            impl Sub for $t {
                type Output = $t;
                #[inline(always)]
                fn sub(self, o: $t) -> $t {
                    $t(unsafe { $sub(self.0, o.0) })
                }
            }

            impl Mul for $t {
                type Output = $t;
                #[inline(always)]
                fn mul(self, o: $t) -> $t {
                    $t(unsafe { $mul(self.0, o.0) })
                }
            }

            impl Neg for $t {
                type Output = $t;
                #[inline(always)]
                fn neg(self) -> $t {
                    $t(unsafe { $xor(self.0, $set1(-0.0)) })
                }
            }
        };
    }

    lane_ops!(
        V8,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_xor_ps,
        _mm256_set1_ps
    );
    lane_ops!(
        V4,
        _mm_add_ps,
        _mm_sub_ps,
        _mm_mul_ps,
        _mm_xor_ps,
        _mm_set1_ps
    );

    impl Lanes for V8 {
        const N: usize = 8;
        type Half = V4;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> V8 {
            V8(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn splat(x: f32) -> V8 {
            V8(unsafe { _mm256_set1_ps(x) })
        }
        #[inline(always)]
        fn split(a: V8, b: V8) -> (V8, V8) {
            unsafe {
                // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit quarters put in order 0, 2, 1, 3.
                let even = _mm256_shuffle_ps::<0b10_00_10_00>(a.0, b.0);
                let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a.0, b.0);
                let order = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                (V8(order(even)), V8(order(odd)))
            }
        }
        #[inline(always)]
        fn interleave(a: V8, b: V8) -> (V8, V8) {
            unsafe {
                let lo = _mm256_unpacklo_ps(a.0, b.0); // a0 b0 a1 b1 | a4 b4 a5 b5
                let hi = _mm256_unpackhi_ps(a.0, b.0); // a2 b2 a3 b3 | a6 b6 a7 b7
                (
                    V8(_mm256_permute2f128_ps::<0x20>(lo, hi)),
                    V8(_mm256_permute2f128_ps::<0x31>(lo, hi)),
                )
            }
        }
    }

    impl Lanes for V4 {
        const N: usize = 4;
        type Half = f32;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> V4 {
            V4(unsafe { _mm_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn splat(x: f32) -> V4 {
            V4(unsafe { _mm_set1_ps(x) })
        }
        #[inline(always)]
        fn split(a: V4, b: V4) -> (V4, V4) {
            unsafe {
                (
                    V4(_mm_shuffle_ps::<0b10_00_10_00>(a.0, b.0)),
                    V4(_mm_shuffle_ps::<0b11_01_11_01>(a.0, b.0)),
                )
            }
        }
        #[inline(always)]
        fn interleave(a: V4, b: V4) -> (V4, V4) {
            unsafe { (V4(_mm_unpacklo_ps(a.0, b.0)), V4(_mm_unpackhi_ps(a.0, b.0))) }
        }
    }
}

/// Runs `$f::<V8, N>(args)` in a function compiled for AVX2 when `$isa` vouches for AVX2,
/// else `$f::<f32, N>(args)` (N: the form's n, a const parameter of the caller).
macro_rules! by_isa {
    ($isa:expr, $f:ident::<N>($($a:ident: $t:ty),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if $isa.is_simd() {
            #[target_feature(enable = "avx2")]
            unsafe fn simd<const N: usize>($($a: $t),*) {
                $f::<V8, N>($($a),*)
            }
            // SAFETY: Isa::is_simd guarantees AVX2.
            unsafe { simd::<N>($($a),*) };
            return;
        }
        let _ = $isa;
        $f::<f32, N>($($a),*)
    }};
}

/// Copies rows top .. top + `rows` of each h × w plane of `src`, shifted by `off` (0 or 1)
/// rows and columns, into `rows` rows of m = n − 2 phases of `len` floats (zero elsewhere):
/// pixel (y, x) goes to row y + off − top, column q = x + off, into phase q % m at q / m.
/// Needs rows ≥ h + off − top (all of the plane from top on) or a band inside it, and
/// len ≥ ⌈(w + off) / m⌉.
fn deinterleave<const N: usize>(
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
fn input_transform<const N: usize>(
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
fn output_transform<const N: usize>(
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
fn dout_transform<const N: usize>(
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

/// [`pack_rows`] of the transpose of `src` (row stride `ld`):
/// b[(j/NR)·kc·NR + kk·NR + j%NR] = src[n0 + j, k0 + kk], eight columns at a time as 8 × 8
/// register transposes where the CPU has AVX2 (a pure copy: same values).
#[allow(clippy::too_many_arguments)]
fn pack_rows_t(
    isa: Isa,
    src: &[f32],
    ld: usize,
    k0: usize,
    kc: usize,
    n0: usize,
    nc: usize,
    b: &mut [f32],
) {
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
                    avx2::transpose_rows(core::array::from_fn(row), kc8, dst.as_mut_ptr(), NR)
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
mod tests {
    use super::super::Conv2d;
    use super::*;
    use crate::WeightsRef;
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
        for isa in super::super::tests::isas() {
            for &(ci, co, h, w) in &SHAPES {
                let conv = conv3(ci, co);
                let (x, wt, b) = (data(ci * h * w, 1), data(co * ci * 9, 2), data(co, 3));
                let mut want = vec![0.0; co * h * w];
                let mut s = vec![0.0; conv.scratch_len(h, w)];
                conv.forward_with(
                    isa,
                    &x,
                    h,
                    w,
                    WeightsRef::F32(&wt),
                    &b,
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
                    wg.forward(isa, &x, h, w, &u, Some(&b), &mut got, &mut s)
                        .unwrap();
                    let tol = slack * 2e-6 * (ci as f32 * 9.0).sqrt();
                    assert_close(&got, &want, tol, "forward");
                    // Without bias it adds onto `out`.
                    let before = data(co * h * w, 4);
                    let mut acc = before.clone();
                    wg.forward(isa, &x, h, w, &u, None, &mut acc, &mut s)
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
        for isa in super::super::tests::isas() {
            for &(ci, co, h, w) in &SHAPES {
                let conv = conv3(ci, co);
                let (dy, wt) = (data(co * h * w, 5), data(co * ci * 9, 6));
                let start = data(ci * h * w, 7);
                let mut want = start.clone();
                let mut s = vec![0.0; conv.backward_scratch_len(h, w)];
                conv.backward_input(
                    isa,
                    &mut want,
                    &dy,
                    WeightsRef::F32(&wt),
                    h,
                    w,
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
                    wg.forward(isa, &dy, h, w, &u, None, &mut got, &mut s)
                        .unwrap();
                    let tol = slack * (2e-6 * (co as f32 * 9.0).sqrt() + 1e-6);
                    assert_close(&got, &want, tol, "dx");
                }
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_direct_convolution() {
        for isa in super::super::tests::isas() {
            for &(ci, co, h, w) in &SHAPES {
                let conv = conv3(ci, co);
                let (x, dy) = (data(ci * h * w, 8), data(co * h * w, 9));
                let (dw0, db0) = (data(co * ci * 9, 10), data(co, 11));
                let (mut want_w, mut want_b) = (dw0.clone(), db0.clone());
                let mut s = vec![0.0; conv.backward_scratch_len(h, w)];
                conv.backward_params(isa, &mut want_w, &mut want_b, &dy, &x, h, w, 0..co, &mut s)
                    .unwrap();
                for (wg, slack) in forms(&conv) {
                    let (mut got_w, mut got_b) = (dw0.clone(), db0.clone());
                    let mut s = vec![f32::NAN; wg.backward_scratch_len(h, w)];
                    wg.backward_params(isa, &mut got_w, &mut got_b, &dy, &x, h, w, &mut s)
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
                wg.backward_params(isa, &mut want_w, &mut want_b, dy, x, h, w, &mut s)
                    .unwrap();
                wg.backward_params_transformed(isa, &mut du, &mut got_b, dy, x, h, w, &mut s)
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
                    &mut du,
                    &mut got_b,
                    &dys[0],
                    &xs[0],
                    h,
                    w,
                    &mut s[..short]
                )
                .is_err());
        }
    }

    /// Splitting a map into pixel ranges of whole tile rows (as threads do) gives the bits of
    /// the whole map, on every ISA, in maps of one band and of several (ragged) bands.
    #[test]
    fn pixel_ranges_give_the_bits_of_the_whole_map() {
        for isa in super::super::tests::isas() {
            for (ci, co, h, w) in [(24, 20, 37, 64), (9, 13, 70, 130), (8, 12, 11, 14)] {
                for (wg, _) in forms(&conv3(ci, co)) {
                    let (x, wt, b) = (data(ci * h * w, 1), data(co * ci * 9, 2), data(co, 3));
                    let mut u = vec![0.0; wg.weights_len()];
                    wg.transform_weights(&wt, &mut u).unwrap();
                    let mut s = vec![f32::NAN; wg.scratch_len(h, w)];
                    let mut whole = vec![f32::NAN; co * h * w];
                    wg.forward(isa, &x, h, w, &u, Some(&b), &mut whole, &mut s)
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
                            wg.forward_pixels(isa, &x, h, w, &u, &b, px, &mut rows, &mut s)
                                .unwrap();
                        }
                        assert_eq!(got, whole, "{ci}->{co} at {h}x{w}, {parts} parts");
                    }
                    // A range that cuts a tile row is refused, not computed.
                    let mut rows: Vec<&mut [f32]> = whole
                        .chunks_exact_mut(h * w)
                        .map(|p| &mut p[1..band])
                        .collect();
                    let r = wg.forward_pixels(isa, &x, h, w, &u, &b, 1..band, &mut rows, &mut s);
                    assert!(r.is_err());
                }
            }
        }
    }

    #[test]
    fn isas_give_the_same_bits() {
        let isas = super::super::tests::isas();
        let (ci, co, h, w) = (24, 20, 11, 14);
        for (wg, _) in forms(&conv3(ci, co)) {
            let (x, wt, b) = (data(ci * h * w, 1), data(co * ci * 9, 2), data(co, 3));
            let mut u = vec![0.0; wg.weights_len()];
            wg.transform_weights(&wt, &mut u).unwrap();
            let run = |isa: Isa| {
                let mut s = vec![0.0; wg.scratch_len(h, w).max(wg.backward_scratch_len(h, w))];
                let mut y = vec![0.0; co * h * w];
                wg.forward(isa, &x, h, w, &u, Some(&b), &mut y, &mut s)
                    .unwrap();
                let (mut dw, mut db) = (vec![0.0; co * ci * 9], vec![0.0; co]);
                wg.backward_params(isa, &mut dw, &mut db, &y, &x, h, w, &mut s)
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

    /// Winograd against the direct convolution, forward and weight gradient, best of
    /// WINO_REPS: `WINO_SHAPE=c_in,c_out,size WINO_TILE=2|4 cargo test --release -p
    /// tweedie-kernels winograd_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn winograd_throughput() {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
        let shape: Vec<usize> = env("WINO_SHAPE", "32,32,32")
            .split(',')
            .map(|v| v.trim().parse().unwrap())
            .collect();
        let (ci, co, n) = (shape[0], shape[1], shape[2]);
        let reps: usize = env("WINO_REPS", "200").parse().unwrap();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: just detected.
            unsafe { super::super::enable_avx2_fma() };
        }
        let isa = Isa::detected();
        let conv = conv3(ci, co);
        let wg = Winograd::of(&conv).unwrap();
        let wg = match env("WINO_TILE", "2").as_str() {
            "4" => wg.with_4x4_tiles(),
            _ => wg,
        };
        let (x, wt, b) = (data(ci * n * n, 1), data(co * ci * 9, 2), data(co, 3));
        let mut u = vec![0.0; wg.weights_len()];
        wg.transform_weights(&wt, &mut u).unwrap();
        let len = [
            conv.scratch_len(n, n),
            conv.backward_scratch_len(n, n),
            wg.scratch_len(n, n),
            wg.backward_scratch_len(n, n),
        ];
        let mut s = vec![0.0; len.into_iter().max().unwrap()];
        let mut y = vec![0.0; co * n * n];
        let (mut dw, mut db) = (vec![0.0; co * ci * 9], vec![0.0; co]);
        let best = |f: &mut dyn FnMut()| {
            (0..reps)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let flops = 2.0 * (co * ci * 9 * n * n) as f64;
        let report = |what: &str, t: f64| {
            std::println!(
                "{what} {ci}->{co} {n}x{n}: {:.1} us, {:.1} GFLOP/s direct-equivalent",
                t * 1e6,
                flops / t / 1e9
            )
        };
        let wt_ref = WeightsRef::F32(&wt);
        report(
            "direct forward",
            best(&mut || {
                conv.forward_with(isa, &x, n, n, wt_ref, &b, 0..co, &mut y, &mut s)
                    .unwrap()
            }),
        );
        report(
            "winograd forward",
            best(&mut || {
                wg.forward(isa, &x, n, n, &u, Some(&b), &mut y, &mut s)
                    .unwrap()
            }),
        );
        report(
            "direct dW",
            best(&mut || {
                conv.backward_params(isa, &mut dw, &mut db, &y, &x, n, n, 0..co, &mut s)
                    .unwrap()
            }),
        );
        report(
            "winograd dW",
            best(&mut || {
                wg.backward_params(isa, &mut dw, &mut db, &y, &x, n, n, &mut s)
                    .unwrap()
            }),
        );
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
            .forward(isa, &x[1..], 4, 4, &u, None, &mut out, &mut s)
            .is_err());
        assert!(wg
            .forward(isa, &x, 4, 4, &u[1..], None, &mut out, &mut s)
            .is_err());
        assert!(wg
            .forward(isa, &x, 4, 4, &u, Some(&[0.0; 2]), &mut out, &mut s)
            .is_err());
        assert!(wg
            .forward(isa, &x, 4, 4, &u, None, &mut out, &mut s[1..])
            .is_err());
        assert!(wg
            .transform_weights(&[0.0; 5], &mut vec![0.0; wg.weights_len()])
            .is_err());
        let mut dw = vec![0.0; 54];
        let mut db = vec![0.0; 3];
        let mut s = vec![0.0; wg.backward_scratch_len(4, 4)];
        assert!(wg
            .backward_params(isa, &mut dw, &mut db, &out[1..], &x, 4, 4, &mut s)
            .is_err());
        assert!(wg
            .backward_params(isa, &mut dw[1..], &mut db, &out, &x, 4, 4, &mut s)
            .is_err());
        assert!(wg
            .backward_params(isa, &mut dw, &mut db, &out, &x, 4, 4, &mut s[1..])
            .is_err());
        assert!(wg
            .backward_params(isa, &mut dw, &mut db, &out, &x, 4, 4, &mut s)
            .is_ok());
    }
}
