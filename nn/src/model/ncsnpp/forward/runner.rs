//! The program walked for one sample: every op on the arena's work buffers, split over the
//! pool.

use super::*;

/// Two different work buffers: `src` shared, `dst` mutable.
fn two(work: &mut [Vec<f32>; 4], src: usize, dst: usize) -> (&[f32], &mut [f32]) {
    debug_assert_ne!(src, dst);
    if src < dst {
        let (lo, hi) = work.split_at_mut(dst);
        (&lo[src], &mut hi[0])
    } else {
        let (lo, hi) = work.split_at_mut(src);
        (&hi[0], &mut lo[dst])
    }
}

/// The work buffers other than `i`, in index order.
fn others(i: usize) -> [usize; 3] {
    let mut o = [0; 3];
    for (slot, j) in o.iter_mut().zip((0..4).filter(|&j| j != i)) {
        *slot = j;
    }
    o
}

impl Runner<'_, '_> {
    pub(super) fn op(&mut self, op: Op, observe: &mut dyn FnMut(Act, &[f32])) -> Result<()> {
        let hw = |r: usize| r * r;
        let params = self.params;
        match op {
            Op::InputConv(i) => {
                let cv = conv_p(params, i)?;
                let [o, ..] = others(self.cur);
                let res = self.res;
                conv(
                    self.pool,
                    &self.arena.scratch,
                    self.isa,
                    &self.arena.x_scaled,
                    (res, res),
                    cv,
                    &mut self.arena.work[o][..cv.conv.c_out * hw(res)],
                )
                .map_err(|e| anyhow!("all_modules.{i}: {e}"))?;
                (self.cur, self.c) = (o, cv.conv.c_out);
                self.observe_h(Act::Module(i), observe);
            }
            Op::Res(i) => {
                let ModP::Res(r) = &params[i] else {
                    bail!("all_modules.{i}: expected a ResBlock");
                };
                self.res_block(r)
                    .map_err(|e| anyhow!("all_modules.{i}: {e}"))?;
                self.observe_h(Act::Module(i), observe);
            }
            Op::Attn(i) => {
                let ModP::Attn(at) = &params[i] else {
                    bail!("all_modules.{i}: expected an attention block");
                };
                self.attention(at)
                    .map_err(|e| anyhow!("all_modules.{i}: {e}"))?;
                self.observe_h(Act::Module(i), observe);
            }
            Op::Push => {
                let (at, _) = self.arena.slots[self.depth];
                let len = self.c * hw(self.res);
                self.arena.skips[at..at + len].copy_from_slice(&self.arena.work[self.cur][..len]);
                self.depth += 1;
            }
            Op::PopConcat => {
                self.depth -= 1;
                let (at, len) = self.arena.slots[self.depth];
                let start = self.c * hw(self.res);
                self.arena.work[self.cur][start..start + len]
                    .copy_from_slice(&self.arena.skips[at..at + len]);
                self.c += len / hw(self.res);
            }
            Op::InputSkip(i) => {
                let cv = conv_p(params, i)?;
                self.input_skip(i, cv, observe)
                    .map_err(|e| anyhow!("all_modules.{i}: {e}"))?
            }
            Op::OutputHead { norm, conv, first } => {
                let ModP::Norm(np) = &params[norm] else {
                    bail!("all_modules.{norm}: expected the head GroupNorm");
                };
                let cv = conv_p(params, conv)?;
                self.output_head((norm, np), (conv, cv), first, observe)
                    .map_err(|e| anyhow!("all_modules.{norm}/{conv} (output head): {e}"))?
            }
        }
        Ok(())
    }

    fn observe_h(&self, act: Act, observe: &mut dyn FnMut(Act, &[f32])) {
        observe(
            act,
            &self.arena.work[self.cur][..self.c * self.res * self.res],
        );
    }

    /// `work[dst] = conv(work[src])` at width `res`.
    fn conv(&mut self, c: &ConvP, src: usize, dst: usize, res: usize) -> Result<(), KernelError> {
        let (x, out) = two(&mut self.arena.work, src, dst);
        conv(
            self.pool,
            &self.arena.scratch,
            self.isa,
            &x[..c.conv.c_in * res * res],
            (res, res),
            c,
            &mut out[..c.conv.c_out * res * res],
        )
    }

    /// `work[dst] = GroupNorm(work[src])` (+ SiLU) over `p.channels` maps of `hw`.
    fn norm(
        &mut self,
        p: &NormP,
        silu: bool,
        src: usize,
        dst: usize,
        hw: usize,
    ) -> Result<(), KernelError> {
        let n = p.channels * hw;
        let (x, out) = two(&mut self.arena.work, src, dst);
        group_norm(self.pool, &x[..n], hw, p, None, silu, &mut out[..n])
    }

    /// `work[dst] = FIR-resample(work[src])` over `channels` maps of width `res`.
    fn resample(
        &mut self,
        up: Updown,
        channels: usize,
        src: usize,
        dst: usize,
        res: usize,
    ) -> Result<(), KernelError> {
        let (x, out) = two(&mut self.arena.work, src, dst);
        fir(
            self.pool,
            up,
            &x[..channels * res * res],
            channels,
            res,
            out,
        )
    }

