"""Document lengths of the FineWeb validation split, for attention under the document mask and TTT.

The records batch the 50,000 validation documents by length for per-document TTT and log,
for each batch they score, the shortest and longest document in it (`ttp: bN/782 ...
dl:MIN-MAX`, batches of 64 sorted by length; #2014: batches of 24). The union of those lines
over the logs of #1855, #1953 and #2135 (3 seeds each, batches of 64) and #2014 (batches of
24) gives 2,354 (rank, length) points of the sorted lengths; `QUANTILES` keeps 77 of them
(piecewise linear in between; the sum of the curve is within 0.5% of the split's 47,851,520
tokens). Lengths are in SP8192 CaseOps tokens; for another tokenizer they are scaled by the
ratio of its validation token count (same documents). Training documents are assumed to
follow the same distribution (both are FineWeb).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

VAL_DOCS = 50_000
SP8192_VAL_TOKENS = 47_851_520   # the CaseOps SP8192 validation split (#1855 log: val_tokens)
SP1024_VAL_TOKENS = 63_779_840   # the official SP1024 export (its validation shard header)

# (rank among the 50,000 sorted documents, length in tokens incl. its BOS)
QUANTILES = (
    (0, 44), (1249, 123), (2499, 143), (3749, 162), (4999, 180), (6249, 197), (7499, 215), (8749, 233),
    (9999, 252), (11249, 271), (12499, 292), (13749, 312), (14999, 335), (16249, 359), (17499, 384),
    (18749, 412), (19999, 441), (21249, 471), (22499, 500), (23749, 533), (24999, 568), (26249, 603),
    (27499, 641), (28749, 681), (29999, 723), (31249, 770), (32499, 819), (33749, 876), (34999, 937),
    (36249, 1002), (37499, 1076), (38749, 1161), (39999, 1260), (41249, 1371), (42103, 1458), (42499, 1500),
    (43749, 1662), (43764, 1664), (44999, 1873), (45076, 1889), (46111, 2154), (46249, 2198), (46929, 2476),
    (47499, 2772), (47575, 2819), (48085, 3240), (48488, 3696), (48749, 4101), (48806, 4226), (49057, 4773),
    (49255, 5451), (49412, 6127), (49535, 6872), (49633, 7913), (49710, 9019), (49771, 9982), (49819, 11574),
    (49857, 13138), (49887, 14564), (49911, 16460), (49929, 18419), (49944, 20182), (49956, 22302),
    (49965, 23893), (49972, 26038), (49978, 28189), (49982, 29622), (49986, 39242), (49989, 52597),
    (49991, 61501), (49993, 70404), (49994, 74856), (49995, 79307), (49996, 83759), (49997, 88211),
    (49998, 92662), (49999, 97114),
)


def val_tokens_for(vocab_size: int) -> int:
    """Validation tokens of the published export at this vocabulary: SP1024 and SP8192 as published;
    others interpolated in log-vocab between them (an estimate, stated in docs/PLAN.md)."""
    if vocab_size == 1024:
        return SP1024_VAL_TOKENS
    if vocab_size == 8192:
        return SP8192_VAL_TOKENS
    frac = (np.log2(max(vocab_size, 2)) - 10.0) / 3.0
    return int(round(SP1024_VAL_TOKENS * (SP8192_VAL_TOKENS / SP1024_VAL_TOKENS) ** frac))


@lru_cache(maxsize=8)
def _lengths(total_tokens: int, docs: int) -> np.ndarray:
    ranks, lens = np.array(QUANTILES, dtype=np.float64).T
    base = np.interp(np.linspace(0, VAL_DOCS - 1, docs), ranks, lens)
    base *= total_tokens / base.sum()
    out = np.maximum(2, np.round(base)).astype(np.int64)
    out.setflags(write=False)
    return out


def doc_lengths(total_tokens: int, docs: int = VAL_DOCS) -> np.ndarray:
    """`docs` document lengths (sorted, int64) whose sum is about `total_tokens`, shaped like FineWeb's."""
    return _lengths(int(total_tokens), int(max(1, docs)))


def masked_context(seq_len: int, vocab_size: int) -> float:
    """Mean number of keys a query attends to in packed sequences of `seq_len` tokens when attention
    stops at every BOS, for FineWeb's documents at this vocabulary (`context_of`)."""
    return context_of(doc_lengths(val_tokens_for(vocab_size)), seq_len)


def context_of(lens: np.ndarray, seq_len: int) -> float:
    """E[min(p, t)] + 1 for a token drawn uniformly from a stream of documents of lengths `lens`: p its
    place in its document, t its place in its window, uniform in [0, seq_len) and independent of p."""
    s = np.sort(np.asarray(lens, dtype=np.float64))
    k = np.arange(1, seq_len, dtype=np.float64)
    suffix = np.concatenate([np.cumsum(s[::-1])[::-1], [0.0]])
    idx = np.searchsorted(s, k, side="right")           # documents longer than k: s[idx:]
    tail = (suffix[idx] - k * (s.size - idx)) / s.sum()  # P(p >= k)
    cum = np.concatenate([[0.0], np.cumsum(tail)])      # E[min(p, t)] = sum_{k=1..t} P(p >= k)
    return 1.0 + float(cum.mean())


def dense_context(seq_len: int) -> float:
    """Mean keys per query under plain causal attention over `seq_len` tokens."""
    return (seq_len + 1) / 2.0
