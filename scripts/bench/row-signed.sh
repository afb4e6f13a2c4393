# shellcheck shell=bash
# Row S of scripts/bench.sh (sourced by it): what checking a publisher's
# signature costs. The big file as three models on the same nginx: unsigned
# (su), signed whole by the model_signing CLI (sw: the files serialization,
# each file served once all of it verified), signed whole by the CLI with the
# chunk list `manifest build --chunk-list` writes (sl: chunks bound to the
# signed list, lazy) and signed in 1 MiB shards by its library (ss: chunks
# bound to the signature, lazy). Every cell is a fresh mount on a fresh cache
# dir with --trusted-key.
# shellcheck disable=SC2154 # globals set by bench.sh: work, runs, size, pyh, modelfs, url_*...

dir_of_signed() { case $1 in plain) echo su ;; whole) echo sw ;; listed) echo sl ;; shards) echo ss ;; esac; }

signed_setup() {
    local signer py_ms dir
    signer=$(scripts/ensure-model-signing.sh) || die "cannot install model_signing"
    py_ms=${signer%/*}/python
    mkdir -p "$work/keys"
    for dir in su sw sl ss; do
        mkdir -p "$work/srv/$dir"
        ln -f "$work/srv/m/big.bin" "$work/srv/$dir/big.bin"
    done
    "$py_ms" "$pyh" ec-keypair "$work/keys/key.pem" "$work/keys/pub.pem"
    log "signing the big file whole (model_signing sign key), with a chunk list, and in 1 MiB shards"
    "$modelfs" manifest build "$work/srv/sl" --id listed --source "$url_unlimited/sl" --chunk-list > "$work/man/listed.part"
    for dir in sw sl; do
        "$signer" sign key "$work/srv/$dir" --private_key "$work/keys/key.pem" --signature "$work/srv/$dir/model.sig" > /dev/null
    done
    "$py_ms" "$pyh" sign-shards "$work/srv/ss" "$work/keys/key.pem" 1048576
    {
        echo "version = 1"
        "$modelfs" manifest build "$work/srv/su" --id plain --source "$url_unlimited/su"
        "$modelfs" manifest build "$work/srv/sw" --id whole --source "$url_unlimited/sw"
        "$modelfs" manifest build "$work/srv/ss" --id shards --source "$url_unlimited/ss" --chunk-size 1M
        cat "$work/man/listed.part"
    } > "$work/man/signed-unlimited.toml"
    grep -c '^signature = "model.sig"' "$work/man/signed-unlimited.toml" | grep -qx 3 || die "manifest build did not name the three bundles"
    sed "s|\"$url_unlimited/|\"$url_50m/|" "$work/man/signed-unlimited.toml" > "$work/man/signed-50m.toml"
}

# S1, S2: per kind, a cold 4 KiB pread at 3/4 of the file (50m) and a cold sequential read (unlimited).
row_signed() {
    local r kind kinds dir v t mark off trust=(--trusted-key "$work/keys/pub.pem")
    signed_setup
    # shellcheck disable=SC2017 # a 4 KiB-aligned offset, as row 3's
    off=$(((size / 4096) * 3 / 4 * 4096))
    for ((r = 1; r <= runs; r++)); do
        # Each run in another order: no kind always follows the same one.
        kinds=(plain whole listed shards plain whole listed)
        for kind in "${kinds[@]:$(((r - 1) % 4)):4}"; do
            log "signed: $kind, run $r/$runs"
            dir=$(dir_of_signed "$kind")
            rm -rf "$work/cache-sg"
            server_idle 10
            if mount_mfs "$modelfs" "$work/mnt" "$work/man/signed-50m.toml" "$work/cache-sg" "${trust[@]}"; then
                mark=$(log_mark)
                if v=$(value python3 "$pyh" open-pread "$work/mnt/$kind/big.bin" "$off" 4096); then
                    put "sgopen.$kind" "${v% *}"
                    put "sgttfb.$kind" "${v#* }"
                    server_quiet 10 || log "  signed: the server was still sending after 10 s"
                    umount_mfs "$work/mnt"
                    server_idle 10
                    put "sgttfbb.$kind" "$(kib "$(bytes_since "$mark" "/$dir/big.bin")")"
                else fail "sgttfb.$kind"; fi
                umount_mfs "$work/mnt"
            else fail "sgttfb.$kind"; fi
            rm -rf "$work/cache-sg"
            if mount_mfs "$modelfs" "$work/mnt" "$work/man/signed-unlimited.toml" "$work/cache-sg" "${trust[@]}" &&
                t=$(timed dd if="$work/mnt/$kind/big.bin" of=/dev/null bs=1M); then
                put "sgseq.$kind" "$(mbps "$size" "$t")"
            else fail "sgseq.$kind"; fi
            umount_mfs "$work/mnt"
            rm -rf "$work/cache-sg"
        done
    done
    return 0
}

# A cell of kind $2 for key $1 and, for a signed kind, its ratio to unsigned.
sg_cell() {
    local c a b
    c=$(cell "$1.$2" "$3")
    if [ "$2" != plain ] && a=$(median "$1.$2") && b=$(median "$1.plain"); then
        c="$c ($(awk -v a="$a" -v b="$b" 'BEGIN { if (b == 0) print "× ∞"; else printf "%.2f×", a / b }'))"
    fi
    echo "$c"
}
sg_line() {
    local num=$1 what=$2 prof=$3 unit=$4 key=$5 tgt=$6 cond=$7
    compgen -G "$work/res/$key.*" > /dev/null || return 0
    echo "| $num | $what | $prof | $unit | $(sg_cell "$key" plain "$unit") | $(sg_cell "$key" whole "$unit") | $(sg_cell "$key" listed "$unit") | $(sg_cell "$key" shards "$unit") | $tgt | $([ -n "$cond" ] && check "$cond" u="$key.plain" l="$key.listed" s="$key.shards" || echo "–") |"
}
signed_table() {
    compgen -G "$work/res/sg*" > /dev/null || return 0
    echo
    echo "Row S, what a signature costs: the big file (${size_mb} MiB) unsigned, signed whole (model_signing sign key:"
    echo "each file served once all of it verified), signed whole with the chunk list of manifest build --chunk-list"
    echo "(chunks bound to the signed list, served lazily) and signed in 1 MiB shards (model_signing's library: chunks"
    echo "bound to the signature, served lazily). Each cell a fresh mount and cache dir with --trusted-key; (r×) is the"
    echo "kind's median ÷ unsigned's. The open includes fetching and checking the bundle (signed kinds)."
    echo
    echo "| # | what | profile | unit | unsigned | signed whole | signed whole + chunk list | signed in shards | target (lazy kinds) | ok |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    sg_line S1 "open of the file, cold (signed: the bundle fetched and checked first)" 50m ms sgopen "–" ""
    sg_line S1 "cold 4 KiB pread at 3/4 of the file, after the open" 50m ms sgttfb "≤ 1.05× unsigned" "l <= 1.05 * u && s <= 1.05 * u"
    sg_line S1 "… bytes the server sent for that file" 50m KiB sgttfbb "–" ""
    sg_line S2 "cold sequential read (dd bs=1M)" unlimited MB/s sgseq "≥ 0.95× unsigned" "l >= 0.95 * u && s >= 0.95 * u"
}
