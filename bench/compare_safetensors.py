"""Helper of bench/compare-safetensors: times `warpfs load FILE.safetensors` against
`safetensors.torch.load_file(path, device="cuda:0")` on one file, warm and cold, in one run on
one card; prints a table with ratios and appends it to bench/RESULTS.md. Every figure is a
measurement of this run; nothing is estimated."""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--bin", required=True, help="warpfs binary built with --features cuda")
p.add_argument("--file", default="/var/tmp/warpfs-st-4g.safetensors")
p.add_argument("--tensors", type=int, default=64)
p.add_argument("--rows", type=int, default=4096)
p.add_argument("--cols", type=int, default=8192)
p.add_argument("--reps", type=int, default=5, help="warm repetitions per reader (median reported)")
p.add_argument("--cold-reps", type=int, default=2, help="cold repetitions per reader (drop_caches before each)")
p.add_argument("--out", default=os.environ.get("OUT", "."))
p.add_argument("--commit", default=os.environ.get("WARPFS_COMMIT", "unknown"))
p.add_argument("--results", default="bench/RESULTS.md")
a = p.parse_args()

GIB = 1 << 30
os.makedirs(a.out, exist_ok=True)
log = open(os.path.join(a.out, "compare-safetensors-runs.jsonl"), "a")


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


import torch  # noqa: E402
import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402

tensor_bytes = a.rows * a.cols * 2
want_data = a.tensors * tensor_bytes


def make_file():
    """64 bf16 tensors of rows×cols with seeded random bits (any bit pattern is a bf16)."""
    g = torch.Generator().manual_seed(20261125)
    ts = {}
    for i in range(a.tensors):
        bits = torch.randint(-32768, 32767, (a.rows, a.cols), dtype=torch.int16, generator=g)
        ts[f"layers.{i}.weight"] = bits.view(torch.bfloat16)
    tmp = a.file + ".tmp"
    safetensors.torch.save_file(ts, tmp)
    os.replace(tmp, a.file)


def data_bytes(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    return os.path.getsize(path) - 8 - n


if not os.path.exists(a.file) or data_bytes(a.file) != want_data:
    print(f"creating {a.file}: {a.tensors} bf16 tensors of {a.rows}x{a.cols}")
    make_file()
size = os.path.getsize(a.file)
card = torch.cuda.get_device_name(0)
print(f"card {card}, file {a.file} {size / GIB:.2f} GiB, torch {torch.__version__}, "
      f"safetensors {safetensors.__version__}")


def st_load():
    torch.cuda.synchronize()
    t = time.perf_counter()
    ts = safetensors.torch.load_file(a.file, device="cuda:0")
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    n = sum(v.numel() * v.element_size() for v in ts.values())
    assert n == want_data, (n, want_data)
    assert len(ts) == a.tensors
    del ts
    return want_data / dt / 1e9


def warpfs_load(*extra):
    cmd = [a.bin, "load", a.file, "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    j = json.loads(r.stdout)
    assert j["format"] == "safetensors" and j["tensors"] == a.tensors, j
    assert j["bytes"] == want_data, j
    return j


rows = {}  # name -> {"threads", "warm": [], "cold": []}


def add(name, threads, kind, v):
    rows.setdefault(name, {"threads": threads, "warm": [], "cold": []})[kind].append(v)
    note({"what": name, "kind": kind, "gbps": round(v, 3), "threads": threads})


def warpfs_rows(kind):
    j = warpfs_load()
    add("warpfs load (header + alloc + transfer)", j["threads"], kind, j["load_gbps"])
    add("warpfs load (transfer only)", j["threads"], kind, j["gbps"])
    note({"what": "warpfs detail", "kind": kind, "cached_bytes": j["cached_bytes"],
          "seconds": j["seconds"], "load_seconds": j["load_seconds"],
          "setup_seconds": j["setup_seconds"]})


# Warm up: CUDA context and caching allocator of the Python side, outside the timings.
prime(a.file)
st_load()

print("== cold (drop_caches before each) ==")
for rep in range(a.cold_reps):
    drop_caches()
    warpfs_rows("cold")
    drop_caches()
    add("safetensors.torch.load_file(device='cuda:0')", 1, "cold", st_load())

print("== warm (file primed into the page cache) ==")
prime(a.file)
for rep in range(a.reps):
    warpfs_rows("warm")
    add("safetensors.torch.load_file(device='cuda:0')", 1, "warm", st_load())

print("== verify (warm) ==")
v = warpfs_load("--verify")["verify"]
note({"what": "warpfs verify", **v})

base = rows["safetensors.torch.load_file(device='cuda:0')"]
med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731


def fmt(x):
    return "—" if x is None else f"{x:.2f}"


def ratio(x, b):
    return "—" if x is None or not b else f"{x / b:.2f}×"


bw, bc = med(base["warm"]), med(base["cold"])
date = datetime.date.today().isoformat()
cmd = "bench/compare-safetensors " + " ".join(sys.argv[1:])
head = rows["warpfs load (header + alloc + transfer)"]
goal_w = med(head["warm"]) / bw if bw else 0
goal_c = med(head["cold"]) / bc if bc else 0
lines = [
    "",
    f"### {date} · safetensors loading · H100 machine: {os.cpu_count()} cores, "
    f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB; {card}",
    "",
    f"- command: `{cmd}`",
    f"- commit: {a.commit}",
    f"- file: {a.tensors} bf16 tensors of {a.rows}×{a.cols} ({want_data / GIB:.2f} GiB of tensors), "
    f"torch {torch.__version__}, safetensors {safetensors.__version__}",
    f"- warm = median of {a.reps} after priming the page cache (min–max beside it); cold = median of "
    f"{a.cold_reps}, each after `sync; echo 3 > /proc/sys/vm/drop_caches`. GB/s = 10^9 tensor bytes/s. "
    "warpfs runs as a fresh process each time (`warpfs load FILE --json`): its figures leave out CUDA "
    "context and engine start-up (built once per process, reused by every load), as the Python side "
    "has its context from a warm-up load.",
    f"- verify (`warpfs load --verify`, per-tensor GPU checksum vs CPU): "
    f"{'OK' if v['ok'] else 'FAILED'}, {v['tensors_checked']} tensors",
    f"- goals (whole warpfs load vs safetensors): warm ≥ 5×: {goal_w:.2f}× "
    f"{'met' if goal_w >= 5 else 'NOT met'}; cold ≥ 1.0×: {goal_c:.2f}× {'met' if goal_c >= 1 else 'NOT met'}",
    "",
    "| reader | CPU threads | warm GB/s | warm min–max | warm ratio | cold GB/s | cold ratio |",
    "|---|---:|---:|---:|---:|---:|---:|",
]
for name, r in rows.items():
    w, c = med(r["warm"]), med(r["cold"])
    lines.append(
        f"| {name} | {r['threads']} | {fmt(w)} | "
        f"{(fmt(min(r['warm'])) + '–' + fmt(max(r['warm']))) if r['warm'] else '—'} | "
        f"{ratio(w, bw)} | {fmt(c)} | {ratio(c, bc)} |")
table = "\n".join(lines) + "\n"
print(table)
with open(a.results, "a") as f:
    f.write(table)
print(f"appended to {a.results}")
