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

Speed: both the Cholesky factor and the column walk are blocked ("lazy batch"): inside a block
of columns the updates are element-wise, and the rest of the matrix is updated once per block by a
matrix product (BLAS-3).

Determinism: a BLAS product sums in an order that depends on the CPU kernel and the thread count,
so its rounding does too. `exact_dot` removes the rounding instead of fixing the order (Ozaki's
error-free splitting): each operand is cut into slices of at most `beta` significant bits,
aligned per row of A and per column of B, so every product of two slices is an exact float64 sum
whatever the order; the slices' products are then added element-wise in a fixed order. Everything
else is element-wise numpy or a reduction along a contiguous axis. The codes are therefore the same
for any machine, BLAS and thread count (tests/test_artifact.py packs with 1, 2 and 7 threads).
"""

from __future__ import annotations

import hashlib
import threading

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


def _slices(x: np.ndarray, axis: int, beta: int, count: int) -> list[np.ndarray]:
    """x = sum of `count` slices (plus a remainder below the last), each slice an integer of at most
    `beta` bits times a power of two shared along `axis` (a row of A, a column of B)."""
    amax = np.abs(x).max(axis=axis, keepdims=True)
    _, e = np.frexp(amax)                             # amax < 2^e (0 for an all-zero line)
    out, r = [], x
    for s in range(count):
        unit = np.ldexp(1.0, e - beta * (s + 1))
        xs = np.rint(r / unit) * unit                 # exact: unit is a power of two
        out.append(xs)
        r = r - xs                                    # exact: the rounding's residual
    return out


def _beta(k: int) -> int:
    """Bits per slice for sums of k products: k * 2^(2 beta) <= 2^53 keeps every partial sum exact."""
    return (53 - max(1, int(k - 1).bit_length())) // 2


def exact_dot(a: np.ndarray, b: np.ndarray, count: int = 2) -> np.ndarray:
    """a @ b (float64) with a result that does not depend on the BLAS's summation order.

    Slices of `beta` bits (`_beta`): each slice product's partial sums are exact in float64, so any
    order (any kernel, any thread count) gives the same numbers. The products of slices s, t with
    s + t < count are added in a fixed order, smallest first; the dropped terms are below about
    2^(-count*beta) of the largest magnitudes (~1e-14 relative for count 2)."""
    k = a.shape[1]
    if k == 0:
        return np.zeros((a.shape[0], b.shape[1]))
    beta = _beta(k)
    return dot_slices(_slices(np.asarray(a, dtype=np.float64), 1, beta, count),
                      _slices(np.asarray(b, dtype=np.float64), 0, beta, count))


def dot_slices(sa: list[np.ndarray], sb: list[np.ndarray]) -> np.ndarray:
    """sum over s + t < count of sa[s] @ sb[t], smallest terms first (see `exact_dot`)."""
    count = len(sa)
    out = None
    for level in range(count - 1, -1, -1):
        for s in range(level + 1):
            p = sa[s] @ sb[level - s]
            out = p if out is None else out + p
    return out


def cholesky_blocked(a: np.ndarray, block: int = 128) -> np.ndarray | None:
    """`cholesky_lower` by blocks of columns (right-looking): factor the diagonal block element-wise,
    solve the panel below it by forward substitution, subtract the panel's outer product from the
    lower part of the rest, block column by block column, with `dot_slices` of the panel's slices.
    None if `a` is not positive definite."""
    n = a.shape[0]
    if n <= block:
        return cholesky_lower(a)
    s = np.array(a, dtype=np.float64)                 # the trailing matrix, updated block by block
    L = np.zeros((n, n), dtype=np.float64)
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        d = cholesky_lower(np.ascontiguousarray(s[j0:j1, j0:j1]))
        if d is None:
            return None
        L[j0:j1, j0:j1] = d
        if j1 == n:
            break
        panel = s[j1:, j0:j1]                         # solve X d^T = panel, column by column
        x = np.zeros_like(panel)
        for c in range(j1 - j0):
            x[:, c] = (panel[:, c] - (x[:, :c] * d[c, :c]).sum(axis=1)) / d[c, c]
        L[j1:, j0:j1] = x
        # per-row slices of x: a row's slices do not depend on which other rows are taken with it
        beta = _beta(j1 - j0)
        sx = _slices(x, 1, beta, 2)
        sxt = [np.ascontiguousarray(v.T) for v in sx]
        for c0 in range(j1, n, block):
            c1 = min(n, c0 + block)
            r0, r1 = c0 - j1, c1 - j1
            s[c0:, c0:c1] -= dot_slices([v[r0:] for v in sx], [v[:, r0:r1] for v in sxt])
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
_FACTORS_LOCK = threading.Lock()
_KEY_LOCKS: dict[bytes, threading.Lock] = {}


def factor(h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(processing order reversed, L) for `h`: act order, damping escalated until positive definite.
    Thread-safe: tensors sharing a Hessian, quantised in parallel, wait for one factorisation."""
    h = np.ascontiguousarray(h, dtype=np.float64)
    key = hashlib.sha256(h.tobytes() + np.float64(damp).tobytes()).digest()
    with _FACTORS_LOCK:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _FACTORS_LOCK:
            if key in _FACTORS:
                return _FACTORS[key]
        order = np.argsort(-np.diagonal(h), kind="stable")
        proc = order[::-1]                              # factor index i <-> column proc[i]
        for attempt in range(6):
            L = cholesky_blocked(damped(h, damp * (10.0 ** attempt))[np.ix_(proc, proc)])
            if L is not None:
                with _FACTORS_LOCK:
                    while _FACTORS and sum(f[1].nbytes for f in _FACTORS.values()) + L.nbytes > _FACTORS_MAX_BYTES:
                        _KEY_LOCKS.pop(next(iter(_FACTORS)), None)
                        _FACTORS.pop(next(iter(_FACTORS)))
                    _FACTORS[key] = (proc, L)
                return proc, L
    raise PgolfError("GPTQ: Hessian is not positive definite even with heavy damping; check calibration data")


