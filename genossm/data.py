"""Training data: held-out validation regions and random windows from token stores.

The split is decided once, from the stores' contig lengths and the config, and recorded in the
model directory. Training windows lie wholly inside training intervals, so no validation base is
ever sampled. Window ``i`` is drawn from its own random generator seeded by ``(seed, i)``: the
stream is the same for any number of DataLoader workers, and resuming at step ``s`` is starting
at index ``s × batch``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from genossm import alphabet
from genossm.errors import InputError
from genossm.store import TokenStore


@dataclass(frozen=True)
class Interval:
    """Half-open [start, end) on one contig of one store (index into the store list)."""
    store: int
    contig: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class SplitConfig:
    """Which bases are held out for validation; the union of the three is."""
    val_contigs: list[str] = field(default_factory=list)   # whole contigs, by name
    val_bed: str | None = None                             # BED file of regions
    val_fraction: float = 0.0                              # the last fraction of every contig

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class BedRecord:
    """One BED line: 0-based half-open [start, end), the optional name and strand ("." when
    absent), and the line number for error messages."""
    chrom: str
    start: int
    end: int
    name: str
    strand: str
    line: int


def read_bed(path) -> list[BedRecord]:
    """Every record of a BED file; blank, header, track and comment lines are skipped."""
    path = Path(path)
    regions = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read BED ({e})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) < 3:
            raise InputError(path, "a BED line needs chrom, start and end separated by tabs",
                             place=f"line {number}")
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise InputError(path, "start and end must be integers",
                             place=f"line {number}") from None
        if not 0 <= start < end:
            raise InputError(path, f"need 0 <= start < end, got {start}-{end}",
                             place=f"line {number}")
        name = fields[3] if len(fields) > 3 else ""
        strand = fields[5] if len(fields) > 5 else "."
        regions.append(BedRecord(fields[0], start, end, name, strand, number))
    return regions


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def split_regions(stores: list[TokenStore], split: SplitConfig
                  ) -> tuple[list[Interval], list[Interval]]:
    """(training intervals, validation intervals) over every contig of every store."""
    lengths = {}
    for i, store in enumerate(stores):
        for info in store.contigs:
            lengths.setdefault(info.name, []).append((i, info.length))
    unknown = [c for c in split.val_contigs if c not in lengths]
    if unknown:
        raise InputError(None, f"validation contig(s) not in any store: {', '.join(unknown)}")
    held: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for name in split.val_contigs:
        for i, length in lengths[name]:
            held.setdefault((i, name), []).append((0, length))
    if split.val_bed:
        for r in read_bed(split.val_bed):
            if r.chrom not in lengths:
                raise InputError(split.val_bed, f"contig {r.chrom!r} is not in any store",
                                 place=f"line {r.line}")
            for i, length in lengths[r.chrom]:
                if r.end > length:
                    raise InputError(split.val_bed, f"{r.chrom}:{r.start}-{r.end} runs past the "
                                     f"contig's end ({length})", place=f"line {r.line}")
                held.setdefault((i, r.chrom), []).append((r.start, r.end))
    train, val = [], []
    for name, places in lengths.items():
        for i, length in places:
            spans = held.get((i, name), [])
            if split.val_fraction:
                spans = spans + [(length - int(round(length * split.val_fraction)), length)]
            spans = _merge([(a, b) for a, b in spans if b > a])
            val += [Interval(i, name, a, b) for a, b in spans]
            cursor = 0
            for a, b in spans + [(length, length)]:
                if a > cursor:
                    train.append(Interval(i, name, cursor, a))
                cursor = max(cursor, b)
    return train, val


def describe_split(stores: list[TokenStore], train: list[Interval], val: list[Interval]) -> dict:
    """The split as plain JSON for the model directory."""
    return {
        "stores": [str(s.path) for s in stores],
        "train": [asdict(iv) for iv in train],
        "validation": [asdict(iv) for iv in val],
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

    Returns ``{"tokens": int64 [seq_len], "loss_mask": bool [seq_len]}``; the mask is False on
    N and padding, which are never targets.
    """

    def __init__(self, stores: list[TokenStore], intervals: list[Interval], seq_len: int, *,
                 num_samples: int, seed: int = 0, max_n_fraction: float = 0.1,
                 rc_augment: bool = True, use_reads: bool = True, max_tries: int = 1000):
        self.stores = stores
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
            raise InputError(None, f"no training interval is at least {self.seq_len} bases long "
                                   "and the stores hold no reads")
        self.p_reads = read_bases / total
        self.read_cum = np.cumsum([int(off[-1]) for _, off in self.read_pools])

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        for _ in range(self.max_tries):
            codes, valid, filled = self._draw(rng)
            n_frac = 1.0 - valid.sum() / filled  # padding after a short read does not count
            if n_frac <= self.max_n_fraction:
                if self.rc_augment and rng.random() < 0.5:
                    codes = alphabet.reverse_complement(codes)
                    valid = valid[::-1]
                return {"tokens": torch.from_numpy(codes.astype(np.int64)),
                        "loss_mask": torch.from_numpy(np.ascontiguousarray(valid))}
        raise InputError(None, f"no window with at most {self.max_n_fraction:.0%} N found in "
                               f"{self.max_tries} draws; lower seq_len or raise max_n_fraction")

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
