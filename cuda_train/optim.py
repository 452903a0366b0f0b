"""The optimizers of the spec: Muon for 2-D block matrices, Adam for the rest.

Groups come from the parameter table (`shared.core.spec.param_table`): `matrix` -> Muon (lr
`matrix_lr`), `embed` -> Adam (`tied_embed_lr`, or `embed_lr` when
untied), `head` -> Adam (`head_lr`), `scalar` -> Adam (`scalar_lr`).
Each step the trainer sets `lr = base_lr * lr_scale` on every group and the
Muon momentum from `shared.core.schedule`.

Muon (Keller Jordan's, as used by the challenge's reference): Nesterov
momentum, then the update is orthogonalised by five Newton-Schulz
iterations and scaled by sqrt(max(1, rows/cols)). The record stack's
options (#1855): MuonEq-R (`optim.muon_row_norm`: each row of the update
divided by its L2 norm first), Polar Express per-iteration coefficients
(`optim.muon_ns`) and decoupled weight decay (`p *= 1 - lr * wd`:
`optim.muon_wd`; Adam is AdamW with `embed_wd` / `scalar_wd`). Under DDP the
orthogonalisation is split: parameter i is handled by rank i % world_size,
each rank writes its results into a flat buffer of zeros and one all-reduce
SUM gives every rank every update. Unlike the reference, every rank keeps the
momentum buffer of every matrix (an elementwise update, cheap next to
Newton-Schulz), so rank 0 alone holds the whole optimizer state and can save
a checkpoint without a collective, and a run can resume on another world size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from shared.core.config import OptimConfig
from shared.core.spec import NS_EPS, ns_coefficients, param_table


def newton_schulz(g: Tensor, steps: int, dtype: torch.dtype, kind: str = "quintic") -> Tensor:
    """An approximately orthogonal matrix with g's row/column space (quintic Newton-Schulz).

    Run in bf16 on CUDA (the reference's choice: fast and accurate enough for an
    update direction) and in fp32 for parity (`dtype` follows train.compute_dtype).
    """
    x = g.to(dtype)
    x = x / (x.norm() + NS_EPS)
    transposed = g.size(0) > g.size(1)
    if transposed:  # iterate on the wide orientation: the Gram matrix x @ x.T is the smaller one
        x = x.T
    for a, b, c in ns_coefficients(kind, steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def row_normalize(u: Tensor) -> Tensor:
    """MuonEq-R (#1855): each row of the update divided by its L2 norm."""
    return u / (u.norm(dim=1, keepdim=True) + NS_EPS)


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised update for 2-D matrices; the work split over `world_size` ranks."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, ns_dtype: torch.dtype,
                 rank: int = 0, world_size: int = 1, nesterov: bool = True, weight_decay: float = 0.0,
                 row_norm: bool = False, ns: str = "quintic"):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                                      weight_decay=weight_decay, row_norm=row_norm, ns=ns))
        self.ns_dtype, self.rank, self.world_size = ns_dtype, rank, world_size

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            lr, mom = group["lr"], group["momentum"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=self.ns_dtype)
            offset = 0
            for i, p in enumerate(params):
                n = p.numel()
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(mom).add_(g)
                if i % self.world_size == self.rank:
                    u = g.add(buf, alpha=mom) if group["nesterov"] else buf
                    if group["row_norm"]:
                        u = row_normalize(u)
                    u = newton_schulz(u, group["backend_steps"], self.ns_dtype, group["ns"])
                    u = u * max(1.0, p.size(0) / p.size(1)) ** 0.5
                    flat[offset : offset + n] = u.reshape(-1)
                offset += n
            if self.world_size > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                if group["weight_decay"]:
                    p.mul_(1.0 - lr * group["weight_decay"])  # decoupled weight decay
                p.add_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=-lr)
                offset += p.numel()


