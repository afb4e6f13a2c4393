# shellcheck shell=bash
# Rows 1-7 and S3 of scripts/bench.sh (sourced by it): reads of one file,
# small files, listings, kills. Each sample goes to res/ROW.WHO (put, fail).
# shellcheck disable=SC2154 # globals set by bench.sh: work, runs, whos, size, kills, pyh, url_*...

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
    # shellcheck disable=SC2017 # a 4 KiB-aligned offset, as it always was
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

# S3: the big file's model from s3s-fs (bucket "models"), signed requests.
row_s3() {
    local r who t
    if ! s3_start || ! s3_upload "$work/srv/m" models; then
        fail s3.mfs
        s3_stop
        return 0
    fi
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
    s3_stop
    return 0
}

