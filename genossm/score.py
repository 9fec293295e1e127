"""``genossm score``: VCF/BCF + reference FASTA + model -> scored VCF (bgzipped, tabix-indexed)
and a table with one row per (record, alt allele).

Haplotypes. For a record at POS with REF of length r and a window W, both haplotypes share the
left flank (the W//2 bases before POS) and the right flank (the W - W//2 bases after the REF
span) and differ in the middle: ``left + REF + right`` against ``left + ALT + right``. Bases
outside the contig are N.

Scores, per alt allele, all in natural log (nats):

- ``GENOSSM_LLR``, causal (clm) models: ln P(alt haplotype) - ln P(ref haplotype). The left flank's
  terms are the same for both and cancel, so it is the sum of ln p over the allele and the right
  flank. With prefix reuse the left flank is run once, its streaming state is copied into one
  branch per allele (REF and every ALT), and the branches run as one batch, padded at the end
  and masked. Windows longer than one call can hold are streamed in pieces.
- ``GENOSSM_LLR``, masked-LM models (objective mlm, e.g. bidirectional): the REF span of the ref
  haplotype is replaced by MASK and the score is sum over the masked positions of
  ln p(alt base) - ln p(ref base): SNVs and MNVs only, indels get ``indel_needs_causal_model``
  (their embedding distances are still computed).
- ``GENOSSM_COS`` / ``GENOSSM_L2``: cosine distance (1 - cos) and Euclidean distance between the
  means of the final hidden states over the ref and the alt haplotype.

Every score is the average of the forward strand and the reverse-complemented haplotypes (whose
shared prefix is then the reverse complement of the right flank), except for RC-equivariant
models, which see both strands already.

Every input record is written out, in order, with its text untouched apart from the added INFO
entries; alleles that cannot be scored get '.' and a ``GENOSSM_STATUS`` saying why (STATUSES).
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pysam
import torch
import torch.nn.functional as F
from tqdm import tqdm

from genossm import __version__, alphabet
from genossm.errors import InputError
from genossm.fileio import open_fasta
from genossm.model import GenoSSM, reverse_complement_logits
from genossm.plots import plot_score_distributions
from genossm.runtime import open_model

DEFAULT_WINDOW = 4096
DEFAULT_BATCH_SIZE = 32
TOKENS_PER_CALL = 1 << 17   # rows x piece length of one model call when streaming
RENAMES = ("add-chr", "strip-chr")
INFO_IDS = ("GENOSSM_LLR", "GENOSSM_COS", "GENOSSM_L2", "GENOSSM_STATUS")
TABLE_COLUMNS = ("chrom", "pos", "id", "ref", "alt", "record", "alt_index", "llr",
                 "cosine_distance", "l2_distance", "status")

SCORED = "scored"
INDEL_NEEDS_CAUSAL = "indel_needs_causal_model"
STATUSES = (SCORED, "ref_mismatch", "contig_not_in_fasta", "chrom_name_mismatch",
            "symbolic_allele", "breakend", "star_allele", "invalid_allele", "no_alt",
            INDEL_NEEDS_CAUSAL)
EMBEDDABLE = (SCORED, INDEL_NEEDS_CAUSAL)   # statuses whose haplotypes the model reads


# --------------------------------------------------------------------------- records


@dataclass
class Record:
    """One VCF record on its way through: its text line, its alleles and, per alt, the
    status and scores (None = not scored)."""

    number: int                 # 1-based, in file order
    line: bytes                 # the record's text, without the line end
    chrom: str
    pos: int                    # 1-based, as in the VCF
    id: str
    ref: str
    alts: tuple[str, ...]
    status: list[str] = field(default_factory=list)
    llr: list[float | None] = field(default_factory=list)
    cos: list[float | None] = field(default_factory=list)
    l2: list[float | None] = field(default_factory=list)
    left: np.ndarray | None = None      # flank codes, set when an allele is to be scored
    right: np.ndarray | None = None

    def alleles_to_read(self) -> list[int]:
        """Alts whose haplotypes the model reads."""
        return [i for i, s in enumerate(self.status) if s in EMBEDDABLE]

    def alleles_read(self) -> list[int]:
        """0 (REF), then 1 + the index of each alt to read."""
        return [0, *[i + 1 for i in self.alleles_to_read()]]

    def haplotype_middle(self, allele: int) -> np.ndarray:
        """Codes of allele 0 (REF) or allele i (ALT i)."""
        return alphabet.encode(self.ref if allele == 0 else self.alts[allele - 1])


def allele_status(alt: str) -> str | None:
    """Why an ALT allele cannot be scored, or None when it is a sequence."""
    if alt == "*":
        return "star_allele"
    if alt == ".":
        return "no_alt"
    if alt.startswith("<"):
        return "symbolic_allele"
    if "[" in alt or "]" in alt or alt.startswith(".") or alt.endswith("."):
        return "breakend"
    if (alphabet.ENCODE_TABLE[np.frombuffer(alt.encode("latin-1"), np.uint8)]
            == alphabet.INVALID).any():
        return "invalid_allele"
    return None


# --------------------------------------------------------------------------- inputs


def read_chrom_map(path) -> dict[str, str]:
    """Two tab-separated columns per line: VCF contig name, FASTA contig name."""
    mapping: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read ({e})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not all(fields):
            raise InputError(path, "expected two tab-separated names (VCF contig, FASTA contig)",
                             place=f"line {number}")
        if fields[0] in mapping:
            raise InputError(path, f"contig {fields[0]!r} is mapped twice", place=f"line {number}")
        mapping[fields[0]] = fields[1]
    return mapping


class ContigResolver:
    """VCF contig name -> (FASTA contig or None, status), with the renaming the user asked for;
    remembers which renaming would have found a missing contig (for the summary)."""

    def __init__(self, fasta: pysam.FastaFile, rename: str | None, chrom_map: dict | None):
        self.lengths = dict(zip(fasta.references, fasta.lengths, strict=True))
        self.rename = rename
        self.chrom_map = chrom_map or {}
        self.cache: dict[str, tuple[str | None, str]] = {}
        self.suggestions: dict[str, str] = {}   # VCF contig -> option that would find it
        self.missing: list[str] = []

    def __call__(self, chrom: str) -> tuple[str | None, str]:
        if chrom not in self.cache:
            self.cache[chrom] = self._resolve(chrom)
        return self.cache[chrom]

    def _resolve(self, chrom: str) -> tuple[str | None, str]:
        name = self.chrom_map.get(chrom, chrom)
        if self.rename == "add-chr" and not name.startswith("chr"):
            name = "chr" + name
        elif self.rename == "strip-chr" and name.startswith("chr"):
            name = name[3:]
        if name in self.lengths:
            return name, SCORED
        if chrom.startswith("chr") and chrom[3:] in self.lengths:
            self.suggestions[chrom] = f"--rename-chroms strip-chr would find {chrom} as {chrom[3:]}"
            return None, "chrom_name_mismatch"
        if "chr" + chrom in self.lengths:
            self.suggestions[chrom] = f"--rename-chroms add-chr would find {chrom} as chr{chrom}"
            return None, "chrom_name_mismatch"
        self.missing.append(chrom)
        return None, "contig_not_in_fasta"


@contextmanager
def _quiet_htslib():
    """htslib warns on stderr about VCFs without ##contig lines; problems are reported here."""
    previous = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(previous)


