#!/usr/bin/env bash
# modelfs against its peers on the same files, same server, same run: the
# table of issue 11, printed once at the end (markdown), each number the median
# of RUNS runs, with modelfs ÷ peer ratios and whether each target holds.
# Everything listens on 127.0.0.1 and nowhere else. Needs root (FUSE).
# Ratios matter more than absolute numbers: these machines are shared and noisy.
#
# Server: nginx, started here from a config generated in the work dir, with
# three profiles:
#   unlimited   nginx as it is (sendfile, Range)
#   50m         a second server block with `limit_rate 50m` (50 MiB/s per connection)
#   rtt         examples/delay_proxy in front of the unlimited server: +RTT_MS per
#               round trip, one RTT per new connection, bandwidth not limited
#               (SLOW_START=1: plus TCP slow start, 10 segments in the first RTT)
# "Bytes fetched" are summed from nginx's access log ($bytes_sent per $request_uri).
#
# Rows (ROWS names them; each modelfs run has a fresh cache and a fresh mount unless warm):
#   seq     1. cold sequential read of a SIZE_MB file, dd bs=1M through the mount,
#              vs curl -o /dev/null, aria2c -x8 -s8 to disk, rclone mount (VFS full cache);
#           2. warm reread in the same mount (page cache hot) vs dd of the local file
#              (page cache hot), and in a new mount over the complete cache;
#           6. peak RSS (VmHWM) of the mount process over the cold read      [unlimited]
#   seq50   1. the cold sequential read of a SLOW_MB file                        [50m]
#   ttfb50  3. one cold 4 KiB pread at 3/4 of the SIZE_MB file, timed alone inside one
#              process after its open, and the bytes the server sent for that file;
#              vs curl -r of that range on a new connection, rclone mount    [50m]
#   ttfb20  3. the same                                                        [rtt]
#   small   4. 20 small files (200 B .. 500 KiB) of the big file's model, one process
#              opening and reading them one after another; vs curl of the 20 URLs one
#              after another (one connection), rclone mount                    [rtt]
#   ls      5. ls -lR of a fresh mount of every model vs of the local directory,
#              and the bytes the server sent meanwhile (none expected)   [unlimited]
#   kill    7. bytes the server sent for one cold KILL_MB read (1 MiB chunks,
#              1 MiB reads) during which the mount is SIGKILLed KILLS times and
#              remounted; the reader resumes at its offset and checks every byte [50m]
#   loader  8. safetensors (numpy) loads every tensor of a 4-shard LOADER_MB model
#              through a cold mount vs aria2c -x8 download, then the same load
#              from local disk                                            [unlimited]
#   s3      cold sequential read from s3s-fs (a real S3 server, signed requests)
#              vs rclone cat, rclone mount                                [unlimited]
#   catalog C1-C4: a generated catalog of CATALOG_MODELS models (three files of
#              1 MiB each, one chunk, sources never asked), listed through a mount vs
#              the same tree of empty files on the local disk (its dentries hot):
#              ls -lR, ls -l of the root, du -s, find -type f; each cold (a fresh
#              mount) and again in that mount (warm); and the CPU time ls -lR itself
#              spent cold, the kernel's share no server can lower
#           C5-C7: BIG_CATALOG_MODELS models: manifest check (seconds, peak RSS),
#              mount ready (the --daemon mount returns), the mount's RSS then    [no network]
#
# Knobs (environment):
#   RUNS=3  SIZE_MB=1024  SLOW_MB=512  KILL_MB=128  KILLS=20  LOADER_MB=2048  RTT_MS=20
#   CATALOG_MODELS=10000  BIG_CATALOG_MODELS=100000
#   ROWS="seq seq50 ttfb50 ttfb20 small ls kill loader s3 catalog"  (a subset runs only those)
#   PROFILES="unlimited 50m rtt"                          (rows of other profiles are skipped)
#   SKIP_S3=1          no S3 rows (and no s3s-fs build)
#   SLOW_START=1       the delay proxy also models TCP slow start (delay_proxy --slow-start)
#   BASELINE_BIN=/path/to/an/older/modelfs
#                      also measures that build in every modelfs row, same run, alternating
#                      with this one, in a column of its own (for before/after)
#   CMD_TIMEOUT=300    seconds any one measured command may take
#   KEEP_WORK=1        keep the work dir (logs, manifests) instead of deleting it
#
#   scripts/bench.sh     # everything: ~5 min on 2 cores (+3 min once per machine to build s3s-fs)
#   RUNS=1 SIZE_MB=256 SLOW_MB=128 LOADER_MB=256 SKIP_S3=1 scripts/bench.sh   # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
size_mb=${SIZE_MB:-1024}
slow_mb=${SLOW_MB:-512}
kill_mb=${KILL_MB:-128}
kills=${KILLS:-20}
loader_mb=${LOADER_MB:-2048}
rtt_ms=${RTT_MS:-20}
catalog_models=${CATALOG_MODELS:-10000}
big_catalog_models=${BIG_CATALOG_MODELS:-100000}
rows=" ${ROWS:-seq seq50 ttfb50 ttfb20 small ls kill loader s3 catalog} "
profiles=" ${PROFILES:-unlimited 50m rtt} "
[ "${SKIP_S3:-0}" = 1 ] && rows=${rows/ s3 / }
cmd_timeout=${CMD_TIMEOUT:-300}
started=$(date +%s)
# Only 127.0.0.1 is spoken to: no proxy from the environment in between.
unset http_proxy https_proxy all_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
# $EPOCHREALTIME and `times` write the locale's decimal point; awk reads a dot.
export LC_NUMERIC=C

log() { printf '[bench %4ds] %s\n' $(($(date +%s) - started)) "$*" >&2; }
die() { log "error: $*"; exit 1; }
want() { [[ $rows == *" $1 "* && $profiles == *" $2 "* ]]; }
[ "$(id -u)" = 0 ] || die "needs root (FUSE mounts, nginx as root)"

# --- Tools --------------------------------------------------------------------
need=()
for tool in nginx:nginx-light aria2c:aria2 rclone:rclone fusermount3:fuse3 curl:curl pgrep:procps; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    # Packages' services (nginx's default site on port 80) are not started.
    policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && made_policy=1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || installed=no
    [ $made_policy = 0 ] || rm -f $policy
    [ "${installed:-}" != no ] || die "apt-get install ${need[*]} failed"
fi
if want loader unlimited && ! python3 -c 'import numpy, safetensors' 2>/dev/null; then
    log "installing numpy and safetensors (pip)"
    python3 -m pip install --quiet --disable-pip-version-check numpy safetensors
