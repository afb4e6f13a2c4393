# shellcheck shell=bash
# Sourced by scripts that mount (FUSE needs root here): runs the script again
# through sudo when not root, keeping the user's Rust toolchain; says so
# plainly where there is no sudo.
if [ "$(id -u)" != 0 ]; then
    if command -v sudo > /dev/null; then
        export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
        # Sourced after the script went to the project root.
        exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR,DEMO_DIR,MODELFS_TOOLS,MODELFS_LOG,HF_TOKEN,HF_ENDPOINT,http_proxy,https_proxy,no_proxy,HTTP_PROXY,HTTPS_PROXY,NO_PROXY \
            "$PWD/scripts/$(basename "$0")" "$@"
    fi
    echo "$(basename "$0"): FUSE needs root here, and there is no sudo: run it as root" >&2
    exit 1
fi
