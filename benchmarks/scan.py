"""CPU benchmark of the selective scan: forward+backward time and peak memory.

Compares (a) the ``ref`` sequential loop, (b) a straightforward chunked-einsum implementation in
the style of mamba_ssm's ``ssd_minimal`` (written here: all chunk states at once, the full
(b, h, chunks, Q, Q) decay tensor, a (chunks x chunks) inter-chunk decay, B/C repeated over
heads, plain autograd), and (c) the ``torch`` backend (``genossm.ops.scan_chunked``).

Every case runs in a fresh subprocess. Peak memory = ``ru_maxrss`` (getrusage(RUSAGE_SELF), the
process's resident high-water mark) after the runs, minus the current RSS (/proc/self/statm)
just before the first run, i.e. after imports, input creation and the upstream gradient: it
counts the output, gradients and every intermediate of forward+backward.

    python benchmarks/scan.py            # full: length 65,536, memory at 16k/64k/256k
    python benchmarks/scan.py --quick    # smaller sizes, a minute or so

The subprocesses run with OMP_WAIT_POLICY=PASSIVE unless ``--omp-wait-policy inherit``: by
default libgomp's idle workers spin after every parallel region, and on a machine shared with
other work that starves the calling thread; the torch backend, made of many medium-sized ops,
was measured up to ~25x slower that way (the einsum baseline, made of few huge ops, ~2x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import torch.nn.functional as F

from genossm.ops.scan_chunked import CPU_CHUNK, scan_chunked
from genossm.ops.scan_ref import scan_ref
from scan_bench import best, cpu_pressure, omp_policy, spawn_case, time_fwd_bwd


def _segsum(a):
    """a (..., T) -> (..., T, T): sum_{s<k<=t} a_k below the diagonal, -inf above."""
    T = a.shape[-1]
    cs = a.cumsum(-1)
    seg = cs[..., :, None] - cs[..., None, :]
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return seg.masked_fill(~keep, float("-inf"))


def scan_einsum(x, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
                chunk_size=256):
    """The same scan, computed the straightforward chunked way with einsums and autograd."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    B = B.repeat_interleave(h // g, dim=2)
    C = C.repeat_interleave(h // g, dim=2)
    pad = (-length) % chunk_size
    xp, dtp, Bp, Cp = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = (length + pad) // chunk_size
    X = (xp * dtp[..., None]).view(b, c, chunk_size, h, p)
    a = (dtp * A).view(b, c, chunk_size, h).permute(0, 3, 1, 2)  # (b, h, c, Q)
    a_cum = a.cumsum(-1)
    Bc = Bp.view(b, c, chunk_size, h, n)
    Cc = Cp.view(b, c, chunk_size, h, n)
    decay = torch.exp(_segsum(a))  # (b, h, c, Q, Q)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, decay, X)
    to_end = torch.exp(a_cum[..., -1:] - a_cum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, X)
    init = (x.new_zeros(b, 1, h, p, n) if initial_state is None else initial_state[:, None])
    states = torch.cat([init, states], dim=1)
    chunk_decay = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states[:, :-1], torch.exp(a_cum))
    y = (y_diag + y_off).reshape(b, c * chunk_size, h, p)[:, :length]
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    return y, (states[:, -1] if return_final_state else None)


IMPLS = {"ref": scan_ref, "einsum": scan_einsum, "torch": scan_chunked}


