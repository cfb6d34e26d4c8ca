#!/usr/bin/env bash
# Accuracy of the sampler's Winograd convolutions at full FFHQ-256 size (issue 20), random weights:
# 1. every 3×3 'same' layer of the ADM and NCSN++ FFHQ-256 networks in its auto form against an
#    f64 direct convolution (first 16 output channels of each), and the whole network's output in
#    the auto and winograd policies against the direct one (nn/tests/winograd_accuracy.rs);
# 2. the whole f32 forward in the direct, auto and winograd policies against the f64 reference
#    forward of nn/tests/f64_reference, two samples per network (ADM t = 999 and a random t;
#    NCSN++ σ_max and σ_min): the worst error of every stage (ADM blocks, NCSN++ modules) and of
#    the output (nn/tests/whole_network_f64.rs).
# All under formats.md §7. Prints one line per layer or stage and the worst errors; exits
# non-zero when a tolerance is broken. CI runs the same checks on the FFHQ topologies at 64×64.
# Part 1 takes several minutes on 2 cores, part 2 about 14 (816 s on a loaded 2-core EPYC: the
# f64 reference runs ~0.5 G multiply-adds per second per core; FFHQ-256 ADM is 194 G, NCSN++
# 266 G per sample).
set -euo pipefail
cd "$(dirname "$0")/.."
TWEEDIE_WINO_FULL=1 cargo test --release -p tweedie-nn --test winograd_accuracy \
  ffhq256_full_size -- --ignored --nocapture 2>&1 | grep -E "^(adm|ncsnpp)|test result|panicked"
TWEEDIE_WINO_FULL=1 cargo test --release -p tweedie-nn --test whole_network_f64 \
  ffhq256_full_size -- --ignored --nocapture 2>&1 | grep -E "^(adm|ncsnpp)|test result|panicked"
