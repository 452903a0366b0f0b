"""The parameter table: every tensor of the model, one row each, built from the config.

    name                        shape               init                         group    quant class
    tok_emb.weight              [vocab, dim]        normal(0, tied_embed_init_std) (tied) / normal(0, 1)   embed  embed
    lm_head.weight              [vocab, dim]        zeros (only when untied)     head     embed
    skip_weights                [num_skip, dim]     ones (U-Net skip gains)      scalar   other
    blocks.{i}.attn.c_q.weight  [dim, dim]          uniform(+-1/sqrt(dim))       matrix   attn
    blocks.{i}.attn.c_k.weight  [kv_dim, dim]       uniform(+-1/sqrt(dim))       matrix   attn
    blocks.{i}.attn.c_v.weight  [kv_dim, dim]       uniform(+-1/sqrt(dim))       matrix   attn
    blocks.{i}.attn.proj.weight [dim, dim]          zeros                        matrix   attn
    blocks.{i}.attn.q_gain      [num_heads]         qk_gain_init                 scalar   other
    blocks.{i}.mlp.fc.weight    [hidden, dim]       uniform(+-1/sqrt(dim))       matrix   mlp
    blocks.{i}.mlp.proj.weight  [dim, hidden]       zeros                        matrix   mlp
    blocks.{i}.attn_scale       [dim]               ones                         scalar   other
    blocks.{i}.mlp_scale        [dim]               ones                         scalar   other
    blocks.{i}.resid_mix        [2, dim]            rows (ones, zeros)           scalar   other

The record stack's options (config.ModelConfig) add rows:

    skip_gates                  [num_skip, dim]     zeros (sigmoid 0.5)          scalar   other   model.skip_gates
    lane_route                  [layers, 2, 2]      ones (attn/mlp -> lanes)     scalar   other   model.parallel_from
    lane_scale                  [layers, 2]         1.1 (lane residual scales)   scalar   other   model.parallel_from
    smear.weight                [1, gate_dims]      zeros                        scalar   gate    model.smear_gate
    smear.lam                   [1]                 zeros                        scalar   other   model.smear_gate
    blocks.{i}.attn.gate        [num_heads, gate_dims] zeros                     scalar   gate    model.attn_gate

and `model.ortho_init` draws the input-side block matrices (q, k, v, MLP up)
orthogonally instead of uniformly. With depth recurrence, `num_skip` counts
the looped layer order (shared.core.config.ModelConfig.layer_order).

`param_table(model_cfg)` is the single source of truth: both backends build
modules that expose exactly these names and shapes (tests/test_spec.py),
the optimizers take each row's `group` (matrix -> Muon; embed, head, scalar
-> Adam), the packer takes its `qclass`, and `init_params` draws every
initial value here, in numpy, from `train.seed`, so both backends start from
the same bits. Adding a tensor to the model is one row here plus its use in
each backend's `model.py` (docs/DESIGN.md shows an example).

Layouts follow torch's `nn.Linear`: a weight is `[out_features, in_features]`
and a layer computes `y = x @ W.T`. All tensors are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# shared.core.config.ModelConfig, duck-typed: config imports this module (to check quant.tensor_schemes),
# so this module imports nothing from config.
ModelConfig = Any

# RMSNorm epsilon of both backends: torch F.rms_norm(eps=None) uses finfo(float32).eps;
# MLX is given the same number explicitly so the two agree.
RMS_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07
XSA_EPS = 1e-6         # exclusive self-attention: v / sqrt(|v|^2 + eps), both backends
LEAKY_SLOPE = 0.5      # leaky_relu2: LeakyReLU(0.5), then squared (#1855)
BOS_ID = 1             # the challenge tokenizers' BOS id: SmearGate never mixes across it
NS_EPS = 1e-7          # Muon: X / (||X|| + eps) before Newton-Schulz, and MuonEq-R's row norms

# Muon's Newton-Schulz iteration X <- a X + (b A + c A^2) X, A = X X^T: the baseline's fixed quintic
# coefficients, or "Polar Express" coefficients, one triple per iteration (#1855).
NS_QUINTIC = (3.4445, -4.7750, 2.0315)
NS_POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def ns_coefficients(kind: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of `steps` Newton-Schulz iterations (`optim.muon_ns`)."""
    return list(NS_POLAR_EXPRESS[:steps]) if kind == "polar_express" else [NS_QUINTIC] * steps

GROUPS = ("embed", "head", "matrix", "scalar")   # optimizer groups
QCLASSES = ("embed", "attn", "mlp", "gate", "other")     # quantizer classes: the keys of [quant]


