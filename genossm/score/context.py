"""Context mode of ``genossm score`` (``--left-context C``, causal models): each variant is
scored given the whole upstream sequence that a stream over the contig has read, in place of a
window's left flank.

What is summed. For a record at 0-based position p with a REF of r bases, on the forward strand
and per ALT allele:

    LLR = ln P(ALT + F | U) - ln P(REF + F | U)

U is the upstream context, the reference from the start of the variant's stream (below) up to
p. F is the right flank: the W - W//2 reference bases after the REF span (``--window W``, as in
windowed mode; N past the contig end). An indel's ALT and REF differ in length; F is the same
reference bases after REF for both. On the reverse strand the same is computed on the reverse
complement of the contig. There the variant starts at p' = L - p - r (L the contig's length),
the upstream is the reverse complement of what follows the REF span, and F is the reverse
complement of the W//2 bases before p: the terms windowed mode sums on that strand. Scores are
averaged over the two strands, as windowed mode averages them for models that are not
RC-equivariant (a causal model never is). With an unbounded C the summed terms are exactly
those of windowed mode; only the context they are conditioned on differs.

Where streams start. With C a number, a variant starting at p (stream coordinates: p on the
forward strand, p' on the reverse) is scored on the stream that starts at the grid position
g = (p // C - 1) * C. It therefore sees between C and 2C upstream bases, and one stream serves
every variant with p in [g + C, g + 2C). When g <= 0 (variants within 2C of the strand's start),
and with C = ``contig``, the stream starts at the contig's start (on the reverse strand, its
end). A stream that starts at the contig's start reads one N before the first base, so that
the first base is predicted as well (windowed mode pads with N the same way). The grid is
anchored at each strand's start, so a variant's score depends only on the variant, the
reference and C, never on the other records of the file or on how the file was split into
parts. Grid cells without variants are never read. Records at the same position, on one line
(multi-allelic) or on several, share one state (on the reverse strand, those with a REF of the
same length: the variant starts at p' there).

Streams, snapshots and branches. A stream runs ``model.step`` piece by piece. Every cut between
pieces falls at a multiple of the model's scan chunk (``chunk_size``) from the stream's start.
The chunked scan gives bit-for-bit the same numbers however a stream is cut at chunk multiples,
where a cut anywhere else changes the last bits of every later term (about 1e-5 over a flank
of 2,048 bases). Nearby variants can then share one pass without one variant's cuts changing
another variant's numbers. What is left is the rounding of single float32 terms where the
CPU's matrix kernels treat a batch of another shape differently (a row alone, say): scores
agree to 1e-6 whatever else is in the file, not bit for bit. The state is taken (a
snapshot) at a = the last chunk multiple <= p. Each ALT branch starts from that snapshot and
reads the reference from a to p (fewer than ``chunk_size`` bases), then the ALT allele and F;
its log-probabilities are summed from p on. The REF terms come from the stream itself, which
reads REF and F anyway, so only ALT branches run beyond the stream. Branches run in batches of
``batch_size`` rows (on the GPU with ``--device cuda``), padded at the end, which changes
nothing before the padding. The batched streams of several grid cells run the same way. On a
GPU, whether cuts at chunk multiples are exact depends on the scan kernel. On the CPU (the
``torch`` and ``ref`` scan backends) they are; tests/test_score_context.py checks the 1e-6.

Distances. ``GENOSSM_COS`` and ``GENOSSM_L2`` compare the mean final hidden state over the ALT
branch's ALT allele + F with the mean over the stream's REF allele + F at the same variant
(windowed mode averages over the whole window; here the upstream, shared and long, is left
out). Both are averaged over the strands like the LLR.

Memory. Records are read in passes: at most ``RECORDS_PER_PASS`` consecutive records of one
contig (fewer for a model whose state is large), never splitting a position. A pass is scored
and written out before the next one is read. Between passes only checkpoints are held: states
at multiples of a spacing K along each stream that a later pass may continue from. The forward
stream continues from the last snapshot. The reverse strand runs backwards through the file's
order, so its later passes restart from the checkpoint upstream of them (on the reverse strand)
rather than from the stream's start. With ``contig`` that is at most L / K states, K chosen so
they fit in ``CHECKPOINT_BYTES``. Memory therefore does not grow with the call set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from genossm import alphabet
from genossm.model import GenoSSM, ModelState
from genossm.reference import Reference
from genossm.score.causal import TOKENS_PER_CALL
from genossm.score.haplotypes import HaplotypeScores, token_tensor
from genossm.score.scorer import fill_scores
from genossm.score.variants import ContigResolver, Record

CONTIG = "contig"                 # --left-context contig: one stream from the contig's start
RECORDS_PER_PASS = 4096           # records read, scored and written together
SNAPSHOT_BYTES = 1 << 29          # states held for the sites of one pass, one strand
CHECKPOINT_BYTES = 1 << 29        # checkpoints held along one stream
CHECKPOINT_SPACING = 1 << 16      # the least spacing K of checkpoints along a stream


def stream_start(start: int, left_context: int | str) -> int:
    """The position of the first token of the stream that serves a variant starting at
    ``start`` (coordinates of its strand): the grid position (start // C - 1) * C when it is
    positive, else -1, an N before the strand's first base."""
    if left_context == CONTIG:
        return -1
    g = (start // left_context - 1) * left_context
    return g if g > 0 else -1


def describe(left_context: int | str) -> str:
    """How much upstream context a variant is scored with, in words."""
    if left_context == CONTIG:
        return "the whole contig upstream of the variant (one stream from the contig start)"
    return (f"{left_context:,} to {2 * left_context - 1:,} upstream bases (streams start at "
            f"multiples of {left_context:,}; fewer within {2 * left_context:,} of the start)")


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class _Interval:
    """A span of a stream whose REF terms are summed: [start, end), stream coordinates."""
    start: int
    end: int
    logp: float = 0.0
    hidden: torch.Tensor | None = None      # (width,) float64 sum of final hidden states


@dataclass
class _Site:
    """A variant start on one strand: the stream it is scored on, its snapshot and the REF
    spans (one per REF length) the stream sums for it."""
    contig: str
    start: int
    origin: int                             # the stream's first position
    snap: int                               # a: the last chunk multiple from origin <= start
    state: ModelState | None = None         # at snap (None: the stream's initial state)
    intervals: dict[int, _Interval] = field(default_factory=dict)   # REF length -> span


@dataclass
class _Branch:
    """One ALT allele's branch: from its site's snapshot, reference up to the site, then the
    allele and the flank (``tail``)."""
    site: _Site
    tail: np.ndarray
    logp: float = 0.0
    hidden: torch.Tensor | None = None


@dataclass
class _Job:
    """One stream's run in a pass: from ``begin`` (its start, or a checkpoint) through
    ``end``, taking snapshots and checkpoints and summing REF spans on the way."""
    key: tuple                              # (contig, rc, origin)
    begin: int
    state: ModelState | None
    end: int = 0
    snaps: dict[int, list[_Site]] = field(default_factory=dict)
    intervals: list[_Interval] = field(default_factory=list)
    keep: set[int] = field(default_factory=set)


class _Strand:
    """The reference of one contig on one strand, in that strand's coordinates."""

    def __init__(self, reference: Reference, contig: str, rc: bool):
        self.reference, self.contig, self.rc = reference, contig, rc
        self.length = reference.lengths[contig]

    def codes(self, lo: int, hi: int) -> np.ndarray:
        """Codes of [lo, hi) on this strand (N outside the contig)."""
        if hi <= lo:
            return np.zeros(0, np.uint8)
        if not self.rc:
            return self.reference.codes(self.contig, lo, hi)
        return alphabet.reverse_complement(
            self.reference.codes(self.contig, self.length - hi, self.length - lo))


# --------------------------------------------------------------------------- the scorer


class ContextScorer:
    """Scores annotated records in context mode (see the module docstring) and gives them
    back, scored, in input order."""

    def __init__(self, model: GenoSSM, reference: Reference, resolver: ContigResolver, *,
                 left_context: int | str, batch_size: int, rc_average: bool = True,
                 piece_length: int | None = None):
        self.model = model
        self.reference = reference
        self.resolver = resolver
        self.left_context = left_context
        self.batch_size = batch_size
        self.strands = (False, True) if rc_average else (False,)
        self.chunk = model.config.chunk_size
        self.piece_length = piece_length
        self.device = model.embedding.weight.device
        self.state_bytes = _state_bytes(model.initial_state(1))
        self.pass_records = max(1, min(RECORDS_PER_PASS, SNAPSHOT_BYTES // self.state_bytes))
        self._checkpoints: dict[tuple, dict[int, ModelState]] = {}
        self._chrom: str | None = None

    def __call__(self, records: Iterable[Record]) -> Iterator[Record]:
        for batch in self._passes(records):
            if batch[0].chrom != self._chrom:      # another contig: nothing carries over
                self._checkpoints.clear()
                self._chrom = batch[0].chrom
            todo = [r for r in batch if r.alts_to_score()]
            if todo:
                self._score_pass(todo)
                self._prune(todo)
            yield from batch

    @torch.inference_mode()
    def _score_pass(self, records: list[Record]) -> None:
        per_strand = [self._score_strand(records, rc) for rc in self.strands]
        for i, record in enumerate(records):
            fill_scores(record, [strand[i] for strand in per_strand])

    def _passes(self, records: Iterable[Record]) -> Iterator[list[Record]]:
        """Consecutive records of one VCF contig, at most ``pass_records`` unless a position
        goes on (records at one position stay together)."""
        batch: list[Record] = []
        for record in records:
            if batch and (record.chrom != batch[-1].chrom or (
                    len(batch) >= self.pass_records and record.pos != batch[-1].pos)):
                yield batch
                batch = []
            batch.append(record)
        if batch:
            yield batch

    # --- one strand of one pass -------------------------------------------------------------

    def _score_strand(self, records: list[Record], rc: bool) -> list[HaplotypeScores]:
        sites: dict[tuple[str, int], _Site] = {}
        owned: list[tuple[_Site, _Interval, list[_Branch], list[int]]] = []
        for record in records:
            contig = self.resolver(record.chrom)[0]
            strand = self._strand(contig, rc)
            p, r = record.pos - 1, len(record.ref)
            start = strand.length - p - r if rc else p
            flank = (alphabet.reverse_complement(record.left_flank) if rc
                     else record.right_flank)
            site = sites.get((contig, start))
            if site is None:
                origin = stream_start(start, self.left_context)
                snap = origin + (start - origin) // self.chunk * self.chunk
                site = sites[(contig, start)] = _Site(contig, start, origin, snap)
            interval = site.intervals.setdefault(r, _Interval(start, start + r + len(flank)))
            branches, lengths = [], []
            for alt in record.alts_to_score():
                codes = record.allele_codes(alt + 1)
                if rc:
                    codes = alphabet.reverse_complement(codes)
                branches.append(_Branch(site, np.concatenate([codes, flank])))
                lengths.append(len(codes) + len(flank))
            owned.append((site, interval, branches, lengths))
        self._run_streams(list(sites.values()), rc)
        self._run_branches([b for _, _, branches, _ in owned for b in branches], rc)
        out = []
        for _site, interval, branches, lengths in owned:
            ref_mean = interval.hidden / (interval.end - interval.start)
            means = [ref_mean] + [b.hidden / n for b, n in zip(branches, lengths, strict=True)]
            out.append(HaplotypeScores([b.logp - interval.logp for b in branches],
                                       torch.stack(means)))
        return out

    def _strand(self, contig: str, rc: bool) -> _Strand:
        return _Strand(self.reference, contig, rc)

    def _spacing(self, length: int) -> int:
        """K: checkpoint spacing along a stream of a contig of ``length`` bases, a multiple of
        the scan chunk, so that a whole contig's checkpoints fit in CHECKPOINT_BYTES."""
        k = max(CHECKPOINT_SPACING, math.ceil(length * self.state_bytes / CHECKPOINT_BYTES))
        return math.ceil(k / self.chunk) * self.chunk

    # --- streams --------------------------------------------------------------------------------

    def _run_streams(self, sites: list[_Site], rc: bool) -> None:
        """Run every stream the sites need, from the checkpoint nearest below their
        snapshots (or the stream's start): the sites' states and REF sums filled in."""
        jobs: dict[tuple, _Job] = {}
        for site in sites:
            key = (site.contig, rc, site.origin)
            job = jobs.get(key)
            if job is None:
                job = jobs[key] = _Job(key, site.origin, None)
            job.snaps.setdefault(site.snap, []).append(site)
            job.intervals.extend(site.intervals.values())
        for job in jobs.values():
            job.end = max(i.end for i in job.intervals)
            first = min(job.snaps)
            saved = self._checkpoints.get(job.key, {})
            below = [c for c in saved if c <= first]
            if below:
                job.begin = max(below)
                job.state = saved[job.begin]
            origin = job.key[2]
            spacing = self._spacing(self._strand(job.key[0], rc).length)
            step = (job.begin - origin) // spacing + 1
            job.keep = set(range(origin + step * spacing, job.end, spacing))
            job.keep.add(max(job.snaps))          # where the next pass's forward stream goes on
        ordered = sorted(jobs.values(), key=lambda j: j.end - j.begin)
        for at in range(0, len(ordered), self.batch_size):
            self._run_jobs(ordered[at:at + self.batch_size], rc)

    def _run_jobs(self, jobs: list[_Job], rc: bool) -> None:
        """Run streams side by side as the rows of one batch, cut at every snapshot and
        checkpoint (all multiples of the chunk from each row's start); a row leaves the batch
        once it has reached its end."""
        strands = [self._strand(job.key[0], rc) for job in jobs]
        total = max(job.end - job.begin for job in jobs)
        cuts = {c - job.begin for job in jobs for c in (*job.snaps, *job.keep)}
        for job in jobs:
            for site in job.snaps.get(job.begin, []):
                site.state = job.state
        spans = [self._spans(job) for job in jobs]
        active = list(range(len(jobs)))
        state = self._stacked([job.state for job in jobs])
        at = 0
        for stop in self._piece_stops(cuts, total, len(jobs)):
            going = [k for k, i in enumerate(active) if jobs[i].end - jobs[i].begin > at]
            if len(going) < len(active):
                state = state.index_select(going)
                active = [active[k] for k in going]
            rows = [strands[i].codes(jobs[i].begin + at, min(jobs[i].begin + stop, jobs[i].end))
                    for i in active]
            piece = self.model.step(self._padded(rows, stop - at), state)
            logp = piece.token_logp
            first = [k for k, i in enumerate(active) if jobs[i].state is None]
            if at == 0 and first:   # nothing predicts a stream's first token (NaN)
                logp = logp.clone()
                logp[first, 0] = 0.0
            for k, i in enumerate(active):
                _add_spans(spans[i], logp[k], piece.hidden[k], at)
            state = piece.state
            for k, i in enumerate(active):
                job, position = jobs[i], jobs[i].begin + stop
                sites = job.snaps.get(position, [])
                if sites or position in job.keep:
                    row = state.index_select([k])
                    for site in sites:
                        site.state = row
                    if position in job.keep:
                        self._checkpoints.setdefault(job.key, {})[position] = row
            at = stop
        for job, (_, _, logp, hidden) in zip(jobs, spans, strict=True):
            for k, interval in enumerate(job.intervals):
                interval.logp = float(logp[k])
                interval.hidden = hidden[k]

    def _spans(self, job: _Job) -> tuple[torch.Tensor, ...]:
        """(starts, ends) of a job's REF spans in its columns, and their sums so far."""
        n = len(job.intervals)
        return (torch.as_tensor([i.start - job.begin for i in job.intervals], device=self.device),
                torch.as_tensor([i.end - job.begin for i in job.intervals], device=self.device),
                torch.zeros(n, dtype=torch.float64, device=self.device),
                torch.zeros(n, self._width(), dtype=torch.float64, device=self.device))

    # --- branches -------------------------------------------------------------------------------

    def _run_branches(self, branches: list[_Branch], rc: bool) -> None:
        """Run every ALT branch from its site's snapshot, ``batch_size`` rows at a time (sorted
        by length, so that little is padding), summing from the variant on."""
        replay = {}
        for b in branches:
            site = b.site
            if id(site) not in replay:
                replay[id(site)] = self._strand(site.contig, rc).codes(site.snap, site.start)
        rows = sorted(((np.concatenate([replay[id(b.site)], b.tail]), b) for b in branches),
                      key=lambda rb: len(rb[0]))
        for at in range(0, len(rows), self.batch_size):
            batch = rows[at:at + self.batch_size]
            codes = [c for c, _ in batch]
            total = max(len(c) for c in codes)
            lengths = torch.as_tensor([len(c) for c in codes], device=self.device)
            starts = torch.as_tensor([b.site.start - b.site.snap for _, b in batch],
                                     device=self.device)
            tokens = self._padded(codes, total)
            state = self._stacked([b.site.state for _, b in batch])
            logp = torch.zeros(len(batch), dtype=torch.float64, device=self.device)
            hidden = torch.zeros(len(batch), self._width(), dtype=torch.float64,
                                 device=self.device)
            begin = 0
            for stop in self._piece_stops(set(), total, len(batch)):
                piece = self.model.step(tokens[:, begin:stop], state)
                position = torch.arange(begin, stop, device=self.device)[None]
                summed = (position >= starts[:, None]) & (position < lengths[:, None])
                logp += torch.where(summed, piece.token_logp.double(), 0.0).sum(1)
                hidden += (piece.hidden.double() * summed[..., None]).sum(1)
                state, begin = piece.state, stop
            for k, (_, b) in enumerate(batch):
                b.logp, b.hidden = float(logp[k]), hidden[k]

    # --- helpers --------------------------------------------------------------------------------

    def _piece_stops(self, cuts: set[int], total: int, rows: int) -> list[int]:
        """Where the pieces of a run of ``total`` columns end: at every cut, and at most a
        piece length apart (a multiple of the chunk, so every cut stays on the chunk grid)."""
        chunk = self.chunk
        if self.piece_length:
            limit = max(chunk, math.ceil(self.piece_length / chunk) * chunk)
        else:
            limit = max(chunk, TOKENS_PER_CALL // rows // chunk * chunk)
        stops, at = [], 0
        for cut in sorted(c for c in cuts if 0 < c < total) + [total]:
            while cut - at > limit:
                at += limit
                stops.append(at)
            if cut > at:
                stops.append(cut)
                at = cut
        return stops

    def _padded(self, rows: list[np.ndarray], total: int) -> torch.Tensor:
        """Rows of codes padded at the end with N to ``total`` columns, as token ids."""
        out = np.full((len(rows), total), alphabet.N, np.uint8)
        for row, codes in zip(out, rows, strict=True):
            row[:len(codes)] = codes
        return token_tensor(out, self.device)

    def _stacked(self, states: list[ModelState | None]) -> ModelState:
        """One batch state from one-row states; None is a stream's initial state (its
        next-token prediction NaN: nothing predicts a stream's first token)."""
        if all(s is None for s in states):
            return self.model.initial_state(len(states), self.device)
        blank = self.model.initial_state(1, self.device)
        blank.next_logp = torch.full((1, self.model.config.vocab_size), math.nan,
                                     device=self.device)
        rows = [blank if s is None else s for s in states]
        layers = range(len(blank.ssm))
        return ModelState([torch.cat([s.conv[i] for s in rows]) for i in layers],
                          [torch.cat([s.ssm[i] for s in rows]) for i in layers],
                          rows[0].offset, torch.cat([s.next_logp for s in rows]))

    def _width(self) -> int:
        return self.model.norm_f.weight.shape[0]

    def _prune(self, records: list[Record]) -> None:
        """Drop the checkpoints no later record of this contig can start from: later records
        start after the last one of this pass (forward) and so end before its start (reverse
        strand)."""
        last = max(r.pos - 1 for r in records)
        contig = self.resolver(records[-1].chrom)[0]
        length = self.reference.lengths[contig]
        for key in list(self._checkpoints):
            _, rc, origin = key
            saved = self._checkpoints[key]
            if not rc:
                if origin < stream_start(last + 1, self.left_context):
                    del self._checkpoints[key]
                    continue
                below = [c for c in saved if c <= last + 1]
                for c in below:
                    if c != max(below):
                        del saved[c]
            else:
                bound = length - last - 2
                if origin > stream_start(bound, self.left_context):
                    del self._checkpoints[key]
                    continue
                for c in [c for c in saved if c > bound]:
                    del saved[c]


def _add_spans(spans: tuple[torch.Tensor, ...], logp: torch.Tensor, hidden: torch.Tensor,
               at: int) -> None:
    """Add one row's piece (its columns [at, at + length)) to the row's REF span sums."""
    starts, ends, logp_sums, hidden_sums = spans
    length = logp.shape[0]
    lo = (starts - at).clamp(0, length)
    hi = torch.maximum((ends - at).clamp(0, length), lo)
    inside = (hi > lo).nonzero()[:, 0]
    if len(inside) == 0:
        return
    lo, hi = lo[inside], hi[inside]
    cum = torch.cat([logp.new_zeros(1, dtype=torch.float64), logp.double().cumsum(0)])
    logp_sums[inside] += cum[hi] - cum[lo]
    cum = torch.cat([hidden.new_zeros(1, hidden.shape[1], dtype=torch.float64),
                     hidden.double().cumsum(0)])
    hidden_sums[inside] += cum[hi] - cum[lo]


def _state_bytes(state: ModelState) -> int:
    """Bytes of a one-row state (and its next-token prediction)."""
    tensors = [*state.conv, *state.ssm]
    return sum(t.numel() * t.element_size() for t in tensors) + 64
