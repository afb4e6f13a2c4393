#!/usr/bin/env bash
# The Python package, as a user gets it: builds the wheel (maturin), installs
# it into a fresh venv with pytest and the loaders and runs python/tests
# against it (real mounts: root); then `pip install .` of the checkout into
# another fresh venv must give a working command and package.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/as-root.sh
. scripts/as-root.sh
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d /tmp/modelfs-python.XXXXXX)
trap 'rm -rf "$work"' EXIT
pip_install() { "$1/bin/pip" install --quiet --disable-pip-version-check "${@:2}"; }

python3 -m venv "$work/build"
pip_install "$work/build" "maturin>=1.5,<2"
"$work/build/bin/maturin" build --release --quiet --out "$work/wheels"
cargo build --release --quiet --example range_server

python3 -m venv "$work/wheel"
pip_install "$work/wheel" "$work"/wheels/modelfs-*.whl pytest safetensors numpy
PATH="$work/wheel/bin:$PATH" MODELFS_RANGE_SERVER="$target/release/examples/range_server" \
    "$work/wheel/bin/python" -m pytest --quiet -p no:cacheprovider python/tests

python3 -m venv "$work/source"
pip_install "$work/source" .
"$work/source/bin/modelfs" --help > /dev/null
"$work/source/bin/python" -c "import modelfs; modelfs.executable()"
echo "python: the wheel's tests passed; pip install . works"
