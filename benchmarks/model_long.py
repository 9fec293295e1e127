"""Million-length model benchmark on CPU (real human sequence, chr20 slice).

1. stream: a 2-layer, d_model 128 causal model streamed over 2^20 bases in pieces, carrying
   the conv + SSM state: time, bases/s, peak RSS (does not grow with length).
2. train: one training step (forward + backward, gradient checkpointing per block) on one
   sequence of 2^20 bases: time and peak RSS (goal: under 8 GB).

Each part runs in its own subprocess so that peak RSS (resource.getrusage) does not mix.
Usage: python benchmarks/model_long.py [--length N] [--piece N] [--part stream|train]
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
FASTA_NAME = "chr20_b37_1-2000000.fa.gz"
FASTA_CANDIDATES = [ROOT / "config" / "data" / FASTA_NAME]
SKIP = 60_000  # chr20 (b37) starts with 60,000 N


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB


def read_tokens(length: int) -> torch.Tensor:
    import pysam

    from genossm import alphabet
    path = next((p for p in FASTA_CANDIDATES if p.exists()), None)
    if path is None:
        sys.exit(f"no {FASTA_NAME} in {[str(p) for p in FASTA_CANDIDATES]}")
    with pysam.FastaFile(str(path)) as fa:
        seq = fa.fetch(fa.references[0], SKIP, SKIP + length)
    if len(seq) != length:
        sys.exit(f"{path}: only {len(seq)} bases after offset {SKIP}, need {length}")
    codes = alphabet.encode(seq).astype(np.int64)
    return torch.from_numpy(codes)[None]


def build_model(**kw):
    from genossm.model import GenoSSM, ModelConfig
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=128, n_layer=2, d_state=64, headdim=32, expand=2, **kw)
    return GenoSSM(cfg)


def part_stream(length: int, piece: int) -> None:
    x = read_tokens(length)
    model = build_model().eval()
    rss0 = peak_rss_gib()
    nll = 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        pieces = (x[:, start:start + piece] for start in range(0, length, piece))
        rss_marks = []
        for out in model.stream(pieces):
            # each base's log-probability given all before it (NaN for the first): the
            # untrained model's next-base loss, just to consume the output
            nll -= out.token_logp[0].nansum().item()
            rss_marks.append(peak_rss_gib())
            state = out.state
    dt = time.perf_counter() - t0
    state_mib = sum(t.numel() * t.element_size() for t in state.conv + state.ssm) / 2**20
    print(f"stream  length {length:,} in pieces of {piece:,}: {dt:.1f} s, "
          f"{length / dt / 1e3:.1f} kbases/s; peak RSS {peak_rss_gib():.2f} GiB "
          f"(after setup {rss0:.2f}, after first piece {rss_marks[0]:.2f}); "
          f"state {state_mib:.2f} MiB; untrained {nll / (length - 1) / math.log(2):.3f} bits/base")


def part_train(length: int) -> None:
    x = read_tokens(length + 1)
    model = build_model(gradient_checkpointing=True).train()
    opt = torch.optim.AdamW(model.optim_groups(0.1), lr=1e-3)
    rss0 = peak_rss_gib()
    t0 = time.perf_counter()
    logits = model(x[:, :-1])
    loss = F.cross_entropy(logits[0], x[0, 1:])
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    print(f"train   length {length:,}, batch 1, checkpointing: forward {t1 - t0:.1f} s, "
          f"backward {t2 - t1:.1f} s, step {t3 - t2:.2f} s, total {t3 - t0:.1f} s; "
          f"loss {loss.item() / math.log(2):.3f} bits/base; peak RSS {peak_rss_gib():.2f} GiB "
          f"(after setup {rss0:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2**20)
    ap.add_argument("--piece", type=int, default=2**16)
    ap.add_argument("--part", choices=("stream", "train"))
    args = ap.parse_args()
    if args.part == "stream":
        return part_stream(args.length, args.piece)
    if args.part == "train":
        return part_train(args.length)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: 2 layers, "
          f"d_model 128, d_state 64, headdim 32, expand 2, scan backend auto (torch on CPU)")
    for part in ("stream", "train"):
        cmd = [sys.executable, __file__, "--part", part, "--length", str(args.length),
               "--piece", str(args.piece)]
        done = subprocess.run(cmd, cwd=ROOT)
        if done.returncode:
            print(f"{part}: exit status {done.returncode}")


if __name__ == "__main__":
    main()
