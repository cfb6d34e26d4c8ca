# Sourced by scripts/build-ptx.sh and scripts/check-nostd.sh: finds and checks the toolchain for
# `-Zbuild-std=core` builds (Debian's rustc-web + rust-web-src + llvm-N, see scripts/ptx/README.md).
# Nothing here is used by the normal CPU build, which stays on rustup's stable.
#
# After `ptx_toolchain_check`: NVPTX_RUSTC (the compiler), PTX_RUST_RELEASE (e.g. 1.96.0),
# PTX_LLVM_MAJOR (e.g. 22) and LLVM_BIN (folder with llvm-link, opt, llc of that major).
# Exit code 3 = toolchain missing or mismatched (the message says which apt packages to install).

# Versions verified in shared/docs/gpu.md §2.2. A newer bookworm-security release is accepted as
# long as rustc-web and rust-web-src stay equal (they move in lockstep).
PTX_PIN_RUST=1.96.0+dfsg1-1~deb12u2
PTX_PIN_LLVM_MAJOR=22
PTX_PIN_LLVM=1:22.1.8-1~deb12u1

ptx_die() {
    echo "error: $1" >&2
    echo "       Fix: run this script with --install (as root), or" >&2
    echo "       apt-get install --no-install-recommends rustc-web=$PTX_PIN_RUST rust-web-src=$PTX_PIN_RUST llvm-$PTX_PIN_LLVM_MAJOR" >&2
    exit 3
}

# Installed version of a Debian package, empty if not installed.
ptx_dpkg_version() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "ii" { print $2 }'
}

ptx_toolchain_check() {
    NVPTX_RUSTC=${NVPTX_RUSTC:-/usr/bin/rustc}
    [ -x "$NVPTX_RUSTC" ] || ptx_die "no compiler at $NVPTX_RUSTC (Debian package rustc-web)."
    command -v cargo >/dev/null || ptx_die "cargo not found on PATH (rustup's cargo drives rustc-web)."

    # -Zbuild-std compiles core from source, which only works with the source of exactly this
    # compiler: a different version fails with dozens of errors inside core (gpu.md §2.1).
    if [ "$NVPTX_RUSTC" = /usr/bin/rustc ]; then
        local rustc_ver src_ver
        rustc_ver=$(ptx_dpkg_version rustc-web)
        src_ver=$(ptx_dpkg_version rust-web-src)
        [ -n "$rustc_ver" ] || ptx_die "Debian package rustc-web is not installed."
        [ -n "$src_ver" ] || ptx_die "Debian package rust-web-src is not installed (rustc-web is $rustc_ver)."
        [ "$rustc_ver" = "$src_ver" ] ||
            ptx_die "rustc-web $rustc_ver and rust-web-src $src_ver differ; they must be exactly equal."
        [ "$rustc_ver" = "$PTX_PIN_RUST" ] ||
            echo "note: rustc-web $rustc_ver is not the verified $PTX_PIN_RUST (accepted: both packages match)." >&2
    fi

    local vv sysroot src_release
    vv=$("$NVPTX_RUSTC" -vV) || ptx_die "$NVPTX_RUSTC -vV failed."
    PTX_RUST_RELEASE=$(awk '/^release:/ { print $2 }' <<<"$vv")
    PTX_LLVM_MAJOR=$(awk '/^LLVM version:/ { split($3, v, "."); print v[1] }' <<<"$vv")
    sysroot=$("$NVPTX_RUSTC" --print sysroot)
    [ -f "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ] ||
        ptx_die "no library source at $sysroot/lib/rustlib/src/rust/library (Debian package rust-web-src)."
    src_release=$(cat "$sysroot/lib/rustlib/src/rust/src/version" 2>/dev/null || echo unknown)
    [ "$src_release" = "$PTX_RUST_RELEASE" ] ||
        ptx_die "library source is $src_release but $NVPTX_RUSTC is $PTX_RUST_RELEASE; they must match."

    # The linker wrapper reads rustc's bitcode with llvm-link/opt/llc, which must be the same LLVM.
    [ -n "$PTX_LLVM_MAJOR" ] || ptx_die "cannot read the LLVM version from $NVPTX_RUSTC -vV."
    LLVM_BIN=${LLVM_BIN:-/usr/lib/llvm-$PTX_LLVM_MAJOR/bin}
    local tool
    for tool in llvm-link opt llc; do
        [ -x "$LLVM_BIN/$tool" ] ||
            ptx_die "$LLVM_BIN/$tool missing: rustc uses LLVM $PTX_LLVM_MAJOR, install Debian package llvm-$PTX_LLVM_MAJOR."
    done
    local llc_major
    llc_major=$("$LLVM_BIN/llc" --version | sed -n 's/.*LLVM version \([0-9]*\)\..*/\1/p' | head -1)
    [ "$llc_major" = "$PTX_LLVM_MAJOR" ] ||
        ptx_die "$LLVM_BIN/llc is LLVM $llc_major but rustc uses LLVM $PTX_LLVM_MAJOR (package llvm-$PTX_LLVM_MAJOR)."
    export NVPTX_RUSTC LLVM_BIN PTX_RUST_RELEASE PTX_LLVM_MAJOR
}

# Installs the pinned packages if available, else the current bookworm-security release of
# rustc-web and rust-web-src at one common version, then llvm-N for rustc's LLVM major.
ptx_toolchain_install() {
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    local ver llvm_pkg
    if apt-cache madison rustc-web | grep -F " $PTX_PIN_RUST " >/dev/null &&
        apt-cache madison rust-web-src | grep -F " $PTX_PIN_RUST " >/dev/null; then
        ver=$PTX_PIN_RUST
    else
        ver=$(apt-cache policy rustc-web | awk '/Candidate:/ { print $2 }')
        echo "note: pinned $PTX_PIN_RUST is no longer available; installing rustc-web/rust-web-src $ver" >&2
    fi
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || ptx_die "apt has no rustc-web (bookworm-security main needed)."
    if [ "$ver" = "$PTX_PIN_RUST" ]; then
        # One apt call for all three (the verified combination); keep a newer llvm-22 if offered.
        llvm_pkg=llvm-$PTX_PIN_LLVM_MAJOR
        apt-cache madison "$llvm_pkg" | grep -F " $PTX_PIN_LLVM " >/dev/null && llvm_pkg="$llvm_pkg=$PTX_PIN_LLVM"
        $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades \
            "rustc-web=$ver" "rust-web-src=$ver" "$llvm_pkg" >/dev/null
    else
        $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades "rustc-web=$ver" "rust-web-src=$ver" >/dev/null
        local major
        major=$(/usr/bin/rustc -vV | awk '/^LLVM version:/ { split($3, v, "."); print v[1] }')
        $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades "llvm-$major" >/dev/null
    fi
}

# Clears settings of an outer cargo build that would leak into ours (gpu.md §7).
ptx_clean_env() {
    unset CARGO_ENCODED_RUSTFLAGS RUSTFLAGS RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER \
        CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_BUILD_RUSTFLAGS RUSTDOCFLAGS
}
