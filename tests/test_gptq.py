"""GPTQ (shared/artifact/gptq.py) and the backends' Hessian collection (calibrate.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.artifact.gptq import cholesky_blocked, cholesky_lower, damped, exact_dot, gptq_codes, layer_error
from shared.artifact.quant import fp16_scale, qmax, round_to_codes, std_clip
from shared.core.spec import init_params, param_table
from shared.data.shards import BatchLoader, TokenStream
from shared.errors import PgolfError
from tests.conftest import tiny_config


def _problem(out=40, inp=48, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(inp, inp)) * 0.4
    a = rng.normal(size=(1024, inp)) @ mix + rng.normal(size=(1024, inp))
    h = a.T @ a
    w = rng.normal(size=(out, inp)) * 0.05
    return w, h


def test_cholesky_matches_lapack_and_rejects_indefinite():
    _, h = _problem()
    L = cholesky_lower(h)
    assert np.allclose(L, np.linalg.cholesky(h), rtol=1e-10, atol=1e-10)
    assert np.allclose(np.triu(L, 1), 0)
    assert cholesky_lower(-h) is None


def _reference_gptq(w, h, s, bits, damp=0.01):
    """The textbook GPTQ loop (Frantar et al. 2022): upper Cholesky of H^-1, act order."""
    order = np.argsort(-np.diagonal(h), kind="stable")
    u = np.linalg.cholesky(np.linalg.inv(damped(h, damp)[np.ix_(order, order)])).T
    wp, q = w[:, order].copy(), np.zeros_like(w)
    m = qmax(bits)
    for j in range(w.shape[1]):
        q[:, j] = np.clip(np.rint(wp[:, j] / s), -m, m)
        err = (wp[:, j] - q[:, j] * s) / u[j, j]
        wp[:, j + 1:] -= np.outer(err, u[j, j + 1:])
    out = np.zeros_like(q)
    out[:, order] = q
    return out.astype(np.int8)


@pytest.mark.parametrize("bits", [6, 4])
def test_nearest_plane_form_equals_textbook_gptq(bits):
    w, h = _problem()
    scale = fp16_scale(std_clip(w, 4.0), bits)
    ours = gptq_codes(w, h, scale, bits)
    ref = _reference_gptq(w, h, scale.astype(np.float64), bits)
    # Same algorithm, different float operation order: allow a rare tie flipped by rounding.
    assert np.mean(ours != ref) < 1e-3


def test_exact_dot_does_not_depend_on_the_summation_order():
    """Its slices' products are exact, so reversing or regrouping the k sum changes no bit, while a
    plain BLAS product of the same numbers does change in the last bits."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(70, 300)) * np.exp(rng.normal(size=(70, 1)) * 3)
    b = rng.normal(size=(300, 50)) * np.exp(rng.normal(size=(1, 50)) * 3)
    ref = exact_dot(a, b)
    assert np.array_equal(ref, exact_dot(a[:, ::-1], b[::-1]))
    perm = rng.permutation(300)
    assert np.array_equal(ref, exact_dot(a[:, perm], b[perm]))
    assert not np.array_equal(a @ b, a[:, perm] @ b[perm])   # what exactness buys
    assert np.allclose(ref, a @ b, rtol=0, atol=1e-12 * np.abs(a).max() * np.abs(b).max())


def test_blocked_cholesky_and_gptq_agree_with_the_unblocked_forms():
    w, h = _problem(out=40, inp=150)
    L = cholesky_blocked(h, block=32)
    assert np.allclose(L, cholesky_lower(h), rtol=1e-10, atol=1e-10 * np.sqrt(np.abs(h).max()))
    assert cholesky_blocked(-h, block=32) is None
    scale = fp16_scale(std_clip(w, 4.0), 5)
    ref = _reference_gptq(w, h, scale.astype(np.float64), 5)
    for block in (1, 16, 64, 150):   # one column at a time, ..., one block
        assert np.mean(gptq_codes(w, h, scale, 5, block=block) != ref) < 1e-3, block


