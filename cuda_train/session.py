"""The PyTorch training session: model, DDP, optimizers and one step, for the shared loop.

    session = TorchSession(cfg, runtime.init())    # a rank under torchrun, or one process
    session.load_weights(params)
    loss = session.step([(x, y), ...], lr_scale, momentum)   # the global mean loss

`torch.compile` and DDP wrap the single-device model here, never inside
model.py. A step runs this rank's micro-batches, each split into equal
chunks (`shared.data.shards.chunk_count`, the `train.max_microbatch_tokens`
memory cap); DDP's gradient all-reduce fires only on the last backward of
the step. The loss is all-reduced so that every rank sees the same number
(and stops together on a NaN). Under bf16 autocast on CUDA the weights stay
fp32 masters. Every rank holds the full weights and optimizer state, so
rank 0 saves checkpoints without a collective.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from cuda_train import lora, runtime
from cuda_train.model import GPT, export_params, load_params, varlen_ready
from cuda_train.optim import Optimizers
from shared.core.config import Config
from shared.core.spec import segment_starts
from shared.data.bpb import ByteTables, EvalResult
from shared.data.shards import chunk_count, val_batches
from shared.errors import PgolfError
from shared.eval.windows import eval_seg_len

ADAM_BETA2, ADAM_EPS = 0.99, 1e-8  # the adapters' Adam (beta1 = 0, #1855), the same in mlx_train/session.py

RNG_KEY = "rng/torch_cpu"  # the CPU generator's state among the optimizer tensors (dropout-free, but seeded)
EMA_PREFIX = "ema/"        # the EMA of the weights among the optimizer tensors


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast (weights stay fp32 masters), or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: tuple[np.ndarray, np.ndarray], device: torch.device) -> tuple[Tensor, Tensor]:
    x, y = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in batch)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


def local_runtime(cfg: Config) -> runtime.Runtime:
    """One process, no process group: fp32 work on the CPU (exact, comparable with MLX: a GPU may use
    TF32), the rest on CUDA when present. For evaluation, packing and parity."""
    on_gpu = cfg.train.compute_dtype != "float32" and torch.cuda.is_available()
    dev = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    return runtime.Runtime(rank=0, world_size=1, local_rank=0, device=dev)


# On a CPU, inductor's kernels are not bit-reproducible run to run (docs/RELIABILITY.md
# "Determinism"), so train.compile resolves to eager there: no speed lost on CPU, resume bit-exact.
CPU_COMPILE_NOTE = "train.compile=true resolves to off on the CPU (not bit-reproducible there: docs/RELIABILITY.md)"


def compile_enabled(cfg: Config, device: torch.device) -> bool:
    """Whether a training session wraps its model in torch.compile: `train.compile`, on CUDA only."""
    return cfg.train.compile and device.type != "cpu"


def fused_kernels_usable(cfg: Config, device: torch.device) -> bool:
    """Whether `train.fused_kernels` = "auto" finds what it needs here: a CUDA device and triton."""
    if cfg.train.fused_kernels == "off" or device.type != "cuda":
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None


class TorchSession:
    """This rank's model and optimizers; `rt` says which rank, how many, and on what device.

    `training=False` (evaluation, packing, parity) skips `torch.compile` and the DDP wrapper."""

    backend = "torch"

    def __init__(self, cfg: Config, rt: runtime.Runtime, training: bool = True):
        self.cfg, self.rt = cfg, rt
        self.rank, self.world_size, self.is_main = rt.rank, rt.world_size, rt.is_main
        self.dtype = runtime.compute_dtype(cfg.train.compute_dtype, rt.device)
        torch.manual_seed(cfg.train.seed)
        self.model = GPT(cfg.model).to(rt.device)
        # train.fused_kernels: the Triton MLP and loss (cuda_train/kernels.py), imported only here and only then
        self.fused_kernels = training and fused_kernels_usable(cfg, rt.device)
        if cfg.train.fused_kernels == "auto" and self.fused_kernels:  # the key itself: an exported "off" script leaves kernels.py out
            from cuda_train import kernels

            self.model.use_fused_kernels(kernels)
        self.opt: Optimizers | None = None
        self._lora: lora.Adapters | None = None  # test-time adapters while a LoRA evaluation runs
        self.ema: list[Tensor] | None = None  # fp32 copies, in self.model.parameters() order
        self._waits = 0  # wait_all calls so far (each one's store key)
        # eval.lora_compile: the TTT forward and backward compiled on CUDA, one graph for every rows x width
        self.ttt_compile = cfg.eval.lora_compile and rt.device.type != "cpu"
        self._ttt_nats = torch.compile(ttt_nats, dynamic=True) if self.ttt_compile else ttt_nats
        self.fused_adam = hasattr(torch, "_fused_adamw_")  # the adapters' AdamW in one fused kernel (else foreach)
        self.training = training
        self.compile = compile_enabled(cfg, rt.device) and training
        # fullgraph (train.compile_fullgraph): a graph break would split the step into several graphs with
        # host round trips between them; an error names it instead (benchmarks/step_profile.py counts them)
        self.compiled = (torch.compile(self.model, dynamic=False, fullgraph=cfg.train.compile_fullgraph)
                         if self.compile else self.model)
        # train.grad_sync = "sharded": no DDP wrapper, the optimizer reduces the gradients itself (optim.py)
        self.ddp = cfg.train.grad_sync == "ddp" and rt.distributed and training
        self.net = DDP(self.compiled, device_ids=[rt.device.index] if rt.is_cuda else None) if self.ddp else self.compiled
        # FA3 varlen: segment starts computed on the host with each batch (no sync, no data-dependent shape)
        self.host_cu = cfg.model.doc_attention and varlen_ready(rt.device, self.dtype)

    def _segment_starts(self, x: np.ndarray, seg_len: int = 0) -> Tensor | None:
        """`cu_seqlens` of the rows `x` as the model will see them, on the device; None where FA3 varlen
        does not run (the SDPA path builds its mask from the segment ids on the device)."""
        if not self.cfg.model.doc_attention or not self.host_cu:   # the first test folds in a script without it
            return None
        cu = torch.from_numpy(segment_starts(x, seg_len or self.cfg.model.doc_max_len))
        return cu.pin_memory().to(self.rt.device, non_blocking=True) if self.rt.is_cuda else cu

    def _optimizers(self) -> Optimizers:
        if self.opt is None:  # built after the weights are loaded (the groups hold the parameters)
            self.opt = Optimizers(self.model, self.cfg.optim, self.cfg.model.tie_embeddings, ns_dtype=self.dtype,
                                  rank=self.rank, world_size=self.world_size, fused=self.rt.is_cuda,
                                  sharded=self.cfg.train.grad_sync == "sharded")
        return self.opt

    # -- the step
    def _micro_step(self, x: Tensor, y: Tensor, weight: float, sync: bool, looped: bool, seg_len: int = 0,
                    host: np.ndarray | None = None) -> Tensor:
        """Forward + backward of one micro-batch in equal chunks, loss scaled by `weight`; its mean loss.
        `host`: the micro-batch's inputs on the host (for FA3 varlen's segment starts)."""
        n = chunk_count(x.size(0), x.size(1), self.cfg.train.max_microbatch_tokens)
        rows = x.size(0) // n
        total = torch.zeros((), device=self.rt.device)
        for j, (cx, cy) in enumerate(zip(x.chunk(n), y.chunk(n), strict=True)):
            cu = None
            if self.cfg.model.doc_attention:  # #1855's packing: a chunk's rows (one stream) as one row
                cx, cy = cx.reshape(1, -1), cy.reshape(1, -1)
                if host is not None:
                    cu = self._segment_starts(host[j * rows:(j + 1) * rows].reshape(1, -1), seg_len)
            last = j == n - 1
            ctx = self.net.no_sync() if self.ddp and not (sync and last) else contextlib.nullcontext()
            with ctx:
                with autocast(self.rt.device, self.dtype):
                    loss = self.net(cx, cy, looped=looped, seg_len=seg_len, cu=cu)
                (loss * (weight / n)).backward()
            total += loss.detach().float() / n
        return total

    def step(self, batches: list[tuple[np.ndarray, np.ndarray]], lr_scale: float, momentum: float,
             looped: bool = False, seg_len: int = 0) -> float:
        opt = self._optimizers()
        opt.set_schedule(lr_scale, momentum)
        looped = looped and self.cfg.model.looping
        # optim.grad_clip_local (#1855's order): DDP stays silent, each rank clips its own gradient, then
        # the ranks average; otherwise DDP averages during the last backward and the average is clipped.
        # Sharded (no DDP): the optimizer reduce-scatters after a local clip; a global clip needs every
        # averaged gradient, so that case all-reduces them all, as DDP would.
        total = torch.zeros((), device=self.rt.device)
        for k, batch in enumerate(batches):
            x, y = to_device(batch, self.rt.device)
            sync = k == len(batches) - 1 and not self.cfg.optim.grad_clip_local   # DDP's all-reduce: the last backward
            total += self._micro_step(x, y, 1.0 / len(batches), sync=sync, looped=looped, seg_len=seg_len,
                                      host=batch[0])
        if self.world_size == 1:
            opt.step()
        elif self.cfg.train.grad_sync == "sharded":
            if self.cfg.optim.grad_clip_local or opt.grad_clip_norm <= 0:
                opt.clip()
                opt.reduce_grads()
                opt.step(clip=False)
            else:
                self._average_grads()
                opt.step()
        elif self.cfg.optim.grad_clip_local:
            opt.clip()
            self._average_grads()
            opt.step(clip=False)
        else:
            opt.step()
        opt.zero_grad()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.model.parameters()],
                                     1.0 - self.cfg.train.ema_decay)
        loss = self.rt.all_reduce(total / len(batches), "sum")  # global mean loss, the same on every rank
        return loss.item() / self.world_size  # .item() waits for the GPU, so the loop's clock is true

    @torch.no_grad()
    def _average_grads(self) -> None:
        """The mean over ranks of every parameter's gradient, in one flat all-reduce (what DDP would do)."""
        params = list(self.model.parameters())
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = self.rt.all_reduce(torch.cat([g.reshape(-1).float() for g in grads]), "sum").div_(self.world_size)
        for p, g in zip(params, torch.split(flat, [g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p).to(p.dtype)

    @torch.no_grad()
    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        was = self.model.training
        self.model.eval()
        xt, yt = to_device((x, y), self.rt.device)
        with autocast(self.rt.device, self.dtype):
            out = float(self.compiled(xt, yt, cu=self._segment_starts(x)))
        self.model.train(was)
        return out

    # -- evaluation
    @torch.no_grad()
    def evaluate(self, val_tokens: np.ndarray, tables: ByteTables, rank: int | None = None,
                 world_size: int | None = None) -> EvalResult:
        """Summed nats/tokens/bytes of this rank's share of the validation split, reduced over ranks,
        for the weights that get packed (the EMA when on)."""
        if self.ema is not None:
            live = [p.detach().clone() for p in self.model.parameters()]
            self._copy_into_model(self.ema)
            try:
                return self._evaluate(val_tokens, tables, rank, world_size)
            finally:
                self._copy_into_model(live)
        return self._evaluate(val_tokens, tables, rank, world_size)

    @torch.no_grad()
    def _copy_into_model(self, tensors: list[Tensor]) -> None:
        for p, t in zip(self.model.parameters(), tensors, strict=True):
            p.copy_(t)

    @torch.no_grad()
    def _evaluate(self, val_tokens: np.ndarray, tables: ByteTables, rank: int | None,
                  world_size: int | None) -> EvalResult:
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        e, t = self.cfg.eval, self.cfg.train
        was = self.model.training
        self.model.eval()
        nats = torch.zeros((), device=self.rt.device, dtype=torch.float64)
        tokens = nbytes = 0
        for x, y, b in val_batches(val_tokens, t.seq_len, e.batch_tokens, tables, rank, world_size, e.max_tokens):
            xt, yt = to_device((x, y), self.rt.device)
            with autocast(self.rt.device, self.dtype):
                nats += self.compiled(xt, yt, reduction="sum", cu=self._segment_starts(x)).double()
            tokens += y.size
            nbytes += b
        self.model.train(was)
        totals = torch.tensor([0.0, float(tokens), float(nbytes)], device=self.rt.device, dtype=torch.float64)
        totals[0] = nats
        if world_size > 1:  # totals, never averages of averages (shared/data/bpb.py)
            self.rt.all_reduce(totals, "sum")
        n, tok, by = totals.tolist()
        return EvalResult(n, int(round(tok)), int(round(by)))

    def evaluate_params(self, params: dict[str, np.ndarray], val_tokens: np.ndarray, tables: ByteTables) -> EvalResult:
        """`params` evaluated as `eval.mode` says (sliding/TTT on a separate evaluation session: TTT changes weights)."""
        if self.cfg.eval.mode != "flat":
            from shared.eval.driver import run_eval

            ev = TorchSession(self.cfg, self.rt, training=False)
            ev.load_weights(params)
            return run_eval(ev, self.cfg, val_tokens, tables).result
        live = [p.detach().clone() for p in self.model.parameters()]
        load_params(self.model, params)
        try:
            return self._evaluate(val_tokens, tables, None, None)
        finally:
            self._copy_into_model(live)

    # -- evaluation primitives (shared/eval/driver.py decides the order; these only compute)
    @torch.no_grad()
    def token_nats(self, x: np.ndarray, y: np.ndarray, hint: np.ndarray | None = None):
        """float64 [rows, T]: -log softmax over the whole vocabulary at each target (no gradient);
        with LoRA on, row r runs through adapter r. With `hint` [rows, T] (the n-gram tilt's tokens):
        (the targets' nats, the hints' nats) from the same logits."""
        was = self.model.training
        self.model.eval()
        xt, yt = to_device((x, y), self.rt.device)
        with autocast(self.rt.device, self.dtype):
            logits = self.model.logits(xt, seg_len=eval_seg_len(self.cfg), lora=self._lora)
        nats = F.cross_entropy(logits.float().flatten(0, 1), yt.flatten(), reduction="none")
        self.model.train(was)
        nats = nats.view(y.shape).double().cpu().numpy()
        return nats if hint is None else (nats, _hint_nats(logits, hint))

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.asarray(values, dtype=np.float64).copy()).to(self.rt.device)
        return self.rt.all_reduce(t, "sum").cpu().numpy()

    def _reduced_grads(self, params: list[Tensor]) -> list[Tensor]:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        if self.world_size > 1:  # one flat all-reduce: the gradient of the loss summed over all ranks' rows
            flat = self.rt.all_reduce(torch.cat([g.flatten() for g in grads]), "sum")
            grads = list(torch.split(flat, [g.numel() for g in grads]))
            grads = [g.view_as(p) for g, p in zip(grads, params, strict=True)]
        return grads

    def sgd_begin(self, momentum: float) -> None:
        """Fresh momentum buffers for test-time SGD on every weight."""
        self._sgd = (momentum, [torch.zeros_like(p) for p in self.model.parameters()])

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float, clip: float, denom: int) -> None:
        """One SGD step (torch-style momentum, global-norm clip) on sum(nats) / denom over all ranks' rows;
        this rank's rows may be none."""
        momentum, bufs = self._sgd
        params = list(self.model.parameters())
        for p in params:
            p.grad = None
        if x.size:
            xt, yt = to_device((x, y), self.rt.device)
            with autocast(self.rt.device, self.dtype):
                loss = self.model(xt, yt, reduction="sum", seg_len=eval_seg_len(self.cfg))
            (loss.float() / denom).backward()
        with torch.no_grad():
            grads = self._reduced_grads(params)
            if clip > 0:
                norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
                if norm > clip:
                    grads = [g * (clip / (norm + 1e-6)) for g in grads]
            for p, g, b in zip(params, grads, bufs, strict=True):
                b.mul_(momentum).add_(g)
                p.sub_(lr * b)
                p.grad = None

    def sgd_end(self) -> None:
        self._sgd = None

    def lora_begin(self, a_init: dict[str, np.ndarray], scale: float, out_dims: dict[str, int]) -> None:
        """Adapters named as in cuda_train/lora.py, one per input row (A from `a_init`, B zero), fresh Adam
        state; the base weights are frozen (no gradient, nothing saved for them) until `lora_end`."""
        self._lora = lora.Adapters(a_init, out_dims, scale, self.rt.device)
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        self.lora_reset()

    def lora_reset(self, a: dict[str, np.ndarray] | None = None, keep_a: bool = False) -> None:
        """B to zero and Adam state cleared; A to `a`, or kept (`keep_a`, #1855's warm start), or its first draw."""
        self._lora.reset(a, keep_a)
        for t in self._lora.tensors():
            t.grad = None
        self._lora_v = [torch.zeros_like(t) for t in self._lora.tensors()]
        self._lora_t = 0

    def lora_a(self) -> dict[str, np.ndarray]:
        """The adapters' current A matrices."""
        return self._lora.a_values()

    def lora_step(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, lr: float, wd: float,
                  eps: float = ADAM_EPS) -> None:
        """One Adam step (betas (0, 0.99), decoupled wd, torch.optim.AdamW's arithmetic) on the adapters; each
        row's loss is the mean of its masked nats, rows summed, so every document's adapter sees only its own tokens."""
        tensors = self._lora.tensors()
        xt, yt = to_device((x, y), self.rt.device)
        mt = torch.from_numpy(np.asarray(mask, dtype=np.float32)).to(self.rt.device)
        with autocast(self.rt.device, self.dtype):
            logits = self.model.logits(xt, seg_len=eval_seg_len(self.cfg), lora=self._lora)
        nats = F.cross_entropy(logits.float().flatten(0, 1), yt.flatten(), reduction="none").view(mt.shape)
        loss = ((nats * mt).sum(1) / mt.sum(1).clamp(min=1.0)).sum()
        self._lora_adam(tensors, list(torch.autograd.grad(loss, tensors)), lr, wd, eps)

    def lora_score(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, pos: np.ndarray, weight: np.ndarray,
                   max_tokens: int = 0, hint: np.ndarray | None = None):
        """float64 [len(rows), k]: the nats (full softmax) at positions pos [len(rows), k] of each input row, input
        row i through adapter row rows[i], from one forward; the gradient of sum(weight * nats) over the
        adapters is kept for `lora_train` (all weights 0: no gradient at all). At most `max_tokens` input tokens
        per forward (0: all rows at once): the rows go in pieces, the gradient summed over them. With `hint`
        [len(rows), k]: (the nats, the hints' nats at the same positions, no gradient through them)."""
        ad = self._lora
        train = bool(np.any(weight))
        step = len(rows) if max_tokens <= 0 else max(1, max_tokens // max(1, x.shape[1]))
        out, hints = [], []
        for i in range(0, len(rows), step):
            xt, yt = to_device((x[i : i + step], y[i : i + step]), self.rt.device)
            pt = torch.from_numpy(np.asarray(pos[i : i + step], dtype=np.int64)).to(self.rt.device)
            wt = torch.from_numpy(np.asarray(weight[i : i + step], dtype=np.float32)).to(self.rt.device)
            ad.select(self._rows(rows[i : i + step]))
            if self.ttt_compile:   # rows and window widths vary from call to call
                for t in (xt, yt, pt):
                    torch._dynamo.maybe_mark_dynamic(t, 0)
                for t in (xt, yt):
                    torch._dynamo.maybe_mark_dynamic(t, 1)
            with torch.set_grad_enabled(train), autocast(self.rt.device, self.dtype):
                ht = None if hint is None else torch.from_numpy(np.asarray(hint[i : i + step], dtype=np.int64)).to(xt.device)
                nats, hn = self._ttt_nats(self.model, xt, yt, pt, ad, eval_seg_len(self.cfg), ht)
            if train and bool(wt.any()):
                (nats * wt).sum().backward()   # gradients accumulate in the adapters' .grad; no update yet
            out.append(nats.detach().double().cpu().numpy())
            if hn is not None:
                hints.append(hn.double().cpu().numpy())
        ad.select(None)
        nats = np.concatenate(out) if out else np.zeros(pos.shape)
        return nats if hint is None else (nats, np.concatenate(hints) if hints else np.zeros(pos.shape))

    def _rows(self, rows: np.ndarray) -> Tensor | slice:
        """Adapter rows as a slice when consecutive (the adapters' views: no copy held for the backward)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.ttt_compile and rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
            return slice(int(rows[0]), int(rows[0]) + rows.size)
        return torch.from_numpy(rows).to(self.rt.device)

    def lora_train(self, lr: float, wd: float, eps: float = ADAM_EPS) -> None:
        """The Adam step (as `lora_step`) from the gradient the last `lora_score` kept."""
        tensors = self._lora.tensors()
        grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in tensors]
        self._lora_adam(tensors, grads, lr, wd, eps)
        for t in tensors:
            t.grad = None

    def _lora_adam(self, tensors: list[Tensor], grads: list[Tensor], lr: float, wd: float, eps: float) -> None:
        self._lora_t += 1
        if self.fused_adam:   # torch.optim.AdamW(fused=True)'s kernel, as #1855; beta1 = 0: its m is the gradient
            step = torch.tensor(float(self._lora_t), device=self.rt.device)
            grads = [g.contiguous() for g in grads]   # the kernel reads memory in order: autograd.grad's may be strided
            with torch.no_grad():
                torch._fused_adamw_(tensors, grads, grads, self._lora_v, [], [step] * len(tensors), lr=lr, beta1=0.0,
                                    beta2=ADAM_BETA2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
            return
        root = math.sqrt(1.0 - ADAM_BETA2 ** self._lora_t)
        with torch.no_grad():  # foreach kernels over groups of adapter tensors (beta1 = 0: m = g)
            for group in adam_groups(tensors):
                ts, gs, v = [tensors[i] for i in group], [grads[i] for i in group], [self._lora_v[i] for i in group]
                torch._foreach_mul_(v, ADAM_BETA2)
                torch._foreach_addcmul_(v, gs, gs, value=1.0 - ADAM_BETA2)
                torch._foreach_mul_(ts, 1.0 - lr * wd)
                denom = torch._foreach_sqrt(v)   # the group's only temporary
                torch._foreach_div_(denom, root)
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(ts, gs, denom, value=-lr)

    def lora_end(self) -> None:
        self._lora = None
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []

    def collect_hessians(self, params: dict[str, np.ndarray], x: np.ndarray, show_progress: bool) -> dict:
        from cuda_train.calibrate import collect_hessians

        return collect_hessians(params, self.cfg, x, show_progress=show_progress)

    # -- state in and out
    @torch.no_grad()
    def load_weights(self, params: dict[str, np.ndarray]) -> None:
        """Copy weights into the existing parameters (in place: the optimizers and DDP keep their references)."""
        load_params(self.model, params)
        if self.cfg.train.ema_decay > 0 and self.training:  # the EMA starts at the weights (none to evaluate)
            self.ema = [p.detach().clone().float() for p in self.model.parameters()]

    def weights(self) -> dict[str, np.ndarray]:
        return export_params(self.model)

    def _ema_dict(self) -> dict[str, np.ndarray]:
        names = [n for n, _ in self.model.named_parameters()]
        return {n: t.detach().to("cpu", torch.float32).numpy().copy() for n, t in zip(names, self.ema, strict=True)}

    def final_weights(self) -> dict[str, np.ndarray]:
        if self.ema is None:
            return self.weights()
        ema = self._ema_dict()
        return {k: ema[k] for k in self.weights()}  # parameter-table order

    def all_finite(self) -> bool:
        tensors = [*self.model.parameters(), *(self.ema or [])]
        return bool(torch.stack([torch.isfinite(p).all() for p in tensors]).all())

    def optimizer_state(self) -> dict[str, np.ndarray]:
        tensors = self._optimizers().state_tensors()
        tensors[RNG_KEY] = torch.get_rng_state().numpy().copy()
        if self.ema is not None:
            tensors.update({EMA_PREFIX + k: v for k, v in self._ema_dict().items()})
        return tensors

    def load_optimizer_state(self, tensors: dict[str, np.ndarray]) -> None:
        tensors = dict(tensors)
        if RNG_KEY in tensors:
            torch.set_rng_state(torch.from_numpy(tensors.pop(RNG_KEY)))
        if self.ema is not None:
            names = [n for n, _ in self.model.named_parameters()]
            missing = [n for n in names if EMA_PREFIX + n not in tensors]
            if missing:
                raise PgolfError(f"optimizer state lacks the EMA of {missing[:2]}; was it written with train.ema_decay on?")
            self.ema = [torch.from_numpy(tensors.pop(EMA_PREFIX + n)).to(self.rt.device) for n in names]
        self._optimizers().load_state_tensors(tensors)

    def snapshot(self) -> Any:
        return ({k: v.detach().clone() for k, v in self.model.state_dict().items()}, self._optimizers().snapshot(),
                torch.get_rng_state(), None if self.ema is None else [t.clone() for t in self.ema])

    def rollback(self, snap: Any) -> None:
        if self.rt.is_cuda:
            torch.cuda.synchronize(self.rt.device)
        weights, opt_state, rng, ema = snap
        self.model.load_state_dict(weights)
        mode = self.cfg.optim.warmup_muon_momentum
        keep = mode == "keep" or (mode == "keep_multi_rank" and self.world_size > 1)
        self._optimizers().restore(opt_state, keep_muon_momentum=keep)
        torch.set_rng_state(rng)
        self.ema = ema

    # -- ranks
    def agree(self, flags: list[bool]) -> list[bool]:
        votes = self.rt.all_reduce(torch.tensor([float(f) for f in flags], device=self.rt.device), "max")
        return [bool(v) for v in votes.tolist()]

    def barrier(self) -> None:
        self.rt.barrier()

    def wait_all(self) -> None:
        """Wait, without a collective's timeout, until every rank gets here (before a collective that
        follows uneven work: the ranks' shares of a TTT evaluation)."""
        self._waits += 1
        self.rt.wait_for_ranks(f"wait{self._waits}")

    def share_bytes(self, data: bytes | None) -> bytes:
        self._waits += 1
        return self.rt.share_bytes(f"share{self._waits}", data)

    def info(self) -> dict[str, str]:
        from cuda_train.model import attention_kernel

        compiled = "on" if self.compile else ("off_on_cpu" if self.cfg.train.compile else "off")
        return {**runtime.provenance_extra(self.rt, self.dtype), "attention": attention_kernel(self.rt.device, self.dtype),
                "compile": compiled, "fused_kernels": "on" if self.fused_kernels else "off"}

    def log_lines(self) -> list[str]:
        smi = runtime.nvidia_smi() if self.is_main else None
        note = CPU_COMPILE_NOTE if self.cfg.train.compile and not self.compile else None
        return [line for line in (note, smi) if line]

    def summary_extras(self) -> dict[str, Any]:
        return {"compute_dtype": runtime.dtype_name(self.dtype), "device": runtime.device_name(self.rt.device),
                "peak_memory_bytes": runtime.peak_memory_bytes(self.rt.device)}


def _hint_nats(logits: Tensor, hint: np.ndarray) -> np.ndarray:
    """float64: -log softmax of `logits` [..., V] at the tokens `hint` [...] (the n-gram tilt's q, #2135)."""
    with torch.no_grad():
        lf = logits.float()
        h = torch.from_numpy(np.asarray(hint, dtype=np.int64)).to(lf.device)
        out = torch.logsumexp(lf, -1) - lf.gather(-1, h[..., None])[..., 0]
    return out.double().cpu().numpy()


def ttt_nats(model: GPT, x: Tensor, y: Tensor, pos: Tensor, adapters: lora.Adapters, seg_len: int | None = None,
             hint: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """float32 [rows, k]: the nats (full softmax) at positions pos of each row, through the adapter rows
    `adapters` selects; logits only where they count (one graph under eval.lora_compile). With `hint`
    [rows, k]: also the hinted tokens' nats from the same logits, without gradient (the n-gram tilt, #2135)."""
    h = model.hidden(x, seg_len=seg_len, lora=adapters)
    h = h.gather(1, pos[..., None].expand(-1, -1, h.size(-1)))
    logits = model.head(h, lora=adapters).float()
    nats = F.cross_entropy(logits.flatten(0, 1), y.gather(1, pos).flatten(), reduction="none").view(pos.shape)
    if hint is None:
        return nats, None
    lf = logits.detach()
    return nats, torch.logsumexp(lf, -1) - lf.gather(-1, hint[..., None])[..., 0]


ADAM_GROUP_BYTES = 64 << 20  # the adapters' Adam runs over groups of about this size: a bounded temporary


def adam_groups(tensors: list[Tensor], limit: int = ADAM_GROUP_BYTES) -> list[list[int]]:
    """Indices of `tensors` in consecutive groups of at most `limit` bytes (a larger tensor alone)."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, t in enumerate(tensors):
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


def session_from(cfg: Config, params: dict[str, np.ndarray]) -> TorchSession:
    """A one-process session holding `params` (evaluation, packing, parity)."""
    s = TorchSession(cfg, local_runtime(cfg), training=False)
    s.load_weights(params)
    return s
