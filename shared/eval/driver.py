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

With `eval.ngram_tilt` (#2135) every scored distribution is tilted towards an n-gram hint read off the
stream's earlier targets (`Tilt`, shared/eval/ngram.py): the backend returns the hint's nats beside the
target's, the driver tilts the nats it records; TTT steps still train on the untilted loss. The hints are
built inside `run_eval`, so their time counts in `Evaluation.seconds`, as #2135's had to.

Legal by construction: scores go into the `Ledger` (one record per target),
and updates take their tokens only from `Ledger.scored_tokens`, which refuses
anything not yet scored. The backend supplies primitives only (the `Session`
methods `token_nats`, `sgd_begin`/`sgd_step`, `lora_begin`/`lora_reset`/
`lora_step`/`lora_end`, `all_reduce_sum`: shared/run/backends.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shared.core.config import Config, EvalConfig, ModelConfig
from shared.core.spec import BOS_ID
from shared.data.bpb import EvalResult
from shared.errors import PgolfError
from shared.eval.ledger import IllegalOrder, Ledger
from shared.eval.ngram import Hints, tilt, token_hints
from shared.eval.windows import Window, documents, plan_windows, target_span

EVAL_BUDGET_S = 600.0  # the challenge's separate evaluation budget (docs/FACTS.md)
LORA_SEED = 20_260_101  # the adapters' A matrices: the same draw for both backends and every run


@dataclass
class Evaluation:
    result: EvalResult
    mode: str            # "flat" | "sliding" | "ttt-sgd" | "ttt-lora"
    seconds: float
    ledger: Ledger | None = None   # per-target scores (None for flat)


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
    # Before each collective of the ledger every rank waits for the others without a timeout (wait_all): a
    # rank whose share runs long never trips the process group's timeout in the ranks that wait for it.
    ledger = Ledger(tokens, lo, hi, tables, reduce, getattr(session, "wait_all", None) if reduce else None)
    if e.ngram_tilt:   # built here, inside the evaluation's clock (#2135 counted its precompute)
        ledger.tilt = Tilt.build(tokens, lo, hi, e)
    context = e.context or cfg.train.seq_len
    rows = max(1, e.batch_tokens // (context * session.world_size))
    with Progress(f"eval {mode_name(e)}", total=hi - lo, unit="tokens", enabled=main, min_s=5.0) as bar:
        ledger.on_record = lambda n: bar.update(n * session.world_size)  # rank 0's share, scaled to all ranks
        if e.mode == "sliding":
            score(session, ledger, share(plan_windows(lo, hi, context, e.stride), session), rows)
        elif e.ttt == "sgd":
            ttt_sgd(session, ledger, e, context, rows, max(1, e.batch_tokens // context))
        else:
            ttt_lora(session, ledger, replace(e, lora_max_tokens=lora_max_tokens(cfg)), cfg.model, context, bos)
        ledger.on_record = None
    result = ledger.result()
    return Evaluation(result, mode_name(e), time.perf_counter() - t0, ledger)


@dataclass(frozen=True)
class Tilt:
    """#2135's n-gram hints for the targets [lo, hi) of the stream, read by stream position; each hint reads only
    the targets before it in the stream (shared/eval/ngram.py)."""

    lo: int
    hints: Hints

    @classmethod
    def build(cls, tokens: np.ndarray, lo: int, hi: int, e: EvalConfig) -> Tilt:
        return cls(lo, token_hints(np.asarray(tokens[lo:hi]), e.ngram_order, e.ngram_threshold, e.ngram_boost))

    def _at(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the hints and whether the tilt applies (never outside [lo, lo + len(hints)))."""
        i = np.asarray(pos, dtype=np.int64) - self.lo
        inside = (i >= 0) & (i < self.hints.gate.size)
        i = np.clip(i, 0, self.hints.gate.size - 1)
        return i, inside & self.hints.gate[i]

    def hint(self, pos: np.ndarray) -> np.ndarray:
        """The hinted token at each stream target position (0 where no tilt applies)."""
        i, gate = self._at(pos)
        return np.where(gate, self.hints.token[i], 0)

    def apply(self, nats: np.ndarray, hint_nats: np.ndarray, y: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The tilted nats of targets `y` at stream positions `pos`, from the untilted nats of the target and the hint."""
        i, gate = self._at(pos)
        return tilt(nats, -hint_nats, np.asarray(y) == self.hints.token[i], gate, self.hints.boost[i])


def scored_nats(session: Any, ledger: Ledger, x: np.ndarray, y: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """`session.token_nats(x, y)`, tilted where `eval.ngram_tilt` is on; `pos`: each target's stream position."""
    if ledger.tilt is None:
        return session.token_nats(x, y)
    hint = ledger.tilt.hint(pos)
    nats, hint_nats = session.token_nats(x, y, hint)
    return ledger.tilt.apply(nats, hint_nats, y, pos)


def lora_max_tokens(cfg: Config) -> int:
    """Input tokens per LoRA TTT forward: `eval.lora_max_tokens`, or (0) a training micro-batch's, so that
    the evaluation's activations stay within a training step's (the TTT forward keeps fewer per token)."""
    t = cfg.train
    micro = t.batch_tokens // t.grad_accum
    return cfg.eval.lora_max_tokens or (min(micro, t.max_microbatch_tokens) if t.max_microbatch_tokens else micro)


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
        pos = np.stack([np.arange(w.a + 1, w.b + 1) for w in batch])
        nats = scored_nats(session, ledger, x, y, pos)
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
def lora_shapes(m: ModelConfig, e: EvalConfig) -> dict[str, tuple[int, int]]:
    """Adapter name -> (in, out), named as the backends' lora.py reads them: `<site>.<kind>`, the site one
    block (`layer<i>`) or one position of the looped layer order (`slot<j>`, eval.lora_per_slot), or `head`."""
    d, kv, hid = m.model_dim, m.kv_dim, m.hidden_dim
    block = e.lora_layout == "block"
    per = {"q": [("q", d, d)], "k": [("k", d, kv)], "v": [("v", d, kv)],
           "o": [("o_in", d, d)] if block else [("o", d, d)],
           "mlp": [("mlp", d, d)] if block else [("fc", d, hid), ("proj", hid, d)]}
    sites = ([f"slot{j}" for j in range(len(m.layer_order()))] if e.lora_per_slot
             else [f"layer{i}" for i in range(m.num_layers)])
    targets = e.lora_target_list
    out = {f"{site}.{kind}": (din, dout) for site in sites for t in targets if t != "head"
           for kind, din, dout in per[t]}
    if "head" in targets:
        out["head"] = (d, m.vocab_size)
    return out


def lora_init(m: ModelConfig, e: EvalConfig, draw: int = 0) -> dict[str, np.ndarray]:
    """The A matrices [rows, rank, in] (B starts at zero), drawn with numpy from a fixed seed (`draw` > 0:
    a further independent draw): normal with std 1/sqrt(in), or uniform in +-1/sqrt(in) (#1855)."""
    rng = np.random.default_rng(LORA_SEED if draw == 0 else (LORA_SEED, draw))
    out = {}
    for name, (din, _) in lora_shapes(m, e).items():
        shape, bound = (e.lora_docs, e.lora_rank, din), 1.0 / math.sqrt(din)
        a = rng.uniform(-bound, bound, shape) if e.lora_a_init == "uniform" else rng.standard_normal(shape) * bound
        out[name] = a.astype(np.float32)
    return out


def length_batches(docs: list[tuple[int, int]], size: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Documents sorted by length into batches of `size`, the batch holding the longest document first
    (#1855's queue: the long batches start early, the short ones fill the end); each batch with its
    index in ascending length order."""
    ordered = sorted(docs, key=lambda d: d[1] - d[0])
    batches = list(enumerate(ordered[s : s + size] for s in range(0, len(ordered), size)))
    return sorted(batches, key=lambda ib: -(ib[1][-1][1] - ib[1][-1][0]))


def lora_work(batch: list[tuple[int, int]], chunk: int, context: int) -> int:
    """Tokens a batch puts through the model: over its chunk steps, live rows x window width."""
    lengths = np.array([t - s for s, t in batch])
    return int(sum((lengths > off).sum() * min(off + chunk, context) for off in range(0, int(lengths.max()), chunk)))


def batch_chunk(batch: list[tuple[int, int]], e: EvalConfig) -> int:
    """The chunk a batch is scored and trained in: `lora_chunk`, or with `lora_short_chunks` (#2014's
    TTT_SHORT_SCORE_FIRST_STEPS) that of the first limit its longest document fits in, a document counted
    as the record does, its tokens from its BOS to the next BOS (targets + 1)."""
    longest = max(t - s for s, t in batch) + 1
    return next((c for limit, c in e.lora_short_chunk_list if longest <= limit), e.lora_chunk)


def partition(works: list[int], world_size: int) -> list[int]:
    """The rank of each batch: in the given (longest-first) order, each to the least-loaded rank so far
    (ties: the lowest rank), so every rank's total work is close to the mean; deterministic."""
    load = [0] * world_size
    owner = []
    for w in works:
        r = min(range(world_size), key=lambda k: (load[k], k))
        load[r] += w
        owner.append(r)
    return owner


@dataclass
class Phase:
    after: int                     # runs once the batches 0..after of the queue are scored
    docs: list[tuple[int, int]]    # the scored documents it trains on, in the order it reads them


def lora_queue(docs: list[tuple[int, int]], e: EvalConfig) -> tuple[list[list[tuple[int, int]]], list[Phase]]:
    """The batches in the order they are scored (rank r takes every world_size-th from r) and the
    global SGD phases between them.

    `lora_phase_order = "stream"`: groups of `lora_phase_docs` consecutive documents, each group's
    batches by length (without `lora_reset`: in stream order), a phase after each of the first
    `lora_phases` groups (never the last) on every document scored so far; a phase reaches only
    documents later in the stream. `"scored"` (#1855): one length-sorted queue over all documents; phase
    k runs after the first batch that brings the scored documents to `lora_prefix_docs * (k + 1) //
    lora_phases`, on that many of them, shortest first (the record's order of its batch indices)."""
    if e.lora_phases and e.lora_phase_order == "scored":
        indexed = length_batches(docs, e.lora_docs)
        queue = [b for _, b in indexed]
        phases, done, k = [], 0, 0
        for i, (_, b) in enumerate(indexed):
            done += len(b)
            bound = e.lora_prefix_docs * (k + 1) // e.lora_phases
            if k < e.lora_phases and done >= bound:
                scored = sorted((idx, pos, d) for idx, bb in indexed[: i + 1] for pos, d in enumerate(bb))
                phases.append(Phase(i, [d for _, _, d in scored[:bound]]))
                k += 1
        return queue, phases
    size = e.lora_phase_docs if e.lora_phases else len(docs)
    queue, phases = [], []
    groups = [docs[s : s + size] for s in range(0, len(docs), size)]
    for g, group in enumerate(groups):
        if e.lora_reset:
            queue += [b for _, b in length_batches(group, e.lora_docs)]
        else:
            queue += [group[s : s + e.lora_docs] for s in range(0, len(group), e.lora_docs)]
        if g < min(e.lora_phases, len(groups) - 1):   # a phase after group g, never after the last
            phases.append(Phase(len(queue) - 1, [d for b in queue for d in b]))
    return queue, phases


def ttt_lora(session: Any, ledger: Ledger, e: EvalConfig, m: ModelConfig, context: int, bos: int) -> None:
    """Score-first per-document LoRA: score a chunk of every document in the batch, then one adapter step.

    Batches and phases as `lora_queue` says; between phases the batches go to the ranks by `partition`
    (token-balanced, longest first). At a phase every rank has scored its batches up to the phase's, the ranks' scores are settled (a
    collective), and the base model trains on scored documents only (`Ledger.scored_tokens`); then
    the adapters start again. Adapters reset per batch (`lora_reset`; with `lora_warm_a` A carries on)."""
    docs = documents(ledger.tokens, ledger.lo, ledger.hi, bos)
    if 0 < len(docs) < e.lora_docs:   # adapters for the documents there are, not lora_docs rows (memory)
        e = replace(e, lora_docs=len(docs))
    queue, phases = lora_queue(docs, e)
    out_dims = {name: dout for name, (_, dout) in lora_shapes(m, e).items()}
    scale = e.lora_alpha / e.lora_rank
    session.lora_begin(lora_init(m, e), scale, out_dims)
    draws = 0
    start = 0
    for phase in [*phases, None]:
        stop = len(queue) if phase is None else phase.after + 1
        owner = partition([lora_work(b, batch_chunk(b, e), context) for b in queue[start:stop]], session.world_size)
        for i in range(start, stop):
            if owner[i - start] != session.rank:   # documents are independent: each batch on one rank
                continue
            batch = queue[i]
            eb = replace(e, lora_chunk=batch_chunk(batch, e))   # the batch's own chunk (lora_short_chunks)
            if e.lora_reset and e.lora_warm_a and len(batch) < e.lora_docs:
                # #1855 gives a short batch adapters of its own (a fresh A); the warm A waits for the next batch
                warm = session.lora_a()
                draws += 1
                session.lora_reset(lora_init(m, e, draws))
                lora_batch(session, ledger, eb, context, batch)
                session.lora_reset(warm)
            else:
                if e.lora_reset:
                    session.lora_reset(keep_a=e.lora_warm_a)
                lora_batch(session, ledger, eb, context, batch)
        start = stop
        if phase is None:
            break
        session.lora_end()   # the base model trains without adapters
        ledger.settle(ledger.lo, ledger.hi)   # every rank's scores final everywhere
        seq = np.concatenate([ledger.scored_tokens(s, t) for s, t in phase.docs])
        if e.lora_phase_order == "scored":
            phase_sgd(session, seq, e, context, m.doc_attention)
            draws += 1   # #1855 builds new adapters after a phase: a fresh A
            session.lora_begin(lora_init(m, e, draws), scale, out_dims)
        else:
            session.sgd_begin(e.ttt_momentum)
            sgd_epochs(session, seq, context, max(1, e.batch_tokens // context), 1,
                       lambda k, n: e.lora_phase_lr * cosine(k, n), e.ttt_grad_clip)
            session.sgd_end()
            session.lora_begin(lora_init(m, e), scale, out_dims)
    session.lora_end()


def phase_sgd(session: Any, seq: np.ndarray, e: EvalConfig, context: int, one_row: bool = False) -> None:
    """#1855's global SGD phase over the scored tokens `seq`: chunks of `lora_phase_chunk_tokens`, never the
    last; each chunk's whole `context`-token rows shared out to the ranks, `lora_phase_rows` rows per rank
    and step; LR cosine over the chunks; loss = the mean over a rank's tokens, averaged over the ranks.
    `one_row` (document-isolated attention): a rank's rows go in as one row, split only at BOS (and the
    model's doc_max_len), as the record's varlen batch."""
    total, chunk, w = seq.size - 1, e.lora_phase_chunk_tokens, session.world_size
    n = -(-total // chunk)
    session.sgd_begin(e.ttt_momentum)
    for ci in range(n - 1):
        c0, c1 = ci * chunk, min((ci + 1) * chunk, total)
        rows = (c1 - c0) // context
        if rows <= 0:
            continue
        lr = e.lora_phase_lr * cosine(ci, n)
        r0, r1 = rows * session.rank // w, rows * (session.rank + 1) // w
        most = -(-rows // w)                        # the largest share
        steps = -(-most // e.lora_phase_rows)       # the same count on every rank (a collective each)
        for k in range(steps):
            b0, b1 = r0 + k * e.lora_phase_rows, min(r0 + (k + 1) * e.lora_phase_rows, r1)
            s, t = c0 + b0 * context, c0 + b1 * context + 1
            if b1 <= b0 or t > seq.size:
                x = y = np.zeros((0, context), dtype=np.int64)   # nothing here: join the all-reduce
            else:
                shape = (1, -1) if one_row else (-1, context)
                x, y = seq[s : t - 1].reshape(shape), seq[s + 1 : t].reshape(shape)
            session.sgd_step(x, y, lr, e.ttt_grad_clip, denom=max(1, w * y.size))
    session.sgd_end()


def lora_batch(session: Any, ledger: Ledger, e: EvalConfig, context: int, batch: list[tuple[int, int]]) -> None:
    """One batch of documents, row r = document r: chunk by chunk, score then step.

    Row r's window holds up to `context` targets of its own document ending with the chunk (with
    `lora_tail = "document"`, a document's last window ends at its end), left-aligned in the row.
    `lora_forwards = 1`: only the rows whose document goes on run, one forward gives the scores and
    (kept by the backend) the gradient; the step is taken only after the scores are in the ledger and
    the rows' tokens are checked against `Ledger.scored_tokens`."""
    if e.lora_forwards == 2:
        lora_batch_two(session, ledger, e, context, batch)
        return
    tokens, chunk = ledger.tokens, e.lora_chunk
    longest = max(t - s for s, t in batch)
    for off in range(0, longest, chunk):
        end = off + chunk                  # doc-relative targets [off, end) are scored in this step
        live = [(r, s, t) for r, (s, t) in enumerate(batch) if s + off < t]
        width = min(end, context)          # the widest window of this step
        x = np.zeros((len(live), width), dtype=np.int64)
        y = np.zeros((len(live), width), dtype=np.int64)
        pos = np.zeros((len(live), chunk), dtype=np.int64)
        weight = np.zeros((len(live), chunk), dtype=np.float32)
        spans = []
        for i, (_, s, t) in enumerate(live):
            last = s + end >= t
            hi = min(t, s + end)           # this document's last target in the chunk (exclusive)
            w0 = max(s, t - context) if last and e.lora_tail == "document" else s + max(0, end - context)
            n = hi - w0                    # the window: stream targets [w0, hi)
            x[i, :n] = tokens[w0 - 1 : hi - 1]
            y[i, :n] = tokens[w0:hi]
            k = hi - (s + off)             # targets scored in this row
            pos[i, :k] = np.arange(s + off - w0, n)
            pos[i, k:] = n - 1             # padding: a position already listed, weight 0
            if e.lora_train_last or not last:
                weight[i, :k] = 1.0 / k    # the row's loss: the mean over its scored targets
            spans.append((s + off, hi, w0, k))
        rows = np.array([r for r, _, _ in live], dtype=np.int64)
        if ledger.tilt is None:
            nats = session.lora_score(rows, x, y, pos, weight, e.lora_max_tokens)     # 1. score (one forward)
        else:   # the tilt moves the recorded scores only; the kept gradient is the untilted loss's
            at = np.array([w0 for _, _, w0, _ in spans])[:, None] + pos             # stream positions
            nats, hint_nats = session.lora_score(rows, x, y, pos, weight, e.lora_max_tokens, ledger.tilt.hint(at))
            nats = ledger.tilt.apply(nats, hint_nats, np.take_along_axis(y, pos, 1), at)
        for i, (first, hi, _, k) in enumerate(spans):
            ledger.record(first, nats[i, :k])
            ledger.settle(first, hi, local=True)                                  # 2. final
        if not weight.any():           # nothing left to learn for any row (#1855 skips the step)
            continue
        for i, (_, hi, w0, _) in enumerate(spans):                                # 3. step on scored tokens only
            if weight[i].any():
                seq = ledger.scored_tokens(w0, hi)
                if not (np.array_equal(seq[:-1], x[i, : hi - w0]) and np.array_equal(seq[1:], y[i, : hi - w0])):
                    raise IllegalOrder(f"the step's tokens of targets [{w0}, {hi}) are not the scored ones")
        session.lora_train(e.lora_lr, e.lora_wd, e.lora_adam_eps)


def lora_batch_two(session: Any, ledger: Ledger, e: EvalConfig, context: int, batch: list[tuple[int, int]]) -> None:
    """`lora_batch` with a scoring forward, then a training forward and step (`lora_forwards = 2`).

    Row r's window holds up to `context` targets of its own document ending with the chunk (with
    `lora_tail = "document"`, a document's last window ends at its end), left-aligned in the row."""
    tokens, rows, chunk = ledger.tokens, e.lora_docs, e.lora_chunk
    longest = max(t - s for s, t in batch)
    for off in range(0, longest, chunk):
        end = off + chunk                  # doc-relative targets [off, end) are scored in this step
        width = min(end, context)          # the widest window of this step
        x = np.zeros((rows, width), dtype=np.int64)
        y = np.zeros((rows, width), dtype=np.int64)
        mask = np.zeros((rows, width), dtype=bool)
        spans: list[tuple[int, int, int] | None] = []
        train = np.zeros(rows, dtype=bool)
        for r, (s, t) in enumerate(batch):
            if s + off >= t:
                spans.append(None)
                continue
            last = s + end >= t
            hi = min(t, s + end)           # this document's last target in the chunk (exclusive)
            w0 = max(s, t - context) if last and e.lora_tail == "document" else s + max(0, end - context)
            n = hi - w0                    # the window: stream targets [w0, hi)
            x[r, :n] = tokens[w0 - 1 : hi - 1]
            y[r, :n] = tokens[w0:hi]
            mask[r, s + off - w0 : n] = True
            spans.append((s + off, hi, w0))
            train[r] = e.lora_train_last or not last
        starts = np.array([-width if sp is None else sp[2] for sp in spans])    # stream position of column 0
        nats = scored_nats(session, ledger, x, y, starts[:, None] + np.arange(width))   # 1. score
        for r, span in enumerate(spans):
            if span is not None:
                first, hi, w0 = span
                ledger.record(first, nats[r, first - w0 : hi - w0])
                ledger.settle(first, hi, local=True)                             # 2. final
        if not train.any():            # nothing left to learn for any row (#1855 skips the step)
            continue
        sx = np.zeros_like(x)                                                    # 3. step on scored tokens only
        sy = np.zeros_like(y)
        for r, span in enumerate(spans):
            if span is not None and train[r]:
                seq = ledger.scored_tokens(span[2], span[1])
                sx[r, : seq.size - 1], sy[r, : seq.size - 1] = seq[:-1], seq[1:]
        session.lora_step(sx, sy, mask & train[:, None], e.lora_lr, e.lora_wd, e.lora_adam_eps)
