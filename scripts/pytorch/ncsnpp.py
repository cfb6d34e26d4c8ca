"""Compact PyTorch definition of score_sde's NCSN++ (`NCSNpp`, VE, FFHQ-256 code paths).

Written from /work/shared/docs/ncsnpp.md (score_sde_pytorch is not vendored), for the golden
check and the CPU benchmark. The module list is built in score_sde's order, so state_dict
names are the original ones (`all_modules.{i}.…`, `sigmas`) and the golden
weights.safetensors, or a `host convert` output, load with strict=True. Only the paths of the
FFHQ config are implemented (biggan ResBlocks with FIR resampling, output_skip / input_skip
pyramids combined by sums, Gaussian Fourier embedding of ln sigma, scale_by_sigma); other
switches are refused. FIR resampling is upfirdn2d as score_sde runs it on CPU
(`upfirdn2d_native`: zero insertion, padding, a single-channel conv, then striding), so the
benchmark pays what the reference code pays.

Config input (formats.md §2): the flat form (`arch: "ncsnpp"` with score_sde field names), the
nested score_sde form (a top-level `config` with `model` and `data`, as in the golden folders),
or the built-in name `ncsnpp-ffhq256`.

Call: model(x, sigma) with x [B,C,H,W] in data space ([0,1] plus noise) and sigma [B];
returns the score (ncsnpp.md §2).

Run as a script it is the NCSN++ side of compare.sh, like bench.py for ADM: random weights
(default init, then every parameter except the Fourier W += 0.02 * N(0, 1), as for the golden
data), float32, inference_mode, one warm-up forward, --iters timed ones; sigma = 10 * (i + 1)
for sample i and x ~ N(0, 1), as `host bench` uses. The LAST line is exactly

    median_s=<seconds> gflops=<effective GFLOP/s> iters=<n>

with effective GFLOP/s = 2 * MACs / median_s / 1e9 (MACs as ncsnpp.md §7 counts them).

Usage: python scripts/pytorch/ncsnpp.py --config ncsnpp-ffhq256|C.json [--size 256] [--batch 1] \
           [--iters 3] [--threads 2] [--layout nchw|channels_last] [--f16-weights no]
       (--size must equal the config's image_size; the golden check is in check_golden.py)
"""

import argparse
import json
import math
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# configs/ve/ffhq_256_ncsnpp_continuous.py as resolved (ncsnpp.md §1), flat form.
NCSNPP_FFHQ256 = {
    "arch": "ncsnpp",
    "image_size": 256,
    "num_channels": 3,
    "centered": False,
    "nf": 128,
    "ch_mult": [1, 1, 2, 2, 2, 2, 2],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "fir_kernel": [1, 3, 3, 1],
    "skip_rescale": True,
    "scale_by_sigma": True,
    "num_scales": 2000,
}
BUILTIN = {"ncsnpp-ffhq256": NCSNPP_FFHQ256}

# Switches with exactly one implemented value (the FFHQ config's).
FIXED = {
    "resblock_type": "biggan",
    "fir": True,
    "progressive": "output_skip",
    "progressive_input": "input_skip",
    "progressive_combine": "sum",
    "embedding_type": "fourier",
    "conditional": True,
    "nonlinearity": "swish",
    "conv_size": 3,
}


def _ints(v):
    return [int(s) for s in v.split(",")] if isinstance(v, str) else [int(s) for s in v]


def load_config(spec):
    """Config name or JSON path -> flat dict (model fields plus image_size, num_channels, centered)."""
    if spec in BUILTIN:
        return dict(BUILTIN[spec])
    with open(spec) as f:
        raw = json.load(f)
    if "config" in raw:
        cfg = dict(raw["config"]["model"])
        cfg.update({k: raw["config"]["data"][k] for k in ("image_size", "num_channels", "centered")
                    if k in raw["config"]["data"]})
    elif raw.get("arch") == "ncsnpp":
        cfg = dict(raw)
    else:
        raise ValueError(f"{spec}: not an NCSN++ config (arch={raw.get('arch')!r})")
    return cfg


