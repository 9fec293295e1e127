"""The output policy and output staging: what genossm may write where, and every file or directory
it writes built under a temporary sibling and renamed into place whole (docs/design.md,
"Outputs").

``claim_outputs`` is the one check every command makes before it reads anything: an output
that is, or resolves to (links included), one of the run's inputs, lies inside one, or holds
one, is refused with or without ``--force``; an existing output is refused without
``--force``; with ``--force`` only an output that genossm itself wrote (each kind of output
recognised by its owner: ``OutputKind``) may be replaced, and anything else there is refused
with a line that says what it is.

``check_distinct`` comes first: no two outputs of one run at one path, nor one inside another.

``StagedOutputs`` is the one way to write an output: ask it for the temporary path of each
output, write there, and leave the ``with`` block; on success every output is renamed into
place (in the order staged: stage the file that marks a run as finished last), on any exception
or interrupt the temporaries are removed and the old outputs are left as they were.

Temporary names are hidden siblings, ``.NAME.genossm-TAG.HOST.PID.RANDOM``, on the output's own
filesystem (so the rename is atomic) and traceable to the process that made them:
``recover`` removes those a killed process left behind on this host, and puts an old output
back if a kill fell between the two renames of a replacement (on any host: a job requeued on
another node finds its last checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from genossm.errors import InputError

_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def temporary_sibling(path, tag: str = "new") -> Path:
    """A fresh hidden name beside ``path`` that names this host and process."""
    path = Path(path)
    return path.with_name(f".{path.name}.genossm-{tag}.{_HOST}.{os.getpid()}."
                          f"{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_path(tmp, path) -> Path:
    """Rename the finished ``tmp`` (file or directory) onto ``path``; an old ``path`` is moved
    aside first and deleted only once the new one is in place."""
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = temporary_sibling(path, "old")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        _remove(old)
    return path


def _siblings(path: Path) -> list[tuple[str, str, int, Path]]:
    """(tag, host, pid, path) of every temporary sibling of ``path``."""
    prefix = f".{path.name}.genossm-"
    found = []
    if not path.parent.is_dir():
        return found
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        parts = entry.name[len(prefix):].split(".")
        if len(parts) == 4 and parts[2].isdigit():
            found.append((parts[0], parts[1], int(parts[2]), entry))
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(path) -> None:
    """Clean up after a killed writer of ``path``. An old output that was moved aside and never
    replaced is put back, whichever host or process moved it (a job requeued on another node
    must find its last checkpoint); other temporaries are removed when the process that made
    them, on this host, no longer runs."""
    path = Path(path)
    siblings = _siblings(path)
    # a writer still running here may be between its two renames: leave its old output to it
    aside = [s for s in siblings if s[0] == "old"
             and not (s[1] == _HOST and (s[2] == os.getpid() or _running(s[2])))]
    if aside and not (path.exists() or path.is_symlink()):
        newest = max(aside, key=lambda s: _mtime(s[3]))
        try:
            os.rename(newest[3], path)
        except FileNotFoundError:   # another process (a torchrun rank) recovered it first
            pass
        siblings.remove(newest)
    for _, host, pid, entry in siblings:
        if host == _HOST and pid != os.getpid() and not _running(pid):
            _remove(entry)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return -1.0


def _finish_file(path: Path) -> None:
    """Flush a staged file to disk and give it a new file's mode under the umask (some writers,
    safetensors among them, create their files private)."""
    if path.is_file() and not path.is_symlink():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (setting it to read
    it, the portable way, would briefly give other threads' new files the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


class StagedOutputs:
    """Outputs built under temporary siblings and renamed into place together on success (see
    the module docstring)."""

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []

    def path(self, output) -> Path:
        """The temporary path to write instead of ``output`` (its directory is created); an
        output that cannot be written there is an InputError."""
        output = Path(output)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(output, f"cannot write ({e.strerror})") from None
        if not os.access(output.parent, os.W_OK):
            raise InputError(output, "cannot write (Permission denied)")
        tmp = temporary_sibling(output)
        self._staged.append((tmp, output))
        return tmp

    def file(self, output) -> Path:
        """``path(output)``, created empty: an output file that cannot be written is an
        InputError before any work is done."""
        return self._create(output, lambda tmp: open(tmp, "wb").close())

    def directory(self, output) -> Path:
        """``path(output)``, created as an empty directory (checked like ``file``)."""
        return self._create(output, Path.mkdir)

    def _create(self, output, make) -> Path:
        tmp = self.path(output)
        try:
            make(tmp)
        except OSError as e:
            raise InputError(output, f"cannot write ({e.strerror or e})") from None
        return tmp

    def commit(self) -> None:
        """Flush every staged file to disk, then rename each onto its output."""
        for tmp, _ in self._staged:
            _finish_file(tmp)
        for tmp, output in self._staged:
            replace_path(tmp, output)
        self._staged = []

    def discard(self) -> None:
        """Remove every temporary; the outputs are untouched."""
        for tmp, _ in self._staged:
            _remove(tmp)
        self._staged = []

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``: one staged output."""
    with StagedOutputs() as staged:
        write(staged.path(path))
    return Path(path)


