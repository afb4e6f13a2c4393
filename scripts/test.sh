#!/usr/bin/env bash
# The project's checks: formatting, lints, unit tests and end-to-end tests
# (real FUSE mounts, so run as root with /dev/fuse and python3 with
# safetensors + numpy for the loader test; .ci/run installs those).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# Unit tests, then the end-to-end suites under tests/ (doctests: none).
cargo test --lib --tests
