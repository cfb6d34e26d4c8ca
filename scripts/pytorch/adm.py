"""Compact PyTorch definition of the ADM U-Net (guided-diffusion `UNetModel`), for benchmarking.

Written from /work/shared/docs/adm_unet.md, not copied from guided-diffusion. Module and
parameter names follow guided-diffusion exactly, so its state_dicts (and the golden
weights.safetensors files) load with strict=True. Only what our configs use is covered:
2-D images, no class conditioning, float32 compute.

Config input (formats.md §2): a flat JSON object with `arch: "adm"` and guided-diffusion
`create_model` names plus `in_channels`, the nested golden form (`create_model_kwargs`, with
`in_channels` at top level), or the built-in name `adm-ffhq256` (DPS FFHQ-256, adm_unet.md §1).
"""

import json
import math

import torch
import torch.nn.functional as F
from torch import nn

# DPS configs/model_config.yaml (adm_unet.md §1).
ADM_FFHQ256 = {
    "arch": "adm",
    "image_size": 256,
    "num_channels": 128,
    "num_res_blocks": 1,
    "channel_mult": "",
    "learn_sigma": True,
    "class_cond": False,
    "use_checkpoint": False,
    "attention_resolutions": 16,
    "num_heads": 4,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
    "resblock_updown": True,
    "use_fp16": False,
    "use_new_attention_order": False,
}
BUILTIN = {"adm-ffhq256": ADM_FFHQ256}

# guided-diffusion's create_model default channel_mult when the string is empty.
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def load_config(spec):
    """Config name or JSON path -> flat create_model-style dict (with in_channels)."""
    if spec in BUILTIN:
        return dict(BUILTIN[spec])
    with open(spec) as f:
        raw = json.load(f)
    if "create_model_kwargs" in raw:
        cfg = dict(raw["create_model_kwargs"])
        cfg["in_channels"] = raw.get("in_channels", 3)
        return cfg
    if raw.get("arch") != "adm":
        raise ValueError(f"{spec}: not an ADM config (arch={raw.get('arch')!r})")
    return raw


def unet_kwargs(cfg):
    """create_model-style dict -> UNetModel keyword arguments (create_model's mapping)."""
    if cfg.get("class_cond", False):
        raise ValueError("class_cond is not supported")
    size = cfg["image_size"]
    mult = cfg.get("channel_mult", "")
    if mult == "":
        mult = DEFAULT_CHANNEL_MULT[size]
    elif isinstance(mult, str):
        mult = tuple(int(m) for m in mult.split(","))
    res = cfg.get("attention_resolutions", "16")
    res = [res] if isinstance(res, int) else [int(r) for r in str(res).split(",")]
    in_ch = cfg.get("in_channels", 3)
    return dict(
        in_channels=in_ch,
        model_channels=cfg["num_channels"],
        out_channels=in_ch * (2 if cfg.get("learn_sigma", False) else 1),
        num_res_blocks=cfg["num_res_blocks"],
        attention_ds=tuple(size // r for r in res),  # downsample factors, not resolutions
        channel_mult=tuple(mult),
        num_heads=cfg.get("num_heads", 1),
        num_head_channels=cfg.get("num_head_channels", -1),
        num_heads_upsample=cfg.get("num_heads_upsample", -1),
        use_scale_shift_norm=cfg.get("use_scale_shift_norm", False),
        resblock_updown=cfg.get("resblock_updown", False),
        use_new_attention_order=cfg.get("use_new_attention_order", False),
    )


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) computed in float32, cast back to the input dtype."""

    def __init__(self, channels):
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding [N, dim]: cos half first, then sin; t*freq formed in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class Upsample(nn.Module):
    """Nearest 2x, then (optionally) a 3x3 conv named `conv`."""

    def __init__(self, channels, use_conv):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = conv3x3(channels, channels)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv (pad 1) or 2x2 average pool, both named `op`."""

    def __init__(self, channels, use_conv):
        super().__init__()
        self.op = conv3x3(channels, channels, stride=2) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    """adm_unet.md §4. up/down: parameter-free resample between in_layers' SiLU and conv."""

    def __init__(self, c_in, emb_dim, c_out, scale_shift, up=False, down=False):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(c_in), nn.SiLU(), conv3x3(c_in, c_out))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(c_in, False), Upsample(c_in, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(c_in, False), Downsample(c_in, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(c_out), nn.SiLU(), nn.Dropout(0.0), conv3x3(c_out, c_out)
        )
        self.skip_connection = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, emb):
        if self.updown:
            norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
            h = conv(self.h_upd(norm_act(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)  # first half is the scale
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)  # additive: emb goes in before the out-GroupNorm
        return self.skip_connection(x) + h


class QKVAttention(nn.Module):
    """Multi-head attention on qkv [N, 3*H*ch, T]; `legacy` = heads split before q|k|v."""

    def __init__(self, heads, legacy):
        super().__init__()
        self.heads, self.legacy = heads, legacy

    def forward(self, qkv):
        n, width, t = qkv.shape
        ch = width // (3 * self.heads)
        if self.legacy:  # per head: [q(ch) | k(ch) | v(ch)]
            q, k, v = qkv.reshape(n * self.heads, 3 * ch, t).split(ch, dim=1)
        else:  # [q(C) | k(C) | v(C)], each split into heads
            q, k, v = (a.reshape(n * self.heads, ch, t) for a in qkv.chunk(3, dim=1))
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)  # over key positions s
        return torch.einsum("bts,bcs->bct", w, v).reshape(n, -1, t)


