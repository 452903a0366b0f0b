"""The MLX training session: model, optimizer state and compiled step functions for the shared loop.

    session = MLXSession(cfg)            # the Session of shared/run/backends.py, one process
    session.load_weights(params)
    loss = session.step([(x, y), ...], lr_scale, momentum)

A step with a single chunk is one fused, compiled function (loss, gradient,
Muon/Adam update) and one `mx.eval`. Micro-batches split into equal chunks
(`shared.data.shards.chunk_count`, the `train.max_microbatch_tokens` memory
cap) accumulate gradients with one `mx.eval` per chunk, which bounds peak
memory by one chunk's activations; the loss is the mean over equal chunks,
so the gradient is the same. MLX arrays are immutable: keeping the old
dicts is the snapshot that undoes the warm-up. Parameters and optimizer
state are flat `name -> mx.array` dicts (`self.params`, `self.state`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

# isort: off
from mlx_train import runtime
# isort: on
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from mlx_train import lora
from mlx_train.model import GPT, flat_params, load_params, to_numpy
from mlx_train.optim import MuonAdam, init_state, momentum_dtype
from shared.core.config import Config
from shared.data.bpb import ByteTables, EvalResult
from shared.data.shards import chunk_count, val_batches
from shared.errors import PgolfError
from shared.eval.windows import eval_seg_len

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}
ADAM_BETA2, ADAM_EPS = 0.99, 1e-8  # the adapters' Adam (beta1 = 0, #1855), the same in cuda_train/session.py
STEP_KEY = "step"  # the optimizer's step counter among the state tensors
EMA_PREFIX = "ema/"  # the EMA of the weights among the state tensors


def compute_dtype(cfg: Config) -> mx.Dtype:
    return DTYPES[runtime.default_dtype_name(cfg.train.compute_dtype)]


def split_rows(x: np.ndarray, n: int) -> list[np.ndarray]:
    return np.split(x, n) if n > 1 else [x]


class MLXSession:
    """One process: MLX has no DDP here, so `agree` is the identity and totals are this process's."""

    backend = "mlx"
    rank, world_size, is_main = 0, 1, True

    def __init__(self, cfg: Config, dtype: mx.Dtype | None = None):
        self.cfg = cfg
        self.dtype = dtype if dtype is not None else compute_dtype(cfg)
        mx.random.seed(cfg.train.seed)
        self.model = GPT(cfg.model, self.dtype)
        self.params = flat_params(self.model)
        self.opt = MuonAdam(cfg.optim, cfg.model, ns_dtype=self.dtype)
        self.state = init_state(self.params, cfg.model, momentum_dtype(cfg.optim))
        self._lora: lora.Adapters | None = None  # test-time adapters while a LoRA evaluation runs

        self.ema: dict[str, mx.array] | None = None
        decay = cfg.train.ema_decay
        wrap = mx.compile if cfg.train.compile else (lambda f: f)

        def compiled_step(looped: bool, seg_len: int = 0):
            """(fused, accumulate) for one layer order and segment cap: each changes the graph."""
            def loss_fn(params, x, y):
                self.model.update(tree_unflatten(list(params.items())))
                return self.model(x, y, looped=looped, seg_len=seg_len)

            value_and_grad = mx.value_and_grad(loss_fn)

            def fused(params, state, x, y, scale, momentum):
                loss, grads = value_and_grad(params, x, y)
                params, state = self.opt.update(params, grads, state, scale, momentum)
                return loss, params, state

            def accumulate(params, acc, loss_acc, x, y, weight):
                loss, grads = value_and_grad(params, x, y)
                return {k: acc[k] + weight * g for k, g in grads.items()}, loss_acc + weight * loss

            return wrap(fused), wrap(accumulate)

        def nats_fn(params, x, y):  # evaluation: the looped order when configured
            self.model.update(tree_unflatten(list(params.items())))
            return self.model(x, y, reduction="sum")

        def loss_fn(params, x, y):
            self.model.update(tree_unflatten(list(params.items())))
            return self.model(x, y)

        def ema_update(ema, params):  # the same formula as torch's lerp: e + (1 - d) (p - e)
            return {k: e + (1.0 - decay) * (params[k] - e) for k, e in ema.items()}

        self._compiled_step = compiled_step
        self._steps = {(looped, 0): compiled_step(looped) for looped in ((False, True) if cfg.model.looping else (False,))}
        self._loss = wrap(loss_fn)
        self._nats = wrap(nats_fn)
        self._apply = wrap(self.opt.update)
        self._ema = wrap(ema_update)

    # -- the step
    def _chunks(self, x: np.ndarray, y: np.ndarray, pack: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        n = chunk_count(x.shape[0], x.shape[1], self.cfg.train.max_microbatch_tokens)
        chunks = list(zip(split_rows(x, n), split_rows(y, n), strict=True))
        if pack and self.cfg.model.doc_attention:  # #1855's training packing: a chunk's rows (one stream) as one row
            chunks = [(cx.reshape(1, -1), cy.reshape(1, -1)) for cx, cy in chunks]
        return chunks

    def step(self, batches: list[tuple[np.ndarray, np.ndarray]], lr_scale: float, momentum: float,
             looped: bool = False, seg_len: int = 0) -> float:
        """One optimizer step over the given micro-batches; returns the mean training loss."""
        scale_a, mom_a = mx.array(lr_scale, dtype=mx.float32), mx.array(momentum, dtype=mx.float32)
        key = (looped and self.cfg.model.looping, seg_len)
        if key not in self._steps:  # a segment cap of train.seq_schedule: its own graph
            self._steps[key] = self._compiled_step(*key)
        fused, accumulate = self._steps[key]
        chunks = [c for x, y in batches for c in self._chunks(x, y, pack=True)]
        if len(chunks) == 1:
            x, y = chunks[0]
            loss, self.params, self.state = fused(self.params, self.state, mx.array(x), mx.array(y), scale_a, mom_a)
        else:
            weight = mx.array(1.0 / len(chunks), dtype=mx.float32)
            acc = {k: mx.zeros(p.shape, dtype=mx.float32) for k, p in self.params.items()}
            loss = mx.array(0.0, dtype=mx.float32)
            for x, y in chunks:
                acc, loss = accumulate(self.params, acc, loss, mx.array(x), mx.array(y), weight)
                mx.eval(acc, loss)  # one chunk's activations at a time
            self.params, self.state = self._apply(self.params, acc, self.state, scale_a, mom_a)
        if self.ema is not None:
            self.ema = self._ema(self.ema, self.params)
        mx.eval(loss, self.params, self.state, self.ema or {})
        return float(loss)

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._loss(self.params, mx.array(x), mx.array(y)))

    # -- evaluation
    def evaluate(self, val_tokens: np.ndarray, tables: ByteTables) -> EvalResult:
        """Summed nats/tokens/bytes of the weights that get packed (the EMA when on), float64 totals."""
        e, t = self.cfg.eval, self.cfg.train
        params = self.ema if self.ema is not None else self.params
        total = EvalResult()
        for x, y, nbytes in val_batches(val_tokens, t.seq_len, e.batch_tokens, tables, 0, 1, e.max_tokens):
            nats = sum(float(self._nats(params, mx.array(cx), mx.array(cy))) for cx, cy in self._chunks(x, y))
            total = total + EvalResult(nats, int(y.size), int(nbytes))
        return total

    def evaluate_params(self, params: dict[str, np.ndarray], val_tokens: np.ndarray, tables: ByteTables) -> EvalResult:
        """`params` evaluated as `eval.mode` says, on a separate evaluation session (TTT changes weights)."""
        from shared.eval.driver import run_eval

        ev = session_from(replace(self.cfg, train=replace(self.cfg.train, ema_decay=0.0)), params, self.dtype)
        return run_eval(ev, self.cfg, val_tokens, tables).result

    # -- evaluation primitives (shared/eval/driver.py decides the order; these only compute)
    def _sync_model(self) -> None:
        self.model.update(tree_unflatten(list(self.params.items())))

    def token_nats(self, x: np.ndarray, y: np.ndarray, hint: np.ndarray | None = None):
        """float64 [rows, T]: -log softmax over the whole vocabulary at each target (no gradient);
        with LoRA on, row r runs through adapter r. With `hint` [rows, T] (the n-gram tilt's tokens):
        (the targets' nats, the hints' nats) from the same logits."""
        self._sync_model()
        logits = self.model.logits(mx.array(x), seg_len=eval_seg_len(self.cfg), lora=self._lora)
        nats = nn.losses.cross_entropy(logits.astype(mx.float32), mx.array(y), reduction="none")
        nats = np.array(nats).astype(np.float64)
        return nats if hint is None else (nats, _hint_nats(logits, hint))

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)  # one process

    def sgd_begin(self, momentum: float) -> None:
        """Fresh momentum buffers for test-time SGD on every weight."""
        self._sgd = (momentum, {k: mx.zeros(p.shape, dtype=mx.float32) for k, p in self.params.items()})

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float, clip: float, denom: int) -> None:
        """One SGD step (torch-style momentum, global-norm clip) on sum(nats) / denom."""
        momentum, bufs = self._sgd

        def loss_fn(params, x, y):
            self.model.update(tree_unflatten(list(params.items())))
            return self.model(x, y, reduction="sum", seg_len=eval_seg_len(self.cfg))

        _, grads = mx.value_and_grad(loss_fn)(self.params, mx.array(x), mx.array(y))
        grads = {k: g.astype(mx.float32) / denom for k, g in grads.items()}
        if clip > 0:
            norm = float(mx.sqrt(sum(mx.sum(g * g) for g in grads.values())))
            if norm > clip:
                grads = {k: g * (clip / (norm + 1e-6)) for k, g in grads.items()}
        bufs = {k: momentum * bufs[k] + grads[k] for k in bufs}
        self.params = {k: p - lr * bufs[k] for k, p in self.params.items()}
        mx.eval(self.params, bufs)
        self._sgd = (momentum, bufs)
        self._sync_model()

    def sgd_end(self) -> None:
        self._sgd = None

    def lora_begin(self, a_init: dict[str, np.ndarray], scale: float, out_dims: dict[str, int]) -> None:
        """Adapters named as in mlx_train/lora.py, one per input row (A from `a_init`, B zero), fresh Adam state."""
        self._sync_model()
        self._lora = lora.Adapters(a_init, out_dims, scale)
        self.lora_reset()

    def lora_reset(self, a: dict[str, np.ndarray] | None = None, keep_a: bool = False) -> None:
        """B to zero and Adam state cleared; A to `a`, or kept (`keep_a`, #1855's warm start), or its first draw."""
        self._lora.reset(a, keep_a)
        self._lora_v = [mx.zeros(t.shape) for t in self._lora.tensors()]
        self._lora_grads = None
        self._lora_t = 0

    def lora_a(self) -> dict[str, np.ndarray]:
        """The adapters' current A matrices."""
        return self._lora.a_values()

    def lora_step(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, lr: float, wd: float,
                  eps: float = ADAM_EPS) -> None:
        """One Adam step (betas (0, 0.99), decoupled wd, torch.optim.AdamW's arithmetic) on the adapters; each
        row's loss is the mean of its masked nats, rows summed, so every document's adapter sees only its own tokens."""
        ad = self._lora

        def loss_fn(tensors, x, y, mask):
            ad.set_tensors(tensors)
            logits = self.model.logits(x, seg_len=eval_seg_len(self.cfg), lora=ad)
            nats = nn.losses.cross_entropy(logits.astype(mx.float32), y, reduction="none")
            return mx.sum(mx.sum(nats * mask, axis=1) / mx.maximum(mx.sum(mask, axis=1), 1.0))

        tensors = ad.tensors()
        _, grads = mx.value_and_grad(loss_fn)(tensors, mx.array(x), mx.array(y), mx.array(mask.astype(np.float32)))
        self._lora_adam(tensors, grads, lr, wd, eps)

    def lora_score(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, pos: np.ndarray, weight: np.ndarray,
                   max_tokens: int = 0, hint: np.ndarray | None = None):
        """float64 [len(rows), k]: the nats at positions pos of each input row, input row i through adapter row
        rows[i], from one forward; the gradient of sum(weight * nats) is kept for `lora_train` (as torch's).
        With `hint` [len(rows), k]: (the nats, the hints' nats at the same positions)."""
        ad = self._lora
        train = bool(np.any(weight))
        step = len(rows) if max_tokens <= 0 else max(1, max_tokens // max(1, x.shape[1]))

        def loss_fn(tensors, x, y, pos, w):
            ad.set_tensors(tensors)
            h = self.model.hidden(x, seg_len=eval_seg_len(self.cfg), lora=ad)
            h = mx.take_along_axis(h, pos[..., None], axis=1)   # only the positions that count
            logits = self.model.head(h, lora=ad)
            nats = nn.losses.cross_entropy(logits, mx.take_along_axis(y, pos, axis=1), reduction="none")
            return mx.sum(nats * w), (nats, mx.stop_gradient(logits))

        tensors = ad.tensors()
        grads, out, hints = None, [], []
        for i in range(0, len(rows), step):
            args = (mx.array(x[i : i + step]), mx.array(y[i : i + step]),
                    mx.array(np.asarray(pos[i : i + step], dtype=np.int32)),
                    mx.array(np.asarray(weight[i : i + step], dtype=np.float32)))
            ad.select(mx.array(np.asarray(rows[i : i + step], dtype=np.int32)))
            if train:
                (_, (nats, logits)), g = mx.value_and_grad(loss_fn)(tensors, *args)
                grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
            else:
                _, (nats, logits) = loss_fn(tensors, *args)
            out.append(np.array(nats).astype(np.float64))
            if hint is not None:
                hints.append(_hint_nats(logits, hint[i : i + step]))
        ad.select(None)
        ad.set_tensors(tensors)
        self._lora_grads = grads
        nats = np.concatenate(out) if out else np.zeros(pos.shape)
        return nats if hint is None else (nats, np.concatenate(hints) if hints else np.zeros(pos.shape))

    def lora_train(self, lr: float, wd: float, eps: float = ADAM_EPS) -> None:
        """The Adam step (as `lora_step`) from the gradient the last `lora_score` kept."""
        tensors = self._lora.tensors()
        grads = self._lora_grads or [mx.zeros(t.shape) for t in tensors]
        self._lora_grads = None
        self._lora_adam(tensors, grads, lr, wd, eps)

    def _lora_adam(self, tensors: list[mx.array], grads: list[mx.array], lr: float, wd: float, eps: float) -> None:
        self._lora_t += 1
        root = math.sqrt(1.0 - ADAM_BETA2 ** self._lora_t)
        new, vs = [], []
        for t, g, v in zip(tensors, grads, self._lora_v, strict=True):
            v = ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * g * g
            new.append(t * (1.0 - lr * wd) - lr * g / (mx.sqrt(v) / root + eps))
            vs.append(v)
        mx.eval(new, vs)
        self._lora.set_tensors(new)
        self._lora_v = vs

    def lora_end(self) -> None:
        self._lora = None

    def collect_hessians(self, params: dict[str, np.ndarray], x: np.ndarray, show_progress: bool) -> dict:
        from mlx_train.calibrate import collect_hessians

        return collect_hessians(params, self.cfg, x, show_progress=show_progress)

    # -- state in and out
    def load_weights(self, params: dict[str, np.ndarray]) -> None:
        load_params(self.model, params)
        self.params = flat_params(self.model)
        if self.cfg.train.ema_decay > 0:  # the EMA starts at the weights
            self.ema = dict(self.params)

    def weights(self) -> dict[str, np.ndarray]:
        return to_numpy(self.params)

    def final_weights(self) -> dict[str, np.ndarray]:
        return to_numpy(self.ema if self.ema is not None else self.params)

    def all_finite(self) -> bool:
        arrays = [*self.params.values(), *(self.ema or {}).values()]
        return all(bool(mx.all(mx.isfinite(v)).item()) for v in arrays)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        mx.eval(self.state, self.ema)
        out = {k: np.array(v).reshape(-1) if k == STEP_KEY else np.array(v.astype(mx.float32))
               for k, v in self.state.items()}
        out.update({EMA_PREFIX + k: np.array(v) for k, v in (self.ema or {}).items()})
        return out

    def load_optimizer_state(self, tensors: dict[str, np.ndarray]) -> None:
        fresh = init_state(self.params, self.cfg.model, momentum_dtype(self.cfg.optim))
        need = list(fresh) + ([EMA_PREFIX + k for k in self.params] if self.ema is not None else [])
        missing = [k for k in need if k not in tensors]
        if missing:
            raise PgolfError(f"optimizer state lacks {missing[:2]}; was it written by the MLX trainer with this config?")
        self.state = {k: (mx.array(int(tensors[k][0]), dtype=mx.int32) if k == STEP_KEY
                          else mx.array(tensors[k]).astype(fresh[k].dtype)) for k in fresh}
        if self.ema is not None:
            self.ema = {k: mx.array(tensors[EMA_PREFIX + k]) for k in self.params}

    def snapshot(self) -> Any:
        return self.params, self.state, self.ema

    def rollback(self, snap: Any) -> None:
        """Back to `snap`; `optim.warmup_muon_momentum = keep` keeps Muon's momentum buffers as they are
        when `snap` is a fresh start (a resumed run keeps its own; keep_multi_rank resets: one process)."""
        kept = {k: v for k, v in self.state.items() if k.endswith(".momentum_buffer")}
        fresh = int(snap[1]["step"]) == 0
        self.params, self.state, self.ema = snap
        if self.cfg.optim.warmup_muon_momentum == "keep" and fresh:
            self.state = {**self.state, **kept}

    # -- one process: nothing to agree on
    def agree(self, flags: list[bool]) -> list[bool]:
        return [bool(f) for f in flags]

    def barrier(self) -> None:
        pass

    def wait_all(self) -> None:
        pass

    def share_bytes(self, data: bytes | None) -> bytes:
        return data

    def info(self) -> dict[str, str]:
        return {"mlx": mx.__version__, "blas": runtime.blas_info(), "device": runtime.device_name(),
                "compute_dtype": str(self.dtype).split(".")[-1]}

    def log_lines(self) -> list[str]:
        return []

    def summary_extras(self) -> dict[str, Any]:
        return {"compute_dtype": str(self.dtype).split(".")[-1], "blas": runtime.blas_info(),
                "peak_memory_bytes": runtime.peak_memory_bytes()}


def _hint_nats(logits: mx.array, hint: np.ndarray) -> np.ndarray:
    """float64: -log softmax of `logits` [..., V] at the tokens `hint` [...] (the n-gram tilt's q, #2135)."""
    lf = logits.astype(mx.float32)
    h = mx.array(np.asarray(hint, dtype=np.int32))
    out = mx.logsumexp(lf, axis=-1) - mx.take_along_axis(lf, h[..., None], axis=-1)[..., 0]
    return np.array(out).astype(np.float64)


def session_from(cfg: Config, params: dict[str, np.ndarray], dtype: mx.Dtype | None = None) -> MLXSession:
    """A session holding `params` (evaluation, parity)."""
    s = MLXSession(cfg, dtype)
    s.load_weights(params)
    return s



