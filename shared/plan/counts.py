"""What the plan counts exactly: parameters, tokens, FLOPs, bytes moved, kernels, artifact bytes.

Everything here follows from the config and the parameter table (shared/core/spec.py); nothing
is fitted. FLOPs of a trained token (forward + backward):

    matmuls    6 x (sum over the layer order of the block's matmul weights + vocab x dim for the head)
    attention  14 x ctx x dim per layer application: QK^T and AV are 2 x ctx x dim each forward
               (4 x ctx x dim), and FlashAttention's backward recomputes the scores: 2.5 x the forward
               (Dao, FlashAttention-2, sec. 3.1 counts); ctx = keys per query (shared/plan/doclen.py)

A forward alone is 2 x weights + 4 x ctx x dim; a LoRA TTT step's backward computes activation
gradients only (4 x weights with its forward) and the attention backward in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from shared.core.config import Config, ModelConfig
from shared.plan.doclen import dense_context, masked_context

ATTN_TRAIN = 14.0   # attention FLOPs per (key, dim) pair and token, forward + backward
ATTN_FWD = 4.0


@dataclass(frozen=True)
class Work:
    """The work of one pass over some tokens on one device: FLOPs by class, bytes, kernels."""

    gemm_flops: float = 0.0
    attn_flops: float = 0.0
    bytes: float = 0.0
    kernels: float = 0.0

    def __add__(self, o: Work) -> Work:
        return Work(self.gemm_flops + o.gemm_flops, self.attn_flops + o.attn_flops, self.bytes + o.bytes,
                    self.kernels + o.kernels)

    def scale(self, k: float) -> Work:
        return Work(self.gemm_flops * k, self.attn_flops * k, self.bytes * k, self.kernels * k)

    @property
    def flops(self) -> float:
        return self.gemm_flops + self.attn_flops


@lru_cache(maxsize=8)
def table_rows(m: ModelConfig) -> tuple[tuple[str, tuple[int, ...], str, str, int], ...]:
    """(name, shape, optimizer group, quantiser class, numel) of every row of the parameter table."""
    from shared.core.spec import param_table

    return tuple((n, p.shape, p.group, p.qclass, math.prod(p.shape)) for n, p in param_table(m).items())


def param_counts(m: ModelConfig) -> dict:
    """Parameters per tensor, per quantiser class and per optimizer group, from the parameter table."""
    by_class: dict[str, int] = {}
    by_group: dict[str, int] = {}
    rows = table_rows(m)
    for _, _, group, qclass, n in rows:
        by_class[qclass] = by_class.get(qclass, 0) + n
        by_group[group] = by_group.get(group, 0) + n
    return {"total": sum(r[4] for r in rows), "by_class": by_class, "by_group": by_group,
            "by_tensor": {r[0]: r[4] for r in rows}}


def block_matmul_weights(m: ModelConfig) -> int:
    """Matmul weights one layer application multiplies each token by (q, k, v, out, MLP up and down,
    and the attention gate's per-head projection of the first gate_dims residual values)."""
    d, kv, h = m.model_dim, m.kv_dim, m.hidden_dim
    return 2 * d * d + 2 * kv * d + 2 * h * d + (m.num_heads * m.gate_dims if m.attn_gate else 0)


def head_weights(m: ModelConfig) -> int:
    return m.vocab_size * m.model_dim + (m.gate_dims if m.smear_gate else 0)


def context(seq_len: int, vocab: int, doc_mask: bool) -> float:
    return masked_context(seq_len, vocab) if doc_mask else dense_context(seq_len)


def flops_per_token(m: ModelConfig, seq_len: int, looped: bool, doc_mask: bool) -> dict[str, float]:
    """Training FLOPs of one token (forward + backward) in one layer order."""
    apps = len(m.layer_order(looped))
    ctx = context(seq_len, m.vocab_size, doc_mask)
    gemm = 6.0 * (apps * block_matmul_weights(m) + head_weights(m))
    attn = ATTN_TRAIN * apps * ctx * m.model_dim
    return {"layer_applications": apps, "context": ctx, "gemm": gemm, "attention": attn, "total": gemm + attn}


# Record-stack options add element passes (forward + backward, d-wide) and saved d-wide activations to each
# layer application they touch, counted from their definitions (README "The record stack", #1855).
FEATURE_PASSES = {   # option: (passes, saved)
    "xsa": (8.0, 2.0),          # normalise v, y.v, y - (y.v) v; backward the same
    "attn_gate": (4.0, 1.0),    # sigmoid gate per head on the attention output
    "lanes": (8.0, 2.0),        # two residual lanes and their 2x2 routing (parallel_from on)
    "skip_gate": (4.0, 1.0),    # sigmoid-lerp of a U-Net skip (decoder applications)
}
SMEAR_PASSES = 6.0   # SmearGate on the embeddings, once per token


def block_passes(m: ModelConfig, prof, looped: bool = True) -> tuple[float, float, float, float]:
    """(element passes d-wide, h-wide, saved d-wide, saved h-wide) summed over the layer order."""
    order = m.layer_order(looped)
    pd = prof.ew_passes_d * len(order)
    sd = prof.act_saved_d * len(order)
    enc = len(order) // 2
    for i, layer in enumerate(order):
        on = []
        if layer >= m.num_layers - m.xsa_last_n:
            on.append("xsa")
        if m.attn_gate:
            on.append("attn_gate")
        if 0 <= m.parallel_from <= layer:
            on.append("lanes")
        if m.skip_gates and i >= enc:
            on.append("skip_gate")
        for f in on:
            pd += FEATURE_PASSES[f][0]
            sd += FEATURE_PASSES[f][1]
    if m.smear_gate:
        pd += SMEAR_PASSES
    return pd, prof.ew_passes_h * len(order), sd, prof.act_saved_h * len(order)


def pass_work(m: ModelConfig, prof, tokens: float, ctx: float, kind: str, looped: bool = True) -> Work:
    """Work of `tokens` tokens through the model, attending to `ctx` keys each on average.
    kind: "train" (forward + full backward), "fwd" (forward only), "lora" (forward + activation backward)."""
    apps = len(m.layer_order(looped))
    d, h, v = m.model_dim, m.hidden_dim, m.vocab_size
    g = {"train": 6.0, "fwd": 2.0, "lora": 4.0}[kind]
    a = {"train": ATTN_TRAIN, "fwd": ATTN_FWD, "lora": ATTN_TRAIN}[kind]
    share = 1.0 if kind != "fwd" else 1.0 / 3.0       # the profile's passes and kernels are forward + backward
    gemm = g * tokens * (apps * block_matmul_weights(m) + head_weights(m))
    attn = a * tokens * apps * ctx * d
    pd, ph, _, _ = block_passes(m, prof, looped)
    elem = share * tokens * ((pd * d + ph * h) * 2.0 + prof.logit_bytes * v)
    kernels = share * (apps * prof.kernels_per_app + prof.kernels_fixed)
    return Work(gemm, attn, elem, kernels)


def lora_dims(m: ModelConfig, targets: list[str], head: bool) -> list[tuple[int, int]]:
    """(in, out) of every adapter of one layer application for eval.lora_targets (mlp = fc and proj),
    plus the output head's when `head` (the records adapt it; pgolf's head is the tied embedding)."""
    d, kv, h = m.model_dim, m.kv_dim, m.hidden_dim
    dims = {"q": [(d, d)], "k": [(d, kv)], "v": [(d, kv)], "o": [(d, d)], "mlp": [(d, h), (h, d)]}
    return [x for t in targets if t != "head" for x in dims[t]]   # eval.lora_targets' "head": the `head` flag


def lora_work(m: ModelConfig, tokens: float, rank: int, targets: list[str], head: bool, looped: bool = True) -> Work:
    """The adapters' share of a LoRA TTT step (forward + backward): per adapter and token 6 r (in + out)
    FLOPs (x A, then B; gradients of both and of x), and its activations read and written three times
    (forward, backward for the input, backward for the factors): 3 x (in + out + 2 r) two-byte values.
    Small-rank batched matmuls run at memory speed, so their FLOPs are counted as bytes' company only."""
    apps = len(m.layer_order(looped))
    head = head or "head" in targets
    per_app = lora_dims(m, targets, head)
    io = apps * sum(i + o for i, o in per_app) + (m.model_dim + m.vocab_size if head else 0)
    n = apps * len(per_app) + (1 if head else 0)
    return Work(gemm_flops=6.0 * rank * io * tokens, bytes=3.0 * (io + 2.0 * rank * n) * 2.0 * tokens,
                kernels=6.0 * n)


def ns_flops(m: ModelConfig, steps: int) -> float:
    """Newton-Schulz FLOPs of one Muon step over every block matrix: per iteration on X (r x c, r <= c)
    A = X X^T (2 r^2 c), A^2 (2 r^3), (bA + cA^2) X (2 r^2 c)."""
    total = 0.0
    for _, shape, group, _, _ in table_rows(m):
        if group == "matrix":
            r, c = sorted(shape)
            total += steps * (4.0 * r * r * c + 2.0 * r ** 3)
    return total


def matrix_count(m: ModelConfig) -> int:
    return sum(1 for r in table_rows(m) if r[2] == "matrix")


# ---------------------------------------------------------------------------------------- artifact bytes

SQRT_2PI_E = math.sqrt(2.0 * math.pi * math.e)


def code_entropy_bits(bits: int, clip_k: float) -> float:
    """Entropy, in bits per value, of a Gaussian quantised on 2^(bits-1)-1 levels per side of a clip
    at clip_k standard deviations: log2(step count per std x sqrt(2 pi e)), at most `bits`."""
    qmax = 2 ** (bits - 1) - 1
    return float(min(bits, max(1.0, math.log2(qmax / clip_k * SQRT_2PI_E))))


def artifact_estimate(cfg: Config, coder: dict[str, float], percentile_k: float) -> dict:
    """Predicted artifact bytes from each tensor's scheme (the packer's own choice, shared/artifact/format.py):
    integer codes at their entropy times the compressor's measured overhead (`coder`), fp16 row scales,
    floats at their width times the compressor's measured float ratio, LQER factors at their bits."""
    from shared.artifact.format import choose_schemes
    from shared.artifact.schemes import scheme_bits
    from shared.core.spec import param_table

    q = cfg.quant
    table = param_table(cfg.model)
    fake = {n: np.broadcast_to(np.float32(0.0), p.shape) for n, p in table.items()}
    schemes = choose_schemes(fake, cfg)
    comp = q.compressor
    over, float_ratio = coder[comp], coder["float_" + ("zstd" if comp == "zstd" else "brotli")]
    out: dict[str, float] = {}
    by_scheme: dict[str, float] = {}
    for name, p in table.items():
        s = schemes[name]
        if s.startswith("int"):
            bits = scheme_bits(s)
            cls = p.qclass
            k = {"attn": q.attn_clip_k or q.clip_k, "mlp": q.mlp_clip_k or q.clip_k, "embed": q.embed_clip_k}.get(
                cls, q.clip_k)
            if bits == 8 and not (cls == "embed" and q.embed_steps == "frequency"):
                k = percentile_k   # per-row int8 clips at a percentile of |w|, not at k std: fitted effective k
            rows = p.shape[0]
            b = p.numel * code_entropy_bits(bits, k) / 8.0 * over + rows * 2.0
        else:
            b = p.numel * (4.0 if s == "fp32" else 2.0) * float_ratio
        out[name] = b
        by_scheme[s] = by_scheme.get(s, 0.0) + b
    lqer = 0.0
    if q.lqer_tensors and q.lqer_rank:
        mats = sorted((p for p in table.values() if len(p.shape) == 2 and schemes[p.name].startswith("int")),
                      key=lambda p: -p.numel)[: q.lqer_tensors]
        for p in mats:
            r, c = p.shape
            lqer += q.lqer_rank * (r * q.lqer_a_bits + c * q.lqer_b_bits) / 8.0 + 2.0 * (1 + q.lqer_rank * c // q.lqer_group)
    total = sum(out.values()) + lqer + 2048.0   # header, embedded config, section framing
    return {"bytes": int(round(total)), "by_scheme": {k: int(round(v)) for k, v in sorted(by_scheme.items())},
            "lqer_bytes": int(round(lqer)), "schemes": schemes}