def _inputs(length, heads, headdim, groups, dstate, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x = rnd(1, length, heads, headdim)
    dt = F.softplus(rnd(1, length, heads) - 2.0)
    A = -torch.exp(rnd(heads) * 0.5)
    B = rnd(1, length, groups, dstate)
    C = rnd(1, length, groups, dstate)
    D = rnd(heads)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


def run_case(args):
    """In this process: time forward+backward of one implementation; print a JSON line."""
    torch.set_num_threads(args.threads)
    fn = IMPLS[args.case]
    # warm-up on a small input first: the first call pays one-off library initialisation
    # (seconds, and tens of MiB) that belongs to neither the timing nor the peak
    small = _inputs(2 * args.chunk + 3, args.heads, args.headdim, args.groups, args.dstate)
    fn(*small, chunk_size=args.chunk)[0].sum().backward()
    del small
    ins = _inputs(args.length, args.heads, args.headdim, args.groups, args.dstate)
    stats = time_fwd_bwd(lambda *a: fn(*a, chunk_size=args.chunk), ins, args.reps)
    print(json.dumps({"case": args.case, "length": args.length, "chunk": args.chunk, **stats}))


def check_agreement(heads, headdim, groups, dstate):
    """Sanity check before timing: the three implementations agree at a small size (float64)."""
    ins = [t.detach().double() for t in _inputs(300, heads, headdim, groups, dstate, seed=3)]
    s0 = torch.randn(1, heads, headdim, dstate, dtype=torch.float64)
    ref, ref_s = scan_ref(*ins, initial_state=s0, return_final_state=True)
    for name in ("einsum", "torch"):
        y, s = IMPLS[name](*ins, initial_state=s0, return_final_state=True, chunk_size=64)
        err = max((y - ref).abs().max().item(), (s - ref_s).abs().max().item())
        if not err < 1e-8:
            raise SystemExit(f"{name} disagrees with ref: max abs error {err:.3g}")


def spawn(args, case, length, chunk, reps):
    case_args = ["--case", case, "--length", str(length), "--chunk", str(chunk),
                 "--reps", str(reps), "--threads", str(args.threads), "--heads", str(args.heads),
                 "--headdim", str(args.headdim), "--groups", str(args.groups),
                 "--dstate", str(args.dstate)]
    res = spawn_case(__file__, case_args, args.omp_wait_policy)
    print(f"  {case:7s} L={length:>7,d} chunk={chunk:<4d} fwd+bwd min {res['min_s']:8.3f} s  "
          f"median {res['median_s']:8.3f} s  peak {res['peak_mib']:9.1f} MiB", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (length 8,192)")
    ap.add_argument("--length", type=int, default=None, help="main length (default 65,536)")
    ap.add_argument("--ref-length", type=int, default=None,
                    help="length at which the ref loop is timed, then scaled linearly")
    ap.add_argument("--mem-lengths", default=None, help="comma-separated lengths for memory")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--headdim", type=int, default=32)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--dstate", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256, help="chunk size passed to both")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per subprocess")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating einsum/torch subprocesses (min over all runs)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE",
                                                                     "inherit"])
    ap.add_argument("--case", choices=sorted(IMPLS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        return run_case(args)

    length = args.length or (8192 if args.quick else 65536)
    ref_length = args.ref_length or (1024 if args.quick else 4096)
    mem_lengths = ([int(v) for v in args.mem_lengths.split(",")] if args.mem_lengths
                   else [8192, 32768, 131072] if args.quick else [16384, 65536, 262144])
    check_agreement(args.heads, args.headdim, args.groups, args.dstate)
    print(f"selective scan, CPU forward+backward, float32, batch 1, heads {args.heads} x "
          f"headdim {args.headdim}, groups {args.groups}, dstate {args.dstate}, "
          f"{args.threads} threads")
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    print(f"OMP_WAIT_POLICY={omp_policy(args) or '(unset)'} in the subprocesses (PASSIVE: idle "
          "OpenMP workers sleep instead of spinning)")
    print("peak = ru_maxrss after the runs minus RSS after imports+inputs (fresh subprocess)")
    print(f"CPU pressure at start (other work on this machine): {cpu_pressure()}")
    print("runs:")
    ref = spawn(args, "ref", ref_length, args.chunk, 1)
    # the torch backend takes the chunk size as a hint and runs at min(chunk, CPU_CHUNK) on
    # CPU; the einsum baseline also runs at that chunk size, for a like-for-like row
    eff_chunk = min(args.chunk, CPU_CHUNK)
    ein = ein_eff = tor = None
    for _ in range(args.rounds):  # alternate, so that load from other work hits all alike
        ein = best(ein, spawn(args, "einsum", length, args.chunk, args.reps))
        if eff_chunk != args.chunk:
            ein_eff = best(ein_eff, spawn(args, "einsum", length, eff_chunk, args.reps))
        tor = best(tor, spawn(args, "torch", length, args.chunk, args.reps))
    mem = [tor if n == length else spawn(args, "torch", n, args.chunk, 1) for n in mem_lengths]
    scale = length / ref_length
    ref_t, ref_m = ref["min_s"] * scale, ref["peak_mib"] * scale
    print()
    print(f"length {length:,} (ref timed at {ref_length:,}, one run, scaled x{scale:g} "
          f"linearly in time and memory; einsum/torch: min of {args.rounds} x {args.reps} "
          f"runs, peak: max over its subprocesses)")
    print("| impl   | chunk     | fwd+bwd s | peak MiB | time / torch | memory / torch |")
    print("|--------|-----------|-----------|----------|--------------|----------------|")
    rows = [("ref", "-", ref_t, ref_m), ("einsum", str(args.chunk), ein["min_s"],
                                          ein["peak_mib"])]
    if ein_eff is not None:
        rows.append(("einsum", str(eff_chunk), ein_eff["min_s"], ein_eff["peak_mib"]))
    rows.append(("torch", f"{args.chunk}->{eff_chunk}" if eff_chunk != args.chunk
                 else str(eff_chunk), tor["min_s"], tor["peak_mib"]))
    for name, chunk, t, m in rows:
        print(f"| {name:6s} | {chunk:9s} | {t:9.3f} | {m:8.1f} | "
              f"{t / tor['min_s']:12.1f} | {m / tor['peak_mib']:14.2f} |")
    print()
    print(f"ratios: ref/torch time {ref_t / tor['min_s']:.1f} (goal >= 20), "
          f"einsum/torch time {ein['min_s'] / tor['min_s']:.2f} (goal >= 1.5), "
          f"einsum/torch memory {ein['peak_mib'] / tor['peak_mib']:.2f} (goal > 1)")
    if ein_eff is not None:
        print(f"        at equal chunk {eff_chunk}: einsum/torch time "
              f"{ein_eff['min_s'] / tor['min_s']:.2f}, memory "
              f"{ein_eff['peak_mib'] / tor['peak_mib']:.2f}")
    print(f"CPU pressure at end: {cpu_pressure()}")
    print()
    print("torch backend peak memory vs length (linear growth expected):")
    print("(a constant per-block working set plus a per-step part: linear means a constant")
    print(" marginal cost per step between successive lengths)")
    print("| length  | peak MiB | marginal MiB per 1k steps |")
    print("|---------|----------|---------------------------|")
    prev = None
    for n, r in zip(mem_lengths, mem, strict=True):
        marginal = ("-" if prev is None else
                    f"{(r['peak_mib'] - prev[1]) / (n - prev[0]) * 1000:.3f}")
        print(f"| {n:7,d} | {r['peak_mib']:8.1f} | {marginal:>25s} |")
        prev = (n, r["peak_mib"])


if __name__ == "__main__":
    main()
