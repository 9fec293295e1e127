"""The labels of ``genossm benchmark``: where each ALT allele's label (and group) comes from,
and which class, positive or negative, a label falls in.

Labels come from one of:

- ``label_info``: an INFO key of the scored VCF. Per ALT allele its value is the key's i-th value
  for ``Number=A`` (the (i+1)-th for ``Number=R``); for other keys the i-th value when the
  record has as many values as ALT alleles (several ALTs), else the whole value. A ``Flag`` key
  labels itself: present is positive, absent negative.
- ``label_column``: a column of a TSV with a header row: of ``labels`` when given (a labels file
  joined to the scored alleles on its ``chrom``, ``pos``, ``ref`` and ``alt`` columns, names
  case-insensitive, a leading ``#`` ignored: scored.join_labels), else of the score table given
  as input.

A label is missing (the allele unlabelled) when absent, ``.``, empty, ``NA`` or ``NaN``
(``MISSING``). ``positive``: the label values that count as positive, compared as text, or
thresholds on numeric labels (``<X``, ``<=X``, ``>X``, ``>=X``); every other label is negative
unless ``negative`` is given, which makes only its values negative and leaves the rest out
(counted). ``group_by``: an INFO key (with ``label_info``) or a column of the labels' TSV; each
value is a group (missing: ``NA``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from genossm.errors import InputError

MISSING = frozenset({"", ".", "NA", "NaN", "nan", "N/A"})
FLAG_PRESENT = object()   # an INFO entry without a value (a flag set)
_THRESHOLD = re.compile(r"^(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
_INFO_FIELD = re.compile(r"^##INFO=<(.*)>\s*$")


def value_or_none(text: str) -> str | None:
    """``text``, or None when it is MISSING."""
    return None if text in MISSING else text


# --------------------------------------------------------------------------- INFO labels

@dataclass
class InfoKey:
    """What the header and the records say about an INFO key."""
    name: str
    number: str | None = None          # from the header
    type: str | None = None
    with_value: int = 0                 # records where it has a value
    without_value: int = 0              # records where it is set bare (a flag)

    @property
    def is_flag(self) -> bool:
        if self.type is not None:
            return self.type == "Flag"
        return self.without_value > 0 and self.with_value == 0

    @property
    def seen(self) -> bool:
        return self.type is not None or self.with_value + self.without_value > 0

    def header(self, fields: dict[str, str]) -> None:
        """Take Number and Type from the key's ##INFO header line (``info_header``)."""
        self.number = fields.get("Number")
        self.type = fields.get("Type")

    def count(self, raw) -> None:
        """Count one record's entry: a value, FLAG_PRESENT or None (absent)."""
        if raw is FLAG_PRESENT:
            self.without_value += 1
        elif raw is not None:
            self.with_value += 1


def info_header(line: str) -> dict[str, str]:
    """ID, Number and Type of an ##INFO header line ({} for any other line)."""
    m = _INFO_FIELD.match(line)
    if not m:
        return {}
    out = {}
    for key in ("ID", "Number", "Type"):
        km = re.search(rf"(?:^|,){key}=([^,>]*)", m.group(1))
        if km:
            out[key] = km.group(1)
    return out


def _per_alt(raw, key: InfoKey, n_alts: int, i: int, path, place):
    """The value of an INFO entry for ALT i (module docstring)."""
    if raw is None or raw is FLAG_PRESENT:
        return raw
    values = raw.split(",")
    if key.number == "A":
        if len(values) != n_alts:
            raise InputError(path, f"INFO {key.name} (Number=A) has {len(values)} values for "
                                   f"{n_alts} ALT alleles", place=place)
        value = values[i]
    elif key.number == "R":
        if len(values) != n_alts + 1:
            raise InputError(path, f"INFO {key.name} (Number=R) has {len(values)} values for "
                                   f"{n_alts + 1} alleles", place=place)
        value = values[i + 1]
    elif key.number != "1" and n_alts > 1 and len(values) == n_alts:
        value = values[i]
    else:
        value = raw
    return value_or_none(value)


def resolve_info(path, keys: dict[str, InfoKey], pending, label_key: str | None,
                 group_key: str | None) -> bool:
    """Give each allele of ``pending`` ((alleles of a record, its raw entries of ``keys``, its
    number of ALTs), every record of ``path``) its label and group; returns whether the label
    key is a flag (then each label is ``present`` or ``absent``)."""
    for name, key in keys.items():
        option = "--label-info" if name == label_key else "--group-by"
        if not key.seen:
            raise InputError(path, f"INFO key {name!r} ({option}) is in neither the header nor "
                                   "any record")
        if key.with_value and key.without_value and not key.is_flag:
            raise InputError(path, f"INFO key {name!r} ({option}) has a value in some records "
                                   "and is set bare (a flag) in others")
    for record, raws, n_alts in pending:
        for i, allele in enumerate(record):
            for name, key in keys.items():
                raw = raws[name]
                if key.is_flag:
                    value = "absent" if raw is None else "present"
                else:
                    value = _per_alt(None if raw is FLAG_PRESENT else raw, key, n_alts, i,
                                     path, allele.place)
                if name == label_key:
                    allele.label, allele.label_place = value, allele.place
                if name == group_key:
                    allele.group = value
    return bool(label_key) and keys[label_key].is_flag