def ncsnpp_kwargs(cfg):
    """Flat config dict -> NCSNpp keyword arguments; unsupported switches raise."""
    for key, value in FIXED.items():
        got = cfg.get(key, value)
        if (got.lower() if isinstance(got, str) else got) != value:
            raise ValueError(f"{key} = {got!r}: only {value!r} is implemented")
    return dict(
        image_size=int(cfg["image_size"]),
        num_channels=int(cfg.get("num_channels", 3)),
        centered=bool(cfg.get("centered", False)),
        nf=int(cfg["nf"]),
        ch_mult=_ints(cfg["ch_mult"]),
        num_res_blocks=int(cfg["num_res_blocks"]),
        attn_resolutions=_ints(cfg["attn_resolutions"]),
        fir_kernel=_ints(cfg.get("fir_kernel", [1, 3, 3, 1])),
        skip_rescale=bool(cfg.get("skip_rescale", True)),
        scale_by_sigma=bool(cfg.get("scale_by_sigma", True)),
        num_scales=int(cfg.get("num_scales", 2000)),
    )


# ---------------------------------------------------------------- FIR resampling (ncsnpp.md §5)

def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """upfirdn2d_native: zero-insert by `up`, pad (p0, p1) on both axes, true-convolve with the
    2-D kernel ("valid"), keep every `down`-th sample. Every channel independently."""
    b, c, h, w = x.shape
    p0, p1 = pad
    out = x.reshape(b * c, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])  # sample i -> i*up, then up-1 zeros
    out = out.reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, [p0, p1, p0, p1])
    out = F.conv2d(out, torch.flip(kernel, [0, 1])[None, None])
    out = out[:, :, ::down, ::down]
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


