"""Legality of sliding-window and score-first TTT evaluation (docs/FACTS.md "Evaluation legality").

Three properties, each checked on the real driver with real backends, and each check shown to
catch a deliberately wrong ordering injected here (monkeypatch), never through product code:

1. causality: perturbing token t changes no score of a target before t, with TTT on;
2. the full normalised distribution: probabilities over the whole vocabulary sum to 1 at every
   position, with no dependence on which token is the target;
3. one left-to-right pass: every target scored exactly once; rescoring is refused.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import session_for, tiny_config

from shared.core.spec import BOS_ID, init_params
from shared.data.dataset import open_dataset
from shared.eval import driver
from shared.eval.ledger import IllegalOrder
from shared.eval.windows import plan_windows
from shared.tools.parity import LORA_RECORD

BACKENDS = ["mlx", "torch"]
MODES = {
    "sliding": {"mode": "sliding", "stride": 16},
    "ttt-sgd": {"mode": "ttt", "ttt": "sgd", "ttt_chunk_tokens": 128, "stride": 16, "ttt_lr": 0.05,
                "ttt_epochs": 1},
    "ttt-lora": {"mode": "ttt", "ttt": "lora", "lora_docs": 2, "lora_chunk": 16, "lora_rank": 2, "lora_alpha": 2.0,
                 "lora_lr": 0.01},
    "ttt-lora-phases": {"mode": "ttt", "ttt": "lora", "lora_docs": 2, "lora_chunk": 32, "lora_rank": 2,
                        "lora_alpha": 2.0, "lora_lr": 0.01, "lora_phases": 1, "lora_phase_docs": 2,
                        "lora_phase_lr": 0.05},
    # #2014's short-document chunks: batches of documents up to 200 tokens in chunks of 8
    "ttt-lora-short": {"mode": "ttt", "ttt": "lora", "lora_docs": 2, "lora_chunk": 16, "lora_rank": 2,
                       "lora_alpha": 2.0, "lora_lr": 0.01, "lora_short_chunks": "200:8"},
    # #1855's adapters: per slot, on the head, warm A, a document's last window ending at its end
    "ttt-lora-record": {"mode": "ttt", "ttt": "lora", "lora_docs": 2, "lora_chunk": 16, "lora_rank": 2,
                        "lora_alpha": 2.0, "lora_lr": 0.01, "context": 64, **LORA_RECORD},
}


@pytest.fixture(scope="module")
def setup(tiny_data):
    cfg = tiny_config()
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, tiny_data.vocab_size)
    # Far from uniform, as a trained model: every logit depends on every path.
    rng = np.random.default_rng(3)
    params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in init_params(cfg.model, seed=3).items()}
    tokens = np.asarray(ds.val_tokens[:1025]).astype(np.int64)   # 1,024 targets
    tokens[[150, 420, 510, 820]] = BOS_ID   # more, shorter documents of unequal lengths (LoRA batches)
    return cfg, ds.tables, params, tokens


def scores(backend, cfg, params, tokens, tables, mode) -> np.ndarray:
    c = replace(cfg, eval=replace(cfg.eval, max_tokens=0, batch_tokens=512, **MODES[mode])).validate()
    ev = driver.run_eval(session_for(backend, c, params), c, tokens, tables)
    return ev.ledger.nats


def causality_violations(backend, setup, mode, t: int) -> int:
    """How many targets before t change their score when token t is changed."""
    cfg, tables, params, tokens = setup
    other = tokens.copy()
    other[t] = (tokens[t] + 11) % cfg.model.vocab_size or 5   # a different ordinary token (never BOS)
    assert other[t] not in (tokens[t], BOS_ID)
    a = scores(backend, cfg, params, tokens, tables, mode)
    b = scores(backend, cfg, params, other, tables, mode)
    before = slice(0, t - 1)   # targets 1 .. t - 1 are ledger rows 0 .. t - 2
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert not np.allclose(a[t - 1 :], b[t - 1 :]), "the perturbation must change some later score"
    return int((np.abs(a[before] - b[before]) > 1e-9).sum())


STREAM_CAUSAL = [m for m in MODES if m != "ttt-lora-record"]   # see test_warm_a_... below


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", STREAM_CAUSAL)
def test_no_score_depends_on_a_later_token(setup, backend, mode):
    # inside a chunk / document, after at least one update (torch, slower on a CPU: the later one only)
    for t in (300, 700) if backend == "mlx" else (700,):
        assert causality_violations(backend, setup, mode, t) == 0


def scored_before(setup, mode, t: int) -> np.ndarray:
    """Ledger rows of the targets scored before any LoRA update could see token t (one rank): those of
    t's document before t, and every document of a batch processed before t's batch."""
    cfg, _, _, tokens = setup
    e = replace(cfg.eval, **MODES[mode])
    docs = driver.documents(tokens, 1, tokens.size, BOS_ID)
    batches = [b for _, b in driver.length_batches(docs, e.lora_docs)]
    k = next(i for i, b in enumerate(batches) if any(s <= t < e_ for s, e_ in b))
    mask = np.zeros(tokens.size - 1, dtype=bool)
    for s, e_ in (d for b in batches[:k] for d in b):
        mask[s - 1 : e_ - 1] = True
    s = next(s for s, e_ in batches[k] if s <= t < e_)
    mask[s - 1 : t - 1] = True
    return mask


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_a_scores_depend_only_on_tokens_scored_before_them(setup, backend):
    """#1855's warm A carries adapters from batch to batch in processing order (longest batch first), so
    a score may depend on a later document of the stream, never on a token not yet scored when it is made."""
    cfg, tables, params, tokens = setup
    a = scores(backend, cfg, params, tokens, tables, "ttt-lora-record")
    for t in (460, 700):   # a document of the last batch, one of the first
        other = tokens.copy()
        other[t] = (tokens[t] + 11) % cfg.model.vocab_size or 5
        b = scores(backend, cfg, params, other, tables, "ttt-lora-record")
        before = scored_before(setup, "ttt-lora-record", t)
        assert not np.allclose(a[t - 1 :], b[t - 1 :])
        assert (np.abs(a[before] - b[before]) <= 1e-9).all()
        if t == 700:   # ... yet it reaches documents earlier in the stream, which stream-order modes never do
            assert (np.abs(a[: t - 1] - b[: t - 1]) > 1e-9).any()


def train_first_lora_batch(session, ledger, e, context, batch):
    """A WRONG order, for the test only: each chunk's adapter step before its scoring (bypasses the ledger)."""
    real_score = session.lora_score

    def step_then_score(rows, x, y, pos, weight, max_tokens=0):
        real_score(rows, x, y, pos, np.full(weight.shape, 1.0 / weight.shape[1], dtype=np.float32), max_tokens)
        session.lora_train(e.lora_lr, e.lora_wd, e.lora_adam_eps)   # trained on the chunk ...
        return real_score(rows, x, y, pos, weight, max_tokens)      # ... then scored

    session.lora_score = step_then_score
    try:
        REAL_LORA_BATCH(session, ledger, e, context, batch)
    finally:
        session.lora_score = real_score


