"""The token store (docs/design.md, "Token store"): a Zarr v3 group of base codes.

Writing streams (arrays grow by whole buffers, a contig never sits in memory twice) and is
atomic (the group is built under a temporary name and renamed when complete; the root
``genossm`` attribute, written last, marks a finished store). Reading is lazy and fork-safe:
a :class:`TokenStore` opens its Zarr group on first use in each process, so one object can be
handed to many DataLoader workers. Reading is checked: damaged metadata, a chunk file cut short,
undecodable, holding what is no base code or (codes: their fill value is no code) missing is one
InputError naming the file, never a crash or made-up N.

Writer and reader stay in one module (about 490 lines) on purpose: together they are the one
owner of the store's layout, and a change to it is read and made in one place.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from genossm import __version__, alphabet
from genossm.errors import InputError
from genossm.fileio import OutputKind, StagedOutputs, claim_outputs

FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
READ_FIELDS = {  # per-read arrays beside reads/codes and reads/offsets
    "flag": np.uint16,
    "mapq": np.uint8,
    "reference_id": np.int32,  # index into reads attrs "references"; -1 when unplaced
    "position": np.int64,      # 0-based leftmost mapped position; -1 when unmapped
}
# The fill value of the codes arrays (contigs and reads): not a code, so a chunk file that is
# missing reads back as an error rather than as N. Stores written before it used N.
CODES_FILL = alphabet.INVALID


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
                               fill_value=CODES_FILL)
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
                               fill_value=CODES_FILL)
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
        self.staged = StagedOutputs()
        self.tmp_path: Path | None = None
        self.group = None
        self.contig_index: dict[str, str] = {}
        self.contig_places: dict[str, str] = {}
        self._reads: ReadsWriter | None = None

    def __enter__(self) -> StoreWriter:
        self.tmp_path = self.staged.directory(self.path)
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

# Errors of Zarr, JSON or Blosc on a damaged store (zarr's own errors are ValueErrors, those of
# a missing node also FileNotFoundErrors; Blosc raises RuntimeError).
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)
_BLOSC_HEADER = 16   # bytes; the compressed size is the little-endian uint32 at 12..16


def _brief(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"{error.args[0] if error.args else ''} is missing"
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class _CorruptChunk(Exception):
    """A chunk file whose Blosc header does not match the file (``key``: its path in the
    store)."""

    def __init__(self, key: str, why: str):
        super().__init__(f"{key}: {why}")
        self.key, self.why = key, why


def _blosc_damage(size: int, header: bytes) -> str | None:
    """What is wrong with a Blosc chunk of ``size`` bytes that starts with ``header``, or
    None. Blosc trusts the compressed size in the header: a chunk file cut short makes it read
    past the end of the buffer (a segmentation fault, not an error), so it is checked first."""
    if size < _BLOSC_HEADER:
        return f"{size} bytes, too short for a Blosc chunk"
    expected = int.from_bytes(header[12:16], "little")
    if expected != size:
        return f"{size:,} bytes where its header says {expected:,}: cut short or overwritten"
    return None


class _CheckedStore(LocalStore):
    """The local Zarr store, with every chunk's Blosc header checked against its size before
    Blosc sees it (``_blosc_damage``)."""

    async def get(self, key, prototype=None, byte_range=None):
        buffer = await super().get(key, prototype, byte_range)
        if buffer is not None and byte_range is None and not key.endswith("zarr.json"):
            header = buffer.as_numpy_array()[:_BLOSC_HEADER].tobytes()
            damage = _blosc_damage(len(buffer), header)
            if damage:
                raise _CorruptChunk(key, damage)
        return buffer


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
    """Lazy, read-only view of a token store; safe to pickle into DataLoader workers.

    Damage is reported, never read as data: unreadable metadata as an InputError naming its
    zarr.json, a chunk file that is cut short, cannot be decoded or holds a value that is no
    base code as one naming the chunk file (and the contig or read), and a missing chunk file
    of codes likewise (the codes' fill value, CODES_FILL, is no code; in stores written before
    it, whose fill value is N, a missing chunk still reads as N).
    """

    def __init__(self, path):
        self.path = Path(path)
        meta_file = self.path / "zarr.json"
        if not meta_file.is_file():
            raise InputError(self.path, "not a token store (no zarr.json)")
        try:
            attrs = json.loads(meta_file.read_text()).get("attributes", {})
        except (OSError, ValueError, AttributeError) as e:
            raise InputError(meta_file, f"unreadable store metadata ({_brief(e)})") from None
        if not isinstance(attrs, dict) or "genossm" not in attrs:
            raise InputError(self.path, "incomplete or foreign store (no 'genossm' attribute)")
        self.meta = attrs["genossm"]
        if not isinstance(self.meta, dict) or self.meta.get("kind") is not None:
            raise InputError(self.path, "not a token store (its 'genossm' attribute is not "
                                        "a token store's)")
        if self.meta.get("format") != FORMAT_VERSION:
            raise InputError(self.path, f"unsupported store format {self.meta.get('format')!r}")
        lacking = [k for k in ("alphabet", "created_by", "chunk_size", "sources")
                   if k not in self.meta]
        if lacking:
            raise InputError(meta_file, f"store metadata lacks {', '.join(lacking)}")
        if self.meta["alphabet"] != alphabet.BASES:
            raise InputError(self.path, f"alphabet {self.meta['alphabet']!r} is not "
                                        f"{alphabet.BASES!r}")
        self.contig_index: dict[str, str] = attrs.get("contig_index", {})
        if not (isinstance(self.contig_index, dict)
                and all(isinstance(v, str) for v in self.contig_index.values())):
            raise InputError(meta_file, "unreadable store metadata (contig_index is not a "
                                        "mapping of names to keys)")
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

    @contextmanager
    def _metadata(self, node: str = ""):
        """Errors reading the metadata of ``node`` (a path in the store; "" the root) as one
        InputError naming its zarr.json."""
        try:
            yield
        except _READ_ERRORS as e:
            raise InputError(self.path / node / "zarr.json",
                             f"missing or unreadable store metadata ({_brief(e)})") from None

    @property
    def group(self):
        if self._group is None or self._pid != os.getpid():
            with self._metadata():
                self._group = zarr.open_group(store=_CheckedStore(self.path, read_only=True),
                                              mode="r", zarr_format=3)
            self._pid = os.getpid()
            self._arrays = {}
        return self._group

    def array(self, path: str):
        """The Zarr array at ``path`` in the store, opened once per process."""
        group = self.group
        if path not in self._arrays:
            with self._metadata(path):
                self._arrays[path] = group[path]
        return self._arrays[path]

    def _values(self, path: str, start: int, end: int, place: str) -> np.ndarray:
        """``path[start:end]``; a chunk file that cannot be read is one InputError naming it
        (``place``: the contig or reads, for the message)."""
        array = self.array(path)
        try:
            return array[start:end]
        except _CorruptChunk as e:
            raise InputError(self.path, f"chunk file {e.key} is corrupt ({e.why})",
                             place=place) from None
        except _READ_ERRORS as e:
            key = self._undecodable_chunk(array, path, start, end)
            raise InputError(self.path, f"chunk file {key} cannot be decoded ({_brief(e)}); "
                                        "the store is damaged", place=place) from None

    def _undecodable_chunk(self, array, path: str, start: int, end: int) -> str:
        """The first chunk file of ``path[start:end]`` that fails to read, one at a time."""
        size = array.chunks[0]
        first, last = start // size, max(start, end - 1) // size
        for i in range(first, last + 1):
            try:
                array[i * size:min((i + 1) * size, array.shape[0])]
            except (_CorruptChunk, *_READ_ERRORS):
                return f"{path}/c/{i}"
        return f"{path}/c/{first}" + (f"..{last}" if last > first else "")

    def _codes(self, path: str, start: int, end: int, place: str) -> np.ndarray:
        """Base codes ``path[start:end]``, checked: a value that is no base code is a missing
        chunk file (it reads as CODES_FILL) or a corrupt one."""
        codes = self._values(path, start, end, place)
        if codes.size and codes.max() >= alphabet.NUM_BASE_CODES:
            at = int(np.argmax(codes >= alphabet.NUM_BASE_CODES))
            key = f"{path}/c/{(start + at) // self.array(path).chunks[0]}"
            if not (self.path / key).is_file():
                raise InputError(self.path, f"chunk file {key} is missing; the store is "
                                            "damaged", place=place)
            raise InputError(self.path, f"chunk file {key} holds {int(codes[at])}, which is no "
                                        "base code; the store is damaged", place=place)
        return codes

    @property
    def contig_names(self) -> list[str]:
        return list(self.contig_index)

    def contig(self, name: str) -> ContigInfo:
        if name not in self._contigs:
            if name not in self.contig_index:
                raise KeyError(f"{self.path}: no contig named {name!r}")
            key = self.contig_index[name]
            with self._metadata(f"contigs/{key}"):
                a = self.group[f"contigs/{key}"].attrs
                self._contigs[name] = ContigInfo(
                    name=name, key=key, length=int(a["length"]), n_count=int(a["n_count"]),
                    softmasked=int(a["softmasked"]), iupac_count=int(a["iupac_count"]),
                    md5=str(a["md5"]))
        return self._contigs[name]

    @property
    def contigs(self) -> list[ContigInfo]:
        return [self.contig(n) for n in self.contig_index]

    def check_files(self) -> None:
        """Read the metadata of every array, check each chunk file's size against its Blosc
        header and that every chunk file of codes is there (in stores whose codes fill value
        is CODES_FILL); InputError naming the first file that is missing, cut short or
        unreadable. What the chunks decode to is checked as they are read. (The metadata is
        read as JSON, not opened through Zarr: a store of thousands of contigs is checked in
        a fraction of a second.)"""
        tracks = [(f"contigs/{key}/{track}", f"contig {name}")
                  for name, key in self.contig_index.items() for track in ("codes", "softmask")]
        if self.has_reads:
            tracks += [(f"reads/{name}", "reads") for name in
                       ("codes", "offsets", "name_chars", "name_offsets", *READ_FIELDS)]
        for path, place in tracks:
            length, chunk, fill = self._array_shape(path)
            folder = self.path / path / "c"
            present = set(os.listdir(folder)) if folder.is_dir() else set()
            for name in sorted(present, key=lambda n: (len(n), n)):
                with open(folder / name, "rb") as f:
                    damage = _blosc_damage(os.fstat(f.fileno()).st_size, f.read(_BLOSC_HEADER))
                if damage:
                    raise InputError(self.path, f"chunk file {path}/c/{name} is corrupt "
                                                f"({damage})", place=place)
            if not path.endswith("codes") or fill != CODES_FILL:
                continue
            missing = next((i for i in range(-(-length // chunk)) if str(i) not in present),
                           None)
            if missing is not None:
                raise InputError(self.path, f"chunk file {path}/c/{missing} is missing; the "
                                            "store is damaged", place=place)

    def _array_shape(self, path: str) -> tuple[int, int, object]:
        """(length, chunk length, fill value) of the 1-D array at ``path``, from its
        zarr.json."""
        with self._metadata(path):
            meta = json.loads((self.path / path / "zarr.json").read_text())
            length, = meta["shape"]
            chunk, = meta["chunk_grid"]["configuration"]["chunk_shape"]
            return int(length), int(chunk), meta["fill_value"]

    def _span(self, name: str, start: int, end: int | None) -> tuple[ContigInfo, int]:
        info = self.contig(name)
        end = info.length if end is None else end
        if not 0 <= start <= end <= info.length:
            raise IndexError(f"{name}:{start}-{end} is outside the contig (length {info.length})")
        return info, end

    def codes(self, name: str, start: int = 0, end: int | None = None, *,
              reverse_complement: bool = False) -> np.ndarray:
        """Base codes of ``name[start:end]`` (0-based, half-open), optionally reverse
        complemented."""
        info, end = self._span(name, start, end)
        codes = self._codes(f"contigs/{info.key}/codes", start, end, f"contig {name}")
        return alphabet.reverse_complement(codes) if reverse_complement else codes

    def softmask(self, name: str, start: int = 0, end: int | None = None) -> np.ndarray:
        """The soft-mask track of ``name[start:end]``. Its fill value is False, and chunks of
        nothing soft-masked are not written: a missing chunk file reads as not soft-masked."""
        info, end = self._span(name, start, end)
        return self._values(f"contigs/{info.key}/softmask", start, end, f"contig {name}")

    # reads
    @property
    def has_reads(self) -> bool:
        with self._metadata():
            return "reads" in self.group

    def _reads_attr(self, name: str):
        with self._metadata("reads"):
            return self.group["reads"].attrs[name]

    @property
    def n_reads(self) -> int:
        return int(self._reads_attr("n_reads")) if self.has_reads else 0

    @property
    def n_read_bases(self) -> int:
        return int(self._reads_attr("n_bases")) if self.has_reads else 0

    def read_offsets(self) -> np.ndarray:
        if not self.has_reads:
            return np.zeros(1, np.int64)
        return self._values("reads/offsets", 0, self.array("reads/offsets").shape[0],
                            "reads")

    def read_codes(self, index: int, *, reverse_complement: bool = False) -> np.ndarray:
        place = f"read {index}"
        start, end = (int(v) for v in self._values("reads/offsets", index, index + 2, place))
        codes = self._codes("reads/codes", start, end, place)
        return alphabet.reverse_complement(codes) if reverse_complement else codes

    def iter_reads(self, batch_size: int = 65536) -> Iterator[tuple[str, np.ndarray, dict]]:
        """Yield (name, codes, fields) for every read, reading in batches."""
        if not self.has_reads:
            return
        n = self.n_reads
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            place = f"reads {lo}-{hi - 1}"
            offsets = self._values("reads/offsets", lo, hi + 1, place)
            codes = self._codes("reads/codes", int(offsets[0]), int(offsets[-1]), place)
            noff = self._values("reads/name_offsets", lo, hi + 1, place)
            names = self._values("reads/name_chars", int(noff[0]), int(noff[-1]),
                                 place).tobytes()
            fields = {f: self._values(f"reads/{f}", lo, hi, place) for f in READ_FIELDS}
            for i in range(hi - lo):
                seq = codes[offsets[i] - offsets[0]:offsets[i + 1] - offsets[0]]
                name = names[noff[i] - noff[0]:noff[i + 1] - noff[0]].decode()
                yield name, seq, {f: fields[f][i].item() for f in READ_FIELDS}

    @property
    def references(self) -> list[str]:
        return list(self._reads_attr("references")) if self.has_reads else []
