"""LQER: a low-rank correction of the quantisation error, stored as low-bit factors.

For the `quant.lqer_tensors` integer-quantised matrices with the largest
quantisation error, E = W - Q(W) is approximated by a rank-r product A B
(A [out, r], B [r, in]); A is stored with `quant.lqer_a_bits` and one scale
for the whole factor, B with `quant.lqer_b_bits` and one scale per group of
`quant.lqer_group` values along each of its rows. The dequantiser adds
deq(A) @ deq(B) back (`apply`). Record PR #1855 (docs/FACTS.md): rank 4,
3 tensors, A int2, B int4 in groups of 64. Written from the description,
not from the record's code.

Determinism: the factors are found by power iteration with deflation, using
element-wise numpy and reductions along one axis only (no LAPACK SVD, whose
result depends on the BLAS build and thread count), from start vectors drawn
with a fixed seed; B is refitted to the quantised A with a hand-written r x r
Cholesky solve; the correction is summed over the rank in a fixed order. So
the factors, and the artifact bytes, are the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.artifact.gptq import cholesky_lower
from shared.artifact.schemes import qmax

POWER_ITERS = 40     # enough for the top singular vectors of a quantisation error to settle (tests check the fit)
SCALE_GRID = 33      # candidate scales for A between 0.1 and 1.0 of max|A| / qmax


@dataclass(frozen=True)
class Lqer:
    """The stored factors of one tensor's correction."""

    a: np.ndarray        # int8 [out, rank] codes
    a_scale: np.ndarray  # float16 [1]
    b: np.ndarray        # int8 [rank, in] codes
    b_scale: np.ndarray  # float16 [rank, ceil(in / group)]
    a_bits: int
    b_bits: int
    group: int

    @property
    def rank(self) -> int:
        return int(self.a.shape[1])


def _dot_rows(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (m * v[None, :]).sum(axis=1)


def _dot_cols(m: np.ndarray, u: np.ndarray) -> np.ndarray:
    return (m * u[:, None]).sum(axis=0)


def top_factors(err: np.ndarray, rank: int, iters: int = POWER_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """(U sqrt(S) [out, r], sqrt(S) V^T [r, in]) of the top-`rank` singular triplets of `err`, deterministic."""
    e = np.array(err, dtype=np.float64, copy=True)
    out_f, in_f = e.shape
    rank = min(rank, out_f, in_f)
    us, vs = np.zeros((out_f, rank)), np.zeros((rank, in_f))
    rng = np.random.default_rng(20260514)   # PCG64: the same start vectors everywhere
    for k in range(rank):
        v = rng.standard_normal(in_f)
        v /= np.sqrt((v * v).sum())
        for _ in range(iters):
            v = _dot_cols(e, _dot_rows(e, v))
            n = np.sqrt((v * v).sum())
            if not n > 0:
                break
            v /= n
        u = _dot_rows(e, v)
        sigma = np.sqrt((u * u).sum())
        if not sigma > 0:
            break
        u /= sigma
        e -= sigma * u[:, None] * v[None, :]
        us[:, k] = u * np.sqrt(sigma)
        vs[k] = v * np.sqrt(sigma)
    return us, vs


def _fp16(x: np.ndarray | float) -> np.ndarray:
    s = np.asarray(x, dtype=np.float64).astype(np.float16)
    s[~(s.astype(np.float32) > np.float32(np.finfo(np.float16).tiny))] = np.float16(1.0)
    return s


def _quant_one_scale(a: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and one fp16 scale for the whole factor, the scale picked from a fixed grid by squared error."""
    m = qmax(bits)
    top = float(np.abs(a).max())
    best = None
    for f in np.linspace(0.1, 1.0, SCALE_GRID):
        s = _fp16(np.array([top * f / m]))
        q = np.clip(np.rint(a / s[0].astype(np.float64)), -m, m)
        err = ((a - q * s[0].astype(np.float64)) ** 2).sum()
        if best is None or err < best[0]:
            best = (err, q.astype(np.int8), s)
    return best[1], best[2]


def _quant_groups(b: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and one fp16 scale (max |b| / qmax) per group of `group` values along each row."""
    m = qmax(bits)
    rows, cols = b.shape
    ng = -(-cols // group)
    pad = np.zeros((rows, ng * group))
    pad[:, :cols] = b
    g = pad.reshape(rows, ng, group)
    s = _fp16(np.abs(g).max(axis=2) / m)
    q = np.clip(np.rint(g / s.astype(np.float64)[:, :, None]), -m, m).reshape(rows, ng * group)[:, :cols]
    return q.astype(np.int8), s


def _deq_a(f: Lqer) -> np.ndarray:
    return f.a.astype(np.float32) * f.a_scale.astype(np.float32)[0]


def _deq_b(f: Lqer) -> np.ndarray:
    rows, cols = f.b.shape
    s = np.repeat(f.b_scale.astype(np.float32), f.group, axis=1)[:, :cols]
    return f.b.astype(np.float32) * s


def correction(f: Lqer) -> np.ndarray:
    """deq(A) @ deq(B), float32 [out, in], summed over the rank in order (no BLAS: same bits everywhere)."""
    a, b = _deq_a(f), _deq_b(f)
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for k in range(a.shape[1]):
        out += a[:, k, None] * b[None, k, :]
    return out


def fit(err: np.ndarray, rank: int, a_bits: int, b_bits: int, group: int) -> Lqer:
    """The stored factors of a rank-`rank` correction of `err` (= W - deq(Q(W)), [out, in])."""
    e = np.asarray(err, dtype=np.float64)
    us, _ = top_factors(e, rank)
    a_q, a_s = _quant_one_scale(us, a_bits)
    a = a_q.astype(np.float64) * a_s[0].astype(np.float64)
    # B refitted to the *quantised* A (least squares, B = (A^T A)^-1 A^T E): A at 2 bits is coarse,
    # and the refit recovers much of what its rounding lost.
    r = a.shape[1]
    gram = np.array([[(a[:, i] * a[:, j]).sum() for j in range(r)] for i in range(r)])
    gram += np.eye(r) * (1e-9 * max(np.trace(gram) / max(r, 1), 1e-30))
    rhs = np.stack([_dot_cols(e, a[:, i]) for i in range(r)])   # A^T E [r, in]
    L = cholesky_lower(gram)
    if L is None:   # A quantised to all zeros in some column: fall back to the SVD's own B
        b = top_factors(e, rank)[1]
    else:
        z = np.zeros_like(rhs)
        for i in range(r):                       # L z = rhs
            z[i] = (rhs[i] - (L[i, :i, None] * z[:i]).sum(axis=0)) / L[i, i]
        b = np.zeros_like(rhs)
        for i in range(r - 1, -1, -1):           # L^T b = z
            b[i] = (z[i] - (L[i + 1:, i, None] * b[i + 1:]).sum(axis=0)) / L[i, i]
    b_q, b_s = _quant_groups(b, b_bits, group)
    return Lqer(a=a_q, a_scale=a_s, b=b_q, b_scale=b_s, a_bits=a_bits, b_bits=b_bits, group=group)


def error_score(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray | None) -> float:
    """The quantisation error used to pick LQER's tensors: sum (W - W_hat)^2 weighted by diag(H) per input
    column when a Hessian is given (the output error, to first order), plain squared error otherwise."""
    e = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    e2 = (e * e).reshape(e.shape[0], -1)
    if hessian is not None:
        e2 = e2 * np.diagonal(np.asarray(hessian, dtype=np.float64))[None, :]
    return float(e2.sum(axis=1).sum())
