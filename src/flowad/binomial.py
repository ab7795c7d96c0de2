"""Exact binomial upper tails in log10, for the NFA's window counts (:mod:`flowad.nfa`).

``n`` is small (window pixels), so a table of log10 P[Bin(n, p) >= k] for every (n, k) that occurs is computed
once, in log space with a log-sum-exp of the pmf terms (float64, ~1e-13 relative), or with ``high_precision`` as
exact integers (log10 taken at the end).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import gammaln


def tail_table(n_values: np.ndarray, q: float, high_precision: bool) -> np.ndarray:
    """Row i, column k: log10 P[Bin(n_values[i], q) >= k] (k <= n; columns past n are unused)."""
    n_max = int(n_values.max())
    table = np.zeros((len(n_values), n_max + 1))
    for i, n in enumerate(n_values.tolist()):
        table[i, : n + 1] = _cached_tail(n, q, high_precision)
    return table


def log10_binomial_tail(n: int, q: float, high_precision: bool = False) -> np.ndarray:
    """log10 P[Bin(n, q) >= k] for k = 0..n, accurate to rounding (never -inf for 0 < q < 1)."""
    return _cached_tail(int(n), float(q), bool(high_precision)).copy()


@functools.lru_cache(maxsize=1024)
def _cached_tail(n: int, q: float, high_precision: bool) -> np.ndarray:
    # a few window sizes recur for every image: compute each table row once
    if high_precision:
        return _exact_log10_tail(n, q)
    j = np.arange(n + 1)
    log_pmf = gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1) + j * math.log(q) + (n - j) * math.log1p(-q)
    upper = np.logaddexp.accumulate(log_pmf[::-1])[::-1]  # log P[X >= k]: running log-sum-exp from the top
    lower = np.concatenate([[-np.inf], np.logaddexp.accumulate(log_pmf)[:-1]])  # log P[X < k]
    # near 1 the tail's log is tiny and log(1 - P[X < k]) keeps its relative precision
    near_one = upper > math.log(0.5)
    tail = upper.copy()
    tail[near_one] = np.log1p(-np.exp(lower[near_one]))
    return np.minimum(tail, 0.0) / math.log(10)


def _exact_log10_tail(n: int, q: float) -> np.ndarray:
    """The same in integers: q is a binary float a / d, so P[X >= k] = S_k / d^n with S_k an exact integer."""
    a, d = q.as_integer_ratio()
    b, total = d - a, d**n  # 1 - q = b / d, and sum_j comb(n, j) a^j b^(n - j) = d^n
    out = np.empty(n + 1)
    acc = 0
    for j in range(n, -1, -1):
        acc += math.comb(n, j) * a**j * b ** (n - j)
        if 2 * acc > total:  # near 1: log1p of the exact complement
            out[j] = math.log1p(-((total - acc) / total)) / math.log(10)
        else:
            out[j] = _log10_ratio(acc, total)
    return out


def _log10_ratio(num: int, den: int) -> float:
    """log10(num / den) for big integers, without underflow: scale by a power of two first."""
    t = num.bit_length() - den.bit_length()
    scaled = (num << max(-t, 0)) / (den << max(t, 0))  # int / int is correctly rounded, in [0.5, 2]
    return math.log10(scaled) + t * math.log10(2)
