"""Caduceus-sized models on CPU, inference (real human sequence, chr20 slice; random weights).

1. bidirectional: the Caduceus-PS 131k architecture (Mamba-1 mixers, d_model 256, 16 layers,
   d_state 16, expand 2, BiMamba with shared in/out projections, RCPS, masked LM) over one
   sequence of 131,072 bases under torch.no_grad(): time of one forward (logits) and of one
   ``hidden_states``, bases/s and peak RSS; then forward over a sweep of lengths, to show that
   memory grows linearly with length (bytes per base constant).
2. streaming: a causal Mamba-1 model (d_model 256, 4 layers, objective clm) streamed with
   ``model.stream`` in pieces over up to 2^20 bases: streamed logits against one full pass at a
   length where a full pass fits (max relative difference), time and peak RSS of streaming at
   several total lengths (constant), and of one full pass for comparison.

Each case runs in its own subprocess, so that peak RSS (resource.getrusage) does not mix; the
baseline of each is RSS after imports, the model, the input tokens and a 256-base warm-up call.
Times are wall and CPU (user + system) seconds of the call; the 1-minute load average at the
start and end of each case says whether the machine was shared. --quick: short lengths, the
same models.
Usage: python benchmarks/caduceus.py [--quick] [--part bidirectional|streaming]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Before torch is imported (as the genossm command does): idle OpenMP workers sleep rather than
# spin, which keeps the chunked CPU scan's many small parallel calls fast on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FASTA = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"
SKIP = 60_000  # chr20 (b37) starts with 60,000 N

CADUCEUS = dict(mixer="mamba1", d_model=256, n_layer=16, d_state=16, expand=2,
                bidirectional=True, bidirectional_sharing="projections", rc_equivariant=True,
                objective="mlm")
CAUSAL = dict(mixer="mamba1", d_model=256, n_layer=4, d_state=16, expand=2, objective="clm")

FULL = {  # the sizes of the measurements (bases)
    "length": 2**17, "sweep": [2**14, 2**15, 2**16, 2**17],
    "stream": [2**18, 2**19, 2**20], "piece": 2**16, "check": 2**17, "check_piece": 2**15,
}
QUICK = {
    "length": 2**12, "sweep": [2**10, 2**11, 2**12],
    "stream": [2**13, 2**14, 2**15], "piece": 2**11, "check": 2**12, "check_piece": 2**10,
}


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB


def read_tokens(length: int) -> torch.Tensor:
    """(1, length) token codes of the chr20 slice from base SKIP on."""
    import pysam

    from genossm import alphabet
    with pysam.FastaFile(str(FASTA)) as fa:
        seq = fa.fetch(fa.references[0], SKIP, SKIP + length)
    if len(seq) != length:
        sys.exit(f"{FASTA}: only {len(seq)} bases after offset {SKIP}, need {length}")
    return torch.from_numpy(alphabet.encode(seq).astype(np.int64))[None]


def build(kind: str, backend: str):
    from genossm.model import GenoSSM, ModelConfig
    torch.manual_seed(0)
    arch = CADUCEUS if kind == "bidirectional" else CAUSAL
    return GenoSSM(ModelConfig(**arch, scan_backend=backend)).eval()


# --- one case per subprocess: prints one JSON line --------------------------------------------
def case_bidirectional(call: str, length: int, backend: str) -> dict:
    model = build("bidirectional", backend)
    x = read_tokens(length)
    with torch.no_grad():
        model(x[:, :256])                 # warm-up at a short length (allocator, thread pool)
        rss0 = rss_gib()
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(x) if call == "logits" else model.hidden_states(x)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu": cpu, "rss0": rss0, "peak": rss_gib(),
            "shape": list(out.shape), "finite": bool(torch.isfinite(out).all())}


def case_stream(length: int, piece: int, backend: str) -> dict:
    model = build("streaming", backend)
    x = read_tokens(length)
    with torch.no_grad():
        model(x[:, :256])
        rss0 = rss_gib()
        marks = []
        nll = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        pieces = (x[:, start:start + piece] for start in range(0, length, piece))
        for out in model.stream(pieces):
            nll -= out.token_logp[0].nansum().item()   # consume the output
            marks.append(rss_gib())
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    state = out.state
    state_mib = sum(t.numel() * t.element_size() for t in state.conv + state.ssm) / 2**20
    return {"seconds": seconds, "cpu": cpu, "rss0": rss0, "peak": rss_gib(),
            "first_piece": marks[0],
            "state_mib": state_mib, "bits": nll / (length - 1) / np.log(2)}


def case_full(length: int, backend: str) -> dict:
    model = build("streaming", backend)
    x = read_tokens(length)
    with torch.no_grad():
        model(x[:, :256])
        rss0 = rss_gib()
        t0, c0 = time.perf_counter(), time.process_time()
        logits = model(x)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu": cpu, "rss0": rss0, "peak": rss_gib(),
            "finite": bool(torch.isfinite(logits).all())}


def case_check(length: int, piece: int, backend: str) -> dict:
    """Streamed logits (pieces of ``piece``) against one full pass over ``length`` bases."""
    model = build("streaming", backend)
    x = read_tokens(length)
    with torch.no_grad():
        full = model(x)
        pieces = (x[:, start:start + piece] for start in range(0, length, piece))
        streamed = torch.cat([out.logits for out in model.stream(pieces)], dim=1)
    diff = (streamed - full).abs().max().item()
    scale = full.abs().max().item()
    return {"max_abs_diff": diff, "max_abs": scale, "relative": diff / scale,
            "pieces": -(-length // piece)}


def run_case(args: list, backend: str) -> dict:
    """One case in a fresh subprocess; adds the 1-minute load average at its start and end
    (the machine may be shared: CPU seconds are then the steadier figure)."""
    cmd = [sys.executable, __file__, "--backend", backend, "--case", *map(str, args)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        return {"error": f"exit status {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = (load, os.getloadavg()[0])
    return result


# --- the report -----------------------------------------------------------------------------
HEADER = ("| {what} | length | wall | CPU | bases/s | peak RSS GiB | above baseline GiB "
          "| bytes/base | load |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def row(what: str, length: int, r: dict) -> str:
    if "error" in r:
        return f"| {what} | {length:,} | {r['error']} | | | | | | |"
    growth = r["peak"] - r["rss0"]
    return (f"| {what} | {length:,} | {r['seconds']:.1f} s | {r['cpu']:.1f} s | "
            f"{length / r['seconds']:,.0f} | {r['peak']:.2f} | {growth:.2f} | "
            f"{growth * 2**30 / length:,.0f} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |")


def part_bidirectional(sizes: dict, backend: str) -> None:
    length = sizes["length"]
    print(f"\n1. bidirectional Caduceus: {CADUCEUS}\n   batch 1, torch.no_grad()")
    print(HEADER.format(what="call"))
    results = {}
    for call, name in (("logits", "forward (logits)"), ("hidden", "hidden_states")):
        r = results[call] = run_case(["bidirectional", call, length], backend)
        shape = "" if "error" in r else f" {tuple(r['shape'])}"
        print(row(name + shape, length, r), flush=True)
    print("\n   length sweep, forward (logits):")
    print(HEADER.format(what="call"))
    for n in sizes["sweep"]:   # the length above: its forward again
        r = results["logits"] if n == length else run_case(["bidirectional", "logits", n],
                                                           backend)
        print(row("forward (logits)", n, r), flush=True)


def part_streaming(sizes: dict, backend: str) -> None:
    print(f"\n2. streaming, causal Mamba-1: {CAUSAL}\n   batch 1, torch.no_grad()")
    r = run_case(["check", sizes["check"], sizes["check_piece"]], backend)
    if "error" in r:
        print(f"   check: {r['error']}")
    else:
        verdict = "ok" if r["relative"] <= 1e-5 else "FAILED (> 1e-5)"
        print(f"   streamed ({r['pieces']} pieces of {sizes['check_piece']:,}) vs one full pass "
              f"at {sizes['check']:,}: max |diff| {r['max_abs_diff']:.3g}, max |logit| "
              f"{r['max_abs']:.3g}, relative {r['relative']:.2e}: {verdict}", flush=True)
    print(HEADER.format(what="run"))
    print(row("one full pass", sizes["check"], run_case(["full", sizes["check"]], backend)),
          flush=True)
    for n in sizes["stream"]:
        r = run_case(["stream", n, sizes["piece"]], backend)
        what = f"streamed in pieces of {sizes['piece']:,}"
        if "state_mib" in r:
            what += f" (state {r['state_mib']:.2f} MiB)"
        print(row(what, n, r), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short lengths (a few minutes)")
    ap.add_argument("--part", choices=("bidirectional", "streaming"))
    ap.add_argument("--backend", default="auto", help="scan backend (auto: torch on CPU)")
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)  # internal: one subprocess
    args = ap.parse_args()
    if args.case:
        kind, *rest = args.case
        if kind == "bidirectional":
            result = case_bidirectional(rest[0], int(rest[1]), args.backend)
        elif kind == "stream":
            result = case_stream(int(rest[0]), int(rest[1]), args.backend)
        elif kind == "full":
            result = case_full(int(rest[0]), args.backend)
        else:
            result = case_check(int(rest[0]), int(rest[1]), args.backend)
        print(json.dumps(result))
        return
    sizes = QUICK if args.quick else FULL
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, scan backend "
          f"{args.backend}{' (--quick)' if args.quick else ''}; RSS baseline: after imports, "
          f"model, tokens and a 256-base warm-up call")
    if args.part in (None, "bidirectional"):
        part_bidirectional(sizes, args.backend)
    if args.part in (None, "streaming"):
        part_streaming(sizes, args.backend)


if __name__ == "__main__":
    main()
