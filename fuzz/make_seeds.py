"""Writes small seed inputs for the fuzz targets into corpus-raw/<target>/ (plain Python 3,
no torch). Checkpoint seeds mimic torch.save: a stored zip with <stem>/data.pkl (protocol 2,
GLOBALs collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch.*Storage, BINPERSID
storage ids, an OrderedDict BUILD with _metadata) and <stem>/data/<key> raw storages."""
import collections, io, json, os, pickle, struct, sys, types, zipfile, zlib

torch = types.ModuleType("torch"); utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch; sys.modules["torch._utils"] = utils; torch._utils = utils
def _rebuild_tensor_v2(*a): pass
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class FloatStorage: pass
class DoubleStorage: pass
class HalfStorage: pass
for c in (FloatStorage, DoubleStorage, HalfStorage):
    c.__module__ = "torch"; setattr(torch, c.__name__, c)
SIZES = {FloatStorage: ("f", 4), DoubleStorage: ("d", 8), HalfStorage: ("e", 2)}

class Storage:
    def __init__(self, key, cls, values): self.key, self.cls, self.values = key, cls, values
class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
    def __reduce__(self): return (_rebuild_tensor_v2, self.args)

class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", len(obj.values))
        return None

def save(obj, storages, stem):
    buf = io.BytesIO(); Pickler(buf, protocol=2).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{stem}/data.pkl", buf.getvalue())
        z.writestr(f"{stem}/byteorder", "little")
        for s in storages:
            fmt, _ = SIZES[s.cls]
            z.writestr(f"{stem}/data/{s.key}", struct.pack("<%d%s" % (len(s.values), fmt), *s.values))
        z.writestr(f"{stem}/version", "3\n")
    return buf.getvalue(), out.getvalue()

def write(target, name, data):
    os.makedirs(f"corpus-raw/{target}", exist_ok=True)
    open(f"corpus-raw/{target}/{name}", "wb").write(data)

s0 = Storage("0", FloatStorage, [0.5 * i for i in range(6)])
s1 = Storage("1", DoubleStorage, [1.0, 2.0, 3.0])
s2 = Storage("2", HalfStorage, [1.0, -2.0])
sd = collections.OrderedDict()
sd["conv.weight"] = Tensor(s0, 0, [2, 3], [3, 1])
sd["conv.weight_t"] = Tensor(s0, 0, [3, 2], [1, 3])
sd["sigmas"] = Tensor(s1, 0, [3], [1])
sd["norm.bias"] = Tensor(s2, 1, [1], [1])
sd._metadata = collections.OrderedDict([("", {"version": 1})])
pkl, ckpt = save(sd, [s0, s1, s2], "state")
write("pickle", "state_dict.pkl", pkl); write("checkpoint", "state_dict.pt", ckpt)

model = collections.OrderedDict()
model["module.sigmas"] = Tensor(s1, 0, [3], [1])
model["module.all_modules.0.W"] = Tensor(s2, 0, [2], [1])
model["module.all_modules.1.weight"] = Tensor(s0, 0, [2, 3], [3, 1])
ema_s = Storage("3", FloatStorage, [0.25] * 6)
ema = {"decay": 0.999, "num_updates": 1, "shadow_params": [Tensor(ema_s, 0, [2, 3], [3, 1])]}
opt = {"state": {1: {"step": Tensor(Storage("4", FloatStorage, [1.0]), 0, [], [])}},
       "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "foreach": None,
                         "amsgrad": False, "params": [0, 1, 2]}]}
ckpt_obj = {"optimizer": opt, "model": model, "ema": ema, "step": 1}
pkl, ckpt = save(ckpt_obj, [s0, s1, s2, ema_s, Storage("4", FloatStorage, [1.0])], "archive")
write("pickle", "score_sde.pkl", pkl); write("checkpoint", "score_sde.pth", ckpt)
write("pickle", "proto4.pkl", pickle.dumps({"a": [1, 2.5, "x", None, True, (1, 2, 3)], "big": 2**40}, protocol=4))

