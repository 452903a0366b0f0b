"""The GPT of shared/core/spec.py as an MLX `nn.Module` (single device).

The challenge's naive baseline: GQA attention with QK RMSNorm, RoPE and a
learned per-head q gain; relu^2 MLP; U-Net skips with learned per-channel
weights; a residual mix with the first-layer input x0; per-block attn/mlp
output scales; tied embeddings; tanh logit softcap. The record stack's
options (`ModelConfig`, README "The record stack") each have a helper of the same name
in cuda_train/model.py: `smear`, partial RoPE (`rope_dims`), `xsa`, the
attention output `gate`, `leaky_relu2`, `ln_scale`, gated skips
(`skip_merge`), depth recurrence (`layer_order`) and parallel lanes
(`Block.parallel`).

Module attribute names are the canonical parameter names, so
`tree_flatten(model.parameters())` yields exactly the parameter table
and weights cross the backend boundary as plain `name -> array` dicts
(`load_params` / `export_params`). Weights stay float32 (the optimizer's
master copy); each layer casts them to the compute dtype of its input.
"""

from __future__ import annotations

import math

# isort: off
# isort: on
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.core.config import ModelConfig
from shared.core.spec import (
    BOS_ID,
    LANE_SCALE_INIT,
    LEAKY_SLOPE,
    RMS_EPS,
    XSA_EPS,
    check_params,
    param_shapes,
)


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


def doc_segments(idx: mx.array, max_len: int = 0) -> mx.array:
    """Segment ids [b, t] of document-isolated attention, as shared.core.spec.doc_segments: a new segment
    at each row start, at every BOS and every `max_len` tokens into a document."""
    pos = mx.broadcast_to(mx.arange(idx.shape[1]), idx.shape)
    is_doc = (idx == BOS_ID) | (pos == 0)
    start = is_doc
    if max_len > 0:
        doc_start = mx.cummax(mx.where(is_doc, pos, 0), axis=1)
        start = is_doc | ((pos - doc_start) % max_len == 0)
    return mx.cumsum(start.astype(mx.int32), axis=1) - 1


