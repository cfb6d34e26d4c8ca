#!/usr/bin/env bash
# The repository carries its own copies of the reference documents (docs/) and the golden data
# (golden/), so a clone alone builds and tests. This checks them against their checksum lists
# and, where ../shared (or $TWEEDIE_SHARED) exists, that they are byte-identical mirrors of it:
# the same files, the same bytes, none missing and none extra.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd docs && sha256sum --quiet -c SHA256SUMS)
(cd golden && sha256sum --quiet -c SHA256SUMS)
shared=${TWEEDIE_SHARED:-../shared}
if [ ! -d "$shared/docs" ] || [ ! -d "$shared/golden" ]; then
    echo "check-reference: checksums ok; no $shared to compare with"
    exit 0
fi
status=0
compare() { # mirror list-file source-folder
    local mirror=$1 source=$2
    diff <(cut -c67- "$mirror/SHA256SUMS" | sort) \
        <(cd "$source" && find . -type f | sed 's|^\./||' | sort) >/dev/null ||
        { echo "check-reference: $mirror/SHA256SUMS does not list exactly the files of $source"; status=1; }
    while read -r _ f; do
        cmp -s "$mirror/$f" "$source/$f" || { echo "check-reference: $mirror/$f differs from $source/$f"; status=1; }
    done < "$mirror/SHA256SUMS"
}
compare docs "$shared/docs"
compare golden "$shared/golden"
[ $status -eq 0 ] && echo "check-reference: docs/ and golden/ are byte-identical mirrors of $shared"
exit $status
