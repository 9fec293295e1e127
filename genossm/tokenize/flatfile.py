"""GenBank, EMBL and 2bit into a token store, and GenBank/EMBL features as a BED beside it.

The files are read through Biopython by ``genossm.seqformats`` (``flat_file_records``,
``TwoBitFile``), which owns their parsing and its errors. GenBank/EMBL records are parsed one at
a time (a record's sequence is in memory while it is written); 2bit records are read by seeking,
a block at a time. GenBank and EMBL write their sequence in one case, which carries no mask: no
base of theirs is soft-masked. 2bit keeps its mask blocks as lower case, which the store records
as soft-masked, as it does FASTA's lower case. A record's topology ('circular' or 'linear'),
where GenBank/EMBL state it, becomes the contig attribute ``topology``.

The features BED (``tokenize --features CDS,gene``) has one line per part of each feature's
location (a joined location, or one across the origin of a circular genome, has several),
0-based and half-open, in the columns chrom, start, end, name, score (0), strand, type and part
("k/n", parts numbered in the order of the location, which is the biological order).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genossm import __version__, alphabet
from genossm.errors import InputError
from genossm.fileio import OutputKind
from genossm.seqformats import FlatRecord, TwoBitFile, flat_file_records
from genossm.store import ContigWriter, StoreWriter
from genossm.tokenize.compressed import (
    _DECOMPRESS_ERRORS,
    _is_gzip,
    decompress_error,
    gzip_fault,
    gzip_fault_error,
    progress_bar,
)
from genossm.tokenize.fasta import ContigCounts, ContigSummary

log = logging.getLogger("genossm.tokenize")

FLAT_FORMATS = ("genbank", "embl")
BLOCK_BASES = 1 << 23            # bases encoded at a time
FEATURES_MARK = "#genossm features"
FEATURE_COLUMNS = ("chrom", "start", "end", "name", "score", "strand", "type", "part")
# qualifiers that name a feature, the first one present wins; else TYPE_N (its number)
NAME_QUALIFIERS = ("locus_tag", "gene", "protein_id", "label", "standard_name")


def _is_features_bed(path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.readline(len(FEATURES_MARK) + 1).decode("ascii", "replace").startswith(
                FEATURES_MARK)
    except OSError:
        return False


FEATURES_BED = OutputKind("a genossm features BED", _is_features_bed)


def default_features_bed(store: Path) -> Path:
    """STORE.features.bed beside the store (``genome.zarr`` -> ``genome.features.bed``)."""
    store = Path(store)
    return store.with_name(store.name.removesuffix(".zarr") + ".features.bed")


def parse_feature_types(text: str | None) -> list[str] | None:
    """``CDS,gene`` -> ['CDS', 'gene'] (None stays None); an empty list is an error."""
    if text is None:
        return None
    types = list(dict.fromkeys(t.strip() for t in str(text).split(",") if t.strip()))
    if not types:
        raise InputError(None, f"--features: no feature type in {text!r} (e.g. CDS,gene)")
    return types


@dataclass
class FlatFileSummary(ContigSummary):
    features: dict[str, int] = field(default_factory=dict)            # type -> BED lines
    features_skipped: dict[str, int] = field(default_factory=dict)    # reason -> parts


class _ContigEncoder(ContigCounts):
    """Encodes one record's letters, block by block, into its ContigWriter, with the counts
    and md5 of the contig attributes."""

    def __init__(self, writer: ContigWriter, path: Path, place: str):
        super().__init__(writer)
        self.path, self.place = path, place
        self.md5 = hashlib.md5()

    def add(self, letters: bytes) -> None:
        tagged = np.frombuffer(letters.translate(alphabet.TAGGED_BYTES), np.uint8)
        if not tagged.size:
            return
        top = int(tagged.max())
        if top == alphabet.INVALID:
            pos = int(np.flatnonzero(tagged == alphabet.INVALID)[0])
            shown = chr(letters[pos]) if 32 < letters[pos] < 127 else f"\\x{letters[pos]:02x}"
            raise InputError(self.path, f"invalid character '{shown}' in sequence",
                             place=f"{self.place}, base {self.length + pos + 1:,}")
        # below SOFTMASK_BIT every letter is an upper-case A C G T or N
        upper = letters if top < alphabet.SOFTMASK_BIT else letters.upper()
        self.md5.update(upper)
        self.append(tagged, top, upper)

    def finish(self, summary: FlatFileSummary, **attrs) -> None:
        self.close(summary, md5=self.md5.hexdigest(), source=str(self.path), **attrs)


class FeatureBed:
    """The features BED being written (to its staged path): one line per location part of
    each feature of the chosen types."""

    def __init__(self, path: Path, types: list[str]):
        self.types = types
        self.found: dict[str, int] = dict.fromkeys(types, 0)
        self.fh = open(path, "w", encoding="utf-8")
        self.fh.write(f"{FEATURES_MARK}\tgenossm {__version__}\ttypes={','.join(types)}\n"
                      f"#{chr(9).join(FEATURE_COLUMNS)}\n")

    def add(self, path: Path, flat: FlatRecord, summary: FlatFileSummary) -> None:
        """Write the features of ``flat`` whose type was chosen; count them in ``summary``."""
        record, length = flat.record, len(flat.record.seq)
        for number, feature in enumerate(record.features, 1):
            if feature.type not in self.found:
                continue
            if feature.location is None:
                _count(summary.features_skipped, "no location")
                continue
            name = _feature_name(feature, number)
            parts = feature.location.parts
            for k, part in enumerate(parts, 1):
                if part.ref is not None and part.ref not in (record.id, record.name):
                    _count(summary.features_skipped, "part on another record")
                    continue
                start, end = int(part.start), int(part.end)
                if end <= start:
                    _count(summary.features_skipped, "part of no length")
                    continue
                if start < 0 or end > length:
                    raise InputError(path, f"{feature.type} feature {name!r} ({part}) runs past "
                                           f"the record's end ({length:,} bases)",
                                     place=flat.place)
                strand = {1: "+", -1: "-"}.get(part.strand, ".")
                self.fh.write(f"{flat.name}\t{start}\t{end}\t{name}\t0\t{strand}\t"
                              f"{feature.type}\t{k}/{len(parts)}\n")
                _count(summary.features, feature.type)
                self.found[feature.type] += 1

    def close(self) -> None:
        self.fh.close()

    def check_found(self, bed: Path) -> None:
        """Every chosen type was found in some input: a type found nowhere is an error (a
        misspelt type would otherwise give an empty BED)."""
        missing = [t for t, n in self.found.items() if n == 0]
        if missing:
            raise InputError(bed, f"no feature of type {', '.join(missing)} in any GenBank/EMBL "
                                  "input (types are case-sensitive, as in the files: CDS, gene, "
                                  "tRNA, ...)")


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _feature_name(feature, number: int) -> str:
    for qualifier in NAME_QUALIFIERS:
        values = feature.qualifiers.get(qualifier)
        if values:
            return "_".join(str(values[0]).split()) or f"{feature.type}_{number}"
    return f"{feature.type}_{number}"


def tokenize_flat_file(path: Path, fmt: str, store: StoreWriter, *,
                       features: FeatureBed | None = None,
                       progress: bool = True) -> FlatFileSummary:
    """Every record of a GenBank or EMBL file (plain or gzip) into ``store``; the features of
    the chosen types into ``features``."""
    summary = FlatFileSummary(path=str(path), format=fmt)
    bar = progress_bar(progress, unit=" records", desc=path.name)
    try:
        for flat in _records(path, fmt):
            encoder = _ContigEncoder(store.add_contig(flat.name, f"{path}: {flat.place}"), path,
                                     flat.place)
            letters = bytes(flat.record.seq)
            for start in range(0, len(letters), BLOCK_BASES):
                encoder.add(letters[start:start + BLOCK_BASES])
            topology = {"topology": flat.topology} if flat.topology else {}
            encoder.finish(summary, **topology)
            if features is not None:
                features.add(path, flat, summary)
            bar.update(1)
    except InputError:
        # corrupt gzip data decodes to text before its checksum is checked: bad text in a
        # gzip input is the compression's fault where zlib finds one
        fault = _is_gzip(path) and gzip_fault(path)
        if fault:
            raise gzip_fault_error(path, fault) from None
        raise
    finally:
        bar.close()
    return summary


def _records(path: Path, fmt: str):
    """``flat_file_records``, with a gzip stream that fails to decompress named by its
    compressed byte and text line."""
    records = flat_file_records(path, fmt)
    while True:
        try:
            flat = next(records)
        except StopIteration:
            return
        except _DECOMPRESS_ERRORS as e:
            raise decompress_error(path, e) from None
        yield flat


def tokenize_twobit(path: Path, store: StoreWriter, *, progress: bool = True) -> FlatFileSummary:
    """Every record of a 2bit file into ``store``, mask blocks as soft-masked bases. Records of
    no length are skipped with a warning, like FASTA's empty records."""
    summary = FlatFileSummary(path=str(path), format="twobit")
    twobit = TwoBitFile(path)
    bar = progress_bar(progress, total=sum(twobit.lengths.values()), unit="bp",
                       unit_scale=True, desc=path.name)
    try:
        for number, (name, length) in enumerate(twobit.lengths.items(), 1):
            if length == 0:
                log.warning("%s: record %r (record %d) has no sequence; skipped", path, name,
                            number)
                summary.empty_records.append(f"{name} (record {number})")
                continue
            place = f"record {name!r} (record {number})"
            encoder = _ContigEncoder(store.add_contig(name, f"{path}: {place}"), path, place)
            for start in range(0, length, BLOCK_BASES):
                end = min(length, start + BLOCK_BASES)
                encoder.add(twobit.text(name, start, end).encode("ascii"))
                bar.update(end - start)
            encoder.finish(summary)
    finally:
        bar.close()
        twobit.close()
    if not summary.contigs:
        raise InputError(path, f"no sequence in any record ({len(twobit.lengths):,} records)")
    return summary