class AttentionBlock(nn.Module):
    """adm_unet.md §5: x + proj_out(attention(qkv(GN(x)))) over flattened spatial positions."""

    def __init__(self, channels, heads, legacy):
        super().__init__()
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.attention = QKVAttention(heads, legacy)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(n, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers in order; ResBlocks also get the time embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    """guided-diffusion UNetModel (adm_unet.md §6 construction rule); forward(x, t) -> out."""

    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks, attention_ds,
                 channel_mult, num_heads, num_head_channels, num_heads_upsample,
                 use_scale_shift_norm, resblock_updown, use_new_attention_order):
        super().__init__()
        mc = model_channels
        emb_dim = 4 * mc
        self.model_channels = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        legacy = not use_new_attention_order
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def res(c_in, c_out, **updown):
            return ResBlock(c_in, emb_dim, c_out, use_scale_shift_norm, **updown)

        def attn(c, heads):
            return AttentionBlock(c, heads if num_head_channels == -1 else c // num_head_channels, legacy)

        ch = int(channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv3x3(in_channels, ch))])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skips.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), conv3x3(ch, out_channels))

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h, hs = x.float(), []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)  # decoder state first, skip second
        return self.out(h)


def build(spec):
    """Config name or JSON path -> UNetModel (default PyTorch init; zero_module not applied)."""
    return UNetModel(**unet_kwargs(load_config(spec)))


def count_macs(model, x, t):
    """Multiply-adds of one forward: convs, Linears and the two attention matmuls (QK^T, AV).

    Counted with forward hooks from layer shapes; works on the meta device (no compute).
    """
    total = 0

    def conv_or_linear(mod, inp, out):
        nonlocal total
        w = mod.weight
        per_output = w.numel() // w.shape[0]  # in_channels * kernel area (or in_features)
        total += out.numel() * per_output

    def attention(mod, inp, out):
        nonlocal total
        n, width, t_len = inp[0].shape
        c = width // 3
        total += 2 * n * c * t_len * t_len  # QK^T and AV, each N*C*T*T

    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(conv_or_linear))
        elif isinstance(mod, QKVAttention):
            hooks.append(mod.register_forward_hook(attention))
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return total


def macs_for(spec, size, batch=1):
    """MACs for a config at size x size, batch N, computed on the meta device."""
    kw = unet_kwargs(load_config(spec))
    with torch.device("meta"):
        model = UNetModel(**kw)
        x = torch.empty(batch, kw["in_channels"], size, size)
        t = torch.empty(batch)
    return count_macs(model, x, t)