# --------------------------------------------------------------------------- classes

@dataclass(frozen=True)
class Classes:
    """``--positive`` / ``--negative``: exact label values and thresholds on numeric labels."""
    option: str
    values: frozenset[str]
    thresholds: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, option: str, given) -> Classes | None:
        if given is None:
            return None
        items = given.split(",") if isinstance(given, str) else [str(v) for v in given]
        items = [i.strip() for i in items if i.strip()]
        if not items:
            raise InputError(None, f"{option}: give at least one label value")
        values, thresholds = set(), []
        for item in items:
            m = _THRESHOLD.match(item)
            if m:
                thresholds.append((m.group(1), float(m.group(2))))
            elif item[0] in "<>":
                raise InputError(None, f"{option}: {item!r} is no threshold (<X, <=X, >X, >=X "
                                       "with a number X)")
            else:
                values.add(item)
        return cls(option, frozenset(values), tuple(thresholds))

    def matches(self, label: str, where) -> bool:
        if label in self.values:
            return True
        if not self.thresholds:
            return False
        number = _number(label)
        if number is None:
            if not self.values:
                raise InputError(where[0], f"label {label!r} is not a number, and {self.option} "
                                           "compares numbers", place=where[1])
            return False
        return any(_compare(number, op, x) for op, x in self.thresholds)

    @property
    def side(self) -> int:
        """+1 when only ``>`` thresholds, -1 when only ``<`` ones, else 0 (exact values)."""
        if self.values or not self.thresholds:
            return 0
        sides = {1 if op.startswith(">") else -1 for op, _ in self.thresholds}
        return sides.pop() if len(sides) == 1 else 0

    def describe(self) -> str:
        return ",".join([*sorted(self.values), *(f"{op}{x:g}" for op, x in self.thresholds)])


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _compare(value: float, op: str, x: float) -> bool:
    return {"<": value < x, "<=": value <= x, ">": value > x, ">=": value >= x}[op]



def positive_class(positive: Classes | None, negative: Classes | None, flag: bool,
                   source) -> Classes:
    """The positive class: ``positive``, or ``present`` when the label is a flag (then neither
    ``positive`` nor ``negative`` may be given)."""
    if flag:
        if positive is not None or negative is not None:
            raise InputError(source[0], f"{source[1]} is a flag: present counts as positive, "
                                        "absent as negative; drop --positive and --negative")
        return Classes("--positive", frozenset({"present"}), ())
    if positive is None:
        raise InputError(None, "--positive VALUES: which label values count as positive "
                               "(comma-separated; or a threshold such as '<-1.3')")
    return positive


def classify(alleles, positive: Classes, negative: Classes | None, source):
    """(allele, is positive) of each labelled allele in a class; ``source``: (path, what) of
    the labels, for messages."""
    out = []
    for allele in alleles:
        if allele.label is None:
            continue
        where = (source[0], allele.label_place)
        label = str(allele.label)
        is_pos = positive.matches(label, where)
        is_neg = (not is_pos) if negative is None else negative.matches(label, where)
        if is_pos and is_neg:
            raise InputError(None, f"--positive and --negative both match the label {label!r}")
        if is_pos or is_neg:
            out.append((allele, is_pos))
    return out


def check_classes(alleles, classified, positive: Classes, negative: Classes | None, source):
    """Both classes present, else one line that shows the labels seen."""
    n_pos = sum(1 for _, c in classified if c)
    if n_pos and n_pos < len(classified):
        return
    seen = Counter(str(a.label) for a in alleles if a.label is not None)
    shown = ", ".join(f"{v!r} ({n:,})" for v, n in seen.most_common(8)) or "none"
    if not n_pos:
        which = f"positive (--positive {positive.describe()})"
    elif negative is not None:
        which = f"negative (--negative {negative.describe()})"
    else:
        which = f"negative (not --positive {positive.describe()})"
    raise InputError(source[0], f"{source[1]}: no labelled allele counts as {which}; the "
                                f"labels seen: {shown}")


def target_side(positive: Classes, classified) -> int:
    """What Spearman's rho is against: the numeric label times +1 or -1 when the classes are
    a threshold on it (``Classes.side``) and every classified label is a number, else 0 (the
    class)."""
    side = positive.side
    if side and not all(_number(str(a.label)) is not None for a, _ in classified):
        side = 0
    return side
