"""``genossm evaluate``: a model's bits per base on held-out regions of a token store, against the
k-mer Markov baseline fit on the same model's training data, with plots.

Regions are the model's validation intervals on the store (or a BED). A causal model is streamed
over each whole region in pieces that carry its state, so any length runs in constant memory
and every base (but the first) sees the whole region before it: the measure
``causal_streamed``. A masked-LM model sees windows of its training length L tiled from each
region's start, with 15 % of the non-N bases of every window masked (``masked_15pct``). Either
way the score of a base is -log2 of the probability the model's full-vocabulary softmax gives
it, and the Markov baseline is scored on exactly the same bases.

With context parallelism (``context_parallel`` R, under torchrun with R processes) a region (a
masked model: each window) is read in one pass split across the ranks, each holding a contiguous
shard (ops/context_parallel.py): rank r gets the log2 p of its shard's bases, and rank 0
receives them shard by shard (``Dist.gather_shards``) and goes on as one process would, writing
the outputs; the numbers are those of one process. A region too short to split is read by rank 0
alone. Every rank fits the Markov baseline, so that none waits in a collective while rank 0 fits
it alone.

Outputs, METRICS.json and the two plots, are claimed before anything is read
(fileio.claim_outputs; ``METRICS`` recognises a metrics file genossm wrote) and staged together:
a failing run leaves none of them, and METRICS.json, the mark of a finished run, is renamed into
place last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genossm import __version__, alphabet
from genossm.distributed import Dist, check_context_parallel, shard_bounds, shard_span
from genossm.errors import InputError
from genossm.fileio import (
    OutputKind,
    StagedOutputs,
    check_distinct,
    claim_outputs,
    created_by_genossm,
    json_object,
)
from genossm.markov import MarkovBaseline
from genossm.model import GenoSSM, ModelDir, TrainingInfo, last_record
from genossm.plots import PLOT, plot_bits_by_position, plot_training_curves
from genossm.regions import Region, check_inside, merge_spans, overlap_bases, read_bed
from genossm.runtime import is_model_dir, open_model, trained_length
from genossm.store import TokenStore

CAUSAL = "causal_streamed"
MASKED = "masked_15pct"
MASK_FRACTION = 0.15
MASK_SEED = 0
MARKOV_PIECE = 1 << 24    # bases read at once when fitting the baseline
POSITION_BINS = 64        # log-spaced bins of bits by position in the window
CURVES_PLOT = "training_curves.png"
POSITION_PLOT = "bits_by_position.png"
LN2 = math.log(2.0)


def is_metrics(path) -> bool:
    """Whether ``path`` is a METRICS.json genossm evaluate wrote: a JSON object with
    ``model_bits_per_base`` and genossm's ``created_by`` (or, older files, ``measure``)."""
    metrics = json_object(path)
    return metrics is not None and "model_bits_per_base" in metrics and \
        (created_by_genossm(metrics) or "measure" in metrics)


METRICS = OutputKind("a genossm evaluate METRICS.json", is_metrics)


# --------------------------------------------------------------------------- regions


def store_intervals(training: TrainingInfo, store: TokenStore, kind: str,
                    config_path: Path) -> list[Region]:
    """The model's ``kind`` ("train" or "validation") intervals on ``store``: those recorded
    for the same store (by resolved path) or, when no recorded store is this one, those on
    contigs of the same name."""
    here = store.path.resolve()
    same = {i for i, p in enumerate(training.stores) if Path(p).resolve() == here}
    regions: dict[Region, None] = {}   # ordered set: name matching may meet a contig twice
    for iv in training.intervals(kind):
        if iv.store in same if same else iv.contig in store.contig_index:
            regions[Region(iv.contig, iv.start, iv.end)] = None
    lengths = _contig_lengths(store, regions)
    for r in regions:
        if r.end > lengths.get(r.contig, 0):
            raise InputError(config_path, f"{kind} interval {r.contig}:{r.start}-{r.end} is not "
                                          f"inside a contig of {store.path}; is this the store "
                                          "the model was trained on?")
    return list(regions)


