"""Files written whole or not at all, and the indexed FASTA reader shared by score and embed."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pysam

from genossm.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)``, fsync the result, then os.replace it onto ``path``: a crash
    never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``path`` (same filesystem, so a rename onto it is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def replace_path(tmp: Path, path: Path) -> Path:
    """Rename the finished ``tmp`` (file or directory) onto ``path``; an old ``path`` is moved
    aside first and deleted only once the new one is in place."""
    old = None
    if path.exists():
        old = temporary_sibling(path, "old")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return path


def open_fasta(path) -> pysam.FastaFile:
    """An indexed FASTA (plain, or bgzipped with .fai and .gzi; a plain one gets its .fai built
    if missing)."""
    if not Path(path).is_file():
        raise InputError(path, "no such file")
    previous = pysam.set_verbosity(0)  # the error below says it all, in one line
    try:
        return pysam.FastaFile(str(path))
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot open as an indexed FASTA ({e}); it must be plain or "
                               "bgzipped (bgzip) with a samtools faidx index") from None
    finally:
        pysam.set_verbosity(previous)
