"""The record architecture (#1855) held to a float64 numpy forward written from its definitions
(tests/reference_math.py: record_logits), with every option on, in both layer orders, on rows that hold
several documents: both backends must give the reference's logits. This is the check that catches a
structural difference such as where the U-Net skip enters the parallel lanes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.core.config import ModelConfig
from shared.core.spec import doc_segments, param_table
from shared.errors import PgolfError
from tests.reference_math import _segments, live_params, record_logits

RECORD_SHAPE = dict(num_layers=6, model_dim=64, num_heads=4, num_kv_heads=2, vocab_size=128, mlp_mult=4.0,
                    activation="leaky_relu2", rope_dims=8, qk_gain_init=5.0, ln_scale=True, xsa_last_n=6,
                    skip_gates=True, loop_start=2, loop_end=3, num_loops=2, loop_at=0.35, parallel_from=4,
                    smear_gate=True, attn_gate=True, gate_dims=6, ortho_init=True, doc_attention=True,
                    doc_max_len=8)
TOL = 2e-5  # float32 against float64 on logits of scale ~5 through 10 block applications (measured 1.5e-6)


def record_model() -> ModelConfig:
    m = replace(ModelConfig(), **RECORD_SHAPE)
    m.validate()
    return m


def tokens(seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).integers(4, 128, size=(2, 40))
    x[0, [0, 13, 17]] = 1   # documents of 13, 4 and 23 tokens (the last longer than doc_max_len)
    x[1, 29] = 1            # a row that starts mid-document
    return x


def test_segments_agree_with_the_reference_loop():
    x = tokens()
    for cap in (0, 8, 5):
        assert (doc_segments(x, cap) == _segments(x, cap)).all()
    assert doc_segments(x, 8)[0].tolist()[:22] == [0] * 8 + [1] * 5 + [2] * 4 + [3] * 5


def backend_logits(backend: str, m: ModelConfig, params: dict[str, np.ndarray], x: np.ndarray, looped: bool):
    """The float64 logits one backend's model computes in float32."""
    if backend == "torch":
        import torch

        from cuda_train.model import build_model

        with torch.no_grad():
            return build_model(m, params).logits(torch.from_numpy(x), looped=looped).double().numpy()
    mx = pytest.importorskip("mlx.core")
    from mlx_train.model import build_model

    return np.array(build_model(m, params).logits(mx.array(x), looped=looped)).astype(np.float64)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("looped", [False, True])
@pytest.mark.parametrize("bos_mask", [True, False])
def test_record_model_equals_the_reference(backend, looped, bos_mask):
    m = replace(record_model(), smear_bos_mask=bos_mask)
    params, x = live_params(m), tokens()
    got, ref = backend_logits(backend, m, params, x, looped), record_logits(params, m, x, looped)
    assert np.abs(got - ref).max() < TOL, np.abs(got - ref).max()


def test_the_reference_tells_the_record_options_apart():
    """Each structural option moves the reference's logits by far more than TOL, so a backend that got one
    wrong (the skip into both lanes, attention across a BOS, the lanes in the encoder) fails above."""
    m, x = record_model(), tokens()
    params = live_params(m)
    base = record_logits(params, m, x, True)
    for change in ({"doc_attention": False, "doc_max_len": 0}, {"doc_max_len": 0}, {"parallel_from": 5},
                   {"smear_bos_mask": False}):
        other = replace(m, **change)
        p = {k: v for k, v in params.items() if k in param_table(other)}
        assert np.abs(record_logits(p, other, x, True) - base).max() > 100 * TOL, change


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_doc_attention_training_packs_a_micro_batch_as_one_row(backend, tiny_data):
    """#1855 trains on one packed row per micro-batch: a document that runs past the end of one row of
    the batch keeps its context in the next. The step's loss is the model's loss on the packed row."""
    from conftest import tiny_config

    from shared.run.backends import get_backend

    if backend == "mlx":
        pytest.importorskip("mlx.core")
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, doc_attention=True, doc_max_len=48)).validate()
    x = np.random.default_rng(0).integers(4, cfg.model.vocab_size, size=(2, 32)).astype(np.int64)
    x[0, 9] = 1  # the document that starts here runs on into row 2
    y = np.roll(x, -1, 1)
    params = live_params(cfg.model)
    session = get_backend(backend).session(cfg)
    session.load_weights(params)
    packed, rows = session.loss(x.reshape(1, -1), y.reshape(1, -1)), session.loss(x, y)
    assert abs(packed - rows) > 1e-4
    assert session.step([(x, y)], 0.0, 0.95) == pytest.approx(packed, rel=1e-5)


def test_seq_schedule_grows_the_segment_cap_and_rewarms_the_lr():
    """#2014: the document segment cap follows train.seq_schedule over training, and the LR ramps back up
    over train.seq_rewarm_steps after each change."""
    from shared.core.config import TrainConfig
    from shared.core.schedule import rewarm, seq_cap

    t = replace(TrainConfig(), seq_schedule="2048@0.7, 1024@0.1,3072@1.0", iterations=100, max_seconds=0,
                seq_rewarm_steps=4)
    assert t.seq_stages() == [(0.1, 1024), (0.7, 2048), (1.0, 3072)]
    assert [seq_cap(s, 0.0, t) for s in (0, 10, 11, 70, 71, 99)] == [1024, 1024, 2048, 2048, 3072, 3072]
    assert [rewarm(s, 11, t) for s in (11, 12, 14, 20)] == [0.25, 0.5, 1.0, 1.0]
    assert seq_cap(5, 0.0, replace(t, seq_schedule="")) == 0
    for bad in ("1024", "1024@1.5", "0@0.5", "x@0.5"):
        with pytest.raises(PgolfError, match="train.seq_schedule stage"):
            replace(t, seq_schedule=bad).validate()


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_segment_cap_changes_the_step_as_the_model_config_would(backend, tiny_data):
    from conftest import tiny_config

    from shared.run.backends import get_backend

    if backend == "mlx":
        pytest.importorskip("mlx.core")
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, doc_attention=True, doc_max_len=48)).validate()
    x = np.random.default_rng(0).integers(4, cfg.model.vocab_size, size=(2, 32)).astype(np.int64)
    y = np.roll(x, -1, 1)
    params = live_params(cfg.model)
    capped = replace(cfg, model=replace(cfg.model, doc_max_len=8)).validate()
    session = get_backend(backend).session(capped)
    session.load_weights(params)
    want = session.step([(x, y)], 0.0, 0.95)
    session = get_backend(backend).session(cfg)
    session.load_weights(params)
    assert session.step([(x, y)], 0.0, 0.95, seg_len=8) == pytest.approx(want, rel=1e-6)
    assert session.step([(x, y)], 0.0, 0.95) != pytest.approx(want, rel=1e-4)