# --------------------------------------------------------------------------- the output policy

# Index files that belong to an input beside it (FASTA, VCF/BCF, BAM/CRAM): never outputs.
SIDECARS = (".fai", ".gzi", ".tbi", ".csi", ".bai", ".crai")


@dataclass(frozen=True)
class OutputKind:
    """A kind of output genossm writes: its name for messages ("a genossm token store") and
    ``recognise(path)``, true when what is at ``path`` was written by genossm as this kind
    (a marker in its metadata or header, defined by the module that writes it)."""
    name: str
    recognise: Callable[[Path], bool]


def starts_with_row(path, columns: Sequence[str], *, more: bool = False) -> bool:
    """Whether the file at ``path`` starts with the line ``columns``, tab-separated (with
    ``more``: followed by more columns): how each TSV genossm writes is recognised (its header
    row, which its writer owns)."""
    row = "\t".join(columns).encode()
    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20).rstrip(b"\r\n")
    except OSError:
        return False
    return first == row or (more and first.startswith(row + b"\t"))


JSON_MAX_BYTES = 64 << 20   # larger than any JSON file genossm writes; a larger file is not one


def json_object(path) -> dict | None:
    """The JSON object in the file at ``path``, or None where there is none (no readable file,
    not JSON, not an object, or over JSON_MAX_BYTES): for the OutputKinds of the JSON files
    genossm writes, each recognised by its own keys (``created_by_genossm``)."""
    try:
        if Path(path).stat().st_size > JSON_MAX_BYTES:
            return None
        found = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def created_by_genossm(found: dict) -> bool:
    """Whether a JSON object says genossm wrote it: ``created_by`` "genossm VERSION"."""
    return str(found.get("created_by", "")).startswith("genossm ")


def _describe(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "a broken link"
    if path.is_dir():
        count = sum(1 for _ in path.iterdir())
        return f"a directory of {count} entr{'y' if count == 1 else 'ies'}"
    if path.is_file():
        return f"a file of {path.stat().st_size:,} bytes"
    return "something that is not a file or a directory"


def _same_or_nested(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` (resolved) are the same, or one lies inside the other."""
    if a == b or a in b.parents or b in a.parents:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)   # hard links
    except OSError:
        return False


def check_distinct(outputs: dict[str, Path | None]) -> None:
    """No two outputs of one run (by role: "the table (--table)") at one path, nor one inside
    another (a directory given for one that is a file of another): the rename of the later
    would replace the earlier, or delete it with the directory it was put in. Paths compare
    resolved (links followed); a role given None (an output not asked for) is skipped.
    InputError with one line otherwise. Call it before ``claim_outputs``."""
    seen: list[tuple[Path, str, Path]] = []
    for role, path in outputs.items():
        if path is None:
            continue
        resolved = Path(os.path.realpath(path))
        for other, other_role, other_path in seen:
            if resolved == other:
                raise InputError(path, f"is both {other_role} and {role}; give each output "
                                       "its own path")
            pair = None
            if other in resolved.parents:
                pair = (path, role), (other_path, other_role)
            elif resolved in other.parents:
                pair = (other_path, other_role), (path, role)
            if pair is not None:
                (inner, inner_role), (outer, outer_role) = pair
                raise InputError(inner, f"{inner_role} would lie inside {outer_role} "
                                        f"({outer}); give each output its own path")
        seen.append((resolved, role, Path(path)))


def claim_outputs(outputs: Iterable[tuple[Path, OutputKind]], *, inputs: Iterable,
                  force: bool) -> None:
    """Check each (output path, kind) against the output policy (module docstring) before a
    command reads or writes anything; InputError with one line otherwise. What a killed writer
    left at an output is recovered first (``recover``), so that an old output it had moved
    aside is judged like any other: replaced only with ``--force`` and only if it is ours."""
    sources = []
    for p in inputs:
        if p is None:
            continue
        # an index may not exist yet: htslib builds a missing .fai during the run
        candidates = [Path(p)] + [Path(str(p) + suffix) for suffix in SIDECARS]
        sources += [(c, Path(os.path.realpath(c))) for c in candidates]
    for path, kind in outputs:
        path = Path(path)
        resolved = Path(os.path.realpath(path))
        for given, source in sources:
            if _same_or_nested(resolved, source):
                raise InputError(path, f"is an input of this run ({given}), or holds or lies "
                                       "inside one; choose another output path")
        recover(path)
        if not (path.exists() or path.is_symlink()):
            continue
        if not force:
            raise InputError(path, "output exists; use --force to replace it")
        if path.is_symlink() or not kind.recognise(path):
            raise InputError(path, f"exists and is {_describe(path)}, not {kind.name}; "
                                   "--force replaces only what genossm wrote")
