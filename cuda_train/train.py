"""The PyTorch training loop: DDP over torchrun ranks, bf16 autocast on CUDA, wallclock-capped.

    summary = train(cfg, run_dir, resume=False)

One optimizer step = `train.grad_accum` micro-batches over all ranks (each
rank runs grad_accum / world_size of them, gradients synchronised only on
its last backward), so 1, 2 or 8 ranks consume the same tokens per step and
reach the same weights. Warm-up steps prime `torch.compile` and are undone
(weights, optimizer and data position restored). The clock runs only during
training steps; validation and checkpoints are off the clock. Each step the
ranks agree (all-reduce MAX) on whether to stop (wallclock cap or Ctrl-C) and
see the same global loss (all-reduce SUM), so a NaN stops every rank at the
same step with the same message.

Only rank 0 logs and writes the run directory (shared/core/rundir.py). Every rank
holds the full weights and optimizer state, so rank 0 saves checkpoints
without a collective. The end of the run (pack, re-evaluate, summary.json)
is `shared.core.finish.finish_run`, shared with the MLX trainer.

Test-only hooks (environment variables, never set them in real runs):
    PGOLF_TEST_FAIL_RANK=r [PGOLF_TEST_FAIL_STEP=s]  rank r raises at step s (default 1)
    PGOLF_TEST_INTERRUPT_STEP=s                      deliver SIGINT to this process before step s
    PGOLF_TEST_RANK_REPORT=dir                       every rank writes dir/rank<r>.json (steps, stop)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from cuda_train import runtime
from cuda_train.model import build_model, export_params
from cuda_train.optim import Optimizers
from shared.core.config import Config, TrainConfig, to_toml
from shared.core.progress import TrainProgress
from shared.core.rundir import (
    CHECKPOINT,
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


def local_accum_steps(t: TrainConfig, world_size: int) -> int:
    """Micro-batches per step on each rank; the global batch is fixed by the config."""
    if t.grad_accum % world_size:
        raise PgolfError(
            f"train.grad_accum={t.grad_accum} global micro-batches cannot be split over {world_size} ranks: "
            f"make it a multiple of {world_size} (the global batch is train.batch_tokens={t.batch_tokens})"
        )
    return t.grad_accum // world_size


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast (weights stay fp32 masters), or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def micro_step(model, x: Tensor, y: Tensor, weight: float, max_rows: int, sync: bool,
               device: torch.device, dtype: torch.dtype) -> Tensor:
    """Forward + backward of one micro-batch, loss scaled by `weight`; returns its mean loss (detached).

    `train.max_microbatch_tokens` splits it into row chunks (memory cap); DDP's
    gradient all-reduce fires only on the backward where `sync` is True.
    """
    rows = x.size(0)
    chunks = range(0, rows, max_rows) if max_rows else range(0, rows, rows)
    total = torch.zeros((), device=device)
    for j, lo in enumerate(chunks):
        hi = min(lo + (max_rows or rows), rows)
        last = j == len(chunks) - 1
        ctx = model.no_sync() if isinstance(model, DDP) and not (sync and last) else contextlib.nullcontext()
        with ctx:
            with autocast(device, dtype):
                loss = model(x[lo:hi], y[lo:hi])
            (loss * (weight * (hi - lo) / rows)).backward()
        total += loss.detach().float() * ((hi - lo) / rows)
    return total


def to_device(batch: tuple[np.ndarray, np.ndarray], device: torch.device) -> tuple[Tensor, Tensor]:
    x, y = (torch.from_numpy(a) for a in batch)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


def train_step(model, opt: Optimizers, loader: BatchLoader, t: TrainConfig, accum: int,
               device: torch.device, dtype: torch.dtype) -> Tensor:
    """One optimizer step over this rank's `accum` micro-batches; returns the local mean loss."""
    micro_tokens = t.batch_tokens // t.grad_accum
    max_rows = t.max_microbatch_tokens // t.seq_len
    total = torch.zeros((), device=device)
    for k in range(accum):
        x, y = to_device(loader.next_batch(micro_tokens, t.seq_len), device)
        total += micro_step(model, x, y, 1.0 / accum, max_rows, k == accum - 1, device, dtype)
    opt.step()
    opt.zero_grad()
    return total / accum


