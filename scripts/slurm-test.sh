#!/usr/bin/env bash
# `--shard auto/N` and `host merge` on a real Slurm: a one-node cluster on this machine, in a
# temporary folder, then three scenarios, each compared with the single-process run:
#   1. sample: `sbatch --wait --array=0-3` of `host sample --shard auto/4`, merge, compare;
#   2. restore of a folder of MNIST test digits, and evaluate restoration, the same way;
#   3. a fault: array task 2 fails (injected), merge refuses naming shard 2, `sbatch
#      --array=2` resubmits it alone, the merge then matches the single run.
# "Matches": every file byte-identical except run.json (evaluate: the table's run fields),
# equal after removing timings, arguments.{out, shard, threads, batch, quiet} and `shards`.
#
# usage: scripts/slurm-test.sh        (root; installs the pinned Debian packages if missing)
# env:   HOST_BIN   the host binary (default target/release/host, built if missing)
#        KEEP=1     keep the temporary folder (logs, shards) after the run
# It starts munged, slurmctld and slurmd with every file in its temp folder, stops them by
# pid on exit, and leaves no state elsewhere (apart from the installed packages).
set -euo pipefail

SLURM_PIN=22.05.8-4+deb12u3
MUNGE_PIN=0.5.15-2+deb12u1
start=$SECONDS
root=$(cd "$(dirname "$0")/.." && pwd)
mnist=$root/data/mnist
say() { echo "== slurm-test: $*"; }
die() {
    echo "slurm-test: error: $*" >&2
    exit 1
}

installed() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "ii" { print $2 }'; }
need_install=0
for p in slurm-wlm slurmctld slurmd slurm-client; do
    [ "$(installed "$p")" = "$SLURM_PIN" ] || need_install=1
done
[ "$(installed munge)" = "$MUNGE_PIN" ] || need_install=1
if [ "$need_install" = 1 ]; then
    say "installing slurm-wlm $SLURM_PIN and munge $MUNGE_PIN"
    sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends \
        "slurm-wlm=$SLURM_PIN" "slurmctld=$SLURM_PIN" "slurmd=$SLURM_PIN" \
        "slurm-client=$SLURM_PIN" "munge=$MUNGE_PIN" >/dev/null
fi
command -v node >/dev/null || die "node not found (CI has it for scripts/fetch-mnist.sh)"
[ -f "$mnist/t10k-images-idx3-ubyte" ] || die "no MNIST in $mnist (run scripts/fetch-mnist.sh)"

host=${HOST_BIN:-$root/target/release/host}
if [ ! -x "$host" ]; then
    say "building $host"
    (cd "$root" && cargo build --release --locked -p tweedie-host)
fi
host=$(cd "$(dirname "$host")" && pwd)/$(basename "$host") # the jobs run elsewhere

