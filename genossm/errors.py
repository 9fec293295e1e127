"""Errors about users' input: one line that names the file and the place."""

from __future__ import annotations


class InputError(Exception):
    """Bad input. The CLI prints ``genossm: error: FILE: PLACE: WHAT`` and exits non-zero,
    with no traceback unless ``--debug`` is given."""

    def __init__(self, path, message: str, *, place: str | None = None):
        self.path = str(path) if path is not None else None
        self.place = place
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.path, self.place, self.message) if p]
        return ": ".join(parts)
