"""CPU benchmark of the Mamba-1 (S6) selective scan (A of shape (channels, dstate)): forward +
backward time and peak memory, float32, batch 1, 512 channels (heads 512 x headdim 1) x 16
states.

Compares
(a) ``loop``: a sequential loop in the style of mamba_ssm's ``selective_scan_ref`` (written
    here): exp(dt A) and dt B x materialised for the whole sequence, then a Python for-loop over
    time with one state update and one per-step einsum with C, plain autograd. The per-step
    tensors are taken with ``unbind`` rather than ``[:, :, i]``: in PyTorch the backward of
    ``t[:, :, i]`` writes a zero tensor of t's full size for each step, which makes the loop's
    backward quadratic in length (measured here: 1,024 steps 34 s, 2,048 steps 102 s); unbind has
    a linear backward, so the baseline is the faster form of the same loop;
(b) ``ref``: genossm's own sequential definition (``genossm.ops.scan_ref``), which indexes per
    step, so its backward is quadratic in length;
(c) ``torch``: the chunked backend (``genossm.ops.scan_s6_chunked``).

The sequential loops are timed at shorter lengths (one run each) and scaled linearly to the
main length (the loop at 32,768 needs about 11 GiB; at 65,536 it would need about 21 GiB).
Their cost per step grows with length, so this understates them; the figures for ``loop`` and
``torch`` at the loop's own length are printed too.

Every case runs in a fresh subprocess. Peak memory = ``ru_maxrss`` (getrusage(RUSAGE_SELF), the
process's resident high-water mark) after the runs, minus the current RSS (/proc/self/statm)
just before the first run, i.e. after imports, input creation and the upstream gradient: it
counts the output, gradients and every intermediate of forward+backward.

    python benchmarks/scan_s6.py            # full: length 65,536, memory at 16k/64k/256k
    python benchmarks/scan_s6.py --quick    # smaller sizes, a few minutes

The subprocesses run with OMP_WAIT_POLICY=PASSIVE unless ``--omp-wait-policy inherit`` (see
benchmarks/scan.py: spinning idle OpenMP workers starve the calling thread on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import torch.nn.functional as F

from genossm.ops import scan_s6_chunked as s6
from genossm.ops.scan_ref import scan_ref
from genossm.ops.scan_s6_chunked import scan_s6_chunked
from scan_bench import best, cpu_pressure, omp_policy, spawn_case, time_fwd_bwd


def scan_loop(x, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
              chunk_size=None):
    """The S6 scan as mamba_ssm's ``selective_scan_ref`` computes it, in genossm's layout
    (channels as heads of headdim 1, one group of B and C)."""
    del chunk_size
    assert x.shape[3] == 1 and B.shape[2] == 1, "the loop baseline is Mamba-1's form"
    u, Bs, Cs = x[..., 0], B[:, :, 0], C[:, :, 0]  # (b, l, d), (b, l, n)
    delta_a = torch.exp(torch.einsum("bld,dn->bldn", dt, A))
    delta_b_u = torch.einsum("bld,bln,bld->bldn", dt, Bs, u)
    state = (u.new_zeros(u.shape[0], A.shape[0], A.shape[1]) if initial_state is None
             else initial_state[:, :, 0])
    ys = []
    for da, dbu, c in zip(delta_a.unbind(1), delta_b_u.unbind(1), Cs.unbind(1), strict=True):
        state = da * state + dbu
        ys.append(torch.einsum("bdn,bn->bd", state, c))
    y = torch.stack(ys, dim=1) if ys else torch.zeros_like(u)
    if D is not None:
        y = y + u * D
    return y[..., None], (state[:, :, None] if return_final_state else None)


IMPLS = {"loop": scan_loop, "ref": scan_ref, "torch": scan_s6_chunked}


def _inputs(length, channels, dstate, seed=0, dtype=torch.float32):
    """Mamba-1-like inputs: dt = softplus(N(-2, 1)), A = -(1..n) (S4D-real) times a
    channel-wise factor around 1."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x = rnd(1, length, channels, 1)
    dt = F.softplus(rnd(1, length, channels) - 2.0)
    A = -torch.arange(1, dstate + 1, dtype=dtype) * torch.exp(0.1 * rnd(channels, 1))
    B = rnd(1, length, 1, dstate)
    C = rnd(1, length, 1, dstate)
    D = rnd(channels)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


def run_case(args):
    """In this process: time forward+backward of one implementation; print a JSON line."""
    torch.set_num_threads(args.threads)
    fn = IMPLS[args.case]
    # warm-up on a small input first: the first call pays one-off library initialisation
    small = _inputs(67, args.channels, args.dstate)
    fn(*small)[0].sum().backward()
    del small
    ins = _inputs(args.length, args.channels, args.dstate)
    stats = time_fwd_bwd(fn, ins, args.reps)
    print(json.dumps({"case": args.case, "length": args.length, **stats}))