tmp=$(mktemp -d /tmp/tweedie-slurm.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
    local rc=$?
    # Daemons stop in reverse order of start, each by the pid it was started with.
    for ((k = ${#pids[@]} - 1; k >= 0; k--)); do
        kill "${pids[k]}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" != 0 ]; then
        for log in "$tmp"/log/*.log "$tmp"/jobs/*.out; do
            [ -f "$log" ] && { echo "--- $log"; tail -n 15 "$log"; }
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$tmp"/{munge,etc,state,spool,run,log,jobs,work}
chmod 700 "$tmp/munge"

# munge: its own key, socket, pid and seed files.
mungekey --create --keyfile="$tmp/munge/munge.key" --bits=1024
chmod 600 "$tmp/munge/munge.key"
socket=$tmp/munge/munge.socket
munged --foreground --force --key-file="$tmp/munge/munge.key" --socket="$socket" \
    --pid-file="$tmp/munge/munged.pid" --seed-file="$tmp/munge/munged.seed" \
    --log-file="$tmp/log/munged.log" >"$tmp/log/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || die "munged did not start"

node_name=$(hostname -s)
cpus=$(nproc)
ctld_port=$((20000 + RANDOM % 20000))
conf=$tmp/etc/slurm.conf
cat >"$conf" <<EOF
ClusterName=tweedie-test
SlurmctldHost=$node_name(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/run/slurmctld.pid
SlurmdPidFile=$tmp/run/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node_name NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$node_name Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$conf
slurmctld -D -i -f "$conf" >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$conf" -N "$node_name" >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    state=$(sinfo -h -N -n "$node_name" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
done
[ "$state" = idle ] || die "node $node_name is not idle after 60 s (state: ${state:-none})"
say "one-node Slurm up ($node_name, $cpus CPUs) in $((SECONDS - start)) s"

work=$tmp/work
export TWEEDIE_HOST=$host TWEEDIE_WORK=$work
mkdir -p "$work"/{sample,restore,evaluate,fault}/parts

# A folder of MNIST test digits 0..5 as 32x32 PNGs (centred, as the bundled model sees them).
node - "$mnist/t10k-images-idx3-ubyte" "$work/digits" <<'EOF'
const fs = require('fs'), zlib = require('zlib');
const [file, out] = process.argv.slice(2);
const idx = fs.readFileSync(file);
fs.mkdirSync(out, { recursive: true });
const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc = (buf) => {
  let c = 0xffffffff;
  for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
const chunk = (type, data) => {
  const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type), data]);
  const sum = Buffer.alloc(4); sum.writeUInt32BE(crc(body));
  return Buffer.concat([len, body, sum]);
};
for (let d = 0; d < 6; d++) {
  const raw = Buffer.alloc(32 * 33);
  for (let y = 0; y < 28; y++)
    for (let x = 0; x < 28; x++) raw[(y + 2) * 33 + 1 + x + 2] = idx[16 + d * 784 + y * 28 + x];
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(32, 0); ihdr.writeUInt32BE(32, 4); ihdr[8] = 8; ihdr[9] = 0;
  const png = Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
  fs.writeFileSync(`${out}/digit${d}.png`, png);
}
EOF

# compare.js SINGLE MERGED [table]: the single run and the merge agree as stated above.
cat >"$tmp/compare.js" <<'EOF'
const fs = require('fs'), path = require('path');
const [single, merged, mode] = process.argv.slice(2);
const list = (dir, rel = '') => fs.readdirSync(path.join(dir, rel), { withFileTypes: true })
  .flatMap((e) => e.isDirectory() ? list(dir, path.join(rel, e.name)) : [path.join(rel, e.name)]).sort();
const strip = (v) => {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    for (const k of ['out', 'shard', 'threads', 'batch', 'quiet']) delete v[k];
    Object.values(v).forEach(strip);
  }
};
const canon = (v) => JSON.stringify(v, (k, x) => x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((key) => [key, x[key]])) : x);
const fail = (msg) => { console.error(`compare: ${msg}`); process.exit(1); };
if (mode === 'table') {
  const [a, b] = [single, merged].map((f) => JSON.parse(fs.readFileSync(f)));
  for (const v of [a, b]) for (const k of ['arguments', 'timings', 'shards']) delete v[k];
  if (canon(a) !== canon(b)) fail(`${single} and ${merged} differ beyond the run fields`);
  process.exit(0);
}
const [fa, fb] = [list(single), list(merged)];
if (fa.join() !== fb.join()) fail(`file lists differ:\n${fa}\n${fb}`);
for (const f of fa) {
  const [a, b] = [single, merged].map((d) => fs.readFileSync(path.join(d, f)));
  if (path.basename(f) === 'run.json') {
    const [ja, jb] = [a, b].map((x) => JSON.parse(x));
    if (!Array.isArray(jb.shards)) fail(`${f}: no shards list`);
    for (const j of [ja, jb]) { delete j.timings; delete j.shards; strip(j.arguments); }
    if (canon(ja) !== canon(jb)) fail(`${f}: run.json differs beyond the allowed keys`);
  } else if (!a.equals(b)) {
    fail(`${f} differs`);
  }
}
console.log(`${fa.length} files match`);
EOF

# One job script for every scenario: `job.sh SCENARIO`, index from SLURM_ARRAY_TASK_ID.
cat >"$tmp/job.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
i=$SLURM_ARRAY_TASK_ID
if [ "${TWEEDIE_FAIL_INDEX:-}" = "$i" ]; then
    echo "injected failure in array task $i" >&2
    exit 1
fi
h=$TWEEDIE_HOST w=$TWEEDIE_WORK
case "$1" in
sample | fault)
    exec "$h" sample --steps 40 --n 16 --seed 7 --threads 1 --quiet --shard auto/4 --out "$w/$1/parts/$i" ;;
restore)
    exec "$h" restore --task inpaint --input "$w/digits" --steps 10 --n 3 --seed 3 --threads 1 --quiet \
        --shard auto/4 --out "$w/restore/parts/$i" ;;
evaluate)
    exec "$h" evaluate restoration --data "$TWEEDIE_MNIST" --task sr4 --count 6 --samples 2 --steps 8 \
        --seed 1 --threads 1 --quiet --figure fig.png --shard auto/4 --out "$w/evaluate/parts/$i" ;;
esac
EOF
chmod +x "$tmp/job.sh"
export TWEEDIE_MNIST=$mnist
array() { # array SCENARIO RANGE [extra sbatch flags]: runs the array, returns its exit status
    local scenario=$1 range=$2
    shift 2
    sbatch --wait --quiet --array="$range" --cpus-per-task=1 --job-name="$scenario" \
        --output="$tmp/jobs/%x-%a.out" --chdir="$work" "$@" "$tmp/job.sh" "$scenario"
}
parts() { echo "$work/$1"/parts/{0,1,2,3}; }

say "1. sample: single run"
t=$SECONDS
"$host" sample --steps 40 --n 16 --seed 7 --threads 1 --quiet --out "$work/sample/single"
single_s=$((SECONDS - t))
t=$SECONDS
array sample 0-3
array_s=$((SECONDS - t))
# shellcheck disable=SC2046
"$host" merge --quiet --out "$work/sample/merged" $(parts sample)
node "$tmp/compare.js" "$work/sample/single" "$work/sample/merged"
say "   single run ${single_s} s (1 thread), sbatch --array=0-3 ${array_s} s ($cpus CPUs)"

say "2a. restore of a folder of 6 MNIST digits"
"$host" restore --task inpaint --input "$work/digits" --steps 10 --n 3 --seed 3 --threads 1 --quiet \
    --out "$work/restore/single"
array restore 0-3
# shellcheck disable=SC2046
"$host" merge --quiet --out "$work/restore/merged" $(parts restore)
node "$tmp/compare.js" "$work/restore/single" "$work/restore/merged"

say "2b. evaluate restoration of 6 test digits"
"$host" evaluate restoration --data "$mnist" --task sr4 --count 6 --samples 2 --steps 8 --seed 1 \
    --threads 1 --quiet --figure "$work/evaluate/single.png" --out "$work/evaluate/single.json" \
    >"$work/evaluate/single.txt"
array evaluate 0-3
# shellcheck disable=SC2046
"$host" merge --quiet --out "$work/evaluate/merged" $(parts evaluate) >"$work/evaluate/merged.txt"
cmp "$work/evaluate/single.txt" "$work/evaluate/merged.txt" || die "evaluate: printed tables differ"
cmp "$work/evaluate/single.png" "$work/evaluate/merged/figure.png" || die "evaluate: figures differ"
node "$tmp/compare.js" "$work/evaluate/single.json" "$work/evaluate/merged/table.json" table
echo "table, figure and table.json match"

say "3. fault: array task 2 fails, merge refuses, --array=2 is resubmitted alone"
if array fault 0-3 --export=ALL,TWEEDIE_FAIL_INDEX=2; then die "the injected failure did not fail the array"; fi
# As users call it: every folder there is (the failed task wrote none).
if "$host" merge --quiet --out "$work/fault/merged" "$work/fault/parts"/* 2>"$work/fault.err"; then
    die "merge accepted a run with a missing shard"
fi
cat "$work/fault.err"
grep -q "shard(s) 2 of 4 missing (rerun them, e.g. sbatch --array=2)" "$work/fault.err" || die "merge did not name shard 2"
[ ! -e "$work/fault/merged" ] || die "a refused merge left output"
array fault 2
# shellcheck disable=SC2046
"$host" merge --quiet --out "$work/fault/merged" $(parts fault)
node "$tmp/compare.js" "$work/sample/single" "$work/fault/merged"

say "passed in $((SECONDS - start)) s"
