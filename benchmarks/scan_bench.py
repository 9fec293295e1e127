"""Measuring code shared by the CPU scan benchmarks (benchmarks/scan.py, benchmarks/scan_s6.py):
forward+backward timing with peak memory in this process, and one subprocess per case.

Peak memory = ``ru_maxrss`` (getrusage(RUSAGE_SELF), the process's resident high-water mark)
after the runs, minus the current RSS (/proc/self/statm) just before the first run.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_fwd_bwd(fn, ins, reps):
    """Time ``reps`` runs of ``fn(*ins)`` forward + backward (a fixed random upstream gradient);
    return min_s, median_s and peak_mib (the peak above the RSS before the first run)."""
    gy = torch.randn(ins[0].shape, generator=torch.Generator().manual_seed(1))
    gc.collect()
    base = _rss_bytes()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        y, _ = fn(*ins)
        y.backward(gy)
        times.append(time.perf_counter() - t0)
        del y
        for t in ins:
            t.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"min_s": min(times), "median_s": sorted(times)[len(times) // 2],
            "peak_mib": max(0, peak - base) / 2**20}


def spawn_case(script, case_args, omp_wait_policy):
    """Run ``script`` with ``case_args`` in a fresh Python process (OMP_WAIT_POLICY set unless
    ``omp_wait_policy`` is "inherit"); return the JSON object on its last stdout line."""
    cmd = [sys.executable, os.path.abspath(script), *case_args]
    env = dict(os.environ)
    if omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def best(old, new):
    """Merge two results of one case: the fastest time and the largest peak."""
    if old is None:
        return new
    return {**new, "min_s": min(old["min_s"], new["min_s"]),
            "peak_mib": max(old["peak_mib"], new["peak_mib"])}


def cpu_pressure():
    """The kernel's CPU pressure line (share of time runnable tasks waited for a CPU), if any."""
    try:
        with open("/proc/pressure/cpu") as f:
            return f.readline().strip()
    except OSError:
        return "n/a"


def omp_policy(args):
    """The OMP_WAIT_POLICY the subprocesses run with (None: unset)."""
    if args.omp_wait_policy == "inherit":
        return os.environ.get("OMP_WAIT_POLICY")
    return args.omp_wait_policy
