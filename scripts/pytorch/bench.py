"""CPU benchmark of one ADM U-Net forward in PyTorch (the reference side of compare.sh).

Random weights (PyTorch's default init, then every parameter += 0.02 * N(0, 1) as in the golden
data, so no layer stays zero-initialised and GroupNorm scales stay near 1), float32,
inference_mode. One warm-up forward, then --iters timed forwards. Prints each iteration's
seconds, the peak RSS, and as the LAST line exactly

    median_s=<seconds> gflops=<effective GFLOP/s> iters=<n>

where effective GFLOP/s = 2 * MACs / median_s / 1e9 and MACs (convs, Linears, attention QK^T
and AV) are counted from the config at the given size and batch (adm.count_macs).

Usage: python scripts/pytorch/bench.py --config C.json|adm-ffhq256 --size 256 --batch 1 \
           --iters 3 --threads 2 --layout nchw|channels_last [--f16-weights no]
"""

import argparse
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adm  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="config JSON path or adm-ffhq256")
    ap.add_argument("--size", type=int, required=True, help="input height = width")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layout", choices=("nchw", "channels_last"), default="nchw")
    ap.add_argument("--f16-weights", choices=("no",), default="no",
                    help="accepted for command-line parity with `host bench`; PyTorch runs float32 weights")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # ru_maxrss is a high-water mark; its value here is what `import torch` alone costs.
    import_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kw = adm.unet_kwargs(adm.load_config(args.config))
    model = adm.UNetModel(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    x = torch.randn(args.batch, kw["in_channels"], args.size, args.size)
    t = torch.randint(0, 1000, (args.batch,)).float()
    if args.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    macs = adm.macs_for(args.config, args.size, args.batch)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, layout {args.layout}, "
          f"config {args.config}, size {args.size}, batch {args.batch}, "
          f"{macs / 1e9:.3f} G MAC per forward", flush=True)
    times = []
    with torch.inference_mode():
        for i in range(args.iters + 1):
            start = time.perf_counter()
            out = model(x, t)
            elapsed = time.perf_counter() - start
            label = "warm-up" if i == 0 else f"iter {i}"
            print(f"{label}: {elapsed:.4f} s", flush=True)
            if i:
                times.append(elapsed)
    assert torch.isfinite(out).all(), "non-finite output"
    print(f"output std {out.std().item():.3g}, max|value| {out.abs().max().item():.3g}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    median = statistics.median(times)
    print(f"peak_rss_mib={peak_mib:.1f} (after import torch: {import_mib:.1f})")
    print(f"median_s={median:.6f} gflops={2 * macs / median / 1e9:.3f} iters={args.iters}")


if __name__ == "__main__":
    main()