REAL_LORA_BATCH = driver.lora_batch


@pytest.mark.parametrize("backend", ["mlx"])
@pytest.mark.parametrize("mode", ["ttt-lora-record", "ttt-lora-short"])
def test_processing_order_check_catches_training_before_scoring(setup, backend, mode, monkeypatch):
    cfg, tables, params, tokens = setup
    monkeypatch.setattr(driver, "lora_batch", train_first_lora_batch)
    a = scores(backend, cfg, params, tokens, tables, mode)
    t = 460
    other = tokens.copy()
    other[t] = (tokens[t] + 11) % cfg.model.vocab_size or 5
    b = scores(backend, cfg, params, other, tables, mode)
    before = scored_before(setup, mode, t)
    assert (np.abs(a[before] - b[before]) > 1e-9).any()


def train_first_ttt_sgd(session, ledger, e, context, rows, train_rows):
    """A WRONG order, for the test only: train on each chunk, then score it (bypasses the ledger)."""
    lo, hi = ledger.lo, ledger.hi
    chunks = [(s, min(s + e.ttt_chunk_tokens, hi)) for s in range(lo, hi, e.ttt_chunk_tokens)]
    session.sgd_begin(e.ttt_momentum)
    for clo, chi in chunks:
        seq = np.asarray(ledger.tokens[clo - 1 : chi]).astype(np.int64)
        driver.sgd_epochs(session, seq, context, train_rows, e.ttt_epochs, lambda _k, _n: e.ttt_lr, e.ttt_grad_clip)
        driver.score(session, ledger, driver.share(plan_windows(clo, chi, context, e.stride), session), rows)
        ledger.settle(clo, chi)
    session.sgd_end()


