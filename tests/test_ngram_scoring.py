"""The n-gram tilt in scoring (eval.ngram_tilt, #2135): each backend returns the hint's nats from the same
logits as the target's, both backends agree, a later token moves no earlier score with the tilt on, the
tilt moves only the targets where it applies (TTT still trains on the untilted loss), and its hints are
built inside the evaluation's clock."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import session_for, tiny_config

from shared.core.config import from_toml_text
from shared.core.spec import BOS_ID, init_params
from shared.data.dataset import open_dataset
from shared.errors import PgolfError
from shared.eval import driver, ngram

BACKENDS = ["mlx", "torch"]
TILT = {"ngram_tilt": True, "ngram_order": 3, "ngram_threshold": 0.5, "ngram_boost": 2.0}
MODES = {
    "sliding": {"mode": "sliding", "stride": 16, "context": 64},
    "ttt-lora": {"mode": "ttt", "ttt": "lora", "lora_docs": 2, "lora_chunk": 16, "lora_rank": 2, "lora_alpha": 2.0,
                 "lora_lr": 0.01, "context": 64},
    "ttt-lora-two": {"mode": "ttt", "ttt": "lora", "lora_docs": 2, "lora_chunk": 16, "lora_rank": 2,
                     "lora_alpha": 2.0, "lora_lr": 0.01, "context": 64, "lora_forwards": 2},
}


@pytest.fixture(scope="module")
def setup(tiny_data):
    cfg = tiny_config()
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, tiny_data.vocab_size)
    rng = np.random.default_rng(3)
    params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in init_params(cfg.model, seed=3).items()}
    # Repeated text, so that the n-gram hints fire: a 300-token passage three times, in 4 documents.
    part = np.asarray(ds.val_tokens[1:301]).astype(np.int64)
    tokens = np.concatenate([[BOS_ID], part, part, part])
    tokens[[260, 520, 700]] = BOS_ID
    return cfg, ds.tables, params, tokens


def ledger(backend, setup, mode, tokens=None, **keys):
    cfg, tables, params, base = setup
    c = replace(cfg, eval=replace(cfg.eval, max_tokens=0, batch_tokens=512, **MODES[mode], **keys)).validate()
    return driver.run_eval(session_for(backend, c, params), c, base if tokens is None else tokens, tables)


def gates(setup) -> np.ndarray:
    _, _, _, tokens = setup
    return ngram.token_hints(tokens[1:], TILT["ngram_order"], TILT["ngram_threshold"]).gate


@pytest.mark.parametrize("backend", BACKENDS)
def test_hint_nats_come_from_the_same_logits_as_the_targets(setup, backend):
    cfg, _, params, tokens = setup
    s = session_for(backend, cfg, params)
    rng = np.random.default_rng(0)
    x, y = tokens[None, :64], tokens[None, 1:65]
    hint = rng.integers(0, cfg.model.vocab_size, size=y.shape)
    nats, hn = s.token_nats(x, y, hint)
    np.testing.assert_array_equal(nats, s.token_nats(x, y))
    np.testing.assert_allclose(hn, s.token_nats(x, hint), rtol=1e-6, atol=1e-6)
    # the one-forward LoRA path: the hints at the scored positions only
    e = replace(cfg.eval, **MODES["ttt-lora"])
    s.lora_begin(driver.lora_init(cfg.model, e), 1.0,
                 {k: d for k, (_, d) in driver.lora_shapes(cfg.model, e).items()})
    pos = np.array([[3, 10, 40, 63]])
    w = np.zeros(pos.shape, dtype=np.float32)
    got, ghn = s.lora_score(np.array([0]), x, y, pos, w, 0, hint[:, :4])
    np.testing.assert_allclose(got, s.lora_score(np.array([0]), x, y, pos, w), rtol=1e-6, atol=1e-6)
    moved = y.copy()
    moved[0, pos[0]] = hint[0, :4]
    np.testing.assert_allclose(ghn, s.lora_score(np.array([0]), x, moved, pos, w), rtol=1e-6, atol=1e-6)
    s.lora_end()


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_backends_agree_with_the_tilt_on(setup, mode):
    pytest.importorskip("mlx.core")
    pytest.importorskip("torch")
    a, b = ledger("mlx", setup, mode, **TILT), ledger("torch", setup, mode, **TILT)
    np.testing.assert_allclose(a.ledger.nats, b.ledger.nats, rtol=1e-4, atol=1e-4)
    assert abs(a.result.val_bpb - b.result.val_bpb) <= 1e-5


@pytest.mark.parametrize("mode", list(MODES))
def test_the_tilt_moves_only_the_gated_scores_and_not_what_ttt_learns(setup, mode):
    """Where no hint applies the score is the untilted one, even after test-time steps (they train on the
    untilted loss); where it applies the score moves; on repeated text the total falls."""
    on, off = ledger("mlx", setup, mode, **TILT), ledger("mlx", setup, mode)
    g = gates(setup)
    assert 0.2 < g.mean() < 0.9
    np.testing.assert_allclose(on.ledger.nats[~g], off.ledger.nats[~g], rtol=1e-9, atol=1e-9)
    assert (np.abs(on.ledger.nats[g] - off.ledger.nats[g]) > 1e-6).mean() > 0.9
    assert on.result.val_bpb < off.result.val_bpb - 0.05
    assert (on.result.tokens, on.result.bytes) == (off.result.tokens, off.result.bytes)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_with_the_tilt_no_score_depends_on_a_later_token(setup, backend, mode):
    cfg, _, _, tokens = setup
    a = ledger(backend, setup, mode, **TILT).ledger.nats
    for t in (330, 640) if backend == "mlx" else (640,):   # in the 2nd and 3rd repetitions: hints fire there
        other = tokens.copy()
        other[t] = (tokens[t] + 11) % cfg.model.vocab_size or 5
        b = ledger(backend, setup, mode, other, **TILT).ledger.nats
        assert not np.allclose(a[t - 1 :], b[t - 1 :])
        assert (np.abs(a[: t - 1] - b[: t - 1]) <= 1e-9).all()   # targets 1 .. t - 1 are ledger rows 0 .. t - 2


def test_hints_are_built_inside_the_evaluation_clock(setup, monkeypatch):
    real = driver.token_hints

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "token_hints", slow)
    assert ledger("mlx", setup, "sliding", **TILT).seconds >= 0.5


@pytest.mark.parametrize("text,message", [
    ("[eval]\nngram_tilt = true\n", 'eval.ngram_tilt scores per target: set eval.mode = "sliding" or "ttt"'),
    ("[eval]\nmode = \"sliding\"\nngram_order = 0\n", "eval.ngram_order = 0"),
    ("[eval]\nmode = \"sliding\"\nngram_threshold = 1.5\n", "threshold in (0, 1]"),
])
def test_bad_tilt_settings_are_one_line_errors(text, message):
    with pytest.raises(PgolfError) as err:
        from_toml_text(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_causality_check_catches_hints_that_read_ahead(setup, monkeypatch):
    """Hints built from the stream read backwards (each from the targets after it) break the check above."""
    cfg, _, _, tokens = setup
    real = driver.token_hints

    def ahead(targets, *args):
        h = real(np.asarray(targets)[::-1].copy(), *args)
        return ngram.Hints(h.token[::-1].copy(), h.gate[::-1].copy(), h.boost[::-1].copy())

    monkeypatch.setattr(driver, "token_hints", ahead)
    t = 330
    other = tokens.copy()
    other[t] = (tokens[t] + 11) % cfg.model.vocab_size or 5
    a = ledger("mlx", setup, "sliding", **TILT).ledger.nats
    b = ledger("mlx", setup, "sliding", other, **TILT).ledger.nats
    assert (np.abs(a[: t - 1] - b[: t - 1]) > 1e-9).any()
