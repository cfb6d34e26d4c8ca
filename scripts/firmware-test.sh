#!/usr/bin/env bash
# Proves tweedie-core on microcontrollers: builds the board binaries of firmware/boards for
# three bare targets with Debian's rustc-web + rust-web-src (-Zbuild-std=core, RUSTC_BOOTSTRAP=1,
# the toolchain of scripts/build-ptx.sh) and ld.lld-22, runs each under QEMU with semihosting,
# and demands exactly the hash lines of firmware/golden.txt (which tests/tests/firmware_checks.rs
# pins from the same checks run natively on x86_64). Any difference, error, panic, fault or
# timeout fails. Also checks that an injected Err and panic exit QEMU with a failure code, and
# measures the footprint (flash, peak stack, instructions per sampling step, soft-float
# routines) into target/firmware/footprint.md.
#
#   thumbv7em-none-eabihf          qemu-system-arm -M mps2-an386   Cortex-M4F (f32 FPU only)
#   thumbv6m-none-eabi             qemu-system-arm -M microbit     Cortex-M0 (no FPU)
#   riscv32imac-unknown-none-elf   qemu-system-riscv32 -M virt     RV32IMAC (no FPU)
#
# usage: scripts/firmware-test.sh [--install] [--readme]
#   --install  apt-get install the pinned toolchain, lld and QEMU first if missing (root/sudo)
#   --readme   also write the footprint table into README.md (between its footprint markers)
# exit codes: 3 toolchain missing or mismatched, 4 a check failed, other = build error
set -euo pipefail

start=$SECONDS
install=0
readme=0
for arg in "$@"; do
    case "$arg" in
        --install) install=1 ;;
        --readme) readme=1 ;;
        *) sed -n '2,19p' "$0"; exit 2 ;;
    esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=ptx/toolchain.sh
. scripts/ptx/toolchain.sh

# Versions verified with this script (Debian bookworm + bookworm-security).
FW_PIN_LLD=1:22.1.8-1~deb12u1
FW_PIN_QEMU=1:7.2+dfsg-7+deb12u18+b3
# Seconds per QEMU run; a run takes 1-10 s, so only a hang reaches this.
FW_TIMEOUT=120

# apt-get install PACKAGE=PIN if apt offers PIN, else its current candidate (with a note).
fw_install() {
    local pkg=$1 pin=$2 sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    if ! apt-cache madison "$pkg" | grep -F " $pin " >/dev/null; then
        pin=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
        echo "note: pinned version of $pkg is no longer available; installing $pin" >&2
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        --allow-downgrades "$pkg=$pin" >/dev/null
}

if [ "$install" = 1 ]; then
    if ! (ptx_toolchain_check) 2>/dev/null; then
        echo "== installing the Debian toolchain (rustc-web, rust-web-src, llvm-N)"
        ptx_toolchain_install # runs apt-get update
    fi
    missing=()
    [ -n "$(ptx_dpkg_version lld-22)" ] || missing+=("lld-22 $FW_PIN_LLD")
    for pkg in qemu-system-arm qemu-system-misc; do
        [ -n "$(ptx_dpkg_version $pkg)" ] || missing+=("$pkg $FW_PIN_QEMU")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        $([ "$(id -u)" = 0 ] || echo sudo) apt-get update -qq
        for entry in "${missing[@]}"; do
            echo "== installing ${entry% *}"
            fw_install ${entry% *} "${entry#* }"
        done
    fi
fi
ptx_toolchain_check
for tool in ld.lld-22 qemu-system-arm qemu-system-riscv32; do
    command -v $tool >/dev/null || {
        echo "error: $tool not found. Fix: run this script with --install (as root)." >&2
        exit 3
    }
done
echo "== toolchain: rustc $PTX_RUST_RELEASE ($NVPTX_RUSTC), $(ld.lld-22 --version | head -1), $(qemu-system-arm --version | head -1)"

ptx_clean_env
export RUSTC=$NVPTX_RUSTC RUSTC_BOOTSTRAP=1
for t in THUMBV7EM_NONE_EABIHF THUMBV6M_NONE_EABI RISCV32IMAC_UNKNOWN_NONE_ELF; do
    export "CARGO_TARGET_${t}_LINKER=ld.lld-22"
done
out=$root/target/firmware
rm -rf "$out"
mkdir -p "$out"

# target, package, QEMU command (the ELF is appended with -kernel).
targets=(
    "thumbv7em-none-eabihf tweedie-fw-cortex-m qemu-system-arm -M mps2-an386"
    "thumbv6m-none-eabi tweedie-fw-cortex-m qemu-system-arm -M microbit"
    "riscv32imac-unknown-none-elf tweedie-fw-riscv qemu-system-riscv32 -M virt -bios none"
)

# Builds TARGET's PACKAGE with extra cargo args into $out/TARGET/NAME.elf.
build() {
    local target=$1 package=$2 name=$3
    shift 3
    (cd firmware/boards && cargo build --release --locked -q -p "$package" --target "$target" \
        -Zbuild-std=core "$@")
    mkdir -p "$out/$target"
    cp "firmware/boards/target/$target/release/$package" "$out/$target/$name.elf"
}

# Runs an ELF under QEMU (semihosting on, one instruction = 1 ns of virtual time) with an
# optional command line; output in LOG, returns QEMU's exit code (124 = timeout).
run_qemu() {
    local elf=$1 log=$2 append=$3
    shift 3
    local rc=0
    timeout "$FW_TIMEOUT" "$@" -nographic -monitor none -serial none \
        -semihosting-config enable=on,target=native -icount shift=0 \
        -kernel "$elf" ${append:+-append "$append"} >"$log" 2>&1 || rc=$?
    return $rc
}