@pytest.mark.parametrize("backend", ["mlx"])
def test_causality_check_catches_training_before_scoring(setup, backend, monkeypatch):
    monkeypatch.setattr(driver, "ttt_sgd", train_first_ttt_sgd)
    assert causality_violations(backend, setup, "ttt-sgd", 300) > 0


@pytest.mark.parametrize("backend", ["mlx"])
def test_ledger_refuses_training_on_unscored_tokens(setup, backend, monkeypatch):
    """The same wrong order through the ledger's door is refused outright (legal by construction)."""
    def through_ledger(session, ledger, e, context, rows, train_rows):
        session.sgd_begin(e.ttt_momentum)
        ledger.scored_tokens(ledger.lo, ledger.lo + e.ttt_chunk_tokens)

    monkeypatch.setattr(driver, "ttt_sgd", through_ledger)
    cfg, tables, params, tokens = setup
    with pytest.raises(IllegalOrder, match="before all of them were scored"):
        scores(backend, cfg, params, tokens, tables, "ttt-sgd")


# -- 2. the full normalised distribution
def distribution_error(session, x: np.ndarray, vocab: int, positions: list[int]) -> float:
    """max |sum_v p(v) - 1| over `positions`, each p(v) from token_nats with v as the target."""
    worst = 0.0
    for p in positions:
        xs = np.repeat(x[None], vocab, axis=0)
        ys = np.zeros_like(xs)
        ys[:, p] = np.arange(vocab)
        total = np.exp(-session.token_nats(xs, ys)[:, p]).sum()
        worst = max(worst, abs(total - 1.0))
    return worst


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_use_the_full_normalised_distribution(setup, backend):
    cfg, tables, params, tokens = setup
    session = session_for(backend, cfg, params)
    assert distribution_error(session, tokens[:16], cfg.model.vocab_size, [0, 15]) < 1e-4


@pytest.mark.parametrize("backend", ["mlx"])
def test_distribution_check_catches_target_dependent_gating(setup, backend):
    """A WRONG scorer, for the test only: rare targets' losses capped (gated on the target)."""
    cfg, tables, params, tokens = setup
    session = session_for(backend, cfg, params)
    honest = session.token_nats

    class Gated:
        def token_nats(self, x, y):
            return np.minimum(honest(x, y), 4.0)

    assert distribution_error(Gated(), tokens[:16], cfg.model.vocab_size, [15]) > 1e-2


def test_driver_scores_come_from_token_nats(setup, monkeypatch):
    """The driver records exactly what the backend's full-distribution scorer returns (no post-processing)."""
    cfg, tables, params, tokens = setup
    session = session_for("mlx", cfg, params)
    nats = scores("mlx", cfg, params, tokens, tables, "sliding")
    x, y = tokens[None, :64], tokens[None, 1:65]   # the first window scores all it holds
    assert np.allclose(nats[:64], session.token_nats(x, y)[0], atol=1e-9)


# -- 3. one left-to-right pass
@pytest.mark.parametrize("mode", list(MODES))
def test_every_target_scored_exactly_once(setup, mode):
    cfg, tables, params, tokens = setup
    c = replace(cfg, eval=replace(cfg.eval, max_tokens=0, batch_tokens=512, **MODES[mode])).validate()
    ledger = driver.run_eval(session_for("mlx", c, params), c, tokens, tables).ledger
    assert (ledger.mine == 1).all() and ledger.final.all() and np.isfinite(ledger.nats).all()
    assert ledger.result().tokens == tokens.size - 1
    assert ledger.result().bytes == tables.target_bytes(tokens, 1, tokens.size)


def test_rescoring_is_refused(setup, monkeypatch):
    """WRONG orders, for the test only: overlapping windows, and a second (two-pass) scoring."""
    cfg, tables, params, tokens = setup

    def overlapping(lo, hi, context, stride):
        return [replace(w, c=max(w.a + 1, w.c - 4)) for w in plan_windows(lo, hi, context, stride)]

    monkeypatch.setattr(driver, "plan_windows", overlapping)
    with pytest.raises(IllegalOrder, match="already scored"):
        scores("mlx", cfg, params, tokens, tables, "sliding")
    monkeypatch.undo()

    score_once = driver.score

    def twice(*args):
        score_once(*args)
        score_once(*args)

    monkeypatch.setattr(driver, "score", twice)
    with pytest.raises(IllegalOrder, match="already scored"):
        scores("mlx", cfg, params, tokens, tables, "ttt-sgd")
