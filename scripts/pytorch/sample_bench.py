"""The README's main job in PyTorch (the reference side of sampling.sh): the bundled MNIST VP
model (models/mnist-vp.safetensors, f16 weights widened to float32) running the paper's
sampling template with the same plan as `host sample --preset vp-uncond-sigmoid` (read from
`host schedule --kind vp --preset vp-uncond-sigmoid` as CSV: sigma_k, t_k, gamma_k, T_k),
eager float32, inference_mode:

    x_0 ~ N(0, I);  D = x - sigma * eps(x / sqrt(1 + sigma^2), t)   (VP, eps output)
    x_{k+1} = x_k + gamma_k / sigma_k^2 * (D - x_k) + sqrt(2 gamma_k T_k) * z

(core/src/sampler.rs's update_element, unconditional). One untimed warm-up forward, then
--rounds whole runs of N chains in batches of --batch. Prints each run's seconds and, as the
LAST line, `median_s=<s> images_per_s=<N / median_s> runs=<n>`.

Usage: python scripts/pytorch/sample_bench.py --plan plan.csv [--n 64] [--batch 64]
           [--threads 2] [--layout nchw|channels_last] [--runs 1]
"""

import argparse
import csv
import os
import statistics
import sys
import time

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import adm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True, help="CSV of host schedule (k,sigma,sigma_net,t,gamma,temperature)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layout", choices=("nchw", "channels_last"), default="nchw")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = adm.build(os.path.join(ROOT, "models/mnist-vp.json")).eval()
    state = {k: v.float() for k, v in load_file(os.path.join(ROOT, "models/mnist-vp.safetensors")).items()}
    model.load_state_dict(state)
    with open(args.plan) as f:
        plan = [(float(r["sigma"]), float(r["sigma_net"]), float(r["t"]), float(r["gamma"]),
                 float(r["temperature"])) for r in csv.DictReader(f)]
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)

    def run():
        out = []
        for b0 in range(0, args.n, args.batch):
            nb = min(args.batch, args.n - b0)
            x = torch.randn(nb, 1, 32, 32, generator=gen).contiguous(memory_format=fmt)
            for sigma, sigma_net, t, gamma, temp in plan:
                scale = 1.0 / (1.0 + sigma_net * sigma_net) ** 0.5
                eps = model(x * scale, torch.full((nb,), t))
                d = x - sigma_net * eps
                z = torch.randn(x.shape, generator=gen).contiguous(memory_format=fmt)
                x = x + (gamma / (sigma * sigma)) * (d - x) + (2.0 * gamma * temp) ** 0.5 * z
            out.append(x)
        return torch.cat(out)

    with torch.inference_mode():
        model(torch.zeros(args.batch, 1, 32, 32).contiguous(memory_format=fmt), torch.full((args.batch,), 500.0))
        times = []
        for i in range(args.runs):
            start = time.perf_counter()
            x = run()
            times.append(time.perf_counter() - start)
            print(f"run {i + 1}: {times[-1]:.3f} s", flush=True)
    assert torch.isfinite(x).all(), "non-finite samples"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, layout {args.layout}, "
          f"batch {args.batch}, samples in [{x.min().item():.2f}, {x.max().item():.2f}]")
    median = statistics.median(times)
    print(f"median_s={median:.6f} images_per_s={args.n / median:.3f} runs={args.runs}")


if __name__ == "__main__":
    main()
