"""Compressed input: the threaded block reader, and where gzip/BGZF data goes wrong.

Every input may be plain or gzip/BGZF. ``_read_blocks`` yields its decompressed text block by
block, with a background thread decompressing (ISA-L) the next block while this one is used, so
memory stays at a few blocks. When decompression fails, or decoded text looks wrong, the fault
is diagnosed after the fact (``gzip_fault``: one more pass with zlib, up to the fault) and named
by its compressed byte and text line (``gzip_fault_error``); ``line_at`` turns a byte offset of
the decompressed text into a line number for messages. Kept apart from the format parsers
(``fasta``, ``reads``), which all share it.
"""

from __future__ import annotations

import gzip
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from isal import igzip, igzip_lib
from tqdm import tqdm

from genossm.errors import InputError

BLOCK_SIZE = 8 << 20
GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------- reading


def _open_decompressed(raw):
    """A binary stream over ``raw``'s content, gunzipped (with ISA-L) when it is gzip/BGZF."""
    gz = raw.read(2) == GZIP_MAGIC
    raw.seek(0)
    return igzip.IGzipFile(fileobj=raw, mode="rb") if gz else raw


# ISA-L reports corrupt deflate data as IsalError, which is not an OSError
_DECOMPRESS_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError, igzip_lib.IsalError)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def _gzip_head(path: Path, size: int = 4) -> bytes:
    """The first ``size`` bytes of a gzip file's content. Only what they need is decoded:
    damage further on is for the format's reader to find, and to report with its place."""
    with open(path, "rb") as raw:
        head = zlib.decompressobj(31).decompress(raw.read(1 << 16), size)
        if len(head) < size:   # a short first member, or a short file
            raw.seek(0)
            head = _open_decompressed(raw).read(size)
    return head


def progress_bar(progress: bool, **settings) -> tqdm:
    """The inputs' tqdm bar with ``settings``: off with ``progress`` off (``-q``) or where
    stderr is no terminal, and gone when closed."""
    return tqdm(disable=None if progress else True, leave=False, **settings)


def _read_blocks(path: Path, progress):
    """Yield decompressed blocks of ``path``; a daemon thread reads ahead (ISA-L inflate
    releases the GIL, so decompression overlaps with encoding)."""
    q: queue.Queue = queue.Queue(maxsize=3)
    stop = threading.Event()

    def produce():
        try:
            with open(path, "rb") as raw:
                fh = _open_decompressed(raw)
                while not stop.is_set():
                    block = fh.read(BLOCK_SIZE)
                    if not block:
                        break
                    q.put((block, raw.tell()))
            q.put((None, None))
        except BaseException as e:  # every failure reaches the reader: it never waits forever
            q.put((e, None))

    thread = threading.Thread(target=produce, name="genossm-decompress", daemon=True)
    thread.start()
    done = 0
    try:
        while True:
            block, pos = q.get()
            if block is None:
                return
            if isinstance(block, _DECOMPRESS_ERRORS):
                raise _DecompressError(block, done)
            if isinstance(block, BaseException):
                raise block
            done += len(block)
            if progress is not None:
                progress.update(pos - progress.n)
            yield block
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class _DecompressError(Exception):
    def __init__(self, cause: BaseException, offset: int):
        self.cause, self.offset = cause, offset


# --------------------------------------------------------------------------- fault diagnosis


@dataclass
class GzipFault:
    """Where gzip data stops decompressing, as found by ``gzip_fault``."""

    kind: str          # 'cut' (the file ends inside a member), 'check' (CRC or length), 'corrupt'
    offset: int        # of the compressed byte where decoding failed (the file size for 'cut')
    member: int        # of the gzip member (BGZF block) it is in
    lines: int         # newlines in the text before the failure...
    member_lines: int  # ...and before the member
    reason: str        # zlib's words