# Safetensors: 8-byte header length, JSON header, data.
def safetensors(tensors, meta=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta: header["__metadata__"] = meta
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data
tiny = {"time_embed.0.weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
        "out.2.bias": ("F16", [1], struct.pack("<e", 0.5)),
        "sigmas": ("F64", [1], struct.pack("<d", 3.0))}
write("weights", "tiny.safetensors", safetensors(tiny))
meta = {"tweedie.kind": "vp", "tweedie.output": "eps", "tweedie.noise_input": "t",
        "tweedie.data_range": "-1,1", "tweedie.sigma_min": "0.01", "tweedie.sigma_max": "157",
        "tweedie.config": json.dumps({"arch": "ncsnpp", "image_size": 16, "nf": 8,
                                      "ch_mult": "1,2", "num_res_blocks": 1, "attn_resolutions": "8"})}
write("weights", "meta.safetensors", safetensors(tiny, meta))

# PNG by hand (gray, RGB, RGBA, 16-bit gray).
def png(w, h, color, depth, rows):
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
write("image", "gray1.png", png(1, 1, 0, 8, [b"\x80"]))
write("image", "rgb3.png", png(3, 2, 2, 8, [bytes(range(9)), bytes(range(9, 18))]))
write("image", "rgba2.png", png(2, 2, 6, 8, [bytes(range(8)), bytes(range(8, 16))]))
write("image", "gray16.png", png(2, 1, 0, 16, [b"\x12\x34\xff\xff"]))

# Decompression bombs and oversized headers (issue 22): refused from the header, before any
# decoding; the real bomb is ~170 KB of zlib that inflates to 169 MB of 13000x13000 gray.
def png_stream(w, h, color, depth, data):
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))
def zeros_zlib(w, h):
    z = zlib.compressobj(9); row = b"\x00" * (w + 1)
    return b"".join(z.compress(row) for _ in range(h)) + z.flush()
write("image", "bomb13000.png", png_stream(13000, 13000, 0, 8, zeros_zlib(13000, 13000)))
write("image", "header13000rgb.png", png_stream(13000, 13000, 2, 8, zlib.compress(b"\x00")))
write("image", "wide1e8.png", png_stream(100_000_000, 1, 0, 8, zlib.compress(b"\x00")))
write("image", "cap_plus_one_row.png", png_stream(8192, 8193, 0, 8, zlib.compress(b"\x00")))
write("image", "cap_truncated.png", png_stream(8192, 8192, 2, 8, zlib.compress(b"\x00" * 64)))
# A baseline JPEG whose SOF0 claims 65500x65500 (then ends).
sof = struct.pack(">BHHB", 8, 65500, 65500, 1) + b"\x01\x11\x00"
write("image", "jpeg65500.jpg", b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9")
# Training checkpoints (train_checkpoint target; layout w [2, 3], b [2]): format 2 with its
# integrity hash (nn/src/train/checkpoint.rs), format 1 without, and damaged variants.
import hashlib
def train_ckpt(fmt=2, edit_meta=None, edit_tensors=None):
    layout = [("w", [2, 3]), ("b", [2])]
    values = {"model.": [0.1 * i for i in range(8)], "ema.": [0.05 * i for i in range(8)],
              "exp_avg.": [0.01] * 8, "exp_avg_sq.": [1e-4] * 8}
    tensors = {}
    for prefix in ["model.", "ema.", "exp_avg.", "exp_avg_sq."]:
        v, at = values[prefix], 0
        for name, shape in layout:
            n = shape[0] * (shape[1] if len(shape) > 1 else 1)
            tensors[prefix + name] = ("F32", shape, struct.pack("<%df" % n, *v[at:at + n]))
            at += n
    if edit_tensors: edit_tensors(tensors)
    meta = {"tweedie.checkpoint": str(fmt), "tweedie.step": "3", "tweedie.adam.steps": "3",
            "tweedie.adam.betas": "0.9,0.999", "tweedie.adam.eps": "0.00000001",
            "tweedie.adam.weight_decay": "0", "tweedie.ema.decay": "0.999",
            "tweedie.data.seed": "3", "tweedie.data.epoch": "1", "tweedie.data.position": "2",
            "tweedie.data.len": "5", "tweedie.run": json.dumps({"batch": 1, "seed": 3})}
    if edit_meta: edit_meta(meta)
    if fmt == 2:
        h = hashlib.sha256()
        field = lambda b: h.update(struct.pack("<Q", len(b)) + b)
        for k in sorted(meta):
            field(k.encode()); field(meta[k].encode())
        for name, (_, _, raw) in tensors.items():
            field(name.encode()); h.update(raw)
        meta["tweedie.sha256"] = h.hexdigest()
    return safetensors(tensors, meta)
nan = struct.pack("<f", float("nan"))
def nan_ema(t): t["ema.b"] = ("F32", [2], nan + t["ema.b"][2][4:])
write("train_checkpoint", "v2.safetensors", train_ckpt())
write("train_checkpoint", "v1.safetensors", train_ckpt(fmt=1))
v2 = train_ckpt()
write("train_checkpoint", "v2_flipped_moment.safetensors", v2[:-1] + bytes([v2[-1] ^ 0x10]))
write("train_checkpoint", "v1_nan_ema.safetensors", train_ckpt(fmt=1, edit_tensors=nan_ema))
write("train_checkpoint", "v1_step_mismatch.safetensors",
      train_ckpt(fmt=1, edit_meta=lambda m: m.update({"tweedie.step": "4"})))
