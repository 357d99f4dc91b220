#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from the JSON lines of bench/compare.sh: each phase of each run
with Tessera's and Orthanc's figures side by side, their ratios, and the issue's targets checked."""
import argparse
import re
import datetime
import glob
import json
import os
import platform
import subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--results", required=True)
ap.add_argument("--command", required=True)
ap.add_argument("--migration", default="")
ap.add_argument("--qido-1m", default="", help="what bench/qido.sh 1000000 printed")
a = ap.parse_args()


def load(server):
    """{(run, phase): record} of one server's runs."""
    out = {}
    for path in sorted(glob.glob(os.path.join(a.results, f"{server}.*.jsonl"))):
        run = os.path.basename(path)[len(server) + 1:].removesuffix(".jsonl")
        for line in open(path):
            rec = json.loads(line)
            if "lat_ms" in rec:
                out[(run, rec["phase"])] = rec
    return out


T, O = load("tessera"), load("orthanc")
keys = list(T) + [k for k in O if k not in T]


def f(x, nd=1):
    return "" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def ratio(x, y):
    return f"{x / y:.2f}" if x and y else ""


def rss_mb(rec):
    kb = rec.get("server_vmhwm_kb") if rec else None
    return round(kb / 1024) if kb else None


lines = []
w = lines.append
w("# Benchmarks: Tessera and Orthanc side by side")
w("")
cpu = ""
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    pass
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
w(f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit}")
w(f"- Machine: {os.cpu_count()} cores ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, {platform.system()} {platform.release()}")
w(f"- Command: `{a.command}`")
w("- Servers: Tessera release build on its embedded defaults (SQLite, local files), fresh data per run;"
  " Orthanc 1.10.1 + DICOMweb 1.7 from Debian's packages (`../shared/peer`), fresh storage per run.")
w("- Client: `../shared/bench/dicomweb_bench.py` (same data, same client, both servers one after the other)."
  " Datasets from `../shared/bench/gen_dataset.py`: small = ~132 KB CT/MR instances, large = 4 × ~105 MB.")
