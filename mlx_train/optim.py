"""The baseline's optimizers on flat `name -> mx.array` dicts: Muon + Adam groups.

Group of each parameter: its row of the parameter table (`shared.core.spec.param_table`):

    matrix  2-D block weights       Muon  (lr optim.matrix_lr)
    embed   tok_emb.weight          Adam  (optim.tied_embed_lr when tied, else optim.embed_lr)
    head    lm_head.weight          Adam  (optim.head_lr)
    scalar  vectors / control       Adam  (optim.scalar_lr)

Each group's lr is its base lr times `shared.core.schedule.lr_scale`; Muon's
momentum comes from `shared.core.schedule.muon_momentum`. Both arrive as array
arguments so one compiled update serves every step.

Muon (Keller Jordan's, as in the challenge baseline): momentum buffer,
Nesterov look-ahead, then an approximate orthogonalisation of the update by
five Newton-Schulz iterations, scaled by sqrt(max(1, rows / cols)). The
record stack's options (#1855): MuonEq-R (`optim.muon_row_norm`: each row of
the update divided by its L2 norm first), Polar Express per-iteration
coefficients (`optim.muon_ns`) and decoupled weight decay
(`p *= 1 - lr * wd`: `optim.muon_wd`, `embed_wd`, `scalar_wd`).
Adam is torch's AdamW (bias-corrected, decoupled weight decay).

The state is a flat dict of arrays (`<name>.momentum_buffer`, `<name>.exp_avg`,
`<name>.exp_avg_sq`, and `step`), so it is saved and restored like the weights.
"""

from __future__ import annotations

# isort: off
# isort: on
import mlx.core as mx

from shared.core.config import ModelConfig, OptimConfig
from shared.core.spec import NS_EPS, ns_coefficients, param_table, record_clip_order


def newton_schulz(g: mx.array, steps: int, kind: str = "quintic", form: str = "baseline") -> mx.array:
    """Approximately U V^T of g = U S V^T: the nearest semi-orthogonal matrix, roughly.
    `form="record"` (`optim.muon_ns_form`, #1855) transposes to the wide side before the norm and
    rounds as torch does in bf16 (norm and scalar products in fp32, rounded once)."""
    transposed = g.shape[0] > g.shape[1]
    if form == "record":
        x = g.T if transposed else g
        x = x / (_norm(x) + NS_EPS)
        for a, b, c in ns_coefficients(kind, steps):
            gram = x @ x.T
            x = _times(x, a) + (_times(gram, b) + _times(gram @ gram, c)) @ x
        return x.T if transposed else x
    x = g / (mx.sqrt(mx.sum(mx.square(g))) + NS_EPS)  # Frobenius norm <= 1 keeps the iteration stable
    if transposed:  # iterate on the wide side: X X^T is the smaller Gram matrix
        x = x.T
    for a, b, c in ns_coefficients(kind, steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if transposed else x


def _times(x: mx.array, s: float) -> mx.array:
    """x * s as torch computes it for a bf16 x: in fp32, rounded once (MLX would round s to bf16 first)."""
    return x * s if x.dtype == mx.float32 else (x.astype(mx.float32) * s).astype(x.dtype)


def row_normalize(u: mx.array, eps_mode: str = "add") -> mx.array:
    """MuonEq-R (#1855): each row of the update divided by its L2 norm; `eps_mode="max"`
    (`optim.muon_row_norm_eps`): by max(norm, eps), the norm in fp32 rounded to u's dtype."""
    if eps_mode == "max":
        norm = mx.sqrt(mx.sum(mx.square(u.astype(mx.float32)), axis=-1, keepdims=True))
        return u / mx.maximum(norm, NS_EPS).astype(u.dtype)
    return u / (_norm(u, axis=1) + NS_EPS)


def _norm(x: mx.array, axis: int | None = None) -> mx.array:
    """The L2 norm as torch takes it: accumulated in fp32, rounded once to x's dtype (bf16 squares would
    each be rounded)."""
    keep = axis is not None
    n = mx.sqrt(mx.sum(mx.square(x.astype(mx.float32)), axis=axis, keepdims=keep))
    return n.astype(x.dtype)


def base_lrs(o: OptimConfig, m: ModelConfig) -> dict[str, float]:
    return {
        "matrix": o.matrix_lr,
        "embed": o.tied_embed_lr if m.tie_embeddings else o.embed_lr,
        "head": o.head_lr,
        "scalar": o.scalar_lr,
    }


def weight_decays(o: OptimConfig) -> dict[str, float]:
    return {"matrix": o.muon_wd, "embed": o.embed_wd, "head": o.embed_wd, "scalar": o.scalar_wd}


def momentum_dtype(o: OptimConfig) -> mx.Dtype:
    """Muon's momentum dtype (`optim.muon_momentum_dtype`)."""
    return mx.bfloat16 if o.muon_momentum_dtype == "bfloat16" else mx.float32


def init_state(params: dict[str, mx.array], m: ModelConfig, mom_dtype: mx.Dtype = mx.float32) -> dict[str, mx.array]:
    table = param_table(m)
    state: dict[str, mx.array] = {"step": mx.array(0, dtype=mx.int32)}
    for name, p in params.items():
        if table[name].group == "matrix":
            state[f"{name}.momentum_buffer"] = mx.zeros(p.shape, dtype=mom_dtype)
        else:
            state[f"{name}.exp_avg"] = mx.zeros(p.shape, dtype=mx.float32)
            state[f"{name}.exp_avg_sq"] = mx.zeros(p.shape, dtype=mx.float32)
    return state


def clip_by_global_norm(grads: dict[str, mx.array], max_norm: float,
                        order: list[list[str]] | None = None) -> dict[str, mx.array]:
    """torch's clip_grad_norm_: scale all grads by min(1, max_norm / (norm + 1e-6)). With `order`
    (`optim.grad_clip_banks`: `shared.core.spec.record_clip_order`) the norm of one norm per entry."""
    if order is not None:
        norms = [mx.sqrt(sum(mx.sum(mx.square(grads[n].astype(mx.float32))) for n in entry)) for entry in order]
        norm = mx.sqrt(sum(mx.square(x) for x in norms))
    else:
        norm = mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for g in grads.values()))
    scale = mx.minimum(max_norm / (norm + 1e-6), 1.0)
    return {k: g * scale for k, g in grads.items()}


