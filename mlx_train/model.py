"""The GPT of shared/core/spec.py as an MLX `nn.Module` (single device).

The challenge's naive baseline: GQA attention with QK RMSNorm, RoPE and a
learned per-head q gain; relu^2 MLP; U-Net skips with learned per-channel
weights; a residual mix with the first-layer input x0; per-block attn/mlp
output scales; tied embeddings; tanh logit softcap. Every shape comes from
`ModelConfig`.

Module attribute names are the canonical parameter names, so
`tree_flatten(model.parameters())` yields exactly `shared.core.spec.param_shapes`
and weights cross the backend boundary as plain `name -> array` dicts
(`load_params` / `export_params`). Weights stay float32 (the optimizer's
master copy); each layer casts them to the compute dtype of its input.
"""

from __future__ import annotations

import math

# isort: off
from mlx_train import runtime  # noqa: F401  (before mlx.core: loads the Linux BLAS shim)
# isort: on
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.core.config import ModelConfig
from shared.core.spec import RMS_EPS, check_params, param_shapes


def rms_norm(x: mx.array) -> mx.array:
    # Weightless, with torch's float32 eps (shared.core.spec.RMS_EPS) so both backends agree.
    return mx.fast.rms_norm(x, None, RMS_EPS)


class CastedLinear(nn.Module):
    """`y = x @ W.T` without bias, W [out, in] kept in float32 and cast to x's dtype."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = mx.zeros((out_dim, in_dim))

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.weight.astype(x.dtype).T


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = m.num_heads, m.num_kv_heads, m.head_dim
        self.rope_base = m.rope_base
        self.c_q = CastedLinear(m.model_dim, m.model_dim)
        self.c_k = CastedLinear(m.model_dim, m.kv_dim)
        self.c_v = CastedLinear(m.model_dim, m.kv_dim)
        self.proj = CastedLinear(m.model_dim, m.model_dim)
        self.q_gain = mx.full((m.num_heads,), m.qk_gain_init)

    def _rope(self, x: mx.array) -> mx.array:
        # Half-split (non-interleaved) RoPE. The reference PyTorch code rotates by
        # -pos * theta (y1 = x1 cos + x2 sin, y2 = x2 cos - x1 sin); a position
        # scale of -1 makes mx.fast.rope compute exactly that, so logits match.
        return mx.fast.rope(x, self.head_dim, traditional=False, base=self.rope_base, scale=-1.0, offset=0)

    def __call__(self, x: mx.array) -> mx.array:
        b, t, d = x.shape
        q = self.c_q(x).reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.c_k(x).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.c_v(x).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q, k = self._rope(rms_norm(q)), self._rope(rms_norm(k))
        q = q * self.q_gain.astype(q.dtype)[None, :, None, None]
        # The fused kernel handles GQA (fewer KV heads) without repeating k and v.
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask="causal")
        return self.proj(y.transpose(0, 2, 1, 3).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.fc = CastedLinear(m.model_dim, m.hidden_dim)
        self.proj = CastedLinear(m.hidden_dim, m.model_dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.proj(mx.square(nn.relu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.attn = CausalSelfAttention(m)
        self.mlp = MLP(m)
        self.attn_scale = mx.ones((m.model_dim,))
        self.mlp_scale = mx.ones((m.model_dim,))
        self.resid_mix = mx.stack([mx.ones((m.model_dim,)), mx.zeros((m.model_dim,))])

    def __call__(self, x: mx.array, x0: mx.array) -> mx.array:
        mix = self.resid_mix.astype(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.astype(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.astype(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, m: ModelConfig, compute_dtype: mx.Dtype = mx.float32):
        super().__init__()
        self.cfg, self.compute_dtype = m, compute_dtype
        self.tok_emb = nn.Embedding(m.vocab_size, m.model_dim)
        if not m.tie_embeddings:
            self.lm_head = CastedLinear(m.model_dim, m.vocab_size)
        self.skip_weights = mx.ones((m.num_skip_weights, m.model_dim))
        self.blocks = [Block(m) for _ in range(m.num_layers)]

    def hidden(self, idx: mx.array) -> mx.array:
        x = rms_norm(self.tok_emb(idx).astype(self.compute_dtype))
        x0 = x
        n_enc = self.cfg.num_encoder_layers
        skips = []
        for block in self.blocks[:n_enc]:  # encoder half: remember each output
            x = block(x, x0)
            skips.append(x)
        for i, block in enumerate(self.blocks[n_enc:]):  # decoder half: add them back, last first
            if skips:
                x = x + self.skip_weights[i].astype(x.dtype) * skips.pop()
            x = block(x, x0)
        return rms_norm(x)

    def logits(self, idx: mx.array) -> mx.array:
        x = self.hidden(idx)
        if self.cfg.tie_embeddings:
            logits = x @ self.tok_emb.weight.astype(x.dtype).T
        else:
            logits = self.lm_head(x)
        cap = self.cfg.logit_softcap
        return cap * mx.tanh(logits.astype(mx.float32) / cap)

    def __call__(self, idx: mx.array, targets: mx.array, reduction: str = "mean") -> mx.array:
        """Cross-entropy in float32 nats: the mean (training) or the sum (evaluation)."""
        return nn.losses.cross_entropy(self.logits(idx), targets, reduction=reduction)


def to_mx(params: dict[str, np.ndarray]) -> dict[str, mx.array]:
    return {k: mx.array(np.asarray(v, dtype=np.float32)) for k, v in params.items()}


def to_numpy(params: dict[str, mx.array]) -> dict[str, np.ndarray]:
    mx.eval(params)
    return {k: np.array(v.astype(mx.float32)) for k, v in params.items()}


def load_params(model: GPT, params: dict[str, np.ndarray] | dict[str, mx.array], source: str = "params") -> None:
    """Set every weight from a canonical dict (names and shapes are checked first)."""
    check_params({k: np.empty(tuple(v.shape), dtype=np.uint8) for k, v in params.items()}, model.cfg, source)
    arrays = params if all(isinstance(v, mx.array) for v in params.values()) else to_mx(params)
    model.update(tree_unflatten(list(arrays.items())))


def flat_params(model: GPT) -> dict[str, mx.array]:
    """The model's weights as a flat canonical dict, in shared.core.spec order."""
    flat = dict(tree_flatten(model.parameters()))
    return {k: flat[k] for k in param_shapes(model.cfg)}


def export_params(model: GPT) -> dict[str, np.ndarray]:
    return to_numpy(flat_params(model))


def build_model(m: ModelConfig, params: dict[str, np.ndarray], compute_dtype: mx.Dtype = mx.float32) -> GPT:
    model = GPT(m, compute_dtype)
    load_params(model, params)
    return model
