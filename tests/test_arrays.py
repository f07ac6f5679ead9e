"""als_core._arrays.sorted_unique must give exactly what np.unique gives, for the ids it is used on."""

from __future__ import annotations

import numpy as np
import pytest

from als_core._arrays import sorted_unique


@pytest.mark.parametrize("kind", ["int64", "str"])
@pytest.mark.parametrize("size,spread", [(0, 1), (1, 1), (1000, 50), (5000, 10**12)])
def test_matches_np_unique(kind, size, spread):
    rng = np.random.default_rng(size)
    values = rng.integers(-spread, spread, size)
    if kind == "str":
        values = values.astype(str)  # byte order, not numeric: '-3' < '10' < '9'
    expected, expected_inverse = np.unique(values, return_inverse=True)
    unique, inverse = sorted_unique(values, return_inverse=True)
    np.testing.assert_array_equal(unique, expected)
    np.testing.assert_array_equal(inverse, expected_inverse)
    np.testing.assert_array_equal(unique[inverse], values)
    np.testing.assert_array_equal(sorted_unique(values), expected)
    assert unique.dtype == expected.dtype
