"""Which validation targets an evaluation scores, and with which window of context.

Indices are *target* indices into the validation stream: target j is token
`stream[j]`, predicted from `stream[:j]`. A window `(a, b, c)` feeds the
inputs `stream[a:b]` (targets a+1 .. b) and scores the targets `[c, b + 1)`,
its last ones; everything before c in the window is context only.

`target_span` fixes the targets once for every mode; `plan_windows` cuts any
target range into sliding windows so that each target is scored exactly once
with the longest context the window allows (the records' 2048/64 scheme,
#1855; docs/FACTS.md); `documents` cuts a range at BOS tokens for
per-document test-time training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.core.config import Config
from shared.data.shards import val_token_count
from shared.errors import PgolfError


@dataclass(frozen=True)
class Window:
    a: int  # first input token (stream index)
    b: int  # one past the last input token; the last target is stream[b]
    c: int  # first scored target (a < c <= b)

    @property
    def length(self) -> int:
        return self.b - self.a


def eval_seg_len(cfg: Config) -> int:
    """The document segment cap while scoring (0: the model's default): a window of `eval.context` tokens is never
    cut inside one document even where model.doc_max_len is shorter (#1953/#2135 score 2560-token windows of a
    model trained with 2048-token segments; their TTT forward is plain causal attention over the row)."""
    m = cfg.model
    if not (m.doc_attention and m.doc_max_len):
        return 0
    return max(m.doc_max_len, cfg.eval.context or cfg.train.seq_len)


def target_span(tokens: np.ndarray, seq_len: int, max_tokens: int) -> tuple[int, int]:
    """The targets [1, 1 + n) that sliding and TTT evaluation score.

    With `eval.max_tokens` set: exactly the flat pass's targets (whole `seq_len`
    sequences, `val_token_count`), so flat, sliding and TTT compare on the same
    tokens. Without it: the whole split, the ragged tail included (the flat pass
    drops the last `(len - 1) % seq_len` targets, which cannot fill a sequence)."""
    if tokens.size < 2:
        raise PgolfError(f"validation split has {tokens.size} tokens: nothing to score")
    n = val_token_count(tokens, seq_len, max_tokens) if max_tokens > 0 else tokens.size - 1
    return 1, 1 + n


def plan_windows(lo: int, hi: int, context: int, stride: int) -> list[Window]:
    """Windows scoring every target in [lo, hi) exactly once, in order, left to right.

    Each window is at most `context` tokens long and scores its last `stride`
    targets (the last window: what is left, the tail); a window at the start
    of the stream scores all it holds. So every target sees at least
    `context - stride` tokens of context, or all the tokens before it."""
    if context < 1 or stride < 1 or stride > context:
        raise PgolfError(f"sliding window needs 1 <= stride <= context, got context {context}, stride {stride}")
    out: list[Window] = []
    c = lo
    while c < hi:
        # Near the start the window cannot be full: score all it holds (one window reaching back to token 0).
        e = min(hi, max(c + stride, context + 1))  # scored targets [c, e)
        b = e - 1
        a = max(0, b - context)
        out.append(Window(a, b, c))
        c = e
    return out


def documents(tokens: np.ndarray, lo: int, hi: int, bos: int) -> list[tuple[int, int]]:
    """The target range [lo, hi) cut before every BOS: each piece [s, e) is one document's targets.

    A document's targets start after its BOS and end with the next document's BOS
    (predicting the end of the document), so the pieces tile [lo, hi) exactly."""
    starts = np.flatnonzero(np.asarray(tokens[lo - 1 : hi - 1]) == bos) + lo  # targets right after a BOS
    cuts = sorted({lo, *(int(s) for s in starts), hi})
    return [(s, e) for s, e in zip(cuts[:-1], cuts[1:], strict=True) if e > s]