def _contig_lengths(store: TokenStore, regions) -> dict[str, int]:
    """The lengths of the store's contigs that ``regions`` name."""
    names = {r.contig for r in regions} & set(store.contig_index)
    return {name: store.contig(name).length for name in names}


def bed_regions(path: Path, store: TokenStore) -> list[Region]:
    """The BED's regions, each checked to lie inside a contig of ``store``."""
    regions = read_bed(path)
    check_inside(regions, _contig_lengths(store, regions), str(store.path))
    if not regions:
        raise InputError(path, "no regions in the BED file")
    return regions


def _train_and_evaluated(directory: ModelDir, training: TrainingInfo | None,
                         store: TokenStore, regions_bed) -> tuple[list[Region], list[Region], str]:
    """(the intervals the Markov baseline fits on, the regions to evaluate, where those come
    from): the BED's regions, or the model's validation intervals on the store; the model's
    training intervals, or for a model without a training record (a converted checkpoint)
    the rest of the store's contigs."""
    config_path = directory.config_path
    if training is None:
        if regions_bed is None:
            raise InputError(None, f"{directory.path} records no training split (a converted "
                                   "checkpoint?): give the regions to evaluate with --regions")
        regions = bed_regions(Path(regions_bed), store)
        train = _outside(store, regions)
        if not train:
            raise InputError(regions_bed, f"the regions cover all of {store.path}: nothing is "
                                          "left to fit the Markov baseline on")
        return train, regions, str(regions_bed)
    train = store_intervals(training, store, "train", config_path)
    if regions_bed is not None:
        regions, source = bed_regions(Path(regions_bed), store), str(regions_bed)
    else:
        regions, source = store_intervals(training, store, "validation", config_path), \
            "validation split"
        if not regions:
            raise InputError(config_path, f"the model has no validation interval on "
                                          f"{store.path}; give --regions BED")
    if not train:
        raise InputError(config_path, f"the model has no training interval on {store.path}, "
                                      "so there is nothing to fit the Markov baseline on")
    return train, regions, source


