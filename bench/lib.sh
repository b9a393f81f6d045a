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

# fio_read FILE RW BS SECS: one buffered fio read of FILE (RW: fio --rw), page cache
# dropped first. A sequential pass (RW=read) reads the file once, not for SECS: a
# second pass would come from the page cache. Prints IOPS, MiB/s and the latency's
# p50, mean and p99.
fio_read() {
    local timing="--runtime=$4 --time_based"
    [ "$2" = read ] && timing=""
    sync; echo 3 > /proc/sys/vm/drop_caches
    fio --name=r --filename="$1" --rw="$2" --bs="$3" --ioengine=psync \
        --direct=0 $timing --numjobs=1 --randrepeat=0 \
        --invalidate=0 --output-format=json |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; c=r["clat_ns"]; p=c["percentile"]; print("%7.0f IOPS %6.0f MiB/s, p50 %5.0f us, mean %5.0f us, p99 %5.0f us" % (r["iops"], r["bw"] / 1024, p["50.000000"] / 1e3, c["mean"] / 1e3, p["99.000000"] / 1e3))'
}