@dataclass(frozen=True)
class Param:
    """One tensor of the model. `init` is ("normal", std) | ("uniform", bound) | ("zeros",) | ("ones",)
    | ("full", value) | ("rows", (v0, v1, ...)) (row r filled with v_r) | ("orthogonal", gain)."""

    name: str
    shape: tuple[int, ...]
    init: tuple
    group: str
    qclass: str

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


def _fan_in(shape: tuple[int, ...]) -> tuple:
    return ("uniform", 1.0 / np.sqrt(shape[1]))  # torch's nn.Linear default


LANE_SCALE_INIT = 1.1  # the parallel lanes' residual scales start above 1 (#1855)


def param_table(m: ModelConfig) -> dict[str, Param]:
    """Every parameter of the model described by `m`, in a fixed order (the order of init draws)."""
    d, kv, h = m.model_dim, m.kv_dim, m.hidden_dim
    rows: list[Param] = []

    def add(name: str, shape: tuple[int, ...], init: tuple, group: str, qclass: str) -> None:
        rows.append(Param(name, tuple(int(s) for s in shape), init, group, qclass))

    add("tok_emb.weight", (m.vocab_size, d), ("normal", m.tied_embed_init_std if m.tie_embeddings else 1.0),
        "embed", "embed")
    if not m.tie_embeddings:
        add("lm_head.weight", (m.vocab_size, d), ("zeros",), "head", "embed")
    add("skip_weights", (m.num_skip_weights, d), ("ones",), "scalar", "other")
    if m.skip_gates:
        add("skip_gates", (m.num_skip_weights, d), ("zeros",), "scalar", "other")
    if m.parallel_from >= 0:
        add("lane_route", (m.num_layers, 2, 2), ("ones",), "scalar", "other")
        add("lane_scale", (m.num_layers, 2), ("full", LANE_SCALE_INIT), "scalar", "other")
    if m.asym_logit:  # AsymLogit (#1923): softcaps of positive and negative logits, learned from logit_softcap
        add("softcap_pos", (1,), ("full", m.logit_softcap), "scalar", "other")
        add("softcap_neg", (1,), ("full", m.logit_softcap), "scalar", "other")
    if m.smear_gate:
        add("smear.weight", (1, m.gate_dims), ("zeros",), "scalar", "gate")
        add("smear.lam", (1,), ("zeros",), "scalar", "other")
    inner = (lambda shape: ("orthogonal", 1.0)) if m.ortho_init else _fan_in
    for i in range(m.num_layers):
        p = f"blocks.{i}."
        add(p + "attn.c_q.weight", (d, d), inner((d, d)), "matrix", "attn")
        add(p + "attn.c_k.weight", (kv, d), inner((kv, d)), "matrix", "attn")
        add(p + "attn.c_v.weight", (kv, d), inner((kv, d)), "matrix", "attn")
        add(p + "attn.proj.weight", (d, d), ("zeros",), "matrix", "attn")
        add(p + "attn.q_gain", (m.num_heads,), ("full", m.qk_gain_init), "scalar", "other")
        if m.attn_gate:
            add(p + "attn.gate", (m.num_heads, m.gate_dims), ("zeros",), "scalar", "gate")
        add(p + "mlp.fc.weight", (h, d), inner((h, d)), "matrix", "mlp")
        add(p + "mlp.proj.weight", (d, h), ("zeros",), "matrix", "mlp")
        add(p + "attn_scale", (d,), ("ones",), "scalar", "other")
        add(p + "mlp_scale", (d,), ("ones",), "scalar", "other")
        add(p + "resid_mix", (2, d), ("rows", (1.0, 0.0)), "scalar", "other")
    table = {r.name: r for r in rows}
    assert len(table) == len(rows), "duplicate parameter name"
    return table


def doc_segments(idx: np.ndarray, max_len: int = 0) -> np.ndarray:
    """Segment ids [rows, seq] of document-isolated attention (`model.doc_attention`, #1855's varlen
    packing): a segment starts at each row's first token, at every BOS, and (max_len > 0) every
    `max_len` tokens after its document's start; a token attends only to earlier tokens of its segment.
    Both model.py files compute the same ids on the device (`doc_segments` there)."""
    idx = np.atleast_2d(idx)
    pos = np.broadcast_to(np.arange(idx.shape[1]), idx.shape)
    is_doc = (idx == BOS_ID) | (pos == 0)
    doc_start = np.maximum.accumulate(np.where(is_doc, pos, 0), axis=1)
    start = is_doc | ((pos - doc_start) % max_len == 0) if max_len > 0 else is_doc
    return np.cumsum(start, axis=1) - 1