@torch.no_grad()
def evaluate_model(model, cfg: Config, val_tokens: np.ndarray, tables: ByteTables, rt: runtime.Runtime,
                   dtype: torch.dtype, rank: int | None = None, world_size: int | None = None) -> EvalResult:
    """Summed nats/tokens/bytes of this rank's share of the validation split, reduced over ranks."""
    rank = rt.rank if rank is None else rank
    world_size = rt.world_size if world_size is None else world_size
    was_training = model.training
    model.eval()
    nats = torch.zeros((), device=rt.device, dtype=torch.float64)
    tokens = nbytes = 0
    for x, y, b in val_batches(val_tokens, cfg.train.seq_len, cfg.eval.batch_tokens, tables, rank, world_size,
                               cfg.eval.max_tokens):
        xt, yt = to_device((x, y), rt.device)
        with autocast(rt.device, dtype):
            nats += model(xt, yt, reduction="sum").double()
        tokens += y.size
        nbytes += b
    model.train(was_training)
    totals = torch.tensor([0.0, float(tokens), float(nbytes)], device=rt.device, dtype=torch.float64)
    totals[0] = nats
    if world_size > 1:  # totals, never averages of averages (shared/data/bpb.py)
        rt.all_reduce(totals, "sum")
    n, tok, by = totals.tolist()
    return EvalResult(n, int(round(tok)), int(round(by)))


class StopFlag:
    """SIGINT asks the loop to stop at the next step boundary (and save); a second one, a while later, aborts."""

    def __init__(self):
        self.requested_at: float | None = None
        self._previous = None

    def _handler(self, signum, frame):
        now = time.monotonic()
        # torchrun forwards the terminal's Ctrl-C, so one keypress can arrive twice: only a
        # second SIGINT more than a second after the first means "abort now".
        if self.requested_at is not None and now - self.requested_at > 1.0:
            raise KeyboardInterrupt
        self.requested_at = self.requested_at or now

    def __enter__(self) -> StopFlag:
        try:
            # SIGTERM (preemption, a scheduler's stop) gets the same save-then-exit as Ctrl-C.
            self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in (self._previous or {}).items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.requested_at is not None


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else None


def _test_hooks(step: int, rank: int) -> None:
    """Failure injection for the distributed tests (module docstring); inert unless the variables are set."""
    fail_rank = _env_int("PGOLF_TEST_FAIL_RANK")
    if fail_rank is not None and fail_rank == rank and step == (_env_int("PGOLF_TEST_FAIL_STEP") or 1):
        raise RuntimeError(f"PGOLF_TEST_FAIL_RANK: injected failure on rank {rank} at step {step}")
    if _env_int("PGOLF_TEST_INTERRUPT_STEP") == step:
        os.kill(os.getpid(), signal.SIGINT)


