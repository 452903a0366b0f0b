"""Quantizers for the artifact: numpy only, deterministic, one tensor at a time.

Schemes (names used in `[quant]` and in the artifact's tensor table):

    fp32, fp16       the tensor kept as floats (small and control tensors)
    int8             per-row int8, clip at a percentile of |w| per row (the challenge
                     baseline's export: `quant.clip_percentile`), scale = clip / 127
    int6/int5/int4   per-row signed ints in [-(2^(b-1)-1), 2^(b-1)-1], clip = `quant.clip_k`
                     times the row's standard deviation, round to nearest
                     (or GPTQ, shared/artifact/gptq.py, when a Hessian is given and `quant.gptq`)

The embedding (and an untied head) may instead take "frequency" steps
(`quant.embed_steps`): one row per token, so a row's error costs in proportion
to how often its token is read or predicted. Given each token's weight w_v
(its count among the calibration tokens, inputs and targets, divided by the
mean count, plus `quant.embed_freq_floor`), row v's clip is
`quant.embed_clip_k * median(row std) * sqrt(median(w) / w_v)`, but at least
the row's max |w|: the step that minimises the frequency-weighted squared error
for a given entropy (each row's error ~ step^2, its code length ~ -log2(step)),
without clipping any value. Frequent tokens get fine steps,
byte-fallback pieces that never occur get coarse ones. Only the scales change:
the format and dequantisation are the same.

Every integer scheme stores one value per byte (int8) plus one fp16 scale per
row; dequantisation is `q * float32(scale)[:, None]`. The scale is rounded to
fp16 *before* quantising, so what the reader multiplies by is exactly what the
rounding used. Arithmetic is float64 where the order of a reduction could
matter; numpy reductions here are single-threaded and therefore repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.artifact.gptq import gptq_codes
from shared.artifact.lqer import Lqer, correction
from shared.artifact.schemes import FLOAT_SCHEMES, INT_BITS, SCHEMES, qmax, scheme_bits  # noqa: F401  (re-exported)
from shared.errors import PgolfError


@dataclass(frozen=True)
class Awq:
    """Columns start..start+size of a matrix coded at `bits` with their own per-row scales (AWQ-lite, #1908)."""

    start: int
    size: int
    bits: int
    scale: np.ndarray                  # float16 [rows]


@dataclass(frozen=True)
class QTensor:
    """One packed tensor: integer codes plus per-row fp16 scales, or plain floats."""

    scheme: str
    shape: tuple[int, ...]
    q: np.ndarray | None = None        # int8 [rows, cols] codes (integer schemes)
    scale: np.ndarray | None = None    # float16 [rows]
    data: np.ndarray | None = None     # float16/float32 values (float schemes)
    lqer: Lqer | None = None           # low-rank correction added when dequantising (shared/artifact/lqer.py)
    awq: Awq | None = None             # a column group coded at more bits (AWQ-lite, #1908)

    @property
    def bits(self) -> int:
        return scheme_bits(self.scheme)


def as_rows(w: np.ndarray) -> np.ndarray:
    """A tensor of rank >= 2 viewed as [shape[0], rest]: one scale per output row."""
    return np.asarray(w, dtype=np.float32).reshape(w.shape[0], -1)


FP16_MAX = float(np.finfo(np.float16).max)


def fp16_scale(clip: np.ndarray, bits: int, name: str = "tensor") -> np.ndarray:
    """Per-row scale clip/qmax, rounded to fp16; all-zero (or denormal) rows get scale 1.

    A step beyond fp16's range (65504) would be stored as infinity and decode to NaN: that is an
    error naming the tensor, never a silently broken artifact."""
    step = np.asarray(clip, dtype=np.float64) / qmax(bits)
    if not np.isfinite(step).all():
        raise PgolfError(f"{name}: its quantisation step is not finite (the weights hold NaN or infinity); "
                         "re-train or resume from a good checkpoint")
    with np.errstate(over="ignore"):
        scale = step.astype(np.float16)
    if np.isinf(scale).any():
        row = int(np.argmax(step))
        raise PgolfError(f"{name}: row {row} needs a quantisation step of {step[row]:.4g}, beyond the fp16 range "
                         f"of the artifact's scales (max {FP16_MAX:g}); its weights have grown too large "
                         "(lower the learning rates or set optim.grad_clip_norm)")
    tiny = ~(scale.astype(np.float32) > np.float32(np.finfo(np.float16).tiny))
    scale[tiny] = np.float16(1.0)
    return scale


def percentile_clip(rows: np.ndarray, percentile: float) -> np.ndarray:
    """Per-row clip: the `percentile`-th percentile of |w| (float64, linear interpolation)."""
    return np.percentile(np.abs(rows.astype(np.float64)), percentile, axis=1)


def std_clip(rows: np.ndarray, k: float) -> np.ndarray:
    """Per-row clip: k times the row's standard deviation. Not capped at max |w|: a clip wider
    than the row spends fewer distinct codes, which the entropy coder turns into fewer bytes, so
    k is the size/quality knob (BENCHMARKS.md: k=12 gives the small config's int6 block matrices
    0.46 bytes/param)."""
    r = rows.astype(np.float64)
    std = r.std(axis=1)
    return k * std


def token_weights(counts: np.ndarray, floor: float) -> np.ndarray:
    """Each token's weight for "frequency" steps: count / mean count + floor (float64, > 0)."""
    c = np.asarray(counts, dtype=np.float64)
    return c / max(c.mean(), 1e-12) + floor


def frequency_clip(rows: np.ndarray, k: float, weights: np.ndarray) -> np.ndarray:
    """Per-row clip k * median(row std) * sqrt(median(w) / w_v): finer for heavier rows, but never
    below the row's own max |w| (docs/ARTIFACT.md: clipping the most frequent tokens' values raised
    the weighted error by half)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (rows.shape[0],):
        raise PgolfError(f"row weights must be {rows.shape[0]} values (one per row), got shape {w.shape}")
    if not np.all(w > 0):
        raise PgolfError(f"row weights must be positive, got a minimum of {w.min()}: raise quant.embed_freq_floor")
    r = rows.astype(np.float64)
    unit = np.median(r.std(axis=1))
    if not unit > 0:
        raise PgolfError("frequency steps need a non-zero median row std (more than half the rows are constant): "
                         "set quant.embed_steps=row")
    return np.maximum(k * unit * np.sqrt(np.median(w) / w), np.abs(r).max(axis=1))


def row_scales(rows: np.ndarray, scheme: str, percentile: float, clip_k: float, min_scale: float = 0.0,
               row_weights: np.ndarray | None = None, name: str = "tensor") -> np.ndarray:
    bits = scheme_bits(scheme)
    if row_weights is not None:
        clip = frequency_clip(rows, clip_k, row_weights)
    elif scheme == "int8":
        clip = percentile_clip(rows, percentile)
    else:
        clip = std_clip(rows, clip_k)
    # The challenge baseline floors every row's step at 1/127 (`clamp_min` in its export):
    # quant.min_scale reproduces that rule; 0 leaves each row its own step.
    clip = np.maximum(clip, min_scale * qmax(bits))
    return fp16_scale(clip, bits, name)


def round_to_codes(rows: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Round-to-nearest (half to even) codes of `rows / scale`, clamped to +-qmax."""
    m = qmax(bits)
    x = rows.astype(np.float64) / scale.astype(np.float64)[:, None]
    return np.clip(np.rint(x), -m, m).astype(np.int8)


def quantize(w: np.ndarray, scheme: str, *, percentile: float = 99.99984, clip_k: float = 12.0,
             hessian: np.ndarray | None = None, gptq_block: int = 128, gptq_damp: float = 0.01,
             min_scale: float = 0.0, row_weights: np.ndarray | None = None, name: str = "tensor",
             protect: tuple[int, int, int] | None = None) -> QTensor:
    """Quantise one tensor with `scheme`; a Hessian [in, in] switches int schemes to GPTQ;
    `row_weights` (one per row, > 0) switches the clip to "frequency" steps; `protect` = (start, size, bits)
    codes those columns at `bits` with the same clip (AWQ-lite, #1908). `name` labels errors:
    a value or scale that overflows its storage type (fp16) is refused, never stored as infinity."""
    w = np.asarray(w, dtype=np.float32)
    bits = scheme_bits(scheme)
    shape = tuple(int(s) for s in w.shape)
    if scheme in FLOAT_SCHEMES or w.ndim < 2:
        dtype = np.float32 if scheme == "fp32" else np.float16
        with np.errstate(over="ignore"):
            data = w.astype(dtype)
        if np.isinf(data).any() and np.isfinite(w).all():
            raise PgolfError(f"{name}: a value of {float(np.abs(w).max()):.4g} is beyond the fp16 range (max "
                             f"{FP16_MAX:g}); store it as fp32 (quant.other=fp32, or raise quant.keep_float_max_numel "
                             "and pick fp32 for its class) or lower the learning rates")
        return QTensor(scheme if scheme in FLOAT_SCHEMES else "fp16", shape, data=data)
    rows = as_rows(w)
    scale = row_scales(rows, scheme, percentile, clip_k, min_scale, row_weights, name)
    awq = None
    if protect is not None:
        start, size, hi = protect
        # the same clip as the row's other columns, cut into 2^(hi-1)-1 steps instead of 2^(bits-1)-1
        awq = Awq(start, size, hi, fp16_scale(scale.astype(np.float64) * qmax(bits), hi, name))
    col_scale = None if awq is None else (awq.start, awq.size, awq.scale, qmax(awq.bits))
    if hessian is not None:
        q = gptq_codes(rows, hessian, scale, bits, block=gptq_block, damp=gptq_damp, cols=col_scale)
    else:
        q = round_to_codes(rows, scale, bits)
        if awq is not None:
            q[:, awq.start:awq.start + awq.size] = round_to_codes(rows[:, awq.start:awq.start + awq.size], awq.scale,
                                                                  awq.bits)
    return QTensor(scheme, shape, q=q, scale=scale, awq=awq)


def dequantize(t: QTensor) -> np.ndarray:
    """Float32 weights in the tensor's original shape."""
    if t.data is not None:
        return t.data.astype(np.float32).reshape(t.shape)
    assert t.q is not None and t.scale is not None
    w = t.q.astype(np.float32) * t.scale.astype(np.float32)[:, None]
    if t.awq is not None:
        a = t.awq
        w[:, a.start:a.start + a.size] = t.q[:, a.start:a.start + a.size].astype(np.float32) * a.scale.astype(np.float32)[:, None]
    if t.lqer is not None:
        w = w + correction(t.lqer)
    return w.reshape(t.shape)
