"""The token store (docs/design.md, "Token store"): a Zarr v3 group of base codes.

Writing streams (arrays grow by whole buffers, a contig never sits in memory twice) and is
atomic (the group is built under a temporary name and renamed when complete; the root
``genossm`` attribute, written last, marks a finished store). Reading is lazy and fork-safe:
a :class:`TokenStore` opens its Zarr group on first use in each process, so one object can be
handed to many DataLoader workers.

Writer and reader stay in one module (about 490 lines) on purpose: together they are the one
owner of the store's layout, and a change to it is read and made in one place.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from genossm import __version__, alphabet
from genossm.errors import InputError
from genossm.fileio import StagedOutputs

FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
READ_FIELDS = {  # per-read arrays beside reads/codes and reads/offsets
    "flag": np.uint16,
    "mapq": np.uint8,
    "reference_id": np.int32,  # index into reads attrs "references"; -1 when unplaced
    "position": np.int64,      # 0-based leftmost mapped position; -1 when unmapped
}


def _compressor() -> BloscCodec:
    # Bit-shuffling packs the 3 significant bits of a code into 3 of 8 bit planes; LZ4 then
    # squeezes them to within 3% of zstd's size at several times its speed.
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


# --------------------------------------------------------------------------- writing


class _WritePool:
    """Runs Zarr work off the parsing thread.

    Metadata operations (creating groups and arrays, resizing, attributes) run in submission
    order on one thread; each costs milliseconds in Zarr, which adds up over many contigs.
    Chunk writes (compression included) run on ``threads`` threads, each after the metadata
    operation it depends on. At most ``max_pending`` buffers are in flight (bounded memory).
    """

    def __init__(self, threads: int):
        self.data = ThreadPoolExecutor(max_workers=max(1, threads),
                                       thread_name_prefix="genossm-write")
        self.meta = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genossm-meta")
        self.max_pending = max(2, 2 * threads)
        self.pending: deque[Future] = deque()
        self.meta_pending: list[Future] = []

    def metadata(self, fn, *args) -> Future:
        self.meta_pending = [f for f in self.meta_pending if not f.done() or f.exception()]
        future = self.meta.submit(fn, *args)
        self.meta_pending.append(future)
        return future

    def set_attrs(self, group: Future, attrs: dict, *, after: list[Future]) -> Future:
        """Update a group's attributes once the operations ``after`` are done."""
        def task():
            for f in after:
                f.result()
            group.result().attrs.update(attrs)

        return self.metadata(task)

    def write(self, array: Future, ready: Future, start: int, values: np.ndarray) -> Future:
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()

        def task():
            ready.result()
            array.result()[start:start + values.size] = values

        future = self.data.submit(task)
        self.pending.append(future)
        return future

    def drain(self) -> None:
        """Wait for everything submitted; raise the first error."""
        while self.pending:
            self.pending.popleft().result()
        for f in self.meta_pending:
            f.result()
        self.meta_pending = []

    def close(self) -> None:
        for f in [*self.pending, *self.meta_pending]:
            f.cancel()
        self.data.shutdown(wait=True)
        self.meta.shutdown(wait=True)
        self.pending.clear()