def _open_variants(path: Path) -> pysam.VariantFile:
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        return pysam.VariantFile(str(path))
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable VCF or BCF ({e})") from None


class VariantSource:
    """The VCF/BCF's header text and its records, each paired with its text line: the input's
    own bytes for VCF (plain or compressed), htslib's rendering for BCF."""

    def __init__(self, path):
        self.path = Path(path)
        with _quiet_htslib():
            vf = _open_variants(self.path)
        self.is_bcf = vf.format == "BCF"
        if self.is_bcf:
            self.header_lines = str(vf.header).encode().splitlines()
        else:
            self.header_lines = []
            with self._text() as fh:
                for line in fh:
                    self.header_lines.append(line.rstrip(b"\r\n"))
                    if line.startswith(b"#CHROM"):
                        break
        info = {r.get("ID") for r in vf.header.records if r.key == "INFO"}
        vf.close()
        if not self.header_lines or not self.header_lines[-1].startswith(b"#CHROM"):
            raise InputError(self.path, "no #CHROM header line")
        clash = [i for i in INFO_IDS if i in info]
        if clash:
            raise InputError(self.path, f"already has {clash[0]} in its header; score the "
                                        "original VCF")

    def _text(self):
        with open(self.path, "rb") as fh:
            compressed = fh.read(2) == b"\x1f\x8b"
        return gzip.open(self.path, "rb") if compressed else open(self.path, "rb")

    def _place(self, number: int) -> str:
        if self.is_bcf:
            return f"record {number}"
        return f"record {number} (line {len(self.header_lines) + number})"

    def _records(self) -> Iterator[pysam.VariantRecord]:
        """pysam's records; a record it cannot parse is an InputError naming its place."""
        with _quiet_htslib():
            vf = _open_variants(self.path)
            it = iter(vf)
            number = 0
            while True:
                number += 1
                try:
                    record = next(it)
                except StopIteration:
                    break
                except (OSError, ValueError) as e:
                    raise InputError(self.path, f"malformed record ({e})",
                                     place=self._place(number)) from None
                yield record
            vf.close()

    def check(self) -> int:
        """Parse every record and check the order tabix needs (each contig in one block,
        positions not decreasing); returns the number of records."""
        seen: set[str] = set()
        chrom, pos, number = None, 0, 0
        for number, record in enumerate(self._records(), 1):
            if record.chrom != chrom:
                if record.chrom in seen:
                    raise InputError(self.path, f"not sorted: contig {record.chrom} appears "
                                                f"again after {chrom}; sort it (bcftools sort)",
                                     place=self._place(number))
                seen.add(record.chrom)
                chrom, pos = record.chrom, 0
            elif record.pos < pos:
                raise InputError(self.path, f"not sorted: {chrom}:{record.pos} comes after "
                                            f"{chrom}:{pos}; sort it (bcftools sort)",
                                 place=self._place(number))
            pos = record.pos
        return number

    def __iter__(self) -> Iterator[Record]:
        lines = iter(()) if self.is_bcf else self._text_body()
        for number, rec in enumerate(self._records(), 1):
            line = str(rec).encode().rstrip(b"\n") if self.is_bcf else next(lines, b"")
            if not line.startswith(f"{rec.chrom}\t{rec.pos}\t".encode()):
                raise InputError(self.path, "the text line does not match the record htslib "
                                            "read (blank or stray lines?)",
                                 place=self._place(number))
            yield Record(number, line, rec.chrom, rec.pos, rec.id or ".", rec.ref or "",
                         tuple(rec.alts or ()))

    def _text_body(self) -> Iterator[bytes]:
        with self._text() as fh:
            for _ in self.header_lines:
                next(fh)
            for line in fh:
                yield line.rstrip(b"\r\n")