    /// `work[dst] ← merge(work[dst], work[src])`: (x + h)/√2 with skip_rescale, else x + h.
    fn merge(
        &mut self,
        skip: usize,
        dst: usize,
        n_ch: usize,
        hw: usize,
    ) -> Result<(), KernelError> {
        let rescale = self.skip_rescale;
        let (x, out) = two(&mut self.arena.work, skip, dst);
        let x = &x[..n_ch * hw];
        map(self.pool, &mut out[..n_ch * hw], n_ch, |r, piece| {
            let xs = &x[r.start * hw..r.end * hw];
            if rescale {
                k::add_skip_rescale(piece, xs)
            } else {
                k::add_inplace(piece, xs);
                Ok(())
            }
        })
    }

    /// `ResnetBlockBigGANpp` (ncsnpp.md §4.2); h in `cur`, result in another buffer.
    fn res_block(&mut self, r: &ResP) -> Result<(), KernelError> {
        let b = &r.block;
        let (x, [bb, cb, db]) = (self.cur, others(self.cur));
        let (res, ro) = (b.res, b.res_out());
        let (hw, hwo) = (res * res, ro * ro);
        if self.c != b.c_in || self.res != res {
            return Err(KernelError::Shape(
                "ResBlock input does not match the program",
            ));
        }
        // Dense_0(SiLU(temb)) (the SiLU was applied once for all blocks).
        {
            let a = &mut *self.arena;
            linear(self.pool, &a.temb_silu, &r.dense, &mut a.dense[..b.c_out])?;
        }
        // GroupNorm_0 + SiLU, then [FIR resample], then Conv_0 (+ Dense_0 per channel).
        self.norm(&r.norm0, true, x, bb, hw)?;
        let src0 = if b.updown == Updown::None {
            bb
        } else {
            self.resample(b.updown, b.c_in, bb, cb, res)?;
            cb
        };
        self.conv(&r.conv0, src0, db, ro)?;
        {
            let dense = &self.arena.dense[..b.c_out];
            map(
                self.pool,
                &mut self.arena.work[db][..b.c_out * hwo],
                b.c_out,
                |cr, piece| {
                    for (row, &e) in piece.chunks_exact_mut(hwo).zip(&dense[cr]) {
                        row.iter_mut().for_each(|v| *v += e);
                    }
                    Ok(())
                },
            )?;
        }
        // GroupNorm_1 + SiLU, (Dropout: identity), Conv_1.
        self.norm(&r.norm1, true, db, src0, hwo)?;
        self.conv(&r.conv1, src0, db, ro)?;
        // Shortcut: [FIR resample] x, [Conv_2], then merge into db.
        let mut skip = x;
        if b.updown != Updown::None {
            self.resample(b.updown, b.c_in, x, bb, res)?;
            skip = bb;
        }
        if let Some(c2) = &r.conv2 {
            let spare = if skip == bb { cb } else { bb };
            self.conv(c2, skip, spare, ro)?;
            skip = spare;
        }
        self.merge(skip, db, b.c_out, hwo)?;
        (self.cur, self.c, self.res) = (db, b.c_out, ro);
        Ok(())
    }

    /// `AttnBlockpp` (ncsnpp.md §4.3), single head; h in `cur`, result in another buffer.
    fn attention(&mut self, at: &AttnP) -> Result<(), KernelError> {
        let (c, t) = (at.channels, self.res * self.res);
        if self.c != c {
            return Err(KernelError::Shape(
                "attention input does not match the program",
            ));
        }
        let (x, [bb, cb, db]) = (self.cur, others(self.cur));
        self.norm(&at.norm, false, x, bb, t)?;
        // q | k | v stacked as [3C, T]: the `New` (q|k|v first) order with one head.
        {
            let (h, qkv) = two(&mut self.arena.work, bb, cb);
            let h = &h[..c * t];
            for (j, part) in qkv[..3 * c * t].chunks_exact_mut(c * t).enumerate() {
                nin(self.pool, h, c, t, &at.nin[j], part)?;
            }
        }
        {
            let (qkv, out) = two(&mut self.arena.work, cb, db);
            let qkv = &qkv[..3 * c * t];
            let scratch = &self.arena.scratch;
            self.pool.split(&mut out[..c * t], 1, 1, |i, hr, piece| {
                let mut s = scratch.lock(i);
                k::QkvAttention {
                    channels: c,
                    t,
                    heads: 1,
                    order: k::QkvOrder::New,
                }
                .forward(qkv, hr, piece, &mut s)
            })?;
        }
        {
            let (o, dst) = two(&mut self.arena.work, db, bb);
            nin(self.pool, &o[..c * t], c, t, &at.nin[3], &mut dst[..c * t])?;
        }
        self.merge(x, bb, c, t)?;
        self.cur = bb;
        Ok(())
    }

