"""The canonical parameter set: names, shapes, initial values, groups.

Both backends build their model from this dict and hand back the same dict,
so a checkpoint from either loads in the other. Layouts follow torch's
`nn.Linear`: a weight is `[out_features, in_features]` and a layer computes
`y = x @ W.T`. All tensors are float32.

    tok_emb.weight              [vocab, dim]        normal(0, tied_embed_init_std) (tied) / normal(0, 1)
    lm_head.weight              [vocab, dim]        zeros (only when tie_embeddings = false)
    skip_weights                [num_skip, dim]     ones  (U-Net skip gains, decoder block i uses row i)
    blocks.{i}.attn.c_q.weight  [dim, dim]          uniform(+-1/sqrt(dim))  (torch's Linear default)
    blocks.{i}.attn.c_k.weight  [kv_dim, dim]       uniform(+-1/sqrt(dim))
    blocks.{i}.attn.c_v.weight  [kv_dim, dim]       uniform(+-1/sqrt(dim))
    blocks.{i}.attn.proj.weight [dim, dim]          zeros
    blocks.{i}.attn.q_gain      [num_heads]         qk_gain_init
    blocks.{i}.mlp.fc.weight    [hidden, dim]       uniform(+-1/sqrt(dim))
    blocks.{i}.mlp.proj.weight  [dim, hidden]       zeros
    blocks.{i}.attn_scale       [dim]               ones
    blocks.{i}.mlp_scale        [dim]               ones
    blocks.{i}.resid_mix        [2, dim]            rows (ones, zeros): x = mix[0] * x + mix[1] * x0

Initial values are drawn here once, in numpy, from `train.seed`, so both
backends start from the same bits.
"""

from __future__ import annotations

import numpy as np

from shared.core.config import ModelConfig

# RMSNorm epsilon of both backends: torch F.rms_norm(eps=None) uses finfo(float32).eps;
# MLX is given the same number explicitly so the two agree.
RMS_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07

# Small learned tensors that steer the residual stream (from the challenge's reference).
CONTROL_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights")


def param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's canonical name and shape, in a fixed order."""
    d, kv, h = m.model_dim, m.kv_dim, m.hidden_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (m.vocab_size, d)}
    if not m.tie_embeddings:
        shapes["lm_head.weight"] = (m.vocab_size, d)
    shapes["skip_weights"] = (m.num_skip_weights, d)
    for i in range(m.num_layers):
        p = f"blocks.{i}."
        shapes[p + "attn.c_q.weight"] = (d, d)
        shapes[p + "attn.c_k.weight"] = (kv, d)
        shapes[p + "attn.c_v.weight"] = (kv, d)
        shapes[p + "attn.proj.weight"] = (d, d)
        shapes[p + "attn.q_gain"] = (m.num_heads,)
        shapes[p + "mlp.fc.weight"] = (h, d)
        shapes[p + "mlp.proj.weight"] = (d, h)
        shapes[p + "attn_scale"] = (d,)
        shapes[p + "mlp_scale"] = (d,)
        shapes[p + "resid_mix"] = (2, d)
    return shapes


def count_params(m: ModelConfig) -> int:
    return int(sum(int(np.prod(s)) for s in param_shapes(m).values()))


def init_params(m: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Initial weights, a pure function of (config, seed)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(m).items():
        if name == "tok_emb.weight":
            std = m.tied_embed_init_std if m.tie_embeddings else 1.0
            w = rng.normal(0.0, std, size=shape)
        elif name.endswith(("proj.weight", "lm_head.weight")):
            w = np.zeros(shape)
        elif name.endswith(".weight"):
            bound = 1.0 / np.sqrt(shape[1])
            w = rng.uniform(-bound, bound, size=shape)
        elif name.endswith("q_gain"):
            w = np.full(shape, m.qk_gain_init)
        elif name.endswith("resid_mix"):
            w = np.stack([np.ones(shape[1]), np.zeros(shape[1])])
        else:  # attn_scale, mlp_scale, skip_weights
            w = np.ones(shape)
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def optim_group(name: str) -> str:
    """Which optimizer group owns a parameter: embed | head | matrix | scalar."""
    if name == "tok_emb.weight":
        return "embed"
    if name == "lm_head.weight":
        return "head"
    if name.startswith("blocks.") and name.endswith(".weight") and not any(p in name for p in CONTROL_PATTERNS):
        return "matrix"
    return "scalar"


def head_weight_name(m: ModelConfig) -> str:
    """The weight the output head multiplies the final hidden states by."""
    return "tok_emb.weight" if m.tie_embeddings else "lm_head.weight"


def tensor_class(name: str) -> str:
    """Which quantizer class a tensor falls in: embed | attn | mlp | other."""
    if name in ("tok_emb.weight", "lm_head.weight"):
        return "embed"
    if any(p in name for p in CONTROL_PATTERNS):
        return "other"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    return "other"


def check_params(params: dict[str, np.ndarray], m: ModelConfig, source: str) -> None:
    """Raise a one-line error when a tensor dict does not match the config."""
    from shared.errors import PgolfError

    shapes = param_shapes(m)
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise PgolfError(
            f"{source}: tensors do not match the model config "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); was it trained with a different [model] section?"
        )
    for k, s in shapes.items():
        if tuple(params[k].shape) != s:
            raise PgolfError(f"{source}: tensor {k} has shape {tuple(params[k].shape)}, the config says {s}")


def check_finite(params: dict[str, np.ndarray], source: str, what: str = "re-train or resume from a good "
                 "checkpoint (lower the learning rates or set optim.grad_clip_norm)") -> None:
    """Raise a one-line error naming the first tensor (by name) that holds a NaN or an infinity."""
    from shared.errors import PgolfError

    for name in sorted(params):
        w = np.asarray(params[name])
        if w.dtype.kind == "f" and not np.isfinite(w).all():
            nan, inf = int(np.isnan(w).sum()), int(np.isinf(w).sum())
            raise PgolfError(f"{source}: tensor {name} is not finite ({nan:,} NaN, {inf:,} infinite of "
                             f"{w.size:,} values); {what}")
