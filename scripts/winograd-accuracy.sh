#!/usr/bin/env bash
# Accuracy of the sampler's Winograd convolutions at full FFHQ-256 size (issue 20): every 3×3
# 'same' layer of the ADM and NCSN++ FFHQ-256 networks (random weights) in its auto form
# against an f64 direct convolution (first 16 output channels of each), and the whole
# network's output in the auto and winograd policies against the direct one, under
# formats.md §7. Prints one line per layer and the worst errors; exits non-zero when a
# tolerance is broken. CI runs the same checks on the FFHQ topologies at 64×64
# (nn/tests/winograd_accuracy.rs). Takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
TWEEDIE_WINO_FULL=1 cargo test --release -p tweedie-nn --test winograd_accuracy \
  ffhq256_full_size -- --ignored --nocapture 2>&1 | grep -E "^(adm|ncsnpp)|test result|panicked"
