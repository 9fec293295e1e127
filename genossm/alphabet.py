"""The one alphabet (docs/design.md, "Alphabet"): codes, look-up tables, encode, decode, complement.

A=0 C=1 G=2 T=3 N=4; special model tokens (MASK) come after and never appear in a store.
Everything is a table look-up over whole numpy buffers.
"""

from __future__ import annotations

import numpy as np

BASES = "ACGTN"
A, C, G, T, N = range(5)
NUM_BASE_CODES = 5          # codes that may appear in a token store
MASK = 5                    # masked-LM token
SPECIAL_TOKENS = ("MASK",)
VOCAB_SIZE = NUM_BASE_CODES + len(SPECIAL_TOKENS)
IUPAC_AMBIGUOUS = "RYSWKMBDHV"

INVALID = 255               # marks a byte that is not a sequence letter

# byte -> code; lower case maps like upper case; IUPAC ambiguity letters map to N.
ENCODE_TABLE = np.full(256, INVALID, dtype=np.uint8)
for _code, _base in enumerate(BASES):
    ENCODE_TABLE[ord(_base)] = _code
    ENCODE_TABLE[ord(_base.lower())] = _code
for _letter in IUPAC_AMBIGUOUS:
    ENCODE_TABLE[ord(_letter)] = N
    ENCODE_TABLE[ord(_letter.lower())] = N

IS_IUPAC = np.zeros(256, dtype=bool)
for _letter in IUPAC_AMBIGUOUS:
    IS_IUPAC[ord(_letter)] = IS_IUPAC[ord(_letter.lower())] = True

IS_LOWER = np.zeros(256, dtype=bool)
IS_LOWER[ord("a"):ord("z") + 1] = True

DECODE_TABLE = np.frombuffer(BASES.encode(), dtype=np.uint8)

# The same tables as 256-byte strings for bytes.translate, which encodes and drops line breaks
# in one C pass (several times faster than a numpy gather). TAGGED adds SOFTMASK_BIT to the
# code of a lower-case letter and IUPAC_BIT to that of an ambiguity letter, so one pass yields
# the codes, the soft-mask track and whether any IUPAC letter occurs.
SOFTMASK_BIT = 8
IUPAC_BIT = 16
ENCODE_BYTES = ENCODE_TABLE.tobytes()
_tagged = ENCODE_TABLE.copy()
_valid = ENCODE_TABLE != INVALID
_tagged[IS_LOWER & _valid] |= SOFTMASK_BIT
_tagged[IS_IUPAC] |= IUPAC_BIT
TAGGED_BYTES = _tagged.tobytes()
UPPER_BYTES = bytes(range(256)).upper()

# code -> complement code over the whole vocabulary: A<->T, C<->G, N and specials fixed.
COMPLEMENT = np.arange(VOCAB_SIZE, dtype=np.uint8)
COMPLEMENT[:4] = 3 - np.arange(4, dtype=np.uint8)


def encode(seq: bytes | str | np.ndarray) -> np.ndarray:
    """Bytes (or str) of sequence letters -> uint8 codes. Raises ValueError on a non-letter,
    naming its 0-based offset."""
    raw = _as_bytes_array(seq)
    codes = np.frombuffer(raw.tobytes().translate(ENCODE_BYTES), dtype=np.uint8)
    if codes.size and codes.max() == INVALID:
        pos = int(np.flatnonzero(codes == INVALID)[0])
        raise ValueError(f"invalid sequence character {bytes([raw[pos]])!r} at offset {pos}")
    return codes


def decode(codes: np.ndarray) -> str:
    """uint8 codes (0..4) -> upper-case string."""
    codes = np.asarray(codes)
    if codes.size and int(codes.max()) >= NUM_BASE_CODES:
        raise ValueError("codes out of range for decoding (special tokens have no letter)")
    return DECODE_TABLE[codes].tobytes().decode("ascii")


def softmask(seq: bytes | str | np.ndarray) -> np.ndarray:
    """Boolean track: True where the letter is lower case (soft-masked)."""
    return IS_LOWER[_as_bytes_array(seq)]


def complement(codes: np.ndarray) -> np.ndarray:
    return COMPLEMENT[np.asarray(codes)]


def reverse_complement(codes: np.ndarray) -> np.ndarray:
    """Complement, then reverse (along the last axis)."""
    return complement(codes)[..., ::-1]


def _as_bytes_array(seq) -> np.ndarray:
    if isinstance(seq, np.ndarray):
        return seq.view(np.uint8) if seq.dtype != np.uint8 else seq
    if isinstance(seq, str):
        seq = seq.encode("latin-1")
    return np.frombuffer(seq, dtype=np.uint8)