fi
log "building modelfs and examples/delay_proxy (release)"
cargo build --release --quiet --bin modelfs --example delay_proxy
target=${CARGO_TARGET_DIR:-target}
modelfs="$target/release/modelfs"
proxy_bin="$target/release/examples/delay_proxy"
whos=mfs
if [ -n "${BASELINE_BIN:-}" ]; then
    [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
    whos="mfs base"
fi
bin_of() { if [ "$1" = base ]; then echo "$BASELINE_BIN"; else echo "$modelfs"; fi; }
# Eight streams for rclone's mount where this rclone has them (v1.68+).
rclone_streams=()
if [[ $(rclone mount --help 2>/dev/null) == *--vfs-read-chunk-streams* ]]; then
    rclone_streams=(--vfs-read-chunk-streams 8)
    rclone_note="rclone mount reads with --vfs-read-chunk-streams 8"
else
    rclone_note="rclone mount: this rclone ($(rclone version 2>/dev/null | sed -n 1p)) has no --vfs-read-chunk-streams, so it reads with one stream"
fi

# --- Work dir and cleanup -------------------------------------------------------
work=$(mktemp -d /tmp/modelfs-bench.XXXXXX)
mkdir -p "$work"/{srv/m,srv/s,srv/k,srv/llm,mnt,rmnt,kmnt,dl,res,logs,man,nginx}
nginx_pid= proxy_pid= s3_pid=
touch "$work/pids"   # mount and rclone processes started here
pid_gone() { ! kill -0 "$1" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
not_mounted() { ! mountpoint -q "$1"; }
cleanup() {
    set +e
    for m in "$work/mnt" "$work/rmnt" "$work/kmnt"; do
        mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
    done
    # Mount and rclone processes started here that are still alive (named by our work dir).
    while read -r p; do grep -qF "$work" "/proc/$p/cmdline" 2>/dev/null && kill "$p"; done < "$work/pids"
    for p in $proxy_pid $s3_pid $nginx_pid; do kill "$p" 2>/dev/null; done
    if grep -qF " $work/" /proc/mounts; then
        log "still mounted under $work; left in place"
    elif [ "${KEEP_WORK:-0}" = 1 ]; then
        log "work dir kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls until a command succeeds: every 50 ms, for at most $1 seconds.
wait_for() {
    local secs=$1 i
    shift
    for ((i = 0; i < secs * 20; i++)); do
        "$@" && return 0
        sleep 0.05
    done
    return 1
}

# --- Helpers in Python: timing inside one process, data generation, the kill reader
cat > "$work/bench.py" <<'PY'
import errno, hashlib, json, os, socket, sys, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])

def pread(path, off, n):
    """ms of one pread, the open excluded"""
    fd = os.open(path, os.O_RDONLY)
    t = time.perf_counter()
    b = os.pread(fd, int(n), int(off))
    dt = time.perf_counter() - t
    os.close(fd)
    if len(b) != int(n):
        sys.exit(f"short read: {len(b)} of {n}")
    print(f"{dt * 1e3:.2f}")

def readall(expected, *paths):
    """ms to open and read each file whole, one after another"""
    t = time.perf_counter()
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(f.read())
    dt = time.perf_counter() - t
    if total != int(expected):
        sys.exit(f"read {total} bytes, expected {expected}")
    print(f"{dt * 1e3:.2f}")

SMALL = ["config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
         "added_tokens.json", "preprocessor_config.json", "chat_template.jinja", "processor_config.json",
         "adapter_config.json", "quantize_config.json", "README.md", "LICENSE", "model_card.md",
         "vocab.txt", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
         "vocab.json", "tokenizer.json"]

def gen_small(d):
    """20 files from 200 B to 500 KiB, sizes spaced geometrically; prints their total"""
    import base64, random
    rnd = random.Random(11)
    total = 0
    for i, name in enumerate(SMALL):
        n = round(200 * (512000 / 200) ** (i / (len(SMALL) - 1)))
        data = base64.b64encode(rnd.randbytes(n))[:n]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        total += n
    print(total)

def gen_loader(d, mb, shards=4):
    """a sharded safetensors model of about `mb` MiB, random f16 tensors of 32 MiB at most"""
    import numpy as np
    from safetensors.numpy import save_file
    rng = np.random.default_rng(11)
    per_shard = (int(mb) // shards) << 20
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors, left, i = {}, per_shard, 0
        while left > 0:
            n = min(32 << 20, left)
            key = f"model.layers.{s}.{i}.weight"
            tensors[key] = np.frombuffer(rng.bytes(n), dtype=np.float16).reshape(-1, 512)
            weight_map[key] = name
            left, i, total = left - n, i + 1, total + n
        save_file(tensors, os.path.join(d, name))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)

def load(d):
    """seconds for safetensors to load every tensor of every shard"""
    from safetensors import safe_open
    t = time.perf_counter()
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    got = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(d, shard), "np") as f:
            for k in f.keys():
                got += f.get_tensor(k).nbytes
    dt = time.perf_counter() - t
    if got != index["metadata"]["total_size"]:
        sys.exit(f"loaded {got} bytes, index says {index['metadata']['total_size']}")
    print(f"{dt:.3f}")

def kill_reader(path, progress, killed, kills, size, sha, deadline):
    """Reads `path` in 1 MiB reads, writing its offset to `progress`. Past
    each of `kills` evenly spread points it waits (a few ms, at most 30 s)
    until the script has written that kill's number to `killed`, so every
    kill lands inside the read however fast it goes. On a dead mount
    (ENOTCONN, ECONNABORTED, EIO, ENOENT while remounting) it reopens and goes
    on at its offset. Prints 'ok' or 'mismatch', the errors seen, the opens."""
    size, kills, end = int(size), int(kills), time.monotonic() + float(deadline)
    h, off, fd, errors, opens, next_kill = hashlib.sha256(), 0, None, 0, 0, 1
    transient = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENOENT, errno.ESTALE}
    def done_kills():
        try:
            with open(killed) as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0
    while off < size:
        if time.monotonic() > end or errors > 5000:
            sys.exit(f"gave up at {off} of {size} after {errors} errors")
        try:
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                opens += 1
            b = os.pread(fd, 1 << 20, off)
            if not b:
                sys.exit(f"unexpected end of file at {off}")
            h.update(b)
            off += len(b)
            with open(progress + ".tmp", "w") as p:
                p.write(str(off))
            os.replace(progress + ".tmp", progress)
            while next_kill <= kills and off >= size * next_kill // (kills + 1):
                wait_until = time.monotonic() + 30
                while done_kills() < next_kill and time.monotonic() < wait_until:
                    time.sleep(0.002)
                next_kill += 1
        except OSError as e:
            if e.errno not in transient:
                raise
            errors += 1
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                fd = None
            time.sleep(0.01)
    print("ok" if h.hexdigest() == sha else "mismatch", errors, opens)

