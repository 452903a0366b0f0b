"""The record stack's options (README "The record stack"): each one changes what it claims to, and the record
config builds the record's model in both backends. Cross-backend agreement of each option is in
tests/test_parity.py (one case per option)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.core.config import load_config
from shared.core.spec import BOS_ID, count_params, init_params, param_table
from tests.conftest import tiny_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _live(m, seed=0):
    """Init weights with every zero-initialised tensor filled in, so that each path matters."""
    rng = np.random.default_rng(seed)
    params = init_params(m, seed)
    for k, p in param_table(m).items():
        if p.init[0] == "zeros" or k == "tok_emb.weight":
            params[k] = rng.normal(0, 0.3, p.shape).astype(np.float32)
    return params


def _loss(m, params, x, y, looped=None):
    from cuda_train.model import build_model

    with torch.no_grad():
        return float(build_model(m, params)(torch.from_numpy(x), torch.from_numpy(y), looped=looped))


BATCH = np.random.default_rng(1).integers(4, 512, size=(2, 32)).astype(np.int64)
X, Y = BATCH, np.roll(BATCH, -1, axis=1)

# option -> the model-config change that turns it on (from a 3-layer tiny model)
OPTIONS = {
    "activation": {"activation": "leaky_relu2"},
    "rope_dims": {"rope_dims": 8},
    "ln_scale": {"ln_scale": True},
    "xsa_last_n": {"xsa_last_n": 2},
    "skip_gates": {"skip_gates": True},
    "parallel_from": {"parallel_from": 1},
    "smear_gate": {"smear_gate": True},
    "attn_gate": {"attn_gate": True},
    "doc_attention": {"doc_attention": True, "doc_max_len": 8},
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_changes_the_forward_pass(option):
    base = replace(tiny_config().model, num_layers=3)
    on = replace(base, **OPTIONS[option]).validate() or replace(base, **OPTIONS[option])
    params = _live(on)
    off_params = {k: v for k, v in params.items() if k in param_table(base)}
    assert _loss(on, params, X, Y) != pytest.approx(_loss(base, off_params, X, Y), rel=1e-6)


def test_depth_recurrence_changes_the_forward_pass_and_its_order():
    m = replace(tiny_config().model, num_layers=3, loop_start=1, loop_end=1, num_loops=2)
    assert m.layer_order(True) == [0, 1, 1, 1, 2] and m.layer_order(False) == [0, 1, 2]
    params = _live(m)
    assert _loss(m, params, X, Y, looped=True) != pytest.approx(_loss(m, params, X, Y, looped=False), rel=1e-6)
    assert _loss(m, params, X, Y) == _loss(m, params, X, Y, looped=True)  # evaluation uses the looped order


def test_ortho_init_draws_orthogonal_matrices():
    m = replace(tiny_config().model, ortho_init=True)
    w = init_params(m, 0)["blocks.0.mlp.fc.weight"]  # [hidden, dim]: orthonormal columns
    np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-5)
    assert not np.array_equal(w, init_params(tiny_config().model, 0)["blocks.0.mlp.fc.weight"])


def _smear(backend: str, m, params, idx: np.ndarray, x: np.ndarray) -> np.ndarray:
    if backend == "torch":
        from cuda_train.model import Smear

        s = Smear(m)
        with torch.no_grad():
            s.weight.copy_(torch.from_numpy(params["smear.weight"]))
            s.lam.copy_(torch.from_numpy(params["smear.lam"]))
            return s(torch.from_numpy(x), torch.from_numpy(idx)).numpy()
    mx = pytest.importorskip("mlx.core")
    from mlx_train.model import Smear as MLXSmear

    s = MLXSmear(m)
    s.weight, s.lam = mx.array(params["smear.weight"]), mx.array(params["smear.lam"])
    return np.array(s(mx.array(x), mx.array(idx)))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_smear_gate_never_reads_across_bos(backend):
    """A token at or after BOS is unaffected by the previous document; without the BOS it would be."""
    m = replace(tiny_config().model, smear_gate=True)
    params = _live(m)
    rng = np.random.default_rng(0)
    idx = np.array([[5, 6, 7, BOS_ID, 8, 9]], dtype=np.int64)
    x = rng.normal(size=(1, 6, m.model_dim)).astype(np.float32)
    x2 = x.copy()
    x2[:, :3] += 1.0  # another previous document
    a, b = _smear(backend, m, params, idx, x), _smear(backend, m, params, idx, x2)
    np.testing.assert_array_equal(a[:, 3:], b[:, 3:])
    no_bos = idx.copy()
    no_bos[0, 3] = 10
    c, d = _smear(backend, m, params, no_bos, x), _smear(backend, m, params, no_bos, x2)
    assert not np.allclose(c[:, 3], d[:, 3])  # the test can fail: without BOS the mix crosses


RECORD_PARAMS = 35_945_671  # PR #1855


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_record_config_builds_the_record_model_and_steps_on_cpu(backend, tiny_data):
    from shared.run.backends import get_backend

    if backend == "mlx":
        pytest.importorskip("mlx.core")
    cfg = load_config("configs/record.toml")
    assert count_params(cfg.model) == RECORD_PARAMS
    small = replace(cfg.train, batch_tokens=256, seq_len=128, grad_accum=1, compute_dtype="float32", compile=False,
                    ema_decay=0.9)
    cfg = replace(cfg, train=small).validate()
    session = get_backend(backend).session(cfg)
    session.load_weights(init_params(cfg.model, 0))
    assert sum(v.size for v in session.weights().values()) == RECORD_PARAMS
    if backend == "mlx":   # a record-width MLX step takes over a minute on a CPU; parity covers MLX's steps
        return
    x = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(2, 128)).astype(np.int64)
    losses = [session.step([(x, np.roll(x, -1, 1))], 1.0, 0.95, looped=looped) for looped in (False, True)]
    assert all(np.isfinite(losses)) and abs(losses[0] - np.log(cfg.model.vocab_size)) < 1.0


@pytest.mark.slow
def test_torch_compile_has_no_graph_breaks_with_every_option():
    from cuda_train.model import build_model

    m = replace(tiny_config().model, num_layers=4, **{k: v for o in OPTIONS.values() for k, v in o.items()},
                loop_start=1, loop_end=2, num_loops=1, ortho_init=True)
    model = build_model(m, _live(m))
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    for looped in (False, True):
        explained = torch._dynamo.explain(model)(x, y, looped=looped)
        assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_asym_logit_caps_each_sign_with_its_own_learned_softcap(backend):
    """AsymLogit (#1923): equal to the symmetric softcap at init; then z >= 0 is capped by softcap_pos,
    z < 0 by softcap_neg."""
    base = replace(tiny_config().model, num_layers=2)
    on = replace(base, asym_logit=True)
    params = _live(on)
    sym = {k: v for k, v in params.items() if k in param_table(base)}
    if backend == "torch":
        from cuda_train.model import build_model as build

        def logits(m, p):
            with torch.no_grad():
                return build(m, p).logits(torch.from_numpy(X)).numpy()
    else:
        mx = pytest.importorskip("mlx.core")
        from mlx_train.model import build_model as build

        def logits(m, p):
            return np.array(build(m, p).logits(mx.array(X)))
    np.testing.assert_allclose(logits(on, params), logits(base, sym), rtol=1e-6, atol=1e-6)
    params["softcap_pos"][:], params["softcap_neg"][:] = 2.0, 8.0
    raw = np.arctanh(np.clip(logits(base, sym) / base.logit_softcap, -1 + 1e-7, 1 - 1e-7)) * base.logit_softcap
    want = np.where(raw >= 0, 2.0 * np.tanh(raw / 2.0), 8.0 * np.tanh(raw / 8.0))
    np.testing.assert_allclose(logits(on, params), want, rtol=1e-4, atol=1e-4)
