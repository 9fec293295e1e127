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

Without a CUDA device it exits with a message (except for --cpu-interpret-smoke, which only
checks the code paths: its numbers mean nothing).
"""

from __future__ import annotations

import argparse
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


def compile_check(args):
    """Compile each kernel for a CUDA target without a GPU (catches errors the interpreter
    does not see) and report register use and spills (STACK) per kernel."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("scan_gpu.py: --compile-check needs TRITON_INTERPRET unset")
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from genossm.ops import scan_triton
    from genossm.ops.triton_kernels import ssd

    like_x = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "v_ptr", "k_ptr", "B_ptr", "C_ptr"}
    print(f"sm_{args.arch}; heads {args.heads} x headdim {args.headdim}, dstate {args.dstate}, "
          f"chunk {args.chunk}")
    failed = 0
    for dname in args.dtypes:
        dtype = getattr(torch, DTYPES[dname])
        x = torch.empty(1, 1, args.heads, args.headdim, dtype=dtype)
        z = scan_triton._Sizes(x, torch.empty(1, 1, args.groups, args.dstate, dtype=dtype),
                               scan_triton.chunk_len(args.chunk))
        tri = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[dname]
        blk = dict(Q=z.q, BT=z.bt, BP=z.bp, BN=z.bn, DOT=z.dot, PREC=z.prec)
        cases = [
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
        for kernel, const, warps in cases:
            names = kernel.arg_names
            sig = {n: ("constexpr" if n in const else
                       ("*" + tri if n in like_x else "*fp32") if n.endswith("_ptr") else "i32")
                   for n in names}
            src = ASTSource(kernel, sig, constexprs={(names.index(n),): v
                                                     for n, v in const.items()})
            t0 = time.perf_counter()
            try:
                out = compile(src, target=GPUTarget("cuda", args.arch, 32),
                              options={"num_warps": warps})
                usage = _resource_usage(out.asm["cubin"])
                status = f"ok {time.perf_counter() - t0:5.1f}s {usage}"
            except Exception as e:  # report every kernel, then fail
                failed += 1
                status = f"FAILED {type(e).__name__}: {e}"
            print(f"{dname} {kernel.__name__:26s} warps {warps} {status}", flush=True)
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
