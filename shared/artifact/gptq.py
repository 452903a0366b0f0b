"""GPTQ for one weight matrix, in numpy, with byte-identical results everywhere.

Given W [out, in], the Hessian H = sum a a^T of its inputs [in, in] (collected
by a backend's `collect_hessians`), per-row scales and a bit width, choose
integer codes Q that make the layer-wise error tr((W - sQ) H (W - sQ)^T)
small, column by column, pushing each column's rounding error onto the
columns not yet quantised.

We use the equivalent "nearest plane" form (GPTQ is Babai's nearest-plane
algorithm on the lattice given by the Cholesky factor of H; Chen et al.,
2025): with the columns in processing order o, reverse them, factor
H_r = L L^T (lower), and walk the columns from the last of the reversed
order to the first; after fixing a column k, every column j still to come
is nudged by E_k * L[k, j] / L[j, j], E_k = W_k - s Q_k being column k's
true error. This needs one Cholesky factorisation
and no inverse. The processing order is "act order": columns by decreasing
H diagonal (most-used inputs first), ties broken by index.

Determinism: every step is an element-wise numpy operation or a reduction
along a contiguous axis, never BLAS (whose summation order depends on the
CPU kernel and the thread count), so the codes are the same on any machine.
"""

from __future__ import annotations

import hashlib

import numpy as np

from shared.artifact.schemes import qmax
from shared.errors import PgolfError


def cholesky_lower(a: np.ndarray) -> np.ndarray | None:
    """Lower-triangular L with a = L L^T (left-looking, BLAS-free); None if a is not positive definite."""
    n = a.shape[0]
    L = np.zeros((n, n), dtype=np.float64)
    for j in range(n):
        row = L[j, :j]
        d = a[j, j] - (row * row).sum()
        if not d > 0.0:
            return None
        ljj = np.sqrt(d)
        L[j, j] = ljj
        if j + 1 < n:
            L[j + 1:, j] = (a[j + 1:, j] - (L[j + 1:, :j] * row).sum(axis=1)) / ljj
    return L


def damped(h: np.ndarray, damp: float) -> np.ndarray:
    """H + damp * mean(diag H) * I; inputs that were never active get a unit diagonal."""
    h = np.array(h, dtype=np.float64, copy=True)
    diag = np.diagonal(h).copy()
    dead = ~(diag > 0)
    diag[dead] = 1.0
    mean = diag.mean() if diag.size else 1.0
    np.fill_diagonal(h, diag + damp * mean)
    return h


# q, k and v share one input and so one Hessian: factor it once. Budget mode quantises every tensor
# at five widths in several passes, so the factors are kept up to a memory bound rather than a count
# (8 entries made it refactor each Hessian once per pass: the record model has 45, the 11 of width 2048
# taking seconds each in this element-wise form).
_FACTORS: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
_FACTORS_MAX_BYTES = 512 << 20


def factor(h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(processing order reversed, L) for `h`: act order, damping escalated until positive definite."""
    h = np.ascontiguousarray(h, dtype=np.float64)
    key = hashlib.sha256(h.tobytes() + np.float64(damp).tobytes()).digest()
    if key in _FACTORS:
        return _FACTORS[key]
    order = np.argsort(-np.diagonal(h), kind="stable")
    proc = order[::-1]                              # factor index i <-> column proc[i]
    for attempt in range(6):
        L = cholesky_lower(damped(h, damp * (10.0 ** attempt))[np.ix_(proc, proc)])
        if L is not None:
            while _FACTORS and sum(f[1].nbytes for f in _FACTORS.values()) + L.nbytes > _FACTORS_MAX_BYTES:
                _FACTORS.pop(next(iter(_FACTORS)))
            _FACTORS[key] = (proc, L)
            return proc, L
    raise PgolfError("GPTQ: Hessian is not positive definite even with heavy damping; check calibration data")


def gptq_codes(rows: np.ndarray, hessian: np.ndarray, scale: np.ndarray, bits: int,
               block: int = 128, damp: float = 0.01, cols: tuple | None = None) -> np.ndarray:
    """Int8 codes [out, in] for `rows` with fixed per-row `scale` (fp16) and `bits`; `cols` =
    (start, size, scale, qmax) codes those columns with their own per-row scale and range (AWQ-lite).

    `block` is accepted for config compatibility: the column-by-column update
    here is exact, so there is nothing to batch."""
    del block
    out_f, in_f = rows.shape
    h = np.asarray(hessian)
    if h.shape != (in_f, in_f):
        raise PgolfError(f"GPTQ: Hessian shape {h.shape} does not match weight [out, in] = {rows.shape}")
    if not np.all(np.isfinite(h)):
        raise PgolfError("GPTQ: Hessian has non-finite entries; recollect calibration statistics")
    m = qmax(bits)
    s = scale.astype(np.float64)
    proc, L = factor(h, damp)
    # Column-major working copy: wt[i] is the target column proc[i] over all rows (contiguous).
    w0 = np.ascontiguousarray(rows.astype(np.float64)[:, proc].T)
    wt = w0.copy()                                  # targets, nudged by the errors of fixed columns
    codes = np.empty((in_f, out_f), dtype=np.int8)
    coef = L / np.diagonal(L)[None, :]              # coef[k, j] = L[k, j] / L[j, j]
    hi = None if cols is None else (cols[0], cols[0] + cols[1], cols[2].astype(np.float64), cols[3])
    for k in range(in_f - 1, -1, -1):
        sk, mk = (hi[2], hi[3]) if hi is not None and hi[0] <= proc[k] < hi[1] else (s, m)
        q = np.clip(np.rint(wt[k] / sk), -mk, mk)
        codes[k] = q.astype(np.int8)
        if k:
            err = w0[k] - q * sk                    # the true error of column k, not of its nudged target
            wt[:k] += coef[k, :k, None] * err[None, :]
    out = np.empty((out_f, in_f), dtype=np.int8)
    out[:, proc] = codes.T
    return out


def layer_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - W_hat) H (W - W_hat)^T): the output error on the calibration inputs (a metric, not bytes)."""
    e = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.einsum("oi,ij,oj->", e, np.asarray(hessian, dtype=np.float64), e, optimize=True))
