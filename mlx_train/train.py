"""The MLX training loop: warm-up, accumulate, update, validate, checkpoint, finish.

    pgolf train --backend mlx --config configs/small.toml --out runs/small

One optimizer step consumes `train.grad_accum` micro-batches of
`batch_tokens / grad_accum` tokens; each micro-batch is further split into
equal chunks of at most `train.max_microbatch_tokens` (memory only: the loss
is the mean over equal chunks, so the gradient is the same). Chunk gradients
are accumulated with one `mx.eval` per chunk, which bounds peak memory by one
chunk's activations; a step with a single chunk is one fused, compiled
function (loss, gradient, Muon/Adam update) and one `mx.eval`.

The warm-up steps (`train.warmup_steps`) compile and warm the kernels, then
are undone: MLX arrays are immutable, so keeping the old dicts is the
snapshot, and the data stream is rewound. The wallclock (`train.max_seconds`)
counts only training steps: warm-up, validation and checkpoints are excluded.

Checkpoints hold the weights, the optimizer state, the data position and the
clock, so `--resume` continues on the same curve (bitwise on CPU in float32
with a step budget). Ctrl-C finishes the current step, saves and exits 130;
a non-finite loss stops the run with a one-line error and never overwrites
the last good checkpoint.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

# isort: off
from mlx_train import runtime  # noqa: F401  (before mlx.core: loads the Linux BLAS shim)
# isort: on
import mlx.core as mx
import numpy as np
from mlx.utils import tree_unflatten

from mlx_train.model import GPT, flat_params, load_params, to_mx, to_numpy
from mlx_train.optim import MuonAdam, init_state
from shared.core.config import Config, to_toml
from shared.core.progress import TrainProgress
from shared.core.rundir import (
    CHECKPOINT,
    TRAIN_STATE,
    RunDir,
    load_resume_state,
    provenance,
    save_checkpoint,
    save_resume_state,
)
from shared.core.schedule import lr_scale, muon_momentum
from shared.core.spec import count_params, init_params
from shared.data.bpb import ByteTables, EvalResult
from shared.data.shards import BatchLoader, val_batches, val_token_count
from shared.errors import PgolfError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


def compute_dtype(cfg: Config) -> mx.Dtype:
    return DTYPES[runtime.default_dtype_name(cfg.train.compute_dtype)]


def chunk_count(rows: int, seq_len: int, cap_tokens: int) -> int:
    """Smallest split of `rows` sequences into equal chunks of at most `cap_tokens` tokens (0 = no cap)."""
    if not cap_tokens:
        return 1
    return next(n for n in range(1, rows + 1) if rows % n == 0 and rows // n * seq_len <= cap_tokens)


def chunks_per_microbatch(cfg: Config) -> int:
    t = cfg.train
    return chunk_count(t.batch_tokens // t.grad_accum // t.seq_len, t.seq_len, t.max_microbatch_tokens)


def split_rows(x: np.ndarray, n: int) -> list[np.ndarray]:
    return np.split(x, n) if n > 1 else [x]


class Trainer:
    """The model, optimizer state and compiled step functions; params/state are flat mx dicts."""

    def __init__(self, cfg: Config, params: dict[str, np.ndarray], dtype: mx.Dtype | None = None):
        self.cfg = cfg
        self.dtype = dtype if dtype is not None else compute_dtype(cfg)
        self.model = GPT(cfg.model, self.dtype)
        load_params(self.model, params)
        self.params = flat_params(self.model)
        self.opt = MuonAdam(cfg.optim, cfg.model, ns_dtype=self.dtype)
        self.state = init_state(self.params)

        def loss_fn(params, x, y):
            self.model.update(tree_unflatten(list(params.items())))
            return self.model(x, y)

        def nats_fn(params, x, y):
            self.model.update(tree_unflatten(list(params.items())))
            return self.model(x, y, reduction="sum")

        value_and_grad = mx.value_and_grad(loss_fn)

        def fused(params, state, x, y, scale, momentum):
            loss, grads = value_and_grad(params, x, y)
            params, state = self.opt.update(params, grads, state, scale, momentum)
            return loss, params, state

        def accumulate(params, acc, loss_acc, x, y, weight):
            loss, grads = value_and_grad(params, x, y)
            return {k: acc[k] + weight * g for k, g in grads.items()}, loss_acc + weight * loss

        wrap = mx.compile if cfg.train.compile else (lambda f: f)
        self._loss = wrap(loss_fn)
        self._nats = wrap(nats_fn)
        self._fused = wrap(fused)
        self._accumulate = wrap(accumulate)
        self._apply = wrap(self.opt.update)

    def step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], scale: float, momentum: float,
             n_chunks: int = 1) -> float:
        """One optimizer step over the given micro-batches; returns the mean training loss."""
        scale_a, mom_a = mx.array(scale, dtype=mx.float32), mx.array(momentum, dtype=mx.float32)
        chunks = [(cx, cy) for x, y in micro_batches
                  for cx, cy in zip(split_rows(x, n_chunks), split_rows(y, n_chunks), strict=True)]
        if len(chunks) == 1:
            x, y = chunks[0]
            loss, self.params, self.state = self._fused(self.params, self.state, mx.array(x), mx.array(y), scale_a, mom_a)
            mx.eval(loss, self.params, self.state)
            return float(loss)
        weight = mx.array(1.0 / len(chunks), dtype=mx.float32)
        acc = {k: mx.zeros(p.shape, dtype=mx.float32) for k, p in self.params.items()}
        loss = mx.array(0.0, dtype=mx.float32)
        for x, y in chunks:
            acc, loss = self._accumulate(self.params, acc, loss, mx.array(x), mx.array(y), weight)
            mx.eval(acc, loss)  # one chunk's activations at a time
        self.params, self.state = self._apply(self.params, acc, self.state, scale_a, mom_a)
        mx.eval(self.params, self.state)
        return float(loss)

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._loss(self.params, mx.array(x), mx.array(y)))

    def evaluate(self, val_tokens: np.ndarray, tables: ByteTables, rank: int = 0, world_size: int = 1) -> EvalResult:
        """Summed nats/tokens/bytes over this rank's validation batches (float64 totals)."""
        e, t = self.cfg.eval, self.cfg.train
        total = EvalResult()
        for x, y, nbytes in val_batches(val_tokens, t.seq_len, e.batch_tokens, tables, rank, world_size, e.max_tokens):
            n = chunk_count(x.shape[0], t.seq_len, t.max_microbatch_tokens)  # the same memory cap as training
            nats = 0.0
            for cx, cy in zip(split_rows(x, n), split_rows(y, n), strict=True):
                nats += float(self._nats(self.params, mx.array(cx), mx.array(cy)))
            total = total + EvalResult(nats, int(y.size), int(nbytes))
        return total

    def weights(self) -> dict[str, np.ndarray]:
        return to_numpy(self.params)

    def optimizer_tensors(self) -> tuple[dict[str, np.ndarray], int]:
        mx.eval(self.state)
        tensors = {k: np.array(v) for k, v in self.state.items() if k != "step"}
        return tensors, int(self.state["step"].item())

    def restore(self, params: dict[str, np.ndarray], tensors: dict[str, np.ndarray], opt_step: int) -> None:
        self.params = to_mx(params)
        fresh = init_state(self.params)
        missing = [k for k in fresh if k != "step" and k not in tensors]
        if missing:
            raise PgolfError(f"{TRAIN_STATE}: optimizer state lacks {missing[:2]}; was it written by the MLX trainer?")
        self.state = {k: (mx.array(opt_step, dtype=mx.int32) if k == "step" else mx.array(tensors[k])) for k in fresh}


