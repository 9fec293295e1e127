"""``genossm embed``: regions of a FASTA -> a model's hidden states, pooled and per base.

Regions come from a BED file (chrom, start, end, optional name, score, strand) or, without one,
are the FASTA's records, each whole. A region on strand ``-`` is embedded as the sequence on that
strand: the reverse complement of [start, end), its per-base rows in that strand's 5'->3' order.

Causal models are streamed over each region in pieces of ``chunk_length`` bases, carrying the
model state and fetching the FASTA piece by piece, so memory does not grow with the region's
length; the result equals one full pass (the model's streaming contract). Non-causal models
(bidirectional, rc_equivariant) read a region right to left too and take it in one pass, up to
``max_length`` bases, and not beyond the length the model was trained on unless
``beyond_trained_length``. With ``rc_average`` the other strand is run as well (streamed from
the region's far end) and the two are averaged position by position; the pooled vector is the
mean of the two strands' means. An rc_equivariant model already sees both strands: its vector
is the strand-averaged embedding that PlantCaduceus documents (forward half plus the
channel-flipped reverse half, halved: ``genossm.model.strand_average``), or with
``strand_halves`` the raw 2·d_model hidden states (Caduceus's layout); ``rc_average`` is then
skipped with a warning.

With context parallelism (``context_parallel`` R, under torchrun with R processes) each region
(each strand of it) is read in one pass split across the ranks, causal or not, each holding a
contiguous shard (ops/context_parallel.py); rank 0 receives the shards' hidden states in order
(``Dist.gather_shards``), one shard at a time, and writes them as one process would. A region
too short to split is read by rank 0 alone.

Output, a Zarr v3 group written under a temporary name and renamed when complete (claimed first:
fileio.claim_outputs; ``EMBEDDINGS`` recognises one that genossm wrote)::

    OUT.zarr/
      attrs: genossm = {format: 1, kind: "embeddings", model, model_config, layer, pooling: "mean",
                        rc_average, strand_halves, per_base, width, fasta, bed,
                        created_by}   (written last)
      regions/chrom, regions/name, regions/strand   string [n_regions] (strand "+", "-" or ".")
      regions/start, regions/end                    int64 [n_regions] (0-based, half-open)
      pooled              float32 [n_regions, width]   mean over the region's bases (N included)
      per_base            float32 [total bases, width] (--per-base) regions one after another
      per_base_offsets    int64 [n_regions + 1]        (--per-base) region i is rows
                                                       per_base_offsets[i]:per_base_offsets[i+1]

``width`` is d_model, or 2·d_model with ``strand_halves``; ``layer`` is the resolved index
into the residual stream (0 = embedding output, n_layer = the final normalised output).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from genossm import __version__, alphabet
from genossm.distributed import Dist, check_context_parallel, shard_bounds
from genossm.errors import InputError
from genossm.fileio import OutputKind, StagedOutputs, claim_outputs
from genossm.model import GenoSSM, strand_average
from genossm.reference import Reference
from genossm.regions import STRANDS, Region, check_inside, read_bed
from genossm.runtime import check_window, open_model

log = logging.getLogger("genossm.embed")

FORMAT_VERSION = 1
DEFAULT_CHUNK_LENGTH = 1 << 16
DEFAULT_MAX_LENGTH = 1 << 20
CHUNK_BYTES = 4 << 20      # target size of one Zarr chunk of per-base or pooled rows
KIND = "embeddings"


def is_embeddings(path) -> bool:
    """Whether ``path`` is an embeddings group genossm wrote: its root zarr.json carries the
    ``genossm`` attribute with kind "embeddings"."""
    try:
        attrs = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
        return attrs.get("genossm", {}).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


EMBEDDINGS = OutputKind("a genossm embeddings group", is_embeddings)


# --------------------------------------------------------------------------- regions


def bed_regions(bed, reference: Reference) -> list[Region]:
    """The BED's regions, each checked against the reference's contigs."""
    regions = read_bed(bed)
    for r in regions:
        if r.strand not in STRANDS:
            raise r.error(f"strand must be +, - or ., got {r.strand!r}")
    check_inside(regions, reference.lengths, reference.name)
    if not regions:
        raise InputError(bed, "no regions")
    return regions


# --------------------------------------------------------------------------- the model pass


class Embedder:
    """Hidden states of one layer over regions of a reference, piece by piece (with context
    parallelism, ``ranks``: shard by shard, on rank 0)."""

    def __init__(self, model: GenoSSM, reference: Reference, *, layer: int,
                 chunk_length: int, strand_halves: bool = False, ranks: Dist | None = None):
        self.model = model
        self.ranks = Dist(model.embedding.weight.device) if ranks is None else ranks
        self.reference = reference
        self.layer = layer
        self.chunk_length = chunk_length
        self.streaming = model.config.causal
        self.device = model.embedding.weight.device
        # an rc_equivariant model's two strand halves, or their average
        self.halves = model.config.rc_equivariant and strand_halves
        self.averaged = model.config.rc_equivariant and not strand_halves
        self.width = model.config.d_model * (2 if self.halves else 1)

    def split(self, length: int) -> bool:
        """Whether a pass over ``length`` bases is split across the ranks."""
        return self.ranks.splits(length, self.model.config.d_conv - 1)

    def pieces(self, length: int, mirrored: bool) -> list[tuple[int, int]]:
        """[lo, hi) pieces of a pass over ``length`` bases (split across the ranks: their
        shards). Mirrored pieces put the short one first, so that piece k of a mirrored pass
        covers the positions of piece -1-k of a plain pass read from the other end."""
        if self.split(length):
            cuts = shard_bounds(length, self.ranks.context)
        else:
            step = self.chunk_length if self.streaming else length
            cuts = [*range(0, length, step), length]
        if mirrored:
            cuts = [length - c for c in reversed(cuts)]
        return list(zip(cuts[:-1], cuts[1:], strict=False))

    def run(self, region: Region, reverse: bool, mirrored: bool = False
            ) -> Iterator[torch.Tensor]:
        """(n, width) hidden states of consecutive pieces of the region's sequence on one
        strand: forward, or (``reverse``) the reverse complement of [start, end). A causal
        model streams the pieces (the model's one streaming path); any other model reads the
        region in one piece. Split across the ranks, each rank runs its shard, and rank 0
        yields every shard's in order (the other ranks nothing); a region too short to split,
        rank 0 alone reads."""
        pieces = self.pieces(region.length, mirrored)
        if self.split(region.length):
            lo, hi = pieces[self.ranks.shard]
            h = self.model.hidden_states(self.tokens(region, lo, hi, reverse), self.layer,
                                         context_group=self.ranks.context_group)[0]
            yield from self.ranks.gather_shards(h, [b - a for a, b in pieces])
            return
        if not self.ranks.main:
            return
        tokens = (self.tokens(region, lo, hi, reverse) for lo, hi in pieces)
        if not self.streaming:
            for piece in tokens:
                h = self.model.hidden_states(piece, self.layer)[0]
                yield strand_average(h) if self.averaged else h
            return
        for piece in self.model.stream(tokens, layer=self.layer):
            yield piece.hidden[0]

    def tokens(self, region: Region, lo: int, hi: int, reverse: bool) -> torch.Tensor:
        """(1, hi - lo) tokens of bases [lo, hi) of the region's pass on one strand."""
        if reverse:
            codes = alphabet.reverse_complement(
                self.reference.codes(region.contig, region.end - hi, region.end - lo))
        else:
            codes = self.reference.codes(region.contig, region.start + lo, region.start + hi)
        return torch.from_numpy(codes.astype(np.int64))[None].to(self.device)


class PieceStack:
    """Pieces of per-base rows pushed in order and popped last-first, in constant memory: all
    but the newest wait in an unlinked temporary file."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.file = None
        self.sizes: list[int] = []   # bytes of each piece in the file, in order
        self.used = 0                # their sum: where the next piece goes
        self.top: np.ndarray | None = None

    def push(self, rows: np.ndarray) -> None:
        if self.top is not None:
            if self.file is None:
                self.file = tempfile.TemporaryFile(dir=self.directory, prefix=".genossm-embed-")
            self.file.seek(self.used)
            self.file.write(self.top.tobytes())
            self.sizes.append(self.top.nbytes)
            self.used += self.top.nbytes
        self.top = np.ascontiguousarray(rows)

    def pop(self, width: int) -> np.ndarray:
        if self.top is not None:
            rows, self.top = self.top, None
            return rows
        size = self.sizes.pop()
        self.used -= size
        self.file.flush()
        data = os.pread(self.file.fileno(), size, self.used)
        return np.frombuffer(data, dtype=np.float32).reshape(-1, width)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class RowWriter:
    """Appends rows to a pre-sized 2-D Zarr array through a one-chunk buffer, so that every
    write covers whole chunks however the rows arrive."""

    def __init__(self, array):
        self.array = array
        self.buffer = np.empty((array.chunks[0], array.shape[1]), dtype=np.float32)
        self.filled = 0
        self.written = 0

    def append(self, rows: np.ndarray) -> None:
        while len(rows):
            take = min(len(rows), len(self.buffer) - self.filled)
            self.buffer[self.filled:self.filled + take] = rows[:take]
            self.filled += take
            rows = rows[take:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if self.filled:
            self.array[self.written:self.written + self.filled] = self.buffer[:self.filled]
            self.written += self.filled
            self.filled = 0


def _as_rows(hidden: torch.Tensor) -> np.ndarray:
    return hidden.float().cpu().numpy()


def embed_region(embedder: Embedder, region: Region, *, rc_average: bool,
                 per_base: RowWriter | None, stack: PieceStack | None, bar: tqdm) -> np.ndarray:
    """The region's pooled vector (float64); its per-base rows go to ``per_base``.

    With ``rc_average`` the other strand runs first, in mirrored pieces, so that each piece of
    the region's own strand meets the other strand's piece over the same bases (popped from
    ``stack``, flipped to this strand's order)."""
    reverse = region.strand == "-"
    means = []
    if rc_average:
        total = torch.zeros(embedder.width, dtype=torch.float64, device=embedder.device)
        for hidden in embedder.run(region, not reverse, mirrored=True):
            total += hidden.sum(0, dtype=torch.float64)
            if per_base is not None:
                stack.push(_as_rows(hidden))
            bar.update(len(hidden))
        means.append(total / region.length)
    total = torch.zeros(embedder.width, dtype=torch.float64, device=embedder.device)
    for hidden in embedder.run(region, reverse):
        total += hidden.sum(0, dtype=torch.float64)
        if per_base is not None:
            rows = _as_rows(hidden)
            if rc_average:
                rows = 0.5 * (rows + stack.pop(embedder.width)[::-1])
            per_base.append(rows)
        bar.update(len(hidden))
    means.append(total / region.length)
    return (sum(means) / len(means)).cpu().numpy()


# --------------------------------------------------------------------------- the command


def _chunk_rows(width: int, count: int) -> int:
    return max(1, min(count, CHUNK_BYTES // (4 * width)))


def _write_regions(group, regions: list[Region]) -> None:
    g = group.create_group("regions")
    chunks = (_chunk_rows(1, len(regions)),)
    for field, attribute in (("chrom", "contig"), ("name", "name"), ("strand", "strand")):
        values = np.array([getattr(r, attribute) for r in regions],
                          dtype=np.dtypes.StringDType())
        g.create_array(field, shape=values.shape, dtype=str, chunks=chunks)[:] = values
    for field in ("start", "end"):
        values = np.array([getattr(r, field) for r in regions], dtype=np.int64)
        g.create_array(field, shape=values.shape, dtype=np.int64, chunks=chunks)[:] = values


def embed(model_dir, fasta, output, *, bed=None, per_base: bool = False, layer: int = -1,
          rc_average: bool = False, chunk_length: int = DEFAULT_CHUNK_LENGTH,
          max_length: int = DEFAULT_MAX_LENGTH, strand_halves: bool = False,
          beyond_trained_length: bool = False, device="auto", force: bool = False,
          progress: bool = True, context_parallel: int = 1) -> dict | None:
    """Embed the regions of ``bed`` (or every record of ``fasta``) with the model in
    ``model_dir`` into the Zarr group ``output`` (layout in the module docstring).
    ``context_parallel``: under torchrun, the number of processes, which split each region
    between them (module docstring). Returns a summary: output, regions, bases, width (None on
    the ranks but the first, which write nothing)."""
    output = Path(output)
    ranks = Dist.setup_inference(device, context_parallel)
    ranks.first(lambda: claim_outputs([(output, EMBEDDINGS)], inputs=[model_dir, fasta, bed],
                                      force=force))
    for option, value in (("--chunk-length", chunk_length), ("--max-length", max_length)):
        if value < 1:
            raise InputError(None, f"{option} must be positive, got {value}")
    with Reference(fasta) as reference:
        regions = bed_regions(bed, reference) if bed else reference.records()
        model = open_model(model_dir, ranks.device)
        check_context_parallel(model.config, ranks.context)
        layer, rc_average = _check_model(model, regions, layer, rc_average, max_length)
        if regions:
            longest = max(regions, key=lambda r: r.length)
            check_window(model, model_dir, longest.length,
                         f"region {longest.contig}:{longest.start + 1:,}-{longest.end:,}",
                         beyond_trained_length)
        embedder = Embedder(model, reference, layer=layer, chunk_length=chunk_length,
                            strand_halves=strand_halves, ranks=ranks)
        if not ranks.main:   # its shard of every pass, in rank 0's order; it writes nothing
            _follow(embedder, regions, rc_average)
            ranks.close()
            return None
        attrs = {
            "format": FORMAT_VERSION, "kind": KIND, "model": str(model_dir),
            "model_config": model.config.to_dict(), "layer": layer, "pooling": "mean",
            "rc_average": rc_average, "strand_halves": embedder.halves,
            "per_base": per_base, "width": embedder.width,
            "fasta": str(fasta), "bed": None if bed is None else str(bed),
            "created_by": f"genossm {__version__}",
        }
        with StagedOutputs() as staged:
            tmp = staged.directory(output)
            stack = PieceStack(output.parent) if per_base and rc_average else None
            try:
                group = _write(embedder, regions, tmp, per_base=per_base,
                               rc_average=rc_average, stack=stack, progress=progress)
            finally:
                if stack is not None:
                    stack.close()
            group.attrs["genossm"] = attrs  # last: marks the group complete
    ranks.close()
    return {"output": str(output), "regions": len(regions),
            "bases": sum(r.length for r in regions), "width": embedder.width}


def _check_model(model: GenoSSM, regions: list[Region], layer: int, rc_average: bool,
                 max_length: int) -> tuple[int, bool]:
    """(the resolved layer index, whether to average strands) for this model and these
    regions; a region too long for a non-causal model's one pass is an error."""
    cfg = model.config
    try:
        layer = model.layer_index(layer)
    except IndexError:
        raise InputError(None, f"--layer {layer} is out of range for a model of "
                               f"{cfg.n_layer} layers (0..{cfg.n_layer} or -1..-"
                               f"{cfg.n_layer + 1})") from None
    if not cfg.causal:
        too_long = next((r for r in regions if r.length > max_length), None)
        if too_long is not None:
            raise too_long.error(f"{too_long.length:,} bases is more than --max-length "
                                 f"{max_length:,}: a non-causal model (bidirectional or "
                                 "rc_equivariant) embeds a region in one pass")
    if rc_average and cfg.rc_equivariant:
        log.warning("the model is rc_equivariant (its hidden states already hold both "
                    "strands): --rc-average has no effect")
        rc_average = False
    return layer, rc_average


def _follow(embedder: Embedder, regions: list[Region], rc_average: bool) -> None:
    """A rank other than the first, with context parallelism: the passes of ``_write`` (its
    shard of each), in the same order, writing nothing."""
    with torch.inference_mode(), tqdm(disable=True) as bar:
        for region in regions:
            embed_region(embedder, region, rc_average=rc_average, per_base=None, stack=None,
                         bar=bar)


def _write(embedder: Embedder, regions: list[Region], path: Path, *, per_base: bool,
           rc_average: bool, stack: PieceStack | None, progress: bool) -> zarr.Group:
    """Build the group at ``path``, all but its ``genossm`` attribute."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    _write_regions(group, regions)
    width = embedder.width
    lengths = np.array([r.length for r in regions], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    pooled = RowWriter(group.create_array(
        "pooled", shape=(len(regions), width), dtype=np.float32,
        chunks=(_chunk_rows(width, len(regions)), width)))
    rows = None
    if per_base:
        rows = RowWriter(group.create_array(
            "per_base", shape=(int(offsets[-1]), width), dtype=np.float32,
            chunks=(_chunk_rows(width, int(offsets[-1])), width)))
        group.create_array("per_base_offsets", shape=offsets.shape, dtype=np.int64,
                           chunks=offsets.shape)[:] = offsets
    passes = 2 if rc_average else 1
    with torch.inference_mode(), tqdm(total=int(offsets[-1]) * passes, unit="b",
                                      unit_scale=True, desc="embed", disable=not progress,
                                      leave=False) as bar:
        for region in regions:
            pooled.append(embed_region(embedder, region, rc_average=rc_average,
                                       per_base=rows, stack=stack, bar=bar)[None])
    pooled.flush()
    if rows is not None:
        rows.flush()
    return group