def gen_catalog(n, manifest, local=""):
    """n models of three 1 MiB files (one chunk each; hashes made up, sources
    never asked) as a manifest; and, given `local`, the same tree of empty
    (sparse) files"""
    with open(manifest, "w") as f:
        f.write("version = 1\n")
        for i in range(int(n)):
            mid = f"model-{i:06d}"
            f.write(f'\n[[model]]\nid = "{mid}"\nsources = ["http://127.0.0.1:9/{mid}"]\n')
            for name in ("config.json", "tokenizer.json", "model.safetensors"):
                h = hashlib.sha256(f"{mid}/{name}".encode()).hexdigest()
                f.write(f'\n[[model.file]]\npath = "{name}"\nsize = 1048576\nsha256 = "{h}"\n'
                        f'chunk_size = 1048576\nchunks = [\n  "{h}",\n]\n')
                if local:
                    os.makedirs(os.path.join(local, mid), exist_ok=True)
                    with open(os.path.join(local, mid, name), "wb") as g:
                        g.truncate(1 << 20)

def peak(*cmd):
    """seconds a command took and its peak RSS in MB; fails if it did"""
    import resource, subprocess
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    print(f"{dt:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6:.1f}")

globals()[sys.argv[1].replace("-", "_")](*sys.argv[2:])
PY
pyh="$work/bench.py"
py() { python3 "$pyh" "$@"; }


# --- Files ----------------------------------------------------------------------
size=$((size_mb << 20)) slow_size=$((slow_mb << 20)) kill_size=$((kill_mb << 20))
log "generating files: big ${size_mb} MiB + 20 small, slow ${slow_mb} MiB, kill ${kill_mb} MiB, loader ${loader_mb} MiB"
head -c "$size" /dev/urandom > "$work/srv/m/big.bin"
small_total=$(py gen-small "$work/srv/m")
small_files=$(cd "$work/srv/m" && ls | grep -v '^big\.bin$' | tr '\n' ' ')
if want seq50 50m; then head -c "$slow_size" /dev/urandom > "$work/srv/s/slow.bin"; fi
if want kill 50m; then head -c "$kill_size" /dev/urandom > "$work/srv/k/kill.bin"; fi
loader_files=
if want loader unlimited; then
    py gen-loader "$work/srv/llm" "$loader_mb"
    loader_files=$(cd "$work/srv/llm" && ls | tr '\n' ' ')
fi
sync   # no writeback of the test files competing with the runs

# --- nginx and the delay proxy --------------------------------------------------------
port() { py free-port; }
# Free ports are picked, then bound by nginx: another process may take one in
# between, so up to three tries.
for try in 1 2 3; do
    p_fast=$(port) p_slow=$(port) p_stat=$(port)
    cat > "$work/nginx.conf" <<EOF
    # Generated by scripts/bench.sh. Root: the work dir is private (0700).
    user root;
    worker_processes 2;
    pid $work/nginx/nginx.pid;
    error_log $work/logs/nginx-error.log warn;
    events { worker_connections 4096; }
    http {
        default_type application/octet-stream;
        sendfile on;
        tcp_nopush on;
        tcp_nodelay on;
        keepalive_requests 100000;
        client_body_temp_path $work/nginx/body;
        proxy_temp_path $work/nginx/proxy;
        fastcgi_temp_path $work/nginx/fastcgi;
        uwsgi_temp_path $work/nginx/uwsgi;
        scgi_temp_path $work/nginx/scgi;
        log_format bytes '\$request_uri \$status \$bytes_sent \$body_bytes_sent "\$http_range" "\$http_user_agent"';
        access_log $work/logs/access.log bytes;
        server {
            listen 127.0.0.1:$p_fast;
            root $work/srv;
            autoindex on;
        }
        server {
            listen 127.0.0.1:$p_slow;
            root $work/srv;
            autoindex on;
            limit_rate 50m;
        }
        server {
            listen 127.0.0.1:$p_stat;
            access_log off;
            location / { stub_status; }
        }
    }
EOF
    : > "$work/logs/access.log"
    nginx -c "$work/nginx.conf" -p "$work/nginx" -e "$work/logs/nginx-error.log" -g 'daemon off;' &
    nginx_pid=$!
    wait_for 10 curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$p_fast/m/config.json" && break
    log "nginx did not come up (try $try): $(tail -n 3 "$work/logs/nginx-error.log")"
    kill "$nginx_pid" 2> /dev/null || true
    nginx_pid=
    [ "$try" != 3 ] || die "nginx did not come up"
done
url_unlimited="http://127.0.0.1:$p_fast" url_50m="http://127.0.0.1:$p_slow"

# The delay proxy; its stdin is a pipe that closes when this script exits.
slow_start=()
[ "${SLOW_START:-0}" = 0 ] || slow_start=(--slow-start)
tail --pid=$$ -f /dev/null | "$proxy_bin" --upstream "127.0.0.1:$p_fast" --rtt-ms "$rtt_ms" "${slow_start[@]}" \
    > "$work/proxy.addr" 2> "$work/logs/proxy.log" &
proxy_pid=$!
wait_for 10 test -s "$work/proxy.addr" || die "delay_proxy did not start: $(cat "$work/logs/proxy.log")"
url_rtt="http://$(head -n1 "$work/proxy.addr")"
curl -sf -o /dev/null --max-time 5 "$url_rtt/m/config.json" || die "no answer through delay_proxy"

nginx_status() { curl -s --max-time 2 "http://127.0.0.1:$p_stat/"; }
# No response being written but the status page's own.
quiet_once() { [ "$(nginx_status | awk '/Writing/ {print $4}')" = 1 ]; }
# Quiet at three polls 100 ms apart, within $1 seconds each.
server_quiet() { local i; for ((i = 0; i < 3; i++)); do wait_for "$1" quiet_once || return 1; sleep 0.1; done; }
# No connection open but the status page's own: every request is logged.
idle_once() { [ "$(nginx_status | awk '/Active/ {print $3}')" = 1 ]; }
server_idle() { wait_for "$1" idle_once || log "nginx still has connections open after ${1}s"; }
log_mark() { wc -c < "$work/logs/access.log"; }
# Bytes nginx sent since a mark, for one request path (or for all without one).
bytes_since() {
    tail -c +$(($1 + 1)) "$work/logs/access.log" | awk -v u="${2:-}" 'u == "" || $1 == u { s += $3 } END { print s + 0 }'
}

# --- Manifests: each model's entry built once, its source swapped per profile ----------
log "manifest build (hashing every file)"
"$modelfs" manifest build "$work/srv/m" --id m --source "$url_unlimited/m" > "$work/man/m.entry"
if [ -e "$work/srv/s/slow.bin" ]; then
    "$modelfs" manifest build "$work/srv/s" --id s --source "$url_unlimited/s" > "$work/man/s.entry"
fi
if [ -e "$work/srv/k/kill.bin" ]; then
    "$modelfs" manifest build "$work/srv/k" --id k --source "$url_unlimited/k" --chunk-size 1M > "$work/man/k.entry"
fi
if [ -n "$loader_files" ]; then
    "$modelfs" manifest build "$work/srv/llm" --id llm --source "$url_unlimited/llm" > "$work/man/llm.entry"
