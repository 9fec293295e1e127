"""The token store (docs/design.md, "Token store"): a Zarr v3 group of base codes.

Writing streams (arrays grow by whole buffers, a contig never sits in memory twice) and is
atomic (the group is built under a temporary name and renamed when complete; the root
``genossm`` attribute, written last, marks a finished store). Reading is lazy and fork-safe:
a :class:`TokenStore` opens its Zarr group on first use in each process, so one object can be
handed to many DataLoader workers. Reading is checked: damaged metadata, a chunk file cut short,
undecodable, holding what is no base code or (codes: their fill value is no code) missing is one
InputError naming the file, never a crash or made-up N.

This package is the one owner of the store's layout: ``layout.py`` fixes it, ``writer.py``
writes it (``StoreWriter``), ``reader.py`` reads it (``TokenStore``) and ``checks.py`` holds the
checks of chunk files that reading relies on. Import from ``genossm.store``, not the modules.
"""

from __future__ import annotations

from genossm.store.layout import CODES_FILL, DEFAULT_CHUNK_SIZE, FORMAT_VERSION, READ_FIELDS
from genossm.store.reader import ContigInfo, TokenStore
from genossm.store.writer import (
    TOKEN_STORE,
    ContigWriter,
    ReadsWriter,
    StoreWriter,
    is_token_store,
)

__all__ = [
    "CODES_FILL", "DEFAULT_CHUNK_SIZE", "FORMAT_VERSION", "READ_FIELDS", "TOKEN_STORE",
    "ContigInfo", "ContigWriter", "ReadsWriter", "StoreWriter", "TokenStore", "is_token_store",
]