w("- T/O = Tessera ÷ Orthanc. CPU = server CPU ms per object (the figure the machine's noise affects least).")
w("")
w("| run | phase | T obj/s | O obj/s | T/O | T MB/s | O MB/s | T p50 ms | O p50 ms | T p99 ms | O p99 ms | CPU ms/obj T / O | T/O CPU | errors T / O | peak RSS MB T / O |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for key in keys:
    t, o = T.get(key), O.get(key)
    run, phase = key
    g = lambda r, k: r.get(k) if r else None
    lat = lambda r, p: r["lat_ms"][p] if r else None
    w(f"| {run} | {phase} | {f(g(t, 'objects_per_s'))} | {f(g(o, 'objects_per_s'))} | "
      f"{ratio(g(t, 'objects_per_s'), g(o, 'objects_per_s'))} | {f(g(t, 'mb_per_s'))} | {f(g(o, 'mb_per_s'))} | "
      f"{f(lat(t, 'p50'))} | {f(lat(o, 'p50'))} | {f(lat(t, 'p99'))} | {f(lat(o, 'p99'))} | "
      f"{f(g(t, 'server_cpu_ms_per_object'), 2)} / {f(g(o, 'server_cpu_ms_per_object'), 2)} | "
      f"{ratio(g(t, 'server_cpu_ms_per_object'), g(o, 'server_cpu_ms_per_object'))} | "
      f"{f(g(t, 'errors'))} / {f(g(o, 'errors'))} | {f(rss_mb(t))} / {f(rss_mb(o))} |")

# The targets, checked on these figures.
w("")
w("## Targets")
w("")
checks = []


def check(name, ok, detail):
    checks.append((name, ok, detail))


for key in keys:
    t, o = T.get(key), O.get(key)
    if not (t and o):
        continue
    run, phase = key
    if run.startswith("small") and not phase.startswith("qido"):
        tp, op = t["objects_per_s"], o["objects_per_s"]
        check(f"{run} {phase}: throughput ≥ Orthanc's", bool(tp and op and tp >= op), f"{f(tp)} vs {f(op)} obj/s")
        tc, oc = t.get("server_cpu_ms_per_object"), o.get("server_cpu_ms_per_object")
        if tc is not None and oc is not None:
            check(f"{run} {phase}: CPU/obj ≤ ½ Orthanc's", tc <= oc / 2, f"{tc:.2f} vs {oc:.2f} ms")
    if phase.startswith("qido") and o.get("errors"):
        # Orthanc failed some of these queries (it has no fuzzy matching): its latency is that
        # of its failures, so there is no speed to compare; the errors are listed below.
        pass
    elif phase.startswith("qido"):
        tp, op = t["lat_ms"]["p50"], o["lat_ms"]["p50"]
        check(f"{run} {phase}: ≥ 5× faster (p50)", bool(tp and op and op >= 5 * tp), f"{f(tp)} vs {f(op)} ms")
    if run == "small-single-c1" and phase in ("wado_instance", "wado_metadata_instance"):
        tp, op = t["lat_ms"]["p50"], o["lat_ms"]["p50"]
        check(f"{run} {phase}: p50 ≤ ⅓ Orthanc's", tp <= op / 3, f"{f(tp)} vs {f(op)} ms")
    if run == "small-single-c8" and phase == "stow_single":
        tp, op = t["lat_ms"]["p99"], o["lat_ms"]["p99"]
        check("STOW c=8: p99 ≤ Orthanc's", tp <= op, f"{f(tp)} vs {f(op)} ms")
    if run.startswith("large"):
        tp, op = t["mb_per_s"], o["mb_per_s"]
        check(f"{run} {phase}: MB/s ≥ Orthanc's", bool(tp and op and tp >= op), f"{f(tp)} vs {f(op)} MB/s")
        hwm = rss_mb(t)
        if hwm is not None:
            check(f"{run} {phase}: Tessera peak RSS < 200 MB", hwm < 200, f"{hwm} MB")
    if t.get("errors") or o.get("errors"):
        check(f"{run} {phase}: no errors", not t.get("errors"), f"T {t.get('errors')} / O {o.get('errors')}")
for c in (1, 8):
    single, batch = T.get((f"small-single-c{c}", "stow_single")), T.get((f"small-batch20-c{c}", "stow_batch"))
    if single and batch:
        check(f"STOW c={c}: batched faster per object than single", batch["objects_per_s"] > single["objects_per_s"],
              f"{f(batch['objects_per_s'])} vs {f(single['objects_per_s'])} obj/s")

migration = {}
for line in a.migration.splitlines():
    parts = line.split()
    if "files/s" in line:
        name = " ".join(parts[:2]) if parts[0] == "cp" else parts[0]
        migration[name] = float(line.split(" files/s")[0].rsplit(None, 1)[-1])
if "cp -r" in migration and "copy" in migration:
    check("migration copy: ≥ ½ the files/s of cp -r", migration["copy"] >= migration["cp -r"] / 2,
          f"{migration['copy']:.0f} vs {migration['cp -r']:.0f} files/s")

# bench/qido.sh lines: "<kind> [(limit 100)]  p50  0.23 ms  p95  2.20 ms  (2 results)".
qido_1m = re.findall(r"^(.+?)\s+p50\s+([\d.]+) ms\s+p95\s+([\d.]+) ms", a.qido_1m, re.M)
for kind, p50, _ in qido_1m:
    kind = kind.strip()
    bound = 2.0 if kind.startswith("studies by") and kind.split()[2] in ("PatientID", "StudyInstanceUID", "AccessionNumber") else 10.0
    check(f"QIDO at 1,000,000 instances, {kind}: p50 < {bound:g} ms", float(p50) < bound, f"{p50} ms")

w(f"{sum(ok for _, ok, _ in checks)} of {len(checks)} met.")
w("")
w("| target | met | figures |")
w("|---|---|---|")
for name, ok, detail in checks:
    w(f"| {name} | {'yes' if ok else '**no**'} | {detail} |")

for title, output in (
    ("Migration on the filesystem store (20,000 instances of 16 KiB)", a.migration),
    ("QIDO on an index of 1,000,000 instances (embedded SQLite, `bash bench/qido.sh 1000000`)", a.qido_1m),
):
    if output:
        w("")
        w(f"## {title}")
        w("")
        w("```")
        w(output.strip())
        w("```")
print("\n".join(lines))
