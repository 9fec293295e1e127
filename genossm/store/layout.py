"""The token store's layout constants (docs/design.md, "Token store"): format version, chunk
length, the per-read fields and the fill value of the codes arrays. The writer and the reader
read them from here (``CODES_FILL`` at call time, so that a test can write a store with the old
fill value by setting ``layout.CODES_FILL``)."""

from __future__ import annotations

import numpy as np

from genossm import alphabet

FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
READ_FIELDS = {  # per-read arrays beside reads/codes and reads/offsets
    "flag": np.uint16,
    "mapq": np.uint8,
    "reference_id": np.int32,  # index into reads attrs "references"; -1 when unplaced
    "position": np.int64,      # 0-based leftmost mapped position; -1 when unmapped
}
# The fill value of the codes arrays (contigs and reads): not a code, so a chunk file that is
# missing reads back as an error rather than as N. Stores written before it used N.
CODES_FILL = alphabet.INVALID
