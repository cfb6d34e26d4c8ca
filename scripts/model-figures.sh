#!/usr/bin/env bash
# Regenerates the tables and figures of models/README.md (samples, nearest, temperature,
# restoration, VE) from the bundled weights or the given ones, and prints the tables as
# markdown. Every step keeps its outputs in --work, so a rerun (after an interruption, or
# with more --only steps) redoes only what is missing; the restoration runs go in 10 shards
# each (`--shard`, `host merge`), so an interrupted run loses at most one shard.
#
#   bash scripts/model-figures.sh [--vp W] [--ve W] [--work DIR] [--host BIN] [--threads T]
#                                 [--only vp,temperature,restoration,ve] [--install]
#
# --install copies the figures and per-digit CSVs into models/figures. Times on 2 threads of
# a quiet machine: vp and ve about 1 minute each, temperature 3, restoration about 2 hours
# (4 runs of 100 digits × 32 chains × K = 100).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vp=bundled:mnist-vp; ve=bundled:mnist-ve; work="$ROOT/target/model-figures"
host="$ROOT/target/release/host"; threads=2; only=vp,temperature,restoration,ve; install=0
while [ $# -gt 0 ]; do
  case "$1" in
    --vp) vp=$2; shift 2 ;;
    --ve) ve=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --install) install=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$host" ] || { echo "error: $host not found (cargo build --release -p tweedie-host)" >&2; exit 2; }
data="$ROOT/data/mnist"
[ -d "$data" ] || { echo "error: $data missing (bash scripts/fetch-mnist.sh)" >&2; exit 2; }
mkdir -p "$work"
want() { [[ ",$only," == *",$1,"* ]]; }

# sample NAME WEIGHTS FLAGS...: samples into $work/NAME and their nearest report, once.
sample() {
  local name=$1 weights=$2; shift 2
  if [ ! -e "$work/$name/near.json" ]; then
    rm -rf "$work/$name"
    "$host" sample --weights "$weights" --seed 0 --threads "$threads" --quiet --out "$work/$name" "$@"
    "$host" evaluate nearest --samples "$work/$name" --data "$data" --threads "$threads" \
      --out "$work/$name/near.json" > /dev/null
  fi
}

# Markdown rows from nearest reports: NAME=LABEL pairs.
nearest_rows() {
  python3 - "$work" "$@" <<'PY'
import json, sys
work, pairs = sys.argv[1], sys.argv[2:]
print("| | min | median | mean | max | copies |\n|---|---|---|---|---|---|")
base = None
for pair in pairs:
    name, label = pair.split("=", 1)
    d = json.load(open(f"{work}/{name}/near.json"))
    s = d["sample_distance"]
    print(f"| {label} | {s['min']:.2f} | {s['median']:.2f} | {s['mean']:.2f} | {s['max']:.2f} | {d['copies']} |")
    base = d["test_baseline_distance"], d["test_baseline_count"]
b, n = base
print(f"| test digit → nearest training image ({n}, held out) | {b['min']:.2f} | {b['median']:.2f} | {b['mean']:.2f} | {b['max']:.2f} | |")
PY
}

# Markdown rows of 1-NN labels: NAME=LABEL pairs.
label_rows() {
  python3 - "$work" "$@" <<'PY'
import json, sys
work, pairs = sys.argv[1], sys.argv[2:]
print("| run | 1-NN labels 0 … 9 | χ² (9 d.o.f.) | p | median distance |\n|---|---|---|---|---|")
for pair in pairs:
    name, label = pair.split("=", 1)
    d = json.load(open(f"{work}/{name}/near.json"))
    c = d["label_chi_square"]
    h = " ".join(str(v) for v in d["label_histogram"])
    print(f"| {label} | {h} | {c['chi2']:.1f} | {c['p']:.3g} | {d['sample_distance']['median']:.2f} |")
PY
}

seconds() { python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['timings']['total_s']:.1f}\")" "$1"; }

if want vp; then
  sample vp-t0.1 "$vp" --preset vp-uncond-sigmoid --n 64
  sample vp-t1 "$vp" --preset vp-uncond-sigmoid --n 64 --t0 1
  echo "## VP samples (main command, 64 chains: $(seconds "$work/vp-t0.1/run.json") s)"
  nearest_rows "vp-t0.1=sample → nearest training image (64, T₀ = 0.1)" \
    "vp-t1=sample → nearest training image (64, \`--t0 1\`)"
  label_rows "vp-t0.1=64 samples, T₀ = 0.1" "vp-t1=64 samples, T₀ = 1"
fi

