"""The GPT of shared/core/spec.py as a single-device `nn.Module`.

Parameter names and layouts are the canonical ones (`shared.core.spec`): the
module is built empty, filled with `load_params` from a numpy dict (strict:
every name present, no extras, shapes checked) and exported back with
`export_params`. No `torch.distributed` here: DDP and `torch.compile` are
applied by `train.py`.

Forward pass (the challenge's reference): tok_emb -> rms_norm -> x0; the
first half of the blocks store skips, the second half add
`skip_weights[i] * skips.pop()` before each block; final rms_norm; tied
(or separate) head; tanh softcap; cross-entropy in float32. Weights stay
float32 (master copies); on CUDA the trainer runs this under bf16 autocast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.core.config import ModelConfig
from shared.core.spec import RMS_EPS, check_params, param_shapes


def rms_norm(x: Tensor) -> Tensor:
    # The eps is pinned (shared.core.spec.RMS_EPS) so that both backends normalise identically.
    return F.rms_norm(x, (x.size(-1),), eps=RMS_EPS)


class Rotary(nn.Module):
    """cos/sin tables for half-split RoPE, built in fp32 and cached per sequence length."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        # A plain tensor, not a buffer: nothing for state_dict, nothing for DDP to broadcast.
        self.inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = m.num_heads, m.num_kv_heads, m.head_dim
        self.c_q = nn.Linear(m.model_dim, m.model_dim, bias=False)
        self.c_k = nn.Linear(m.model_dim, m.kv_dim, bias=False)
        self.c_v = nn.Linear(m.model_dim, m.kv_dim, bias=False)
        self.proj = nn.Linear(m.model_dim, m.model_dim, bias=False)
        self.q_gain = nn.Parameter(torch.empty(m.num_heads))
        self.rotary = Rotary(m.head_dim, m.rope_base)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q = self.c_q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)  # QK-norm over the head dimension
        cos, sin = self.rotary(t, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        # GQA without repeating K/V: SDPA broadcasts the KV heads (flash kernel on CUDA).
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(m.model_dim, m.hidden_dim, bias=False)
        self.proj = nn.Linear(m.hidden_dim, m.model_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.attn = CausalSelfAttention(m)
        self.mlp = MLP(m)
        self.attn_scale = nn.Parameter(torch.empty(m.model_dim))
        self.mlp_scale = nn.Parameter(torch.empty(m.model_dim))
        self.resid_mix = nn.Parameter(torch.empty(2, m.model_dim))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.cfg = m
        self.tok_emb = nn.Embedding(m.vocab_size, m.model_dim)
        self.lm_head = None if m.tie_embeddings else nn.Linear(m.model_dim, m.vocab_size, bias=False)
        self.skip_weights = nn.Parameter(torch.empty(m.num_skip_weights, m.model_dim))
        self.blocks = nn.ModuleList(Block(m) for _ in range(m.num_layers))

    def hidden(self, idx: Tensor) -> Tensor:
        """Final normalised hidden states [batch, seq, dim]."""
        m = self.cfg
        x = self.tok_emb(idx)
        if torch.is_autocast_enabled(x.device.type):  # the residual stream in the compute dtype, as the reference
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = rms_norm(x)
        x0, skips = x, []
        for i in range(m.num_encoder_layers):
            x = self.blocks[i](x, x0)
            skips.append(x)
        for i in range(m.num_decoder_layers):
            if skips:  # U-Net: the last stored skip feeds the first decoder block
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = self.blocks[m.num_encoder_layers + i](x, x0)
        return rms_norm(x)

    def logits(self, idx: Tensor) -> Tensor:
        h = self.hidden(idx)
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(F.linear(h, w.to(h.dtype)) / cap)

    def forward(self, idx: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy in nats (`mean` over tokens, or their `sum`), computed in float32."""
        logits = self.logits(idx)
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
    """The canonical float32 numpy dict, in `shared.core.spec` order."""
    own = dict(model.named_parameters())
    return {k: own[k].detach().to("cpu", torch.float32).numpy().copy() for k in param_shapes(model.cfg)}
