#!/usr/bin/env bash
# Side-by-side benchmark of the README's main job (64 chains, K = 100, bundled MNIST VP model,
# preset vp-uncond-sigmoid): `host sample` (--conv direct and auto) against the same template
# loop in PyTorch eager float32 (sample_bench.py; NCHW and channels_last, one batch of N),
# interleaved round by round (the order rotates each round). Our time is run.json's
# sampling_s (the loop, as PyTorch's: no model load or PNG writing). Prints per round and the
# medians, with images/s and the ratios ours/PyTorch (< 1: ours faster) against the faster
# PyTorch layout.
#
# Usage: scripts/pytorch/sampling.sh [--host PATH] [--n 64] [--batch B] [--threads 2]
#            [--rounds 3] [--python PY] [--host-args "EXTRA"]
# Defaults: --host target/release/host, --batch: host's default (PyTorch: N), --rounds 3,
#           --python $TWEEDIE_TORCH_VENV/bin/python (default /tmp/tweedie-torch-venv).
# A quiet machine matters: stop background jobs (kill -STOP PID, then kill -CONT PID).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOST=target/release/host
N=64
BATCH=""
THREADS=2
ROUNDS=3
PY="${TWEEDIE_TORCH_VENV:-/tmp/tweedie-torch-venv}/bin/python"
HOST_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --host) HOST="$2"; shift 2 ;;
        --n) N="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --host-args) HOST_ARGS="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "sampling.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$PY" ] || { echo "sampling.sh: no python at $PY (run scripts/pytorch/setup-venv.sh)" >&2; exit 2; }
[ -x "$HOST" ] || { echo "sampling.sh: no host binary at $HOST" >&2; exit 2; }

LOG="$(mktemp -d /tmp/tweedie-sampling.XXXXXX)"
"$HOST" schedule --kind vp --preset vp-uncond-sigmoid --out "$LOG/plan.csv"
echo "main job: N $N, K = $(($(wc -l <"$LOG/plan.csv") - 1)), threads $THREADS, rounds $ROUNDS, load $(cut -d' ' -f1-3 /proc/loadavg); logs in $LOG"

# host CONV ROUND: one sampling run; its sampling_s goes to $LOG/ours_CONV.s
host_run() {
    local conv="$1" round="$2" out="$LOG/run-$1-$2"
    local batch_args=()
    [ -n "$BATCH" ] && batch_args=(--batch "$BATCH")
    # shellcheck disable=SC2086  # HOST_ARGS is deliberately word-split
    "$HOST" sample --preset vp-uncond-sigmoid --n "$N" --threads "$THREADS" --conv "$conv" \
        "${batch_args[@]}" --out "$out" --quiet $HOST_ARGS
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["timings"]["sampling_s"])' \
        "$out/run.json" >>"$LOG/ours_$conv.s"
    rm -rf "$out"
    printf '  round %s %-24s %8.3f s\n' "$round" "ours --conv $conv" "$(tail -n 1 "$LOG/ours_$conv.s")"
}
torch_run() {
    local layout="$1" round="$2" log="$LOG/torch-$1-$2.log"
    "$PY" "$HERE/sample_bench.py" --plan "$LOG/plan.csv" --n "$N" --batch "${BATCH:-$N}" \
        --threads "$THREADS" --layout "$layout" >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
    [[ "$(tail -n 1 "$log")" =~ ^median_s=([0-9.eE+-]+) ]] || { tail -5 "$log" >&2; exit 1; }
    echo "${BASH_REMATCH[1]}" >>"$LOG/pytorch_$layout.s"
    printf '  round %s %-24s %8.3f s\n' "$round" "pytorch $layout" "${BASH_REMATCH[1]}"
}

SIDES=(direct auto nchw channels_last)
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < ${#SIDES[@]}; k++)); do
        side="${SIDES[$(((k + r - 1) % ${#SIDES[@]}))]}"
        case "$side" in
            direct|auto) host_run "$side" "$r" ;;
            *) torch_run "$side" "$r" ;;
        esac
    done
    echo "  after round $r: load $(cut -d' ' -f1-3 /proc/loadavg)"
done

"$PY" - "$LOG" "$N" <<'PY'
import statistics, sys
log, n = sys.argv[1], int(sys.argv[2])
sides = {"ours direct": "ours_direct", "ours auto": "ours_auto",
         "pytorch nchw": "pytorch_nchw", "pytorch channels_last": "pytorch_channels_last"}
vals = {k: [float(v) for v in open(f"{log}/{f}.s").read().split()] for k, f in sides.items()}
med = {k: statistics.median(v) for k, v in vals.items()}
for k, v in vals.items():
    print(f"{k:22s} median {med[k]:8.3f} s = {n / med[k]:7.2f} images/s  (rounds: {' '.join(f'{x:.3f}' for x in v)})")
best = min(("pytorch nchw", "pytorch channels_last"), key=med.get)
rounds = len(vals[best])
for ours in ("ours direct", "ours auto"):
    per = " ".join(f"{vals[ours][i] / min(vals['pytorch nchw'][i], vals['pytorch channels_last'][i]):.3f}"
                   for i in range(rounds))
    print(f"ratio {ours}/{best} = {med[ours] / med[best]:.3f}  (per round vs that round's faster PyTorch: {per})")
print(f"speed-up auto over direct = {med['ours direct'] / med['ours auto']:.3f}")
PY
