#!/usr/bin/env bash
# The one script to run on a GPU machine. It builds nothing there: it runs the `host` binary and
# the PTX module built on the CPU machine, with copies of the golden data, from a bundle folder.
#
#   on the build machine:  scripts/gpu-check.sh --prepare [BUNDLE]   (default target/gpu-bundle)
#       builds host (release, --features cuda) and the PTX (scripts/build-ptx.sh --ptxas), and
#       copies them, the adm_small golden data, the PyTorch scripts and this script into BUNDLE.
#   on the GPU machine:    bash BUNDLE/gpu-check.sh [OUT]            (default BUNDLE/out)
#       nvidia-smi, `host selftest --device cuda` (kernels vs CPU, template drift, the ADM forward
#       vs the adm_small golden output, a 10-step sampling run vs the CPU, FFHQ-256 forward and
#       sampling-step timings; JSON written as it goes), a PyTorch float32 forward of adm-ffhq256
#       with TF32 off and default, then a table with the ratio ours/PyTorch. Each stage has its own time limit; the whole run stays < 5 min.
# Needs there: the NVIDIA driver (libcuda.so.1), python3 with torch for the PyTorch part
# (PYTHON=/path/to/python to choose another interpreter).
# Exit code: the selftest's (0 all passed, 1 a check failed, 2 error, 124 timed out).
set -uo pipefail

if [ "${1:-}" = --prepare ]; then
    set -e
    root=$(cd "$(dirname "$0")/.." && pwd)
    bundle=${2:-$root/target/gpu-bundle}
    case "$bundle" in /*) ;; *) bundle=$PWD/$bundle ;; esac
    [ -f "$root/golden/adm_small/io.safetensors" ] ||
        { echo "error: no golden data at $root/golden/adm_small" >&2; exit 2; }
    cd "$root"
    cargo build --release -p tweedie-host --features cuda
    bash scripts/build-ptx.sh --ptxas $(sed 's/^/--entry /' scripts/ptx/entries.txt) \
        "$bundle/tweedie_kernels.ptx"
    mkdir -p "$bundle/golden" "$bundle/pytorch"
    cp target/release/host "$bundle/host"
    cp -r "$root/golden/adm_small" "$bundle/golden/"
    cp scripts/pytorch/adm.py scripts/pytorch/gpu_bench.py "$bundle/pytorch/"
    cp scripts/gpu-check.sh "$bundle/gpu-check.sh"
    git rev-parse HEAD >"$bundle/COMMIT" 2>/dev/null || true
    echo "== bundle ready: $bundle ($(du -sh "$bundle" | cut -f1)); on the GPU machine run: bash $bundle/gpu-check.sh"
    exit 0
fi

here=$(cd "$(dirname "$0")" && pwd)
# Run from a bundle (this script copied into it) or from the repository with a prepared bundle.
[ -x "$here/host" ] && bundle=$here || bundle=${GPU_BUNDLE:-$here/../target/gpu-bundle}
[ -x "$bundle/host" ] || { echo "error: no bundle at $bundle (run scripts/gpu-check.sh --prepare first)" >&2; exit 2; }
out=${1:-${OUT:-$bundle/out}}
mkdir -p "$out"
start=$SECONDS
# The driver libraries are sometimes mounted outside the loader's default path.
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/nvidia/lib64:/usr/local/nvidia/lib:/usr/lib/x86_64-linux-gnu

echo "== bundle $bundle (commit $(cat "$bundle/COMMIT" 2>/dev/null || echo unknown)), output $out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/nvidia-smi.txt"

echo "== host selftest --device cuda"
timeout 180 "$bundle/host" selftest --device cuda --ptx "$bundle/tweedie_kernels.ptx" \
    --golden "$bundle/golden/adm_small" --json "$out/selftest.json" 2>&1 | tee "$out/selftest.log"
rc=${PIPESTATUS[0]}

echo "== PyTorch float32 forward (adm-ffhq256, TF32 off and default)"
py=${PYTHON:-python3}
if command -v "$py" >/dev/null; then
    timeout 90 "$py" "$bundle/pytorch/gpu_bench.py" --batches 1,8 --iters 5 2>&1 | tee "$out/torch.log"
else
    echo "python3 not found: PyTorch part skipped" | tee "$out/torch.log"
fi

echo "== summary ($((SECONDS - start)) s; selftest exit code $rc)"
python3 - "$out/selftest.json" "$out/torch.log" <<'PY' || cat "$out/selftest.json" 2>/dev/null
import json, sys
try:
    rep = json.load(open(sys.argv[1]))
except Exception as e:  # a run cut off before its first result
    rep = {"status": f"no report ({e})"}
print(f"status: {rep.get('status')}   device: {rep.get('device')}")
print(f"{'check':34} {'shape':34} {'max_abs_err':>12} {'max_rel_err':>12}")
for sec in ("kernels", "template", "parity"):
    for e in rep.get(sec, []):
        name = e.get("kernel") or e.get("check")
        print(f"{name:34} {str(e.get('shape', e.get('check', ''))):34} {e.get('max_abs_err', 0):12.3g} {e.get('max_rel_err', 0):12.3g}")
ours = {}
for e in rep.get("timings", []):
    extra = f"{e['gflops']:.0f} GFLOP/s" if "gflops" in e else f"{e.get('steps_per_s', 0):.2f} steps/s"
    print(f"{e['what']:60} batch {e['batch']}: {e['seconds'] * 1e3:9.3f} ms  {extra}")
    if e["what"].startswith("adm forward 256x256"):
        ours.setdefault(e["batch"], []).append((e["what"], e["seconds"]))
print(f"adm_small_parity: {rep.get('adm_small_parity')}")
for line in open(sys.argv[2]):
    if line.startswith("torch_gpu"):
        print(line.rstrip())
        f = dict(kv.split("=") for kv in line.split()[1:])
        b = int(f["batch"])
        for what, sec in ours.get(b, []):
            print(f"  ratio ours ({what[20:]}) / PyTorch (tf32={f['tf32']}), batch {b}: {sec / float(f['median_s']):.2f}")
print(f"summary: {rep.get('summary')}")
PY
exit "$rc"
