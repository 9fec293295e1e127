"""GPU benchmark of the selective scan: the ``triton`` backend against the chunked ``torch``
backend, forward and forward+backward, on CUDA.

For each dtype and length it prints the time of each backend, the speed ratio (torch time /
triton time: above 1 means triton is faster), the achieved bandwidth of the triton backend
(the bytes a fused scan must at least move: read x, dt, B, C and write y forward; read those
and dy, write dx, ddt, dB, dC backward) as a fraction of the measured device copy bandwidth,
the peak GPU memory of each (torch.cuda.max_memory_allocated above the inputs), and the largest
difference between the two backends' y and gradients (relative to the largest magnitude).

    python benchmarks/scan_gpu.py                         # lengths 2^16..2^20, bf16 and fp32
    python benchmarks/scan_gpu.py --log2-lengths 16 18 --dtypes bf16
    GENOSSM_TRITON_FP32_DOT=tf32 python benchmarks/scan_gpu.py --dtypes fp32
    python benchmarks/scan_gpu.py --cpu-interpret-smoke   # tiny sizes on CPU, Triton interpreter
    python benchmarks/scan_gpu.py --compile-check         # compile for sm_90, no GPU needed

``--s6`` benchmarks the Mamba-1 (S6) scan instead (A of shape (heads, dstate); triton backend):
forward and forward+backward at L = 2^17 and 2^20 with 512 channels (heads 512, headdim 1) x
16 states, batch 1, as tokens/s. Its "max rel diff" compares the run (the length cut into
segments run in parallel, as the launcher chooses) with one pass over the whole length
(GENOSSM_S6_SEGMENT=0, timed too); where mamba_ssm is installed its CUDA selective_scan_fn is
timed on the same inputs and compared as well.

    python benchmarks/scan_gpu.py --s6                    # bf16 and fp32 x, L = 2^17, 2^20
    python benchmarks/scan_gpu.py --s6 --s6-log2-lengths 17 --dtypes bf16
    GENOSSM_S6_SEGMENT=4096 python benchmarks/scan_gpu.py --s6   # fix the segment length
    python benchmarks/scan_gpu.py --s6 --cpu-interpret-smoke

Without a CUDA device it exits with a message (except for --cpu-interpret-smoke, which only
checks the code paths: its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2-lengths", type=int, nargs="+", default=[16, 17, 18, 19, 20],
                    help="sequence lengths as powers of two (default 16..20)")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--dstate", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (the minimum counts)")
    ap.add_argument("--backends", nargs="+", choices=["triton", "torch"],
                    default=["triton", "torch"])
    ap.add_argument("--cpu-interpret-smoke", action="store_true",
                    help="run every code path at tiny sizes on CPU under TRITON_INTERPRET=1")
    ap.add_argument("--compile-check", action="store_true",
                    help="no GPU needed: compile every kernel for --arch with the launch "
                         "settings the sizes above get, and print registers and spills")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability for "
                    "--compile-check (default 90: H100)")
    ap.add_argument("--kernels", nargs="+", choices=["ssd", "s6"], default=["ssd", "s6"],
                    help="--compile-check: the kernel families to compile (default both; the "
                         "S6 ones at the --s6 sizes)")
    ap.add_argument("--s6", action="store_true",
                    help="benchmark the Mamba-1 (S6) scan (triton backend) instead")
    ap.add_argument("--s6-log2-lengths", type=int, nargs="+", default=[17, 20],
                    help="--s6: sequence lengths as powers of two (default 17 20)")
    ap.add_argument("--s6-channels", type=int, default=512,
                    help="--s6: channels (heads of headdim 1; default 512)")
    ap.add_argument("--s6-dstate", type=int, default=16, help="--s6: states (default 16)")
    return ap.parse_args(argv)


class _Clock:
    """Wall-clock timing that waits for the device; peak-memory bookkeeping on CUDA only."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self):
        if not self.cuda:
            return 0
        self.sync()
        self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated()

    def peak_since(self, base):
        if not self.cuda:
            return float("nan")
        self.sync()
        return self.torch.cuda.max_memory_allocated() - base

    def best(self, fn, reps):
        fn()  # warm-up: compilation, autotuning, allocator
        times = []
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return min(times)


