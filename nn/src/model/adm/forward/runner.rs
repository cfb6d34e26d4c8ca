//! The layers of a pass walked through the arena's three work buffers, each layer one pool
//! job over all samples.

use super::*;

/// The two buffer indices other than `i`.
pub(in crate::model::adm) fn others(i: usize) -> [usize; 2] {
    [(i + 1) % 3, (i + 2) % 3]
}

/// Buffer `src` shared and buffer `dst` mutable (`src != dst`).
pub(in crate::model::adm) fn pair<B>(work: &mut [B; 3], src: usize, dst: usize) -> (&B, &mut B) {
    debug_assert_ne!(src, dst);
    let [a, b, c] = work;
    match (src, dst) {
        (0, 1) => (a, b),
        (0, 2) => (a, c),
        (1, 0) => (b, a),
        (1, 2) => (b, c),
        (2, 0) => (c, a),
        _ => (c, b),
    }
}

/// Walks the layers of a pass through the three work buffers, each layer one pool job over
/// all `batch` samples (a buffer holds them back to back).
pub(super) struct Runner<'a> {
    pub(super) pool: &'a Pool,
    pub(super) isa: Isa,
    pub(super) work: &'a mut [Vec<f32>; 3],
    pub(super) scratch: &'a ThreadScratch,
    pub(super) film: &'a mut [f32],
    /// SiLU(emb), `[batch, time_embed_dim]`.
    pub(super) emb_silu: &'a [f32],
    /// The buffer holding the current activation.
    pub(super) cur: usize,
    /// Samples in the pass.
    pub(super) batch: usize,
    pub(super) height: usize,
    pub(super) width: usize,
}

