#!/usr/bin/env bash
# Installs what the tests need and a fresh machine lacks (as root): fuse3 for
# the mounts, nginx (with its slice module) for the fleet test's cache tier,
# python3-venv for the Python package's tests, Python loaders for the loader
# tests, clippy and rustfmt. Quick when all is
# there; scripts/test.sh runs it first.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
# Fresh virtual environments for the Python package's tests.
python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
python3 -m pip --version > /dev/null 2>&1 || missing+=(python3-pip)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    # Installed, not started: the tests start their own nginx (the package's would take port 80).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The loader tests use real Python loaders: safetensors, huggingface_hub, transformers.
if ! python3 -c "import safetensors, numpy, huggingface_hub, transformers" 2>/dev/null; then
    echo "setup: installing the Python loaders" >&2
    # A distribution's own Python refuses pip (PEP 668) unless told: this is
    # a test machine's setup, and the loaders must be importable by python3.
    managed=()
    if compgen -G "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" > /dev/null; then
        managed=(--break-system-packages)
    fi
    python3 -m pip install --quiet --disable-pip-version-check "${managed[@]}" \
        safetensors numpy huggingface_hub transformers
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