def segment_starts(idx: np.ndarray, max_len: int = 0, bucket: int = 64) -> np.ndarray:
    """FlashAttention varlen's `cu_seqlens` (int32) for the rows of `idx` laid end to end: where
    `doc_segments` begins a segment (each row's start among them), padded with the total length (empty
    segments) to a multiple of `bucket` so that a compiled forward sees few shapes, as #1855 does.
    Computed on the host with the batch: the compiled forward then has no data-dependent shape."""
    idx = np.atleast_2d(idx)
    seg = doc_segments(idx, max_len)
    start = np.ones(seg.shape, dtype=bool)
    start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    cu = np.flatnonzero(start)
    n = -(-(cu.size + 1) // bucket) * bucket
    return np.concatenate([cu, np.full(n - cu.size, idx.size)]).astype(np.int32)


def param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's canonical name and shape, in table order."""
    return {n: p.shape for n, p in param_table(m).items()}


def count_params(m: ModelConfig) -> int:
    return sum(p.numel for p in param_table(m).values())


def _draw(p: Param, rng: np.random.Generator) -> np.ndarray:
    kind, *args = p.init
    if kind == "normal":
        return rng.normal(0.0, args[0], size=p.shape)
    if kind == "uniform":
        return rng.uniform(-args[0], args[0], size=p.shape)
    if kind == "zeros":
        return np.zeros(p.shape)
    if kind == "ones":
        return np.ones(p.shape)
    if kind == "full":
        return np.full(p.shape, args[0])
    if kind == "rows":
        return np.stack([np.full(p.shape[1:], v) for v in args[0]])
    if kind == "orthogonal":  # rows (or columns, whichever are fewer) orthonormal, times the gain
        a = rng.normal(size=(max(p.shape), min(p.shape)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))  # a unique, uniformly distributed orthogonal factor
        return args[0] * (q if p.shape[0] >= p.shape[1] else q.T)
    raise ValueError(f"{p.name}: unknown init {p.init!r}")


def init_params(m: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Initial weights, a pure function of (config, seed): table rows drawn in order from one generator."""
    rng = np.random.default_rng(seed)
    return {name: np.ascontiguousarray(_draw(p, rng), dtype=np.float32) for name, p in param_table(m).items()}


def names_in_group(m: ModelConfig, group: str) -> list[str]:
    """The parameters one optimizer group owns, in table order."""
    return [n for n, p in param_table(m).items() if p.group == group]


def record_banks(m: ModelConfig) -> dict[str, list[str]]:
    """#1855 holds each kind of block matrix as one tensor stacked over layers (a "bank"); the names it stacks,
    in its order: q then o of every layer, k then v, the MLP up, the MLP down."""
    def each(s: str) -> list[str]:
        return [f"blocks.{i}.{s}" for i in range(m.num_layers)]

    return {"qo_bank": each("attn.c_q.weight") + each("attn.proj.weight"),
            "kv_bank": each("attn.c_k.weight") + each("attn.c_v.weight"),
            "mlp_up_bank": each("mlp.fc.weight"), "mlp_down_bank": each("mlp.proj.weight")}


def record_clip_order(m: ModelConfig) -> list[list[str]]:
    """The tensors #1855's gradient clip takes norms of, in its `named_parameters()` order (the model's own
    tensors, then its modules': the embedding, each block's vectors then its attention's, the untied head,
    the smear gate). One entry per norm: a bank's names are stacked into one tensor."""
    table = param_table(m)
    vectors = [n for n, p in table.items() if p.group == "scalar"]
    top = [n for n in vectors if not n.startswith("blocks.") and n != "smear.weight"]
    block_first = ("attn_scale", "mlp_scale", "resid_mix")
    blocks = []
    for i in range(m.num_layers):
        mine = [n for n in vectors if n.startswith(f"blocks.{i}.")]
        blocks += [n for n in mine if n.rsplit(".", 1)[-1] in block_first] + \
                  [n for n in mine if n.rsplit(".", 1)[-1] not in block_first]
    names = top + [n for n, p in table.items() if p.group == "embed"] + blocks + \
        [n for n, p in table.items() if p.group == "head"] + [n for n in ("smear.weight",) if n in table]
    return list(record_banks(m).values()) + [[n] for n in names]


def head_weight_name(m: ModelConfig) -> str:
    """The weight the output head multiplies the final hidden states by."""
    return "tok_emb.weight" if m.tie_embeddings else "lm_head.weight"


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