def copy_bandwidth(torch, device, clock, nbytes):
    """Bytes/s of a large device-to-device tensor copy (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = clock.best(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * 4 / t


def make_inputs(torch, device, dtype, a):
    """Scan inputs shaped as in a Mamba-2 block (dt already through softplus-range values)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    b, length, h, p, g, n = a.batch, a.length, a.heads, a.headdim, a.groups, a.dstate

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dt)

    return {
        "x": rnd(b, length, h, p),
        "dt": rnd(b, length, h, dt=torch.float32),
        "A": -torch.rand(h, generator=gen).add(0.5).to(device),
        "B": rnd(b, length, g, n, scale=0.3),
        "C": rnd(b, length, g, n, scale=0.3),
        "D": rnd(h, dt=torch.float32),
        "dt_bias": rnd(h, scale=0.5, dt=torch.float32),
    }


def min_bytes(inp, fwd_only):
    """Bytes a fused scan must move at least: inputs read, outputs written (backward: again,
    plus dy read and dx, ddt, dB, dC written)."""
    size = {k: v.numel() * v.element_size() for k, v in inp.items()}
    fwd = size["x"] + size["dt"] + size["B"] + size["C"] + size["x"]
    if fwd_only:
        return fwd
    bwd = 2 * size["x"] + size["dt"] + size["B"] + size["C"] + size["x"] + size["dt"] \
        + size["B"] + size["C"]
    return fwd + bwd


def bench_case(torch, selective_scan, clock, inp, backend, chunk, reps):
    """(forward s, forward+backward s, peak bytes) for one backend, or None on OOM."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
    gen = torch.Generator(device="cpu").manual_seed(1)  # the same dy for every backend
    dy = torch.randn(inp["x"].shape, generator=gen).to(inp["x"])

    def fwd():
        with torch.no_grad():
            return selective_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"],
                                  leaves["C"], leaves["D"], dt_bias=leaves["dt_bias"],
                                  dt_softplus=True, chunk_size=chunk, backend=backend)

    last = {}

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        y = selective_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"],
                           leaves["D"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                           chunk_size=chunk, backend=backend)
        y.backward(dy)
        last["y"] = y.detach()

    try:
        t_f = clock.best(fwd, reps)
        base = clock.reset_peak()
        t_fb = clock.best(fwd_bwd, reps)
        peak = clock.peak_since(base)
    except torch.cuda.OutOfMemoryError:
        return None
    outputs = {"y": last.pop("y"), **{f"d{k}": v.grad for k, v in leaves.items()}}
    return t_f, t_fb, peak, outputs


def max_rel_diff(a, b):
    """Largest |a - b| over the largest |b|, across y and every gradient."""
    worst = 0.0
    for k in a:
        ref = b[k].float()
        worst = max(worst, ((a[k].float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                    .item())
    return worst


def make_s6_inputs(torch, device, dtype, batch, length, channels, dstate):
    """Mamba-1 scan inputs: x (b, l, channels, 1), A = -(1 .. dstate) per channel (Mamba-1's
    initialization), dt_bias so that softplus(dt_bias) is log-uniform in [1e-3, 0.1], raw dt
    around 0, one group of B and C."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dt)

    dt0 = torch.exp(torch.rand(channels, generator=gen, device=device)
                    * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "x": rnd(batch, length, channels, 1),
        "dt": rnd(batch, length, channels, scale=0.5, dt=torch.float32),
        "A": -torch.arange(1, dstate + 1, device=device, dtype=torch.float32).repeat(channels, 1),
        "B": rnd(batch, length, 1, dstate, scale=0.5),
        "C": rnd(batch, length, 1, dstate, scale=0.5),
        "D": rnd(channels, dt=torch.float32),
        "dt_bias": dt0 + torch.log(-torch.expm1(-dt0)),  # softplus^-1(dt0)
    }