if want temperature; then
  for t in 0.1 0.3 0.5; do
    sample "vp-200-t$t" "$vp" --preset vp-uncond-sigmoid --n 200 --t0 "$t"
  done
  echo "## Temperature (200 samples each)"
  label_rows "vp-200-t0.1=0.1 (preset)" "vp-200-t0.3=0.3" "vp-200-t0.5=0.5"
fi

if want restoration; then
  common=(--weights "$vp" --data "$data" --count 100 --samples 32 --step-rule lipschitz
    --x0 sigma0 --schedule geometric --steps 100 --batch 32 --threads "$threads" --quiet
    --figure figure.png)
  for run in sr4 inpaint sr4-warm inpaint-warm; do
    task=${run%-warm}
    flags=(--task "$task" --sigma-max 1)
    [ "$run" != "$task" ] && flags=(--task "$task" --warm-start --sigma-max 0.7 --sigma-min 0.05)
    [ -e "$work/restoration/$run/table.json" ] && continue
    parts="$work/restoration/$run.parts"
    mkdir -p "$parts"
    for i in 0 1 2 3 4 5 6 7 8 9; do
      [ -e "$parts/$i.done" ] && continue
      rm -rf "${parts:?}/$i"
      "$host" evaluate restoration "${common[@]}" "${flags[@]}" --shard "$i/10" --out "$parts/$i"
      touch "$parts/$i.done"
    done
    "$host" merge --quiet --out "$work/restoration/$run" "$parts"/[0-9]
  done
  echo "## Restoration (100 test digits, 32 chains, K = 100; PSNR dB, mean ± s.e.)"
  python3 - "$work/restoration" <<'PY'
import json, math, sys
root = sys.argv[1]
runs = {r: json.load(open(f"{root}/{r}/table.json")) for r in ("sr4", "sr4-warm", "inpaint", "inpaint-warm")}
def ms(v):
    m = sum(v) / len(v)
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))
    return f"{m:.2f} ± {se:.2f}"
col = lambda r, k: [d["psnr"][k] for d in runs[r]["digits"]]
print("| method | 4× super-resolution | 92% random inpainting |\n|---|---|---|")
rows = [("back-projection (nearest ×4 / zero-fill)", "sr4", "back_projection"),
        ("Gaussian-prior MMSE (closed form)", "sr4", "gaussian_mmse"),
        ("diffusion from noise, one sample (chain 0)", "", "sample"),
        ("diffusion from noise, mean of 32 samples", "", "mean"),
        ("diffusion warm-started, one sample (chain 0)", "-warm", "sample"),
        ("diffusion warm-started, mean of 32 samples", "-warm", "mean")]
for label, suffix, key in rows:
    s = "" if suffix == "sr4" else suffix
    print(f"| {label} | {ms(col('sr4' + s, key))} | {ms(col('inpaint' + s, key))} |")
for r in runs:
    d = [a - b for a, b in zip(col(r, "mean"), col(r, "gaussian_mmse"))]
    print(f"- {r}: mean of 32 − Gaussian MMSE, paired: {ms(d)} dB, better on {sum(x > 0 for x in d)} of {len(d)}")
    with open(f"{root}/restoration-{r}.csv", "w") as f:
        f.write("test_index,back_projection,gaussian_mmse,sample_chain0,mean_of_32\n")
        for g in runs[r]["digits"]:
            p = g["psnr"]
            f.write(f"{g['test_index']},{p['back_projection']:.4f},{p['gaussian_mmse']:.4f},{p['sample']:.4f},{p['mean']:.4f}\n")
PY
fi

if want ve; then
  sample ve-t0.1 "$ve" --schedule sigmoid --steps 100 --c 0.7 --t0 0.1 --n 64
  sample ve-200-t0.5 "$ve" --schedule sigmoid --steps 100 --c 0.7 --t0 0.5 --n 200
  echo "## VE samples"
  nearest_rows "ve-t0.1=sample → nearest training image (64)"
  label_rows "ve-t0.1=64 samples, T₀ = 0.1" "ve-200-t0.5=200 samples, T₀ = 0.5"
fi

if [ "$install" = 1 ]; then
  fig="$ROOT/models/figures"
  copy() { [ -e "$1" ] && cp "$1" "$fig/$2"; return 0; }
  copy "$work/vp-t0.1/grid.png" mnist-vp-samples.png
  copy "$work/vp-200-t0.5/grid.png" mnist-vp-samples-t0.5.png
  copy "$work/ve-t0.1/grid.png" mnist-ve-samples.png
  for run in sr4 inpaint sr4-warm inpaint-warm; do
    copy "$work/restoration/$run/figure.png" "restoration-$run.png"
    copy "$work/restoration/restoration-$run.csv" "restoration-$run.csv"
  done
  echo "installed the figures into models/figures"
fi
