"""Inter-rater agreement: Cohen's kappa (two raters) and Fleiss' kappa (many raters).

Both return ``None`` where kappa is undefined (no items, or chance agreement of 1 — every
rating in one category — where the formula divides by zero).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen (1960): kappa = (p_o - p_e) / (1 - p_e) for two raters' paired labels.

    p_o is the observed share of agreeing items, p_e the agreement expected if each rater drew
    labels independently from their own marginal distribution.
    """
    if len(a) != len(b):
        raise ValueError(f"paired ratings differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss (1971) for N items each rated by the same number n of raters.

    ``counts[i][j]`` = how many raters put item i in category j. With
    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P_bar = mean_i P_i,
    p_j = sum_i n_ij / (N n) and P_e = sum_j p_j^2: kappa = (P_bar - P_e) / (1 - P_e).
    """
    rows = [list(r) for r in counts]
    if not rows:
        return None
    n = sum(rows[0])
    if n < 2:
        raise ValueError("Fleiss' kappa needs at least two ratings per item")
    if any(sum(r) != n for r in rows):
        raise ValueError("every item must have the same number of ratings")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError("every item must list the same categories")
    big_n = len(rows)
    p_bar = sum((sum(x * x for x in r) - n) / (n * (n - 1)) for r in rows) / big_n
    p_j = [sum(r[j] for r in rows) / (big_n * n) for j in range(width)]
    p_e = sum(p * p for p in p_j)
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)
