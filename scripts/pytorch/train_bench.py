"""CPU benchmark of one ADM U-Net training step in PyTorch (the reference for the Rust bench
`cargo bench -p tweedie-benches --bench train_step`).

One step is what `host train --preset vp` does per batch: draw t ~ U{0..999} and n ~ N(0, I),
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n (DDPM linear betas 1e-4..0.02), forward, DDPM
eps loss mean((eps_hat - n)^2), backward, clip_grad_norm_(1.0), torch.optim.AdamW step
(lr 2e-4, PyTorch's default betas/eps/weight decay), EMA update (decay 0.999) of a parameter copy.
float32, batch 64 by default, data x0 uniform in [-1, 1] (MNIST padded to 32x32 lies there).
Weights: PyTorch's default init, then every parameter += 0.02 * N(0, 1) (as bench.py).

--warmup untimed steps, then --iters timed ones; prints each step's wall and CPU seconds, the
median CPU seconds, and as the LAST line

    median_s=<seconds> images_per_s=<batch / median_s> iters=<n>

Usage: python scripts/pytorch/train_bench.py --config models/mnist-vp.json --batch 64 \
           --threads 2 --warmup 3 --iters 10 [--layout nchw|channels_last]
"""

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adm  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="models/mnist-vp.json", help="ADM config JSON")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--layout", choices=("nchw", "channels_last"), default="nchw")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = adm.load_config(args.config)
    kw = adm.unet_kwargs(cfg)
    size, c = cfg["image_size"], kw["in_channels"]
    model = adm.UNetModel(**kw).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    if args.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, 0).float()
    x0 = torch.rand(args.batch, c, size, size) * 2 - 1

    def step():
        t = torch.randint(0, 1000, (args.batch,))
        n = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * n
        if args.layout == "channels_last":
            xt = xt.contiguous(memory_format=torch.channels_last)
        loss = torch.mean((model(xt, t.float()) - n) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - 0.999)
        return loss.item()

    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, layout {args.layout}, "
          f"config {args.config}, {size}x{size}x{c}, batch {args.batch}, {n_params} parameters", flush=True)
    times, cpu = [], []
    for i in range(args.warmup + args.iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = step()
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        timed = i >= args.warmup
        print(f"{'step' if timed else 'warm-up'} {i}: {elapsed:.4f} s (CPU {elapsed_cpu:.4f} s), "
              f"loss {loss:.4f}", flush=True)
        if timed:
            times.append(elapsed)
            cpu.append(elapsed_cpu)
    median = statistics.median(times)
    # CPU seconds (all threads) per step: with --threads 1 a load-independent cost measure on
    # a shared machine, where the wall time also counts waiting for a core.
    print(f"median_cpu_s={statistics.median(cpu):.6f}")
    print(f"median_s={median:.6f} images_per_s={args.batch / median:.3f} iters={args.iters}")


if __name__ == "__main__":
    main()