class _Appender:
    """Appends to a 1-D Zarr array through buffers of whole chunks. The array grows
    geometrically while writing and is trimmed to its exact length by :meth:`close`."""

    def __init__(self, group: Future, name: str, dtype, chunk_size: int, buffer_chunks: int,
                 pool: _WritePool, fill_value=0):
        self.pool = pool
        # write_empty_chunks: skip Zarr's per-chunk comparison with the fill value (it costs
        # several times the compression); buffers known to hold only the fill value are not
        # written at all (see append_constant).
        self.array = pool.metadata(lambda: group.result().create_array(
            name, shape=(0,), chunks=(chunk_size,), dtype=dtype, compressors=[_compressor()],
            fill_value=fill_value, config={"write_empty_chunks": True}))
        self.fill_value = fill_value
        self.only_fill = True   # the buffer holds nothing but fill_value so far
        self.ready = self.array
        self.writes: list[Future] = []
        self.buffer_len = chunk_size * buffer_chunks
        self.buffer = np.empty(self.buffer_len, dtype=dtype)
        self.filled = 0
        self.written = 0
        self.capacity = 0

    def append(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        while values.size:
            take = min(values.size, self.buffer_len - self.filled)
            self.buffer[self.filled:self.filled + take] = values[:take]
            self.only_fill = False
            self.filled += take
            values = values[take:]
            if self.filled == self.buffer_len:
                self._flush()

    def append_constant(self, value, count: int) -> None:
        """Append ``count`` copies of ``value`` (a memset, no temporary array)."""
        while count:
            take = min(count, self.buffer_len - self.filled)
            self.buffer[self.filled:self.filled + take] = value
            self.only_fill = self.only_fill and value == self.fill_value
            self.filled += take
            count -= take
            if self.filled == self.buffer_len:
                self._flush()

    def _resize(self, length: int) -> Future:
        array = self.array
        return self.pool.metadata(lambda: array.result().resize((length,)))

    def _flush(self) -> None:
        if not self.filled:
            return
        end = self.written + self.filled
        if end > self.capacity:
            self.capacity = max(end, 2 * self.capacity)
            self.ready = self._resize(self.capacity)
        if not self.only_fill:  # chunks never written read back as fill_value
            self.writes = [f for f in self.writes if not f.done() or f.exception()]
            self.writes.append(self.pool.write(self.array, self.ready, self.written,
                                               self.buffer[:self.filled]))
            self.buffer = np.empty(self.buffer_len, dtype=self.buffer.dtype)
        self.written, self.filled = end, 0
        self.only_fill = True

    def close(self) -> Future:
        """Write what is buffered, then (once those writes are done) trim the array to its
        length. Returns the future of the trim."""
        self._flush()
        writes, array, length = self.writes, self.array, self.written

        def trim():
            for f in writes:
                f.result()
            if array.result().shape != (length,):
                array.result().resize((length,))

        self.writes = []
        return self.pool.metadata(trim)

    @property
    def length(self) -> int:
        return self.written + self.filled


class ContigWriter:
    """Streams one contig's codes and soft-mask track into ``contigs/<key>``."""

    def __init__(self, group, key: str, name: str, chunk_size: int, buffer_chunks: int,
                 pool: _WritePool):
        self.pool = pool
        self.group = pool.metadata(group.create_group, f"contigs/{key}")
        self.key, self.name = key, name
        self.codes = _Appender(self.group, "codes", np.uint8, chunk_size, buffer_chunks, pool,
                               fill_value=alphabet.N)
        self.softmask = _Appender(self.group, "softmask", np.bool_, chunk_size, buffer_chunks,
                                  pool, fill_value=False)

    def append(self, codes: np.ndarray, softmask: np.ndarray | None) -> None:
        """Append codes and their soft-mask track (None: nothing soft-masked)."""
        self.codes.append(codes)
        if softmask is None:
            self.softmask.append_constant(False, codes.size)
        else:
            self.softmask.append(softmask)

    def finish(self, **attrs) -> dict:
        """Close both tracks and set the contig's attributes (done in the background; the
        store's commit waits for it)."""
        trims = [self.codes.close(), self.softmask.close()]
        attrs = {"name": self.name, "length": self.codes.length, **attrs}
        self.pool.set_attrs(self.group, attrs, after=trims)
        return attrs


class ReadsWriter:
    """Streams reads (concatenated codes, offsets, names and alignment fields) into ``reads``."""

    def __init__(self, group, chunk_size: int, buffer_chunks: int, pool: _WritePool):
        self.pool = pool
        self.group = pool.metadata(group.require_group, "reads")
        self.codes = _Appender(self.group, "codes", np.uint8, chunk_size, buffer_chunks, pool,
                               fill_value=alphabet.N)
        small = max(1, chunk_size // 8)
        self.offsets = _Appender(self.group, "offsets", np.int64, small, 1, pool)
        self.offsets.append(np.zeros(1, dtype=np.int64))
        self.name_chars = _Appender(self.group, "name_chars", np.uint8, small, 1, pool)
        self.name_offsets = _Appender(self.group, "name_offsets", np.int64, small, 1, pool)
        self.name_offsets.append(np.zeros(1, dtype=np.int64))
        self.fields = {f: _Appender(self.group, f, dt, small, 1, pool)
                       for f, dt in READ_FIELDS.items()}
        self.reference_ids: dict[str, int] = {}   # name -> index, in order of first use
        self.count = 0

    def reference_id(self, name: str | None) -> int:
        if name is None:
            return -1
        return self.reference_ids.setdefault(name, len(self.reference_ids))

    def append_batch(self, codes: list[np.ndarray], names: list[bytes], fields: dict) -> None:
        if not codes:
            return
        lengths = np.fromiter((c.size for c in codes), dtype=np.int64, count=len(codes))
        self.offsets.append(self.codes.length + np.cumsum(lengths))
        self.codes.append(np.concatenate(codes))
        name_lengths = np.fromiter((len(n) for n in names), dtype=np.int64, count=len(names))
        self.name_offsets.append(self.name_chars.length + np.cumsum(name_lengths))
        self.name_chars.append(np.frombuffer(b"".join(names), dtype=np.uint8))
        for f, appender in self.fields.items():
            appender.append(np.asarray(fields[f], dtype=READ_FIELDS[f]))
        self.count += len(codes)

    def finish(self) -> None:
        trims = [a.close() for a in (self.codes, self.offsets, self.name_chars,
                                     self.name_offsets, *self.fields.values())]
        attrs = {"n_reads": self.count, "n_bases": self.codes.length,
                 "references": list(self.reference_ids)}
        self.pool.set_attrs(self.group, attrs, after=trims)


class StoreWriter:
    """Builds a token store under a temporary name; :meth:`commit` renames it into place.

    Use as a context manager: leaving the block by an exception (or KeyboardInterrupt)
    removes the temporary store, so nothing that looks finished is left behind.
    """

    def __init__(self, path, *, force: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 buffer_chunks: int = 2, threads: int = 1):
        self.path = Path(path)
        if self.path.exists() and not force:
            raise InputError(self.path, "output exists; use --force to replace it")
        if chunk_size < 1:
            raise InputError(self.path, f"chunk size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        self.buffer_chunks = max(1, buffer_chunks)
        self.threads = max(1, threads)
        self.pool: _WritePool | None = None
        self.staged = StagedOutputs()
        self.tmp_path: Path | None = None
        self.group = None
        self.contig_index: dict[str, str] = {}
        self.contig_places: dict[str, str] = {}
        self._reads: ReadsWriter | None = None

    def __enter__(self) -> StoreWriter:
        self.tmp_path = self.staged.path(self.path)
        self.group = zarr.open_group(str(self.tmp_path), mode="w", zarr_format=3)
        self.group.require_group("contigs")
        self.pool = _WritePool(self.threads)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.pool.close()
        if exc_type is not None:
            self.abort()

    def add_contig(self, name: str, place) -> ContigWriter:
        """Start a new contig. ``place`` (file and record; formatted with str() only when a
        duplicate must be reported) names where it came from."""
        if name in self.contig_index:
            raise InputError(None, f"duplicate contig name {name!r} "
                                   f"(first seen at {self.contig_places[name]})", place=str(place))
        key = f"c{len(self.contig_index):06d}"
        self.contig_index[name] = key
        self.contig_places[name] = place
        return ContigWriter(self.group, key, name, self.chunk_size, self.buffer_chunks,
                            self.pool)

    def drop_contig(self, name: str, writer: ContigWriter) -> None:
        """Remove a contig that was started but turned out unusable (e.g. empty)."""
        key = self.contig_index.pop(name)
        trims = [writer.codes.close(), writer.softmask.close()]
        contigs = self.group["contigs"]

        def delete():
            for f in trims:
                f.result()
            del contigs[key]

        self.pool.metadata(delete)

    @property
    def reads(self) -> ReadsWriter:
        if self._reads is None:
            self._reads = ReadsWriter(self.group, self.chunk_size, self.buffer_chunks,
                                      self.pool)
        return self._reads

    def commit(self, sources: list[dict]) -> Path:
        if self._reads is not None:
            self._reads.finish()
        self.pool.drain()
        self.group.attrs["contig_index"] = self.contig_index
        # Written last: a store without it is incomplete.
        self.group.attrs["genossm"] = {
            "format": FORMAT_VERSION, "alphabet": alphabet.BASES,
            "created_by": f"genossm {__version__}", "chunk_size": self.chunk_size,
            "sources": sources,
        }
        self.staged.commit()
        return self.path

    def abort(self) -> None:
        self.staged.discard()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ContigInfo:
    name: str
    key: str
    length: int
    n_count: int
    softmasked: int
    iupac_count: int
    md5: str


class TokenStore:
    """Lazy, read-only view of a token store; safe to pickle into DataLoader workers."""

    def __init__(self, path):
        self.path = Path(path)
        meta_file = self.path / "zarr.json"
        if not meta_file.is_file():
            raise InputError(self.path, "not a token store (no zarr.json)")
        try:
            attrs = json.loads(meta_file.read_text()).get("attributes", {})
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(meta_file, f"unreadable store metadata ({e})") from None
        if "genossm" not in attrs:
            raise InputError(self.path, "incomplete or foreign store (no 'genossm' attribute)")
        self.meta = attrs["genossm"]
        if self.meta.get("format") != FORMAT_VERSION:
            raise InputError(self.path, f"unsupported store format {self.meta.get('format')!r}")
        self.contig_index: dict[str, str] = attrs.get("contig_index", {})
        self._group = None
        self._pid = None
        self._arrays: dict = {}
        self._contigs: dict[str, ContigInfo] = {}

    # Each process opens its own handle (Zarr handles must not cross a fork).
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_group"] = None
        state["_pid"] = None
        state["_arrays"] = {}
        return state

    @property
    def group(self):
        if self._group is None or self._pid != os.getpid():
            self._group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
            self._pid = os.getpid()
            self._arrays = {}
        return self._group

    def array(self, path: str):
        """The Zarr array at ``path`` in the store, opened once per process."""
        group = self.group
        if path not in self._arrays:
            self._arrays[path] = group[path]
        return self._arrays[path]

    @property
    def contig_names(self) -> list[str]:
        return list(self.contig_index)

    def contig(self, name: str) -> ContigInfo:
        if name not in self._contigs:
            if name not in self.contig_index:
                raise KeyError(f"{self.path}: no contig named {name!r}")
            key = self.contig_index[name]
            a = self.group[f"contigs/{key}"].attrs
            self._contigs[name] = ContigInfo(
                name=name, key=key, length=int(a["length"]), n_count=int(a["n_count"]),
                softmasked=int(a["softmasked"]), iupac_count=int(a["iupac_count"]),
                md5=a["md5"])
        return self._contigs[name]

    @property
    def contigs(self) -> list[ContigInfo]:
        return [self.contig(n) for n in self.contig_index]

    def _slice(self, name: str, track: str, start: int, end: int | None) -> np.ndarray:
        info = self.contig(name)
        end = info.length if end is None else end
        if not 0 <= start <= end <= info.length:
            raise IndexError(f"{name}:{start}-{end} is outside the contig (length {info.length})")
        return self.array(f"contigs/{info.key}/{track}")[start:end]

    def codes(self, name: str, start: int = 0, end: int | None = None, *,
              reverse_complement: bool = False) -> np.ndarray:
        """Base codes of ``name[start:end]`` (0-based, half-open), optionally reverse
        complemented."""
        codes = self._slice(name, "codes", start, end)
        return alphabet.reverse_complement(codes) if reverse_complement else codes

    def softmask(self, name: str, start: int = 0, end: int | None = None) -> np.ndarray:
        return self._slice(name, "softmask", start, end)

    # reads
    @property
    def has_reads(self) -> bool:
        return "reads" in self.group

    @property
    def n_reads(self) -> int:
        return int(self.group["reads"].attrs["n_reads"]) if self.has_reads else 0

    @property
    def n_read_bases(self) -> int:
        return int(self.group["reads"].attrs["n_bases"]) if self.has_reads else 0

    def read_offsets(self) -> np.ndarray:
        return self.group["reads/offsets"][:] if self.has_reads else np.zeros(1, np.int64)

    def read_codes(self, index: int, *, reverse_complement: bool = False) -> np.ndarray:
        start, end = (int(v) for v in self.array("reads/offsets")[index:index + 2])
        codes = self.array("reads/codes")[start:end]
        return alphabet.reverse_complement(codes) if reverse_complement else codes

    def iter_reads(self, batch_size: int = 65536) -> Iterator[tuple[str, np.ndarray, dict]]:
        """Yield (name, codes, fields) for every read, reading in batches."""
        if not self.has_reads:
            return
        g = self.group["reads"]
        n = self.n_reads
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            offsets = g["offsets"][lo:hi + 1]
            codes = g["codes"][int(offsets[0]):int(offsets[-1])]
            noff = g["name_offsets"][lo:hi + 1]
            names = g["name_chars"][int(noff[0]):int(noff[-1])].tobytes()
            fields = {f: g[f][lo:hi] for f in READ_FIELDS}
            for i in range(hi - lo):
                seq = codes[offsets[i] - offsets[0]:offsets[i + 1] - offsets[0]]
                name = names[noff[i] - noff[0]:noff[i + 1] - noff[0]].decode()
                yield name, seq, {f: fields[f][i].item() for f in READ_FIELDS}

    @property
    def references(self) -> list[str]:
        return list(self.group["reads"].attrs["references"]) if self.has_reads else []