class MuonAdam:
    """One optimizer step over all groups: `params, state = opt.update(params, grads, state, lr_scale, momentum)`.

    A pure function of its inputs, so the trainer can `mx.compile` it.
    """

    def __init__(self, o: OptimConfig, m: ModelConfig, ns_dtype: mx.Dtype = mx.float32):
        self.o, self.lrs, self.wds = o, base_lrs(o, m), weight_decays(o)
        self.mom_dtype = momentum_dtype(o)
        self.ns_dtype = mx.bfloat16 if self.mom_dtype == mx.bfloat16 else ns_dtype  # the record: NS in bf16
        self.groups = {name: p.group for name, p in param_table(m).items()}
        self.clip_order = record_clip_order(m) if o.grad_clip_banks else None

    def update(
        self,
        params: dict[str, mx.array],
        grads: dict[str, mx.array],
        state: dict[str, mx.array],
        lr_scale: mx.array,
        momentum: mx.array,
    ) -> tuple[dict[str, mx.array], dict[str, mx.array]]:
        o = self.o
        if o.grad_clip_norm > 0:
            grads = clip_by_global_norm(grads, o.grad_clip_norm, self.clip_order)
        step = state["step"] + 1
        t = step.astype(mx.float32)
        bias1 = 1.0 - mx.power(mx.array(o.beta1, dtype=mx.float32), t)
        bias2 = 1.0 - mx.power(mx.array(o.beta2, dtype=mx.float32), t)
        new_params: dict[str, mx.array] = {}
        new_state: dict[str, mx.array] = {"step": step}
        for name, p in params.items():
            g = grads[name].astype(mx.float32)
            group = self.groups[name]
            lr = self.lrs[group] * lr_scale
            if self.wds[group]:
                p = p * (1.0 - lr * self.wds[group])  # decoupled weight decay
            if group == "matrix":
                buf, g = self._momentum(state[f"{name}.momentum_buffer"], g, momentum)
                new_state[f"{name}.momentum_buffer"] = buf
                if o.muon_row_norm:
                    g = row_normalize(g, o.muon_row_norm_eps)
                u = newton_schulz(g.astype(self.ns_dtype), o.muon_backend_steps, o.muon_ns,
                                  o.muon_ns_form).astype(mx.float32)
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if o.muon_ns_form == "record":  # the scale joins the step size, as #1855
                    new_params[name] = p - (lr * scale) * u
                else:
                    new_params[name] = p - lr * (u * scale)
            else:
                m1 = o.beta1 * state[f"{name}.exp_avg"] + (1.0 - o.beta1) * g
                m2 = o.beta2 * state[f"{name}.exp_avg_sq"] + (1.0 - o.beta2) * mx.square(g)
                new_state[f"{name}.exp_avg"], new_state[f"{name}.exp_avg_sq"] = m1, m2
                denom = mx.sqrt(m2) / mx.sqrt(bias2) + o.adam_eps
                new_params[name] = p - (lr / bias1) * m1 / denom
        return new_params, new_state

    def _momentum(self, buf: mx.array, g: mx.array, momentum: mx.array) -> tuple[mx.array, mx.array]:
        """The new momentum buffer and the Nesterov look-ahead g + momentum * buf. In bf16
        (`optim.muon_momentum_dtype`) each operation rounds to bf16 as torch's in-place ops do."""
        if self.mom_dtype == mx.float32:
            buf = momentum * buf + g
            return buf, g + momentum * buf
        f32, bf16 = mx.float32, mx.bfloat16
        g = g.astype(bf16).astype(f32)
        buf = (momentum * buf.astype(f32)).astype(bf16).astype(f32)
        buf = (buf + g).astype(bf16)
        # torch's bf16 add(alpha=m) rounds the scalar m to bf16 first; its mul_(m) does not
        return buf, (g + momentum.astype(bf16).astype(f32) * buf.astype(f32)).astype(bf16)
