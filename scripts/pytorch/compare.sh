#!/usr/bin/env bash
# Side-by-side CPU benchmark: our `host bench` against PyTorch, both layouts. The PyTorch side
# is bench.py for ADM configs and ncsnpp.py for NCSN++ ones (--arch, detected from --config).
#
# Runs R rounds; each round runs our binary, PyTorch NCHW and PyTorch channels_last once
# (the order rotates from round to round so slow phases of a throttling host do not always hit
# the same side). Every run's last line must be `median_s=<s> gflops=<GFLOP/s> iters=<n>`.
# Prints, per side, the median over rounds of the per-run medians, and the ratio
# ours / PyTorch against the faster PyTorch layout (< 1 means ours is faster).
#
# Usage: scripts/pytorch/compare.sh [--host PATH] [--no-host] [--config C] [--size S]
#            [--batch B] [--iters N] [--threads T] [--rounds R] [--python PY]
#            [--host-args "EXTRA ARGS"] [--arch auto|adm|ncsnpp] [--convs "direct auto"]
# --convs: one side of ours per listed `host bench --conv` value (ours_direct, ours_auto, …),
#          each against the faster PyTorch layout (default: one side, the host's default).
# Defaults: --host target/release/host, --config adm-ffhq256, --size 256, --batch 1,
#           --iters 3, --threads 2, --rounds 3, --python $TWEEDIE_TORCH_VENV/bin/python
#           (TWEEDIE_TORCH_VENV defaults to /tmp/tweedie-torch-venv, see setup-venv.sh),
#           --arch auto: ncsnpp for a built-in name starting with "ncsnpp" or a JSON file with
#           arch "ncsnpp" or score_sde's nested `config`, adm otherwise.
# NCSN++ runs only at its image_size: --size must equal it (256 for ncsnpp-ffhq256).
# The host is called as:
#   HOST bench --config C --size S --batch B --iters N --threads T HOST_ARGS (f32 weights unless HOST_ARGS has --f16)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOST=target/release/host
USE_HOST=1
CONFIG=adm-ffhq256
SIZE=256
BATCH=1
ITERS=3
THREADS=2
ROUNDS=3
PY="${TWEEDIE_TORCH_VENV:-/tmp/tweedie-torch-venv}/bin/python"
HOST_ARGS=""
ARCH=auto
CONVS=""

while [ $# -gt 0 ]; do
    case "$1" in
        --host) HOST="$2"; shift 2 ;;
        --no-host) USE_HOST=0; shift ;;
        --config) CONFIG="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --iters) ITERS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --host-args) HOST_ARGS="$2"; shift 2 ;;
        --arch) ARCH="$2"; shift 2 ;;
        --convs) CONVS="$2"; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

[ -x "$PY" ] || { echo "compare.sh: no python at $PY (run scripts/pytorch/setup-venv.sh)" >&2; exit 2; }
if [ "$USE_HOST" = 1 ] && [ ! -x "$HOST" ]; then
    echo "compare.sh: no host binary at $HOST (cargo build --release -p tweedie-host, or --no-host)" >&2
    exit 2
fi

if [ "$ARCH" = auto ]; then
    case "$CONFIG" in
        ncsnpp*) ARCH=ncsnpp ;;
        adm*) ARCH=adm ;;
        *) ARCH="$("$PY" -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("ncsnpp" if r.get("arch") == "ncsnpp" or "config" in r else "adm")' "$CONFIG")" ;;
    esac
fi
case "$ARCH" in
    adm) PY_SCRIPT="$HERE/bench.py" ;;
    ncsnpp) PY_SCRIPT="$HERE/ncsnpp.py" ;;
    *) echo "compare.sh: --arch must be auto, adm or ncsnpp (got $ARCH)" >&2; exit 2 ;;
esac

LOG="$(mktemp -d /tmp/tweedie-compare.XXXXXX)"
echo "arch $ARCH ($(basename "$PY_SCRIPT")), config $CONFIG, ${SIZE}x${SIZE}, batch $BATCH, iters $ITERS, threads $THREADS, rounds $ROUNDS, load $(cut -d' ' -f1-3 /proc/loadavg); logs in $LOG"

# run NAME ROUND CMD...: run one benchmark, keep its log, append its median to $LOG/NAME.medians.
run() {
    local name="$1" round="$2"; shift 2
    local log="$LOG/$name.$round.log"
    if ! "$@" >"$log" 2>&1; then
        echo "compare.sh: $name failed (round $round):" >&2; tail -20 "$log" >&2; exit 1
    fi
    local last
    last="$(tail -n 1 "$log")"
    if ! [[ "$last" =~ ^median_s=([0-9.eE+-]+)\ gflops=([0-9.eE+-]+)\ iters=([0-9]+)$ ]]; then
        echo "compare.sh: $name: last line is not 'median_s=.. gflops=.. iters=..': $last" >&2; exit 1
    fi
    echo "${BASH_REMATCH[1]}" >>"$LOG/$name.medians"
    printf '  round %s %-22s %s\n' "$round" "$name" "$last"
}

bench_py() {
    "$PY" "$PY_SCRIPT" --config "$CONFIG" --size "$SIZE" --batch "$BATCH" --iters "$ITERS" \
        --threads "$THREADS" --layout "$1"
}
bench_host() {
    # shellcheck disable=SC2086  # HOST_ARGS is deliberately word-split
    "$HOST" bench --config "$CONFIG" --size "$SIZE" --batch "$BATCH" --iters "$ITERS" \
        --threads "$THREADS" $HOST_ARGS "$@"
}

SIDES=(pytorch_nchw pytorch_channels_last)
if [ "$USE_HOST" = 1 ]; then
    if [ -n "$CONVS" ]; then
        for c in $CONVS; do SIDES=("ours_$c" "${SIDES[@]}"); done
    else
        SIDES=(ours "${SIDES[@]}")
    fi
fi
for ((r = 1; r <= ROUNDS; r++)); do
    n=${#SIDES[@]}
    for ((k = 0; k < n; k++)); do
        side="${SIDES[$(((k + r - 1) % n))]}"
        case "$side" in
            ours) run ours "$r" bench_host ;;
            ours_*) run "$side" "$r" bench_host --conv "${side#ours_}" ;;
            pytorch_nchw) run pytorch_nchw "$r" bench_py nchw ;;
            pytorch_channels_last) run pytorch_channels_last "$r" bench_py channels_last ;;
        esac
    done
    echo "  after round $r: load $(cut -d' ' -f1-3 /proc/loadavg)"
done

"$PY" - "$LOG" "${SIDES[@]}" <<'PY'
import statistics, sys
log, sides = sys.argv[1], sys.argv[2:]
med = {}
for s in sides:
    vals = [float(v) for v in open(f"{log}/{s}.medians").read().split()]
    med[s] = statistics.median(vals)
    print(f"{s:24s} median_s={med[s]:.4f}  (per round: {' '.join(f'{v:.4f}' for v in vals)})")
torch_sides = [s for s in sides if s.startswith("pytorch")]
best = min(torch_sides, key=med.get)
print(f"faster PyTorch layout: {best[len('pytorch_'):]}")
rounds = {s: [float(v) for v in open(f"{log}/{s}.medians").read().split()] for s in sides}
for ours in [s for s in sides if s == "ours" or s.startswith("ours_")]:
    per = " ".join(f"{o / min(rounds[t][i] for t in torch_sides):.3f}"
                   for i, o in enumerate(rounds[ours]))
    print(f"ratio {ours}/pytorch = {med[ours] / med[best]:.3f}  (< 1: ours faster; "
          f"per round against that round's faster layout: {per})")
PY