def _outside(store: TokenStore, regions: list[Region]) -> list[Region]:
    """The store's contigs less ``regions``."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in regions:
        spans.setdefault(r.contig, []).append((r.start, r.end))
    rest = []
    for name in store.contig_index:
        cursor = 0
        for start, end in merge_spans(spans.get(name, [])):
            if start > cursor:
                rest.append(Region(name, cursor, start))
            cursor = end
        if cursor < store.contig(name).length:
            rest.append(Region(name, cursor, store.contig(name).length))
    return rest


def _training(directory: ModelDir, model_dir) -> TrainingInfo | None:
    """The model's training record; None for a checkpoint of another format or a model
    directory without one (converted)."""
    if not is_model_dir(model_dir):
        return None
    try:
        info = directory.info()
    except (FileNotFoundError, ValueError) as e:
        raise InputError(None, str(e)) from None
    return None if info.get("training") is None else directory.training()


# --------------------------------------------------------------------------- Markov baseline


def _pieces(store: TokenStore, region: Region, size: int) -> Iterator[np.ndarray]:
    for a in range(region.start, region.end, size):
        yield store.codes(region.contig, a, min(a + size, region.end))


def fit_markov(store: TokenStore, train: list[Region], max_order: int
               ) -> tuple[MarkovBaseline, dict[int, float]]:
    """Fit the baseline on the training intervals, choosing its order on the last tenth of
    each (``length // 10`` bases) after fitting on the rest; returns (baseline, held-out
    bits per base of every order). Intervals are read in pieces of MARKOV_PIECE bases
    (k-mers across a piece boundary, one in millions, are not counted)."""
    fit_part, held_part = [], []
    for r in train:
        cut = r.end - r.length // 10
        fit_part.append(dataclasses.replace(r, end=cut))
        held_part.append(dataclasses.replace(r, start=cut))
    markov = MarkovBaseline(max_order=max_order)
    scores = markov.choose_order(
        (p for r in fit_part for p in _pieces(store, r, MARKOV_PIECE)),
        [p for r in held_part for p in _pieces(store, r, MARKOV_PIECE)])
    return markov, scores


def _markov_log2p(markov: MarkovBaseline, store: TokenStore, region: Region, start: int,
                  codes: np.ndarray) -> np.ndarray:
    """Baseline log2 p of ``codes`` (which begin at ``start`` inside ``region``) given the
    region's bases before each; the order's worth of bases before ``start`` is read as
    context."""
    context = store.codes(region.contig, max(region.start, start - markov.order), start)
    return markov.log2_probs(np.concatenate([context, codes]))[context.size:]


# --------------------------------------------------------------------------- the model


def _tokens(codes: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(codes.astype(np.int64)).to(device)


def _causal_log2p(model: GenoSSM, codes: np.ndarray, device, state=None):
    """Causal LM: log2 p of each base given every base before it in the stream that ``state``
    continues (a new stream when None): NaN for the stream's first base, and N is never scored
    (NaN). Returns (log2 p, the state after ``codes``)."""
    tokens = _tokens(codes, device)[None]
    piece = model.step(tokens, model.initial_state(1, device) if state is None else state)
    out = piece.token_logp[0].double().cpu().numpy() / LN2
    out[codes == alphabet.N] = np.nan
    return out, piece.state


def mask_positions(codes: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """The positions a masked-LM window hides: round(15 %) of its non-N positions, drawn
    without replacement by ``np.random.default_rng([MASK_SEED, *key])``, sorted. ``key`` is
    (region index, window offset in the region), so a window is masked the same way for the
    region scores and for bits by position."""
    candidates = np.flatnonzero(codes != alphabet.N)
    rng = np.random.default_rng([MASK_SEED, *key])
    size = round(MASK_FRACTION * candidates.size)
    return np.sort(rng.choice(candidates, size=size, replace=False))


def _masked_log2p(model: GenoSSM, codes: np.ndarray, positions: np.ndarray, device,
                  span: slice = slice(None), context_group=None) -> np.ndarray:
    """Masked LM: log2 p of the true base at each of ``positions`` with all of them replaced
    by MASK in one forward pass; NaN elsewhere. With context parallelism, this rank's ``span``
    of the window (masked alike on every rank) through ``context_group``: log2 p over the span
    only."""
    tokens = _tokens(codes, device)
    masked = tokens.clone()
    masked[torch.from_numpy(positions).to(device)] = alphabet.MASK
    lo, hi, _ = span.indices(codes.size)
    logp = torch.log_softmax(model(masked[None, lo:hi], context_group=context_group)[0].float(),
                             dim=-1)
    local = positions[(positions >= lo) & (positions < hi)] - lo
    where = torch.from_numpy(local).to(device)
    out = np.full(hi - lo, np.nan)
    chosen = logp[where].gather(-1, tokens[lo:hi][where, None])[:, 0]
    out[local] = (chosen / LN2).double().cpu().numpy()
    return out


def _split_log2p(model: GenoSSM, store: TokenStore, contig: str, start: int, end: int,
                 measure: str, key: tuple[int, int], ranks: Dist
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """Context parallelism: the model's log2 p (NaN where not scored) over bases [start, end)
    of ``contig`` read as one sequence (a stream from ``start``, or a masked window with the
    mask of ``key``), in one pass split across the ranks. On rank 0, (first base, log2 p) of
    consecutive pieces that cover [start, end), one per rank; nothing on the others. A causal
    model's inputs are bases [start, end - 1), split, each predicting the base after it."""
    device, group = ranks.device, ranks.context_group
    causal = measure == CAUSAL
    inputs = end - start - causal
    if not ranks.splits(inputs, model.config.d_conv - 1):   # too short: rank 0 reads it whole
        if ranks.main:
            codes = store.codes(contig, start, end)
            yield start, (_causal_log2p(model, codes, device)[0] if causal else _masked_log2p(
                model, codes, mask_positions(codes, key), device))
        return
    span = shard_span(inputs, ranks)
    if causal:
        tokens = _tokens(store.codes(contig, start + span.start, start + span.stop + 1), device)
        logp = torch.log_softmax(model(tokens[None, :-1], context_group=group)[0].float(), -1)
        out = (logp.gather(-1, tokens[1:, None])[:, 0] / LN2).double()
        out[tokens[1:] == alphabet.N] = math.nan
        if ranks.main:   # the stream's first base is not scored
            out = torch.cat([out.new_full((1,), math.nan), out])
    else:   # the mask is drawn over the whole window: every rank reads it
        codes = store.codes(contig, start, end)
        out = torch.from_numpy(_masked_log2p(model, codes, mask_positions(codes, key), device,
                                             span, group)).to(device)
    bounds = shard_bounds(inputs, ranks.context)
    firsts = [start] + [start + b + causal for b in bounds[1:-1]]   # each piece's first base
    lengths = [b - a for a, b in zip(firsts, [*firsts[1:], end], strict=True)]
    for first, piece in zip(firsts, ranks.gather_shards(out, lengths), strict=False):
        yield first, piece.cpu().numpy()