class StopFlag:
    """Ctrl-C asks the loop to finish its step, save and exit; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _all_finite(params: dict[str, np.ndarray]) -> bool:
    return all(bool(np.isfinite(v).all()) for v in params.values())


def train(cfg: Config, run_dir: str | Path, resume: bool = False, nproc: int = 1,
          on_step: Callable[[int, Trainer], None] | None = None) -> dict[str, Any]:
    """Train, validate, checkpoint, pack and evaluate; return summary.json's dict.

    `on_step(step, trainer)` is called after every optimizer step (tests use it
    to interrupt a run or to poison its weights).
    """
    from shared.core.finish import finish_run
    from shared.data.dataset import open_dataset

    if nproc != 1:
        raise PgolfError(f"--nproc {nproc}: the MLX backend trains in one process; use --nproc 1 or --backend torch")
    t, o = cfg.train, cfg.optim
    run = RunDir(run_dir)
    dataset = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    mx.random.seed(t.seed)
    dtype = compute_dtype(cfg)

    ckpt_path = run.path / CHECKPOINT
    if resume:
        params, opt_tensors, st = load_resume_state(run.path, cfg, "mlx")
    else:
        params, st = init_params(cfg.model, t.seed), None
    run.write_config(cfg)

    info = provenance({"backend": "mlx", "mlx": mx.__version__, "blas": runtime.blas_info(),
                       "device": runtime.device_name(), "compute_dtype": str(dtype).split(".")[-1]})
    run.log(("resuming " if resume else "training ") + f"{run.path} | " + " ".join(f"{k}={v}" for k, v in info.items()))
    run.log(f"model: {count_params(cfg.model):,} parameters, {cfg.model.num_layers} layers x {cfg.model.model_dim}, "
            f"vocab {cfg.model.vocab_size}; {t.batch_tokens:,} tokens/step, seq {t.seq_len}, grad_accum {t.grad_accum}")
    run.log("resolved config:\n" + to_toml(cfg), console=False)

    trainer = Trainer(cfg, params, dtype)
    stream = dataset.train_stream()
    loader = BatchLoader(stream)
    micro_tokens, n_chunks = t.batch_tokens // t.grad_accum, chunks_per_microbatch(cfg)
    step, elapsed, tokens, good_step = 0, 0.0, 0, None
    if st is not None:
        trainer.restore(params, opt_tensors, int(st["opt_step"]))
        stream.restore(st["data"])
        step, elapsed, tokens, good_step = int(st["step"]), float(st["elapsed"]), int(st["tokens"]), int(st["step"])

    def next_step_batches():
        return [loader.next_batch(micro_tokens, t.seq_len) for _ in range(t.grad_accum)]

    if t.warmup_steps > 0:  # compile and warm up, then undo every effect
        saved = (trainer.params, trainer.state, stream.state())
        t0 = time.perf_counter()
        for i in range(t.warmup_steps):
            trainer.step(next_step_batches(), lr_scale(step + i, elapsed, t), muon_momentum(step + i, o), n_chunks)
        trainer.params, trainer.state = saved[0], saved[1]
        stream.restore(saved[2])
        run.log(f"warm-up: {t.warmup_steps} steps in {time.perf_counter() - t0:.1f}s (undone)")

    def save(at: int) -> None:
        nonlocal good_step
        weights = trainer.weights()
        if not _all_finite(weights):
            raise PgolfError(f"weights became non-finite by step {at}; not saved, the last good checkpoint is kept "
                             f"({_good(good_step)}); lower the learning rates or set optim.grad_clip_norm")
        tensors, opt_step = trainer.optimizer_tensors()
        save_resume_state(run.path, weights, tensors, {"step": at, "opt_step": opt_step, "data": stream.state(),
                                                       "elapsed": elapsed, "tokens": tokens, "backend": "mlx"}, cfg)
        save_checkpoint(run.path, weights, cfg, at)
        good_step = at

    def _good(s: int | None) -> str:
        return f"{ckpt_path}, step {s}" if s is not None else "none was written"

    def validate() -> EvalResult:
        return trainer.evaluate(dataset.val_tokens, dataset.tables)

    eval_tokens = val_token_count(dataset.val_tokens, t.seq_len, cfg.eval.max_tokens)
    run.log(f"validation: {eval_tokens:,} target tokens" + (" (eval.max_tokens)" if cfg.eval.max_tokens else " (whole split)"))
    progress = TrainProgress(t.iterations, t.max_seconds, t.batch_tokens, start_step=step, start_elapsed=elapsed)
    last_val: EvalResult | None = None
    log_t, log_tokens = elapsed, tokens

    def time_up() -> bool:
        return step >= t.iterations or (t.max_seconds > 0 and elapsed >= t.max_seconds)

    # The training clock runs through everything but validation (the reference's rule):
    # logging, the stop vote and checkpoint saves count against train.max_seconds.
    clock = time.perf_counter()
    with StopFlag() as stop:
        while not time_up():
            scale, momentum = lr_scale(step, elapsed, t), muon_momentum(step, o)
            loss = trainer.step(next_step_batches(), scale, momentum, n_chunks)
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            step += 1
            tokens += t.batch_tokens
            if not math.isfinite(loss):
                progress.close()
                raise PgolfError(f"training diverged: the loss is {loss} at step {step}; stopped without saving "
                                 f"(last good checkpoint: {_good(good_step)}); lower the learning rates or set "
                                 "optim.grad_clip_norm")
            progress.update(step, loss, elapsed)
            if on_step is not None:
                on_step(step, trainer)
            done = time_up()
            do_val = done or (t.val_every > 0 and step % t.val_every == 0)
            if do_val or done or step == 1 or (t.log_every > 0 and step % t.log_every == 0):
                tok_s = (tokens - log_tokens) / max(elapsed - log_t, 1e-9)
                log_t, log_tokens = elapsed, tokens
                if do_val:
                    last_val = validate()
                    clock = time.perf_counter()  # validation is not training time
                line = run.log_step(step, t.iterations, loss, scale, tok_s, elapsed, last_val if do_val else None)
                progress.write(line)
            if stop.requested:
                save(step)
                progress.close()
                run.log(f"interrupted: saved step {step} to {ckpt_path}; continue with --resume {run.path}")
                raise KeyboardInterrupt
            if t.checkpoint_every > 0 and step % t.checkpoint_every == 0 and not done:
                save(step)
    progress.close()
    if last_val is None:  # resumed at the end, or no steps: still measure the final weights
        last_val = validate()
        run.metrics({"step": step, "val_loss": last_val.val_loss, "val_bpb": last_val.val_bpb, "elapsed": elapsed})
    save(step)
    run.log(f"trained {step} steps, {tokens:,} tokens in {elapsed:.1f}s ({tokens / max(elapsed, 1e-9):,.0f} tok/s); "
            f"val_loss {last_val.val_loss:.4f} val_bpb {last_val.val_bpb:.4f}")
    from mlx_train import backend

    stats = {"val_loss": last_val.val_loss, "val_bpb": last_val.val_bpb, "steps": step, "train_tokens": tokens,
             "train_seconds": elapsed, "tokens_per_second": tokens / max(elapsed, 1e-9),
             "compute_dtype": str(dtype).split(".")[-1], "blas": runtime.blas_info()}
    return finish_run(backend, trainer.weights(), cfg, run, dataset, stats)


def train_steps(params: dict[str, np.ndarray], cfg: Config, batches: Iterable[tuple[np.ndarray, np.ndarray]]
                ) -> tuple[list[float], dict[str, np.ndarray]]:
    """Parity helper: one (x, y) batch per optimizer step, step-based schedule, no warm-up."""
    t = replace(cfg.train, max_seconds=0.0)
    trainer = Trainer(cfg, params)
    losses = [trainer.step([(np.asarray(x), np.asarray(y))], lr_scale(i, 0.0, t), muon_momentum(i, cfg.optim))
              for i, (x, y) in enumerate(batches)]
    return losses, trainer.weights()
