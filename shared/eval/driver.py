"""The evaluation driver: the scoring order of every `eval.mode`, in one place, for both backends.

    ev = run_eval(session, cfg, val_tokens, tables)   # session holds the weights to evaluate
    ev.result.val_bpb, ev.seconds

- `flat`: the session's own pass over disjoint `train.seq_len` blocks (unchanged).
- `sliding`: `plan_windows` over the targets; each rank scores a contiguous share.
- `ttt`, `eval.ttt = "sgd"` (chunked full-model SGD, earlier records): for each
  chunk of `ttt_chunk_tokens` targets, (1) score it with sliding windows,
  (2) settle the scores across ranks, (3) only then train on it (SGD with
  momentum, `ttt_epochs` passes, cosine LR over chunks, grads all-reduced);
  the last chunk is never trained.
- `ttt`, `eval.ttt = "lora"` (per-document LoRA, #1855): documents sorted by
  length, `lora_docs` per batch (one per row); each document is read in chunks
  of `lora_chunk` targets with up to `context` tokens of its own context:
  (1) score the chunk, (2) settle, (3) one Adam step on that row's adapters.
  Adapters reset per batch of documents; optionally, after every
  `lora_phase_docs` documents (in stream order), one epoch of global SGD on
  the documents already scored updates the base model (`lora_phases` times).

Legal by construction: scores go into the `Ledger` (one record per target),
and updates take their tokens only from `Ledger.scored_tokens`, which refuses
anything not yet scored. The backend supplies primitives only (the `Session`
methods `token_nats`, `sgd_begin`/`sgd_step`, `lora_begin`/`lora_reset`/
`lora_step`/`lora_end`, `all_reduce_sum`: shared/core/backends.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.core.config import Config, EvalConfig, ModelConfig
from shared.core.spec import BOS_ID
from shared.data.bpb import EvalResult
from shared.errors import PgolfError
from shared.eval.ledger import Ledger
from shared.eval.windows import Window, documents, plan_windows, target_span

EVAL_BUDGET_S = 600.0  # the challenge's separate evaluation budget (CHALLENGE.md)
LORA_SEED = 20_260_101  # the adapters' A matrices: the same draw for both backends and every run


@dataclass
class Evaluation:
    result: EvalResult
    mode: str            # "flat" | "sliding" | "ttt-sgd" | "ttt-lora"
    seconds: float
    ledger: Ledger | None = None   # per-target scores (None for flat)


def check_ranks(e: EvalConfig, world_size: int) -> None:
    """Refuse, before any training, an evaluation that cannot run on `world_size` ranks."""
    if e.mode == "ttt" and e.ttt == "lora" and e.lora_phases and world_size > 1:
        raise PgolfError(f"eval.lora_phases = {e.lora_phases} (global SGD between document groups) runs on one "
                         f"process only, not {world_size} ranks: set eval.lora_phases = 0, or evaluate the "
                         "artifact afterwards in one process (pgolf eval)")


def mode_name(e: EvalConfig) -> str:
    return f"ttt-{e.ttt}" if e.mode == "ttt" else e.mode


def run_eval(session: Any, cfg: Config, tokens: np.ndarray, tables, bos: int = BOS_ID) -> Evaluation:
    """Evaluate the weights `session` holds as `cfg.eval` says; totals over all ranks."""
    from shared.core.progress import Progress, activate
    from shared.data.shards import val_token_count

    e = cfg.eval
    t0 = time.perf_counter()
    main = getattr(session, "rank", 0) == 0
    if e.mode == "flat":
        total = val_token_count(tokens, cfg.train.seq_len, e.max_tokens) if hasattr(tokens, "size") else None
        with Progress("eval flat", total=total, unit="tokens", enabled=main, min_s=5.0) as bar, activate(bar):
            flat = session.evaluate(tokens, tables)
        if not math.isfinite(flat.nats):  # the ledger refuses a non-finite total; so does the flat pass
            raise PgolfError(f"the evaluation diverged: the summed loss is {flat.nats} (the weights produce NaN or "
                             "infinite logits); no score is reported")
        return Evaluation(flat, "flat", time.perf_counter() - t0)
    lo, hi = target_span(tokens, cfg.train.seq_len, e.max_tokens)
    reduce = session.all_reduce_sum if session.world_size > 1 else None
    ledger = Ledger(tokens, lo, hi, tables, reduce)
    context = e.context or cfg.train.seq_len
    rows = max(1, e.batch_tokens // (context * session.world_size))
    with Progress(f"eval {mode_name(e)}", total=hi - lo, unit="tokens", enabled=main, min_s=5.0) as bar:
        ledger.on_record = lambda n: bar.update(n * session.world_size)  # rank 0's share, scaled to all ranks
        if e.mode == "sliding":
            score(session, ledger, share(plan_windows(lo, hi, context, e.stride), session), rows)
        elif e.ttt == "sgd":
            ttt_sgd(session, ledger, e, context, rows, max(1, e.batch_tokens // context))
        else:
            ttt_lora(session, ledger, e, cfg.model, context, bos)
        ledger.on_record = None
    result = ledger.result()
    return Evaluation(result, mode_name(e), time.perf_counter() - t0, ledger)


def share(windows: list[Window], session: Any) -> list[Window]:
    """This rank's contiguous share of the windows."""
    n, r, w = len(windows), session.rank, session.world_size
    return windows[n * r // w : n * (r + 1) // w]


def score(session: Any, ledger: Ledger, windows: list[Window], rows: int) -> None:
    """Score windows in batches of up to `rows` equal-length rows (no gradient) and record each scored target."""
    tokens = ledger.tokens
    i = 0
    while i < len(windows):
        j = i + 1
        while j < len(windows) and j - i < rows and windows[j].length == windows[i].length:
            j += 1
        batch = windows[i:j]
        x = np.stack([np.asarray(tokens[w.a : w.b]) for w in batch]).astype(np.int64)
        y = np.stack([np.asarray(tokens[w.a + 1 : w.b + 1]) for w in batch]).astype(np.int64)
        nats = session.token_nats(x, y)
        for k, w in enumerate(batch):
            ledger.record(w.c, nats[k, w.c - w.a - 1 :])
        i = j


# -- chunked full-model SGD
def cosine(k: int, n: int) -> float:
    """0.5 (1 + cos(pi k / (n - 1))): 1 at the first of n steps, 0 at the last."""
    return 1.0 if n <= 1 else 0.5 * (1.0 + math.cos(math.pi * k / (n - 1)))


def rows_of(seq: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (x, y) of `length` tokens from `seq` (inputs and targets); an end-aligned last row
    covers the remainder, so every target is trained on."""
    m = seq.size - 1
    if m <= length:
        return seq[None, :-1], seq[None, 1:]
    starts = list(range(0, m - length + 1, length))
    if starts[-1] + length < m:
        starts.append(m - length)
    return (np.stack([seq[s : s + length] for s in starts]), np.stack([seq[s + 1 : s + length + 1] for s in starts]))


def sgd_epochs(session: Any, seq: np.ndarray, length: int, rows: int, epochs: int, lr_at, clip: float) -> None:
    """`epochs` passes of SGD over `seq` (already-scored tokens) in steps of `rows` rows over all ranks;
    each rank takes every world_size-th row; `lr_at(step, steps)` gives the LR."""
    x, y = rows_of(seq, length)
    steps = -(-x.shape[0] // rows)
    total = epochs * steps
    for k in range(total):
        s = (k % steps) * rows
        bx, by = x[s : s + rows], y[s : s + rows]
        mine = slice(session.rank, None, session.world_size)
        session.sgd_step(bx[mine], by[mine], lr_at(k, total), clip, denom=int(by.size))


def ttt_sgd(session: Any, ledger: Ledger, e: EvalConfig, context: int, rows: int, train_rows: int) -> None:
    """Score-first chunked SGD: score a chunk, settle its scores, then train on it; never the last chunk.
    `rows`: windows per scoring batch on this rank; `train_rows`: rows per SGD step over all ranks."""
    lo, hi = ledger.lo, ledger.hi
    chunks = [(s, min(s + e.ttt_chunk_tokens, hi)) for s in range(lo, hi, e.ttt_chunk_tokens)]
    trained = len(chunks) - 1
    session.sgd_begin(e.ttt_momentum)
    for k, (clo, chi) in enumerate(chunks):
        score(session, ledger, share(plan_windows(clo, chi, context, e.stride), session), rows)   # 1. score
        ledger.settle(clo, chi)                                                                  # 2. final
        if k < trained:                                                                          # 3. train
            lr = e.ttt_lr * (cosine(k, trained) if e.ttt_cosine else 1.0)
            sgd_epochs(session, ledger.scored_tokens(clo, chi), context, train_rows, e.ttt_epochs,
                       lambda _s, _n, lr=lr: lr, e.ttt_grad_clip)
    session.sgd_end()


# -- per-document LoRA
def lora_shapes(m: ModelConfig, targets: list[str]) -> dict[str, tuple[int, int]]:
    """Module name -> (in, out) of every projection that gets an adapter (the parameter table's names)."""
    per = {"q": [("attn.c_q", m.model_dim, m.model_dim)], "k": [("attn.c_k", m.model_dim, m.kv_dim)],
           "v": [("attn.c_v", m.model_dim, m.kv_dim)], "o": [("attn.proj", m.model_dim, m.model_dim)],
           "mlp": [("mlp.fc", m.model_dim, m.hidden_dim), ("mlp.proj", m.hidden_dim, m.model_dim)]}
    return {f"blocks.{i}.{name}": (din, dout) for i in range(m.num_layers) for t in targets
            for name, din, dout in per[t]}


def lora_init(m: ModelConfig, e: EvalConfig) -> dict[str, np.ndarray]:
    """The A matrices [rows, rank, in] (B starts at zero), drawn once from a fixed seed with numpy."""
    rng = np.random.default_rng(LORA_SEED)
    return {name: (rng.standard_normal((e.lora_docs, e.lora_rank, din)) / math.sqrt(din)).astype(np.float32)
            for name, (din, _) in lora_shapes(m, e.lora_target_list).items()}


def ttt_lora(session: Any, ledger: Ledger, e: EvalConfig, m: ModelConfig, context: int, bos: int) -> None:
    """Score-first per-document LoRA: score a chunk of every document in the batch, then one adapter step.

    Documents go in groups of `lora_phase_docs` consecutive documents (all of them when there are no
    phases); a global SGD phase runs only between groups, on documents already scored, so it reaches
    only documents that come later in the stream. Within a group documents are sorted by length (their
    adapters are reset per batch, so their order changes nothing); without `lora_reset` the adapters
    carry over, and the documents keep their stream order."""
    docs = documents(ledger.tokens, ledger.lo, ledger.hi, bos)
    check_ranks(e, session.world_size)
    size = e.lora_phase_docs if e.lora_phases else len(docs)
    groups = [docs[s : s + size] for s in range(0, len(docs), size)]
    a_init = lora_init(m, e)
    session.lora_begin(a_init, e.lora_alpha / e.lora_rank)
    scored: list[tuple[int, int]] = []
    for g, group in enumerate(groups):
        if e.lora_reset:
            group = sorted(group, key=lambda d: d[1] - d[0])   # batched by length
        batches = [group[s : s + e.lora_docs] for s in range(0, len(group), e.lora_docs)]
        for batch in batches[session.rank :: session.world_size]:   # documents are independent: deal to ranks
            if e.lora_reset:
                session.lora_reset()
            lora_batch(session, ledger, e, context, batch)
            scored += batch
        if g < min(e.lora_phases, len(groups) - 1):   # a phase after group g, never after the last
            session.lora_end()   # the base model trains without adapters
            seq = np.concatenate([ledger.scored_tokens(s, t) for s, t in scored])
            session.sgd_begin(e.ttt_momentum)
            sgd_epochs(session, seq, context, max(1, e.batch_tokens // context), 1,
                       lambda k, n: e.lora_phase_lr * cosine(k, n), e.ttt_grad_clip)
            session.sgd_end()
            session.lora_begin(a_init, e.lora_alpha / e.lora_rank)
    session.lora_end()


def lora_batch(session: Any, ledger: Ledger, e: EvalConfig, context: int, batch: list[tuple[int, int]]) -> None:
    """One batch of documents, row r = document r: chunk by chunk, score then step."""
    tokens, rows, chunk = ledger.tokens, e.lora_docs, e.lora_chunk
    longest = max(t - s for s, t in batch)
    for off in range(0, longest, chunk):
        end = off + chunk                  # doc-relative targets [off, end) are scored in this step
        w0 = max(0, end - context)         # the window: doc-relative inputs [w0, end)
        width = end - w0
        x = np.zeros((rows, width), dtype=np.int64)
        y = np.zeros((rows, width), dtype=np.int64)
        mask = np.zeros((rows, width), dtype=bool)
        spans = []
        for r, (s, t) in enumerate(batch):
            hi = min(t, s + end)           # this document's last target in the chunk (exclusive)
            if s + off >= hi:
                spans.append(None)
                continue
            n = hi - (s + w0)
            x[r, :n] = tokens[s - 1 + w0 : hi - 1]
            y[r, :n] = tokens[s + w0 : hi]
            mask[r, off - w0 : n] = True
            spans.append((s + off, hi))
        nats = session.token_nats(x, y)                                          # 1. score
        for r, span in enumerate(spans):
            if span is not None:
                lo_r = span[0]
                ledger.record(lo_r, nats[r, lo_r - (batch[r][0] + w0) : span[1] - (batch[r][0] + w0)])
                ledger.settle(*span, local=True)                                 # 2. final
        sx = np.zeros_like(x)                                                    # 3. step on scored tokens only
        sy = np.zeros_like(y)
        for r, span in enumerate(spans):
            if span is not None:
                s = batch[r][0]
                seq = ledger.scored_tokens(s + w0, span[1])
                sx[r, : seq.size - 1], sy[r, : seq.size - 1] = seq[:-1], seq[1:]
        session.lora_step(sx, sy, mask, e.lora_lr, e.lora_wd)