fi
{ echo "version = 1"; cat "$work/man/"*.entry; } > "$work/man/unlimited.toml"
sed "s|\"$url_unlimited/|\"$url_50m/|" "$work/man/unlimited.toml" > "$work/man/50m.toml"
sed "s|\"$url_unlimited/|\"$url_rtt/|" "$work/man/unlimited.toml" > "$work/man/rtt.toml"
{ echo "version = 1"; sed "s|\"$url_unlimited/m\"|\"s3://models\"|" "$work/man/m.entry"; } > "$work/man/s3.toml"
for f in 50m rtt s3; do
    ! grep -qF "$url_unlimited/" "$work/man/$f.toml" || die "rewriting the sources of $f.toml failed"
done

# --- Measuring --------------------------------------------------------------------
mfs_pid= rc_pid= n=0 mfs_ready_at=0
# Prints the seconds a command took (its stdout discarded); fails, saying why, if it did.
timed() {
    local v
    v=$(timed_cpu "$@") || return 1
    echo "${v% *}"
}
# Seconds a command took and the CPU seconds (user + system) it used, from
# the subshell's own children: no fork but the command's is counted, in
# the time or the CPU.
timed_cpu() {
    (
        s=$EPOCHREALTIME
        if ! timeout -k 5 "$cmd_timeout" "$@" > /dev/null 2> "$work/err"; then
            log "failed: $* ($(tail -c 400 "$work/err"))"
            exit 1
        fi
        e=$EPOCHREALTIME
        times > "$work/times" # not in a pipe: that would be another shell's
        awk -v s="$s" -v e="$e" 'function sec(t) { split(t, a, "m"); return a[1] * 60 + a[2] }
            NR == 2 { printf "%.4f %.4f", e - s, sec($1) + sec($2) }' "$work/times"
    )
}
# Prints what a command printed (bounded by CMD_TIMEOUT); fails, saying why, if it did.
value() {
    local v
    if ! v=$(timeout -k 5 "$cmd_timeout" "$@" 2> "$work/err"); then
        log "failed: $* ($(tail -c 400 "$work/err"))"
        return 1
    fi
    echo "$v"
}
mbps() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / t / 1e6 }'; }
ms() { awk -v t="$1" 'BEGIN { printf "%.2f", t * 1e3 }'; }
kib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1024 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
# One sample of a measurement (res/ROW.WHO), or the note that a run of it failed.
put() { echo "$2" >> "$work/res/$1"; log "  $1 = $2"; }
fail() { echo x >> "$work/res/$1.x"; log "  $1: failed"; }

# A --daemon mount (ready when it returns) on a cache of its own; sets mfs_pid.
mount_mfs() {
    local bin=$1 mnt=$2 manifest=$3 cache=$4
    n=$((n + 1))
    local logf="$work/logs/mount-$n.log"
    if ! timeout -k 5 60 "$bin" mount "$mnt" -m "$manifest" --cache-dir "$cache" --daemon --log-file "$logf" 2>> "$logf"; then
        log "mount of $mnt failed: $(tail -n 3 "$logf")"
        return 1
    fi
    mfs_ready_at=$(date +%s%N)
    mfs_pid=$(pgrep -n -f -- "mount $mnt -m") || { log "no mount process for $mnt"; return 1; }
    echo "$mfs_pid" >> "$work/pids"
}
umount_mfs() {
    local mnt=$1 pid=$mfs_pid
    timeout 30 "$modelfs" umount "$mnt" > /dev/null 2>&1 || fusermount3 -u "$mnt" 2> /dev/null || true
    wait_for 20 not_mounted "$mnt" || { log "lazy unmount of $mnt"; umount -l "$mnt" 2> /dev/null || true; }
    if [ -n "$pid" ] && ! wait_for 20 pid_gone "$pid"; then
        log "mount process $pid still there: SIGKILL"
        kill -9 "$pid" 2> /dev/null || true
    fi
}
# rclone mount REMOTE on rmnt (VFS full cache, fresh cache dir), ready once PROBE is visible; sets rc_pid.
rclone_mount() {
    local remote=$1 probe=$2
    shift 2
    n=$((n + 1))
    rc_pid=
    if ! timeout -k 5 90 rclone mount "$remote" "$work/rmnt" "$@" --vfs-cache-mode full "${rclone_streams[@]}" \
        --cache-dir "$work/rcache" --daemon --daemon-timeout 30s --log-file "$work/logs/rclone-$n.log"; then
        log "rclone mount failed: $(tail -n 3 "$work/logs/rclone-$n.log")"
        return 1
    fi
    rc_pid=$(pgrep -n -f -- "rclone mount $remote $work/rmnt") || { log "no rclone process"; return 1; }
    echo "$rc_pid" >> "$work/pids"
    wait_for 30 test -e "$work/rmnt/$probe" || { log "rclone mount: $probe not visible"; return 1; }
}
rclone_umount() {
    fusermount3 -u "$work/rmnt" 2> /dev/null || true
    wait_for 20 not_mounted "$work/rmnt" || umount -l "$work/rmnt" 2> /dev/null || true
    if [ -n "$rc_pid" ] && ! wait_for 20 pid_gone "$rc_pid"; then kill -9 "$rc_pid" 2> /dev/null || true; fi
    rm -rf "$work/rcache"
}
vmhwm_mib() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
# dd of a local file with its page cache hot.
local_read() { cat "$1" > /dev/null && timed dd if="$1" of=/dev/null bs=1M; }
url_of() { eval echo "\$url_$1"; }

# 1, 2, 6: cold sequential read, warm rereads, peak RSS. Args: row profile file bytes.
row_seq() {
    local row=$1 prof=$2 file=$3 bytes=$4 r who t url cache
    url=$(url_of "$prof")/$file
    for ((r = 1; r <= runs; r++)); do
        log "$row ($prof) run $r/$runs"
        sync # no writeback from the last run competing with this one
        if t=$(timed curl -sf -o /dev/null "$url"); then put "$row.curl" "$(mbps "$bytes" "$t")"; else fail "$row.curl"; fi
        if t=$(timed aria2c -q -x 8 -s 8 -k 8M --allow-overwrite=true --auto-file-renaming=false -d "$work/dl" -o seq.bin "$url"); then
            put "$row.aria" "$(mbps "$bytes" "$t")"
        else fail "$row.aria"; fi
        rm -f "$work/dl/seq.bin"*
        if rclone_mount :http: "${file##*/}" --http-url "${url%/*}/" &&
            t=$(timed dd if="$work/rmnt/${file##*/}" of=/dev/null bs=1M); then
            put "$row.rclone" "$(mbps "$bytes" "$t")"
            if [ "$row" = seq ]; then put rss.rclone "$(vmhwm_mib "$rc_pid")"; fi
        else fail "$row.rclone"; fi
        rclone_umount
        for who in $whos; do
            cache="$work/cache-$who"
            rm -rf "$cache"
            mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/$prof.toml" "$cache" || { fail "$row.$who"; continue; }
            if t=$(timed dd if="$work/mnt/$file" of=/dev/null bs=1M); then put "$row.$who" "$(mbps "$bytes" "$t")"; else fail "$row.$who"; fi
            if [ "$row" = seq ]; then
                put "rss.$who" "$(vmhwm_mib "$mfs_pid")"
                if t=$(timed dd if="$work/mnt/$file" of=/dev/null bs=1M); then put "warm.$who" "$(mbps "$bytes" "$t")"; else fail "warm.$who"; fi
                if t=$(local_read "$work/srv/$file"); then put warm.local "$(mbps "$bytes" "$t")"; fi
                umount_mfs "$work/mnt"
                # A new mount over the complete cache file: FUSE passthrough.
                if mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/$prof.toml" "$cache"; then
                    if t=$(timed dd if="$work/mnt/$file" of=/dev/null bs=1M); then put "warmnew.$who" "$(mbps "$bytes" "$t")"; else fail "warmnew.$who"; fi
                    if t=$(local_read "$work/srv/$file"); then put warmnew.local "$(mbps "$bytes" "$t")"; fi
                fi
            fi
            umount_mfs "$work/mnt"
            rm -rf "$cache"
        done
    done
    return 0
}

