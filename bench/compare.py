"""Helper of bench/compare: runs warpfs (cuda_load), pread + pageable copy (torch) and KvikIO
on one file, cold and warm, plus device->file writes; prints a table and appends it to
bench/RESULTS.md. Every figure is a measurement of this run; nothing is estimated."""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--bin", default=".device-bin/cuda_load")
p.add_argument("--file", default="/var/tmp/warpfs-compare.bin")
p.add_argument("--size-gib", type=float, default=8)
p.add_argument("--write-gib", type=float, default=4)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--write-reps", type=int, default=3, help="write repetitions (median reported; the disk is noisy)")
p.add_argument("--sweep", action="store_true", help="also time other warpfs thread/chunk settings")
p.add_argument("--out", default=os.environ.get("OUT", "."))
p.add_argument("--commit", default=os.environ.get("WARPFS_COMMIT", "unknown"))
p.add_argument("--results", default="bench/RESULTS.md")
a = p.parse_args()

GIB = 1 << 30
log = open(os.path.join(a.out, "compare-runs.jsonl"), "a")


def note(rec):
    log.write(json.dumps(rec) + "\n")
    log.flush()
    print("  ", json.dumps(rec))


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def prime(path):
    """Reads the file through the page cache so that warm runs find it cached."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(64 << 20)
        while f.readinto(buf):
            pass


def warpfs_read(label, *extra):
    cmd = [a.bin, a.file, "--label", label, *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    recs = [json.loads(l[5:]) for l in out.splitlines() if l.startswith("JSON ")]
    for r in recs:
        note({"what": "warpfs " + " ".join(extra), **r})
    return recs


def warpfs_write(*extra):
    path = a.file + ".w"
    cmd = [a.bin, "--write", path, "--size-gib", str(a.write_gib), *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    recs = [json.loads(l[5:]) for l in out.splitlines() if l.startswith("JSON ")]
    for r in recs:
        note({"what": "warpfs write " + " ".join(extra), **r})
    os.remove(path)
    return recs[-1]


if not os.path.exists(a.file) or os.path.getsize(a.file) != int(a.size_gib * GIB):
    subprocess.run([a.bin, "--make", a.file, "--size-gib", str(a.size_gib)], check=True)
size = os.path.getsize(a.file)

import cupy  # noqa: E402
import kvikio  # noqa: E402
import kvikio.defaults  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

card = torch.cuda.get_device_name(0)
try:
    kv = f"kvikio {kvikio.__version__}, compat_mode {kvikio.defaults.get('compat_mode')}"
except Exception as e:  # informational only
    kv = f"kvikio ({e!r})"
print(f"card {card}, file {a.file} {size / GIB:.2f} GiB, {kv}")

kbuf = cupy.empty(size, dtype=cupy.uint8)
tbuf = torch.empty(size, dtype=torch.uint8, device="cuda")


def kvikio_read(threads):
    kvikio.defaults.set({"num_threads": threads})
    with kvikio.CuFile(a.file, "r") as f:
        t = time.perf_counter()
        n = f.read(kbuf)
        cupy.cuda.runtime.deviceSynchronize()
        dt = time.perf_counter() - t
    assert n == size, (n, size)
    return size / dt / 1e9


def pageable_read():
    hb = np.empty(64 << 20, dtype=np.uint8)
    fd = os.open(a.file, os.O_RDONLY)
    t = time.perf_counter()
    o = 0
    while o < size:
        n = os.preadv(fd, [memoryview(hb)], o)
        if n == 0:
            break
        tbuf[o:o + n].copy_(torch.from_numpy(hb[:n]))
        o += n
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    os.close(fd)
    assert o == size
    return size / dt / 1e9


def pinned_copy():
    """The link ceiling: one pinned 1 GiB host buffer copied to the GPU 8 times (cudaMemcpy)."""
    n = 1 << 30
    h = cupy.cuda.alloc_pinned_memory(n)
    d = kbuf[:n]
    cupy.cuda.runtime.memcpy(d.data.ptr, h.ptr, n, 1)
    t = time.perf_counter()
    for _ in range(8):
        cupy.cuda.runtime.memcpy(d.data.ptr, h.ptr, n, 1)
    cupy.cuda.runtime.deviceSynchronize()
    return 8 * n / (time.perf_counter() - t) / 1e9


def kvikio_write(threads):
    n = int(a.write_gib * GIB)
    src = kbuf[:n]
    path = a.file + ".kw"
    if os.path.exists(path):
        os.remove(path)
    os.sync()
    kvikio.defaults.set({"num_threads": threads})
    t = time.perf_counter()
    with kvikio.CuFile(path, "w") as f:
        w = f.write(src)
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.close(fd)
    dt = time.perf_counter() - t
    os.remove(path)
    assert w == n
    return n / dt / 1e9


# Warm up every library once (context creation, thread pools) outside the timings.
kvikio_read(16)
pageable_read()

rows = {}  # name -> dict(threads, cold, warm list)


def add(name, threads, kind, v):
    r = rows.setdefault(name, {"threads": threads, "cold": None, "warm": []})
    if kind == "cold":
        r["cold"] = v
    else:
        r["warm"].append(v)
    note({"what": name, "kind": kind, "gbps": round(v, 3), "threads": threads})


sweep = []
if a.sweep:
    sweep = [["--threads", str(t), "--chunk-kib", str(c)] for t, c in
             [(16, 1024), (16, 2048), (12, 4096)]]
# Other cold policies (measured slower in earlier runs) only with --sweep.
cold_extra = [["--cold-reads", "buffered"], ["--cold-reads", "direct"]] if a.sweep else []

print("== cold (drop_caches before each) ==")
drop_caches()
r = warpfs_read("cold")[-1]
add("warpfs (default)", r["threads"], "cold", r["gbps"])
for ex in cold_extra:
    drop_caches()
    r = warpfs_read("cold", *ex)[-1]
    add("warpfs " + " ".join(ex), r["threads"], "cold", r["gbps"])
drop_caches()
add("pread + pageable copy (torch)", 1, "cold", pageable_read())
drop_caches()
add("KvikIO num_threads=1", 1, "cold", kvikio_read(1))
drop_caches()
add("KvikIO num_threads=16", 16, "cold", kvikio_read(16))

print("== warm (file primed into the page cache) ==")
prime(a.file)
for rep in range(a.reps):
    recs = warpfs_read("warm", "--copy-only")
    r = [x for x in recs if x["op"] == "read"][-1]
    add("warpfs (default)", r["threads"], "warm", r["gbps"])
    c = [x for x in recs if x["op"] == "copy"][-1]
    add("ceiling: warpfs's host→device copies alone, no file reads", c["threads"], "warm", c["gbps"])
    add("ceiling: pinned 1 GiB buffer → GPU, one cudaMemcpy", 1, "warm", pinned_copy())
    for ex in sweep:
        r = warpfs_read("warm", *ex)[-1]
        add("warpfs " + " ".join(ex), r["threads"], "warm", r["gbps"])
    add("pread + pageable copy (torch)", 1, "warm", pageable_read())
    add("KvikIO num_threads=1", 1, "warm", kvikio_read(1))
    add("KvikIO num_threads=16", 16, "warm", kvikio_read(16))

print("== writes (device -> file, fdatasync included) ==")
wrows = {}  # name -> dict(threads, values)


def write_row(name, fn):
    try:
        v, thr = fn()
    except Exception as e:  # keep the other rows
        print(f"  {name}: FAILED {e!r}")
        return
    note({"what": "write " + name, "gbps": round(v, 3), "threads": thr})
    r = wrows.setdefault(name, {"threads": thr, "v": []})
    r["v"].append(v)


def ww(*extra):
    r = warpfs_write(*extra)
    return r["gbps"], r["threads"]


# Interleaved repetitions: each writer once per round, so disk noise hits all alike.
for rep in range(a.write_reps):
    write_row("warpfs (default: O_DIRECT middle)", ww)
    if a.sweep:
        write_row("warpfs --writes buffered", lambda: ww("--writes", "buffered"))
        write_row("warpfs --no-prealloc", lambda: ww("--no-prealloc"))
    write_row("KvikIO num_threads=1", lambda: (kvikio_write(1), 1))
    write_row("KvikIO num_threads=16", lambda: (kvikio_write(16), 16))


def fmt(v):
    return "—" if v is None else f"{v:.2f}"


date = datetime.date.today().isoformat()
cmd = "bench/compare " + " ".join(sys.argv[1:])
lines = [
    "",
    f"### {date} · H100 machine: {os.cpu_count()} cores, "
    f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB, virtio disk / ext4; {card}",
    "",
    f"- command: `{cmd}`",
    f"- commit: {a.commit}",
    "- engine / backend: warpfs CUDA bulk pipeline (`backend::cuda::CudaBulk`, defaults unless the "
    "row says otherwise); KvikIO 26.10 compat mode (no nvidia-fs)",
    f"- notes: file {size / GIB:.0f} GiB read whole into GPU memory; warm = median of {a.reps} after "
    "priming the page cache (min–max beside it); cold = one run after "
    "`sync; echo 3 > /proc/sys/vm/drop_caches`. GB/s = 10^9 B/s.",
    "",
    "| reader | CPU threads | warm GB/s | warm min–max | cold GB/s |",
    "|---|---:|---:|---:|---:|",
]
for name, r in rows.items():
    w = r["warm"]
    lines.append(
        f"| {name} | {r['threads']} | {fmt(statistics.median(w) if w else None)} | "
        f"{(fmt(min(w)) + '–' + fmt(max(w))) if w else '—'} | {fmt(r['cold'])} |")
lines += [
    "",
    f"Writes: {a.write_gib:g} GiB device → new file, timed until `fdatasync` returned; "
    f"median of {a.write_reps} interleaved repetitions (min–max beside it).",
    "",
    "| writer | CPU threads | GB/s (median) | min–max |",
    "|---|---:|---:|---:|",
]
for name, r in wrows.items():
    v = r["v"]
    lines.append(f"| {name} | {r['threads']} | {statistics.median(v):.2f} | {min(v):.2f}–{max(v):.2f} |")
table = "\n".join(lines) + "\n"
print(table)
with open(os.path.join(a.out, "compare.md"), "w") as f:
    f.write(table)
new = not os.path.exists(a.results)
with open(a.results, "a") as f:
    if new:
        f.write("# Benchmark results\n\nMeasured figures only, each with date, card, command and commit.\n")
    f.write(table)
