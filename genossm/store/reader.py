"""Reading a token store (docs/design.md, "Token store"): ``TokenStore`` and ``ContigInfo``.

Reading is lazy and fork-safe: a ``TokenStore`` opens its Zarr group on first use in each
process, so one object can be handed to many DataLoader workers. Reading is checked: damaged
metadata, a chunk file cut short, undecodable, holding what is no base code or (codes: their
fill value is no code) missing is one InputError naming the file, never a crash or made-up N.
The chunk-file checks it relies on are in ``checks.py``; ``writer.py`` writes what this reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from genossm import alphabet
from genossm.errors import InputError
from genossm.store import layout
from genossm.store.checks import (
    _BLOSC_HEADER,
    _READ_ERRORS,
    _blosc_damage,
    _brief,
    _CheckedStore,
    _CorruptChunk,
)
from genossm.store.layout import FORMAT_VERSION, READ_FIELDS


@dataclass(frozen=True)
class ContigInfo:
    name: str
    key: str
    length: int
    n_count: int
    softmasked: int
    iupac_count: int
    md5: str
    topology: str | None = None   # 'circular' or 'linear' where the input said (GenBank/EMBL)


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
                a = self._node_json(f"contigs/{key}")["attributes"]
                self._contigs[name] = ContigInfo(
                    name=name, key=key, length=int(a["length"]), n_count=int(a["n_count"]),
                    softmasked=int(a["softmasked"]), iupac_count=int(a["iupac_count"]),
                    md5=str(a["md5"]), topology=a.get("topology"))
        return self._contigs[name]

    @property
    def contigs(self) -> list[ContigInfo]:
        return [self.contig(n) for n in self.contig_index]

    def check_files(self) -> None:
        """Read the metadata of every array, check each chunk file's size against its Blosc
        header and that every chunk file of codes is there (in stores whose codes fill value
        is CODES_FILL); InputError naming the first file that is missing, cut short or
        unreadable. What the chunks decode to is checked as they are read. (The metadata is
        read as JSON: ``_node_json``.)"""
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
            if not path.endswith("codes") or fill != layout.CODES_FILL:
                continue
            missing = next((i for i in range(-(-length // chunk)) if str(i) not in present),
                           None)
            if missing is not None:
                raise InputError(self.path, f"chunk file {path}/c/{missing} is missing; the "
                                            "store is damaged", place=place)

    def _node_json(self, node: str) -> dict:
        """The zarr.json of ``node`` read as JSON, not opened through Zarr: a store of thousands
        of contigs is listed and checked in a fraction of a second."""
        return json.loads((self.path / node / "zarr.json").read_text())

    def _array_shape(self, path: str) -> tuple[int, int, object]:
        """(length, chunk length, fill value) of the 1-D array at ``path``, from its
        zarr.json."""
        with self._metadata(path):
            meta = self._node_json(path)
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
