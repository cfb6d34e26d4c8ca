#!/usr/bin/env bash
# Stand-in for rustc's `llvm-bitcode-linker` (not shipped by Debian's rustc-web), set as the linker
# of the nvptx64-nvidia-cuda target by scripts/build-ptx.sh. rustc calls it as
#   link.sh --export-symbol K ... <bitcode objects, rlibs> -L DIR --target T --target-cpu sm_80 -o X.ptx -O3
# and it does what the real tool does: llvm-link everything into one module, internalize all but the
# kernel entry points, optimise, and let llc write PTX. Linking is what resolves calls into
# dependencies (core, libm, ...); per-crate `--emit asm` would leave them as `.extern .func`.
# LLVM tools come from $LLVM_BIN, whose major version must match rustc's LLVM (build-ptx.sh checks).
set -euo pipefail

llvm_bin=${LLVM_BIN:?LLVM_BIN must point at the bin folder of llvm-N matching the LLVM of rustc}
cpu=sm_80
feature=
out=
opt_level=3
symbols=()
inputs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --export-symbol) symbols+=("$2"); shift 2 ;;
        --target-cpu) cpu=$2; shift 2 ;;
        --target-feature) feature=$2; shift 2 ;;
        --target | -L) shift 2 ;;
        -L*) shift ;;
        --debug | --lto) shift ;;
        -o) out=$2; shift 2 ;;
        -O?) opt_level=${1#-O}; shift ;;
        -*) echo "ptx link: unknown option $1" >&2; exit 2 ;;
        *) inputs+=("$1"); shift ;;
    esac
done
[ -n "$out" ] || { echo "ptx link: no -o OUT given" >&2; exit 2; }
[ ${#inputs[@]} -gt 0 ] || { echo "ptx link: no input files" >&2; exit 2; }

base=${out%.ptx}
printf '%s\n' "${symbols[@]+"${symbols[@]}"}" >"$base.symbols.txt"
"$llvm_bin/llvm-link" --ignore-non-bitcode "${inputs[@]}" -o "$base.linked.bc"
# opt's pipeline names O0..O3 as default<On>; s/z are not meaningful for PTX, treat them as O2.
case "$opt_level" in 0 | 1 | 2 | 3) ;; *) opt_level=2 ;; esac
"$llvm_bin/opt" "$base.linked.bc" -o "$base.opt.bc" --strip-debug \
    --internalize-public-api-file="$base.symbols.txt" \
    --passes="default<O$opt_level>,internalize,globaldce"
"$llvm_bin/llc" --mcpu="$cpu" ${feature:+--mattr="$feature"} "$base.opt.bc" -o "$out"
