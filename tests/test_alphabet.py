"""Property tests of the one alphabet module against plain-Python definitions."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genossm import alphabet

LETTERS = "ACGTNacgtn" + alphabet.IUPAC_AMBIGUOUS + alphabet.IUPAC_AMBIGUOUS.lower()
PLAIN = {"A": 0, "C": 1, "G": 2, "T": 3, "N": 4}


def plain_code(ch: str) -> int:
    up = ch.upper()
    return PLAIN.get(up, 4)


@given(st.text(alphabet=LETTERS, max_size=500))
def test_encode_matches_plain_definition(seq):
    codes = alphabet.encode(seq)
    assert codes.dtype == np.uint8
    assert codes.tolist() == [plain_code(c) for c in seq]
    assert alphabet.softmask(seq).tolist() == [c.islower() for c in seq]


@given(st.text(alphabet="ACGTN", max_size=500))
def test_decode_inverts_encode(seq):
    assert alphabet.decode(alphabet.encode(seq)) == seq


@given(st.text(alphabet="ACGTN", max_size=500))
def test_reverse_complement_matches_string_definition(seq):
    pairs = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
    expected = "".join(pairs[c] for c in reversed(seq))
    assert alphabet.decode(alphabet.reverse_complement(alphabet.encode(seq))) == expected


@given(st.lists(st.integers(0, alphabet.VOCAB_SIZE - 1), max_size=300))
def test_reverse_complement_is_an_involution(codes):
    arr = np.array(codes, dtype=np.uint8)
    assert np.array_equal(alphabet.reverse_complement(alphabet.reverse_complement(arr)), arr)


def test_codes_and_specials():
    assert alphabet.encode("ACGTN").tolist() == [0, 1, 2, 3, 4]
    assert alphabet.MASK >= alphabet.NUM_BASE_CODES
    assert alphabet.complement(np.array([alphabet.MASK, alphabet.N])).tolist() == [
        alphabet.MASK, alphabet.N]


@pytest.mark.parametrize("bad", ["1", "-", "*", ".", "\x01", " ", "U", "é"])
def test_invalid_characters_raise_with_offset(bad):
    with pytest.raises(ValueError, match="offset 3"):
        alphabet.encode("ACG" + bad + "T")
