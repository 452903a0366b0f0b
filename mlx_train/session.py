"""The MLX training session: model, optimizer state and compiled step functions for the shared loop.

    session = MLXSession(cfg)            # the Session of shared/core/backends.py, one process
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

from dataclasses import replace
from typing import Any

# isort: off
from mlx_train import runtime  # noqa: F401  (before mlx.core: loads the Linux BLAS shim)
# isort: on
import mlx.core as mx
import numpy as np
from mlx.utils import tree_unflatten

from mlx_train.model import GPT, flat_params, load_params, to_numpy
from mlx_train.optim import MuonAdam, init_state
from shared.core.config import Config
from shared.data.bpb import ByteTables, EvalResult
from shared.data.shards import chunk_count, val_batches
from shared.errors import PgolfError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}
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
        self.state = init_state(self.params, cfg.model)

        self.ema: dict[str, mx.array] | None = None
        decay = cfg.train.ema_decay
        wrap = mx.compile if cfg.train.compile else (lambda f: f)

        def compiled_step(looped: bool):
            """(fused, accumulate) for one layer order: depth recurrence changes the graph."""
            def loss_fn(params, x, y):
                self.model.update(tree_unflatten(list(params.items())))
                return self.model(x, y, looped=looped)

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

        self._steps = {looped: compiled_step(looped) for looped in ((False, True) if cfg.model.looping else (False,))}
        self._loss = wrap(loss_fn)
        self._nats = wrap(nats_fn)
        self._apply = wrap(self.opt.update)
        self._ema = wrap(ema_update)

    # -- the step
    def _chunks(self, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        n = chunk_count(x.shape[0], x.shape[1], self.cfg.train.max_microbatch_tokens)
        return list(zip(split_rows(x, n), split_rows(y, n), strict=True))

    def step(self, batches: list[tuple[np.ndarray, np.ndarray]], lr_scale: float, momentum: float,
             looped: bool = False) -> float:
        """One optimizer step over the given micro-batches; returns the mean training loss."""
        scale_a, mom_a = mx.array(lr_scale, dtype=mx.float32), mx.array(momentum, dtype=mx.float32)
        fused, accumulate = self._steps[looped and self.cfg.model.looping]
        chunks = [c for x, y in batches for c in self._chunks(x, y)]
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
        return session_from(replace(self.cfg, train=replace(self.cfg.train, ema_decay=0.0)), params,
                            self.dtype).evaluate(val_tokens, tables)

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
        out = {k: np.array(v).reshape(-1) if k == STEP_KEY else np.array(v) for k, v in self.state.items()}
        out.update({EMA_PREFIX + k: np.array(v) for k, v in (self.ema or {}).items()})
        return out

    def load_optimizer_state(self, tensors: dict[str, np.ndarray]) -> None:
        fresh = init_state(self.params, self.cfg.model)
        need = list(fresh) + ([EMA_PREFIX + k for k in self.params] if self.ema is not None else [])
        missing = [k for k in need if k not in tensors]
        if missing:
            raise PgolfError(f"optimizer state lacks {missing[:2]}; was it written by the MLX trainer with this config?")
        self.state = {k: (mx.array(int(tensors[k][0]), dtype=mx.int32) if k == STEP_KEY else mx.array(tensors[k]))
                      for k in fresh}
        if self.ema is not None:
            self.ema = {k: mx.array(tensors[EMA_PREFIX + k]) for k in self.params}

    def snapshot(self) -> Any:
        return self.params, self.state, self.ema

    def rollback(self, snap: Any) -> None:
        self.params, self.state, self.ema = snap

    # -- one process: nothing to agree on
    def agree(self, flags: list[bool]) -> list[bool]:
        return [bool(f) for f in flags]

    def barrier(self) -> None:
        pass

    def info(self) -> dict[str, str]:
        return {"mlx": mx.__version__, "blas": runtime.blas_info(), "device": runtime.device_name(),
                "compute_dtype": str(self.dtype).split(".")[-1]}

    def log_lines(self) -> list[str]:
        return []

    def summary_extras(self) -> dict[str, Any]:
        return {"compute_dtype": str(self.dtype).split(".")[-1], "blas": runtime.blas_info(),
                "peak_memory_bytes": runtime.peak_memory_bytes()}


def session_from(cfg: Config, params: dict[str, np.ndarray], dtype: mx.Dtype | None = None) -> MLXSession:
    """A session holding `params` (evaluation, parity)."""
    s = MLXSession(cfg, dtype)
    s.load_weights(params)
    return s