def test_gptq_beats_rtn_on_synthetic_and_is_deterministic():
    w, h = _problem()
    scale = fp16_scale(std_clip(w, 4.0), 5)
    s = scale.astype(np.float64)[:, None]
    g = gptq_codes(w, h, scale, 5)
    assert np.array_equal(g, gptq_codes(w, h.copy(), scale, 5))
    assert layer_error(w, g * s, h) < 0.8 * layer_error(w, round_to_codes(w, scale, 5) * s, h)


def test_bad_hessians_are_clear_errors():
    w, h = _problem()
    scale = fp16_scale(std_clip(w, 4.0), 6)
    with pytest.raises(PgolfError, match="does not match"):
        gptq_codes(w, h[:-1, :-1], scale, 6)
    bad = h.copy()
    bad[0, 0] = np.nan
    with pytest.raises(PgolfError, match="non-finite"):
        gptq_codes(w, bad, scale, 6)


def _train_tiny(backend, tiny_data, steps=40):
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tiny_data.vocab_size),
                  train=replace(cfg.train, iterations=steps, warmdown_iters=10))
    loader = BatchLoader(TokenStream(tiny_data.data_dir, "train"))
    batches = [loader.next_batch(cfg.train.batch_tokens, cfg.train.seq_len) for _ in range(steps)]
    from shared.tools.parity import train_steps

    losses, params = train_steps(backend, init_params(cfg.model, cfg.train.seed), cfg, batches)
    assert losses[-1] < losses[0] - 0.5  # it did learn something
    calib = loader.next_batch(4096, cfg.train.seq_len)[0]  # unseen training tokens
    return cfg, params, calib


@pytest.mark.torch
def test_gptq_lowers_layer_error_on_a_trained_model(tiny_data):
    pytest.importorskip("torch")
    from cuda_train import backend

    cfg, params, calib = _train_tiny(backend, tiny_data)
    hessians = backend.collect_hessians(params, cfg, calib)
    matrices = [n for n in params if param_table(cfg.model)[n].group == "matrix"] + ["tok_emb.weight"]  # blocks and the tied head
    assert sorted(hessians) == sorted(matrices)
    for bits in (6, 4):
        gptq_total = rtn_total = 0.0
        for name in matrices:
            w, h = params[name].astype(np.float64), hessians[name]
            assert h.shape == (w.shape[1], w.shape[1]) and h.dtype == np.float64 and np.allclose(h, h.T)
            scale = fp16_scale(std_clip(w, 4.0), bits)
            s = scale.astype(np.float64)[:, None]
            e_gptq = layer_error(w, gptq_codes(w, h, scale, bits) * s, h)
            e_rtn = layer_error(w, round_to_codes(w, scale, bits) * s, h)
            assert e_gptq < e_rtn, (name, bits)
            gptq_total, rtn_total = gptq_total + e_gptq, rtn_total + e_rtn
        assert gptq_total < 0.8 * rtn_total


@pytest.mark.mlx
@pytest.mark.torch
@pytest.mark.parametrize("tied", [True, False])
def test_backends_collect_the_same_hessians(tied):
    pytest.importorskip("mlx.core")
    pytest.importorskip("torch")
    from cuda_train.calibrate import collect_hessians as torch_h
    from mlx_train.calibrate import collect_hessians as mlx_h

    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, tie_embeddings=tied))
    rng = np.random.default_rng(0)
    params = {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in init_params(cfg.model, 1).items()}
    x = rng.integers(0, cfg.model.vocab_size, size=(3, cfg.train.seq_len))
    a, b = mlx_h(params, cfg, x), torch_h(params, cfg, x)
    assert sorted(a) == sorted(b)
    head = "tok_emb.weight" if tied else "lm_head.weight"
    assert head in a and ("lm_head.weight" in a) != tied and a[head].shape == (cfg.model.model_dim,) * 2
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-4, atol=1e-4 * np.abs(b[k]).max()), k
