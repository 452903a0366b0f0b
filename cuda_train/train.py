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

Only rank 0 logs and writes the run directory (shared/rundir.py). Every rank
holds the full weights and optimizer state, so rank 0 saves checkpoints
without a collective. The end of the run (pack, re-evaluate, summary.json)
is `shared.finish.finish_run`, shared with the MLX trainer.

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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from cuda_train import runtime
from cuda_train.model import GPT, build_model, export_params, load_params
from cuda_train.optim import Optimizers
from shared.bpb import ByteTables, EvalResult
from shared.config import Config, TrainConfig
from shared.dataset import open_dataset
from shared.errors import PgolfError
from shared.rundir import (
    CHECKPOINT,
    TRAIN_STATE,
    RunDir,
    load_checkpoint,
    load_train_state,
    provenance,
    save_checkpoint,
    save_train_state,
)
from shared.schedule import lr_scale, muon_momentum
from shared.shards import BatchLoader, val_batches
from shared.spec import count_params, init_params


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
    if world_size > 1:  # totals, never averages of averages (shared/bpb.py)
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
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    @property
    def set(self) -> bool:
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


def _save(run: RunDir, model: GPT, opt: Optimizers, cfg: Config, step: int, loader: BatchLoader,
          elapsed: float, tokens: int) -> None:
    """Checkpoint + train state (rank 0). Weights first: a crash between the two leaves a loadable checkpoint."""
    if not run.is_main:
        return
    save_checkpoint(run.path, export_params(model), cfg, step)
    tensors = opt.state_tensors()
    tensors["rng/torch_cpu"] = torch.get_rng_state().numpy().copy()
    save_train_state(run.path, tensors, {
        "step": step, "data": loader.stream.state(), "elapsed_s": elapsed, "train_tokens": tokens,
        "backend": "torch",
    })


def _resume_state(run: RunDir, model: GPT, opt: Optimizers, loader: BatchLoader, cfg: Config) -> tuple[int, float, int]:
    """Load the run's checkpoint and train state; (step, elapsed seconds, tokens so far)."""
    if not (run.path / CHECKPOINT).is_file() or not (run.path / TRAIN_STATE).is_file():
        raise PgolfError(f"--resume: {run.path} has no {CHECKPOINT} + {TRAIN_STATE} to resume from; "
                         "start a new run without --resume")
    params, _, ckpt_step = load_checkpoint(run.path / CHECKPOINT)
    tensors, state = load_train_state(run.path)
    if int(state["step"]) != ckpt_step:
        raise PgolfError(f"{run.path}: checkpoint is at step {ckpt_step} but the train state at step "
                         f"{state['step']} (interrupted while saving?); the two must match to resume")
    load_params(model, params, source=str(run.path / CHECKPOINT))
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(torch.from_numpy(tensors.pop("rng/torch_cpu")))
    opt.load_state_tensors(tensors)
    loader.stream.restore(state["data"])
    return int(state["step"]), float(state["elapsed_s"]), int(state.get("train_tokens", 0))


