"""The PNG plots users keep: training curves, bits per base by position, score distributions;
``new_figure`` and ``save_figure`` for those drawn elsewhere (benchmark/plots.py).

Figures are drawn with matplotlib's object API on the Agg canvas (no display, no global state)
and written to the path they are given: the caller stages it (fileio.StagedOutputs) with the
run's other outputs. Each PNG carries a ``Software: genossm VERSION`` text chunk, by which
``PLOT`` recognises a plot genossm wrote (the output policy, fileio.claim_outputs).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from genossm import __version__
from genossm.fileio import OutputKind

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOFTWARE = b"Software"


def is_genossm_plot(path) -> bool:
    """Whether ``path`` is a PNG whose ``Software`` text chunk (before the image data) names
    genossm."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    if not head.startswith(PNG_MAGIC):
        return False
    at = len(PNG_MAGIC)
    while at + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[at:at + 8])
        if kind == b"tEXt":
            keyword, _, text = head[at + 8:at + 8 + length].partition(b"\0")
            if keyword == SOFTWARE and text.startswith(b"genossm "):
                return True
        if kind in (b"IDAT", b"IEND"):
            return False
        at += 12 + length
    return False


PLOT = OutputKind("a genossm PNG plot", is_genossm_plot)


def new_figure(size: tuple[float, float]):
    """A matplotlib Figure of ``size`` inches, constrained layout, on no canvas yet."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def save_figure(figure, path: Path) -> None:
    """Draw ``figure`` on the Agg canvas and write it to ``path``: a PNG whose ``Software``
    text chunk names genossm (``PLOT``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=120,
                   metadata={SOFTWARE.decode(): f"genossm {__version__}"})


def plot_training_curves(records: list[dict], markov_bits: float, markov_order: int,
                         path: Path) -> None:
    """Train and validation bits per base against tokens seen (or step), with the baseline's
    level on the evaluated regions."""
    figure = new_figure((7, 4.5))
    ax = figure.add_subplot()
    x_key = "tokens" if records and all("tokens" in r for r in records) else "step"
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(r[x_key], r["bits_per_base"]) for r in records
                  if r.get("split") == split and x_key in r and "bits_per_base" in r]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=split, markersize=4)
    ax.axhline(markov_bits, color="grey", linestyle="--",
               label=f"Markov order {markov_order} (evaluated regions)")
    if not records:
        ax.text(0.5, 0.65, "no metrics.jsonl in the model directory", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("tokens seen" if x_key == "tokens" else "step")
    ax.set_ylabel("bits per base")
    ax.set_title("Training curves")
    ax.legend()
    save_figure(figure, path)


def plot_bits_by_position(profile: dict, markov_bits: float, markov_order: int,
                          path: Path) -> None:
    """Model bits per base by position in the window (log x), with the baseline's level."""
    figure = new_figure((7, 4.5))
    ax = figure.add_subplot()
    points = [((b["start"] + b["end"] - 1) / 2, b["bits_per_base"]) for b in profile["bins"]
              if b["bits_per_base"] is not None]
    if points:
        ax.plot(*zip(*points, strict=True), "o-", markersize=3, label="model")
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, f"no region holds a whole window of {profile['seq_len']:,} bases",
                ha="center", transform=ax.transAxes)
    ax.axhline(markov_bits, color="grey", linestyle="--", label=f"Markov order {markov_order}")
    ax.set_xlabel(f"position in a window of {profile['seq_len']:,} bases")
    ax.set_ylabel("bits per base")
    ax.set_title(f"Bits per base by position ({profile['windows']} windows)")
    ax.legend()
    save_figure(figure, path)


def plot_score_distributions(llr: list[float], cosine: list[float], is_snv: list[bool],
                             title: str, path: Path) -> None:
    """Histograms of the LLR and of the cosine distance of the scored alleles, SNVs and
    other alleles (MNVs, indels) apart."""
    figure = new_figure((10, 4))
    kinds = np.asarray(is_snv, dtype=bool)
    for column, (values, label) in enumerate(((llr, "LLR, ln P(alt) - ln P(ref)"),
                                              (cosine, "cosine distance, ref vs alt"))):
        ax = figure.add_subplot(1, 2, column + 1)
        values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        for mask, name in ((kinds, "SNV"), (~kinds, "MNV / indel")):
            shown = values[mask & np.isfinite(values)]
            if shown.size:
                ax.hist(shown, bins=40, alpha=0.6, label=f"{name} ({shown.size:,})")
        if not np.isfinite(values).any():
            ax.text(0.5, 0.5, "no scored allele", ha="center", transform=ax.transAxes)
        else:
            ax.legend()
        ax.set_xlabel(label)
        ax.set_ylabel("alleles")
    figure.suptitle(title)
    save_figure(figure, path)
