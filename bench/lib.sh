# Helpers shared by the bench scripts (sourced, not run).

# strata_stat STRATA MNT NAME: one counter of a strata mount.
strata_stat() {
    "$1" stats "$2" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['stats']['$3'])"
}

# strata_fill STRATA MNT FILE: reads FILE through the mount until a pass asks the
# origin nothing (a local origin outruns the disk writer, which drops fills), waiting
# after each pass for the fills, and the dropped fills offered again, to land.
# Prints the number of passes.
strata_fill() {
    local pass before
    for pass in 1 2 3 4 5 6; do
        before=$(strata_stat "$1" "$2" origin_requests)
        sync; echo 3 > /proc/sys/vm/drop_caches
        cat "$3" > /dev/null
        until [ "$(strata_stat "$1" "$2" inflight_fill_bytes)$(strata_stat "$1" "$2" dropped_fill_blocks)" = 00 ]; do
            sleep 0.5
        done
        [ "$(strata_stat "$1" "$2" origin_requests)" = "$before" ] && break
    done
    echo "$pass"
}
