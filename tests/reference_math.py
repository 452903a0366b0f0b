"""A float64 numpy forward of the challenge's baseline GPT under either reference script's
convention, written from the scripts' documented architecture (CHALLENGE.md "The naive baseline"),
not from their code. Used by tests/test_interop.py to show that an imported model keeps the loss
its source script computes, and by docs/REFERENCE.md's measurements.

    torch-ref (train_gpt.py):     RoPE (x1 cos + x2 sin, x2 cos - x1 sin), RMSNorm eps = float32 eps
    mlx-ref   (train_gpt_mlx.py): RoPE (x1 cos - x2 sin, x2 cos + x1 sin), RMSNorm eps = 1e-6

`bf16_rope_tables=True` builds the RoPE angles the way train_gpt.py does once its model is cast to
bf16: inverse frequencies, positions and their products rounded to bf16 (513 distinct positions
below 1024), then cos/sin rounded to bf16.
"""

from __future__ import annotations

import numpy as np

from shared.core.config import ModelConfig

CONVENTIONS = {"torch-ref": (+1.0, float(np.finfo(np.float32).eps)), "mlx-ref": (-1.0, 1e-6)}


def bf16_round(a: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bf16 (ties to even), returned as float64."""
    b = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def rms(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope_tables(seq_len: int, head_dim: int, base: float, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    t = np.arange(seq_len, dtype=np.float64)
    if bf16:
        inv_freq = bf16_round(inv_freq.astype(np.float32))
        freqs = bf16_round(np.outer(bf16_round(t), inv_freq))
        return bf16_round(np.cos(freqs)), bf16_round(np.sin(freqs))
    freqs = np.outer(t, inv_freq.astype(np.float32).astype(np.float64))  # the scripts' fp32 inverse frequencies
    return np.cos(freqs), np.sin(freqs)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, direction: float) -> np.ndarray:
    """direction +1: rotate by -theta (train_gpt.py, pgolf); -1: by +theta (train_gpt_mlx.py)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate((x1 * cos + direction * x2 * sin, x2 * cos - direction * x1 * sin), axis=-1)


def reference_loss(params: dict[str, np.ndarray], m: ModelConfig, x: np.ndarray, y: np.ndarray,
                   convention: str, eps: float | None = None, bf16_rope_tables: bool = False) -> float:
    """Mean cross-entropy (nats) of the baseline GPT on tokens x -> targets y ([batch, seq])."""
    direction, default_eps = CONVENTIONS[convention]
    eps = default_eps if eps is None else eps
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    bsz, t = x.shape
    hd, nh, nkv = m.head_dim, m.num_heads, m.num_kv_heads
    cos, sin = rope_tables(t, hd, m.rope_base, bf16_rope_tables)
    causal = np.tril(np.ones((t, t), dtype=bool))

    def attn(h: np.ndarray, i: int) -> np.ndarray:
        pre = f"blocks.{i}.attn."
        q = (h @ p[pre + "c_q.weight"].T).reshape(bsz, t, nh, hd).transpose(0, 2, 1, 3)
        k = (h @ p[pre + "c_k.weight"].T).reshape(bsz, t, nkv, hd).transpose(0, 2, 1, 3)
        v = (h @ p[pre + "c_v.weight"].T).reshape(bsz, t, nkv, hd).transpose(0, 2, 1, 3)
        q, k = rope(rms(q, eps), cos, sin, direction), rope(rms(k, eps), cos, sin, direction)
        q = q * p[pre + "q_gain"][None, :, None, None]
        rep = nh // nkv  # grouped-query attention: q head j reads kv head j // rep
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        s = np.where(causal, s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        o = (s / s.sum(axis=-1, keepdims=True)) @ v
        return o.transpose(0, 2, 1, 3).reshape(bsz, t, nh * hd) @ p[pre + "proj.weight"].T

    def block(h: np.ndarray, h0: np.ndarray, i: int) -> np.ndarray:
        pre = f"blocks.{i}."
        mix = p[pre + "resid_mix"]
        h = mix[0] * h + mix[1] * h0
        h = h + p[pre + "attn_scale"] * attn(rms(h, eps), i)
        u = np.maximum(rms(h, eps) @ p[pre + "mlp.fc.weight"].T, 0.0)
        return h + p[pre + "mlp_scale"] * ((u * u) @ p[pre + "mlp.proj.weight"].T)

    h = rms(p["tok_emb.weight"][x], eps)
    h0, skips = h, []
    n_enc = m.num_layers // 2
    for i in range(n_enc):
        h = block(h, h0, i)
        skips.append(h)
    for j in range(m.num_layers - n_enc):
        if skips:
            h = h + p["skip_weights"][j] * skips.pop()
        h = block(h, h0, n_enc + j)
    h = rms(h, eps).reshape(-1, m.model_dim)
    head = p["tok_emb.weight"] if m.tie_embeddings else p["lm_head.weight"]
    logits = m.logit_softcap * np.tanh((h @ head.T) / m.logit_softcap)
    logits = logits - logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(logp.shape[0]), y.reshape(-1)].mean())


def reference_weights(m: ModelConfig, seed: int, embed_std: float = 0.05) -> dict[str, np.ndarray]:
    """Weights shaped as the reference scripts save them (names and [out, in] layouts of
    CHALLENGE.md's baseline), float32, every tensor non-trivial (no zero projections, gains and
    mixes away from their inits) so that every term of the forward pass matters."""
    rng = np.random.default_rng(seed)
    d, kv, hid = m.model_dim, m.kv_dim, m.hidden_dim

    def mat(o: int, i: int) -> np.ndarray:
        return rng.uniform(-1, 1, size=(o, i)) / np.sqrt(i)

    def vec(shape, mean: float, spread: float) -> np.ndarray:
        return mean + spread * rng.standard_normal(shape)

    w = {"tok_emb.weight": rng.normal(0.0, embed_std, size=(m.vocab_size, d))}
    if not m.tie_embeddings:
        w["lm_head.weight"] = rng.normal(0.0, 0.05, size=(m.vocab_size, d))
    w["skip_weights"] = vec((m.num_layers // 2, d), 1.0, 0.2)
    for i in range(m.num_layers):
        pre = f"blocks.{i}."
        w[pre + "attn.c_q.weight"] = mat(d, d)
        w[pre + "attn.c_k.weight"] = mat(kv, d)
        w[pre + "attn.c_v.weight"] = mat(kv, d)
        w[pre + "attn.proj.weight"] = mat(d, d)
        w[pre + "attn.q_gain"] = vec((m.num_heads,), 1.5, 0.3)
        w[pre + "mlp.fc.weight"] = mat(hid, d)
        w[pre + "mlp.proj.weight"] = mat(d, hid)
        w[pre + "attn_scale"] = vec((d,), 1.0, 0.2)
        w[pre + "mlp_scale"] = vec((d,), 1.0, 0.2)
        w[pre + "resid_mix"] = np.stack((vec((d,), 1.0, 0.2), vec((d,), 0.0, 0.2)))
    return {k: v.astype(np.float32) for k, v in w.items()}