impl Runner<'_> {
    /// The block's output (in the current buffer), all samples.
    pub(super) fn state(&self, b: &BlockP) -> &[f32] {
        let len = self.batch * b.c_out * (self.height / b.ds_out) * (self.width / b.ds_out);
        &self.work[self.cur][..len]
    }

    pub(super) fn block(&mut self, b: &BlockP) -> Result<()> {
        for l in &b.layers {
            self.layer(l).map_err(|e| anyhow!("{}: {e}", l.name))?;
        }
        Ok(())
    }

    /// `work[dst]` = the decoder state (current buffer) and the encoder output `skips` (the
    /// pass's samples back to back) concatenated along channels, sample by sample.
    pub(super) fn concat(
        &mut self,
        b: &BlockP,
        skips: &[f32],
        dst: usize,
    ) -> Result<(), KernelError> {
        let _p = profile::scope(Kind::Copy, 0);
        let hw = (self.height / b.ds_in) * (self.width / b.ds_in);
        let (cs, ck) = (b.c_state, b.skip_channels);
        let n = self.batch;
        let (src, cat) = pair(self.work, self.cur, dst);
        let (src, skips) = (&src[..n * cs * hw], &skips[..n * ck * hw]);
        self.pool.split_batch(
            &mut cat[..n * (cs + ck) * hw],
            n,
            cs + ck,
            1,
            |_, s, cr, piece| {
                for (c, row) in cr.zip(piece.chunks_exact_mut(hw)) {
                    let from = match c.checked_sub(cs) {
                        None => &src[(s * cs + c) * hw..][..hw],
                        Some(k) => &skips[(s * ck + k) * hw..][..hw],
                    };
                    row.copy_from_slice(from);
                }
                Ok(())
            },
        )
    }

    fn layer(&mut self, l: &LayerP) -> Result<(), KernelError> {
        let (h, w) = (self.height / l.ds, self.width / l.ds);
        match &l.op {
            Op::Conv(c) => {
                let [o, _] = others(self.cur);
                self.conv(c, self.cur, o, h, w)?;
                self.cur = o;
            }
            Op::Res(r) => self.res(r, h, w)?,
            Op::Attn(a) => self.attention(a, h, w)?,
            Op::Down { channels, conv } => {
                let [a, _] = others(self.cur);
                match conv {
                    Some(c) => self.conv(c, self.cur, a, h, w)?,
                    None => self.resample(Updown::Down, *channels, self.cur, a, h, w)?,
                }
                self.cur = a;
            }
            Op::Up { channels, conv } => {
                let [a, b] = others(self.cur);
                self.resample(Updown::Up, *channels, self.cur, a, h, w)?;
                self.cur = a;
                if let Some(c) = conv {
                    self.conv(c, a, b, 2 * h, 2 * w)?;
                    self.cur = b;
                }
            }
        }
        Ok(())
    }

    /// `work[dst] = conv(work[src])` for `h`×`w` inputs.
    fn conv(
        &mut self,
        c: &ConvP,
        src: usize,
        dst: usize,
        h: usize,
        w: usize,
    ) -> Result<(), KernelError> {
        let n = self.batch;
        let (oh, ow) = c.conv.out_size(h, w);
        let (x, out) = pair(self.work, src, dst);
        conv_batch(
            self.pool,
            self.scratch,
            self.isa,
            &x[..n * c.conv.c_in * h * w],
            (n, h, w),
            c,
            &mut out[..n * c.conv.c_out * oh * ow],
        )
    }

    /// GroupNorm (+FiLM from `film`, +SiLU) of `work[src]` into `work[dst]`.
    fn norm(
        &mut self,
        p: &NormP,
        src: usize,
        dst: usize,
        hw: usize,
        film: Option<&[f32]>,
        silu: bool,
    ) -> Result<(), KernelError> {
        let len = self.batch * p.channels * hw;
        let (x, out) = pair(self.work, src, dst);
        group_norm_batch(
            self.pool,
            &x[..len],
            (self.batch, hw),
            p,
            film,
            silu,
            &mut out[..len],
        )
    }

    /// `work[dst] = R(work[src])` for `channels` maps of `h`×`w`.
    fn resample(
        &mut self,
        r: Updown,
        channels: usize,
        src: usize,
        dst: usize,
        h: usize,
        w: usize,
    ) -> Result<(), KernelError> {
        let (ho, wo) = r.resampled(h, w);
        let _p = profile::scope(Kind::Resample, 0);
        let n = self.batch;
        let (x, out) = pair(self.work, src, dst);
        let per = channels * h * w;
        let x = &x[..n * per];
        self.pool.split_batch(
            &mut out[..n * channels * ho * wo],
            n,
            channels,
            1,
            |_, s, cr, piece| {
                let x = &x[s * per..(s + 1) * per];
                match r {
                    Updown::Up => k::upsample_nearest2x(x, h, w, cr, piece),
                    Updown::Down => k::avg_pool2x2(x, h, w, cr, piece),
                    Updown::None => piece.copy_from_slice(&x[cr.start * h * w..cr.end * h * w]),
                }
                Ok(())
            },
        )
    }

    /// `work[dst] += work[src]` over the first `channels·hw` values of every sample.
    fn add(
        &mut self,
        src: usize,
        dst: usize,
        channels: usize,
        hw: usize,
    ) -> Result<(), KernelError> {
        let _p = profile::scope(Kind::Add, 0);
        let rows = self.batch * channels;
        let (x, out) = pair(self.work, src, dst);
        let x = &x[..rows * hw];
        self.pool
            .split(&mut out[..rows * hw], rows, 1, |_, cr, piece| {
                k::add_inplace(piece, &x[cr.start * hw..cr.end * hw]);
                Ok(())
            })
    }

    /// guided-diffusion ResBlock (adm_unet.md §4), input in `cur`, output in another buffer.
    fn res(&mut self, r: &ResP, h: usize, w: usize) -> Result<(), KernelError> {
        let x = self.cur;
        let [a, b] = others(x);
        let (ho, wo) = r.updown.resampled(h, w);
        let (hw, hwo) = (h * w, ho * wo);
        let nb = self.batch;
        // emb_layers: Linear(SiLU(emb)) (the SiLU was applied once for all blocks).
        let emb_out = r.emb.bias.len();
        linear_batch(
            self.pool,
            self.emb_silu,
            nb,
            &r.emb,
            &mut self.film[..nb * emb_out],
        )?;
        // in_layers: GroupNorm, SiLU, [resample], conv. `hb` holds h, `fb` is free.
        self.norm(&r.in_norm, x, a, hw, None, true)?;
        let (hb, fb) = if r.updown == Updown::None {
            self.conv(&r.in_conv, a, b, h, w)?;
            (b, a)
        } else {
            self.resample(r.updown, r.c_in, a, b, h, w)?;
            self.conv(&r.in_conv, b, a, ho, wo)?;
            (a, b)
        };
        let n = r.c_out * hwo;
        let film = std::mem::take(&mut self.film);
        let film_all = &film[..nb * emb_out];
        if !r.scale_shift {
            // h + emb_out[:, :, None, None] before the whole out_layers.
            let _p = profile::scope(Kind::Add, 0);
            let (_, hbuf) = pair(self.work, fb, hb);
            self.pool
                .split_batch(&mut hbuf[..nb * n], nb, r.c_out, 1, |_, s, cr, piece| {
                    let film = &film_all[s * emb_out..(s + 1) * emb_out];
                    for (row, &e) in piece.chunks_exact_mut(hwo).zip(&film[cr]) {
                        row.iter_mut().for_each(|v| *v += e);
                    }
                    Ok(())
                })?;
        }
        // out_layers: GroupNorm (then FiLM: scale = first half, shift = second), SiLU, conv.
        let scale_shift = r.scale_shift.then_some(film_all);
        let normed = self.norm(&r.out_norm, hb, fb, hwo, scale_shift, true);
        self.film = film;
        normed?;
        self.conv(&r.out_conv, fb, hb, ho, wo)?;
        // skip_connection(x_upd(x)) + h.
        let mut skip_src = x;
        if r.updown != Updown::None {
            self.resample(r.updown, r.c_in, x, fb, h, w)?;
            skip_src = fb;
        }
        match &r.skip {
            None => self.add(skip_src, hb, r.c_out, hwo)?,
            Some(s) => {
                let spare = if skip_src == x { fb } else { x };
                self.conv(s, skip_src, spare, ho, wo)?;
                self.add(spare, hb, r.c_out, hwo)?;
            }
        }
        self.cur = hb;
        Ok(())
    }

    /// guided-diffusion AttentionBlock (adm_unet.md §5): x + proj_out(attention(qkv(norm(x)))).
    fn attention(&mut self, at: &AttnP, h: usize, w: usize) -> Result<(), KernelError> {
        let x = self.cur;
        let [a, b] = others(x);
        let (c, t) = (at.channels, h * w);
        let n = self.batch;
        self.norm(&at.norm, x, a, t, None, false)?;
        self.conv(&at.qkv, a, b, h, w)?;
        {
            let (qkv, dst) = pair(self.work, b, a);
            let qkv = &qkv[..n * 3 * c * t];
            let scratch = self.scratch;
            let (heads, order) = (at.heads, at.order);
            let _p = profile::scope(Kind::Attention, (n * 2 * c * t * t) as u64);
            self.pool
                .split_batch(&mut dst[..n * c * t], n, heads, 1, |i, s, hr, piece| {
                    let mut sc = scratch.lock(i);
                    let qkv = &qkv[s * 3 * c * t..(s + 1) * 3 * c * t];
                    k::QkvAttention {
                        channels: c,
                        t,
                        heads,
                        order,
                    }
                    .forward(qkv, hr, piece, &mut sc)
                })?;
        }
        self.conv(&at.proj, a, b, h, w)?;
        self.add(x, b, c, t)?;
        self.cur = b;
        Ok(())
    }
}
