"""The k-mer Markov baseline against counts made by hand."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from genossm import alphabet
from genossm.markov import MarkovBaseline
from helpers import LAMBDA, fasta_records


def test_order_one_matches_a_hand_count():
    train = "ACGTACGTAACNGGA"
    model = MarkovBaseline(max_order=1, order=1).fit([alphabet.encode(train)])
    # pairs counted by hand, never across the N
    pairs = Counter(a + b for a, b in zip(train, train[1:], strict=False) if "N" not in a + b)
    assert pairs == Counter({"AC": 3, "CG": 2, "GT": 2, "TA": 2, "AA": 1, "GG": 1, "GA": 1})
    ctx = Counter()
    for pair, n in pairs.items():
        ctx[pair[0]] += n
    test = "CATN" + "GA"
    logp = model.log2_probs(alphabet.encode(test))
    singles = Counter(c for c in train if c != "N")  # order 0 for the first base of a run
    expected = [
        math.log2((singles["C"] + 1) / (sum(singles.values()) + 4)),
        math.log2((pairs["CA"] + 1) / (ctx["C"] + 4)),
        math.log2((pairs["AT"] + 1) / (ctx["A"] + 4)),
        float("nan"),
        math.log2((singles["G"] + 1) / (sum(singles.values()) + 4)),
        math.log2((pairs["GA"] + 1) / (ctx["G"] + 4)),
    ]
    np.testing.assert_allclose(logp, expected, equal_nan=True)
    bits, n = model.bits_per_base([alphabet.encode(test)])
    assert n == 5 and bits == pytest.approx(-np.nansum(expected) / 5)


def test_order_three_against_a_dictionary_model():
    seq = fasta_records(LAMBDA)[0][1][:5000]
    model = MarkovBaseline(max_order=3, order=3).fit([alphabet.encode(seq)])
    four = Counter(seq[i:i + 4] for i in range(len(seq) - 3))
    three = Counter(seq[i:i + 3] for i in range(len(seq) - 3))
    query = fasta_records(LAMBDA)[0][1][20_000:20_200]
    logp = model.log2_probs(alphabet.encode(query))
    for t in range(3, len(query)):
        ctx, nxt = query[t - 3:t], query[t]
        assert logp[t] == pytest.approx(math.log2((four[ctx + nxt] + 1) / (three[ctx] + 4)))


def test_order_is_chosen_on_held_out_training_data():
    seq = alphabet.encode(fasta_records(LAMBDA)[0][1])
    model = MarkovBaseline(max_order=8)
    scores = model.choose_order([seq[:40_000]], [seq[40_000:]])
    assert model.order == min(scores, key=scores.get)
    assert 1 <= model.order <= 6
    assert scores[model.order] < scores[0] < 2.0
    assert model.counts[0].sum() == len(seq)  # the held part was added after choosing