def train(cfg: Config, run_dir: str | Path, resume: bool = False, device: str | None = None) -> dict:
    """Train `cfg` into `run_dir` on this process's rank; returns the summary (also summary.json)."""
    rt = runtime.init(device)
    t, m = cfg.train, cfg.model
    dtype = runtime.compute_dtype(t.compute_dtype, rt.device)
    accum = local_accum_steps(t, rt.world_size)
    run = RunDir(run_dir, is_main=rt.is_main)
    if not resume and rt.is_main and (run.path / CHECKPOINT).exists():
        raise PgolfError(f"{run.path} already holds a run: pass --resume to continue it, or choose another --out")
    rt.barrier()  # nobody starts before rank 0 has checked the run directory
    torch.manual_seed(t.seed)

    dataset = open_dataset(cfg.data.dir, cfg.data.tokenizer, m.vocab_size)
    loader = BatchLoader(dataset.train_stream(), rt.rank, rt.world_size)
    model = build_model(m, init_params(m, t.seed), rt.device)
    opt = Optimizers(model, cfg.optim, m.tie_embeddings, ns_dtype=dtype, rank=rt.rank,
                     world_size=rt.world_size, fused=rt.is_cuda)
    step, elapsed, tokens = _resume_state(run, model, opt, loader, cfg) if resume else (0, 0.0, 0)

    run.write_config(cfg)
    info = provenance(runtime.provenance_extra(rt, dtype))
    run.log((f"resumed at step {step}: " if resume else "") + "pgolf train --backend torch " +
            " ".join(f"{k}={v}" for k, v in info.items()))
    smi = runtime.nvidia_smi() if rt.is_main else None
    if smi:
        run.log(smi, console=False)
    run.log(f"params {count_params(m):,}; {t.batch_tokens:,} tokens/step = {t.grad_accum} micro-batches "
            f"({accum} per rank x {rt.world_size} ranks); compute {runtime.dtype_name(dtype)}; "
            f"compile {t.compile}")

    # torch.compile and DDP wrap the single-device model here, never inside model.py.
    compiled = torch.compile(model, dynamic=False) if t.compile else model
    net = DDP(compiled, device_ids=[rt.device.index] if rt.is_cuda else None,
              broadcast_buffers=False) if rt.distributed else compiled

    def sync() -> None:
        if rt.is_cuda:
            torch.cuda.synchronize(rt.device)

    # Warm-up: run real steps to compile kernels, then put everything back as it was.
    if t.warmup_steps > 0:
        snap = ({k: v.detach().clone() for k, v in model.state_dict().items()}, opt.snapshot(),
                loader.stream.state())
        t0 = time.perf_counter()
        for _ in range(t.warmup_steps):
            opt.set_schedule(1.0, muon_momentum(0, cfg.optim))
            train_step(net, opt, loader, t, accum, rt.device, dtype)
        sync()
        model.load_state_dict(snap[0])
        opt.restore(snap[1])
        loader.stream.restore(snap[2])
        run.log(f"warm-up: {t.warmup_steps} steps in {time.perf_counter() - t0:.1f}s, undone")

    step_tokens = t.batch_tokens
    last_good = step if resume else None
    stop_reason = "iterations"
    with StopFlag() as flag:
        while True:
            last = step >= t.iterations
            if last or (t.val_every and step % t.val_every == 0 and step > 0 and not flag.set):
                res = evaluate_model(compiled, cfg, dataset.val_tokens, dataset.tables, rt, dtype)
                run.log(f"step {step}/{t.iterations} val_loss {res.val_loss:.4f} val_bpb {res.val_bpb:.4f} "
                        f"train_time {elapsed:.1f}s")
                run.metrics({"step": step, "val_loss": res.val_loss, "val_bpb": res.val_bpb, "elapsed_s": elapsed})
            if last:
                break
            _test_hooks(step, rt.rank)

            scale = lr_scale(step, elapsed, t)
            opt.set_schedule(scale, muon_momentum(step, cfg.optim))
            t0 = time.perf_counter()
            loss = train_step(net, opt, loader, t, accum, rt.device, dtype)
            rt.all_reduce(loss, "sum")  # the global mean loss, the same on every rank
            loss_value = loss.item() / rt.world_size  # .item() waits for the GPU: the clock below is true
            dt = time.perf_counter() - t0
            elapsed += dt
            step += 1
            tokens += step_tokens

            if not math.isfinite(loss_value):
                where = (f"; the last good checkpoint is {run.path / CHECKPOINT} (step {last_good})"
                         if last_good is not None else "; no checkpoint was saved")
                raise PgolfError(f"training loss became {loss_value} at step {step}: lower the learning rates "
                                 f"(optim.*) or set optim.grad_clip_norm{where}")
            # Agree on stopping, so every rank leaves the loop after the same step.
            votes = torch.tensor([float(t.max_seconds > 0 and elapsed >= t.max_seconds), float(flag.set)],
                                 device=rt.device)
            rt.all_reduce(votes, "max")
            out_of_time, interrupted = (bool(v) for v in votes.tolist())

            if step % max(t.log_every, 1) == 0 or step == 1 or out_of_time or interrupted:
                tps = step_tokens / dt
                run.log(f"step {step}/{t.iterations} loss {loss_value:.4f} lr_scale {scale:.3f} "
                        f"{1000 * dt:.0f}ms/step {tps:,.0f} tok/s train_time {elapsed:.1f}s")
                run.metrics({"step": step, "train_loss": loss_value, "lr_scale": scale, "step_ms": 1000 * dt,
                             "tokens_per_second": tps, "elapsed_s": elapsed})
            if interrupted:
                _save(run, model, opt, cfg, step, loader, elapsed, tokens)
                run.log(f"interrupted: saved step {step} to {run.path / CHECKPOINT}; continue with --resume")
                _rank_report(rt, {"rank": rt.rank, "steps": step, "stop": "interrupted"})
                raise KeyboardInterrupt
            if t.checkpoint_every and step % t.checkpoint_every == 0:
                _save(run, model, opt, cfg, step, loader, elapsed, tokens)
                last_good = step
            if out_of_time:
                stop_reason = "wallclock"
                run.log(f"stopping at step {step}: train.max_seconds={t.max_seconds:g} reached")
                t = replace(t, iterations=step)  # run the final validation below, once

    _rank_report(rt, {"rank": rt.rank, "steps": step, "stop": stop_reason})
    _save(run, model, opt, cfg, step, loader, elapsed, tokens)
    params = export_params(model)
    stats = {
        "val_loss": res.val_loss, "val_bpb": res.val_bpb, "steps": step, "train_tokens": tokens,
        "train_seconds": elapsed, "world_size": rt.world_size, "compute_dtype": runtime.dtype_name(dtype),
        "stop_reason": stop_reason, "device": runtime.device_name(rt.device),
    }
    if cfg.quant.gptq:
        stats["hessians"] = _calibrate(params, cfg, dataset)
    from cuda_train import backend
    from shared.finish import finish_run

    summary = finish_run(backend, params, cfg, run, dataset, stats, rt.rank, rt.world_size)
    run.log(f"done: val_bpb {summary['val_bpb']:.4f}, after packing {summary['q_val_bpb']:.4f}, "
            f"{summary['total_bytes']:,} bytes -> {run.path}")
    return summary


def _calibrate(params: dict[str, np.ndarray], cfg: Config, dataset) -> dict[str, np.ndarray]:
    """GPTQ Hessians from the first `quant.calib_tokens` training tokens (cuda_train/calibrate.py)."""
    from cuda_train import backend

    if not hasattr(backend, "collect_hessians"):
        raise PgolfError("quant.gptq = true needs cuda_train/calibrate.py (collect_hessians), which is missing")
    n = max(cfg.quant.calib_tokens // cfg.train.seq_len, 1) * cfg.train.seq_len
    x = np.asarray(dataset.train_stream().take(n), dtype=np.int64).reshape(-1, cfg.train.seq_len)
    return backend.collect_hessians(params, cfg, x)