def gptq_codes(rows: np.ndarray, hessian: np.ndarray, scale: np.ndarray, bits: int,
               block: int = 128, damp: float = 0.01, cols: tuple | None = None) -> np.ndarray:
    """Int8 codes [out, in] for `rows` with fixed per-row `scale` (fp16) and `bits`; `cols` =
    (start, size, scale, qmax) codes those columns with their own per-row scale and range (AWQ-lite).

    Columns go in blocks of `block` (`quant.gptq_block`): inside a block each fixed column's error
    nudges the block's later columns at once; the columns after the block get all of the block's
    errors in one `exact_dot`."""
    out_f, in_f = rows.shape
    h = np.asarray(hessian)
    if h.shape != (in_f, in_f):
        raise PgolfError(f"GPTQ: Hessian shape {h.shape} does not match weight [out, in] = {rows.shape}")
    if not np.all(np.isfinite(h)):
        raise PgolfError("GPTQ: Hessian has non-finite entries; recollect calibration statistics")
    block = max(1, int(block))
    m = qmax(bits)
    s = scale.astype(np.float64)
    proc, L = factor(h, damp)
    # Column-major working copy: wt[i] is the target column proc[i] over all rows (contiguous).
    w0 = np.ascontiguousarray(rows.astype(np.float64)[:, proc].T)
    wt = w0.copy()                                  # targets, nudged by the errors of fixed columns
    codes = np.empty((in_f, out_f), dtype=np.int8)
    coef = L / np.diagonal(L)[None, :]              # coef[k, j] = L[k, j] / L[j, j]
    hi = None if cols is None else (cols[0], cols[0] + cols[1], cols[2].astype(np.float64), cols[3])
    errs = np.empty((block, out_f))
    for top in range(in_f, 0, -block):              # blocks from the last factor column down
        lo = max(0, top - block)
        for k in range(top - 1, lo - 1, -1):
            sk, mk = (hi[2], hi[3]) if hi is not None and hi[0] <= proc[k] < hi[1] else (s, m)
            q = np.clip(np.rint(wt[k] / sk), -mk, mk)
            codes[k] = q.astype(np.int8)
            err = errs[k - lo]
            np.subtract(w0[k], q * sk, out=err)     # the true error of column k, not of its nudged target
            if k > lo:
                wt[lo:k] += coef[k, lo:k, None] * err[None, :]
        if lo:
            wt[:lo] += exact_dot(np.ascontiguousarray(coef[lo:top, :lo].T), errs[:top - lo])
    out = np.empty((out_f, in_f), dtype=np.int8)
    out[:, proc] = codes.T
    return out


def layer_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - W_hat) H (W - W_hat)^T): the output error on the calibration inputs (a metric, not bytes)."""
    e = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.einsum("oi,ij,oj->", e, np.asarray(hessian, dtype=np.float64), e, optimize=True))