# --------------------------------------------------------------------------- the model


@dataclass
class StrandScores:
    """Per read allele (REF first): ln-likelihood of the scored part (causal models) and mean
    hidden state."""
    logp: torch.Tensor | None   # (alleles,) float64
    mean: torch.Tensor          # (alleles, width) float64


class Scorer:
    """Scores batches of records with one model (see the module docstring)."""

    def __init__(self, model: GenoSSM, *, window: int, batch_size: int, prefix_reuse: bool = True,
                 piece_length: int | None = None):
        self.model = model
        self.config = model.config
        self.window = window
        self.left_length = window // 2
        self.right_length = window - window // 2
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.piece_length = piece_length
        self.device = model.embedding.weight.device
        self.causal_lm = self.config.objective == "clm"
        self.rc_average = not self.config.rc_equivariant

    def rows(self, record: Record) -> int:
        """How many sequences the record adds to a batch (per strand)."""
        return len(record.alleles_to_read()) + 1

    @torch.inference_mode()
    def score(self, records: list[Record]) -> None:
        """Fill in llr, cos and l2 of every allele whose status is scored (or, for masked-LM
        models, indel_needs_causal_model: distances only)."""
        records = [r for r in records if r.alleles_to_read()]
        if not records:
            return
        strands = (False, True) if self.rc_average else (False,)
        per_strand = [self._score_strand(records, rc) for rc in strands]
        for i, record in enumerate(records):
            alleles = record.alleles_to_read()
            results = [s[i] for s in per_strand]
            for j, allele in enumerate(alleles):
                record.llr[allele] = _mean(r[j][0] for r in results)
                record.cos[allele] = _mean(r[j][1] for r in results)
                record.l2[allele] = _mean(r[j][2] for r in results)

    def _score_strand(self, records: list[Record], rc: bool):
        """Per record, per alt to read: (llr or None, cosine distance, L2 distance)."""
        if self.causal_lm:
            scores = self._causal(records, rc)
            llrs = [[s.logp[j + 1] - s.logp[0] for j in range(len(s.logp) - 1)] for s in scores]
        else:
            scores = self._embed_full(records, rc)
            llrs = self._masked_llr(records, rc)
        out = []
        for record_scores, record_llrs in zip(scores, llrs, strict=True):
            ref, alts = record_scores.mean[0], record_scores.mean[1:]
            cos = 1 - F.cosine_similarity(alts, ref[None], dim=-1)
            l2 = (alts - ref).norm(dim=-1)
            out.append([(None if llr is None else float(llr), float(c), float(d))
                        for llr, c, d in zip(record_llrs, cos, l2, strict=True)])
        return out

    # --- causal: shared prefix, one branch per allele --------------------------------------
    def _prefix_and_branches(self, record: Record, rc: bool):
        middles = [record.haplotype_middle(a) for a in record.alleles_read()]
        if not rc:
            return record.left, [np.concatenate([m, record.right]) for m in middles]
        return (alphabet.reverse_complement(record.right),
                [alphabet.reverse_complement(np.concatenate([record.left, m])) for m in middles])

    def _causal(self, records: list[Record], rc: bool) -> list[StrandScores]:
        prefixes, branches = zip(*(self._prefix_and_branches(r, rc) for r in records),
                                 strict=True)
        prefix_length = len(prefixes[0])
        owner = [i for i, b in enumerate(branches) for _ in b]          # row -> record
        rows = [seq for b in branches for seq in b]
        logp = torch.empty(len(rows), dtype=torch.float64, device=self.device)
        means = [None] * len(rows)
        if self.prefix_reuse:
            tokens = self._tensor(np.stack(prefixes))
            lengths = torch.full((len(prefixes),), prefix_length, device=self.device)
            _, prefix_sum, state, last = self._stream(
                tokens, lengths, self.model.initial_state(len(prefixes)), None, prefix_length)
        for start in range(0, len(rows), self.batch_size):
            batch = list(range(start, min(start + self.batch_size, len(rows))))
            if self.prefix_reuse:
                index = torch.as_tensor([owner[i] for i in batch], device=self.device)
                tokens, lengths = self._padded([rows[i] for i in batch])
                lp, h_sum, _, _ = self._stream(tokens, lengths, state.index_select(index),
                                               last[index], 0)
                h_sum = h_sum + prefix_sum[index]
                lengths = lengths + prefix_length
            else:
                tokens, lengths = self._padded([np.concatenate([prefixes[owner[i]], rows[i]])
                                                for i in batch])
                lp, h_sum, _, _ = self._stream(tokens, lengths,
                                               self.model.initial_state(len(batch)), None,
                                               prefix_length)
            logp[start:start + len(batch)] = lp
            for k, i in enumerate(batch):
                means[i] = h_sum[k] / lengths[k]
        return self._group(owner, logp, means, len(records))

    def _stream(self, tokens, lengths, state, previous_logits, score_from: int):
        """Run padded rows through the model in pieces, carrying ``state``. Returns the sum of
        ln p(token t) over t >= score_from within each row's length (token t is predicted by
        the logits at t-1, or by ``previous_logits`` for t = 0), the sum of the final hidden
        states over each row's length, the state and the logits at the last position."""
        rows, total = tokens.shape
        logp = torch.zeros(rows, dtype=torch.float64, device=self.device)
        h_sum = None
        piece = self._piece(rows, total)
        for start in range(0, total, piece):
            chunk = tokens[:, start:start + piece]
            h, state = self.model.hidden_states(chunk, state=state)
            position = torch.arange(start, start + chunk.shape[1], device=self.device)
            inside = position[None] < lengths[:, None]
            part = (h * inside[..., None]).sum(1, dtype=torch.float64)
            h_sum = part if h_sum is None else h_sum + part
            logits = self.model.head(h)
            if start + chunk.shape[1] > score_from:
                if previous_logits is None:
                    predicted, targets, position = logits[:, :-1], chunk[:, 1:], position[1:]
                else:
                    predicted = torch.cat([previous_logits[:, None], logits[:, :-1]], 1)
                    targets = chunk
                lp = torch.log_softmax(predicted.float(), -1).gather(-1, targets[..., None])
                wanted = (position[None] >= score_from) & (position[None] < lengths[:, None])
                logp += (lp[..., 0].double() * wanted).sum(1)
            previous_logits = logits[:, -1]
        return logp, h_sum, state, previous_logits

    def _piece(self, rows: int, total: int) -> int:
        """Streaming piece length: at most TOKENS_PER_CALL tokens per call, pieces of about
        equal length in whole scan chunks."""
        if self.piece_length:
            return self.piece_length
        chunk = self.config.chunk_size
        limit = max(chunk, TOKENS_PER_CALL // rows // chunk * chunk)
        piece = math.ceil(total / math.ceil(total / limit))
        return min(limit, math.ceil(piece / chunk) * chunk)

    # --- masked LM: one masked window per record, full windows for the distances ------------
    def _masked_llr(self, records: list[Record], rc: bool) -> list[list[float | None]]:
        """Per record, per alt read: sum over the REF span of ln p(alt) - ln p(ref) with the
        span masked, or None for an alt of another length than REF (an indel)."""
        masked = [r for r in records if SCORED in r.status]
        windows = [np.concatenate([r.left, np.full(len(r.ref), alphabet.MASK, np.uint8),
                                   r.right]) for r in masked]
        logps = iter(self._full_pass(windows, rc, lambda h: torch.log_softmax(
            self.model.head(h).float(), -1)))
        out = []
        for record in records:
            if SCORED not in record.status:
                out.append([None] * len(record.alleles_to_read()))
                continue
            span = next(logps)[self.left_length:self.left_length + len(record.ref)]
            ref = _gather(span, record.haplotype_middle(0))
            out.append([_gather(span, record.haplotype_middle(a + 1)) - ref
                        if record.status[a] == SCORED else None
                        for a in record.alleles_to_read()])
        return out

    def _embed_full(self, records: list[Record], rc: bool) -> list[StrandScores]:
        owner, windows = [], []
        for i, record in enumerate(records):
            for allele in record.alleles_read():
                owner.append(i)
                windows.append(np.concatenate([record.left, record.haplotype_middle(allele),
                                               record.right]))
        means = self._full_pass(windows, rc, lambda h: h.double().mean(1))
        return self._group(owner, None, means, len(records))

    def _full_pass(self, windows: list[np.ndarray], rc: bool, reduce) -> list[torch.Tensor]:
        """``reduce(hidden states)`` of each whole window (reverse-complemented when ``rc``,
        per-position results mapped back to forward coordinates), batching windows of equal
        length (padding would change what a non-causal model reads)."""
        results: list[torch.Tensor | None] = [None] * len(windows)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        for group in by_length.values():
            for start in range(0, len(group), self.batch_size):
                batch = group[start:start + self.batch_size]
                seqs = np.stack([windows[i] for i in batch])
                tokens = self._tensor(alphabet.reverse_complement(seqs) if rc else seqs)
                out = reduce(self.model.hidden_states(tokens))
                if rc and out.dim() == 3:
                    out = reverse_complement_logits(out)
                for k, i in enumerate(batch):
                    results[i] = out[k]
        return results

    # --- helpers -------------------------------------------------------------------------
    def _tensor(self, codes: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(codes).astype(np.int64)).to(self.device)

    def _padded(self, seqs: list[np.ndarray]):
        """Rows padded at the end with N, and their lengths."""
        lengths = [len(s) for s in seqs]
        out = np.full((len(seqs), max(lengths)), alphabet.N, np.uint8)
        for row, s in zip(out, seqs, strict=True):
            row[:len(s)] = s
        return self._tensor(out), torch.as_tensor(lengths, device=self.device)

    @staticmethod
    def _group(owner, logp, means, n_records) -> list[StrandScores]:
        grouped = [[] for _ in range(n_records)]
        for row, i in enumerate(owner):
            grouped[i].append(row)
        return [StrandScores(None if logp is None else logp[rows],
                             torch.stack([means[r] for r in rows])) for rows in grouped]


def _gather(logp: torch.Tensor, codes: np.ndarray) -> float:
    index = torch.as_tensor(codes.astype(np.int64), device=logp.device)
    return float(logp.gather(-1, index[:, None]).double().sum())


def _mean(values) -> float | None:
    values = list(values)
    return None if values[0] is None else sum(values) / len(values)


# --------------------------------------------------------------------------- output


def _format(value: float | None) -> str:
    return "." if value is None else f"{value:.6g}"


def _info_entries(record: Record) -> bytes:
    columns = (("GENOSSM_LLR", record.llr), ("GENOSSM_COS", record.cos),
               ("GENOSSM_L2", record.l2))
    parts = [f"{key}={','.join(_format(v) for v in values)}" for key, values in columns]
    parts.append(f"GENOSSM_STATUS={','.join(record.status)}")
    return ";".join(parts).encode()


def annotated_line(record: Record) -> bytes:
    """The record's line with the GENOSSM INFO entries added; every other byte kept."""
    if not record.alts:
        return record.line
    fields = record.line.split(b"\t")
    info = fields[7]
    fields[7] = _info_entries(record) if info == b"." else info + b";" + _info_entries(record)
    return b"\t".join(fields)


def table_rows(record: Record) -> Iterator[str]:
    def number(value):
        return "NA" if value is None else f"{value:.7g}"

    head = [record.chrom, str(record.pos), record.id, record.ref]
    if not record.alts:
        yield "\t".join([*head, ".", str(record.number), "NA", "NA", "NA", "NA", "no_alt"])
    for i, alt in enumerate(record.alts):
        yield "\t".join([*head, alt, str(record.number), str(i + 1), number(record.llr[i]),
                         number(record.cos[i]), number(record.l2[i]), record.status[i]])


def score_header_lines(model_dir: Path, config, *, window: int, prefix_reuse: bool,
                       rc_average: bool, renaming: str) -> list[bytes]:
    """The ##INFO lines for the scores and a ##genossm_score line with the settings."""
    model = (f"genossm model {model_dir.resolve().name} ({config.objective}, "
             f"d_model={config.d_model}, n_layer={config.n_layer}, d_state={config.d_state}"
             + (", bidirectional" if config.bidirectional else "")
             + (", rc_equivariant" if config.rc_equivariant else "") + ")")
    strands = ", averaged over both strands" if rc_average else ""
    if config.objective == "clm":
        llr = (f"ln P(alt haplotype) - ln P(ref haplotype) over a {window} bp window centred "
               f"on the variant")
    else:
        llr = (f"sum over the masked REF bases of ln p(alt base) - ln p(ref base) in a "
               f"{window} bp window centred on the variant (SNVs and MNVs)")
    lines = [
        ("GENOSSM_LLR", "Float", f"{llr}{strands}, by {model}"),
        ("GENOSSM_COS", "Float", f"Cosine distance (1 - cos) between the mean final hidden "
                                 f"states over the ref and alt haplotypes{strands}, by {model}"),
        ("GENOSSM_L2", "Float", f"Euclidean distance between the mean final hidden states over "
                                f"the ref and alt haplotypes{strands}, by {model}"),
        ("GENOSSM_STATUS", "String", "scored, or why the allele has no score: "
                                     + ", ".join(s for s in STATUSES if s != SCORED)),
    ]
    out = [f'##INFO=<ID={i},Number=A,Type={t},Description="{d}">'.encode()
           for i, t, d in lines]
    out.append(f"##genossm_score=version {__version__}; model {model_dir}; window {window}; "
               f"prefix_reuse {str(prefix_reuse).lower()}; rc_average {str(rc_average).lower()}; "
               f"contig names {renaming}".encode())
    return out


# --------------------------------------------------------------------------- the command


def default_table_path(output: Path) -> Path:
    name = output.name
    for suffix in (".gz", ".bgz", ".vcf"):
        name = name.removesuffix(suffix)
    return output.with_name(name + ".tsv")


class _Annotator:
    """Statuses, flanks and REF checks of records against the FASTA."""

    def __init__(self, fasta: pysam.FastaFile, resolver: ContigResolver, scorer: Scorer):
        self.fasta = fasta
        self.resolver = resolver
        self.scorer = scorer

    def __call__(self, record: Record) -> Record:
        n = len(record.alts)
        record.status = [allele_status(a) or SCORED for a in record.alts]
        record.llr, record.cos, record.l2 = [None] * n, [None] * n, [None] * n
        if not record.alleles_to_read():
            return record
        contig, contig_status = self.resolver(record.chrom)
        if contig is None:
            return self._unscored(record, contig_status)
        left, ref_codes, right = self._window(record, contig)
        if ref_codes is None:
            return self._unscored(record, "ref_mismatch")
        record.left, record.right = left, right
        if not self.scorer.causal_lm:
            record.status = [INDEL_NEEDS_CAUSAL if s == SCORED and len(a) != len(record.ref)
                             else s for s, a in zip(record.status, record.alts, strict=True)]
        return record

    @staticmethod
    def _unscored(record: Record, status: str) -> Record:
        record.status = [status if s == SCORED else s for s in record.status]
        return record

    def _window(self, record: Record, contig: str):
        """(left flank, REF codes or None when REF differs from the FASTA, right flank)."""
        length = self.resolver.lengths[contig]
        start = record.pos - 1
        end = start + len(record.ref)
        if start < 0 or end > length or not record.ref:
            return None, None, None
        lo = start - self.scorer.left_length
        hi = end + self.scorer.right_length
        text = self.fasta.fetch(contig, max(lo, 0), min(hi, length))
        if text[start - max(lo, 0):end - max(lo, 0)].upper() != record.ref.upper():
            return None, None, None
        try:
            codes = alphabet.encode(text)
        except ValueError as e:
            raise InputError(self.fasta.filename.decode(), str(e),
                             place=f"{contig}:{max(lo, 0) + 1}-{min(hi, length)}") from None
        window = np.concatenate([np.full(max(-lo, 0), alphabet.N, np.uint8), codes,
                                 np.full(max(hi - length, 0), alphabet.N, np.uint8)])
        left_length = self.scorer.left_length
        return (window[:left_length], window[left_length:left_length + len(record.ref)],
                window[left_length + len(record.ref):])


def score_vcf(vcf, *, fasta, model_dir, output, table=None, window: int = DEFAULT_WINDOW,
              batch_size: int = DEFAULT_BATCH_SIZE, device="auto",
              rename_chroms: str | None = None, chrom_map=None, prefix_reuse: bool = True,
              progress: bool = True, piece_length: int | None = None, plot=None) -> dict:
    """Score every record of ``vcf`` (module docstring) and write ``output`` (bgzipped VCF +
    .tbi) and ``table`` (TSV; default beside the output), and with ``plot`` a PNG of the score
    distributions. Returns the summary that format_summary prints."""
    output, model_dir = Path(output), Path(model_dir)
    table = Path(table) if table is not None else default_table_path(output)
    if not output.name.endswith((".gz", ".bgz")):
        raise InputError(output, "the output is bgzipped and tabix-indexed: name it .vcf.gz")
    if window < 2:
        raise InputError(None, f"--window must be at least 2, got {window}")
    if batch_size < 1:
        raise InputError(None, f"--batch-size must be at least 1, got {batch_size}")
    if rename_chroms is not None and rename_chroms not in RENAMES:
        raise InputError(None, f"--rename-chroms must be one of {', '.join(RENAMES)}")
    if rename_chroms and chrom_map:
        raise InputError(None, "give --rename-chroms or --chrom-map, not both")

    source = VariantSource(vcf)
    fa = open_fasta(fasta)
    resolver = ContigResolver(fa, rename_chroms, read_chrom_map(chrom_map) if chrom_map else None)
    n_records = source.check()
    model = open_model(model_dir, device)
    scorer = Scorer(model, window=window, batch_size=batch_size, prefix_reuse=prefix_reuse,
                    piece_length=piece_length)
    renaming = rename_chroms or (f"mapped by {chrom_map}" if chrom_map else "as in the VCF")
    added = score_header_lines(model_dir, model.config, window=window, prefix_reuse=prefix_reuse,
                         rc_average=scorer.rc_average, renaming=renaming)

    temps = _Temps(output, table)
    counts: Counter[str] = Counter()
    alt_alleles = 0
    scored: dict[str, list] = {"llr": [], "cosine": [], "is_snv": []}
    try:
        with (pysam.BGZFile(str(temps.vcf), "wb") as out,
              open(temps.table, "w", encoding="utf-8") as tsv,
              tqdm(total=n_records, unit=" records", desc="score", disable=not progress) as bar):
            out.write(b"\n".join([*source.header_lines[:-1], *added,
                                  source.header_lines[-1]]) + b"\n")
            tsv.write("\t".join(TABLE_COLUMNS) + "\n")
            annotate = _Annotator(fa, resolver, scorer)
            for batch in _batches(map(annotate, source), scorer):
                scorer.score(batch)
                for record in batch:
                    out.write(annotated_line(record) + b"\n")
                    tsv.writelines(row + "\n" for row in table_rows(record))
                    counts.update(record.status if record.alts else ["no_alt"])
                    alt_alleles += len(record.alts)
                    for i, alt in enumerate(record.alts):
                        if record.status[i] in EMBEDDABLE:
                            scored["llr"].append(record.llr[i])
                            scored["cosine"].append(record.cos[i])
                            scored["is_snv"].append(len(alt) == len(record.ref) == 1)
                bar.update(len(batch))
        with _quiet_htslib():   # not a word about POS 0 (telomere) records
            pysam.tabix_index(str(temps.vcf), preset="vcf", force=True)
        if plot is not None:
            plot_score_distributions(scored["llr"], scored["cosine"], scored["is_snv"],
                                     f"{Path(vcf).name} scored by {model_dir.name} "
                                     f"(window {window:,})", Path(plot))
        temps.commit()
    except BaseException:
        temps.discard()
        raise

    hints = list(resolver.suggestions.values())
    if resolver.missing:
        hints.append(f"contigs not in {fasta}: {', '.join(resolver.missing)}")
    return {"records": n_records, "alt_alleles": alt_alleles, "statuses": dict(counts),
            "output": str(output), "table": str(table), "hints": hints}


def _batches(records: Iterator[Record], scorer: Scorer) -> Iterator[list[Record]]:
    """Consecutive records, cut when their sequences fill a batch."""
    batch, rows = [], 0
    for record in records:
        batch.append(record)
        if record.alleles_to_read():
            rows += scorer.rows(record)
        if rows >= scorer.batch_size:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


class _Temps:
    """Temporary outputs beside the real ones, renamed into place only when complete."""

    def __init__(self, output: Path, table: Path):
        self.output, self.table_path = output, table
        self.vcf = self._reserve(output, ".vcf.gz")
        self.index = Path(str(self.vcf) + ".tbi")
        self.table = self._reserve(table, ".tsv")

    @staticmethod
    def _reserve(path: Path, suffix: str) -> Path:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix,
                                        dir=path.parent)
        except OSError as e:
            raise InputError(path, f"cannot write ({e.strerror})") from None
        os.close(fd)
        return Path(name)

    def commit(self) -> None:
        os.replace(self.table, self.table_path)
        os.replace(self.index, str(self.output) + ".tbi")
        os.replace(self.vcf, self.output)

    def discard(self) -> None:
        for path in (self.vcf, self.index, self.table):
            path.unlink(missing_ok=True)


def format_summary(summary: dict) -> str:
    """genossm score: N records (M alt alleles): X scored; unscored: reason n, ..."""
    statuses = summary["statuses"]
    unscored = [f"{s} {n:,}" for s, n in sorted(statuses.items(), key=lambda kv: -kv[1])
                if s != SCORED]
    line = (f"genossm score: {summary['records']:,} records ({summary['alt_alleles']:,} alt "
            f"alleles): {statuses.get(SCORED, 0):,} scored")
    if unscored:
        line += "; unscored: " + ", ".join(unscored)
    if summary["hints"]:
        line += " (" + "; ".join(summary["hints"]) + ")"
    return line + f"; wrote {summary['output']} and {summary['table']}"