    /// input_skip: FIR-downsample the input pyramid, then h = Conv_0(pyramid) + h.
    fn input_skip(
        &mut self,
        i: usize,
        cv: &ConvP,
        observe: &mut dyn FnMut(Act, &[f32]),
    ) -> Result<(), KernelError> {
        let ch = self.image_channels;
        let (src, r) = self.pyr_in;
        let dst = 1 - src;
        let n_in = ch * r * r;
        let n_out = n_in / 4;
        {
            let [p0, p1] = &mut self.arena.pyr_in;
            let (x, out) = if src == 0 { (&*p0, p1) } else { (&*p1, p0) };
            observe(Act::PyramidDown(self.downs, false), &x[..n_in]);
            fir(
                self.pool,
                Updown::Down,
                &x[..n_in],
                ch,
                r,
                &mut out[..n_out],
            )?;
            observe(Act::PyramidDown(self.downs, true), &out[..n_out]);
        }
        self.downs += 1;
        self.pyr_in = (dst, r / 2);
        if self.res != r / 2 || self.c != cv.conv.c_out {
            return Err(KernelError::Shape(
                "Combine input does not match the program",
            ));
        }
        let [o, ..] = others(self.cur);
        let hw = self.res * self.res;
        {
            let a = &mut *self.arena;
            let pyr = &a.pyr_in[dst][..n_out];
            conv(
                self.pool,
                &a.scratch,
                self.isa,
                pyr,
                (self.res, self.res),
                cv,
                &mut a.work[o][..self.c * hw],
            )?;
        }
        let (y, h) = two(&mut self.arena.work, o, self.cur);
        let y = &y[..self.c * hw];
        map(self.pool, &mut h[..self.c * hw], self.c, |r, piece| {
            k::add_inplace(piece, &y[r.start * hw..r.end * hw]);
            Ok(())
        })?;
        self.observe_h(Act::Module(i), observe);
        Ok(())
    }

    /// output_skip: head = Conv(SiLU(GroupNorm(h))); pyramid = head or FIR-up(pyramid) + head.
    fn output_head(
        &mut self,
        (norm_i, np): (usize, &NormP),
        (conv_i, cv): (usize, &ConvP),
        first: bool,
        observe: &mut dyn FnMut(Act, &[f32]),
    ) -> Result<(), KernelError> {
        let (res, hw) = (self.res, self.res * self.res);
        let [o, ..] = others(self.cur);
        self.norm(np, false, self.cur, o, hw)?;
        let n = np.channels * hw;
        observe(Act::Module(norm_i), &self.arena.work[o][..n]);
        map(
            self.pool,
            &mut self.arena.work[o][..n],
            np.channels,
            |_, piece| {
                k::silu_inplace(piece);
                Ok(())
            },
        )?;
        let ch = self.image_channels;
        let m = ch * hw;
        {
            let a = &mut *self.arena;
            conv(
                self.pool,
                &a.scratch,
                self.isa,
                &a.work[o][..n],
                (res, res),
                cv,
                &mut a.head[..m],
            )?;
        }
        observe(Act::Module(conv_i), &self.arena.head[..m]);
        let a = &mut *self.arena;
        if first {
            a.pyr_out[self.pyr_out][..m].copy_from_slice(&a.head[..m]);
            return Ok(());
        }
        let src = self.pyr_out;
        let [p0, p1] = &mut a.pyr_out;
        let (x, out) = if src == 0 { (&*p0, p1) } else { (&*p1, p0) };
        let n_in = m / 4;
        observe(Act::PyramidUp(self.ups, false), &x[..n_in]);
        fir(
            self.pool,
            Updown::Up,
            &x[..n_in],
            ch,
            res / 2,
            &mut out[..m],
        )?;
        observe(Act::PyramidUp(self.ups, true), &out[..m]);
        k::add_inplace(&mut out[..m], &a.head[..m]);
        self.ups += 1;
        self.pyr_out = 1 - src;
        Ok(())
    }
}

/// `out = NIN(x)` over `t` positions, split over output channels.
fn nin(
    pool: &Pool,
    x: &[f32],
    c_in: usize,
    t: usize,
    p: &NinP,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let c_out = p.bias.len();
    pool.split(out, c_out, 8, |_, o, piece| {
        k::nin(x, c_in, t, p.weight, p.bias, o, piece)
    })
}

/// FIR up/down-sampling of `channels` maps of width `res`, split over channels.
fn fir(
    pool: &Pool,
    dir: Updown,
    x: &[f32],
    channels: usize,
    res: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let n = match dir {
        Updown::Up => channels * 4 * res * res,
        Updown::Down => channels * res * res / 4,
        Updown::None => return Err(KernelError::Shape("fir: no resampling requested")),
    };
    map(pool, &mut out[..n], channels, |cr, piece| match dir {
        Updown::Up => k::fir_upsample2x(x, res, res, cr, piece),
        _ => k::fir_downsample2x(x, res, res, cr, piece),
    })
}
