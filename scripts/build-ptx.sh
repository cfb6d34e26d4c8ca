#!/usr/bin/env bash
# Builds tweedie-kernels (with tweedie-core) into ONE self-contained PTX module with rustc's own
# NVPTX backend: Debian's rustc-web + rust-web-src (-Zbuild-std=core) + llvm-N for the bitcode link.
# Recipe and pitfalls: scripts/ptx/README.md and shared/docs/gpu.md. The CPU build never uses this.
#
# usage: scripts/build-ptx.sh [--install] [--ptxas] [--sm sm_80] [--entry NAME]... [OUT]
#   OUT        output file (default target/ptx/tweedie_kernels.ptx)
#   --install  apt-get install the pinned toolchain first if it is missing or mismatched (root/sudo)
#   --ptxas    also assemble the PTX with ptxas 13.0 (PyPI wheel nvidia-cuda-nvcc==13.0.88, installed
#              once into $PTXAS_DIR, default ~/.cache/tweedie/nvidia-cuda-nvcc-13.0.88) for sm_80 and sm_90
#   --sm SM    PTX target architecture (default sm_80: the module then also JIT-compiles on sm_90)
#   --entry N  fail unless the PTX has the kernel `.visible .entry N` (repeatable)
# env: NVPTX_RUSTC (default /usr/bin/rustc), LLVM_BIN (default /usr/lib/llvm-<rustc's major>/bin),
#      PTXAS (an existing ptxas binary to use instead of the wheel)
# exit codes: 3 toolchain missing or mismatched, 4 PTX check failed, other = build error
set -euo pipefail

start=$SECONDS
install=0
run_ptxas=0
sm=sm_80
out=
entries=()
while [ $# -gt 0 ]; do
    case "$1" in
        --install) install=1; shift ;;
        --ptxas) run_ptxas=1; shift ;;
        --sm) sm=$2; shift 2 ;;
        --entry) entries+=("$2"); shift 2 ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out=$1; shift ;;
    esac
done
# OUT is relative to the caller's folder; everything else runs from the workspace root.
root=$(cd "$(dirname "$0")/.." && pwd)
case "$out" in
    "") out=$root/target/ptx/tweedie_kernels.ptx ;;
    /*) ;;
    *) out=$PWD/$out ;;
esac
cd "$root"
# shellcheck source=ptx/toolchain.sh
. scripts/ptx/toolchain.sh

if [ "$install" = 1 ] && ! (ptx_toolchain_check) 2>/dev/null; then
    echo "== installing the Debian toolchain (rustc-web, rust-web-src, llvm-N)"
    ptx_toolchain_install
fi
ptx_toolchain_check
echo "== toolchain: rustc $PTX_RUST_RELEASE ($NVPTX_RUSTC), LLVM $PTX_LLVM_MAJOR ($LLVM_BIN), $sm"

ptx_clean_env
export RUSTC=$NVPTX_RUSTC RUSTC_BOOTSTRAP=1 LLVM_BIN
export CARGO_TARGET_NVPTX64_NVIDIA_CUDA_LINKER=$root/scripts/ptx/link.sh
# immediate-abort: a panic becomes an inline `trap`, with no calls into core's formatting code.
export CARGO_TARGET_NVPTX64_NVIDIA_CUDA_RUSTFLAGS="-C target-cpu=$sm -Zunstable-options -Cpanic=immediate-abort"
# Debug info is stripped at the link anyway; not generating it saves build time.
export CARGO_PROFILE_RELEASE_DEBUG=false
# A target folder of its own: rustc 1.96 and the host's rustc never invalidate each other.
target_dir=$root/target/ptx-build
cargo rustc -p tweedie-kernels --release --lib --crate-type cdylib \
    --target nvptx64-nvidia-cuda -Zbuild-std=core --target-dir "$target_dir"

mkdir -p "$(dirname "$out")"
cp "$target_dir/nvptx64-nvidia-cuda/release/tweedie_kernels.ptx" "$out"

# A call the link could not resolve stays `.extern .func` and fails at module load (ptxas: fatal).
if grep -q '\.extern \.func' "$out"; then
    echo "error: unresolved functions in $out:" >&2
    grep '\.extern \.func' "$out" >&2
    exit 4
fi
mapfile -t found < <(sed -n 's/^\.visible \.entry \([A-Za-z0-9_]*\)(.*/\1/p' "$out")
[ ${#found[@]} -gt 0 ] || { echo "error: no kernel entry point in $out" >&2; exit 4; }
for name in "${entries[@]+"${entries[@]}"}"; do
    printf '%s\n' "${found[@]}" | grep -qx "$name" ||
        { echo "error: kernel $name missing from $out" >&2; exit 4; }
done
echo "== $out: $(wc -c <"$out") bytes, $(sed -n 's/^\.version //p' "$out" | head -1) / $(sed -n 's/^\.target //p' "$out" | head -1), entries: ${found[*]}"

if [ "$run_ptxas" = 1 ]; then
    if [ -z "${PTXAS:-}" ]; then
        PTXAS_DIR=${PTXAS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tweedie/nvidia-cuda-nvcc-13.0.88}
        PTXAS=$PTXAS_DIR/nvidia/cu13/bin/ptxas
        if [ ! -x "$PTXAS" ]; then
            echo "== installing ptxas (PyPI nvidia-cuda-nvcc==13.0.88) into $PTXAS_DIR"
            PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
                --no-deps --target "$PTXAS_DIR" "nvidia-cuda-nvcc==13.0.88"
        fi
    fi
    for arch in sm_80 sm_90; do
        # ptxas cannot lower a module to an architecture older than its `.target`.
        [ "${arch#sm_}" -ge "${sm//[!0-9]/}" ] || continue
        echo "== ptxas -arch=$arch"
        "$PTXAS" -arch="$arch" -v "$out" -o /dev/null
    done
fi
echo "== done in $((SECONDS - start)) s"