# 3: one cold 4 KiB read at 3/4 of the big file: its time and the bytes sent. Args: row profile.
row_ttfb() {
    local row=$1 prof=$2 r who v mark url off
    url=$(url_of "$prof")
    off=$(((size / 4096) * 3 / 4 * 4096))
    for ((r = 1; r <= runs; r++)); do
        log "$row ($prof) run $r/$runs"
        server_idle 10
        mark=$(log_mark)
        if v=$(value curl -sf -o /dev/null -r "$off-$((off + 4095))" -w '%{time_total}' "$url/m/big.bin"); then
            put "$row.curl" "$(ms "$v")"
            server_idle 10
            put "${row}b.curl" "$(kib "$(bytes_since "$mark" /m/big.bin)")"
        else fail "$row.curl"; fi
        if rclone_mount :http: big.bin --http-url "$url/m/"; then
            mark=$(log_mark)
            if v=$(value python3 "$pyh" pread "$work/rmnt/big.bin" "$off" 4096); then
                put "$row.rclone" "$v"
                server_quiet 10 || true
                rclone_umount
                server_idle 10
                put "${row}b.rclone" "$(kib "$(bytes_since "$mark" /m/big.bin)")"
            else fail "$row.rclone"; fi
        else fail "$row.rclone"; fi
        rclone_umount
        for who in $whos; do
            rm -rf "$work/cache-$who"
            server_idle 10
            mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/$prof.toml" "$work/cache-$who" || { fail "$row.$who"; continue; }
            mark=$(log_mark)
            if v=$(value python3 "$pyh" pread "$work/mnt/m/big.bin" "$off" 4096); then
                put "$row.$who" "$v"
                server_quiet 10 || log "  $row: the server was still sending after 10 s"
                umount_mfs "$work/mnt"
                server_idle 10
                put "${row}b.$who" "$(kib "$(bytes_since "$mark" /m/big.bin)")"
            else fail "$row.$who"; fi
            umount_mfs "$work/mnt"
            rm -rf "$work/cache-$who"
        done
    done
    return 0
}

# 4: 20 small files of one model, read by one process one after another (+RTT).
row_small() {
    local r who v f paths urls=()
    for f in $small_files; do urls+=(-o /dev/null "$url_rtt/m/$f"); done
    for ((r = 1; r <= runs; r++)); do
        log "small (rtt) run $r/$runs"
        if v=$(value curl -sf -w '%{time_total}\n' "${urls[@]}"); then
            put small.curl "$(echo "$v" | awk '{ s += $1 } END { printf "%.2f", s * 1e3 }')"
        else fail small.curl; fi
        paths=()
        for f in $small_files; do paths+=("$work/rmnt/$f"); done
        # (rclone lists the directory, one HEAD per file, before it is ready: not timed.)
        if rclone_mount :http: config.json --http-url "$url_rtt/m/" && v=$(value python3 "$pyh" readall "$small_total" "${paths[@]}"); then
            put small.rclone "$v"
        else fail small.rclone; fi
        rclone_umount
        paths=()
        for f in $small_files; do paths+=("$work/mnt/m/$f"); done
        for who in $whos; do
            rm -rf "$work/cache-$who"
            mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/rtt.toml" "$work/cache-$who" || { fail "small.$who"; continue; }
            if v=$(value python3 "$pyh" readall "$small_total" "${paths[@]}"); then put "small.$who" "$v"; else fail "small.$who"; fi
            umount_mfs "$work/mnt"
            rm -rf "$work/cache-$who"
        done
    done
    return 0
}

# 5: ls -lR of a fresh mount of every model, and what it fetched.
row_ls() {
    local r who t mark
    for ((r = 1; r <= runs; r++)); do
        log "ls (unlimited) run $r/$runs"
        if t=$(timed ls -lR "$work/srv"); then put ls.local "$(ms "$t")"; fi
        for who in $whos; do
            rm -rf "$work/cache-$who"
            server_idle 10
            mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/unlimited.toml" "$work/cache-$who" || { fail "ls.$who"; continue; }
            mark=$(log_mark)
            if t=$(timed ls -lR "$work/mnt"); then put "ls.$who" "$(ms "$t")"; else fail "ls.$who"; fi
            umount_mfs "$work/mnt"
            server_idle 10
            put "lsb.$who" "$(kib "$(bytes_since "$mark")")"
            rm -rf "$work/cache-$who"
        done
    done
    return 0
}

# 7: one cold read during which the mount is SIGKILLed KILLS times and remounted
# on the same cache; the reader resumes at its offset and checks every byte.
# Each kill once the reader has passed another 1/(KILLS+1) of the file; the
# reader waits there until the kill is done, its readahead still in flight.
progress_at_least() {
    local i v
    for ((i = 0; i < 12000; i++)); do # 10 ms polls, 120 s at most
        v=0
        [ -s "$work/progress" ] && read -r v < "$work/progress"
        [ "${v:-0}" -ge "$1" ] && return 0
        kill -0 "$2" 2> /dev/null || return 1
        sleep 0.01
    done
    return 1
}
row_kill() {
    local r who mark reader i done_kills sha out bin cache
    sha=$(sha256sum "$work/srv/k/kill.bin" | cut -d' ' -f1)
    for ((r = 1; r <= runs; r++)); do
        for who in $whos; do
            log "kill (50m) run $r/$runs ($who)"
            bin=$(bin_of "$who") cache="$work/cache-$who"
            rm -rf "$cache" "$work/progress" "$work/killed"
            server_idle 10
            mount_mfs "$bin" "$work/kmnt" "$work/man/50m.toml" "$cache" || { fail "kill.$who"; continue; }
            mark=$(log_mark)
            timeout -k 5 "$cmd_timeout" python3 "$pyh" kill-reader "$work/kmnt/k/kill.bin" "$work/progress" "$work/killed" \
                "$kills" "$kill_size" "$sha" $((cmd_timeout - 10)) > "$work/kill.out" 2> "$work/logs/kill-reader.log" &
            reader=$!
            done_kills=0
            for ((i = 1; i <= kills; i++)); do
                progress_at_least $((kill_size * i / (kills + 1))) "$reader" || { log "  kill: the reader stopped or stalled"; break; }
                kill -9 "$mfs_pid"
                done_kills=$i
                echo "$i" > "$work/killed"
                wait_for 10 pid_gone "$mfs_pid" || { log "  kill: mount process $mfs_pid did not die"; break; }
                # modelfs mount cleans up the stale mount its killed predecessor left.
                if ! mount_mfs "$bin" "$work/kmnt" "$work/man/50m.toml" "$cache"; then
                    log "  kill: remount over the stale mount failed; unmounting it and retrying"
                    umount -l "$work/kmnt" 2> /dev/null || true
                    mount_mfs "$bin" "$work/kmnt" "$work/man/50m.toml" "$cache" || { log "  kill: remount failed"; break; }
                fi
            done
            echo "$kills" > "$work/killed" # whatever happened, the reader waits no more
            wait "$reader" || log "  kill: the reader failed: $(tail -n 3 "$work/logs/kill-reader.log")"
            out=$(cat "$work/kill.out")
            umount_mfs "$work/kmnt"
            server_idle 10
            log "  kill: $done_kills kills; reader: ${out:-nothing} (check, errors seen, opens)"
            put "kill.$who" "$(mib "$(bytes_since "$mark" /k/kill.bin)")"
            put "killok.$who" "$([ "${out%% *}" = ok ] && [ "$done_kills" = "$kills" ] && echo 1 || echo 0)"
            rm -rf "$cache"
        done
    done
    return 0
}