def bench_mamba_ssm(torch, clock, inp, reps):
    """(fwd s, fwd+bwd s, outputs in genossm's layout) of mamba_ssm's CUDA selective_scan_fn on
    the same inputs (dt in x's dtype, as it requires), or a string saying why not."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return "not installed"
    try:
        x = inp["x"]
        conv = {  # mamba_ssm layout: u, delta (b, d, l); B, C (b, g, n, l)
            "x": x[..., 0].transpose(1, 2), "dt": inp["dt"].to(x.dtype).transpose(1, 2),
            "A": inp["A"], "B": inp["B"].permute(0, 2, 3, 1), "C": inp["C"].permute(0, 2, 3, 1),
            "D": inp["D"], "dt_bias": inp["dt_bias"]}
        leaves = {k: v.detach().contiguous().requires_grad_() for k, v in conv.items()}
        gen = torch.Generator(device="cpu").manual_seed(1)  # the dy of bench_case
        dy = torch.randn(x.shape, generator=gen).to(x)[..., 0].transpose(1, 2).contiguous()

        def call():
            return selective_scan_fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"],
                                     leaves["C"], leaves["D"], z=None,
                                     delta_bias=leaves["dt_bias"], delta_softplus=True)

        def fwd():
            with torch.no_grad():
                call()

        last = {}

        def fwd_bwd():
            for v in leaves.values():
                v.grad = None
            y = call()
            y.backward(dy)
            last["y"] = y.detach()

        t_f = clock.best(fwd, reps)
        t_fb = clock.best(fwd_bwd, reps)
        g = {k: v.grad for k, v in leaves.items()}
        outputs = {"y": last["y"].transpose(1, 2)[..., None],
                   "dx": g["x"].transpose(1, 2)[..., None], "ddt": g["dt"].transpose(1, 2),
                   "dA": g["A"],
                   "dB": g["B"].permute(0, 3, 1, 2), "dC": g["C"].permute(0, 3, 1, 2),
                   "dD": g["D"], "ddt_bias": g["dt_bias"]}
        return t_f, t_fb, outputs
    except Exception as e:  # a benchmark column, not a failure of the run
        return f"error: {type(e).__name__}: {e}"[:80]


@contextlib.contextmanager
def _segment_env(value):
    """GENOSSM_S6_SEGMENT set to ``value`` (None: left as it is) inside the block."""
    old = os.environ.get("GENOSSM_S6_SEGMENT")
    if value is not None:
        os.environ["GENOSSM_S6_SEGMENT"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GENOSSM_S6_SEGMENT", None)
        else:
            os.environ["GENOSSM_S6_SEGMENT"] = old


def bench_s6(args, torch, selective_scan, clock, device):
    """The Mamba-1 (S6) table: the triton backend forward and forward+backward, tokens/s, peak
    memory; the same with one segment (GENOSSM_S6_SEGMENT=0) and mamba_ssm (when installed),
    each with the largest difference of y and every gradient from the triton run (relative to
    the largest magnitude). --cpu-interpret-smoke forces segments of 32 steps."""
    from genossm.ops import scan_s6_triton

    k = scan_s6_triton.checkpoint_len(args.chunk)
    main_seg = "32" if args.cpu_interpret_smoke and "GENOSSM_S6_SEGMENT" not in os.environ \
        else None
    print(f"Mamba-1 (S6): batch {args.batch}, {args.s6_channels} channels (headdim 1) x "
          f"{args.s6_dstate} states, checkpoint every {k}; min of {args.reps} runs")
    print("| dtype | length | segments | fwd ms | fwd+bwd ms | fwd+bwd Mtok/s | peak MiB "
          "| 1 segment fwd+bwd ms | diff vs 1 segment | mamba_ssm fwd+bwd ms "
          "| diff vs mamba_ssm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dname in args.dtypes:
        dtype = getattr(torch, DTYPES[dname])
        for lg in args.s6_log2_lengths:
            length = 1 << lg
            inp = make_s6_inputs(torch, device, dtype, args.batch, length, args.s6_channels,
                                 args.s6_dstate)
            with _segment_env(main_seg):
                nseg = scan_s6_triton._Plan(inp["x"], inp["B"], k).nseg
                res = bench_case(torch, selective_scan, clock, inp, "triton", args.chunk,
                                 args.reps)
            if res is None:
                print(f"| {dname} | 2^{lg} | {nseg} | OOM | | | | | | | |", flush=True)
                continue
            t_f, t_fb, peak, out = res
            with _segment_env("0"):
                one = bench_case(torch, selective_scan, clock, inp, "triton", args.chunk, 1)
            one_cols = ("OOM", "-") if one is None else (
                f"{one[1] * 1e3:.2f}", f"{max_rel_diff(one[3], out):.1e}")
            mam = bench_mamba_ssm(torch, clock, inp, args.reps) if clock.cuda else "no GPU"
            mam_cols = (mam, "-") if isinstance(mam, str) else (
                f"{mam[1] * 1e3:.2f}", f"{max_rel_diff(mam[2], out):.1e}")
            tokens = args.batch * length / t_fb / 1e6
            print(f"| {dname} | 2^{lg} | {nseg} | {t_f * 1e3:.2f} | {t_fb * 1e3:.2f} "
                  f"| {tokens:.2f} | {peak / 2**20:.0f} | {one_cols[0]} | {one_cols[1]} "
                  f"| {mam_cols[0]} | {mam_cols[1]} |", flush=True)
            del inp, res, one, out
            if clock.cuda:
                torch.cuda.empty_cache()


def _resource_usage(cubin):
    """'REG:n STACK:n' of a cubin from the cuobjdump that ships with triton, or '?'."""
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    if not os.path.exists(tool):
        return "?"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True).stdout
    fields = [w for line in out.splitlines() if "REG:" in line for w in line.split()]
    return " ".join(w for w in fields if w.startswith(("REG:", "STACK:"))) or "?"


def _s6_compile_cases(args, torch, dtype, scan_s6_triton, s6):
    """(kernel, constexprs, warps, ints) of the S6 kernels as a launch at L = 2^17 with the --s6
    sizes (batch 1, headdim 1, one group) sets them; ints: the value of every int argument."""
    length = 1 << 17
    x = torch.empty(1, length, args.s6_channels, 1, dtype=dtype, device="meta")
    k = scan_s6_triton.checkpoint_len(args.chunk)
    p = scan_s6_triton._Plan(x, torch.empty(1, length, 1, args.s6_dstate, dtype=dtype,
                                            device="meta"), k, segment_length=8 * k)
    tile = dict(BD=p.bd, BN=p.bn)
    seg = dict(zip(("L", "H", "P", "G", "N", "R", "NBG", "SEG", "NSEG", "K"), p.sizes(),
                   strict=True))
    carry = dict(H=p.h, P=p.p, N=p.n, NSEG=p.nseg)
    return [
        (s6.s6_local_kernel, dict(tile, FORWARD=True), p.warps, seg),
        (s6.s6_local_kernel, dict(tile, FORWARD=False), p.warps, seg),
        (s6.s6_carry_kernel, dict(BLOCK=scan_s6_triton._CARRY_BLOCK, HAS_H0=True,
                                  REVERSE=True), 4, carry),
        (s6.s6_fwd_kernel, dict(tile, HAS_D=True, HAS_H0=True, SAVE=True), p.warps, seg),
        (s6.s6_bwd_kernel, dict(tile, HAS_D=True, HAS_U0=True), p.warps, seg),
    ]


def compile_check(args):
    """Compile each kernel for a CUDA target without a GPU (catches errors the interpreter
    does not see) and report register use and spills (STACK) per kernel."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("scan_gpu.py: --compile-check needs TRITON_INTERPRET unset")
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from genossm.ops import scan_s6_triton, scan_triton
    from genossm.ops.triton_kernels import s6, ssd

    like_x = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "v_ptr", "k_ptr", "B_ptr", "C_ptr"}
    if "ssd" in args.kernels:
        print(f"sm_{args.arch}; SSD: heads {args.heads} x headdim {args.headdim}, dstate "
              f"{args.dstate}, chunk {args.chunk}")
    if "s6" in args.kernels:
        print(f"sm_{args.arch}; S6: {args.s6_channels} channels (headdim 1), dstate "
              f"{args.s6_dstate}, checkpoint every {scan_s6_triton.checkpoint_len(args.chunk)}")
    failed = 0
    for dname in args.dtypes:
        dtype = getattr(torch, DTYPES[dname])
        cases = []
        if "ssd" in args.kernels:
            x = torch.empty(1, 1, args.heads, args.headdim, dtype=dtype)
            z = scan_triton._Sizes(x, torch.empty(1, 1, args.groups, args.dstate, dtype=dtype),
                                   scan_triton.chunk_len(args.chunk))
            blk = dict(Q=z.q, BT=z.bt, BP=z.bp, BN=z.bn, DOT=z.dot, PREC=z.prec)
            cases += [
                (ssd.cumsum_kernel, dict(Q=z.q), 4),
                (ssd.chunk_state_kernel, dict(blk, FORWARD=True), z.warps),
                (ssd.state_pass_fwd_kernel,
                 dict(Q=z.q, BLOCK=scan_triton._STATE_BLOCK, HAS_INIT=True), 4),
                (ssd.chunk_scan_fwd_kernel, dict(blk, HAS_D=True), z.warps),
                (ssd.state_pass_bwd_kernel,
                 dict(Q=z.q, BLOCK=scan_triton._STATE_BLOCK, HAS_DFINAL=True), 4),
                (ssd.chunk_scan_bwd_dc_kernel, blk, z.warps),
                (ssd.chunk_scan_bwd_dx_kernel, dict(blk, HAS_D=True), z.warps),
                (ssd.ddt_kernel, dict(Q=z.q, BZ=4), 4),
            ]
        if "s6" in args.kernels:
            cases += _s6_compile_cases(args, torch, dtype, scan_s6_triton, s6)
        tri = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[dname]
        for kernel, const, warps, *ints in cases:
            names = kernel.arg_names
            # As a launch specializes them: an int equal to 1 is a constant, pointers and ints
            # divisible by 16 are marked so (given the ints of a launch; the SSD cases omit it).
            if ints:
                const = dict(const, **{n: 1 for n, v in ints[0].items() if v == 1})
            sig = {n: ("constexpr" if n in const else
                       ("*" + tri if n in like_x else "*fp32") if n.endswith("_ptr") else "i32")
                   for n in names}
            attrs = {}
            if ints:
                attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
                         if n.endswith("_ptr") or (n not in const and ints[0][n] % 16 == 0)}
            src = ASTSource(kernel, sig, constexprs={(names.index(n),): v
                                                     for n, v in const.items()}, attrs=attrs)
            t0 = time.perf_counter()
            try:
                out = compile(src, target=GPUTarget("cuda", args.arch, 32),
                              options={"num_warps": warps})
                usage = _resource_usage(out.asm["cubin"])
                status = f"ok {time.perf_counter() - t0:5.1f}s {usage}"
            except Exception as e:  # report every kernel, then fail
                failed += 1
                status = f"FAILED {type(e).__name__}: {e}"
            name = kernel.__name__
            if kernel is s6.s6_local_kernel:
                name += " (fwd)" if const["FORWARD"] else " (bwd)"
            print(f"{dname} {name:26s} warps {warps} {status}", flush=True)
    if failed:
        sys.exit(f"scan_gpu.py: {failed} kernel(s) failed to compile")


