#!/usr/bin/env bash
# Issue 20's --batch sweep: the README's main job (64 chains, K = 100, bundled model,
# 2 threads) at each --batch, in rounds (the batch order rotates each round); prints the
# sampling seconds, images/s and peak RSS of every run, then the median per batch.
# Usage: scripts/batch-sweep.sh [--rounds R] [--batches "1 2 4 8 16 32 64"] [--pause PATTERN]
set -euo pipefail
ROUNDS=2
BATCHES="1 2 4 8 16 32 64"
PAUSE=""
HOST=target/release/host
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --batches) BATCHES="$2"; shift 2 ;;
        --pause) PAUSE="$2"; shift 2 ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "batch-sweep.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$HOST" ] || { echo "batch-sweep.sh: no host binary at $HOST" >&2; exit 2; }
# shellcheck source=scripts/lib/pause.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pause.sh"
[ -n "$PAUSE" ] && pause_matching "$PAUSE"
LOG="$(mktemp -d /tmp/tweedie-batch-sweep.XXXXXX)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); logs in $LOG"
read -r -a B <<<"$BATCHES"
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < ${#B[@]}; k++)); do
        b="${B[$(((k + r) % ${#B[@]}))]}"
        out="$LOG/run-$b-$r"
        /usr/bin/time -f '%M' -o "$LOG/rss" "$HOST" sample --preset vp-uncond-sigmoid --n 64 \
            --threads 2 --batch "$b" --quiet --out "$out"
        s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["timings"]["sampling_s"])' "$out/run.json")
        rss=$(tail -n 1 "$LOG/rss")
        echo "$b $s $rss" >>"$LOG/all"
        printf '  round %d batch %3d: %7.2f s, %6.2f images/s, peak RSS %5d MiB (load %s)\n' \
            $((r + 1)) "$b" "$s" "$(python3 -c "print(64 / $s)")" $((rss / 1024)) "$(cut -d' ' -f1 /proc/loadavg)"
        rm -rf "$out"
    done
done
python3 - "$LOG/all" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    b, s, rss = line.split()
    rows.setdefault(int(b), []).append((float(s), int(rss)))
print("| --batch | median s | images/s | peak RSS MiB |\n|---|---|---|---|")
for b in sorted(rows):
    s = statistics.median(x for x, _ in rows[b])
    print(f"| {b} | {s:.2f} | {64 / s:.2f} | {max(r for _, r in rows[b]) // 1024} |")
PY
