#!/usr/bin/env bash
# Prints the path of s3s-fs, the real S3-compatible server (SigV4 checked)
# that the S3 tests and the benchmark run against; builds it from crates.io
# into $MODELFS_TOOLS (default /var/tmp/modelfs-tools) once per machine,
# about 2 minutes. 0.14.1 is the newest that builds with rustc 1.95.
set -euo pipefail
tools="${MODELFS_TOOLS:-/var/tmp/modelfs-tools}"
if ! PATH="$tools/bin:$PATH" command -v s3s-fs >/dev/null; then
    echo "installing s3s-fs (the tests' S3 server) into $tools" >&2
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root "$tools" >&2
fi
PATH="$tools/bin:$PATH" command -v s3s-fs
