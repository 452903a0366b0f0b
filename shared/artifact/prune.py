"""Selective pruning: set the +-1 codes whose loss costs least to 0 (zeros compress best).

`quant.prune_values = N` zeroes the N codes of value +-1, over all
integer-quantised matrices, whose removal adds the least Hessian-weighted
squared error: for weight w in input column j of a row with step s, coded
q = +-1, the cost is H_jj * (w^2 - (w - s q)^2) (the change of that weight's
error, weighted by how much its input is used; H_jj = 1 without a Hessian).
Ties go to the first tensor in sorted-name order, then the first position:
the choice is a pure function of the inputs.

One currency: a Hessian-weighted cost (a change of the layer's output
energy over the calibration tokens) and a plain squared weight error are
different units, and ranked together the unweighted ones always looked
cheapest (H_jj sums a squared activation over every calibration token:
thousands), so the int8 gate rows, which get no Hessian, were pruned first
whatever they cost. So when any candidate tensor has a Hessian, only tensors
with one are pruned (`candidates`); without Hessians every tensor is ranked
by its plain error. The tensors left out are the gates (1,068 values in the
record model; BENCHMARKS.md counts their +-1 codes): nothing worth trading. Budget mode picks N
(shared/artifact/budget.py); the last-mile trim of the records (#1855 and
#1945 prune +-1 values to fit the cap), written from that description.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from shared.artifact.quant import QTensor, as_rows


def prune_costs(w: np.ndarray, t: QTensor, hessian: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions of the +-1 codes of `t`, the cost of zeroing each), float64."""
    assert t.q is not None and t.scale is not None
    rows = as_rows(w).astype(np.float64)
    pos = np.flatnonzero(np.abs(t.q.reshape(-1)) == 1)
    r, c = np.divmod(pos, t.q.shape[1])
    x = rows.reshape(-1)[pos]
    e_old = x - t.q.reshape(-1)[pos].astype(np.float64) * t.scale.astype(np.float64)[r]
    cost = x * x - e_old * e_old
    if hessian is not None:
        cost = cost * np.diagonal(np.asarray(hessian, dtype=np.float64))[c]
    return pos, cost


def candidates(qts: dict[str, QTensor], hessians: dict | None = None) -> list[str]:
    """The tensors whose +-1 codes may be pruned, in sorted-name order: integer-coded, no LQER or AWQ group, and, when
    any of those has a Hessian, only those with one (module docstring: one currency)."""
    names = [k for k in sorted(qts) if qts[k].q is not None and qts[k].lqer is None and qts[k].awq is None]
    with_h = [k for k in names if k in (hessians or {})]
    return with_h if with_h else names


def prune(params: dict[str, np.ndarray], qts: dict[str, QTensor], n: int,
          hessians: dict | None = None) -> dict[str, QTensor]:
    """`qts` with the `n` cheapest +-1 codes (see module docstring) set to 0; `n` beyond the count prunes all."""
    if n <= 0:
        return qts
    names = candidates(qts, hessians)
    parts = [prune_costs(params[k], qts[k], (hessians or {}).get(k)) for k in names]
    if not parts:
        return qts
    costs = np.concatenate([c for _, c in parts])
    owner = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, (p, _) in enumerate(parts)])
    flat = np.concatenate([p for p, _ in parts])
    chosen = np.argsort(costs, kind="stable")[:n]
    out = dict(qts)
    for i, name in enumerate(names):
        sel = flat[chosen[owner[chosen] == i]]
        if len(sel):
            t = qts[name]
            q = t.q.copy()
            q.reshape(-1)[sel] = 0
            out[name] = replace(t, q=q)
    return out


def count_candidates(qts: dict[str, QTensor], hessians: dict | None = None) -> int:
    """How many +-1 codes there are to prune (in the tensors `candidates` allows)."""
    return int(sum((np.abs(qts[k].q) == 1).sum() for k in candidates(qts, hessians)))
