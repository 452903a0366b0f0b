"""Quantizers (shared/artifact/quant.py): each scheme round-trips within its expected error."""

from __future__ import annotations

import numpy as np
import pytest

from shared.artifact.quant import (
    INT_BITS,
    SCHEMES,
    dequantize,
    fp16_scale,
    frequency_clip,
    qmax,
    quantize,
    std_clip,
    token_weights,
)
from shared.core.config import QuantConfig, load_config
from shared.errors import PgolfError


def _weights(rows=48, cols=96, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_t(df=5, size=(rows, cols)) * rng.uniform(0.01, 0.1, size=(rows, 1))
    return w.astype(np.float32)


@pytest.mark.parametrize("scheme", ["int8", "int6", "int5", "int4"])
def test_int_schemes_round_trip_within_half_a_step(scheme):
    w = _weights()
    t = quantize(w, scheme, clip_k=3.0)
    bits = INT_BITS[scheme]
    assert t.q.dtype == np.int8 and t.scale.dtype == np.float16 and t.scale.shape == (w.shape[0],)
    assert np.abs(t.q).max() <= qmax(bits)
    w_hat = dequantize(t)
    assert w_hat.dtype == np.float32 and w_hat.shape == w.shape
    step = t.scale.astype(np.float32)[:, None]
    clip = step * qmax(bits)
    inside = np.abs(w) <= clip
    err = np.abs(w - w_hat)
    # Inside the clip range rounding is within half a step (plus float slack).
    assert np.all(err[inside] <= 0.5 * np.broadcast_to(step, w.shape)[inside] * (1 + 1e-5) + 1e-9)
    # Outside it the value saturates at +-clip.
    assert np.allclose(np.abs(w_hat[~inside]), np.broadcast_to(clip, w.shape)[~inside], rtol=1e-6)


def test_fewer_bits_mean_larger_error():
    w = _weights()
    errs = [float(np.mean((w - dequantize(quantize(w, s, clip_k=4.0))) ** 2)) for s in ("int8", "int6", "int5", "int4")]
    assert errs == sorted(errs) and errs[0] < errs[-1] / 10


def test_int8_percentile_clip_matches_the_baseline_rule():
    w = _weights(rows=4, cols=4096)
    w[0, 0] = 50.0  # an outlier: the 99.99984th percentile sits just below it
    t = quantize(w, "int8", percentile=99.99984)
    clip = np.percentile(np.abs(w[0].astype(np.float64)), 99.99984)
    assert clip < 50.0
    assert np.isclose(float(t.scale[0]), clip / 127, rtol=1e-3)  # fp16 rounding of the scale
    assert t.q[0, 0] == 127


def test_std_clip_is_k_row_std():
    w = _weights()
    assert np.allclose(std_clip(w, 3.0), 3.0 * w.astype(np.float64).std(axis=1))
    # Not capped at the row's max: k is a real size knob.
    assert np.all(std_clip(w, 50.0) > np.abs(w).max(axis=1))


def test_float_schemes_and_vectors():
    w = _weights()
    assert np.array_equal(dequantize(quantize(w, "fp32")), w)
    f16 = dequantize(quantize(w, "fp16"))
    assert np.allclose(f16, w, rtol=1e-3, atol=1e-7)
    v = np.linspace(-1, 1, 17, dtype=np.float32)
    t = quantize(v, "int6")  # vectors have no rows to scale: kept as floats
    assert t.scheme == "fp16" and dequantize(t).shape == v.shape


def test_zero_rows_do_not_divide_by_zero():
    w = _weights()
    w[3] = 0.0
    t = quantize(w, "int6", clip_k=3.0)
    assert np.all(np.isfinite(dequantize(t))) and np.all(dequantize(t)[3] == 0.0)


def test_config_schemes_match_the_quantizer_and_are_validated():
    assert set(SCHEMES) == {"fp32", "fp16", *INT_BITS}
    for name in SCHEMES:
        load_config(overrides=[f"quant.mlp={name}"])
    with pytest.raises(PgolfError, match="quant.mlp = 'int9' is not a scheme"):
        load_config(overrides=["quant.mlp=int9"])
    with pytest.raises(PgolfError, match="quant.clip_k"):
        load_config(overrides=["quant.clip_k=0"])
    with pytest.raises(PgolfError, match="zstd_level"):
        load_config(overrides=["quant.zstd_level=23"])
    assert QuantConfig().embed == "int8"


def test_frequency_steps_are_finer_for_frequent_tokens():
    w = _weights(rows=64, cols=32).astype(np.float64)
    counts = (np.arange(64, dtype=np.float64) ** 2)[::-1]          # the last token never occurs
    weights = token_weights(counts, 0.1)
    assert np.allclose(weights, counts / counts.mean() + 0.1)
    # The step goes as 1/sqrt(weight), in units of the median row std, whatever each row's own std,
    # but never clips a value: a clip below the row's max |w| is raised to it.
    raw = 20.0 * np.median(w.std(axis=1)) * np.sqrt(np.median(weights) / weights)
    row_max = np.abs(w).max(axis=1)
    clip = frequency_clip(w, 20.0, weights)
    assert np.array_equal(clip, np.maximum(raw, row_max)) and np.all(np.diff(raw) > 0)
    assert clip[-1] > clip[0] and np.any(clip > row_max)
    assert np.allclose(frequency_clip(w, 20.0, np.ones(64)), np.maximum(20.0 * np.median(w.std(axis=1)), row_max))
    t = quantize(w.astype(np.float32), "int8", clip_k=20.0, row_weights=weights)
    assert np.array_equal(t.scale, fp16_scale(clip, 8))
    assert t.q is not None and np.abs(t.q[-1]).max() < np.abs(t.q[0]).max()   # the unseen row spends fewer codes
    with pytest.raises(PgolfError, match="64 values"):
        frequency_clip(w, 20.0, np.ones(3))
    with pytest.raises(PgolfError, match="embed_freq_floor"):
        frequency_clip(w, 20.0, np.zeros(64))
    with pytest.raises(PgolfError, match="embed_steps=row"):
        frequency_clip(np.zeros((64, 32)), 20.0, weights)
