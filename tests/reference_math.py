"""A float64 numpy forward of the challenge's baseline GPT under either reference script's
convention, written from the scripts' documented architecture (docs/FACTS.md "The naive baseline"),
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
    docs/FACTS.md's baseline), float32, every tensor non-trivial (no zero projections, gains and
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


# -- the record architecture (#1855), written from its definitions, not from any implementation ----------

def _segments(x: np.ndarray, max_len: int) -> np.ndarray:
    """Document segments, one loop per row: a segment starts at the row's first token, at every BOS
    (id 1) and every max_len tokens into a document."""
    seg = np.zeros(x.shape, dtype=np.int64)
    for r in range(x.shape[0]):
        s, doc_start = -1, 0
        for t in range(x.shape[1]):
            if t == 0 or x[r, t] == 1:
                doc_start = t
            if t == doc_start or (max_len and (t - doc_start) % max_len == 0):
                s += 1
            seg[r, t] = s
    return seg


def record_logits(params: dict[str, np.ndarray], m: ModelConfig, x: np.ndarray, looped: bool) -> np.ndarray:
    """Softcapped logits [batch, seq, vocab] (float64) of the record stack with every option of `m`:
    SmearGate (masked at BOS), partial RoPE, q gain, QK-norm, XSA, the sparse attention output gate,
    LeakyReLU(0.5)^2, layer-norm scale 1/sqrt(layer+1), depth recurrence, gated U-Net skips, parallel
    residual lanes from `parallel_from` in the decoder (both lanes start from x; the skip joins lane 0;
    the output is the mean of the lanes) and document-isolated attention."""
    eps = float(np.finfo(np.float32).eps)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    bsz, t = x.shape
    hd, nh, nkv, d = m.head_dim, m.num_heads, m.num_kv_heads, m.model_dim
    rd = m.rope_dims or hd
    inv = 1.0 / (m.rope_base ** (np.arange(0, rd, 2, dtype=np.float64) / rd))
    ang = np.outer(np.arange(t, dtype=np.float64), inv.astype(np.float32).astype(np.float64))
    cos, sin = np.cos(ang), np.sin(ang)
    allowed = np.tril(np.ones((t, t), dtype=bool))[None]
    if m.doc_attention:
        seg = _segments(x, m.doc_max_len)
        allowed = allowed & (seg[:, :, None] == seg[:, None, :])

    def rope(z: np.ndarray) -> np.ndarray:  # z [b, heads, t, hd]; rotate the first rd dims (half split)
        h = rd // 2
        z1, z2, rest = z[..., :h], z[..., h:rd], z[..., rd:]
        return np.concatenate((z1 * cos + z2 * sin, z2 * cos - z1 * sin, rest), axis=-1)

    def attn(h: np.ndarray, i: int) -> np.ndarray:
        pre = f"blocks.{i}.attn."
        q = (h @ p[pre + "c_q.weight"].T).reshape(bsz, t, nh, hd).transpose(0, 2, 1, 3)
        k = (h @ p[pre + "c_k.weight"].T).reshape(bsz, t, nkv, hd).transpose(0, 2, 1, 3)
        v = (h @ p[pre + "c_v.weight"].T).reshape(bsz, t, nkv, hd).transpose(0, 2, 1, 3)
        q, k = rope(rms(q, eps)), rope(rms(k, eps))
        q = q * p[pre + "q_gain"][None, :, None, None]
        rep = nh // nkv
        kr, vr = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.where(allowed[:, None], q @ kr.transpose(0, 1, 3, 2) / np.sqrt(hd), -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        y = (s / s.sum(axis=-1, keepdims=True)) @ vr
        if i >= m.num_layers - m.xsa_last_n:  # remove the component along the head's own unit value vector
            vn = vr / np.linalg.norm(vr, axis=-1, keepdims=True)
            y = y - (y * vn).sum(-1, keepdims=True) * vn
        if m.attn_gate:
            g = 1.0 / (1.0 + np.exp(-m.attn_gate_scale * (h[..., : m.gate_dims] @ p[pre + "gate"].T)))
            y = y * g.transpose(0, 2, 1)[..., None]
        return y.transpose(0, 2, 1, 3).reshape(bsz, t, d) @ p[pre + "proj.weight"].T

    def mlp(h: np.ndarray, i: int) -> np.ndarray:
        u = h @ p[f"blocks.{i}.mlp.fc.weight"].T
        u = np.where(u > 0, u, 0.5 * u) if m.activation == "leaky_relu2" else np.maximum(u, 0.0)
        return (u * u) @ p[f"blocks.{i}.mlp.proj.weight"].T

    def norm(h: np.ndarray, i: int) -> np.ndarray:
        return rms(h, eps) * (1.0 / np.sqrt(i + 1) if m.ln_scale else 1.0)

    def block(h: np.ndarray, h0: np.ndarray, i: int) -> np.ndarray:
        pre = f"blocks.{i}."
        mix = p[pre + "resid_mix"]
        h = mix[0] * h + mix[1] * h0
        h = h + p[pre + "attn_scale"] * attn(norm(h, i), i)
        return h + p[pre + "mlp_scale"] * mlp(norm(h, i), i)

    def parallel(lanes: tuple, h0: np.ndarray, i: int) -> tuple:
        pre, (l0, l1) = f"blocks.{i}.", lanes
        mix, route, scale = p[pre + "resid_mix"], p["lane_route"][i], p["lane_scale"][i]
        a = p[pre + "attn_scale"] * attn(norm(mix[0] * l0 + mix[1] * h0, i), i)
        f = p[pre + "mlp_scale"] * mlp(norm(l1, i), i)
        return (scale[0] * l0 + route[0, 0] * a + route[1, 0] * f, scale[1] * l1 + route[0, 1] * a + route[1, 1] * f)

    def merge(h: np.ndarray, skip: np.ndarray, k: int) -> np.ndarray:
        s = p["skip_weights"][k] * skip
        if not m.skip_gates:
            return h + s
        return s + (h - s) / (1.0 + np.exp(-p["skip_gates"][k]))  # lerp(s, h, sigmoid(g))

    h = p["tok_emb.weight"][x]
    if m.smear_gate:
        g = p["smear.lam"] / (1.0 + np.exp(-(h[..., : m.gate_dims] @ p["smear.weight"].T)))
        prev = np.concatenate((np.zeros_like(h[:, :1]), h[:, :-1]), axis=1)
        h = h + ((x != 1) if m.smear_bos_mask else np.ones(x.shape, bool))[..., None] * g * prev
    h = rms(h, eps)
    h0 = h
    order = m.layer_order(looped)
    n_enc = len(order) // 2
    skips, lanes = [], None
    for j, i in enumerate(order):
        if j < n_enc:
            h = block(h, h0, i)
            skips.append(h)
            continue
        if lanes is None and 0 <= m.parallel_from <= i:
            lanes = (h, h)
        if skips:
            k = j - n_enc
            if lanes is None:
                h = merge(h, skips.pop(), k)
            else:
                lanes = (merge(lanes[0], skips.pop(), k), lanes[1])
        if lanes is None:
            h = block(h, h0, i)
        else:
            lanes = parallel(lanes, h0, i)
    if lanes is not None:
        h = 0.5 * (lanes[0] + lanes[1])
    h = rms(h, eps)
    head = p["tok_emb.weight"] if m.tie_embeddings else p["lm_head.weight"]
    return m.logit_softcap * np.tanh((h @ head.T) / m.logit_softcap)


def live_params(m: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights with every tensor moved away from its init (zero-init projections, gates and mixes
    all matter), float32: what the fidelity checks feed both sides."""
    from shared.core.spec import init_params

    rng = np.random.default_rng(seed)
    out = {}
    for name, p in init_params(m, seed).items():
        fan = p.shape[-1] if p.ndim >= 2 else 1
        out[name] = (p + rng.standard_normal(p.shape) * (0.5 / np.sqrt(fan) if p.ndim >= 2 else 0.3)).astype(np.float32)
    return out
