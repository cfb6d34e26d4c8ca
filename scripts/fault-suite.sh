#!/usr/bin/env bash
# The fault suite of issue 22 (host/tests/fault_*.rs, hostile_io.rs): outputs, inputs,
# memory limits, full and read-only file systems (tmpfs: needs root, as CI is), ulimit -f/-v,
# signals at seeded points of sample/restore/convert, and the fuzz corpus replay. `cargo test`
# runs it once with the default seed; this script (CI) runs it with the outcome lines shown,
# then the signal families for more seeds. A failure shows the seed to rerun with:
#   TWEEDIE_FAULT_SEED=N cargo test -p tweedie-host --test fault_signals
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${TWEEDIE_FAULT_SEEDS:-"22 7 1234"}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Runs `cargo test ARGS -- --nocapture`; on failure shows everything, else the summary lines.
run() {
    if ! cargo test --locked -p tweedie-host "$@" -- --nocapture >"$log" 2>&1; then
        cat "$log"
        exit 1
    fi
    grep -E '^(test result|[a-z]+: \{|[a-z_]+: [0-9]+ inputs|mount not permitted|mknod)' "$log" || true
}
run --test fault_outputs --test fault_inputs --test fault_fs --test hostile_io \
    --test fault_fuzz_replay
for seed in $seeds; do
    echo "signals, TWEEDIE_FAULT_SEED=$seed"
    TWEEDIE_FAULT_SEED=$seed run --test fault_signals
done
