#!/usr/bin/env bash
# modelfs against real peers on the same file, same server, same run:
#   cold read:  modelfs mount  vs  curl, aria2c -x8, rclone mount (VFS full cache)
#   cold read from S3 (s3s-fs, signed):  modelfs mount  vs  rclone cat, rclone mount
#   warm read:  modelfs (passthrough)  vs  dd of the cache file, rclone warm
#   one 4 KiB read deep in the file: bytes fetched
#   peak RSS of the mount process
# Ratios matter, not absolute MB/s: these machines are shared and noisy.
# Everything is on 127.0.0.1. Needs root (FUSE).
#
#   scripts/bench.sh            # 1 GiB file
#   SIZE_MB=256 scripts/bench.sh
#   BASELINE_BIN=/path/to/an/older/modelfs scripts/bench.sh
#       also measures that build's mount (cold, warm, 4 KiB, RSS) in the
#       same run, alternating with this one, and prints both side by side
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${SIZE_MB:-1024}

for tool in aria2c:aria2 rclone:rclone fusermount3:fuse3 curl:curl; do
    command -v "${tool%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${tool#*:}" >/dev/null; }
done
cargo build --release --quiet --bin modelfs --example range_server
target=${CARGO_TARGET_DIR:-target}
modelfs="$target/release/modelfs"
work=$(mktemp -d /tmp/modelfs-bench.XXXXXX)
mkdir -p "$work/srv/m" "$work/mnt" "$work/rmnt" "$work/aria"
server_pid=
s3_pid=
cleanup() {
    for m in "$work/mnt" "$work/rmnt"; do mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }; done
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

head -c $((size_mb << 20)) /dev/urandom > "$work/srv/m/big.bin"
sync   # no writeback of the test file competing with the runs
size=$((size_mb << 20))
"$target/release/examples/range_server" "$work/srv" > "$work/url" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.05; done
url=$(head -n1 "$work/url")
{ echo "version = 1"; "$modelfs" manifest build "$work/srv/m" --id m --source "$url/m"; } > "$work/m.toml"
stats() { curl -s "$url/__stats" | sed 's/.*"bytes": \([0-9]*\).*/\1/'; }

# Seconds taken by a command.
timed() {
    local s e; s=$(date +%s.%N)
    "$@" >/dev/null 2>"$work/err" || { echo "bench: failed: $* ($(cat "$work/err"))" >&2; exit 1; }
    e=$(date +%s.%N); awk "BEGIN { print $e - $s }"
}
mbps() { awk "BEGIN { printf \"%d\", $size / $1 / 1e6 }"; }
ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }
mount_modelfs() { "${bin:-$modelfs}" mount "$work/mnt" -m "$work/m.toml" --cache-dir "$1" --daemon --log-file "$work/mount.log"; }
umount_modelfs() { "$modelfs" umount "$work/mnt"; for _ in $(seq 200); do mountpoint -q "$work/mnt" || break; sleep 0.05; done; }

t_curl=$(timed curl -sf -o /dev/null "$url/m/big.bin")
# curl as a download tool is used: to disk, then checked.
t_curl_disk=$(timed sh -c "curl -sf '$url/m/big.bin' | tee '$work/aria/curl.bin' | sha256sum")
rm -f "$work/aria/curl.bin"; sync
t_aria=$(timed aria2c -q -x 8 -s 8 -k 8M --allow-overwrite=true -d "$work/aria" "$url/m/big.bin")
rm -f "$work/aria/big.bin"; sync

# The modelfs rows for the build `bin`, with a cache of its own under
# "$work/$1": sets t_cold, t_same, t_warm, rss_kb, random_bytes.
measure_modelfs() {
    mount_modelfs "$work/$1"
    pid=$(pgrep -f "mount $work/mnt" | head -n1)
    t_cold=$(timed dd if="$work/mnt/m/big.bin" of=/dev/null bs=1M)
    rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    t_same=$(timed dd if="$work/mnt/m/big.bin" of=/dev/null bs=1M)
    umount_modelfs
    sync
    # A new mount over the complete cache file: opened with FUSE passthrough.
    mount_modelfs "$work/$1"
    t_warm=$(timed dd if="$work/mnt/m/big.bin" of=/dev/null bs=1M)
    umount_modelfs
    mount_modelfs "$work/$1-random"
    local before; before=$(stats)
    dd if="$work/mnt/m/big.bin" of=/dev/null bs=4096 count=1 skip=$(( (size / 4096) * 3 / 4 )) 2>/dev/null
    random_bytes=$(( $(stats) - before ))
    umount_modelfs
}

if [ -n "${BASELINE_BIN:-}" ]; then
    bin=$BASELINE_BIN measure_modelfs baseline
    b_cold=$t_cold b_same=$t_same b_warm=$t_warm b_rss=$rss_kb b_random=$random_bytes
fi
measure_modelfs cache
blob=$(find "$work/cache/blobs" -type f -size +1M | head -n1)
t_disk=$(timed dd if="$blob" of=/dev/null bs=1M)

rclone mount :http: "$work/rmnt" --http-url "$url/m/" --vfs-cache-mode full \
    --cache-dir "$work/rclone-cache" --daemon --daemon-timeout 30s
for _ in $(seq 200); do [ -e "$work/rmnt/big.bin" ] && break; sleep 0.05; done
sync
t_rcold=$(timed dd if="$work/rmnt/big.bin" of=/dev/null bs=1M)
t_rwarm=$(timed dd if="$work/rmnt/big.bin" of=/dev/null bs=1M)
fusermount3 -u "$work/rmnt"


