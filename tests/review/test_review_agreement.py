"""Cohen's and Fleiss' kappa against textbook values, plus properties that must always hold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clinalign.review.agreement import cohen_kappa, fleiss_kappa

# Fleiss' kappa worked example (Wikipedia, "Fleiss' kappa"): 10 subjects, 14 raters,
# 5 categories; P_bar = 0.378, P_e = 0.213, kappa = 0.210.
WIKIPEDIA_FLEISS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_wikipedia_worked_example():
    assert fleiss_kappa(WIKIPEDIA_FLEISS) == pytest.approx(0.210, abs=5e-4)


def test_cohen_wikipedia_worked_example():
    # Cohen's kappa (Wikipedia): 50 proposals, both "yes" 20, A yes/B no 5, A no/B yes 10,
    # both "no" 15: p_o = 0.7, p_e = 0.5, kappa = 0.4.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_second_textbook_example():
    # Wikipedia's "similar agreement, different kappa" pair: 45/15/25/15 gives 0.1304.
    a = ["y"] * 45 + ["y"] * 15 + ["n"] * 25 + ["n"] * 15
    b = ["y"] * 45 + ["n"] * 15 + ["y"] * 25 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.1304, abs=1e-4)


def test_undefined_cases_return_none():
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["p", "p"], ["p", "p"]) is None  # chance agreement is 1
    assert fleiss_kappa([]) is None
    assert fleiss_kappa([[3, 0, 0], [3, 0, 0]]) is None


def test_fleiss_rejects_uneven_rating_counts():
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 2]])
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 0], [0, 1]])  # one rating per item
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


labels = st.sampled_from(["plausible", "implausible", "unsure"])


@given(st.lists(st.tuples(labels, labels), min_size=1, max_size=60))
def test_cohen_is_symmetric_and_bounded(pairs):
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    k1, k2 = cohen_kappa(a, b), cohen_kappa(b, a)
    assert (k1 is None) == (k2 is None)
    if k1 is not None:
        assert k1 == pytest.approx(k2)
        assert -1.0 - 1e-9 <= k1 <= 1.0 + 1e-9


@given(st.lists(labels, min_size=2, max_size=60).filter(lambda xs: len(set(xs)) > 1))
def test_cohen_of_identical_raters_is_one(xs):
    assert cohen_kappa(xs, xs) == pytest.approx(1.0)


@given(st.integers(2, 8), st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3), min_size=1, max_size=30))
def test_fleiss_perfect_agreement_is_one_and_bounded(n, raw):
    # Perfect agreement: every item's n ratings in one category (not all items the same one).
    perfect = [[n if j == i % 3 else 0 for j in range(3)] for i in range(max(2, len(raw)))]
    assert fleiss_kappa(perfect) == pytest.approx(1.0)
    # Any table with n ratings per item gives kappa <= 1.
    table = [[r[0] % (n + 1), 0, 0] for r in raw]
    table = [[a, n - a, 0] for a, _, _ in table]
    k = fleiss_kappa(table)
    assert k is None or k <= 1.0 + 1e-9
