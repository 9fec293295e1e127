"""Training data: held-out validation regions and random windows from token stores.

The split is decided once, from the stores' contig lengths and the config, and recorded in the
model directory. Training windows lie wholly inside training intervals, so no validation base is
ever sampled. Window ``i`` is drawn from its own random generator seeded by ``(seed, i)``: the
stream is the same for any number of DataLoader workers, and resuming at step ``s`` is starting
at index ``s × batch`` (``StepBatches``). ``lm_batch`` turns a batch of windows into the inputs
and targets of the model's objective.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from genossm import alphabet
from genossm.errors import InputError
from genossm.regions import Region, check_inside, merge_spans, read_bed
from genossm.store import TokenStore


@dataclass
class SplitConfig:
    """Which bases are held out for validation; the union of the three is."""
    val_contigs: list[str] = field(default_factory=list)   # whole contigs, by name
    val_bed: str | None = None                             # BED file of regions
    val_fraction: float = 0.0                              # the last fraction of every contig

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def split_regions(stores: list[TokenStore], split: SplitConfig, *, source=None
                  ) -> tuple[list[Region], list[Region]]:
    """(training intervals, validation intervals) over every contig of every store
    (``source``: the config file the split comes from, for errors)."""
    lengths = {}
    for i, store in enumerate(stores):
        for info in store.contigs:
            lengths.setdefault(info.name, []).append((i, info.length))
    unknown = [c for c in split.val_contigs if c not in lengths]
    if unknown:
        raise InputError(source, f"split.val_contigs: {', '.join(unknown)} not in any store")
    held: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for name in split.val_contigs:
        for i, length in lengths[name]:
            held.setdefault((i, name), []).append((0, length))
    if split.val_bed:
        bed = read_bed(split.val_bed)
        check_inside(bed, {name: min(n for _, n in places) for name, places in lengths.items()},
                     "any store")
        for r in bed:
            for i, _ in lengths[r.contig]:
                held.setdefault((i, r.contig), []).append((r.start, r.end))
    train, val = [], []
    for name, places in lengths.items():
        for i, length in places:
            spans = held.get((i, name), [])
            if split.val_fraction:
                spans = spans + [(length - int(round(length * split.val_fraction)), length)]
            spans = merge_spans([(a, b) for a, b in spans if b > a])
            val += [Region(name, a, b, store=i) for a, b in spans]
            cursor = 0
            for a, b in spans + [(length, length)]:
                if a > cursor:
                    train.append(Region(name, cursor, a, store=i))
                cursor = max(cursor, b)
    return train, val


def describe_split(stores: list[TokenStore], train: list[Region], val: list[Region]) -> dict:
    """The split as plain JSON for the model directory."""
    return {
        "stores": [str(s.path) for s in stores],
        "train": [iv.interval_json() for iv in train],
        "validation": [iv.interval_json() for iv in val],
        "train_bases": sum(iv.length for iv in train),
        "validation_bases": sum(iv.length for iv in val),
    }


class WindowDataset(torch.utils.data.Dataset):
    """Item ``i``: a window of ``seq_len`` codes drawn by a generator seeded with (seed, i).

    A window comes from a training interval, chosen with probability proportional to the number
    of windows it holds (so contigs are weighted by length), at a uniform start; or, when the
    stores hold reads and ``use_reads``, from a read chosen with probability proportional to its
    length (a read shorter than ``seq_len`` is padded with N; a longer one is cropped). Windows
    with more than ``max_n_fraction`` N are redrawn. With ``rc_augment`` half of the windows are
    reverse-complemented.

    Returns ``{"tokens": uint8 [seq_len], "loss_mask": bool [seq_len]}``: the codes as the
    store holds them, an eighth of int64's bytes to collate, pin and copy to the device (a batch
    of 8 windows of 2^20 is 8 MiB, not 64); ``lm_batch`` widens them to int64 where the batch
    is used (benchmarks/store_read.py, BENCHMARKS.md "Store reads"). The mask is False on
    N and padding, which are never targets. ``source`` names where ``seq_len`` came from (the
    --config file or the option), for errors.
    """

    def __init__(self, stores: list[TokenStore], intervals: list[Region], seq_len: int, *,
                 num_samples: int, seed: int = 0, max_n_fraction: float = 0.1,
                 rc_augment: bool = True, use_reads: bool = True, max_tries: int = 1000,
                 source=None):
        self.stores = stores
        self.source = source
        self.seq_len = int(seq_len)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.max_n_fraction = max_n_fraction
        self.rc_augment = rc_augment
        self.max_tries = max_tries
        self.intervals = [iv for iv in intervals if iv.length >= self.seq_len]
        counts = np.array([iv.length - self.seq_len + 1 for iv in self.intervals], np.int64)
        self.window_cum = np.cumsum(counts)
        # reads: one pool per store, weighted by bases
        self.read_pools = []
        if use_reads:
            for i, store in enumerate(stores):
                if store.n_reads:
                    offsets = store.read_offsets()
                    self.read_pools.append((i, offsets))
        read_bases = sum(int(off[-1]) for _, off in self.read_pools)
        contig_windows = int(self.window_cum[-1]) if len(self.window_cum) else 0
        total = contig_windows + read_bases
        if total == 0:
            raise InputError(source, f"no training interval is at least seq_len "
                                     f"({self.seq_len}) bases long and the stores hold no reads")
        self.p_reads = read_bases / total
        self.read_cum = np.cumsum([int(off[-1]) for _, off in self.read_pools])

    def __len__(self) -> int:
        return self.num_samples

    @property
    def bases(self) -> int:
        """The bases the windows are drawn from: the intervals at least seq_len long, and the
        reads (when used); one pass over them is an epoch (TrainConfig.max_epochs)."""
        reads = int(self.read_cum[-1]) if len(self.read_cum) else 0
        return sum(iv.length for iv in self.intervals) + reads

    def __getitem__(self, index: int) -> dict:
        try:
            return self._item(index)
        except InputError as e:
            if torch.utils.data.get_worker_info() is None:
                raise
            raise _WorkerInputError(e.path, e.message, place=e.place) from None

    def _item(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        for _ in range(self.max_tries):
            codes, valid, filled = self._draw(rng)
            n_frac = 1.0 - valid.sum() / filled  # padding after a short read does not count
            if n_frac <= self.max_n_fraction:
                if self.rc_augment and rng.random() < 0.5:
                    codes = alphabet.reverse_complement(codes)
                    valid = valid[::-1]
                return {"tokens": torch.from_numpy(np.ascontiguousarray(codes)),
                        "loss_mask": torch.from_numpy(np.ascontiguousarray(valid))}
        raise InputError(self.source, f"no window with at most {self.max_n_fraction:.0%} N "
                                      f"found in {self.max_tries} draws; lower seq_len or "
                                      "raise max_n_fraction")

    def _draw(self, rng) -> tuple[np.ndarray, np.ndarray, int]:
        """(codes, target mask, number of real bases) of one candidate window."""
        if self.read_pools and rng.random() < self.p_reads:
            return self._draw_read(rng)
        k = int(rng.integers(self.window_cum[-1]))
        j = int(np.searchsorted(self.window_cum, k, side="right"))
        iv = self.intervals[j]
        start = iv.start + k - (int(self.window_cum[j - 1]) if j else 0)
        codes = self.stores[iv.store].codes(iv.contig, start, start + self.seq_len)
        return codes, codes != alphabet.N, self.seq_len

    def _draw_read(self, rng) -> tuple[np.ndarray, np.ndarray, int]:
        k = int(rng.integers(self.read_cum[-1]))
        pool = int(np.searchsorted(self.read_cum, k, side="right"))
        store_index, offsets = self.read_pools[pool]
        base = k - (int(self.read_cum[pool - 1]) if pool else 0)
        read = int(np.searchsorted(offsets, base, side="right")) - 1
        codes = self.stores[store_index].read_codes(read)
        if codes.size > self.seq_len:
            start = int(rng.integers(codes.size - self.seq_len + 1))
            codes = codes[start:start + self.seq_len]
        out = np.full(self.seq_len, alphabet.N, dtype=np.uint8)  # padding is N: no target
        out[:codes.size] = codes
        return out, out != alphabet.N, max(1, codes.size)


class _WorkerInputError(InputError):
    """An InputError in a DataLoader worker process. The DataLoader raises a worker's error
    again in the main process as ``type(error)(the worker's traceback as text)``; this type
    turns that text back into the error's one line (the traceback's last)."""

    def __init__(self, path, message: str | None = None, *, place: str | None = None):
        if message is None and place is None:          # raised again from the traceback text
            last = str(path).rstrip().splitlines()[-1]
            path, message = None, last.split(": ", 1)[-1]
        super().__init__(path, message, place=place)


# --- batches of a step ----------------------------------------------------------------------
class StepBatches(torch.utils.data.Sampler):
    """Dataset indices of every micro-batch from ``start_step`` on, for one rank: micro-batch m
    of step s, row r is index ((s·accum + m)·world + rank)·batch + r (``cfg``: the run's
    TrainConfig, for max_steps, grad_accum and batch_size; max_steps None, not yet fitted to the
    time budget: no end, the training loop stops)."""

    def __init__(self, cfg, start_step: int, rank: int, world: int):
        self.cfg, self.start_step, self.rank, self.world = cfg, start_step, rank, world

    def __iter__(self):
        cfg = self.cfg
        steps = itertools.count(self.start_step) if cfg.max_steps is None else \
            range(self.start_step, cfg.max_steps)
        for step in steps:
            for micro in range(cfg.grad_accum):
                first = ((step * cfg.grad_accum + micro) * self.world + self.rank) * \
                    cfg.batch_size
                yield list(range(first, first + cfg.batch_size))

    def __len__(self):
        return (self.cfg.max_steps - self.start_step) * self.cfg.grad_accum


def mlm_inputs(tokens: torch.Tensor, mask: torch.Tensor, probability: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs with a random ``probability`` of the target positions set to MASK, the masked
    positions); a row with no masked position gets its first target masked."""
    draw = torch.rand(tokens.shape, generator=generator).to(mask.device) < probability
    chosen = draw & mask
    empty = ~chosen.any(dim=-1, keepdim=True)
    chosen |= empty & mask & (mask.cumsum(-1) == 1)
    inputs = torch.where(chosen, torch.full_like(tokens, alphabet.MASK), tokens)
    return inputs, chosen


def lm_batch(tokens: torch.Tensor, mask: torch.Tensor, objective: str, mlm_probability: float,
             generator: torch.Generator | None = None):
    """(inputs, targets, target weights) of a batch of windows (``tokens``: codes of any
    integer type, e.g. WindowDataset's uint8; inputs and targets are int64). clm: inputs are
    tokens 0..L-2 and logits t predict token t+1; mlm: masked tokens are predicted where they
    stand."""
    tokens = tokens.long()
    if objective == "clm":
        return tokens[:, :-1], tokens[:, 1:], mask[:, 1:]
    inputs, chosen = mlm_inputs(tokens, mask, mlm_probability, generator)
    return inputs, tokens, chosen
