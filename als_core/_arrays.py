"""Array helpers that numpy has, but slowly for our shapes."""

from __future__ import annotations

import numpy as np


def sorted_unique(values, return_inverse: bool = False):
    """``np.unique(values)`` (and ``return_inverse``) of ids (integers or strings), by one sort.

    numpy 2.4's ``np.unique`` hashes integers, which is slow when most values are distinct: 0.19 s for 200k
    distinct int64 ids and 1.3 s for 1M, against 6 ms and 24 ms for a sort (measured on this project's
    2-core machine). Every model bundle indexes its ids, so this is paid several times per retrain."""
    values = np.asarray(values).ravel()
    if return_inverse:
        order = np.argsort(values, kind="stable")
        ordered = values[order]
    else:
        ordered = np.sort(values)
    first = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    unique = ordered[first]
    if not return_inverse:
        return unique
    inverse = np.empty(len(values), dtype=np.intp)
    inverse[order] = np.cumsum(first) - 1
    return unique, inverse