def gzip_fault(path: Path, start: int = 0, *, blocks: int | None = None,
               text_limit: int | None = None) -> GzipFault | None:
    """Decompress ``path`` from ``start`` (where a gzip member begins) with zlib and say where
    and how the data fails, or None where it does not: within ``blocks`` members, or up to the
    end of the member that holds decompressed byte ``text_limit``. For messages only: it costs
    one more read of the file, up to the fault."""
    text = lines = member_lines = members = 0
    member = pos = start
    d = None
    with open(path, "rb") as fh:
        fh.seek(start)
        pending = b""
        while True:
            if d is None and members:   # zero padding after a member is allowed
                pos += len(pending) - len(pending := pending.lstrip(b"\0"))
            if not pending:
                pending = fh.read(1 << 14)
                if not pending:
                    break
                continue
            if d is None:
                if members == blocks or (text_limit is not None and text > text_limit):
                    return None
                d, member, member_lines = zlib.decompressobj(31), pos, lines
            before = d.copy()
            try:
                out = d.decompress(pending)
            except zlib.error as e:
                return _pinpoint(before, pending, pos, member, lines, member_lines, e)
            text += len(out)
            lines += out.count(b"\n")
            if d.eof:
                pos += len(pending) - len(d.unused_data)
                pending, d, members = d.unused_data, None, members + 1
            else:
                pos += len(pending)
                pending = b""
    if d is not None:
        return GzipFault("cut", pos, member, lines, member_lines, "")
    return None


def _pinpoint(d, data: bytes, pos: int, member: int, lines: int, member_lines: int,
              error: zlib.error) -> GzipFault:
    """The byte of ``data`` at which decompressor ``d`` fails (it failed on all of it)."""
    for i in range(len(data)):
        try:
            lines += d.decompress(data[i:i + 1]).count(b"\n")
        except zlib.error as e:
            error, pos = e, pos + i
            break
    reason = str(error).rsplit(": ", 1)[-1]   # "Error -3 while decompressing data: ..."
    if "header" in reason or "method" in reason:   # the member's gzip header: from its start
        pos = member
    kind = "check" if reason in ("incorrect data check", "incorrect length check") else "corrupt"
    return GzipFault(kind, pos, member, lines, member_lines, reason)


def gzip_fault_error(path: Path, fault: GzipFault, *, container: str = "gzip",
                     place: str | None = None, text_lines: bool = True) -> InputError:
    """The one-line error for ``fault``: its place is the compressed byte (1-based), after
    ``place`` where given, with the line of the decompressed text where ``text_lines``."""
    where = [place] if place else []
    if fault.kind == "cut":
        where.append(f"compressed byte {fault.offset:,} (end of file)")
        what = f"truncated {container} data: the file ends inside a compressed block"
    elif fault.kind == "check":   # found at the member's end: the damage is somewhere in it
        where.append(f"compressed bytes {fault.member + 1:,}-{fault.offset + 1:,}")
        what = f"corrupt {container} data: a block fails its checksum ({fault.reason})"
    else:
        where.append(f"compressed byte {fault.offset + 1:,}")
        what = f"corrupt {container} data ({fault.reason})"
    if text_lines:
        where.append(f"lines {fault.member_lines + 1:,}-{fault.lines + 1:,}"
                     if fault.kind == "check" else f"line {fault.lines + 1:,}")
    return InputError(path, what, place=", ".join(where))


def decompress_error(path: Path, cause: BaseException, *, text_bytes: int = 0) -> InputError:
    """The error for a gzip input that failed to decompress with ``cause``, after
    ``text_bytes`` bytes of text: where zlib finds the fault, else the cause alone."""
    fault = gzip_fault(path)
    if fault is not None:
        return gzip_fault_error(path, fault)
    return InputError(path, f"truncated or corrupt gzip data ({cause})",
                      place=f"after {text_bytes:,} decompressed bytes" if text_bytes else None)


def line_at(path: Path, offset: int) -> int:
    """1-based line number of byte ``offset`` of the decompressed content of ``path``.

    Parsing tracks byte offsets only (counting every newline would cost a pass over the data);
    the rare message that names a line rescans the file up to the offset.
    """
    line, done = 1, 0
    try:
        with open(path, "rb") as raw:
            fh = _open_decompressed(raw)
            while done < offset:
                block = fh.read(min(BLOCK_SIZE, offset - done))
                if not block:
                    break
                line += block.count(b"\n")
                done += len(block)
    except _DECOMPRESS_ERRORS:
        pass
    return line
