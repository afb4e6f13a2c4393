# shellcheck shell=bash
# Row 8 of scripts/bench.sh (sourced by it): the loader table. Two models of
# LOADER_MB in 4 safetensors shards (llm and llm2, other bytes), served by
# nginx (unlimited; manifest loader.toml) and llm by s3s-fs too (bucket llm;
# loader-s3.toml). Samples: res/ld_*.mfs and .base (modelfs, one fresh mount
# and cache dir each), res/ld_*.peer (safetensors on the local files, aria2c,
# run:ai Model Streamer).
# shellcheck disable=SC2154 # globals set by bench.sh: work, runs, whos, pyh, url_*, skip_s3...

# The runs' largest VmHWM of a mount, per build (8g).
declare -A ld_rss=()
ld_note_rss() {
    local v
    v=$(vmhwm_mib "$mfs_pid" 2> /dev/null) || return 0
    [ -n "$v" ] || return 0
    ld_rss[$1]=$(awk -v a="${ld_rss[$1]:-0}" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
}
# One measurement through a fresh mount on a fresh cache dir: sample KEY.WHO
# is what the command prints. Args: who manifest key command args.
ld_mount() {
    local who=$1 manifest=$2 key=$3 v
    shift 3
    rm -rf "$work/cache-$who"
    sync # no writeback from the last run competing with this one
    mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/$manifest" "$work/cache-$who" || { fail "$key.$who"; return 0; }
    if v=$("$@"); then put "$key.$who" "$v"; else fail "$key.$who"; fi
    ld_note_rss "$who"
    umount_mfs "$work/mnt"
    rm -rf "$work/cache-$who"
}
# 8f: both models loaded (numpy) by two processes at once through one fresh mount.
ld_two() {
    local who=$1 a b
    rm -rf "$work/cache-$who"
    sync
    mount_mfs "$(bin_of "$who")" "$work/mnt" "$work/man/loader.toml" "$work/cache-$who" || { fail "ld_two_a.$who"; return 0; }
    timeout -k 5 "$cmd_timeout" python3 "$pyh" load np "$work/mnt/llm" > "$work/two.a" 2> "$work/logs/two-a.log" &
    a=$!
    timeout -k 5 "$cmd_timeout" python3 "$pyh" load np "$work/mnt/llm2" > "$work/two.b" 2> "$work/logs/two-b.log" &
    b=$!
    if wait "$a"; then put "ld_two_a.$who" "$(cat "$work/two.a")"; else
        log "failed: load of llm, two at once ($(tail -c 400 "$work/logs/two-a.log"))"
        fail "ld_two_a.$who"
    fi
    if wait "$b"; then put "ld_two_b.$who" "$(cat "$work/two.b")"; else
        log "failed: load of llm2, two at once ($(tail -c 400 "$work/logs/two-b.log"))"
        fail "ld_two_b.$who"
    fi
    ld_note_rss "$who"
    umount_mfs "$work/mnt"
    rm -rf "$work/cache-$who"
}
# A peer's measurement on the local files, their page cache dropped first:
# sample KEY.peer. Args: key command args.
ld_local() {
    local key=$1 v
    shift
    sync
    py drop "$work/srv/llm/"* || log "could not drop the page cache of srv/llm"
    if v=$("$@"); then put "$key.peer" "$v"; else fail "$key.peer"; fi
}

row_loader() {
    local r who t tl f ld_shards total s3_ok=0 mnt_shards=() runai_env
    read -r -a ld_shards <<< "$(py shards "$work/srv/llm")"
    total=${ld_shards[-1]}
    unset 'ld_shards[-1]'
    for f in "${ld_shards[@]}"; do mnt_shards+=("$work/mnt/llm/$f"); done
    : > "$work/dl/list"
    for f in $loader_files; do echo "$url_unlimited/llm/$f" >> "$work/dl/list"; done
    if [ "$skip_s3" = 0 ]; then
        if s3_start && s3_upload "$work/srv/llm" llm; then s3_ok=1; else log "loader: no s3 cells"; fi
        # What run:ai needs beyond what s3_start exported (its S3 client's region, path-style).
        runai_env=(env RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0 AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1)
    fi
    for ((r = 1; r <= runs; r++)); do
        log "loader (unlimited$([ "$s3_ok" = 0 ] || echo ", s3")) run $r/$runs"
        ld_rss=()
        ld_local ld_local_np value python3 "$pyh" load np "$work/srv/llm"
        ld_local ld_local_pt value python3 "$pyh" load pt "$work/srv/llm"
        ld_local ld_runai_local value python3 "$pyh" runai "$total" "$work/srv/llm" "${ld_shards[@]}"
        if [ "$s3_ok" = 1 ]; then
            sync
            if t=$(value "${runai_env[@]}" python3 "$pyh" runai "$total" s3://llm "${ld_shards[@]}"); then
                put ld_runai_s3.peer "$t"
            else fail ld_runai_s3.peer; fi
        fi
        sync
        rm -rf "$work/dl/llm"
        if t=$(timed aria2c -q -x 8 -s 8 -k 8M --allow-overwrite=true --auto-file-renaming=false -d "$work/dl/llm" -i "$work/dl/list") &&
            tl=$(value python3 "$pyh" load np "$work/dl/llm"); then
            put ld_aria.peer "$(awk -v a="$t" -v b="$tl" 'BEGIN { printf "%.3f", a + b }')"
        else fail ld_aria.peer; fi
        rm -rf "$work/dl/llm"
        # Each measurement by one build then the other, so both see the same moment of the host.
        for who in $whos; do ld_mount "$who" loader.toml ld_np_http value python3 "$pyh" load np "$work/mnt/llm"; done
        for who in $whos; do ld_mount "$who" loader.toml ld_npb_http value python3 "$pyh" load np "$work/mnt/llm2"; done
        for who in $whos; do ld_mount "$who" loader.toml ld_pt_http value python3 "$pyh" load pt "$work/mnt/llm"; done
        for who in $whos; do ld_mount "$who" loader.toml ld_cat_http timed cat "${mnt_shards[@]}"; done
        for who in $whos; do ld_two "$who"; done
        if [ "$s3_ok" = 1 ]; then
            for who in $whos; do ld_mount "$who" loader-s3.toml ld_np_s3 value python3 "$pyh" load np "$work/mnt/llm"; done
            for who in $whos; do ld_mount "$who" loader-s3.toml ld_pt_s3 value python3 "$pyh" load pt "$work/mnt/llm"; done
            for who in $whos; do ld_mount "$who" loader-s3.toml ld_cat_s3 timed cat "${mnt_shards[@]}"; done
        fi
        for who in $whos; do
            if [ -n "${ld_rss[$who]:-}" ]; then put "ld_rss.$who" "${ld_rss[$who]}"; fi
        done
    done
    if [ "$skip_s3" = 0 ]; then
        s3_stop
        rm -rf "$work/s3/llm"
    fi
    return 0
}

# --- The loader table ---------------------------------------------------------------
# A ratio of two medians, KEY1 ÷ KEY2; "@" in a key stands for the build (mfs, base).
ld_ratio() {
    local a b
    a=$(median "$1") && b=$(median "$2") || return 1
    awk -v a="$a" -v b="$b" 'BEGIN { if (b == 0) exit 1; printf "%.2f", a / b }'
}
# A measurement's line: # what source unit key target limit (empty: none; else ok when ≤ it).
ld_line() {
    local num=$1 what=$2 src=$3 unit=$4 key=$5 tgt=$6 limit=$7 who cols
    compgen -G "$work/res/$key.*" > /dev/null || return 0
    cols="| $num | $what | $src | $unit | $(cell "$key.mfs" "$unit")"
    [ "$with_base" = 0 ] || cols="$cols | $(cell "$key.base" "$unit" "$key.mfs")"
    cols="$cols | $(cell "$key.peer" "$unit") | $tgt"
    for who in $whos; do
        if [ -z "$limit" ]; then cols="$cols | –"; else cols="$cols | $(check "m <= $limit" "m=$key.$who")"; fi
    done
    echo "$cols |"
}
# A ratio's line: # what source key1 key2 target limit; each build's own medians.
ld_ratio_line() {
    local num=$1 what=$2 src=$3 k1=$4 k2=$5 tgt=$6 limit=$7 who v cols oks=""
    compgen -G "$work/res/${k1/@/*}" > /dev/null || return 0
    cols="| $num | $what | $src | ×"
    for who in $whos; do
        if v=$(ld_ratio "${k1/@/$who}" "${k2/@/$who}"); then
            cols="$cols | $v"
            oks="$oks | $(awk -v v="$v" -v l="$limit" 'BEGIN { print (v <= l) ? "ok" : "MISS" }')"
        else
            cols="$cols | n/a"
            oks="$oks | n/a"
        fi
    done
    echo "$cols | – | $tgt$oks |"
}
loader_table() {
    compgen -G "$work/res/ld_*" > /dev/null || return 0
    echo
    echo "Row 8, the loader table: a model of ${loader_mb} MiB in 4 safetensors shards of 32 MiB f16 tensors, with its"
    echo "model.safetensors.index.json (8f: and a second one, other bytes, in the same manifest); http = nginx (unlimited),"
    echo "s3 = s3s-fs (signed requests), both on 127.0.0.1, their files in the page cache. A modelfs cell is a fresh"
    echo "mount on a fresh cache dir; the local files have their page cache dropped (fadvise) before each load from them."
    echo "Loads are timed inside the loader from the first open to the last tensor (pt: each tensor copied, so every page"
    echo "of the mapping is read); 8g's cell is, per run, the largest VmHWM of the mounts of 8a-8c and 8f."
    echo "× rows are ratios of the medians, each build's own. Peers: safetensors on the local files, aria2c, run:ai"
    echo "Model Streamer $(pip_version runai-model-streamer) (its defaults; to s3s-fs: AWS_ENDPOINT_URL, path-style)."
    echo
    if [ "$with_base" = 1 ]; then
        echo "| # | what | source | unit | modelfs | baseline | peer | target | ok | baseline ok |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
    else
        echo "| # | what | source | unit | modelfs | peer | target | ok |"
        echo "|---|---|---|---|---|---|---|---|"
    fi
    local src
    for src in http s3; do
        ld_line 8a "safetensors numpy load (safe_open \"np\"), every tensor, fresh mount" $src s "ld_np_$src" "–" ""
        if [ $src = http ]; then
            ld_ratio_line 8a "… ÷ 8c, the transfer alone" $src "ld_np_http.@" "ld_cat_http.@" "≤ 1.15" 1.15
        else
            ld_ratio_line 8a "… ÷ 8e from the same s3s-fs (run:ai)" $src "ld_np_s3.@" ld_runai_s3.peer "≤ 1.00" 1.00
        fi
        ld_line 8b "the same with torch (safe_open \"pt\")" $src s "ld_pt_$src" "–" ""
        [ $src = s3 ] || ld_ratio_line 8b "… ÷ 8c, the transfer alone" $src "ld_pt_http.@" "ld_cat_http.@" "≤ 1.15" 1.15
        ld_line 8c "cat of the 4 shards to /dev/null, fresh mount: the transfer alone" $src s "ld_cat_$src" "–" ""
    done
    ld_line 8d "safetensors numpy load from the local files" local s ld_local_np "–" ""
    ld_line 8d "… torch" local s ld_local_pt "–" ""
    ld_line 8d "aria2c -x8 download of the model to disk, then the numpy load" http s ld_aria "–" ""
    ld_line 8e "run:ai Model Streamer (SafetensorsStreamer, every tensor) from the local files" local s ld_runai_local "–" ""
    ld_line 8e "… from s3s-fs (s3://llm/…)" s3 s ld_runai_s3 "–" ""
    ld_line 8f "two models loaded at once (numpy, two processes, one fresh mount): the first" http s ld_two_a "–" ""
    ld_ratio_line 8f "… ÷ its load alone (8a)" http "ld_two_a.@" "ld_np_http.@" "≤ 2.2" 2.2
    ld_line 8f "… the second (same shape, other bytes)" http s ld_two_b "–" ""
    ld_ratio_line 8f "… ÷ its load alone (next line)" http "ld_two_b.@" "ld_npb_http.@" "≤ 2.2" 2.2
    ld_line 8f "… the second, loaded alone" http s ld_npb_http "–" ""
    ld_line 8g "peak RSS (VmHWM) of the mount, the largest of a run's loads (8a-8c, 8f)" \
        "$([ "$skip_s3" = 1 ] && echo http || echo "http, s3")" MiB ld_rss "≤ 256 MiB" 256
}
pip_version() { python3 -m pip show "$1" 2> /dev/null | awk '/^Version:/ { print $2 }'; }
