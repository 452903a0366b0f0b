"""The training loop of both backends: resume, warm-up, clock, schedule, cadence, saves, signals, finish.

    summary = train_loop(session, cfg, run_dir, resume=False, hooks=None, code_bytes=n)

A backend supplies a `Session` (shared/run/backends.py: `mlx_train/session.py`,
`cuda_train/session.py`): one optimizer step on this rank's micro-batches,
evaluation, weights and optimizer state in and out, a snapshot to undo the
warm-up, and `agree` (a logical OR across ranks; the identity in one
process). Everything else happens here, once, for both:

- One optimizer step consumes `train.grad_accum` micro-batches of
  `batch_tokens / grad_accum` tokens over all ranks (each rank
  `grad_accum / world_size` of them: `local_accum_steps`), so 1, 2 or 8
  ranks consume the same tokens per step and reach the same weights. The
  session splits a micro-batch into equal chunks of at most
  `train.max_microbatch_tokens` (`shared.data.shards.chunk_count`): memory only.
- `train.warmup_steps` compile and warm the kernels, then are undone
  (weights, optimizer state and data position restored).
- The clock (`train.max_seconds`) runs through everything but validation
  (the reference's rule); the LR and momentum come from `shared.core.schedule`.
- Each step every rank sees the same global loss and votes on stopping
  (wallclock or a signal on any rank), so all ranks leave after the same step.
- SIGINT and SIGTERM finish the step, save and exit 130 (`--resume` continues
  bit-for-bit); a second signal more than a second later aborts at once.
- A non-finite loss stops the run with a one-line error; weights are
  checked before every save, so a bad step never overwrites a good checkpoint.
- Rank 0 writes the run directory; the end of the run (calibrate, pack,
  evaluate the round trip, summary.json) is `shared.run.finish.finish_run`.

`hooks` lets tests act at step boundaries (interrupt, poison, fail a rank)
without anything in product code that reads the environment.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import SCRIPT
from shared.core.config import Config, TrainConfig, to_toml
from shared.core.progress import TrainProgress
from shared.core.schedule import looped, lr_scale, muon_momentum, rewarm, seq_cap, train_seconds
from shared.core.spec import count_params, init_params
from shared.data.bpb import EvalResult
from shared.data.shards import BatchLoader, Prefetcher, val_token_count
from shared.errors import PgolfError
from shared.run.backends import Session
from shared.run.rundir import (
    CHECKPOINT,
    RunDir,
    load_resume_state,
    provenance,
    run_dir_held,
    save_checkpoint,
    save_resume_state,
)


@dataclass
class Hooks:
    """Callbacks at step boundaries (tests): `before_step(step, session)` runs before step `step + 1`,
    `after_step(step, session)` after step `step`, `on_stop(step, reason, session)` when the loop ends."""

    before_step: Callable[[int, Session], None] | None = None
    after_step: Callable[[int, Session], None] | None = None
    on_stop: Callable[[int, str, Session], None] | None = None


def local_accum_steps(t: TrainConfig, world_size: int) -> int:
    """Micro-batches per step on each rank; the global batch is fixed by the config."""
    if t.grad_accum % world_size:
        raise PgolfError(
            f"train.grad_accum={t.grad_accum} global micro-batches cannot be split over {world_size} ranks: "
            f"make it a multiple of {world_size} (the global batch is train.batch_tokens={t.batch_tokens})"
        )
    return t.grad_accum // world_size


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary (and save); a second one, a while later, aborts."""

    def __init__(self):
        self.requested_at: float | None = None
        self._previous: dict | None = None

    def _handler(self, signum, frame):
        now = time.monotonic()
        # torchrun forwards the terminal's Ctrl-C, so one keypress can arrive twice: only a
        # second signal more than a second after the first means "abort now".
        if self.requested_at is not None and now - self.requested_at > 1.0:
            raise KeyboardInterrupt
        self.requested_at = self.requested_at or now

    def __enter__(self) -> StopFlag:
        try:
            # SIGTERM (preemption, a scheduler's stop) gets the same save-then-exit as Ctrl-C.
            self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no handler, signals behave as usual
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in (self._previous or {}).items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.requested_at is not None


def train_loop(session: Session, cfg: Config, run_dir: str | Path, resume: bool = False,
               hooks: Hooks | None = None, *, code_bytes: int | Callable[[], int]) -> dict[str, Any]:
    """Train `session` on this rank, validate, checkpoint, pack and evaluate; return summary.json's dict.
    Rank 0 holds the run folder's lock throughout (a direct `backend.train(...)` call takes it here)."""
    with run_dir_held(run_dir, session.is_main):
        return run_loop(session, cfg, run_dir, resume, hooks, code_bytes)