def main(argv=None):
    args = _parse(argv)
    if args.compile_check:
        compile_check(args)
        return
    if args.cpu_interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        args.log2_lengths, args.reps, args.chunk = [6, 7], 1, 32
        args.batch, args.heads, args.headdim, args.dstate = 1, 2, 16, 16
        args.s6_log2_lengths, args.s6_channels, args.s6_dstate = [6], 4, 4
    import torch

    if args.cpu_interpret_smoke:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("scan_gpu.py: no CUDA device found; this benchmark needs a GPU "
                 "(use --cpu-interpret-smoke to check its code paths on CPU)")
    else:
        device = torch.device("cuda")
    from genossm.ops.selective_scan import selective_scan

    clock = _Clock(torch, device)
    copy_bw = copy_bandwidth(torch, device, clock, (1 << 30) if clock.cuda else (1 << 24))
    name = torch.cuda.get_device_name(device) if clock.cuda else "cpu (Triton interpreter)"
    print(f"device: {name}; copy bandwidth {copy_bw / 1e9:.0f} GB/s; "
          f"fp32 dot precision: {os.environ.get('GENOSSM_TRITON_FP32_DOT', 'ieee')}")
    if args.s6:
        bench_s6(args, torch, selective_scan, clock, device)
        return
    print(f"batch {args.batch}, heads {args.heads} x headdim {args.headdim}, groups "
          f"{args.groups}, dstate {args.dstate}, chunk {args.chunk}; min of {args.reps} runs")
    print("| dtype | length | pass | triton ms | torch ms | torch/triton | triton BW/copy "
          "| triton peak MiB | torch peak MiB | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dname in args.dtypes:
        dtype = getattr(torch, DTYPES[dname])
        for lg in args.log2_lengths:
            args.length = 1 << lg
            inp = make_inputs(torch, device, dtype, args)
            res = {b: bench_case(torch, selective_scan, clock, inp, b, args.chunk, args.reps)
                   for b in args.backends}
            tri, tor = res.get("triton"), res.get("torch")
            diff = f"{max_rel_diff(tri[3], tor[3]):.1e}" if tri and tor else "-"
            for i, pname in ((0, "fwd"), (1, "fwd+bwd")):
                ms = ["-" if b not in res else "OOM" if res[b] is None else
                      f"{res[b][i] * 1e3:.2f}" for b in ("triton", "torch")]
                ratio = f"{tor[i] / tri[i]:.2f}" if tri and tor else "-"
                bw = f"{min_bytes(inp, i == 0) / tri[i] / copy_bw:.2f}" if tri else "-"
                peaks = [f"{r[2] / 2**20:.0f}" if r and i == 1 else "" for r in (tri, tor)]
                print(f"| {dname} | 2^{lg} | {pname} | {ms[0]} | {ms[1]} | {ratio} | {bw} "
                      f"| {peaks[0]} | {peaks[1]} | {diff if i else ''} |")
            del inp, res
            if clock.cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
