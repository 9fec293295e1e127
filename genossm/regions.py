"""Genomic regions: the one region type and the one BED reader (docs/design.md, "Regions").

Training intervals, validation intervals, evaluated regions, embedded regions and the windows
read around variants are all ``Region``: 0-based, half-open [start, end) on one contig, with an
optional name and strand (from a BED), the index of the token store it lies in (when a run reads
several), and where it came from, so that an error about it names the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from genossm.errors import InputError

STRANDS = ("+", "-", ".")
MAX_COORDINATE = (1 << 63) - 1   # coordinates are int64 wherever they are stored or computed


@dataclass(frozen=True)
class Region:
    """Half-open [start, end) on ``contig``. ``source`` and ``place`` (e.g. a BED file and
    "line 7") say where it was read, for error messages; they take no part in equality."""
    contig: str
    start: int
    end: int
    name: str = ""
    strand: str = "."
    store: int = 0
    source: str | None = field(default=None, compare=False)
    place: str | None = field(default=None, compare=False)

    @property
    def length(self) -> int:
        return self.end - self.start

    def error(self, message: str) -> InputError:
        """An InputError naming where this region was read."""
        return InputError(self.source, message, place=self.place)

    def interval_json(self) -> dict:
        """The form recorded in a model directory's split: store index, contig, start, end."""
        return {"store": self.store, "contig": self.contig, "start": self.start,
                "end": self.end}


def read_bed(path) -> list[Region]:
    """Every record of a BED file (name from column 4, strand from column 6); blank, header,
    track and comment lines are skipped. Errors name the file and the line."""
    path = Path(path)
    regions = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read BED ({e})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        place = f"line {number}"
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) < 3:
            raise InputError(path, "a BED line needs chrom, start and end separated by tabs",
                             place=place)
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise InputError(path, "start and end must be integers", place=place) from None
        if not 0 <= start < end:
            raise InputError(path, f"need 0 <= start < end, got {start}-{end}", place=place)
        if end > MAX_COORDINATE:
            raise InputError(path, f"end {end} is past any contig (coordinates must be below "
                                   "2^63)", place=place)
        name = fields[3] if len(fields) > 3 else ""
        strand = fields[5] if len(fields) > 5 else "."
        regions.append(Region(fields[0], start, end, name, strand, source=str(path),
                              place=place))
    return regions


def check_inside(regions: list[Region], lengths: dict[str, int], where: str) -> None:
    """Every region lies on a contig of ``lengths`` (named ``where`` in the error) and ends
    before its end."""
    for r in regions:
        if r.contig not in lengths:
            raise r.error(f"contig {r.contig!r} is not in {where}")
        if r.end > lengths[r.contig]:
            raise r.error(f"{r.contig}:{r.start}-{r.end} runs past the contig's end "
                          f"({lengths[r.contig]:,})")


def merge_spans(spans) -> list[tuple[int, int]]:
    """Sorted, non-overlapping (start, end) spans covering the same bases as ``spans``
    (touching spans are joined)."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def overlap_bases(regions: list[Region], others: list[Region]) -> int:
    """Bases of ``regions`` (counted once per region) that lie in any of ``others``."""
    by_contig: dict[str, list[tuple[int, int]]] = {}
    for o in others:
        by_contig.setdefault(o.contig, []).append((o.start, o.end))
    merged = {c: merge_spans(s) for c, s in by_contig.items()}
    return sum(max(0, min(r.end, b) - max(r.start, a))
               for r in regions for a, b in merged.get(r.contig, []))