# 8: safetensors loads every tensor of the sharded model: cold mount vs aria2c + load.
row_loader() {
    local r who t tl f
    : > "$work/dl/list"
    for f in $loader_files; do echo "$url_unlimited/llm/$f" >> "$work/dl/list"; done
    for ((r = 1; r <= runs; r++)); do
        log "loader (unlimited) run $r/$runs"
        sync
        rm -rf "$work/dl/llm"
        if t=$(timed aria2c -q -x 8 -s 8 -k 8M --allow-overwrite=true --auto-file-renaming=false -d "$work/dl/llm" -i "$work/dl/list") &&
            tl=$(value python3 "$pyh" load "$work/dl/llm"); then
            put loader.aria "$(awk -v a="$t" -v b="$tl" 'BEGIN { printf "%.3f", a + b }')"
            put loader.local "$tl"
        else fail loader.aria; fi
        rm -rf "$work/dl/llm"
        for who in $whos; do
            rm -rf "$work/cache-$who"
            mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/unlimited.toml" "$work/cache-$who" || { fail "loader.$who"; continue; }
            if t=$(value python3 "$pyh" load "$work/mnt/llm"); then put "loader.$who" "$t"; else fail "loader.$who"; fi
            umount_mfs "$work/mnt"
            rm -rf "$work/cache-$who"
        done
    done
    return 0
}

# S3: the big file's model from s3s-fs (bucket "models"), signed requests.
row_s3() {
    local r who t s3_port s3s_fs
    log "s3: s3s-fs (built once per machine by scripts/ensure-s3s-fs.sh)"
    s3s_fs=$(scripts/ensure-s3s-fs.sh)
    mkdir -p "$work/s3/models"
    s3_port=$(port)
    "$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key bench-secret "$work/s3" > "$work/logs/s3s-fs.log" 2>&1 &
    s3_pid=$!
    wait_for 10 curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$s3_port/" || { log "s3s-fs did not come up"; fail s3.mfs; return 0; }
    export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
    local rclone_s3=(--s3-provider Other --s3-endpoint "$AWS_ENDPOINT_URL" --s3-access-key-id bench
        --s3-secret-access-key bench-secret --s3-force-path-style)
    # rclone's S3 client rejects AWS_CA_BUNDLE with its own transport; plain
    # HTTP needs none (and modelfs does not read it).
    unset AWS_CA_BUNDLE
    # Uploaded through the S3 API, as users do (s3s-fs then stores the ETag
    # rather than hashing the whole file on every GET).
    if ! timeout "$cmd_timeout" rclone copy "$work/srv/m" ":s3:models" "${rclone_s3[@]}" 2> "$work/logs/s3-upload.log"; then
        log "s3: upload failed: $(tail -n 3 "$work/logs/s3-upload.log")"
        fail s3.mfs
        return 0
    fi
    sync
    for ((r = 1; r <= runs; r++)); do
        log "s3 (unlimited) run $r/$runs"
        sync
        if t=$(timed rclone cat ":s3:models/big.bin" "${rclone_s3[@]}"); then
            put s3.curl "$(mbps "$size" "$t")"
        else fail s3.curl; fi
        if rclone_mount ":s3:models" big.bin "${rclone_s3[@]}" &&
            t=$(timed dd if="$work/rmnt/big.bin" of=/dev/null bs=1M); then
            put s3.rclone "$(mbps "$size" "$t")"
        else fail s3.rclone; fi
        rclone_umount
        for who in $whos; do
            rm -rf "$work/cache-$who"
            mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/s3.toml" "$work/cache-$who" || { fail "s3.$who"; continue; }
            if t=$(timed dd if="$work/mnt/m/big.bin" of=/dev/null bs=1M); then put "s3.$who" "$(mbps "$size" "$t")"; else fail "s3.$who"; fi
            umount_mfs "$work/mnt"
            rm -rf "$work/cache-$who"
        done
    done
    kill "$s3_pid" 2> /dev/null || true
    s3_pid=
    return 0
}

