"""GPU timing of the ADM U-Net forward in PyTorch float32 (the reference for `host selftest`'s
timings), with TF32 off and at PyTorch's default, in one run so the ratio is measured on the
same machine. Random weights as bench.py (default init + 0.02 * N(0, 1)).

Prints one line per case, then nothing else:
    torch_gpu tf32=<off|default> batch=<B> median_s=<s> gflops=<G>

Usage: python gpu_bench.py [--config adm-ffhq256] [--size 256] [--batches 1,8] [--iters 5]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="adm-ffhq256")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA device")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    kw = adm.unet_kwargs(adm.load_config(args.config))
    model = adm.UNetModel(**kw).eval().to(dev)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    default_matmul = torch.backends.cuda.matmul.allow_tf32
    default_cudnn = torch.backends.cudnn.allow_tf32
    for batch in [int(b) for b in args.batches.split(",")]:
        macs = adm.macs_for(args.config, args.size, batch)
        x = torch.randn(batch, kw["in_channels"], args.size, args.size, device=dev)
        t = torch.randint(0, 1000, (batch,), device=dev).float()
        for mode in ("off", "default"):
            torch.backends.cuda.matmul.allow_tf32 = default_matmul if mode == "default" else False
            torch.backends.cudnn.allow_tf32 = default_cudnn if mode == "default" else False
            times = []
            with torch.inference_mode():
                for i in range(args.iters + 1):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    model(x, t)
                    torch.cuda.synchronize()
                    if i:
                        times.append(time.perf_counter() - start)
            med = statistics.median(times)
            print(f"torch_gpu tf32={mode} batch={batch} median_s={med:.6f} gflops={2 * macs / med / 1e9:.1f}", flush=True)


if __name__ == "__main__":
    main()
