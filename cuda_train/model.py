"""The GPT of shared/core/spec.py as a single-device `nn.Module`.

Parameter names and layouts are the canonical ones (the parameter table of
`shared.core.spec`): the module is built empty, filled with `load_params`
from a numpy dict (strict: every name present, no extras, shapes checked)
and exported back with `export_params`. No `torch.distributed` here: DDP and
`torch.compile` are applied by `session.py`.

Forward pass (the challenge's reference): tok_emb -> rms_norm -> x0; the
first half of the blocks store skips, the second half add
`skip_weights[i] * skips.pop()` before each block; final rms_norm; tied
(or separate) head; tanh softcap; cross-entropy in float32. The record
stack's options (`ModelConfig`, README "The record stack") each have a helper of the
same name in mlx_train/model.py: `smear`, partial RoPE (`rope_dims`), `xsa`,
the attention output `gate`, `leaky_relu2`, `ln_scale`, gated skips
(`skip_merge`), depth recurrence (`layer_order`) and parallel lanes
(`Block.parallel`). Weights stay float32 (master copies); on CUDA the
session runs this under bf16 autocast. Attention is SDPA (flash on CUDA),
or FlashAttention 3 when `flash_attn_interface` is importable on a GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.core.config import ModelConfig
from shared.core.spec import (
    BOS_ID,
    LEAKY_SLOPE,
    RMS_EPS,
    XSA_EPS,
    check_params,
    param_shapes,
)

try:  # FlashAttention 3 (Hopper); the official pod image lacks it, SDPA's flash kernel is the fallback
    from flash_attn_interface import flash_attn_func as _fa3
    from flash_attn_interface import flash_attn_varlen_func as _fa3_varlen
except ImportError:  # pragma: no cover - depends on the machine
    _fa3 = _fa3_varlen = None


def attention_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """Which attention kernel the model uses here: "fa3" or "sdpa" (the log says which)."""
    return "fa3" if _fa3 is not None and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) else "sdpa"


def varlen_ready(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether document-isolated attention runs FA3's varlen kernel here (else SDPA with a segment mask)."""
    return _fa3_varlen is not None and attention_kernel(device, dtype) == "fa3"


def rms_norm(x: Tensor) -> Tensor:
    # The eps is pinned (shared.core.spec.RMS_EPS) so that both backends normalise identically.
    return F.rms_norm(x, (x.size(-1),), eps=RMS_EPS)