# C1-C8: a catalog listed, a big one loaded. No network: the sources are never asked.
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 * 1024 / 1e6 }' "/proc/$1/status"; }
# A listing's time (KEY.WHO) and, for ls -lR, the CPU time ls itself spent
# (catlscpu.WHO): on a cold mount that is the kernel's FUSE client, which
# no server can make cheaper. Args: key who command args.
timed_listing() {
    local key=$1 who=$2 v
    shift 2
    v=$(timed_cpu "$@") || { fail "$key.$who"; return 1; }
    put "$key.$who" "$(ms "${v% *}")"
    if [ "$key" = catls ]; then put "catlscpu.$who" "$(ms "${v#* }")"; fi
}
# Cold (a fresh mount) then warm, of one listing command; Args: key who command args.
catalog_pair() {
    local key=$1 who=$2 t
    shift 2
    rm -rf "$work/cache-$who"
    mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/catalog.toml" "$work/cache-$who" || { fail "$key.$who"; return 0; }
    timed_listing "$key" "$who" "$@" || true
    if t=$(timed "$@"); then put "${key}w.$who" "$(ms "$t")"; else fail "${key}w.$who"; fi
    umount_mfs "$work/mnt"
}
row_catalog() {
    local r who t s v
    log "catalog: generating $catalog_models models (and the local tree) and $big_catalog_models models"
    py gen-catalog "$catalog_models" "$work/man/catalog.toml" "$work/catalog"
    py gen-catalog "$big_catalog_models" "$work/man/big-catalog.toml"
    ls -lR "$work/catalog" > /dev/null # the local tree's dentries hot, as after it was made
    for ((r = 1; r <= runs; r++)); do
        log "catalog run $r/$runs"
        for key in catls catroot catdu catfind; do
            case $key in
                catls) set -- ls -lR ;; catroot) set -- ls -l ;; catdu) set -- du -s ;; catfind) set -- find ;;
            esac
            # The local tree is as warm the first time as the second.
            if [ "$key" = catfind ]; then
                timed_listing catfind local find "$work/catalog" -type f
            else
                timed_listing "$key" local "$@" "$work/catalog"
            fi && put "${key}w.local" "$(tail -n 1 "$work/res/$key.local")"
            for who in $whos; do
                if [ "$key" = catfind ]; then catalog_pair "$key" "$who" find "$work/mnt" -type f
                else catalog_pair "$key" "$who" "$@" "$work/mnt"; fi
            done
        done
        for who in $whos; do
            if v=$(py peak "$(bin_of "$who")" manifest check -m "$work/man/big-catalog.toml"); then
                put "bigchk.$who" "${v% *}"
                put "bigchkrss.$who" "${v#* }"
            else fail "bigchk.$who"; fi
            rm -rf "$work/cache-$who"
            s=$(date +%s%N)
            if mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/big-catalog.toml" "$work/cache-$who"; then
                put "bigready.$who" "$(awk -v d=$((mfs_ready_at - s)) 'BEGIN { printf "%.3f", d / 1e9 }')"
                put "bigrss.$who" "$(rss_mb "$mfs_pid")"
                umount_mfs "$work/mnt"
            else fail "bigready.$who"; fi
            rm -rf "$work/cache-$who"
        done
    done
    return 0
}

if want seq unlimited; then row_seq seq unlimited m/big.bin "$size"; fi
if want seq50 50m; then row_seq seq50 50m s/slow.bin "$slow_size"; fi
if want ttfb50 50m; then row_ttfb ttfb50 50m; fi
if want ttfb20 rtt; then row_ttfb ttfb20 rtt; fi
if want small rtt; then row_small; fi
if want ls unlimited; then row_ls; fi
if want kill 50m; then row_kill; fi
if want loader unlimited; then row_loader; fi
if want s3 unlimited; then row_s3; fi
if want catalog unlimited; then row_catalog; fi

# --- The table --------------------------------------------------------------------
# Median of the samples of a measurement; fails when there are none.
median() {
    [ -s "$work/res/$1" ] || return 1
    sort -g "$work/res/$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
count() { if [ -s "$work/res/$1" ]; then wc -l < "$work/res/$1"; else echo 0; fi; }
fmt() {
    case $2 in
        MB/s) awk -v v="$1" 'BEGIN { printf "%.0f", v }' ;;
        ms | KiB | MiB | MB) awk -v v="$1" 'BEGIN { printf "%.1f", v }' ;;
        *) awk -v v="$1" 'BEGIN { printf "%.2f", v }' ;;
    esac
}
# A cell: the median (n=… when runs failed, "fail" when all did) and, given
# the modelfs key, "(÷ r)" with r = modelfs ÷ this cell.
cell() {
    local key=$1 unit=$2 mine=${3:-} m c mv
    if ! m=$(median "$key"); then
        if [ -e "$work/res/$key.x" ]; then echo fail; else echo "–"; fi
        return
    fi
    c=$(fmt "$m" "$unit")
    [ "$(count "$key")" -ge "$runs" ] || c="$c (n=$(count "$key"))"
    if [ -n "$mine" ] && mv=$(median "$mine"); then
        c="$c ($(awk -v a="$mv" -v b="$m" 'BEGIN { if (b == 0) print "÷ 0"; else printf "÷ %.2f", a / b }'))"
    fi
    echo "$c"
}
# ok / MISS for an awk condition over medians (NAME=KEY ...); n/a when one is missing.
check() {
    local cond=$1 vars=() name v
    shift
    for name in "$@"; do
        v=$(median "${name#*=}") || { echo "n/a"; return; }
        vars+=(-v "${name%%=*}=$v")
    done
    awk "${vars[@]}" "BEGIN { print (($cond) ? \"ok\" : \"MISS\") }"
}
with_base=$([ -n "${BASELINE_BIN:-}" ] && echo 1 || echo 0)
# A table line: # what profile unit key target check-function (empty: none).
line() {
    local num=$1 what=$2 prof=$3 unit=$4 key=$5 tgt=$6 tfun=$7 p cols
    compgen -G "$work/res/$key.*" > /dev/null || return 0
    cols="| $num | $what | $prof | $unit | $(cell "$key.mfs" "$unit")"
    [ "$with_base" = 0 ] || cols="$cols | $(cell "$key.base" "$unit" "$key.mfs")"
    for p in curl aria rclone local; do cols="$cols | $(cell "$key.$p" "$unit" "$key.mfs")"; done
    cols="$cols | $tgt | $([ -n "$tfun" ] && "$tfun" mfs || echo "–")"
    [ "$with_base" = 0 ] || cols="$cols | $([ -n "$tfun" ] && "$tfun" base || echo "–")"
    echo "$cols |"
}
# The targets of issue 11, for this build (mfs) or the baseline (base).
t_seq() { check "m / c >= 0.45 && m / a >= 1.5" "m=seq.$1" c=seq.curl a=seq.aria; }
t_warm() { check "m / l >= 0.9" "m=warm.$1" l=warm.local; }
t_ttfb50() { check "m <= 40" "m=ttfb50.$1"; }
t_ttfb20() { check "m <= c + 25" "m=ttfb20.$1" c=ttfb20.curl; }
# Issue 11 asks for 4 RTT and writes that as "≤ 100 ms" at 20 ms: 5 RTT is used.
t_small() { check "m <= 5 * $rtt_ms" "m=small.$1"; }
t_ls() { check "b == 0" "b=lsb.$1"; }
# The targets of issue 12.
t_catls() { check "m <= 2 * l" "m=catls.$1" l=catls.local; }
t_catlsw() { check "m <= 1.2 * l" "m=catlsw.$1" l=catlsw.local; }
# Whether C1's target is within reach at all: not once ls alone spends more CPU than it allows.
t_catlscpu() { check "c <= 2 * l" "c=catlscpu.$1" l=catls.local | sed 's/ok/reachable/; s/MISS/out of reach/'; }
t_catroot() { check "m <= 100" "m=catrootw.$1"; }
t_catdu() { check "m <= 2 * l" "m=catdu.$1" l=catdu.local; }
t_catduw() { check "m <= 2 * l" "m=catduw.$1" l=catduw.local; }
t_catfind() { check "m <= 2 * l" "m=catfind.$1" l=catfind.local; }
t_catfindw() { check "m <= 2 * l" "m=catfindw.$1" l=catfindw.local; }
t_bigchk() { check "m <= 1" "m=bigchk.$1"; }
t_bigchkrss() { check "m <= 300" "m=bigchkrss.$1"; }
t_bigready() { check "m <= 1" "m=bigready.$1"; }
t_bigrss() { check "m <= 150" "m=bigrss.$1"; }
kill_max=$(awk -v s="$kill_mb" -v k="$kills" 'BEGIN { printf "%.0f", s + 3.2 * k }')
# Every run's bytes must have been intact, and every kill done.
t_kill() {
    local ok bad
    ok=$(check "m <= $kill_max" "m=kill.$1")
    bad=$(awk '$1 != 1 { b++ } END { print b + 0 }' "$work/res/killok.$1" 2> /dev/null) || bad=0
    if [ "$bad" = 0 ]; then echo "$ok"; else echo "MISS ($bad runs with bad bytes or missing kills)"; fi
}