failed=0
check_fail() {
    echo "FAIL: $1" >&2
    failed=1
}

for spec in "${targets[@]}"; do
    read -r target package qemu <<<"$spec"
    echo "== $target: build ($((SECONDS - start)) s)"
    build "$target" "$package" plain
    build "$target" "$package" fmt --features fmt
    for variant in plain fmt; do
        elf=$out/$target/$variant.elf
        log=$out/$target/$variant.log
        rc=0
        # shellcheck disable=SC2086
        run_qemu "$elf" "$log" "" $qemu || rc=$?
        if [ "$rc" != 0 ]; then
            check_fail "$target $variant: QEMU exited with $rc (log $log)"
            cat "$log" >&2
            continue
        fi
        if [ "$(tail -1 "$log")" != ok ]; then
            check_fail "$target $variant: last line is not ok (log $log)"
        fi
        if ! diff <(grep '^hash ' "$log") firmware/golden.txt >"$log.diff"; then
            check_fail "$target $variant: hashes differ from firmware/golden.txt (x86_64):"
            cat "$log.diff" >&2
        fi
    done
    # The exit paths: an Err from core and a panic must both exit QEMU with failure.
    for fault in error panic; do
        log=$out/$target/fault-$fault.log
        rc=0
        # shellcheck disable=SC2086
        run_qemu "$out/$target/plain.elf" "$log" "fault=$fault" $qemu || rc=$?
        if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then
            check_fail "$target fault=$fault: QEMU exited with $rc, not a failure code (log $log)"
        elif ! grep -q '^error: ' "$log"; then
            check_fail "$target fault=$fault: no error line (log $log)"
        fi
    done
    echo "== $target: $(grep -c '^hash ' "$out/$target/plain.log") hashes equal x86_64's; Err and panic exit with failure"
done
[ "$failed" = 0 ] || { echo "error: firmware checks failed" >&2; exit 4; }

# --- footprint ---------------------------------------------------------------------------
llvm=/usr/lib/llvm-$PTX_LLVM_MAJOR/bin
# Bytes of one section (0 if absent).
section() {
    "$llvm/llvm-size" -A "$1" | awk -v s="$2" '$1 == s { print $2; found = 1 } END { if (!found) print 0 }'
}
# The f64 routines of compiler-builtins linked in (software double precision), as short names.
soft_f64() {
    "$llvm/llvm-nm" --defined-only "$1" | awk '{ print $3 }' |
        { grep -E '^__(aeabi_(d[a-z0-9]+|[il]2d|ul2d|ui2d|f2d)|[a-z]+df[23]|fix(uns)?df[sd]i|float(un)?[sd]idf|extendsfdf2|truncdfsf2)$' || true; } |
        sed -E 's/^__(aeabi_)?//' | sort -u | tr '\n' ' ' | sed 's/ $//'
}
# The same for f32 (none where the FPU does f32 in hardware).
soft_f32() {
    "$llvm/llvm-nm" --defined-only "$1" | awk '{ print $3 }' |
        { grep -E '^__(aeabi_(f[a-z0-9]+|[il]2f|ul2f|ui2f)|[a-z]+sf[23]|fix(uns)?sf[sd]i|float(un)?[sd]isf)$' || true; } |
        { grep -v '^__truncdfsf2$' || true; } | sed -E 's/^__(aeabi_)?//' | sort -u | tr '\n' ' ' | sed 's/ $//'
}
cost() {
    awk -v k="$2" '$1 == "cost" && $2 == k { print $3 }' "$1"
}
{
    echo "| target (QEMU machine) | flash .text / .rodata | with core::fmt | peak stack | instructions per step | per element | per noise draw | software f64 routines | software f32 routines |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for spec in "${targets[@]}"; do
        read -r target _ _ _ machine _ <<<"$spec"
        plain=$out/$target/plain.elf
        fmt=$out/$target/fmt.elf
        step=$(cost "$out/$target/plain.log" readme.step)
        f32=$(soft_f32 "$plain")
        echo "| $target ($machine) | $(section "$plain" .text) / $(section "$plain" .rodata) B" \
            "| $(section "$fmt" .text) / $(section "$fmt" .rodata) B" \
            "| $(cost "$out/$target/plain.log" stack.peak-bytes) B | $step | $((step / 128))" \
            "| $(cost "$out/$target/plain.log" readme.draw)" \
            "| $(soft_f64 "$plain") | ${f32:-none (FPU)} |"
    done
} >"$out/footprint.md"
echo "== footprint (README example: 8 chains x 16, one noisy step = denoiser + update of 128 elements):"
cat "$out/footprint.md"
echo "== SysTick calibration (ticks per 10^6 instructions): an386 $(cost "$out/thumbv7em-none-eabihf/plain.log" systick.ticks-per-1M-instructions), microbit $(cost "$out/thumbv6m-none-eabi/plain.log" systick.ticks-per-1M-instructions)"
if [ "$readme" = 1 ]; then
    # Replace the lines between the markers; README.md is rewritten through a temporary file.
    begin='<!-- footprint: begin (scripts/firmware-test.sh --readme) -->'
    end='<!-- footprint: end -->'
    grep -qxF "$begin" README.md && grep -qxF "$end" README.md ||
        { echo "error: README.md lacks the footprint markers" >&2; exit 4; }
    awk -v b="$begin" -v e="$end" -v table="$out/footprint.md" '
        $0 == b { print; while ((getline line < table) > 0) print line; skip = 1; next }
        $0 == e { skip = 0 }
        !skip { print }' README.md >README.md.tmp
    mv README.md.tmp README.md
    echo "== README.md: footprint table updated"
fi
echo "== firmware checks passed on 3 targets in $((SECONDS - start)) s"
