#!/usr/bin/env python3
"""Counts the page-cache folios behind a file's first pages: small (one page), or the
head and tail pages of large folios. Maps the file, touches each page (so what is
already cached is mapped, and what is not gets read in), then looks each page's frame
up in /proc/self/pagemap and /proc/kpageflags. Needs root.

    bench/folios.py FILE [PAGES]
"""
import collections
import mmap
import os
import struct
import sys

KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16
PAGE = mmap.PAGESIZE


def main():
    path = sys.argv[1]
    pages = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    fd = os.open(path, os.O_RDONLY)
    size = min(os.fstat(fd).st_size, pages * PAGE) // PAGE * PAGE
    if size == 0:
        sys.exit(f"{path}: smaller than a page")
    m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    for off in range(0, size, PAGE):
        m[off]
    # The mapping's address: the one line of our maps that names the file.
    real = os.path.realpath(path)
    base = next(int(line.split("-")[0], 16) for line in open("/proc/self/maps")
                if line.rstrip().endswith(" " + real))
    count = collections.Counter()
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        for i in range(size // PAGE):
            pm.seek((base // PAGE + i) * 8)
            entry = struct.unpack("<Q", pm.read(8))[0]
            if not entry >> 63 & 1:
                count["absent"] += 1
                continue
            kf.seek((entry & ((1 << 55) - 1)) * 8)
            flags = struct.unpack("<Q", kf.read(8))[0]
            kind = ("head" if flags >> KPF_COMPOUND_HEAD & 1
                    else "tail" if flags >> KPF_COMPOUND_TAIL & 1 else "small")
            count[kind] += 1
    large = count["head"] + count["tail"]
    print(f"{path}: {size // PAGE} pages: {count['small']} in one-page folios, "
          f"{large} in {count['head']} large folios"
          + (f", {count['absent']} not mapped" if count["absent"] else ""))


if __name__ == "__main__":
    main()