def fir_kernel_2d(k):
    """outer(k, k) / sum, as a float32 tensor (score_sde `_setup_kernel`)."""
    k = torch.tensor(k, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum()


def upsample_2d(x, k, factor=2, gain=1):
    p = k.shape[0] - factor
    return upfirdn2d(x, k * (gain * factor ** 2), up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k, factor=2, gain=1):
    p = k.shape[0] - factor
    return upfirdn2d(x, k * gain, down=factor, pad=((p + 1) // 2, p // 2))


# ---------------------------------------------------------------- building blocks (ncsnpp.md §4)

def group_norm(channels):
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


def conv3x3(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 3, padding=1)


def conv1x1(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 1)


class GaussianFourierProjection(nn.Module):
    """[sin(phi), cos(phi)], phi = ((ln sigma * W) * 2) * pi in float32; W fixed (scale included)."""

    def __init__(self, size, scale):
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, u):
        phi = u[:, None] * self.W[None, :] * 2 * np.pi
        return torch.cat([torch.sin(phi), torch.cos(phi)], dim=-1)


class NIN(nn.Module):
    """Per-pixel linear map; W stored [in, out] (not nn.Linear's [out, in])."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.W = nn.Parameter(torch.randn(c_in, c_out) / math.sqrt(c_in))
        self.b = nn.Parameter(torch.zeros(c_out))

    def forward(self, x):
        y = torch.einsum("bhwc,co->bhwo", x.permute(0, 2, 3, 1), self.W) + self.b
        return y.permute(0, 3, 1, 2)


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all HW positions, scale C^-1/2; (x + NIN_3(o)) / sqrt 2."""

    def __init__(self, channels, skip_rescale):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = (NIN(channels, channels) for _ in range(4))
        self.skip_rescale = skip_rescale

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(c) ** (-0.5))
        w = F.softmax(w.reshape(b, hh, ww, hh * ww), dim=-1).reshape(b, hh, ww, hh, ww)
        h = self.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """ncsnpp.md §4.2: GN, SiLU, [FIR up/down of h and x], Conv_0, + Dense_0(SiLU(temb)),
    GN, SiLU, Conv_1; shortcut Conv_2 (1x1) when the width changes or the block resamples."""

    def __init__(self, c_in, c_out, temb_dim, fir_kernel, skip_rescale, up=False, down=False):
        super().__init__()
        self.GroupNorm_0 = group_norm(c_in)
        self.Conv_0 = conv3x3(c_in, c_out)
        self.Dense_0 = nn.Linear(temb_dim, c_out)
        self.GroupNorm_1 = group_norm(c_out)
        self.Conv_1 = conv3x3(c_out, c_out)
        if c_in != c_out or up or down:
            self.Conv_2 = conv1x1(c_in, c_out)
        self.up, self.down, self.skip_rescale = up, down, skip_rescale
        self.register_buffer("fir", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x, temb):
        h = F.silu(self.GroupNorm_0(x))
        if self.up:
            h, x = upsample_2d(h, self.fir), upsample_2d(x, self.fir)
        elif self.down:
            h, x = downsample_2d(h, self.fir), downsample_2d(x, self.fir)
        h = self.Conv_0(h)
        h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(F.silu(self.GroupNorm_1(h)))  # dropout 0: identity
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """input_skip, sum: h + Conv_0(pyramid) (1x1 conv, no rescale)."""

    def __init__(self, c_pyr, c_out):
        super().__init__()
        self.Conv_0 = conv1x1(c_pyr, c_out)

    def forward(self, pyramid, h):
        return self.Conv_0(pyramid) + h


# ---------------------------------------------------------------- the network (ncsnpp.md §3)

class NCSNpp(nn.Module):
    """score_sde NCSNpp, module list in score_sde's construction order (state_dict names)."""

    def __init__(self, image_size, num_channels, centered, nf, ch_mult, num_res_blocks,
                 attn_resolutions, fir_kernel, skip_rescale, scale_by_sigma, num_scales,
                 fourier_scale=16.0):
        super().__init__()
        self.centered, self.scale_by_sigma = centered, scale_by_sigma
        self.num_res_blocks, self.attn_resolutions = num_res_blocks, tuple(attn_resolutions)
        self.levels = len(ch_mult)
        self.register_buffer("sigmas", torch.zeros(num_scales))  # unused by the Fourier path
        self.register_buffer("fir", fir_kernel_2d(fir_kernel), persistent=False)
        temb_dim = 4 * nf
        resolutions = [image_size // 2 ** i for i in range(self.levels)]

        def res(c_in, c_out=None, **updown):
            return ResnetBlockBigGANpp(c_in, c_out or c_in, temb_dim, fir_kernel, skip_rescale, **updown)

        m = [GaussianFourierProjection(nf, fourier_scale),
             nn.Linear(2 * nf, temb_dim), nn.Linear(temb_dim, temb_dim),
             conv3x3(num_channels, nf)]
        hs_c, c = [nf], nf
        for level in range(self.levels):
            for _ in range(num_res_blocks):
                m.append(res(c, nf * ch_mult[level]))
                c = nf * ch_mult[level]
                if resolutions[level] in attn_resolutions:
                    m.append(AttnBlockpp(c, skip_rescale))
                hs_c.append(c)
            if level != self.levels - 1:
                m += [res(c, down=True), Combine(num_channels, c)]
                hs_c.append(c)
        m += [res(c), AttnBlockpp(c, skip_rescale), res(c)]  # mid block
        for level in reversed(range(self.levels)):
            for _ in range(num_res_blocks + 1):
                m.append(res(c + hs_c.pop(), nf * ch_mult[level]))
                c = nf * ch_mult[level]
            if resolutions[level] in attn_resolutions:
                m.append(AttnBlockpp(c, skip_rescale))
            m += [group_norm(c), conv3x3(c, num_channels)]  # output head
            if level != 0:
                m.append(res(c, up=True))
        self.all_modules = nn.ModuleList(m)

    def forward(self, x, sigma):
        mods = iter(self.all_modules)
        temb = next(mods)(torch.log(sigma))
        temb = next(mods)(temb)
        temb = next(mods)(F.silu(temb))  # no activation after the MLP: each block applies SiLU
        if not self.centered:
            x = 2 * x - 1.0
        pyramid_in = x
        hs = [next(mods)(x)]
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if level != self.levels - 1:
                h = next(mods)(hs[-1], temb)
                pyramid_in = downsample_2d(pyramid_in, self.fir)
                hs.append(next(mods)(pyramid_in, h))
        h = hs[-1]
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        pyramid = None
        for level in reversed(range(self.levels)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)  # running h first
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            norm, conv = next(mods), next(mods)
            head = conv(F.silu(norm(h)))
            pyramid = head if pyramid is None else upsample_2d(pyramid, self.fir) + head
            if level != 0:
                h = next(mods)(h, temb)
        assert not hs and next(mods, None) is None, "module list out of step with the forward"
        if self.scale_by_sigma:
            pyramid = pyramid / sigma.reshape(-1, 1, 1, 1)
        return pyramid


def build(spec):
    """Config name or JSON path -> NCSNpp (default init)."""
    return NCSNpp(**ncsnpp_kwargs(load_config(spec)))


def count_macs(model, x, sigma):
    """Multiply-adds as ncsnpp.md §7 counts them: convs, NIN, QK^T and AV, Linears (FIR
    resampling, norms and element-wise ops excluded). Hooks; works on the meta device."""
    total = 0

    def conv_or_linear(mod, inp, out):
        nonlocal total
        w = mod.weight
        total += out.numel() * (w.numel() // w.shape[0])

    def nin(mod, inp, out):
        nonlocal total
        total += out.numel() * mod.W.shape[0]

    def attention(mod, inp, out):
        nonlocal total
        b, c, h, w = inp[0].shape
        total += 2 * b * c * (h * w) ** 2

    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(conv_or_linear))
        elif isinstance(mod, NIN):
            hooks.append(mod.register_forward_hook(nin))
        elif isinstance(mod, AttnBlockpp):
            hooks.append(mod.register_forward_hook(attention))
    try:
        with torch.no_grad():
            model(x, sigma)
    finally:
        for h in hooks:
            h.remove()
    return total


def macs_for(spec, batch=1):
    """MACs of one forward at the config's image_size, batch N (meta device, no compute)."""
    kw = ncsnpp_kwargs(load_config(spec))
    with torch.device("meta"):
        model = NCSNpp(**kw)
        x = torch.empty(batch, kw["num_channels"], kw["image_size"], kw["image_size"])
        sigma = torch.ones(batch)
    return count_macs(model, x, sigma)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="config JSON path or ncsnpp-ffhq256")
    ap.add_argument("--size", type=int, help="input height = width; must equal image_size (default: it)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layout", choices=("nchw", "channels_last"), default="nchw")
    ap.add_argument("--f16-weights", choices=("no",), default="no",
                    help="accepted for command-line parity with `host bench`; PyTorch runs float32 weights")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def bench():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kw = ncsnpp_kwargs(load_config(args.config))
    size = kw["image_size"]
    if args.size not in (None, size):
        raise SystemExit(f"--size {args.size}: NCSN++ runs only at its image_size {size}")
    model = NCSNpp(**kw).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "all_modules.0.W":
                p.add_(torch.randn_like(p), alpha=0.02)
    x = torch.randn(args.batch, kw["num_channels"], size, size)
    sigma = 10.0 * torch.arange(1, args.batch + 1, dtype=torch.float32)
    if args.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    macs = macs_for(args.config, args.batch)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, layout {args.layout}, "
          f"config {args.config}, size {size}, batch {args.batch}, "
          f"{macs / 1e9:.3f} G MAC per forward", flush=True)
    times = []
    with torch.inference_mode():
        for i in range(args.iters + 1):
            start = time.perf_counter()
            out = model(x, sigma)
            elapsed = time.perf_counter() - start
            print(f"{'warm-up' if i == 0 else f'iter {i}'}: {elapsed:.4f} s", flush=True)
            if i:
                times.append(elapsed)
    assert torch.isfinite(out).all(), "non-finite output"
    print(f"output std {out.std().item():.3g}, max|value| {out.abs().max().item():.3g}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    median = statistics.median(times)
    print(f"peak_rss_mib={peak_mib:.1f} (after import torch: {import_mib:.1f})")
    print(f"median_s={median:.6f} gflops={2 * macs / median / 1e9:.3f} iters={args.iters}")


if __name__ == "__main__":
    bench()
