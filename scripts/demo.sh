#!/usr/bin/env bash
# The modelfs demo, on one machine: build, make two small sample models (one a
# real .safetensors file), serve them over HTTP on 127.0.0.1, describe them in a
# manifest with `modelfs manifest build`, mount it, list and read through the
# mount, show the cache, unmount. Needs root (FUSE) and Rust; nothing else.
#
#   scripts/demo.sh            # work dir: a fresh temporary directory
#   DEMO_DIR=/tmp/d scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# shellcheck source=scripts/as-root.sh
. scripts/as-root.sh
[ -e /dev/fuse ] || { echo "demo: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }

say "build"
cargo build --release --quiet --bin modelfs --example range_server
target=${CARGO_TARGET_DIR:-target}
modelfs="$target/release/modelfs"
server="$target/release/examples/range_server"

work=${DEMO_DIR:-$(mktemp -d /tmp/modelfs-demo.XXXXXX)}
mkdir -p "$work/models/tiny-gpt" "$work/models/tiny-vae/vae" "$work/mnt"
export MODELFS_CACHE_DIR="$work/cache" MODELFS_MANIFEST="$work/models.toml"
server_pid=
cleanup() {
    mountpoint -q "$work/mnt" 2>/dev/null && "$modelfs" umount "$work/mnt" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
}
trap cleanup EXIT

say "sample models in $work/models"
# A real safetensors file, written with the standard library only:
# 8-byte little-endian header length, JSON header, then the tensor bytes.
python3 - "$work/models/tiny-gpt/model.safetensors" <<'PY'
import json, struct, sys, random
random.seed(1)
tensors = {"wte.weight": (512, 256), "ln_f.weight": (256,), "lm_head.weight": (256, 512)}
header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
for name, shape in tensors.items():
    n = 1
    for d in shape: n *= d
    data = struct.pack(f"<{n}f", *(random.gauss(0, 0.02) for _ in range(n)))
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
    blobs.append(data); offset += len(data)
h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h); [f.write(b) for b in blobs]
PY
echo '{"model_type": "gpt2", "n_embd": 256, "vocab_size": 512}' > "$work/models/tiny-gpt/config.json"
head -c $((48 << 20)) /dev/urandom > "$work/models/tiny-vae/vae/diffusion_pytorch_model.bin"
echo '{"_class_name": "AutoencoderKL"}' > "$work/models/tiny-vae/vae/config.json"
ls -lR "$work/models" | sed 's/^/  /'

say "serve them on 127.0.0.1"
"$server" "$work/models" > "$work/server.url" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/server.url" ] && break; sleep 0.05; done
url=$(head -n1 "$work/server.url")
echo "  $url"

say "write the manifest with modelfs manifest build"
{
    echo "version = 1"
    echo
    "$modelfs" manifest build "$work/models/tiny-gpt" --id "tiny-gpt@fp32" --source "$url/tiny-gpt" --chunk-size 256K
    echo
    "$modelfs" manifest build "$work/models/tiny-vae" --id "tiny-vae@1.0" --source "$url/tiny-vae" --chunk-size 4M
} > "$MODELFS_MANIFEST"
"$modelfs" manifest check
head -n 14 "$MODELFS_MANIFEST" | sed 's/^/  /'
echo "  ..."

say "mount at $work/mnt"
"$modelfs" mount "$work/mnt" --daemon
"$modelfs" ls

say "ls -lR: every model and size, no download"
ls -lR "$work/mnt" | sed 's/^/  /'
du -sh --apparent-size "$work/mnt"/* | sed 's/^/  apparent: /'
du -sh "$work/mnt"/* | sed 's/^/  cached:   /'

say "read a file through the mount and check it"
mounted="$work/mnt/tiny-vae@1.0/vae/diffusion_pytorch_model.bin"
original="$work/models/tiny-vae/vae/diffusion_pytorch_model.bin"
a=$(sha256sum < "$mounted" | cut -d' ' -f1)
b=$(sha256sum < "$original" | cut -d' ' -f1)
echo "  through modelfs: $a"
echo "  original:        $b"
[ "$a" = "$b" ] || { echo "demo: MISMATCH" >&2; exit 1; }
echo "  identical"
if python3 -c "import safetensors, numpy" 2>/dev/null; then
    python3 - "$work/mnt/tiny-gpt@fp32/model.safetensors" <<'PY'
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="np") as f:
    for k in f.keys():
        print(f"  safetensors: {k} {f.get_tensor(k).shape}")
PY
fi

say "cache status"
"$modelfs" status

say "unmount (the cache stays for the next mount)"
"$modelfs" umount "$work/mnt"
for _ in $(seq 100); do mountpoint -q "$work/mnt" || break; sleep 0.05; done
"$modelfs" ls

say "prefetch every model; each ready tree works without FUSE"
"$modelfs" prefetch --all
ls -l "$("$modelfs" prefetch tiny-gpt@fp32)"
"$modelfs" verify
echo
echo "demo done: work dir $work"
