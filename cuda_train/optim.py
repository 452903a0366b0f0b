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
That is `train.grad_sync = "ddp"`. With "sharded" (the default) there is no DDP: the
matrix gradients are reduce-scattered so that rank r receives the mean gradient of
exactly the matrices it orthogonalises, keeps momentum for those only, and all-gathers
hand every rank every update (`Layout`); the other gradients are
all-reduced. The collectives go bank by bank (one matrix per rank, as #1855), asynchronously: the
banks' reduce-scatters run while Adam steps, and each bank's all-gather while the next bank is
orthogonalised. The numbers are the same as "ddp"'s; `state_tensors` then gathers the
momentum (a collective: every rank calls it), so checkpoints stay world-size free.

The record's exact numerics, each a key (#1855; docs/REFERENCE.md "Fidelity: optimizer"):
`optim.muon_row_norm_eps = "max"` (row norms as max(norm, eps)), `muon_momentum_dtype =
"bfloat16"` (bf16 gradient, momentum and Newton-Schulz), `muon_ns_form = "record"` (its order
of operations) and `grad_clip_banks` (the clip's norm taken per stacked bank, in its order).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from shared.core.config import OptimConfig
from shared.core.spec import NS_EPS, ns_coefficients, param_table, record_clip_order


def newton_schulz(g: Tensor, steps: int, dtype: torch.dtype, kind: str = "quintic", form: str = "baseline") -> Tensor:
    """An approximately orthogonal matrix with g's row/column space (quintic Newton-Schulz).

    Run in bf16 on CUDA (the reference's choice: fast and accurate enough for an
    update direction) and in fp32 for parity (`dtype` follows train.compute_dtype).
    `form="record"` orders the operations as #1855 does (`optim.muon_ns_form`): transpose
    to the wide side before the norm, and B = b A + c (A A) rather than (c A) A.
    """
    x = g.to(dtype)
    transposed = g.size(0) > g.size(1)
    if form == "record":
        if transposed:
            x = x.mT
        x = x / (x.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
        for a, b, c in ns_coefficients(kind, steps):
            gram = x @ x.mT
            x = a * x + (b * gram + c * (gram @ gram)) @ x
        return x.mT if transposed else x
    x = x / (x.norm() + NS_EPS)
    if transposed:  # iterate on the wide orientation: the Gram matrix x @ x.T is the smaller one
        x = x.T
    for a, b, c in ns_coefficients(kind, steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def row_normalize(u: Tensor, eps_mode: str = "add") -> Tensor:
    """MuonEq-R (#1855): each row of the update divided by its L2 norm. `eps_mode="max"`
    (`optim.muon_row_norm_eps`) is the record's: max(norm, eps), the norm taken in fp32 and
    rounded to the update's dtype before the division."""
    if eps_mode == "max":
        return u / u.float().norm(dim=-1, keepdim=True).clamp_min(NS_EPS).to(u.dtype)
    return u / (u.norm(dim=1, keepdim=True) + NS_EPS)


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised update for 2-D matrices; the work split over `world_size` ranks.

    `optim.muon_momentum_dtype = "bfloat16"` is #1855's precision: the
    gradient rounded to bf16, the momentum buffer, look-ahead and row norm in bf16, and
    Newton-Schulz in bf16 whatever `ns_dtype` says."""

    def __init__(self, params, o: OptimConfig, ns_dtype: torch.dtype, rank: int = 0, world_size: int = 1):
        super().__init__(params, dict(lr=o.matrix_lr, momentum=o.muon_momentum, weight_decay=o.muon_wd))
        self.cfg = o   # the update's form: optim.muon_ns, muon_ns_form, muon_row_norm(_eps), muon_backend_steps
        self.momentum_dtype = torch.bfloat16 if o.muon_momentum_dtype == "bfloat16" else None
        self.ns_dtype = torch.bfloat16 if self.momentum_dtype == torch.bfloat16 else ns_dtype
        self.rank, self.world_size = rank, world_size
        self.sharded = False                      # momentum and gradients only for owned matrices
        self.layouts: dict[int, Layout] = {}
        self.pending: dict[tuple[int, int], tuple] = {}   # (group, bank) -> reduce-scatter in flight, its output

    def owns(self, i: int) -> bool:
        """Whether this rank orthogonalises the group's i-th matrix (round robin over ranks)."""
        return i % self.world_size == self.rank

    def layout(self, gi: int) -> Layout:
        if gi not in self.layouts:
            self.layouts[gi] = Layout([p.numel() for p in self.param_groups[gi]["params"]], self.world_size)
        return self.layouts[gi]

    @torch.no_grad()
    def step(self, closure=None):
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            if not params:
                continue
            lr = group["lr"]
            # record form: the shape scale joins the step size (p -= lr * scale * u), as #1855
            folded = self.cfg.muon_ns_form == "record"
            sharded = self.sharded and self.world_size > 1
            if sharded:
                full, starts = self._sharded_updates(gi, group)
            else:
                flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=self.ns_dtype)
                offset = 0
                for i, p in enumerate(params):
                    u = self._update(p, group, self.owns(i))
                    if u is not None:
                        flat[offset : offset + p.numel()] = (u if folded else u * _shape_scale(p)).reshape(-1)
                    offset += p.numel()
                if self.world_size > 1:
                    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                full, starts = flat, [0, *np.cumsum([p.numel() for p in params])[:-1].tolist()]
            full = full.to(params[0].dtype)        # one conversion for all (exact, element by element)
            updates = [full[o : o + p.numel()].view_as(p) for o, p in zip(starts, params, strict=True)]
            # foreach ops: a few kernels for all matrices, each element's arithmetic that of p.mul_ / p.add_
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])  # decoupled weight decay
            steps: dict[float, list[int]] = {}
            for i, p in enumerate(params):
                steps.setdefault(-lr * _shape_scale(p) if folded else -lr, []).append(i)
            for step, idx in steps.items():
                torch._foreach_add_([params[i] for i in idx], [updates[i] for i in idx], alpha=step)

    def _update(self, p: Tensor, group: dict, owned: bool) -> Tensor | None:
        """Momentum for `p` (every rank keeps it on the DDP path), then, where this rank owns `p`, its
        orthogonalised update (before the shape scale)."""
        mom = group["momentum"]
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if self.momentum_dtype is not None:
            g = g.to(self.momentum_dtype)
        buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
        buf.mul_(mom).add_(g)
        if not owned:
            return None
        u = g.add(buf, alpha=mom)   # Nesterov
        if self.cfg.muon_row_norm:
            u = row_normalize(u, self.cfg.muon_row_norm_eps)
        return newton_schulz(u, self.cfg.muon_backend_steps, self.ns_dtype, self.cfg.muon_ns, self.cfg.muon_ns_form)

    def _sharded_updates(self, gi: int, group: dict) -> tuple[Tensor, list[int]]:
        """Bank by bank (one matrix per rank, #1855's banks): wait for the bank's reduce-scatter (launched by
        `Optimizers.reduce_grads`), orthogonalise this rank's matrix, start the bank's all-gather and go on
        to the next bank while it runs; the full update buffer once every gather is done."""
        params, lay = group["params"], self.layout(gi)
        folded = self.cfg.muon_ns_form == "record"
        full = torch.empty(lay.total, device=params[0].device, dtype=self.ns_dtype)
        gathers = []
        for k, bank in enumerate(lay.banks):
            pending = self.pending.pop((gi, k), None)
            if pending is not None:   # the mean gradient of this rank's matrix of the bank
                work, mine = pending
                work.wait()
                mine.div_(self.world_size)
            send = torch.zeros(lay.chunks[k], device=full.device, dtype=self.ns_dtype)
            for i in bank:
                if not self.owns(i):
                    continue
                p = params[i]
                if pending is not None:
                    p.grad = mine[: p.numel()].view_as(p).to(p.dtype)
                u = self._update(p, group, True)
                send[: p.numel()] = (u if folded else u * _shape_scale(p)).reshape(-1)
            out = full[lay.offsets[k] : lay.offsets[k] + lay.chunks[k] * self.world_size]
            gathers.append(dist.all_gather_into_tensor(out, send, async_op=True))
        for work in gathers:
            work.wait()
        return full, lay.start


class Layout:
    """The sharded collectives' buffer for a Muon group, in banks of one matrix per rank (#1855): matrix
    i sits in bank i // world_size, in the chunk of its owner (i % world_size), each chunk of a bank padded
    to the bank's largest matrix; banks one after another. A bank's reduce-scatter gives each rank its
    matrix's gradient, its all-gather every rank the bank's updates, and the banks overlap."""

    def __init__(self, sizes: list[int], world_size: int):
        n = len(sizes)
        self.banks = [list(range(b, min(b + world_size, n))) for b in range(0, n, world_size)]
        self.chunks = [max(sizes[i] for i in bank) for bank in self.banks]
        self.offsets = [0, *np.cumsum([c * world_size for c in self.chunks]).tolist()]
        self.total = self.offsets[-1]
        self.offsets = self.offsets[:-1]
        self.start = [self.offsets[i // world_size] + (i % world_size) * self.chunks[i // world_size]
                      for i in range(n)]   # of matrix i in the full buffer


def _shape_scale(p: Tensor) -> float:
    return max(1.0, p.size(0) / p.size(1)) ** 0.5


class Optimizers:
    """Muon + Adam over one model; schedule, step and state as one object."""

    def __init__(self, model: nn.Module, o: OptimConfig, tied: bool, ns_dtype: torch.dtype,
                 rank: int = 0, world_size: int = 1, fused: bool = False, sharded: bool = False):
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
        self.muon = Muon(groups["matrix"], o, ns_dtype=ns_dtype, rank=rank, world_size=world_size)
        for g in self.muon.param_groups:
            g["base_lr"] = o.matrix_lr
        self.muon.sharded = sharded and world_size > 1
        self.world_size = world_size
        self.all = (self.adam, self.muon)
        self.params = list(named.values())
        self.grad_clip_norm = o.grad_clip_norm
        # optim.grad_clip_banks: the norms #1855's clip takes, in its order (a bank: its matrices stacked)
        self.clip_order = ([[named[n] for n in entry] for entry in record_clip_order(model.cfg)]
                           if o.grad_clip_banks else None)

    def set_schedule(self, lr_scale: float, momentum: float) -> None:
        for opt in self.all:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_scale
        for g in self.muon.param_groups:
            g["momentum"] = momentum

    @torch.no_grad()
    def clip(self) -> None:
        """Scale every gradient by min(1, max_norm / (global norm + 1e-6)) (torch's clip_grad_norm_)."""
        if self.grad_clip_norm <= 0:
            return
        if self.clip_order is None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip_norm)
            return
        tensors = []
        for entry in self.clip_order:
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in entry]
            tensors.append(grads[0] if len(grads) == 1 else torch.stack(grads))
        total = torch.nn.utils.get_total_norm(tensors)
        torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip_norm, total)

    def step(self, clip: bool = True) -> None:
        """Clip (unless the caller already has: `clip=False`), then step Adam and Muon."""
        if clip:
            self.clip()
        for opt in self.all:
            opt.step()

    @torch.no_grad()
    def reduce_grads(self) -> None:
        """The mean over ranks of the gradients, for the sharded Muon: each matrix's only on the rank that
        orthogonalises it (one reduce-scatter), every other parameter's everywhere (one all-reduce)."""
        if self.world_size == 1:
            return
        mats = self.muon.param_groups[0]["params"] if self.muon.param_groups else []
        if mats:   # one reduce-scatter per bank, in flight while the rest is reduced and Adam steps
            lay = self.muon.layout(0)
            for k, bank in enumerate(lay.banks):
                full = torch.zeros(lay.chunks[k] * self.world_size, device=mats[0].device, dtype=torch.float32)
                for i in bank:
                    p = mats[i]
                    if p.grad is not None:
                        o = lay.start[i] - lay.offsets[k]
                        full[o : o + p.numel()] = p.grad.reshape(-1)
                    p.grad = None   # Muon.step sets the owner's from the bank's result
                mine = torch.empty(lay.chunks[k], device=full.device, dtype=full.dtype)
                self.muon.pending[(0, k)] = (dist.reduce_scatter_tensor(mine, full, op=dist.ReduceOp.SUM,
                                                                        async_op=True), mine)
        rest = [p for g in self.adam.param_groups for p in g["params"]]
        if rest:
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in rest]
            flat = torch.cat([g.reshape(-1).float() for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            for p, g in zip(rest, torch.split(flat, [p.numel() for p in rest]), strict=True):
                p.grad = g.view_as(p).to(p.dtype)

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    # State as canonical-named numpy arrays: `muon.momentum/<param>`, `adam.m/<param>`,
    # `adam.v/<param>`, `adam.step/<param>`, so a checkpoint names what it holds.
    def state_tensors(self) -> dict[str, np.ndarray]:
        """Sharded: a collective (every rank must call it), gathering each matrix's momentum from its owner."""
        out: dict[str, np.ndarray] = {}
        if self.muon.sharded:
            mats = self.muon.param_groups[0]["params"]
            have = [p in self.muon.state for p in mats]
            flags = torch.tensor([float(h) for h in have], device=mats[0].device)
            dist.all_reduce(flags, op=dist.ReduceOp.SUM)       # a matrix has momentum once it has stepped
            flat = torch.cat([self.muon.state[p]["momentum_buffer"].reshape(-1).float() if p in self.muon.state
                              else torch.zeros(p.numel(), device=p.device) for p in mats])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)        # x + 0: each owner's buffer, exactly
            for p, f, buf in zip(mats, flags.tolist(), torch.split(flat, [p.numel() for p in mats]), strict=True):
                if f:
                    out[f"muon.momentum/{self.names[p]}"] = _np(buf.view_as(p))
        else:
            for p, st in self.muon.state.items():
                out[f"muon.momentum/{self.names[p]}"] = _np(st["momentum_buffer"])
        for p, st in self.adam.state.items():
            name = self.names[p]
            out[f"adam.m/{name}"] = _np(st["exp_avg"])
            out[f"adam.v/{name}"] = _np(st["exp_avg_sq"])
            out[f"adam.step/{name}"] = np.asarray([float(st["step"])], dtype=np.float32)
        return out

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        mats = self.muon.param_groups[0]["params"] if self.muon.param_groups else []
        foreign = {p for i, p in enumerate(mats) if self.muon.sharded and not self.muon.owns(i)}
        for p, name in self.names.items():
            dev = p.device
            if f"muon.momentum/{name}" in tensors and p not in foreign:
                dtype = self.muon.momentum_dtype or p.dtype
                self.muon.state[p]["momentum_buffer"] = torch.from_numpy(
                    tensors[f"muon.momentum/{name}"]).to(dev, dtype)
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

    def restore(self, snap: list[dict], keep_muon_momentum: bool = False) -> None:
        """Back to `snap`; with `keep_muon_momentum` (optim.warmup_muon_momentum = keep) Muon's momentum
        buffers stay as they are now when `snap` held none (a fresh start: a resumed run keeps its own)."""
        fresh = not snap[1]["state"]
        kept = ({p: st["momentum_buffer"] for p, st in self.muon.state.items()}
                if keep_muon_momentum and fresh else {})
        for opt, sd in zip(self.all, snap, strict=True):
            opt.load_state_dict(_clone(sd))
        if self.muon.momentum_dtype is not None:  # load_state_dict casts state to the parameter's dtype
            for st in self.muon.state.values():
                st["momentum_buffer"] = st["momentum_buffer"].to(self.muon.momentum_dtype)
        for p, buf in kept.items():
            self.muon.state[p]["momentum_buffer"] = buf


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
