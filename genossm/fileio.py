"""Output staging: every file or directory genossm writes is built under a temporary sibling and
renamed into place whole (docs/design.md, "Outputs").

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

import os
import shutil
import socket
import uuid
import zlib
from pathlib import Path

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
    aside = [s for s in siblings if s[0] == "old"]
    if aside and not (path.exists() or path.is_symlink()):
        newest = max(aside, key=lambda s: s[3].stat().st_mtime)
        os.rename(newest[3], path)
        siblings.remove(newest)
    for _, host, pid, entry in siblings:
        if host == _HOST and pid != os.getpid() and not _running(pid):
            _remove(entry)


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


class StagedOutputs:
    """Outputs built under temporary siblings and renamed into place together on success (see
    the module docstring)."""

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []

    def path(self, output) -> Path:
        """The temporary path to write instead of ``output`` (its directory is created)."""
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        recover(output)
        tmp = temporary_sibling(output)
        self._staged.append((tmp, output))
        return tmp

    def commit(self) -> None:
        """Flush every staged file to disk, then rename each onto its output."""
        for tmp, _ in self._staged:
            _fsync(tmp)
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
