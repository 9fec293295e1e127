"""Writing a token store (docs/design.md, "Token store"): ``StoreWriter`` and its parts.

Writing streams: each array grows by whole buffers of chunks (``_Appender``), and Zarr's work
(metadata in order on one thread, compression and chunk writes on several) runs off the parsing
thread in a bounded pool (``_WritePool``), so a contig never sits in memory twice. A contig that
ends within its first buffer is created whole instead, its arrays in their final shape (one
chunk of its length where it is shorter than a chunk), together with others in one Zarr
``create_hierarchy`` (``_SmallContigs``): an assembly of many short scaffolds costs a few Zarr
calls per hundred contigs, not several per contig. It is atomic:
the group is built under a temporary name and renamed into place by ``StoreWriter.commit``, which
writes the root ``genossm`` attribute last. ``TOKEN_STORE`` is the output kind that lets
``--force`` replace an existing token store and nothing else. The layout's constants live in the
package (``genossm/store/__init__.py``); ``reader.py`` reads what this writes.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.group import GroupMetadata
from zarr.core.metadata.v3 import ArrayV3Metadata

from genossm import __version__, alphabet
from genossm.errors import InputError
from genossm.fileio import OutputKind, StagedOutputs, claim_outputs
from genossm.store import layout
from genossm.store.layout import DEFAULT_CHUNK_SIZE, FORMAT_VERSION, READ_FIELDS


def _compressor() -> BloscCodec:
    # Bit-shuffling packs the 3 significant bits of a code into 3 of 8 bit planes; LZ4 then
    # squeezes them to within 3% of zstd's size at several times its speed.
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def is_token_store(path) -> bool:
    """Whether ``path`` is a token store genossm wrote: its root zarr.json carries the
    ``genossm`` attribute with an alphabet and no ``kind`` (embeddings stores have one)."""
    try:
        attrs = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
        meta = attrs.get("genossm")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(meta, dict) and "alphabet" in meta and "kind" not in meta


TOKEN_STORE = OutputKind("a genossm token store", is_token_store)


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

    def write(self, task) -> Future:
        """Run ``task`` (chunk writes, waiting for the metadata they need) on a data thread,
        once fewer than ``max_pending`` are in flight."""
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()
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
    """Appends to a 1-D Zarr array through buffers of whole chunks. The array is created when
    the first buffer is written (``group()`` gives the future of its group), grows
    geometrically while writing and is trimmed to its exact length by :meth:`close`. Until
    then, :meth:`take` may have the values instead (a contig created whole)."""

    def __init__(self, group, name: str, dtype, chunk_size: int, buffer_chunks: int,
                 pool: _WritePool, fill_value=0):
        self.pool, self.group, self.name = pool, group, name
        self.dtype, self.chunk_size = np.dtype(dtype), chunk_size
        self.array: Future | None = None
        self.fill_value = fill_value
        self.only_fill = True   # the buffer holds nothing but fill_value so far
        self.ready: Future | None = None
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

    def _create(self) -> Future:
        group, name, dtype = self.group(), self.name, self.dtype
        # write_empty_chunks: skip Zarr's per-chunk comparison with the fill value (it costs
        # several times the compression); buffers known to hold only the fill value are not
        # written at all (see append_constant).
        return self.pool.metadata(lambda: group.result().create_array(
            name, shape=(0,), chunks=(self.chunk_size,), dtype=dtype,
            compressors=[_compressor()], fill_value=self.fill_value,
            config={"write_empty_chunks": True}))

    def _resize(self, length: int) -> Future:
        array = self.array
        return self.pool.metadata(lambda: array.result().resize((length,)))

    @property
    def started(self) -> bool:
        """Whether the array exists (a buffer has been written)."""
        return self.array is not None

    def take(self) -> np.ndarray | None:
        """The values appended, before any was written (None: only the fill value); the
        appender is done."""
        values = None if self.only_fill else self.buffer[:self.filled].copy()
        self.buffer, self.filled = None, 0
        return values

    def _flush(self) -> None:
        if not self.filled:
            return
        if self.array is None:
            self.array = self.ready = self._create()
        end = self.written + self.filled
        if end > self.capacity:
            self.capacity = max(end, 2 * self.capacity)
            self.ready = self._resize(self.capacity)
        if not self.only_fill:  # chunks never written read back as fill_value
            ready, array = self.ready, self.array
            start, values = self.written, self.buffer[:self.filled]

            def task():
                ready.result()
                array.result()[start:start + values.size] = values

            self.writes = [f for f in self.writes if not f.done() or f.exception()]
            self.writes.append(self.pool.write(task))
            self.buffer = np.empty(self.buffer_len, dtype=self.buffer.dtype)
        self.written, self.filled = end, 0
        self.only_fill = True

    def close(self) -> Future:
        """Write what is buffered, then (once those writes are done) trim the array to its
        length. Returns the future of the trim."""
        self._flush()
        if self.array is None:   # nothing was appended: an empty array
            self.array = self.ready = self._create()
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
    """Streams one contig's codes and soft-mask track into ``contigs/<key>``; a contig that
    ends within its first buffer goes whole to ``small`` instead (nothing is created before)."""

    def __init__(self, contigs, key: str, name: str, chunk_size: int, buffer_chunks: int,
                 pool: _WritePool, small: _SmallContigs):
        self.pool, self.contigs, self.small = pool, contigs, small
        self.group: Future | None = None
        self.key, self.name = key, name
        self.codes = _Appender(self._group, "codes", np.uint8, chunk_size, buffer_chunks, pool,
                               fill_value=layout.CODES_FILL)
        self.softmask = _Appender(self._group, "softmask", np.bool_, chunk_size, buffer_chunks,
                                  pool, fill_value=False)

    def _group(self) -> Future:
        if self.group is None:
            self.group = self.pool.metadata(self.contigs.create_group, self.key)
        return self.group

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
        attrs = {"name": self.name, "length": self.codes.length, **attrs}
        if self.codes.started or self.softmask.started:
            trims = [self.codes.close(), self.softmask.close()]
            self.pool.set_attrs(self._group(), attrs, after=trims)
        else:
            self.small.add(self.key, attrs, self.codes.take(), self.softmask.take())
        return attrs

    def drop(self) -> None:
        """Give the contig up (an empty record): nothing of it is written, and what was
        created of it is removed."""
        if not (self.codes.started or self.softmask.started):
            self.codes.take()
            self.softmask.take()
            return
        trims = [self.codes.close(), self.softmask.close()]
        contigs, key = self.contigs, self.key

        def delete():
            for f in trims:
                f.result()
            del contigs[key]

        self.pool.metadata(delete)


class _SmallContigs:
    """Contigs that ended within their first buffer, created whole: each batch of them (up to
    ``max_contigs`` or ``max_bytes`` of codes) is one Zarr ``create_hierarchy`` of their groups
    (attributes included) and arrays in their final shape, which Zarr writes concurrently, and
    then their chunks. A contig shorter than a chunk is one chunk of its length, so Zarr never
    pads and compresses a whole chunk of fill value for it."""

    def __init__(self, contigs, chunk_size: int, pool: _WritePool, *, max_contigs: int = 256,
                 max_bytes: int = 16 << 20):
        self.contigs, self.chunk_size, self.pool = contigs, chunk_size, pool
        self.max_contigs, self.max_bytes = max_contigs, max_bytes
        self.batch: list[tuple[str, dict, np.ndarray, np.ndarray | None]] = []
        self.bytes = 0
        # each array's metadata: Zarr's own for a zero-length array, in the spec's JSON form
        memory = zarr.storage.MemoryStore()
        self.templates = {
            name: zarr.create_array(memory, name=name, shape=(0,), chunks=(chunk_size,),
                                    dtype=dtype, compressors=[_compressor()],
                                    fill_value=fill).metadata.to_dict()
            for name, dtype, fill in (("codes", np.uint8, layout.CODES_FILL),
                                      ("softmask", np.bool_, False))}

    def add(self, key: str, attrs: dict, codes: np.ndarray | None,
            softmask: np.ndarray | None) -> None:
        """A contig of ``attrs["length"]`` bases; ``softmask`` None: nothing soft-masked."""
        self.batch.append((key, attrs, codes, softmask))
        self.bytes += attrs["length"]
        if len(self.batch) >= self.max_contigs or self.bytes >= self.max_bytes:
            self.flush()

    def _metadata(self, name: str, length: int) -> ArrayV3Metadata:
        meta = dict(self.templates[name], shape=(length,))
        chunk = (max(1, min(self.chunk_size, length)),)
        meta["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": chunk}}
        return ArrayV3Metadata.from_dict(meta)

    def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch, self.bytes = self.batch, [], 0
        nodes = {}
        for key, attrs, _, _ in batch:
            nodes[key] = GroupMetadata(attributes=attrs)
            for name in ("codes", "softmask"):
                nodes[f"{key}/{name}"] = self._metadata(name, attrs["length"])
        contigs = self.contigs
        created = self.pool.metadata(lambda: dict(contigs.create_hierarchy(nodes)))

        def write():
            arrays = created.result()
            for key, _, codes, softmask in batch:
                arrays[f"{key}/codes"][:] = codes
                if softmask is not None:   # a missing soft-mask chunk reads as not masked
                    arrays[f"{key}/softmask"][:] = softmask

        self.pool.write(write)


class ReadsWriter:
    """Streams reads (concatenated codes, offsets, names and alignment fields) into ``reads``."""

    def __init__(self, group, chunk_size: int, buffer_chunks: int, pool: _WritePool):
        self.pool = pool
        self.group = pool.metadata(group.require_group, "reads")
        reads = lambda: self.group  # noqa: E731
        self.codes = _Appender(reads, "codes", np.uint8, chunk_size, buffer_chunks, pool,
                               fill_value=layout.CODES_FILL)
        small = max(1, chunk_size // 8)
        self.offsets = _Appender(reads, "offsets", np.int64, small, 1, pool)
        self.offsets.append(np.zeros(1, dtype=np.int64))
        self.name_chars = _Appender(reads, "name_chars", np.uint8, small, 1, pool)
        self.name_offsets = _Appender(reads, "name_offsets", np.int64, small, 1, pool)
        self.name_offsets.append(np.zeros(1, dtype=np.int64))
        self.fields = {f: _Appender(reads, f, dt, small, 1, pool)
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
    removes the temporary store, so nothing that looks finished is left behind. ``path`` is
    claimed first (``fileio.claim_outputs``): never one of the run's ``inputs``, and with
    ``force`` an existing token store, nothing else, is replaced.
    """

    def __init__(self, path, *, inputs=(), force: bool = False,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, buffer_chunks: int = 2, threads: int = 1):
        self.path = Path(path)
        claim_outputs([(self.path, TOKEN_STORE)], inputs=inputs, force=force)
        if chunk_size < 1:
            raise InputError(self.path, f"chunk size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        self.buffer_chunks = max(1, buffer_chunks)
        self.threads = max(1, threads)
        self.pool: _WritePool | None = None
        self.small: _SmallContigs | None = None
        self.staged = StagedOutputs()
        self.group = self.contigs = None
        self.contig_index: dict[str, str] = {}
        self.contig_places: dict[str, str] = {}
        self._reads: ReadsWriter | None = None

    def __enter__(self) -> StoreWriter:
        tmp = self.staged.directory(self.path)
        self.group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        self.contigs = self.group.require_group("contigs")
        self.pool = _WritePool(self.threads)
        self.small = _SmallContigs(self.contigs, self.chunk_size, self.pool)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving the block without ``commit`` (by an exception or not) removes the temporary
        store; after ``commit`` there is nothing left to remove."""
        self.pool.close()
        self.staged.discard()

    def add_contig(self, name: str, place) -> ContigWriter:
        """Start a new contig. ``place`` (file and record; formatted with str() only when a
        duplicate must be reported) names where it came from."""
        if name in self.contig_index:
            raise InputError(None, f"duplicate contig name {name!r} "
                                   f"(first seen at {self.contig_places[name]})", place=str(place))
        key = f"c{len(self.contig_index):06d}"
        self.contig_index[name] = key
        self.contig_places[name] = place
        return ContigWriter(self.contigs, key, name, self.chunk_size, self.buffer_chunks,
                            self.pool, self.small)

    def drop_contig(self, name: str, writer: ContigWriter) -> None:
        """Remove a contig that was started but turned out unusable (e.g. empty)."""
        self.contig_index.pop(name)
        writer.drop()

    @property
    def reads(self) -> ReadsWriter:
        if self._reads is None:
            self._reads = ReadsWriter(self.group, self.chunk_size, self.buffer_chunks,
                                      self.pool)
        return self._reads

    def commit(self, sources: list[dict]) -> Path:
        if self._reads is not None:
            self._reads.finish()
        self.small.flush()
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