commit=$(git rev-parse --short HEAD 2> /dev/null || echo "?")
git diff --quiet HEAD -- src Cargo.toml 2> /dev/null || commit="$commit + uncommitted changes in src/"
elapsed=$(($(date +%s) - started))
echo
echo "modelfs bench, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, $(nproc) cores, Linux $(uname -r)."
echo "nginx $(nginx -v 2>&1 | sed 's|.*/||') on 127.0.0.1. Profiles: unlimited; 50m = \`limit_rate 50m\` (50 MiB/s per"
echo "connection); +${rtt_ms} ms = examples/delay_proxy in front of the unlimited server ($([ ${#slow_start[@]} = 0 ] && echo "no" || echo "with") TCP slow start). Files: big ${size_mb} MiB"
echo "(rows 1, 2, 3, 6, S3) in a model with 20 small files ($((small_total / 1024)) KiB in all, row 4); slow ${slow_mb} MiB (row 1 at"
echo "50m); ${kill_mb} MiB with 1 MiB chunks, ${kills} SIGKILLs (row 7); 4 safetensors shards, ${loader_mb} MiB (row 8)."
echo "Each cell is the median of $runs runs (n=… when fewer succeeded); (÷ r) is modelfs ÷ that column, in the"
echo "row's unit (MB/s: higher is better; ms, s, KiB, MiB: lower is better). $rclone_note."
echo "rclone mount is timed once its probe file is visible, i.e. after it listed the directory (one HEAD per file),"
echo "so its 4 KiB read may use a connection it already has; curl's opens a new one."
echo "Bytes fetched: \$bytes_sent in nginx's access log for that path, headers included."
[ "$with_base" = 0 ] || echo "baseline = $BASELINE_BIN, measured in the same run, alternating with this build."
echo
if [ "$with_base" = 1 ]; then
    echo "| # | what | profile | unit | modelfs | baseline | curl | aria2c -x8 | rclone mount | local | target | ok | baseline ok |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
else
    echo "| # | what | profile | unit | modelfs | curl | aria2c -x8 | rclone mount | local | target | ok |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
fi
line 1 "cold sequential read, ${size_mb} MiB (dd bs=1M; curl -o /dev/null; aria2c to disk)" unlimited MB/s seq "≥ 0.45× curl, ≥ 1.5× aria2c" t_seq
line 1 "cold sequential read, ${slow_mb} MiB" 50m MB/s seq50 "–" ""
line 2 "warm reread, same mount, page cache hot (local: dd of the file, hot)" unlimited MB/s warm "≥ 0.9× local" t_warm
line 2 "warm read, new mount over the complete cache (passthrough)" unlimited MB/s warmnew "–" ""
line 3 "cold 4 KiB pread at 3/4 of ${size_mb} MiB, the pread alone (curl: -r, new connection)" 50m ms ttfb50 "≤ 40 ms" t_ttfb50
line 3 "… bytes the server sent for that file" 50m KiB ttfb50b "–" ""
line 3 "cold 4 KiB pread at 3/4 of ${size_mb} MiB, the pread alone (curl: -r, new connection)" "+${rtt_ms} ms" ms ttfb20 "≤ curl + 25 ms" t_ttfb20
line 3 "… bytes the server sent for that file" "+${rtt_ms} ms" KiB ttfb20b "–" ""
line 4 "20 small files of one model, cold, read one after another (curl: 20 URLs, one connection)" "+${rtt_ms} ms" ms small "≤ $((5 * rtt_ms)) ms (~4 RTT)" t_small
line 5 "ls -lR of a fresh mount of every model (local: of the served dir)" unlimited ms ls "–" ""
line 5 "… bytes the server sent meanwhile" unlimited KiB lsb "0" t_ls
line 6 "peak RSS (VmHWM) of the mount process over the cold read" unlimited MiB rss "–" ""
line 7 "bytes sent for one cold ${kill_mb} MiB read (1 MiB chunks), ${kills} SIGKILLs + remounts" 50m MiB kill "≤ ${kill_max} MiB, bytes intact" t_kill
line 8 "safetensors loads all tensors, ${loader_mb} MiB in 4 shards: cold mount vs aria2c -x8 + load (local: load alone)" unlimited s loader "–" ""
line S3 "cold sequential read from s3s-fs, ${size_mb} MiB (curl column: rclone cat)" unlimited MB/s s3 "–" ""
files=$((3 * catalog_models)) big_files=$((3 * big_catalog_models))
line C1 "ls -lR of ${catalog_models} models ($((catalog_models + files)) entries), cold: a fresh mount (local: the same tree, dentries hot)" – ms catls "≤ 2× local" t_catls
line C1 "… CPU time (user + system) of ls itself in that cold listing: the kernel's FUSE client, a floor no server lowers" – ms catlscpu "C1 reachable only if ≤ 2× local's time" t_catlscpu
line C1 "… the same again, warm" – ms catlsw "≤ 1.2× local" t_catlsw
line C2 "ls -l of the root (${catalog_models} models), warm" – ms catrootw "≤ 100 ms" t_catroot
line C2 "… cold" – ms catroot "–" ""
line C3 "du -s of the mount (${catalog_models} models), cold" – ms catdu "≤ 2× local" t_catdu
line C3 "… warm" – ms catduw "≤ 2× local" t_catduw
line C4 "find -type f (${catalog_models} models), cold" – ms catfind "≤ 2× local" t_catfind
line C4 "… warm" – ms catfindw "≤ 2× local" t_catfindw
line C5 "manifest check of ${big_catalog_models} models (${big_files} files, $(($(wc -c < "$work/man/big-catalog.toml" 2> /dev/null || echo 0) / 1000000)) MB)" – s bigchk "≤ 1 s" t_bigchk
line C5 "… its peak RSS" – MB bigchkrss "≤ 300 MB" t_bigchkrss
line C6 "mount ready, ${big_catalog_models} models (the --daemon mount returns)" – s bigready "≤ 1 s" t_bigready
line C7 "RSS of that mount once ready" – MB bigrss "≤ 150 MB (≤ 512 B a file)" t_bigrss
echo
echo "Run time: $((elapsed / 60)) min $((elapsed % 60)) s."