def check_agreement(channels, dstate):
    """Sanity check before timing: the three implementations agree at a small size (float64),
    outputs, final state and gradients."""
    ins = [t.detach().double().requires_grad_() for t in _inputs(300, channels, dstate, seed=3)]
    s0 = torch.randn(1, channels, 1, dstate, dtype=torch.float64)
    results = {}
    for name, fn in IMPLS.items():
        y, s = fn(*ins, initial_state=s0, return_final_state=True)
        grads = torch.autograd.grad((y * y).sum() + s.sum(), ins)
        results[name] = (y, s, *grads)
    for name in ("loop", "torch"):
        err = max((a - b).abs().max().item()
                  for a, b in zip(results[name], results["ref"], strict=True))
        if not err < 1e-9:
            raise SystemExit(f"{name} disagrees with ref: max abs error {err:.3g}")


def spawn(args, case, length, reps):
    case_args = ["--case", case, "--length", str(length), "--reps", str(reps),
                 "--threads", str(args.threads), "--channels", str(args.channels),
                 "--dstate", str(args.dstate)]
    res = spawn_case(__file__, case_args, args.omp_wait_policy)
    print(f"  {case:6s} L={length:>7,d} fwd+bwd min {res['min_s']:8.3f} s  "
          f"median {res['median_s']:8.3f} s  peak {res['peak_mib']:9.1f} MiB", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (length 8,192)")
    ap.add_argument("--length", type=int, default=None, help="main length (default 65,536)")
    ap.add_argument("--loop-length", type=int, default=None,
                    help="length at which the loop is timed, then scaled linearly")
    ap.add_argument("--ref-length", type=int, default=None,
                    help="length at which scan_ref is timed, then scaled linearly")
    ap.add_argument("--mem-lengths", default=None, help="comma-separated lengths for memory")
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="timed runs per torch subprocess")
    ap.add_argument("--rounds", type=int, default=2, help="torch subprocesses (min over all)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE",
                                                                     "inherit"])
    ap.add_argument("--case", choices=sorted(IMPLS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        return run_case(args)

    length = args.length or (8192 if args.quick else 65536)
    loop_length = args.loop_length or (2048 if args.quick else 32768)
    ref_length = args.ref_length or (256 if args.quick else 1024)
    mem_lengths = ([int(v) for v in args.mem_lengths.split(",")] if args.mem_lengths
                   else [2048, 8192, 32768] if args.quick else [16384, 65536, 262144])
    if loop_length not in mem_lengths:
        mem_lengths = sorted({*mem_lengths, loop_length})
    check_agreement(args.channels, args.dstate)
    per_step = args.channels * args.dstate
    Q, K = s6._shape(256, per_step)
    print(f"Mamba-1 (S6) scan, CPU forward+backward, float32, batch 1, {args.channels} channels "
          f"(heads x headdim 1) x {args.dstate} states, {args.threads} threads")
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    print(f"torch backend layout: chunks of {Q} steps, {K} chunks per block")
    print(f"OMP_WAIT_POLICY={omp_policy(args) or '(unset)'} in the subprocesses")
    print("peak = ru_maxrss after the runs minus RSS after imports+inputs (fresh subprocess)")
    print(f"CPU pressure at start (other work on this machine): {cpu_pressure()}")
    print("runs:")
    ref = spawn(args, "ref", ref_length, 1)
    loop = spawn(args, "loop", loop_length, 1)
    tor = None
    for _ in range(args.rounds):
        tor = best(tor, spawn(args, "torch", length, args.reps))
    mem = {n: tor if n == length else spawn(args, "torch", n, 2 if n == loop_length else 1)
           for n in mem_lengths}
    print()
    print(f"length {length:,}: loop timed at {loop_length:,} and ref at {ref_length:,} (one "
          f"run each), scaled linearly in time and memory; torch: min of {args.rounds} x "
          f"{args.reps} runs, peak: max over its subprocesses")
    print("| impl  | timed at | fwd+bwd s | peak MiB | time / torch | memory / torch |")
    print("|-------|----------|-----------|----------|--------------|----------------|")
    rows = []
    for name, res, n in (("ref", ref, ref_length), ("loop", loop, loop_length),
                         ("torch", tor, length)):
        scale = length / n
        rows.append((name, n, res["min_s"] * scale, res["peak_mib"] * scale))
    for name, n, t, m in rows:
        print(f"| {name:5s} | {n:8,d} | {t:9.3f} | {m:8.1f} | {t / tor['min_s']:12.1f} | "
              f"{m / tor['peak_mib']:14.2f} |")
    same = mem[loop_length]
    print()
    print(f"ratios: loop/torch time {rows[1][2] / tor['min_s']:.1f} (goal >= 20), "
          f"ref/torch time {rows[0][2] / tor['min_s']:.1f}; at the loop's own length "
          f"{loop_length:,}: loop {loop['min_s']:.2f} s, torch {same['min_s']:.3f} s, "
          f"ratio {loop['min_s'] / same['min_s']:.1f}")
    print(f"CPU pressure at end: {cpu_pressure()}")
    print()
    print("torch backend peak memory vs length (linear growth expected):")
    print("| length  | fwd+bwd s | peak MiB | marginal MiB per 1k steps |")
    print("|---------|-----------|----------|---------------------------|")
    prev = None
    for n in sorted(mem):
        r = mem[n]
        marginal = ("-" if prev is None else
                    f"{(r['peak_mib'] - prev[1]) / (n - prev[0]) * 1000:.3f}")
        print(f"| {n:7,d} | {r['min_s']:9.3f} | {r['peak_mib']:8.1f} | {marginal:>25s} |")
        prev = (n, r["peak_mib"])


if __name__ == "__main__":
    main()
