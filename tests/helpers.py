"""Paths and small utilities shared by the tests."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pysam

from genossm import alphabet

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "config" / "data"
CHR20 = DATA / "chr20_b37_1-2000000.fa.gz"
LAMBDA = DATA / "lambda_virus.fa.gz"
EX1_BAM = DATA / "ex1.bam"
EX1_FA = DATA / "ex1.fa"
MPILEUP_BAM = DATA / "mpileup.1.bam"
MPILEUP_FA = DATA / "mpileup.ref.fa"


def fasta_records(path: Path) -> list[tuple[str, str]]:
    """(name, sequence as written) of every record, read by pysam (independent of genossm)."""
    with pysam.FastxFile(str(path)) as fx:
        return [(r.name, r.sequence) for r in fx]


def write_fasta(path: Path, records, *, width: int = 60, newline: str = "\n",
                compress: str | None = None) -> Path:
    """Write records as FASTA; compress is None, 'gzip' or 'bgzf'."""
    buf = io.StringIO()
    for name, seq in records:
        buf.write(f">{name}{newline}")
        for i in range(0, len(seq), width):
            buf.write(seq[i:i + width] + newline)
    data = buf.getvalue().encode()
    if compress == "gzip":
        path.write_bytes(gzip.compress(data))
    elif compress == "bgzf":
        plain = path.with_suffix(".tmp")
        plain.write_bytes(data)
        pysam.tabix_compress(str(plain), str(path), force=True)
        plain.unlink()
    else:
        path.write_bytes(data)
    return path


def one_error_line(capsys, *parts) -> None:
    """stderr (captured by ``capsys``) is one genossm error line, holding every one of
    ``parts``."""
    err = capsys.readouterr().err
    assert err.startswith("genossm: error: ") and err.count("\n") == 1 and \
        all(part in err for part in parts), err


def unwritable_dir(tmp_path) -> Path:
    """A directory no file can be made in: /sys for root, else a read-only one."""
    path = Path("/sys") if os.geteuid() == 0 else tmp_path / "read_only"
    path.mkdir(mode=0o555, exist_ok=True)
    return path


def files(directory) -> dict:
    """Every file under ``directory`` (relative path -> bytes): outputs and inputs unchanged."""
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


def tiny_model(directory, seed=0, **overrides):
    """A random tiny model with confident predictions (large embedding), saved to directory;
    ``overrides`` are ModelConfig values over the defaults here."""
    import torch

    from genossm.model import GenoSSM, ModelConfig, save_model

    torch.manual_seed(seed)
    config = ModelConfig(**{**dict(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=16,
                                   initializer_range=0.5), **overrides})
    model = GenoSSM(config).eval()
    save_model(model, directory)
    return model


def perturbed_model(config, seed: int = 0, dtype=None):
    """A GenoSSM of ``config`` (a ModelConfig), in eval mode and ``dtype`` (None: as built,
    float32), made after ``torch.manual_seed(seed)``, with every parameter moved by
    0.05 * randn: non-trivial values everywhere (initialisation leaves some at 0 or 1)."""
    import torch

    from genossm.model import GenoSSM

    torch.manual_seed(seed)
    model = GenoSSM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def random_tokens(batch: int, length: int, seed: int = 1, high: int = alphabet.NUM_BASE_CODES):
    """A (batch, length) int64 tensor of token codes drawn uniformly from [0, high) by a
    generator of its own seeded with ``seed`` (A, C, G, T, N by default)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, length), generator=g)


def cross_entropy_gradients(model, x) -> dict:
    """Parameter gradients (name -> tensor) of the cross-entropy of ``model(x)`` against ``x``
    itself, the model in training mode."""
    import torch.nn.functional as F

    logits = model.train()(x)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def check_stream_equals_full_pass(model, x, pieces, *, layer: int, atol: float):
    """``model.stream`` over ``x`` cut into ``pieces`` (their lengths) gives the logits and
    layer ``layer``'s hidden states of one full pass (to ``atol``), each token's log-probability
    given the tokens before it (none for the first; float32, to 1e-5), and a last state at the
    end of ``x`` shaped as a fresh one. Returns the full pass's logits and that state."""
    import numpy as np
    import torch

    cuts = np.cumsum([0, *pieces])
    with torch.no_grad():
        full = model(x)
        full_h = model.hidden_states(x, layer=layer)
        out = list(model.stream([x[:, a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)],
                                layer=layer))
    torch.testing.assert_close(torch.cat([p.logits for p in out], 1), full, rtol=0, atol=atol)
    torch.testing.assert_close(torch.cat([p.hidden for p in out], 1), full_h, rtol=0, atol=atol)
    want = torch.log_softmax(full, -1)[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    token_logp = torch.cat([p.token_logp for p in out], 1)
    assert torch.isnan(token_logp[:, 0]).all()
    torch.testing.assert_close(token_logp[:, 1:].double(), want, rtol=0, atol=1e-5)
    state = out[-1].state
    assert cuts[-1] == x.shape[1] and state.offset == x.shape[1]
    fresh = model.initial_state(x.shape[0])
    assert [c.shape for c in fresh.conv] == [c.shape for c in state.conv]
    assert [s.shape for s in fresh.ssm] == [s.shape for s in state.ssm]
    return full, state


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in lines:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        counts[fields[0]] = int(fields[1])
    return counts
