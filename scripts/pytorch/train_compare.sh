#!/usr/bin/env bash
# Issue 20's training-step comparison, interleaved round by round, 2 threads: whole `host
# train` steps (batch 64, models/mnist-vp.json, DDPM ε-loss, clip, AdamW, EMA; from scratch,
# the time of steps 11..STEPS from its log) against scripts/pytorch/train_bench.py
# in both layouts. Prints per round s/step and the ratio PyTorch best / ours (> 1: ours faster).
# Usage: scripts/pytorch/train_compare.sh [--rounds R] [--steps S] [--pause PATTERN]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS=2
STEPS=40
PAUSE=""
HOST=target/release/host
PY="${TWEEDIE_TORCH_VENV:-/tmp/tweedie-torch-venv}/bin/python"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --pause) PAUSE="$2"; shift 2 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "train_compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$PY" ] || { echo "train_compare.sh: no python at $PY (run scripts/pytorch/setup-venv.sh)" >&2; exit 2; }
[ -x "$HOST" ] || { echo "train_compare.sh: no host binary at $HOST" >&2; exit 2; }
[ -d data/mnist ] || { echo "train_compare.sh: no data/mnist (scripts/fetch-mnist.sh)" >&2; exit 2; }
# shellcheck source=scripts/lib/pause.sh
source "$HERE/../lib/pause.sh"
[ -n "$PAUSE" ] && pause_matching "$PAUSE"
LOG="$(mktemp -d /tmp/tweedie-train-compare.XXXXXX)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); logs in $LOG"
ours() {
    local r="$1" d="$LOG/ours-$1"
    mkdir -p "$d"
    "$HOST" train --data data/mnist --preset vp --config models/mnist-vp.json --steps "$STEPS" \
        --batch 64 --lr 2e-4 --warmup 500 --ema-decay 0.999 --grad-clip 1 --seed 1 --threads 2 \
        --log-every 1 --checkpoint-every 100000 --out "$d/m.safetensors" >"$d/log" 2>&1
    # The log's images/s is the mean since the start: time(s) = 64 s / ips(s). Seconds per step
    # between step 10 (start-up and first touch done) and the last.
    python3 - "$d/log" <<'PY' >>"$LOG/ours.s"
import re, sys
v = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"step (\d+)/\d+:.* ([0-9.]+) images/s", open(sys.argv[1]).read())}
last = max(v)
print((64 * last / v[last] - 64 * 10 / v[10]) / (last - 10))
PY
    rm -rf "$d"
    printf '  round %s %-24s %8.3f s/step\n' "$r" "ours" "$(tail -n 1 "$LOG/ours.s")"
}
torch() {
    local layout="$1" r="$2" log="$LOG/torch-$1-$2.log"
    "$PY" "$HERE/train_bench.py" --threads 2 --layout "$layout" >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
    [[ "$(tail -n 1 "$log")" =~ ^median_s=([0-9.eE+-]+) ]] || { tail -5 "$log" >&2; exit 1; }
    echo "${BASH_REMATCH[1]}" >>"$LOG/torch_$layout.s"
    printf '  round %s %-24s %8.3f s/step\n' "$r" "pytorch $layout" "${BASH_REMATCH[1]}"
}
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then ours "$r"; torch nchw "$r"; torch channels_last "$r"
    else torch channels_last "$r"; torch nchw "$r"; ours "$r"; fi
    echo "  after round $r: load $(cut -d' ' -f1-3 /proc/loadavg)"
done
python3 - "$LOG" <<'PY'
import statistics, sys
d = sys.argv[1]
rd = lambda n: [float(x) for x in open(f"{d}/{n}.s")]
o, a, b = rd("ours"), rd("torch_nchw"), rd("torch_channels_last")
best = [min(x, y) for x, y in zip(a, b)]
print("per round PyTorch best / ours: " + " ".join(f"{p / q:.2f}" for p, q in zip(best, o)))
print(f"median s/step: ours {statistics.median(o):.3f}, PyTorch nchw {statistics.median(a):.3f}, "
      f"channels_last {statistics.median(b):.3f}; speed-up {statistics.median(best) / statistics.median(o):.2f}x")
PY
