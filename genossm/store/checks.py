"""Checks of a token store's files as they are read (docs/design.md, "Token store").

Blosc trusts the compressed size in a chunk's header, so a chunk file cut short makes it read
past the end of its buffer: a segmentation fault, not an error. ``_CheckedStore`` is the local
Zarr store with every chunk's header checked against the file's size first (``_blosc_damage``,
also used by ``TokenStore.check_files``), raising ``_CorruptChunk``; ``_READ_ERRORS`` are the
errors a damaged store raises otherwise and ``_brief`` shortens one for a message.
"""

from __future__ import annotations

from zarr.storage import LocalStore

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
