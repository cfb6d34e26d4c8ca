#!/usr/bin/env bash
# Issue 20's benchmark set, ours (--conv direct and auto) against PyTorch eager float32 on the
# CPU, interleaved round by round, 2 threads:
#   1. ADM FFHQ-256 forward, batch 1        (compare.sh)
#   2. ADM FFHQ-256 forward, batch 8        (compare.sh)
#   3. NCSN++ FFHQ-256 forward, batch 1     (compare.sh, ncsnpp.py)
#   4. the README's main job: 64 chains, K = 100, bundled model (sampling.sh)
# Usage: scripts/pytorch/issue20.sh [--rounds R] [--pause PATTERN] [--only 1,2,3,4]
# --pause NAME: SIGSTOP the processes whose name `pgrep NAME` matches while measuring (e.g.
# a background `host-train` binary), SIGCONT them on exit, whatever happens. Needs
# target/release/host and scripts/pytorch/setup-venv.sh's venv. Prints the load average
# before each benchmark; other work on the machine (builds) shows up there.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS=3
PAUSE=""
ONLY="1,2,3,4"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --pause) PAUSE="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "issue20.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=scripts/lib/pause.sh
source "$HERE/../lib/pause.sh"
[ -n "$PAUSE" ] && pause_matching "$PAUSE"
want() { [[ ",$ONLY," == *",$1,"* ]]; }
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"
if want 1; then
    echo "== 1. ADM FFHQ-256 forward, batch 1 (load $(cut -d' ' -f1-3 /proc/loadavg))"
    bash "$HERE/compare.sh" --config adm-ffhq256 --batch 1 --iters 3 --rounds "$ROUNDS" --convs "direct auto"
fi
if want 2; then
    echo "== 2. ADM FFHQ-256 forward, batch 8 (load $(cut -d' ' -f1-3 /proc/loadavg))"
    bash "$HERE/compare.sh" --config adm-ffhq256 --batch 8 --iters 2 --rounds "$ROUNDS" --convs "direct auto"
fi
if want 3; then
    echo "== 3. NCSN++ FFHQ-256 forward, batch 1 (load $(cut -d' ' -f1-3 /proc/loadavg))"
    bash "$HERE/compare.sh" --config ncsnpp-ffhq256 --batch 1 --iters 3 --rounds "$ROUNDS" --convs "direct auto"
fi
if want 4; then
    echo "== 4. main job, 64 chains, K = 100 (load $(cut -d' ' -f1-3 /proc/loadavg))"
    bash "$HERE/sampling.sh" --rounds "$ROUNDS"
fi
