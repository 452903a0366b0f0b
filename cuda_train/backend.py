"""The backend contract (shared/run/backends.py) for PyTorch: numpy dicts in, numpy dicts out.

    session(cfg) -> TorchSession                     (session.py: what the shared loop drives)
    train(cfg, run_dir, resume=False, nproc=1, hooks=None) -> summary dict
    evaluate(params, cfg, val_tokens, tables, rank=0, world_size=1) -> EvalResult (totals over ranks)
    batch_loss(params, cfg, x, y) -> float
    export_params(params, cfg) -> params              (load into the model, export back: parity)
    collect_hessians(params, cfg, x, show_progress=True) -> {name: H}   (calibrate.py)

`train` with nproc > 1 launches torchrun on this machine (launch.py) and
waits for it; under torchrun (WORLD_SIZE set) each rank trains here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cuda_train import runtime
from cuda_train.calibrate import collect_hessians  # noqa: F401  (part of the contract)
from cuda_train.session import TorchSession, local_runtime, session_from
from shared.core.config import Config
from shared.data.bpb import ByteTables, EvalResult
from shared.errors import PgolfError
from shared.run.loop import Hooks, train_loop


def session(cfg: Config) -> TorchSession:
    """A one-process session (fp32 on the CPU, else CUDA when present): parity and tools."""
    return TorchSession(cfg, local_runtime(cfg))


def train(cfg: Config, run_dir: str | Path, resume: bool = False, nproc: int = 1, hooks: Hooks | None = None,
          device: str | None = None) -> dict:
    """Train in this process (nproc = 1, or one rank under torchrun) or under a torchrun this call starts."""
    if nproc < 1:
        raise PgolfError(f"--nproc must be at least 1, got {nproc}")
    if nproc == 1 or os.environ.get("WORLD_SIZE"):
        from shared.record.script import (
            code_bytes,  # the size of the train_gpt.py a record of this run submits
        )

        summary = train_loop(TorchSession(cfg, runtime.init(device)), cfg, run_dir, resume=resume, hooks=hooks,
                             code_bytes=lambda: code_bytes("torch", cfg))
        runtime.shutdown()
        return summary
    from cuda_train.launch import torchrun
    from shared.run.rundir import run_dir_held

    with run_dir_held(run_dir):  # the launcher owns the folder; its workers inherit the claim
        return torchrun(cfg, run_dir, resume, nproc)


def evaluate(params: dict[str, np.ndarray], cfg: Config, val_tokens: np.ndarray, tables: ByteTables,
             rank: int = 0, world_size: int = 1) -> EvalResult:
    """Validation totals of `params`; with world_size > 1 each rank scores its share and the totals are summed."""
    s = TorchSession(cfg, runtime.init(), training=False)
    s.load_weights(params)
    if cfg.eval.mode != "flat":  # sliding / TTT: the shared driver (shards by the session's own rank)
        from shared.eval.driver import run_eval

        return run_eval(s, cfg, val_tokens, tables).result
    from shared.core.progress import Progress, activate
    from shared.data.shards import val_token_count

    total = val_token_count(val_tokens, cfg.train.seq_len, cfg.eval.max_tokens)
    with Progress("eval flat", total=total, unit="tokens", enabled=rank == 0, min_s=5.0) as bar, activate(bar):
        return s.evaluate(val_tokens, tables, rank=rank, world_size=world_size)


def export_params(params: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """Load the canonical dict into the torch model and export it back (what a packed run would see)."""
    return session_from(cfg, params).weights()


def batch_loss(params: dict[str, np.ndarray], cfg: Config, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (nats) of one batch: one forward, no state."""
    return session_from(cfg, params).loss(np.asarray(x), np.asarray(y))