def _window_log2p(model: GenoSSM, store: TokenStore, region: Region, index: int, offset: int,
                  length: int, measure: str, ranks: Dist) -> np.ndarray | None:
    """The model's log2 p over the window of ``length`` at ``offset`` in region ``index``,
    read from its start in one pass (split across the ranks with context parallelism: None on
    the ranks but the first)."""
    start = region.start + offset
    if ranks.context > 1:
        pieces = [p for _, p in _split_log2p(model, store, region.contig, start, start + length,
                                             measure, (index, offset), ranks)]
        return np.concatenate(pieces) if ranks.main else None
    codes = store.codes(region.contig, start, start + length)
    if measure == CAUSAL:
        return _causal_log2p(model, codes, ranks.device)[0]
    return _masked_log2p(model, codes, mask_positions(codes, (index, offset)), ranks.device)


def _scored_pieces(model: GenoSSM, store: TokenStore, region: Region, index: int,
                   measure: str, chunk_length: int, seq_len: int, ranks: Dist
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start, codes, model log2 p with NaN where not scored) of successive pieces of a
    region: streamed pieces of ``chunk_length`` carrying the model's state (causal), or
    windows of ``seq_len`` (masked). With context parallelism, the pieces of the region (causal)
    or of each window (masked) split across the ranks (``_split_log2p``), on rank 0 only."""
    device = ranks.device
    if ranks.context > 1:
        step = region.length if measure == CAUSAL else seq_len
        for start in range(region.start, region.end, step):
            end = min(start + step, region.end)
            for first, log2p in _split_log2p(model, store, region.contig, start, end, measure,
                                             (index, start - region.start), ranks):
                yield first, store.codes(region.contig, first, first + log2p.size), log2p
    elif measure == CAUSAL:
        state = None
        for start in range(region.start, region.end, chunk_length):
            codes = store.codes(region.contig, start, min(start + chunk_length, region.end))
            log2p, state = _causal_log2p(model, codes, device, state)
            yield start, codes, log2p
    else:
        for start in range(region.start, region.end, seq_len):
            codes = store.codes(region.contig, start, min(start + seq_len, region.end))
            positions = mask_positions(codes, (index, start - region.start))
            yield start, codes, _masked_log2p(model, codes, positions, device)


@dataclass
class RegionScore:
    """Scored bases of one region and the bits the model and the baseline spent on them."""
    region: Region
    bases: int = 0
    model_bits: float = 0.0
    markov_bits: float = 0.0

    def as_json(self) -> dict:
        def per_base(bits):
            return bits / self.bases if self.bases else None
        return {"contig": self.region.contig, "start": self.region.start,
                "end": self.region.end, "bases": self.bases,
                "model_bits_per_base": per_base(self.model_bits),
                "markov_bits_per_base": per_base(self.markov_bits)}


def score_regions(model: GenoSSM, store: TokenStore, regions: list[Region],
                  markov: MarkovBaseline, measure: str, chunk_length: int, seq_len: int,
                  ranks: Dist, bar) -> list[RegionScore]:
    """Model and baseline bits on the scored bases of every region (with context
    parallelism: on rank 0; the other ranks' scores are empty)."""
    scores = []
    for index, region in enumerate(regions):
        score = RegionScore(region)
        for start, codes, log2p in _scored_pieces(model, store, region, index, measure,
                                                  chunk_length, seq_len, ranks):
            scored = ~np.isnan(log2p)
            baseline = _markov_log2p(markov, store, region, start, codes)
            score.bases += int(scored.sum())
            score.model_bits -= float(log2p[scored].sum())
            score.markov_bits -= float(baseline[scored].sum())
            bar.update(codes.size)
        scores.append(score)
    return scores


def _profile_windows(regions: list[Region], seq_len: int, max_windows: int
                     ) -> list[tuple[int, int]]:
    """(region index, offset) of at most ``max_windows`` non-overlapping windows of
    ``seq_len`` tiled from the regions' starts, taken evenly across all of them."""
    windows = [(i, k * seq_len) for i, r in enumerate(regions)
               for k in range(r.length // seq_len)]
    if len(windows) <= max_windows:
        return windows
    picks = np.unique(np.linspace(0, len(windows) - 1, max_windows).round().astype(int))
    return [windows[p] for p in picks]


def bits_by_position(model: GenoSSM, store: TokenStore, regions: list[Region],
                     windows: list[tuple[int, int]], measure: str, seq_len: int, ranks: Dist,
                     bar) -> dict:
    """Mean model bits per base at each position 1..L-1 of the ``windows`` (region index,
    offset) of the training length L, one plain forward pass each, in log-spaced bins (with
    context parallelism: on rank 0; the other ranks' are empty)."""
    total = np.zeros(seq_len)
    count = np.zeros(seq_len, dtype=np.int64)
    for index, offset in windows:
        log2p = _window_log2p(model, store, regions[index], index, offset, seq_len, measure,
                              ranks)
        if log2p is None:
            continue
        scored = ~np.isnan(log2p)
        scored[0] = False
        total[scored] -= log2p[scored]
        count[scored] += 1
        bar.update(seq_len)
    edges = np.unique(np.rint(np.geomspace(1, seq_len, POSITION_BINS + 1)).astype(int))
    bins = []
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        n = int(count[a:b].sum())
        bins.append({"start": a, "end": b, "bases": n,
                     "bits_per_base": float(total[a:b].sum() / n) if n else None})
    return {"seq_len": seq_len, "windows": len(windows), "bins": bins}


# --------------------------------------------------------------------------- the command


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate(model_dir, store_path, output, *, regions_bed=None, plots_dir=None,
             device: str = "auto", chunk_length: int = 65536, markov_max_order: int = 10,
             max_windows: int = 32, window: int | None = None, progress: bool = True,
             force: bool = False, context_parallel: int = 1) -> dict | None:
    """Evaluate the model in ``model_dir`` on ``store_path``; write METRICS.json (``output``)
    and the two plots (into ``plots_dir``, default beside ``output``); ``force`` replaces
    outputs an earlier run wrote. ``window``: the length of the masked model's windows and of
    the bits-by-position windows (default: the length the model was trained on).
    ``context_parallel``: under torchrun, the number of processes, which split each sequence
    between them (module docstring). Returns the metrics (None on the ranks but the first,
    which write nothing)."""
    model_dir, output = Path(model_dir), Path(output)
    plots_dir = output.parent if plots_dir is None else Path(plots_dir)
    plots = {"training_curves": plots_dir / CURVES_PLOT,
             "bits_by_position": plots_dir / POSITION_PLOT}
    check_distinct({**{f"the {k} plot": p for k, p in plots.items()},
                    "METRICS.json (-o)": output})
    ranks = Dist.setup_inference(device, context_parallel)
    ranks.first(lambda: claim_outputs([*((p, PLOT) for p in plots.values()), (output, METRICS)],
                                      inputs=[model_dir, store_path, regions_bed], force=force))
    if chunk_length < 1:
        raise InputError(None, f"--chunk-length must be positive, got {chunk_length}")
    if not 0 <= markov_max_order <= 12:
        raise InputError(None, f"--markov-max-order must be in 0..12, got {markov_max_order}")
    if max_windows < 0:
        raise InputError(None, f"--max-windows must be >= 0, got {max_windows}")
    directory = ModelDir(model_dir)
    training = _training(directory, model_dir)
    store = TokenStore(store_path)
    train, regions, source = _train_and_evaluated(directory, training, store, regions_bed)
    seq_len = window or (training.seq_len if training else trained_length(model_dir))
    if seq_len is None:
        raise InputError(None, f"{model_dir} does not say what length it was trained on: give "
                               "--window")
    if seq_len < 2:
        raise InputError(None, f"--window must be at least 2, got {seq_len}")
    records = directory.read_metrics()
    model = open_model(model_dir, ranks.device)
    check_context_parallel(model.config, ranks.context)
    measure = CAUSAL if model.config.objective == "clm" else MASKED

    # The outputs' temporaries are made before the work (an output that cannot be written fails
    # now, not after it) and renamed into place together when it is done, METRICS.json last;
    # rank 0 alone writes.
    with StagedOutputs() if ranks.main else contextlib.nullcontext() as staged:
        if ranks.main:
            curves, by_position, staged_metrics = [staged.file(p)
                                                   for p in (*plots.values(), output)]
        markov, order_scores = fit_markov(store, train, markov_max_order)
        windows = _profile_windows(regions, seq_len, max_windows)
        total = sum(r.length for r in regions) + len(windows) * seq_len
        with torch.inference_mode(), tqdm(total=total, unit="bp", unit_scale=True,
                                          desc="evaluate", leave=False,
                                          disable=None if progress and ranks.main else True
                                          ) as bar:
            scores = score_regions(model, store, regions, markov, measure, chunk_length, seq_len,
                                   ranks, bar)
            profile = bits_by_position(model, store, regions, windows, measure, seq_len,
                                       ranks, bar)
        ranks.close()
        if not ranks.main:
            return None
        scored = sum(s.bases for s in scores)
        if not scored:
            raise InputError(source, "the regions hold no base to score (all N or too short)")
        model_bpb = sum(s.model_bits for s in scores) / scored
        markov_bpb = sum(s.markov_bits for s in scores) / scored

        metrics = {
            "created_by": f"genossm {__version__}",
            "model_dir": str(model_dir),
            "store": str(store.path),
            "measure": measure,
            "regions_from": source,
            "regions": [s.as_json() for s in scores],
            "bases_scored": scored,
            "model_bits_per_base": model_bpb,
            "markov_bits_per_base": markov_bpb,
            "markov_order": markov.order,
            "markov_held_out_bits_per_base_by_order": {str(k): _finite(v)
                                                       for k, v in order_scores.items()},
            "markov_training_bases": sum(r.length for r in train),
            "improvement_bits_per_base": markov_bpb - model_bpb,
            "training_overlap_bases": overlap_bases(regions, train),
            "bits_by_position": profile,
            "last_train": last_record(records, "train"),
            "last_val": last_record(records, "val"),
            "plots": {k: str(p) for k, p in plots.items()},
        }
        text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
        plot_training_curves(records, markov_bpb, markov.order, curves)
        plot_bits_by_position(profile, markov_bpb, markov.order, by_position)
        staged_metrics.write_text(text)
    return metrics
