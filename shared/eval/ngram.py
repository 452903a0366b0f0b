"""The token-only online n-gram tilt of #2135 (from #1145): hints built from the validation stream's prefix.

For every target t of the validation stream, a causal n-gram expert proposes at most one hint token h_t:
among the earlier targets whose preceding `order - 1` tokens hashed to the same context as t's, the token
that most often came next (first to reach the top count wins), with its frequency p_t. Where p_t reaches
`threshold`, scoring tilts the model's distribution towards h_t and renormalises it over the whole
vocabulary, in closed form:

    -log p'(y_t) = -log p(y_t) - beta * [y_t == h_t] + log1p(q_t * (exp(beta) - 1)),   q_t = p(h_t)

The hint of target t reads only targets before t in stream order (its state is the stream's prefix), so
changing a token never moves an earlier score; the tilted distribution sums to 1. The record computed the
same state with a C hash table (64-bit keys, XOR-rolling context hash over a ring seeded with the first
target); here it is a few sorts in numpy, with the same hashes, so the hints are the record's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_COEFFS = np.array([36313, 27191, 51647, 81929, 131071, 196613, 262147, 393241, 524309, 655373, 786433, 917521,
                    1048583, 1179653, 1310729, 1441801, 1572869, 1703941, 1835017, 1966087, 2097169, 2228243,
                    2359319, 2490389, 2621471, 2752549, 2883617, 3014687, 3145757, 3276833, 3407903, 3538973],
                   dtype=np.uint64)
_PAIR_MIX = np.uint64(1000003)


@dataclass(frozen=True)
class Hints:
    """Per target of the stream: the hinted token, whether the tilt applies, and its boost beta."""

    token: np.ndarray   # int64 [n]
    gate: np.ndarray    # bool [n]
    boost: np.ndarray   # float32 [n] (0 where gate is off)


def token_hints(targets: np.ndarray, order: int = 16, threshold: float = 0.8, boost: float = 2.625) -> Hints:
    """Hints for `targets` (the validation tokens after the first, in stream order)."""
    t = np.asarray(targets).astype(np.uint64)
    n, ctx = t.size, max(order - 1, 0)
    token = np.zeros(n, dtype=np.int64)
    prob = np.zeros(n, dtype=np.float32)
    first = max(ctx - 1, 0)  # the ring starts with targets[0] once, so it holds ctx tokens at target ctx - 1
    if n > first:
        ring = np.concatenate((t[:1], t))           # ring[i + 1] = targets[i]; ring[0] the seed
        idx = np.arange(first, n)
        key = np.zeros(idx.size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(ctx):                    # oldest first: ring[i + 1 - ctx + j] * COEFFS[j]
                key ^= ring[idx + 1 - ctx + j] * _COEFFS[j]
            pair = (key * _PAIR_MIX) ^ (t[idx] * _COEFFS[ctx % len(_COEFFS)])
        # how many times this (context, token) pair has been seen, this one included
        ps = np.argsort(pair, kind="stable")
        run = np.r_[True, pair[ps][1:] != pair[ps][:-1]]
        starts = np.maximum.accumulate(np.where(run, np.arange(ps.size), 0))
        count = np.empty(ps.size, dtype=np.int64)
        count[ps] = np.arange(ps.size) - starts + 1
        # per context, in stream order: the state before each target (total seen, top count, top token)
        cs = np.argsort(key, kind="stable")
        grp_start = np.r_[True, key[cs][1:] != key[cs][:-1]]
        gid = np.cumsum(grp_start) - 1
        first_of = np.maximum.accumulate(np.where(grp_start, np.arange(cs.size), 0))
        total = np.arange(cs.size) - first_of      # targets of this context before this one
        c = count[cs]
        big = np.int64(c.max() + 1)
        running = np.maximum.accumulate(gid * big + c) - gid * big      # top count including this target
        before = np.where(grp_start, 0, np.r_[0, running[:-1]])        # top count before it
        update = c > before                                              # it becomes (or stays) the top
        last = np.maximum.accumulate(np.where(update, np.arange(cs.size), -1))
        prev = np.where(grp_start, -1, np.r_[-1, last[:-1]])
        has = total > 0
        sel = cs[has]
        token[idx[sel]] = t[idx[cs[prev[has]]]].astype(np.int64)
        prob[idx[sel]] = before[has].astype(np.float32) / total[has].astype(np.float32)
    gate = prob >= np.float32(threshold)
    return Hints(np.where(gate, token, 0), gate, np.where(gate, np.float32(boost), np.float32(0)))


def tilt(nats: np.ndarray, hint_logp: np.ndarray, hit: np.ndarray, gate: np.ndarray, boost: np.ndarray) -> np.ndarray:
    """Tilted nats per target: nats - beta * hit + log1p(q * (exp(beta) - 1)) where the gate is on."""
    q = np.exp(np.minimum(np.asarray(hint_logp, dtype=np.float64), 0.0))
    b = np.asarray(boost, dtype=np.float64)
    tilted = np.asarray(nats, dtype=np.float64) - b * hit + np.log1p(q * np.expm1(b))
    return np.where(gate, tilted, nats)

