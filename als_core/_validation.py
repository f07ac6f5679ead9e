"""Input checks shared by the recommenders: clear errors before anything reaches a numba kernel."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def as_csr(matrix, name: str = "user_items") -> sp.csr_matrix:
    """``matrix`` as CSR without looking at its values (enough where only which items a user has matters):
    any scipy sparse matrix/array, or a dense 2-D numpy array (zeros = missing); other types are refused."""
    if sp.issparse(matrix):
        return matrix if isinstance(matrix, sp.csr_matrix) else sp.csr_matrix(matrix)
    if isinstance(matrix, np.ndarray) and matrix.ndim == 2:
        return sp.csr_matrix(matrix)
    raise TypeError(
        f"{name} must be a scipy.sparse matrix (CSR preferred) or a 2-D numpy array, got {type(matrix).__name__}"
        + (f" of shape {matrix.shape}" if isinstance(matrix, np.ndarray) else "")
    )


def as_user_items(matrix, *, allow_negative: bool = False, name: str = "user_items") -> sp.csr_matrix:
    """Return a canonical float CSR copy-or-view of ``matrix`` (users x items).

    Accepts any scipy sparse matrix/array (converted) or a dense 2-D numpy array (zeros = missing).
    Rejects other types, empty matrices and NaN/inf values; negative values unless ``allow_negative``.
    """
    if sp.issparse(matrix):
        csr = sp.csr_matrix(matrix)
    elif isinstance(matrix, np.ndarray):
        if matrix.ndim != 2:
            raise ValueError(f"{name} must be 2-D (users x items), got shape {matrix.shape}")
        csr = sp.csr_matrix(matrix)
    else:
        raise TypeError(
            f"{name} must be a scipy.sparse matrix (CSR preferred) or a 2-D numpy array, "
            f"got {type(matrix).__name__}"
        )
    if not np.issubdtype(csr.dtype, np.number) or np.issubdtype(csr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got dtype {csr.dtype}")
    if csr.shape[0] == 0 or csr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {csr.shape}")
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    if not np.all(np.isfinite(csr.data)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if not allow_negative and csr.nnz and csr.data.min() < 0:
        raise ValueError(f"{name} contains negative values; implicit feedback needs r >= 0")
    return csr


def check_n(n, n_items: int) -> int:
    """N must be a positive integer; it is capped at the catalogue size (results are padded with -1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"N must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    return int(min(n, n_items))


def check_ids(ids, upper: int, what: str) -> np.ndarray:
    """Integer indices in [0, upper) as an int64 array."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(f"{what} ids must be in [0, {upper}), got range [{arr.min()}, {arr.max()}]")
    return arr