class Optimizers:
    """Muon + Adam over one model; schedule, step and state as one object."""

    def __init__(self, model: nn.Module, o: OptimConfig, tied: bool, ns_dtype: torch.dtype,
                 rank: int = 0, world_size: int = 1, fused: bool = False):
        named = dict(model.named_parameters())
        self.names = {p: n for n, p in named.items()}
        table = param_table(model.cfg)  # each parameter's optimizer group is its row's
        groups: dict[str, list[Tensor]] = {"embed": [], "head": [], "matrix": [], "scalar": []}
        for name, p in named.items():
            groups[table[name].group].append(p)
        adam_kwargs = dict(betas=(o.beta1, o.beta2), eps=o.adam_eps, fused=fused)
        adam_groups = [
            {"params": groups["embed"], "lr": o.tied_embed_lr if tied else o.embed_lr, "weight_decay": o.embed_wd},
            {"params": groups["head"], "lr": o.head_lr, "weight_decay": o.embed_wd},
            {"params": groups["scalar"], "lr": o.scalar_lr, "weight_decay": o.scalar_wd},
        ]
        adam_groups = [g for g in adam_groups if g["params"]]
        for g in adam_groups:
            g["base_lr"] = g["lr"]
        self.adam = torch.optim.AdamW(adam_groups, **adam_kwargs)
        self.muon = Muon(groups["matrix"], lr=o.matrix_lr, momentum=o.muon_momentum,
                         backend_steps=o.muon_backend_steps, ns_dtype=ns_dtype, rank=rank, world_size=world_size,
                         weight_decay=o.muon_wd, row_norm=o.muon_row_norm, ns=o.muon_ns)
        for g in self.muon.param_groups:
            g["base_lr"] = o.matrix_lr
        self.all = (self.adam, self.muon)
        self.params = list(named.values())
        self.grad_clip_norm = o.grad_clip_norm

    def set_schedule(self, lr_scale: float, momentum: float) -> None:
        for opt in self.all:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_scale
        for g in self.muon.param_groups:
            g["momentum"] = momentum

    def step(self) -> None:
        if self.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip_norm)
        for opt in self.all:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    # State as canonical-named numpy arrays: `muon.momentum/<param>`, `adam.m/<param>`,
    # `adam.v/<param>`, `adam.step/<param>`, so a checkpoint names what it holds.
    def state_tensors(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for p, st in self.muon.state.items():
            out[f"muon.momentum/{self.names[p]}"] = _np(st["momentum_buffer"])
        for p, st in self.adam.state.items():
            name = self.names[p]
            out[f"adam.m/{name}"] = _np(st["exp_avg"])
            out[f"adam.v/{name}"] = _np(st["exp_avg_sq"])
            out[f"adam.step/{name}"] = np.asarray([float(st["step"])], dtype=np.float32)
        return out

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        for p, name in self.names.items():
            dev = p.device
            if f"muon.momentum/{name}" in tensors:
                self.muon.state[p]["momentum_buffer"] = torch.from_numpy(tensors[f"muon.momentum/{name}"]).to(dev)
            if f"adam.m/{name}" in tensors:
                step = float(tensors[f"adam.step/{name}"][0])
                # fused/capturable Adam keeps `step` on the parameter's device; plain Adam on the CPU.
                step_dev = dev if self.adam.defaults.get("fused") else "cpu"
                self.adam.state[p] = {
                    "step": torch.tensor(step, dtype=torch.float32, device=step_dev),
                    "exp_avg": torch.from_numpy(tensors[f"adam.m/{name}"]).to(dev),
                    "exp_avg_sq": torch.from_numpy(tensors[f"adam.v/{name}"]).to(dev),
                }

    def snapshot(self) -> list[dict]:
        """Deep copies of the optimizer states (to undo the warm-up steps)."""
        return [_clone(opt.state_dict()) for opt in self.all]

    def restore(self, snap: list[dict]) -> None:
        for opt, sd in zip(self.all, snap, strict=True):
            opt.load_state_dict(_clone(sd))


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _clone(obj):
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj
