# shellcheck shell=bash
# Rows C1-C9 of scripts/bench.sh (sourced by it): a generated catalog listed
# through a mount and a big one checked and mounted. No network: the sources
# are never asked.
# shellcheck disable=SC2154 # globals set by bench.sh: work, runs, whos, catalog_models...

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
        reload_under_readers
    done
    return 0
}
# C8-C9: the big catalog with one model of real files, cached, which 8
# readers open and read while the mount reloads its manifest. The mount of
# this tree only: a baseline from before reloads has none.
reload_under_readers() {
    local v dir=$work/reload-model
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        for i in 1 2 3 4 5 6 7 8; do head -c $((4 << 20)) /dev/urandom > "$dir/w$i.bin"; done
    fi
    { cat "$work/man/big-catalog.toml"; echo; "$modelfs" manifest build "$dir" --id real --source "file://$dir"; } > "$work/man/reload.toml"
    rm -rf "$work/cache-reload"
    mount_mfs "$modelfs" "$work/mnt" "$work/man/reload.toml" "$work/cache-reload" || { fail reloadwait.mfs; return 0; }
    cat "$work/mnt/real/"* > /dev/null
    if v=$(py reload-reads "$work/mnt" "$work/mnt/real" "$work/man/reload.toml" "$mfs_pid" "$modelfs" "$work/logs/mount-$n.log"); then
        read -r began swap during base took swap_ms before after <<< "$v"
        put reloadwait.mfs "$began"
        put reloadover.mfs "$swap"
        put reloadall.mfs "$during"
        put reloadbase.mfs "$base"
        put reloadtook.mfs "$took"
        put reloadswap.mfs "$swap_ms"
        put reloadrss.mfs "$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a / b }')"
        log "  reload: RSS $before MB before, $after MB after"
    else fail reloadwait.mfs; fi
    umount_mfs "$work/mnt"
    rm -rf "$work/cache-reload"
}

