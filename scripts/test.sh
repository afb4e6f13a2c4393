#!/usr/bin/env bash
# The project's checks: formatting, lints, unit tests and end-to-end tests
# (real FUSE mounts: as root, through sudo if need be, with /dev/fuse).
# scripts/setup.sh first installs what is missing (fuse3, nginx, Python
# loaders).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/as-root.sh
. scripts/as-root.sh
scripts/setup.sh
# The S3 tests run against s3s-fs, a real S3-compatible server.
S3S_FS=$(scripts/ensure-s3s-fs.sh)
export S3S_FS
# The signature tests check bundles made by the real OpenSSF signer.
MODEL_SIGNING=$(scripts/ensure-model-signing.sh)
export MODEL_SIGNING

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# Unit tests, then the end-to-end suites under tests/ (doctests: none).
cargo test --lib --tests
# The wheel and the Python API, in fresh virtual environments.
scripts/python-test.sh
