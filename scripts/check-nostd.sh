#!/usr/bin/env bash
# Proves tweedie-core and tweedie-kernels are truly no_std and alloc-free: builds them for the bare
# target x86_64-unknown-none with a sysroot that contains ONLY `core` (-Zbuild-std=core), so any
# use of std or alloc, in our code or in a dependency's enabled features, fails to compile.
# Uses the same toolchain as scripts/build-ptx.sh (Debian's rustc-web + rust-web-src, RUSTC_BOOTSTRAP=1);
# rustup's stable has no library source for -Zbuild-std. See scripts/ptx/README.md.
#
# usage: scripts/check-nostd.sh [--install]
#   --install  apt-get install the pinned toolchain first if it is missing or mismatched (root/sudo)
# exit codes: 3 toolchain missing or mismatched, other = build error (i.e. std/alloc is used)
set -euo pipefail

start=$SECONDS
install=0
case "${1:-}" in
    --install) install=1 ;;
    "") ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
esac
cd "$(dirname "$0")/.."
# shellcheck source=ptx/toolchain.sh
. scripts/ptx/toolchain.sh

if [ "$install" = 1 ] && ! (ptx_toolchain_check) 2>/dev/null; then
    echo "== installing the Debian toolchain (rustc-web, rust-web-src, llvm-N)"
    ptx_toolchain_install
fi
ptx_toolchain_check
echo "== toolchain: rustc $PTX_RUST_RELEASE ($NVPTX_RUSTC)"

ptx_clean_env
export RUSTC=$NVPTX_RUSTC RUSTC_BOOTSTRAP=1 CARGO_PROFILE_RELEASE_DEBUG=false
# `cargo check` of the libs only (tests use std by design: cfg_attr(not(test), no_std)); a
# missing `std`/`alloc` crate is a check-time error, so codegen would prove nothing more.
# Same target folder and profile settings as build-ptx.sh, so the host-side build scripts and
# proc-macros (syn, zerocopy-derive) compiled there are reused rather than rebuilt.
cargo check -p tweedie-core -p tweedie-kernels --lib --release \
    --target x86_64-unknown-none -Zbuild-std=core --target-dir target/ptx-build
echo "== tweedie-core and tweedie-kernels compile against core only; done in $((SECONDS - start)) s"