# The same file from a real S3-compatible server (bucket "models"), signed requests.
mkdir -p "$work/s3/models"
s3s_fs=$(scripts/ensure-s3s-fs.sh)
s3_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
s3_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$s3_port/" && break; sleep 0.05; done
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
rclone_s3=(--s3-provider Other --s3-endpoint "$AWS_ENDPOINT_URL" --s3-access-key-id bench --s3-secret-access-key bench-secret --s3-force-path-style)
# Uploaded through the S3 API, as users do (s3s-fs then stores the ETag
# rather than hashing the whole file on every GET). rclone's S3 client
# rejects AWS_CA_BUNDLE with its own transport; plain HTTP needs none.
env -u AWS_CA_BUNDLE rclone copyto "$work/srv/m/big.bin" ":s3:models/big.bin" "${rclone_s3[@]}" 2>/dev/null
sync
sed "s|^sources = .*|sources = [\"s3://models\"]|" "$work/m.toml" > "$work/m-s3.toml"
"$modelfs" mount "$work/mnt" -m "$work/m-s3.toml" --cache-dir "$work/cache-s3" --daemon --log-file "$work/mount-s3.log"
t_s3=$(timed dd if="$work/mnt/m/big.bin" of=/dev/null bs=1M)
umount_modelfs
t_s3cat=$(timed env -u AWS_CA_BUNDLE rclone cat ":s3:models/big.bin" "${rclone_s3[@]}")
env -u AWS_CA_BUNDLE rclone mount ":s3:models" "$work/rmnt" "${rclone_s3[@]}" --vfs-cache-mode full \
    --cache-dir "$work/rclone-cache-s3" --daemon --daemon-timeout 30s
for _ in $(seq 200); do [ -e "$work/rmnt/big.bin" ] && break; sleep 0.05; done
t_s3rclone=$(timed dd if="$work/rmnt/big.bin" of=/dev/null bs=1M)
fusermount3 -u "$work/rmnt"

echo
echo "modelfs bench: ${size_mb} MiB file over HTTP on 127.0.0.1, $(nproc) cores, page cache hot"
printf '%-42s %8s %s\n' "" "MB/s" "modelfs ÷ peer"
printf '%-42s %8s\n' "cold: modelfs mount (dd through FUSE)" "$(mbps "$t_cold")"
printf '%-42s %8s %s\n' "cold: curl (one stream, to /dev/null)" "$(mbps "$t_curl")" "$(ratio "$t_curl" "$t_cold")"
printf '%-42s %8s %s\n' "cold: curl | tee file | sha256sum" "$(mbps "$t_curl_disk")" "$(ratio "$t_curl_disk" "$t_cold")"
printf '%-42s %8s %s\n' "cold: aria2c -x8 (8 streams, to disk)" "$(mbps "$t_aria")" "$(ratio "$t_aria" "$t_cold")"
printf '%-42s %8s %s\n' "cold: rclone mount --vfs-cache-mode full" "$(mbps "$t_rcold")" "$(ratio "$t_rcold" "$t_cold")"
printf '%-42s %8s\n' "cold from S3: modelfs mount" "$(mbps "$t_s3")"
printf '%-42s %8s %s\n' "cold from S3: rclone cat (to /dev/null)" "$(mbps "$t_s3cat")" "$(ratio "$t_s3cat" "$t_s3")"
printf '%-42s %8s %s\n' "cold from S3: rclone mount, full cache" "$(mbps "$t_s3rclone")" "$(ratio "$t_s3rclone" "$t_s3")"
printf '%-42s %8s %s\n' "cold: modelfs from S3 ÷ from HTTP" "" "$(ratio "$t_cold" "$t_s3")"
printf '%-42s %8s\n' "warm: modelfs, same mount (page cache)" "$(mbps "$t_same")"
printf '%-42s %8s\n' "warm: modelfs, new mount (passthrough)" "$(mbps "$t_warm")"
printf '%-42s %8s %s\n' "warm: dd of the cache file" "$(mbps "$t_disk")" "$(ratio "$t_disk" "$t_warm")"
printf '%-42s %8s %s\n' "warm: rclone mount" "$(mbps "$t_rwarm")" "$(ratio "$t_rwarm" "$t_warm")"
echo "one 4 KiB read at 3/4 of the file fetched $random_bytes bytes"
echo "peak RSS of the mount process during the cold read: $((rss_kb / 1024)) MiB"
if [ -n "${BASELINE_BIN:-}" ]; then
    echo
    echo "this build vs BASELINE_BIN ($BASELINE_BIN), same file and server, same run"
    printf '%-42s %10s %10s %s\n' "" "baseline" "this" "this ÷ baseline"
    row() { printf '%-42s %10s %10s %s\n' "$1" "$(mbps "$2")" "$(mbps "$3")" "$(ratio "$2" "$3")"; }
    row "cold: dd through FUSE (MB/s)" "$b_cold" "$t_cold"
    row "warm: same mount (MB/s)" "$b_same" "$t_same"
    row "warm: new mount (MB/s)" "$b_warm" "$t_warm"
    printf '%-42s %10s %10s\n' "one 4 KiB read at 3/4: bytes fetched" "$b_random" "$random_bytes"
    printf '%-42s %10s %10s\n' "peak RSS during the cold read (MiB)" "$((b_rss / 1024))" "$((rss_kb / 1024))"
fi
