#!/usr/bin/env bash
# FID-vs-training curve of exported weights (issue 17): for each weights file, samples
# --n digits with the main job's preset at each seed and scores them against the test set
# with `host evaluate fid`; prints one table row per (weights, seed) and the mean ± sd per
# weights file.
#
#   bash scripts/fid-curve.sh [--n 1000] [--seeds 0,1,2] [--preset P] [--host BIN] \
#       [--keep DIR] [--csv FILE] W.safetensors...
#
# Scratch folders go to ${TMPDIR:-/tmp}; the JSON reports are kept in --keep DIR if given.
# --csv appends one row per (weights, seed) to FILE (step,images,seed,n,fid; header written
# when the file is new), the input of `scripts/plot_curve.py --mean --x images --y fid`.
set -euo pipefail
n=1000; seeds=0,1,2; preset=vp-uncond-sigmoid; host=target/release/host; keep=""; csv=""; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --n) n=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --csv) csv=$2; shift 2 ;;
    --sample-flag) extra+=("$2"); shift 2 ;;
    --) shift; break ;;
    -*) echo "error: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "error: name at least one weights file" >&2; exit 2; }
[ -x "$host" ] || { echo "error: $host not found (cargo build --release -p tweedie-host)" >&2; exit 2; }
[ -n "$keep" ] && mkdir -p "$keep"
[ -n "$csv" ] && [ ! -s "$csv" ] && echo "step,images,seed,n,fid" > "$csv"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fid-curve.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
printf '| weights | step | seed | n | FID | IS | precision | recall | chi2 p |\n|---|---|---|---|---|---|---|---|---|\n'
for w in "$@"; do
  read -r step batch < <(python3 -c "
import json,struct,sys
f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n))
t=json.loads(h['__metadata__'].get('tweedie.train','{}'))
print(t.get('steps','?'), t.get('batch','?'))" "$w")
  fids=()
  for s in ${seeds//,/ }; do
    out="$scratch/$(basename "$w" .safetensors)-$s"
    "$host" sample --weights "$w" --preset "$preset" --n "$n" --seed "$s" ${extra[@]+"${extra[@]}"} --out "$out" >/dev/null 2>&1 \
      || { echo "error: host sample failed for $w seed $s" >&2; exit 2; }
    "$host" evaluate fid --samples "$out" --n "$n" --out "$out.json" >/dev/null 2>&1 \
      || { echo "error: host evaluate fid failed for $w seed $s" >&2; exit 2; }
    [ -n "$keep" ] && cp "$out.json" "$keep/"
    row=$(python3 -c "
import json,sys
r=json.load(open(sys.argv[1]))['scores']
print(r['fid'], r['inception_score'], r['precision_recall']['precision'],
      r['precision_recall']['recall'], r['class_balance']['p'])" "$out.json")
    read -r fid is prec rec p <<<"$row"
    fids+=("$fid")
    [ -n "$csv" ] && echo "$step,$((step * batch)),$s,$n,$fid" >> "$csv"
    printf '| %s | %s | %s | %s | %.2f | %.2f | %.3f | %.3f | %.3g |\n' "$(basename "$w")" "$step" "$s" "$n" "$fid" "$is" "$prec" "$rec" "$p"
    rm -rf "$out"
  done
  python3 -c "
import statistics as st,sys
v=[float(x) for x in sys.argv[2:]]
sd=st.stdev(v) if len(v)>1 else 0.0
print(f'| {sys.argv[1]} | mean ± sd | | | {st.mean(v):.2f} ± {sd:.2f} | | | | |')" "$(basename "$w")" "${fids[@]}"
done
