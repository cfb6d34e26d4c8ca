# Sourced by the benchmark scripts: pause_matching PATTERN sends SIGSTOP to the processes
# `pgrep PATTERN` matches (e.g. a background training binary) so that they do not share the
# cores with a measurement (then waits 5 s for the load to settle), and SIGCONT on the
# script's exit, whatever ends it.
pause_matching() {
    local pids
    pids="$(pgrep "$1" || true)"
    # shellcheck disable=SC2064  # the pids are fixed now
    trap "for p in $pids; do kill -CONT \$p 2>/dev/null || true; done" EXIT
    for p in $pids; do kill -STOP "$p" || true; done
    echo "paused: ${pids:-nothing} (resumed on exit)"
    sleep 5
}