class Rotary(nn.Module):
    """cos/sin tables for half-split RoPE over the first `dims` of a head, built in fp32, cached per length."""

    def __init__(self, dims: int, base: float):
        super().__init__()
        # A plain tensor, not a buffer: nothing for state_dict, nothing for DDP to broadcast.
        self.inv_freq = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():   # in the graph, uncached: a dynamic seq_len stays one symbolic size
            freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), self.inv_freq.to(device))
            return freqs.cos()[None, None].to(dtype), freqs.sin()[None, None].to(dtype)
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first 2 * cos.size(-1) dims of x (partial RoPE); the rest pass through."""
    r = 2 * cos.size(-1)
    xr, rest = (x, None) if r == x.size(-1) else (x[..., :r], x[..., r:])
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    out = torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)
    return out if rest is None else torch.cat((out, rest), dim=-1)


def doc_segments(idx: Tensor, max_len: int = 0) -> Tensor:
    """Segment ids [b, t] of document-isolated attention, as shared.core.spec.doc_segments: a new segment
    at each row start, at every BOS and every `max_len` tokens into a document."""
    pos = torch.arange(idx.size(1), device=idx.device).expand_as(idx)
    is_doc = (idx == BOS_ID) | (pos == 0)
    start = is_doc
    if max_len > 0:
        doc_start = torch.cummax(torch.where(is_doc, pos, 0), dim=1).values
        start = is_doc | ((pos - doc_start) % max_len == 0)
    return torch.cumsum(start.to(torch.int32), dim=1) - 1


def segment_attention(q: Tensor, k: Tensor, v: Tensor, seg: Tensor, max_len: int) -> Tensor:
    """Causal attention within segments (q [b, h, t, d], k/v [b, kv, t, d], seg [b, t]) with SDPA and a mask.
    When segments are at most `max_len` long and t is longer than 2 * max_len, queries go in blocks of
    max_len that see only their own and the previous block's keys: memory ~2x causal attention, not t^2."""
    b, h, t, d = q.shape
    gqa = k.size(1) != h
    if not max_len or t <= 2 * max_len:
        pos = torch.arange(t, device=q.device)
        mask = (seg[:, None, :, None] == seg[:, None, None, :]) & (pos[:, None] >= pos[None, :])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    c, n = max_len, -(-t // max_len)
    pad = n * c - t
    if pad:  # padded keys get segment -1 (no query attends to them); padded queries are dropped
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        seg = F.pad(seg, (0, pad), value=-1)

    def blocks(z: Tensor) -> Tensor:  # [b, heads, n*c, d] -> [b*n, heads, c, d]
        return z.reshape(b, z.size(1), n, c, d).transpose(1, 2).reshape(b * n, z.size(1), c, d)

    def with_prev(z: Tensor) -> Tensor:  # [b, n, heads, c, d]: each block's keys, the previous block's then its own
        return torch.cat((torch.cat((torch.zeros_like(z[:, :1]), z[:, :-1]), 1), z), 3)

    kb = with_prev(k.reshape(b, k.size(1), n, c, d).transpose(1, 2)).reshape(b * n, k.size(1), 2 * c, d)
    vb = with_prev(v.reshape(b, v.size(1), n, c, d).transpose(1, 2)).reshape(b * n, v.size(1), 2 * c, d)
    sq = seg.reshape(b, n, c)
    sk = torch.cat((torch.cat((torch.full_like(sq[:, :1], -2), sq[:, :-1]), 1), sq), 2)
    qpos = torch.arange(c, device=q.device) + c
    mask = (sq[..., :, None] == sk[..., None, :]) & (qpos[:, None] >= torch.arange(2 * c, device=q.device))
    y = F.scaled_dot_product_attention(blocks(q), kb, vb, attn_mask=mask.reshape(b * n, 1, c, 2 * c), enable_gqa=gqa)
    return y.reshape(b, n, h, c, d).transpose(1, 2).reshape(b, h, n * c, d)[:, :, :t]


def adapt(lora: dict | None, kind: str, x: Tensor, out: Tensor) -> Tensor:
    """`out` plus the test-time LoRA adapter `kind` of this site applied to `x` (cuda_train/lora.py), if any."""
    return out if lora is None or kind not in lora else out + lora[kind](x)


def xsa(y: Tensor, v: Tensor) -> Tensor:
    """Exclusive self-attention (#1855): remove from each head's output y [b, h, t, d] its component
    along its own position's unit value vector v [b, kv, t, d] (GQA: each KV head serves h/kv heads)."""
    b, h, t, d = y.shape
    kv = v.size(1)
    vn = v * torch.rsqrt((v * v).sum(-1, keepdim=True) + XSA_EPS)
    yg = y.reshape(b, kv, h // kv, t, d)
    vn = vn[:, :, None]
    return (yg - (yg * vn).sum(-1, keepdim=True) * vn).reshape(b, h, t, d)


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelConfig, layer: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = m.num_heads, m.num_kv_heads, m.head_dim
        self.use_xsa = layer >= m.num_layers - m.xsa_last_n
        self.doc_attention = m.doc_attention  # a constant: the generated script leaves the branch out when off
        self.gate_dims, self.gate_scale = m.gate_dims, m.attn_gate_scale
        self.c_q = nn.Linear(m.model_dim, m.model_dim, bias=False)
        self.c_k = nn.Linear(m.model_dim, m.kv_dim, bias=False)
        self.c_v = nn.Linear(m.model_dim, m.kv_dim, bias=False)
        self.proj = nn.Linear(m.model_dim, m.model_dim, bias=False)
        self.q_gain = nn.Parameter(torch.empty(m.num_heads))
        self.gate = nn.Parameter(torch.empty(m.num_heads, m.gate_dims)) if m.attn_gate else None
        self.rotary = Rotary(m.rotary_dims, m.rope_base)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, docs: tuple[Tensor, int, Tensor | None] | None) -> Tensor:
        if self.doc_attention and docs is not None:
            seg, cap, cu = docs
            if varlen_ready(q.device, q.dtype):  # FA3 varlen (#1855): the rows laid end to end, one stream
                b, h, t, d = q.shape
                if cu is None:  # found on the device: one host sync, and no torch.compile(fullgraph=True)
                    cu = torch.nonzero(F.pad(seg[:, 1:] != seg[:, :-1], (1, 0), value=True).flatten()).flatten()
                    cu = F.pad(cu, (0, 1), value=b * t).to(torch.int32)
                flat = [z.transpose(1, 2).reshape(b * t, z.size(1), d) for z in (q, k, v)]
                out = _fa3_varlen(*flat, cu, cu, cap or t, cap or t, causal=True)
                return (out[0] if isinstance(out, tuple) else out).reshape(b, t, h, d).transpose(1, 2)
            return segment_attention(q, k, v, seg, cap)
        if _fa3 is not None and attention_kernel(q.device, q.dtype) == "fa3":
            out = _fa3(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)
        # GQA without repeating K/V: SDPA broadcasts the KV heads (flash kernel on CUDA).
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)

    def forward(self, x: Tensor, docs: tuple[Tensor, int, Tensor | None] | None = None, lora: dict | None = None) -> Tensor:
        b, t, d = x.shape
        q = adapt(lora, "q", x, self.c_q(x)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = adapt(lora, "k", x, self.c_k(x)).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = adapt(lora, "v", x, self.c_v(x)).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)  # QK-norm over the head dimension
        cos, sin = self.rotary(t, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = self._attend(q, k, v, docs)
        if self.use_xsa:
            y = xsa(y, v)
        if self.gate is not None:  # sparse attention output gate (#1855): per head, from the first residual dims
            g = torch.sigmoid(self.gate_scale * F.linear(x[..., : self.gate_dims], self.gate.to(x.dtype)))
            y = y * g.transpose(1, 2)[..., None]
        y = y.transpose(1, 2).reshape(b, t, d)
        return adapt(lora, "o_in", x, adapt(lora, "o", y, self.proj(y)))  # "o_in": from the block's input (#1855)


def leaky_relu2(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE).square()


class MLP(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(m.model_dim, m.hidden_dim, bias=False)
        self.proj = nn.Linear(m.hidden_dim, m.model_dim, bias=False)
        self.leaky = m.activation == "leaky_relu2"
        self.fused = None  # cuda_train/kernels.py `leaky_mlp` once GPT.use_fused_kernels ran (training only)

    def forward(self, x: Tensor, lora: dict | None = None) -> Tensor:
        if self.fused is not None and lora is None and self.training:
            dev = x.device.type  # the weights in the autocast dtype, as F.linear would take them
            dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
            return self.fused(x.to(dt), self.fc.weight.to(dt), self.proj.weight.to(dt),
                              LEAKY_SLOPE if self.leaky else 0.0)
        h = adapt(lora, "fc", x, self.fc(x))
        h = leaky_relu2(h) if self.leaky else F.relu(h).square()
        return adapt(lora, "mlp", x, adapt(lora, "proj", h, self.proj(h)))  # "mlp": dim -> dim beside it (#1855)


class Block(nn.Module):
    def __init__(self, m: ModelConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(m, layer)
        self.mlp = MLP(m)
        self.attn_scale = nn.Parameter(torch.empty(m.model_dim))
        self.mlp_scale = nn.Parameter(torch.empty(m.model_dim))
        self.resid_mix = nn.Parameter(torch.empty(2, m.model_dim))
        self.ln = 1.0 / math.sqrt(layer + 1) if m.ln_scale else 1.0  # layer-norm scale (#1855)

    def norm(self, x: Tensor) -> Tensor:
        return rms_norm(x) * self.ln if self.ln != 1.0 else rms_norm(x)

    def forward(self, x: Tensor, x0: Tensor, docs: tuple[Tensor, int, Tensor | None] | None = None, lora: dict | None = None
                ) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(self.norm(x), docs, lora)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self.norm(x), lora)

    def parallel(self, lanes: tuple[Tensor, Tensor], x0: Tensor, route: Tensor, scale: Tensor,
                 docs: tuple[Tensor, int, Tensor | None] | None = None, lora: dict | None = None) -> tuple[Tensor, Tensor]:
        """Parallel residual lanes (#1855): attention reads lane 0 (mixed with x0), the MLP lane 1;
        both outputs are routed into both lanes by `route` [2 sources, 2 lanes], lanes scaled by `scale`."""
        lane0, lane1 = lanes
        mix, route, scale = self.resid_mix.to(lane0.dtype), route.to(lane0.dtype), scale.to(lane0.dtype)
        a = self.attn_scale.to(lane0.dtype) * self.attn(self.norm(mix[0] * lane0 + mix[1] * x0), docs, lora)
        f = self.mlp_scale.to(lane0.dtype) * self.mlp(self.norm(lane1), lora)
        return (scale[0] * lane0 + route[0, 0] * a + route[1, 0] * f,
                scale[1] * lane1 + route[0, 1] * a + route[1, 1] * f)


class Smear(nn.Module):
    """SmearGate (#1855): x_t += lam * sigmoid(w . x_t[:gate_dims]) * x_{t-1}, zeroed where token t is BOS."""

    def __init__(self, m: ModelConfig):
        super().__init__()
        self.gate_dims = m.gate_dims
        self.weight = nn.Parameter(torch.empty(1, m.gate_dims))
        self.lam = nn.Parameter(torch.empty(1))
        self.bos_mask = m.smear_bos_mask

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        g = self.lam.to(x.dtype) * torch.sigmoid(F.linear(x[..., : self.gate_dims], self.weight.to(x.dtype)))
        prev = torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)
        if not self.bos_mask:  # #2135 ran with the smear crossing BOS (SMEAR_GATE_BOS_FIX=0)
            return x + g * prev
        keep = (idx != BOS_ID)[..., None].to(x.dtype)  # a document never reads the previous one
        return x + keep * g * prev


def skip_merge(x: Tensor, skip: Tensor, w: Tensor, g: Tensor | None) -> Tensor:
    """U-Net skip: x + w * skip, or with a gate (#1855) lerp(w * skip, x, sigmoid(g))."""
    s = w.to(x.dtype) * skip
    if g is None:
        return x + s
    return s + torch.sigmoid(g.to(x.dtype)) * (x - s)


class GPT(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.cfg = m
        self.tok_emb = nn.Embedding(m.vocab_size, m.model_dim)
        self.lm_head = None if m.tie_embeddings else nn.Linear(m.model_dim, m.vocab_size, bias=False)
        self.skip_weights = nn.Parameter(torch.empty(m.num_skip_weights, m.model_dim))
        self.skip_gates = nn.Parameter(torch.empty(m.num_skip_weights, m.model_dim)) if m.skip_gates else None
        if m.parallel_from >= 0:
            self.lane_route = nn.Parameter(torch.empty(m.num_layers, 2, 2))
            self.lane_scale = nn.Parameter(torch.empty(m.num_layers, 2))
        if m.asym_logit:
            self.softcap_pos = nn.Parameter(torch.empty(1))
            self.softcap_neg = nn.Parameter(torch.empty(1))
        self.smear = Smear(m) if m.smear_gate else None
        self.blocks = nn.ModuleList(Block(m, i) for i in range(m.num_layers))
        self.fused_ce = None  # cuda_train/kernels.py `softcap_cross_entropy` once use_fused_kernels ran

    def use_fused_kernels(self, kernels) -> None:
        """Train with the fused Triton MLP and loss of the module `kernels` (cuda_train/kernels.py): in training
        mode, without LoRA adapters; the loss only with the symmetric softcap (model.asym_logit keeps eager).
        The session calls this on CUDA only; tests call it on CPU under the Triton interpreter."""
        for block in self.blocks:
            block.mlp.fused = kernels.leaky_mlp
        self.fused_ce = None if self.cfg.asym_logit else kernels.softcap_cross_entropy

    def hidden(self, idx: Tensor, looped: bool | None = None, seg_len: int = 0, lora=None,
               cu: Tensor | None = None) -> Tensor:
        """Final normalised hidden states [batch, seq, dim]; `looped` picks the depth-recurrence order,
        `seg_len` the document segment cap (default model.doc_max_len; train.seq_schedule grows it);
        `lora` (cuda_train/lora.py `Adapters`) gives test-time adapters per layer or per slot of the order;
        `cu` the rows' segment starts from the host (shared.core.spec.segment_starts) for FA3 varlen."""
        m = self.cfg
        x = self.tok_emb(idx)
        if torch.is_autocast_enabled(x.device.type):  # the residual stream in the compute dtype, as the reference
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.smear is not None:
            x = self.smear(x, idx)
        x = rms_norm(x)
        x0 = x
        cap = seg_len or m.doc_max_len
        docs = (doc_segments(idx, cap), cap, cu) if m.doc_attention else None
        order = m.layer_order(looped)
        n_enc = len(order) // 2
        skips: list[Tensor] = []
        lanes: tuple[Tensor, Tensor] | None = None
        for j, i in enumerate(order):
            if lanes is None and j >= n_enc and m.lanes_from(i):
                lanes = (x, x)  # parallel lanes (#1855) start in the decoder, both from x, before the skip
            if j >= n_enc and skips:  # U-Net: the last stored skip feeds the first decoder step
                k = j - n_enc
                g = None if self.skip_gates is None else self.skip_gates[k]
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

    def logits(self, idx: Tensor, looped: bool | None = None, seg_len: int = 0, lora=None,
               cu: Tensor | None = None) -> Tensor:
        return self.head(self.hidden(idx, looped, seg_len, lora, cu), lora)

    def head(self, h: Tensor, lora=None) -> Tensor:
        """Softcapped logits of final hidden states h [batch, positions, dim] (any subset of positions)."""
        z = self.project(h)
        if lora is not None:
            z = adapt(lora.sites.get("head"), "head", h, z)
        return self.softcap(z)

    def project(self, h: Tensor) -> Tensor:
        """Raw (not yet softcapped) logits of final hidden states h."""
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w.to(h.dtype))

    def softcap(self, z: Tensor) -> Tensor:
        """cap * tanh(z / cap); with AsymLogit (#1923) a learned cap for each sign."""
        if not self.cfg.asym_logit:
            cap = self.cfg.logit_softcap
            return cap * torch.tanh(z / cap)
        pos, neg = self.softcap_pos.to(z.dtype), self.softcap_neg.to(z.dtype)
        return torch.where(z >= 0, pos * torch.tanh(z / pos), neg * torch.tanh(z / neg))

    def forward(self, idx: Tensor, targets: Tensor, reduction: str = "mean", looped: bool | None = None,
                seg_len: int = 0, cu: Tensor | None = None) -> Tensor:
        """Cross-entropy in nats (`mean` over tokens, or their `sum`), computed in float32."""
        if self.fused_ce is not None and self.training:  # softcap and loss in one kernel
            z = self.project(self.hidden(idx, looped, seg_len, cu=cu))
            return self.fused_ce(z.flatten(0, 1), targets.flatten(), self.cfg.logit_softcap, reduction)
        logits = self.logits(idx, looped, seg_len, cu=cu)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


def build_model(m: ModelConfig, params: dict[str, np.ndarray], device: torch.device | str = "cpu") -> GPT:
    """A GPT on `device` holding exactly the canonical `params` (float32)."""
    model = GPT(m)
    load_params(model, params)
    return model.to(device)


def load_params(model: GPT, params: dict[str, np.ndarray], source: str = "params") -> None:
    """Copy a canonical numpy dict into the module; names and shapes must match exactly."""
    check_params(params, model.cfg, source)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in params.items()}
    own = {k for k, _ in model.named_parameters()}
    if own != set(param_shapes(model.cfg)):  # the module and the spec must never drift apart
        raise AssertionError(f"GPT parameters differ from shared.core.spec: {sorted(own ^ set(param_shapes(model.cfg)))}")
    model.load_state_dict(state, strict=True)


def export_params(model: nn.Module) -> dict[str, np.ndarray]:
    """The canonical float32 numpy dict, in parameter-table order."""
    own = dict(model.named_parameters())
    return {k: own[k].detach().to("cpu", torch.float32).numpy().copy() for k in param_shapes(model.cfg)}