def run_loop(session: Session, cfg: Config, run_dir: str | Path, resume: bool, hooks: Hooks | None,
             code_bytes: int | Callable[[], int]) -> dict[str, Any]:
    """`train_loop` without the run folder's lock (train_gpt.py: the pod's folder has one owner)."""
    from shared.data.dataset import open_dataset
    from shared.run.finish import finish_run

    t, o = cfg.train, cfg.optim
    accum = local_accum_steps(t, session.world_size)
    run = RunDir(run_dir, is_main=session.is_main)
    dataset = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)

    step, elapsed, tokens, good_step = 0, 0.0, 0, None
    stream = dataset.train_stream()
    if resume:
        params, opt_tensors, st = load_resume_state(run.path, cfg, session.backend)
        session.load_weights(params)
        session.load_optimizer_state(opt_tensors)
        stream.restore(st["data"])
        step, elapsed, tokens, good_step = int(st["step"]), float(st["elapsed"]), int(st["tokens"]), int(st["step"])
    else:
        session.load_weights(init_params(cfg.model, t.seed))
    info = {"backend": session.backend, **session.info()}
    if not SCRIPT:  # the script's folder holds its log; its config is the script
        run.write_config(cfg)
        info = provenance(info)
    run.log(("resuming " if resume else "training ") + f"{run.path} | " + " ".join(f"{k}={v}" for k, v in info.items()))
    run.log(f"model: {count_params(cfg.model):,} parameters, {cfg.model.num_layers} layers x {cfg.model.model_dim}, "
            f"vocab {cfg.model.vocab_size}; {t.batch_tokens:,} tokens/step, seq {t.seq_len}, grad_accum {t.grad_accum} "
            f"({accum} per rank x {session.world_size} ranks)")
    if not SCRIPT:
        run.log("resolved config:\n" + to_toml(cfg), console=False)
    for extra in session.log_lines():
        run.log(extra, console=False)

    # the next step's batches are built in a background thread while the device runs this one
    micro_tokens = t.batch_tokens // t.grad_accum
    loader = Prefetcher(BatchLoader(stream, session.rank, session.world_size), micro_tokens, t.seq_len, accum)

    def run_step(at: int, seconds: float, loop_on: bool, scale: float | None = None) -> float:
        batches = loader.next_step()
        scale = lr_scale(at, seconds, t) if scale is None else scale
        cap = seq_cap(at, seconds, t)
        kw = {"seg_len": cap} if cap else {}  # growing context (#2014): the document segment cap of this step
        return session.step(batches, scale, muon_momentum(at, o), looped=loop_on, **kw)

    if t.warmup_steps > 0:  # compile and warm up (both layer orders with depth recurrence), then undo every effect
        saved, data_pos = session.snapshot(), loader.state()
        t0 = time.perf_counter()
        orders = (False, True) if cfg.model.looping else (False,)
        for loop_on in orders:
            for i in range(t.warmup_steps):
                run_step(step + i, elapsed, loop_on)
        session.rollback(saved)
        loader.restore(data_pos)
        run.log(f"warm-up: {t.warmup_steps * len(orders)} steps in {time.perf_counter() - t0:.1f}s (undone)")
    if cfg.model.looping:
        run.log(f"depth recurrence: from {cfg.model.loop_at:.0%} of training the layer order is "
                f"{cfg.model.layer_order(True)} (before: {cfg.model.layer_order(False)}); evaluation uses the looped order")

    def good(s: int | None) -> str:
        return f"{run.path / CHECKPOINT}, step {s}" if s is not None else "none was written"

    def save(at: int) -> None:
        """Rank 0 writes weights, optimizer state, data position and clock (one file), then the checkpoint."""
        nonlocal good_step
        # The loss is measured before the update, so the weights it produced can still be bad: check
        # them on every rank (identical weights, identical verdict) and never overwrite a good checkpoint.
        if not session.all_finite():
            raise PgolfError(f"weights became non-finite by step {at}; not saved, the last good checkpoint is kept "
                             f"({good(good_step)}); lower the learning rates or set optim.grad_clip_norm")
        opt_state = session.optimizer_state()  # on every rank: a sharded optimizer gathers its state here
        if run.is_main:  # the resume state holds the live weights; the checkpoint what gets packed (EMA when on)
            save_resume_state(run.path, session.weights(), opt_state,
                              {"step": at, "data": loader.state(), "elapsed": elapsed, "tokens": tokens,
                               "backend": session.backend, "world_size": session.world_size}, cfg)
            save_checkpoint(run.path, session.final_weights(), cfg, at)
        good_step = at

    def validate() -> EvalResult:
        return session.evaluate(dataset.val_tokens, dataset.tables)

    if run.is_main:  # the data a record claims to use, checked by `pgolf record check` against the official sums
        from shared.data.manifest import data_checksums

        sums = data_checksums(dataset.data_dir, dataset.tokenizer)
        run.log(f"data_checksums: val_tokens:{dataset.val_tokens.size - 1} val_sha256:{sums['val_sha256']} "
                f"tokenizer_sha256:{sums['tokenizer_sha256']}", console=False)
    eval_tokens = val_token_count(dataset.val_tokens, t.seq_len, cfg.eval.max_tokens)
    run.log(f"validation: {eval_tokens:,} target tokens" + (" (eval.max_tokens)" if cfg.eval.max_tokens else " (whole split)"))
    progress = TrainProgress(t.iterations, t.max_seconds, t.batch_tokens, start_step=step,
                             start_elapsed=elapsed) if run.is_main and not SCRIPT else None  # a terminal's status line
    last_val: EvalResult | None = None
    log_t, log_tokens = elapsed, tokens
    interrupted = False
    budget_s = train_seconds(t)  # train.max_seconds less the calibration reserve
    # A resume whose clock is already spent trains no step past the cap: it only finishes the run.
    out_of_time = budget_s > 0 and elapsed >= budget_s  # the saved clock: the same on every rank
    loop_was = looped(step, elapsed, cfg.model, t)
    cap_was, stage_step = seq_cap(step, elapsed, t), None
    if cap_was:
        run.log(f"context: document segments of at most {cap_was} tokens (train.seq_schedule {t.seq_schedule})")

    def close_progress() -> None:
        if progress:
            progress.close()

    clock = time.perf_counter()
    with nullcontext() if SCRIPT else StopFlag() as stop:  # a pod run ends as its signal says
        while step < t.iterations and not out_of_time:
            if hooks and hooks.before_step:
                hooks.before_step(step, session)
            scale, loop_on = lr_scale(step, elapsed, t), looped(step, elapsed, cfg.model, t)
            if loop_on != loop_was:
                run.log(f"depth recurrence on from step {step + 1} ({elapsed:.1f}s)")
                loop_was = loop_on
            cap = seq_cap(step, elapsed, t)
            if cap != cap_was:
                run.log(f"context: segments of at most {cap} tokens from step {step + 1} ({elapsed:.1f}s)"
                        + (f", LR re-warmed over {t.seq_rewarm_steps} steps" if t.seq_rewarm_steps else ""))
                cap_was, stage_step = cap, step
            scale *= rewarm(step, stage_step, t)
            loss = run_step(step, elapsed, loop_on, scale)  # the global mean loss; reading it waits for the device
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            step += 1
            tokens += t.batch_tokens
            if not math.isfinite(loss):  # every rank sees the same loss: all stop here
                close_progress()
                loader.close()
                raise PgolfError(f"training diverged: the loss is {loss} at step {step}; stopped without saving "
                                 f"(last good checkpoint: {good(good_step)}); lower the learning rates or set "
                                 "optim.grad_clip_norm")
            if hooks and hooks.after_step:
                hooks.after_step(step, session)
            out_of_time, interrupted = session.agree([budget_s > 0 and elapsed >= budget_s,
                                                      False if SCRIPT else stop.requested])
            if progress:
                progress.update(step, loss, elapsed)
            done = step >= t.iterations or out_of_time
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
            if interrupted and not SCRIPT:
                save(step)
                session.barrier()  # no rank exits (and tears the group down) while rank 0 is still writing
                close_progress()
                loader.close()
                run.log(f"interrupted: saved step {step} to {run.path / CHECKPOINT}; continue with --resume {run.path}")
                if hooks and hooks.on_stop:
                    hooks.on_stop(step, "interrupted", session)
                raise KeyboardInterrupt
            if not SCRIPT and t.checkpoint_every > 0 and step % t.checkpoint_every == 0 and not done:
                save(step)
    close_progress()
    loader.close()
    stop_reason = "wallclock" if out_of_time else "iterations"
    if out_of_time:
        reserve = f" less train.calib_reserve_s={t.calib_reserve_s:g} (calibration)" if t.calib_reserve_s else ""
        run.log(f"stopped at step {step}: train.max_seconds={t.max_seconds:g}{reserve} reached")
    if hooks and hooks.on_stop:
        hooks.on_stop(step, stop_reason, session)
    if last_val is None:  # resumed at the end, or no steps: still measure the final weights
        last_val = validate()
        run.metrics({"step": step, "val_loss": last_val.val_loss, "val_bpb": last_val.val_bpb, "elapsed": elapsed})
    if not SCRIPT:  # the script's run ends in its artifact
        save(step)
    run.log(f"trained {step} steps, {tokens:,} tokens in {elapsed:.1f}s ({tokens / max(elapsed, 1e-9):,.0f} tok/s); "
            f"val_loss {last_val.val_loss:.4f} val_bpb {last_val.val_bpb:.4f}")
    stats = {"val_loss": last_val.val_loss, "val_bpb": last_val.val_bpb, "steps": step, "train_tokens": tokens,
             "train_seconds": elapsed, "tokens_per_second": tokens / max(elapsed, 1e-9),
             "world_size": session.world_size, "stop_reason": stop_reason, **session.summary_extras()}
    if "peak_memory_bytes" in stats:
        run.log(f"peak memory: {stats['peak_memory_bytes'] / 2**30:.2f} GiB (rank {session.rank})")
    return finish_run(session, session.final_weights(), cfg, run, dataset, stats, code_bytes=code_bytes)