def segment_attention(q: mx.array, k: mx.array, v: mx.array, seg: mx.array, max_len: int, scale: float) -> mx.array:
    """Causal attention within segments (q [b, h, t, d], k/v [b, kv, t, d], seg [b, t]) with a mask.
    When segments are at most `max_len` long and t is longer than 2 * max_len, queries go in blocks of
    max_len that see only their own and the previous block's keys: memory ~2x causal attention, not t^2."""
    b, h, t, d = q.shape
    if not max_len or t <= 2 * max_len:
        pos = mx.arange(t)
        mask = (seg[:, None, :, None] == seg[:, None, None, :]) & (pos[:, None] >= pos[None, :])
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    c, n = max_len, -(-t // max_len)
    pad = n * c - t
    if pad:  # padded keys get segment -1 (no query attends to them); padded queries are dropped
        q, k, v = (mx.pad(z, [(0, 0), (0, 0), (0, pad), (0, 0)]) for z in (q, k, v))
        seg = mx.pad(seg, [(0, 0), (0, pad)], constant_values=-1)

    def blocks(z: mx.array) -> mx.array:  # [b, heads, n*c, d] -> [b, n, heads, c, d]
        return z.reshape(b, z.shape[1], n, c, d).transpose(0, 2, 1, 3, 4)

    def with_prev(z: mx.array) -> mx.array:  # [b, n, heads, c, d]: each block's keys, the previous block's then its own
        kv = blocks(z)
        prev = mx.concatenate([mx.zeros_like(kv[:, :1]), kv[:, :-1]], axis=1)
        return mx.concatenate([prev, kv], axis=3).reshape(b * n, z.shape[1], 2 * c, d)

    sq = seg.reshape(b, n, c)
    sk = mx.concatenate([mx.concatenate([mx.full(sq[:, :1].shape, -2, sq.dtype), sq[:, :-1]], axis=1), sq], axis=2)
    qpos = mx.arange(c) + c
    mask = (sq[..., :, None] == sk[..., None, :]) & (qpos[:, None] >= mx.arange(2 * c)[None, :])
    y = mx.fast.scaled_dot_product_attention(blocks(q).reshape(b * n, h, c, d), with_prev(k), with_prev(v),
                                             scale=scale, mask=mask.reshape(b * n, 1, c, 2 * c))
    return y.reshape(b, n, h, c, d).transpose(0, 2, 1, 3, 4).reshape(b, h, n * c, d)[:, :, :t]


def adapt(lora: dict | None, kind: str, x: mx.array, out: mx.array) -> mx.array:
    """`out` plus the test-time LoRA adapter `kind` of this site applied to `x` (mlx_train/lora.py), if any."""
    return out if lora is None or kind not in lora else out + lora[kind](x)


def xsa(y: mx.array, v: mx.array) -> mx.array:
    """Exclusive self-attention (#1855): remove from each head's output y [b, h, t, d] its component
    along its own position's unit value vector v [b, kv, t, d] (GQA: each KV head serves h/kv heads)."""
    b, h, t, d = y.shape
    kv = v.shape[1]
    vn = v * mx.rsqrt(mx.sum(v * v, axis=-1, keepdims=True) + XSA_EPS)
    yg = y.reshape(b, kv, h // kv, t, d)
    vn = vn[:, :, None]
    return (yg - mx.sum(yg * vn, axis=-1, keepdims=True) * vn).reshape(b, h, t, d)


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelConfig, layer: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = m.num_heads, m.num_kv_heads, m.head_dim
        self.rope_base, self.rope_dims = m.rope_base, m.rotary_dims
        self.use_xsa = layer >= m.num_layers - m.xsa_last_n
        self.gate_dims, self.gate_scale = m.gate_dims, m.attn_gate_scale
        self.c_q = CastedLinear(m.model_dim, m.model_dim)
        self.c_k = CastedLinear(m.model_dim, m.kv_dim)
        self.c_v = CastedLinear(m.model_dim, m.kv_dim)
        self.proj = CastedLinear(m.model_dim, m.model_dim)
        self.q_gain = mx.full((m.num_heads,), m.qk_gain_init)
        if m.attn_gate:
            self.gate = mx.zeros((m.num_heads, m.gate_dims))

    def _rope(self, x: mx.array) -> mx.array:
        # Half-split (non-interleaved) RoPE on the first rope_dims dims of each head (the rest pass
        # through). The reference PyTorch code rotates by -pos * theta (y1 = x1 cos + x2 sin,
        # y2 = x2 cos - x1 sin); a position scale of -1 makes mx.fast.rope compute exactly that.
        return mx.fast.rope(x, self.rope_dims, traditional=False, base=self.rope_base, scale=-1.0, offset=0)

    def __call__(self, x: mx.array, docs: tuple[mx.array, int] | None = None, lora: dict | None = None) -> mx.array:
        b, t, d = x.shape
        q = adapt(lora, "q", x, self.c_q(x)).reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = adapt(lora, "k", x, self.c_k(x)).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = adapt(lora, "v", x, self.c_v(x)).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q, k = self._rope(rms_norm(q)), self._rope(rms_norm(k))
        q = q * self.q_gain.astype(q.dtype)[None, :, None, None]
        # The fused kernel handles GQA (fewer KV heads) without repeating k and v.
        if docs is None:
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask="causal")
        else:
            y = segment_attention(q, k, v, docs[0], docs[1], 1.0 / math.sqrt(self.head_dim))
        if self.use_xsa:
            y = xsa(y, v)
        if "gate" in self:  # sparse attention output gate (#1855): per head, from the first residual dims
            g = mx.sigmoid(self.gate_scale * (x[..., : self.gate_dims] @ self.gate.astype(x.dtype).T))
            y = y * g.transpose(0, 2, 1)[..., None]
        y = y.transpose(0, 2, 1, 3).reshape(b, t, d)
        return adapt(lora, "o_in", x, adapt(lora, "o", y, self.proj(y)))  # "o_in": from the block's input (#1855)


def leaky_relu2(x: mx.array) -> mx.array:
    return mx.square(nn.leaky_relu(x, LEAKY_SLOPE))


class MLP(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.fc = CastedLinear(m.model_dim, m.hidden_dim)
        self.proj = CastedLinear(m.hidden_dim, m.model_dim)
        self.act = leaky_relu2 if m.activation == "leaky_relu2" else (lambda h: mx.square(nn.relu(h)))

    def __call__(self, x: mx.array, lora: dict | None = None) -> mx.array:
        h = self.act(adapt(lora, "fc", x, self.fc(x)))
        return adapt(lora, "mlp", x, adapt(lora, "proj", h, self.proj(h)))  # "mlp": dim -> dim beside it (#1855)


class Block(nn.Module):
    def __init__(self, m: ModelConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(m, layer)
        self.mlp = MLP(m)
        self.attn_scale = mx.ones((m.model_dim,))
        self.mlp_scale = mx.ones((m.model_dim,))
        self.resid_mix = mx.stack([mx.ones((m.model_dim,)), mx.zeros((m.model_dim,))])
        self.ln = 1.0 / math.sqrt(layer + 1) if m.ln_scale else 1.0  # layer-norm scale (#1855)

    def norm(self, x: mx.array) -> mx.array:
        return rms_norm(x) * self.ln if self.ln != 1.0 else rms_norm(x)

    def __call__(self, x: mx.array, x0: mx.array, docs: tuple[mx.array, int] | None = None,
                 lora: dict | None = None) -> mx.array:
        mix = self.resid_mix.astype(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.astype(x.dtype) * self.attn(self.norm(x), docs, lora)
        return x + self.mlp_scale.astype(x.dtype) * self.mlp(self.norm(x), lora)

    def parallel(self, lanes: tuple[mx.array, mx.array], x0: mx.array, route: mx.array, scale: mx.array,
                 docs: tuple[mx.array, int] | None = None, lora: dict | None = None) -> tuple[mx.array, mx.array]:
        """Parallel residual lanes (#1855): attention reads lane 0 (mixed with x0), the MLP lane 1;
        both outputs are routed into both lanes by `route` [2 sources, 2 lanes], lanes scaled by `scale`."""
        lane0, lane1 = lanes
        mix, route, scale = self.resid_mix.astype(lane0.dtype), route.astype(lane0.dtype), scale.astype(lane0.dtype)
        a = self.attn_scale.astype(lane0.dtype) * self.attn(self.norm(mix[0] * lane0 + mix[1] * x0), docs, lora)
        f = self.mlp_scale.astype(lane0.dtype) * self.mlp(self.norm(lane1), lora)
        return (scale[0] * lane0 + route[0, 0] * a + route[1, 0] * f,
                scale[1] * lane1 + route[0, 1] * a + route[1, 1] * f)


class Smear(nn.Module):
    """SmearGate (#1855): x_t += lam * sigmoid(w . x_t[:gate_dims]) * x_{t-1}, zeroed where token t is BOS."""

    def __init__(self, m: ModelConfig):
        super().__init__()
        self.gate_dims = m.gate_dims
        self.weight = mx.zeros((1, m.gate_dims))
        self.lam = mx.zeros((1,))
        self.bos_mask = m.smear_bos_mask

    def __call__(self, x: mx.array, idx: mx.array) -> mx.array:
        g = self.lam.astype(x.dtype) * mx.sigmoid(x[..., : self.gate_dims] @ self.weight.astype(x.dtype).T)
        prev = mx.concatenate([mx.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
        if not self.bos_mask:  # #2135 ran with the smear crossing BOS (SMEAR_GATE_BOS_FIX=0)
            return x + g * prev
        keep = (idx != BOS_ID)[..., None].astype(x.dtype)  # a document never reads the previous one
        return x + keep * g * prev


def skip_merge(x: mx.array, skip: mx.array, w: mx.array, g: mx.array | None) -> mx.array:
    """U-Net skip: x + w * skip, or with a gate (#1855) lerp(w * skip, x, sigmoid(g))."""
    s = w.astype(x.dtype) * skip
    if g is None:
        return x + s
    return s + mx.sigmoid(g.astype(x.dtype)) * (x - s)


class GPT(nn.Module):
    def __init__(self, m: ModelConfig, compute_dtype: mx.Dtype = mx.float32):
        super().__init__()
        self.cfg, self.compute_dtype = m, compute_dtype
        self.tok_emb = nn.Embedding(m.vocab_size, m.model_dim)
        if not m.tie_embeddings:
            self.lm_head = CastedLinear(m.model_dim, m.vocab_size)
        self.skip_weights = mx.ones((m.num_skip_weights, m.model_dim))
        if m.skip_gates:
            self.skip_gates = mx.zeros((m.num_skip_weights, m.model_dim))
        if m.parallel_from >= 0:
            self.lane_route = mx.ones((m.num_layers, 2, 2))
            self.lane_scale = mx.full((m.num_layers, 2), LANE_SCALE_INIT)
        if m.asym_logit:
            self.softcap_pos = mx.full((1,), m.logit_softcap)
            self.softcap_neg = mx.full((1,), m.logit_softcap)
        if m.smear_gate:
            self.smear = Smear(m)
        self.blocks = [Block(m, i) for i in range(m.num_layers)]

    def hidden(self, idx: mx.array, looped: bool | None = None, seg_len: int = 0, lora=None) -> mx.array:
        """Final normalised hidden states; `looped` picks the depth-recurrence order (default: on if configured),
        `seg_len` the document segment cap (default model.doc_max_len; train.seq_schedule grows it);
        `lora` (mlx_train/lora.py `Adapters`) gives test-time adapters per layer or per slot of the order."""
        m = self.cfg
        x = self.tok_emb(idx).astype(self.compute_dtype)
        if m.smear_gate:
            x = self.smear(x, idx)
        x = rms_norm(x)
        x0 = x
        cap = seg_len or m.doc_max_len
        docs = (doc_segments(idx, cap), cap) if m.doc_attention else None
        order = m.layer_order(looped)
        n_enc = len(order) // 2
        skips: list[mx.array] = []
        lanes: tuple[mx.array, mx.array] | None = None
        gates = self.skip_gates if m.skip_gates else None
        for j, i in enumerate(order):
            if lanes is None and j >= n_enc and m.lanes_from(i):
                lanes = (x, x)  # parallel lanes (#1855) start in the decoder, both from x, before the skip
            if j >= n_enc and skips:  # U-Net: the last stored skip feeds the first decoder step
                k = j - n_enc
                g = None if gates is None else gates[k]
                if lanes is None:
                    x = skip_merge(x, skips.pop(), self.skip_weights[k], g)
                else:  # the record adds the skip to lane 0 (the attention lane) only
                    lanes = (skip_merge(lanes[0], skips.pop(), self.skip_weights[k], g), lanes[1])
            site = None if lora is None else lora.site(i, j)
            if lanes is None:
                x = self.blocks[i](x, x0, docs, site)
            else:
                lanes = self.blocks[i].parallel(lanes, x0, self.lane_route[i], self.lane_scale[i], docs, site)
            if j < n_enc:
                skips.append(x)
        if lanes is not None:
            x = 0.5 * (lanes[0] + lanes[1])
        return rms_norm(x)

    def logits(self, idx: mx.array, looped: bool | None = None, seg_len: int = 0, lora=None) -> mx.array:
        return self.head(self.hidden(idx, looped, seg_len, lora), lora)

    def head(self, x: mx.array, lora=None) -> mx.array:
        """Softcapped float32 logits of final hidden states x [batch, positions, dim] (any subset of positions)."""
        if self.cfg.tie_embeddings:
            logits = x @ self.tok_emb.weight.astype(x.dtype).T
        else:
            logits = self.lm_head(x)
        if lora is not None:
            logits = adapt(lora.sites.get("head"), "head", x, logits)
        return self.softcap(logits.astype(mx.float32))

    def softcap(self, z: mx.array) -> mx.array:
        """cap * tanh(z / cap); with AsymLogit (#1923) a learned cap for each sign."""
        if not self.cfg.asym_logit:
            cap = self.cfg.logit_softcap
            return cap * mx.tanh(z / cap)
        pos, neg = self.softcap_pos.astype(z.dtype), self.softcap_neg.astype(z.dtype)
        return mx.where(z >= 0, pos * mx.tanh(z / pos), neg * mx.tanh(z / neg))

    def __call__(self, idx: mx.array, targets: mx.array, reduction: str = "mean", looped: bool | None = None,
                 seg_len: int = 0) -> mx.array:
        """Cross-entropy in float32 nats: the mean (training) or the sum (evaluation)."""
        return nn.losses.cross_entropy(self.logits(idx, looped, seg_len), targets, reduction=reduction)


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
    """The model's weights as a flat canonical dict, in parameter-table order."""
    flat = dict(tree_flatten(model.parameters()))
    return {k: flat[k] for k in param_shapes(model.cfg)}


def export_params(model: GPT) -> dict[str, np.ndarray]:
    return to_numpy(flat_params(model))


def build_model(m: ModelConfig, params: dict[str, np.ndarray], compute_dtype: mx.Dtype = mx.float32) -> GPT:
    model = GPT(m, compute_dtype)
    load_params(model, params)
    return model