def _rank_report(rt: runtime.Runtime, record: dict) -> None:
    out = os.environ.get("PGOLF_TEST_RANK_REPORT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"rank{rt.rank}.json").write_text(json.dumps(record))


def _optimizer_state(opt: Optimizers) -> dict[str, np.ndarray]:
    tensors = opt.state_tensors()
    tensors["rng/torch_cpu"] = torch.get_rng_state().numpy().copy()
    return tensors


def train(cfg: Config, run_dir: str | Path, resume: bool = False, device: str | None = None) -> dict[str, Any]:
    """Train on this process's rank, validate, checkpoint, pack and evaluate; return summary.json's dict."""
    from shared.core.finish import finish_run
    from shared.data.dataset import open_dataset

    rt = runtime.init(device)
    t, o = cfg.train, cfg.optim
    dtype = runtime.compute_dtype(t.compute_dtype, rt.device)
    accum = local_accum_steps(t, rt.world_size)
    run = RunDir(run_dir, is_main=rt.is_main)
    dataset = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    torch.manual_seed(t.seed)

    ckpt_path = run.path / CHECKPOINT
    if resume:
        params, opt_tensors, st = load_resume_state(run.path, cfg, "torch")
    else:
        params, st = init_params(cfg.model, t.seed), None
    run.write_config(cfg)

    info = provenance({"backend": "torch", **runtime.provenance_extra(rt, dtype)})
    run.log(("resuming " if resume else "training ") + f"{run.path} | " + " ".join(f"{k}={v}" for k, v in info.items()))
    run.log(f"model: {count_params(cfg.model):,} parameters, {cfg.model.num_layers} layers x {cfg.model.model_dim}, "
            f"vocab {cfg.model.vocab_size}; {t.batch_tokens:,} tokens/step, seq {t.seq_len}, grad_accum {t.grad_accum} "
            f"({accum} per rank x {rt.world_size} ranks)")
    run.log("resolved config:\n" + to_toml(cfg), console=False)
    smi = runtime.nvidia_smi() if rt.is_main else None
    if smi:
        run.log(smi, console=False)

    model = build_model(cfg.model, params, rt.device)
    opt = Optimizers(model, o, cfg.model.tie_embeddings, ns_dtype=dtype, rank=rt.rank,
                     world_size=rt.world_size, fused=rt.is_cuda)
    stream = dataset.train_stream()
    loader = BatchLoader(stream, rt.rank, rt.world_size)
    step, elapsed, tokens, good_step = 0, 0.0, 0, None
    if st is not None:
        if "rng/torch_cpu" in opt_tensors:
            torch.set_rng_state(torch.from_numpy(opt_tensors.pop("rng/torch_cpu")))
        opt.load_state_tensors(opt_tensors)
        stream.restore(st["data"])
        step, elapsed, tokens, good_step = int(st["step"]), float(st["elapsed"]), int(st["tokens"]), int(st["step"])

    # torch.compile and DDP wrap the single-device model here, never inside model.py.
    compiled = torch.compile(model, dynamic=False) if t.compile else model
    net = DDP(compiled, device_ids=[rt.device.index] if rt.is_cuda else None) if rt.distributed else compiled

    def run_step(scale: float, momentum: float) -> Tensor:
        opt.set_schedule(scale, momentum)
        return train_step(net, opt, loader, t, accum, rt.device, dtype)

    if t.warmup_steps > 0:  # compile and warm up, then undo every effect
        saved = ({k: v.detach().clone() for k, v in model.state_dict().items()}, opt.snapshot(), stream.state())
        t0 = time.perf_counter()
        for i in range(t.warmup_steps):
            run_step(lr_scale(step + i, elapsed, t), muon_momentum(step + i, o))
        if rt.is_cuda:
            torch.cuda.synchronize(rt.device)
        model.load_state_dict(saved[0])
        opt.restore(saved[1])
        stream.restore(saved[2])
        run.log(f"warm-up: {t.warmup_steps} steps in {time.perf_counter() - t0:.1f}s (undone)")

    def save(at: int) -> None:
        """Rank 0 writes weights, then optimizer state + data position + clock (no collective needed)."""
        nonlocal good_step
        # The loss is measured before the update, so the weights it produced can still be bad: check
        # them on every rank (identical weights, identical verdict) and never overwrite a good checkpoint.
        if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
            raise PgolfError(f"weights became non-finite by step {at}; not saved, the last good checkpoint is kept "
                             f"({_good(good_step)}); lower the learning rates or set optim.grad_clip_norm")
        if rt.is_main:
            weights = export_params(model)
            save_resume_state(run.path, weights, _optimizer_state(opt), {"step": at, "data": stream.state(),
                              "elapsed": elapsed, "tokens": tokens, "backend": "torch", "world_size": rt.world_size}, cfg)
            save_checkpoint(run.path, weights, cfg, at)
        good_step = at

    def _good(s: int | None) -> str:
        return f"{ckpt_path}, step {s}" if s is not None else "none was written"

    def validate() -> EvalResult:
        return evaluate_model(compiled, cfg, dataset.val_tokens, dataset.tables, rt, dtype)

    eval_tokens = val_token_count(dataset.val_tokens, t.seq_len, cfg.eval.max_tokens)
    run.log(f"validation: {eval_tokens:,} target tokens" + (" (eval.max_tokens)" if cfg.eval.max_tokens else " (whole split)"))
    progress = TrainProgress(t.iterations, t.max_seconds, t.batch_tokens, start_step=step, start_elapsed=elapsed)
    progress = progress if rt.is_main else None
    last_val: EvalResult | None = None
    log_t, log_tokens = elapsed, tokens
    stop_reason, out_of_time = "iterations", False

    def time_up() -> bool:
        return step >= t.iterations or out_of_time

    # The training clock runs through everything but validation (the reference's rule):
    # logging, the stop vote and checkpoint saves count against train.max_seconds.
    clock = time.perf_counter()
    with StopFlag() as stop:
        while not time_up():
            _test_hooks(step, rt.rank)
            scale, momentum = lr_scale(step, elapsed, t), muon_momentum(step, o)
            loss_t = rt.all_reduce(run_step(scale, momentum), "sum")  # global mean loss, the same on every rank
            loss = loss_t.item() / rt.world_size  # .item() waits for the GPU, so the clock below is true
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            step += 1
            tokens += t.batch_tokens
            if not math.isfinite(loss):  # every rank sees the same reduced loss: all stop here
                if progress:
                    progress.close()
                raise PgolfError(f"training diverged: the loss is {loss} at step {step}; stopped without saving "
                                 f"(last good checkpoint: {_good(good_step)}); lower the learning rates or set "
                                 "optim.grad_clip_norm")
            # The ranks agree on stopping (wallclock cap or Ctrl-C on any rank): all leave after the same step.
            votes = rt.all_reduce(torch.tensor([float(t.max_seconds > 0 and elapsed >= t.max_seconds),
                                                float(stop.requested)], device=rt.device), "max")
            out_of_time, interrupted = (bool(v) for v in votes.tolist())
            if progress:
                progress.update(step, loss, elapsed)
            done = time_up()
            do_val = done or (t.val_every > 0 and step % t.val_every == 0)
            if do_val or step == 1 or (t.log_every > 0 and step % t.log_every == 0):
                tok_s = (tokens - log_tokens) / max(elapsed - log_t, 1e-9)
                log_t, log_tokens = elapsed, tokens
                if do_val:
                    last_val = validate()
                    clock = time.perf_counter()  # validation is not training time
                line = run.log_step(step, t.iterations, loss, scale, tok_s, elapsed, last_val if do_val else None)
                if progress:
                    progress.write(line)
            if interrupted:
                save(step)
                rt.barrier()  # no rank exits (and gets the group torn down) while rank 0 is still writing
                if progress:
                    progress.close()
                run.log(f"interrupted: saved step {step} to {ckpt_path}; continue with --resume {run.path}")
                _rank_report(rt, {"rank": rt.rank, "steps": step, "stop": "interrupted"})
                raise KeyboardInterrupt
            if t.checkpoint_every > 0 and step % t.checkpoint_every == 0 and not done:
                save(step)
    if progress:
        progress.close()
    if out_of_time:
        stop_reason = "wallclock"
        run.log(f"stopped at step {step}: train.max_seconds={t.max_seconds:g} reached")
    _rank_report(rt, {"rank": rt.rank, "steps": step, "stop": stop_reason})
    if last_val is None:  # resumed at the end, or no steps: still measure the final weights
        last_val = validate()
        run.metrics({"step": step, "val_loss": last_val.val_loss, "val_bpb": last_val.val_bpb, "elapsed": elapsed})
    save(step)
    run.log(f"trained {step} steps, {tokens:,} tokens in {elapsed:.1f}s ({tokens / max(elapsed, 1e-9):,.0f} tok/s); "
            f"val_loss {last_val.val_loss:.4f} val_bpb {last_val.val_bpb:.4f}")
    from cuda_train import backend

    weights = export_params(model)
    stats = {"val_loss": last_val.val_loss, "val_bpb": last_val.val_bpb, "steps": step, "train_tokens": tokens,
             "train_seconds": elapsed, "tokens_per_second": tokens / max(elapsed, 1e-9),
             "compute_dtype": runtime.dtype_name(dtype), "world_size": rt.world_size,
             "device": runtime.device_name(rt.device), "stop_reason": stop_reason}
    summary = finish_run(backend, weights, cfg, run, dataset, stats, rt.rank, rt.world_size)
    runtime.shutdown()
    return summary
