#!/usr/bin/env bash
# Prints the path of `model_signing`, the OpenSSF Model Signing CLI (PyPI
# model-signing) whose bundles the signature tests check; installs it into
# its own virtual environment under $MODELFS_TOOLS (default
# /var/tmp/modelfs-tools) once per machine, so its dependencies never meet
# the loaders'. 1.1.1 is the version the tests were written against.
set -euo pipefail
tools="${MODELFS_TOOLS:-/var/tmp/modelfs-tools}"
venv="$tools/model-signing"
if ! "$venv/bin/python" -c "import model_signing" 2>/dev/null; then
    echo "installing model_signing (the signature tests' signer) into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check model-signing==1.1.1 pyopenssl >&2
fi
echo "$venv/bin/model_signing"
