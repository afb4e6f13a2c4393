#!/usr/bin/env bash
# The project's checks: formatting, lints, unit tests and end-to-end tests
# (real FUSE mounts, so run as root with /dev/fuse and python3 with
# safetensors, numpy, huggingface_hub and transformers for the loader tests;
# .ci/run installs those).
set -euo pipefail
cd "$(dirname "$0")/.."
# The S3 tests run against s3s-fs, a real S3-compatible server.
S3S_FS=$(scripts/ensure-s3s-fs.sh)
export S3S_FS

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# Unit tests, then the end-to-end suites under tests/ (doctests: none).
cargo test --lib --tests
