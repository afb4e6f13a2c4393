# shellcheck shell=bash
# Helpers of scripts/bench.sh (sourced by it): logging, polling, the work dir's
# cleanup, timing, samples, mounts (modelfs, rclone) and the table's cells.
# shellcheck disable=SC2154 # globals set by bench.sh: started, work, runs, cmd_timeout, rows, profiles...
# shellcheck disable=SC2034 # globals these set for bench.sh and the rows: mfs_pid, mfs_ready_at...

log() { printf '[bench %4ds] %s\n' $(($(date +%s) - started)) "$*" >&2; }
die() { log "error: $*"; exit 1; }
want() { [[ $rows == *" $1 "* && $profiles == *" $2 "* ]]; }

# --- Work dir and cleanup -------------------------------------------------------
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

py() { python3 "$pyh" "$@"; }
port() { py free-port; }

# --- Measuring --------------------------------------------------------------------
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

# A --daemon mount (ready when it returns) on a cache of its own, with any
# further options after the cache; sets mfs_pid.
mount_mfs() {
    local bin=$1 mnt=$2 manifest=$3 cache=$4
    shift 4
    n=$((n + 1))
    local logf="$work/logs/mount-$n.log"
    # shellcheck disable=SC2094 # the mount logs to the file; what it writes to stderr goes after
    if ! timeout -k 5 60 "$bin" mount "$mnt" -m "$manifest" --cache-dir "$cache" --daemon --log-file "$logf" "$@" 2>> "$logf"; then
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

# --- The table: cells and checks over the samples ------------------------------------
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
