"""The backend contract of shared/run/backends.py, implemented with MLX.

Every tensor crossing this boundary is a float32 numpy `name -> array` dict
with the canonical names and layouts of the parameter table (shared/core/spec.py).

    session(cfg) -> MLXSession                       (session.py: what the shared loop drives)
    train(cfg, run_dir, resume=False, nproc=1, hooks=None) -> summary dict
    evaluate(params, cfg, val_tokens, tables, rank=0, world_size=1) -> EvalResult
    batch_loss(params, cfg, x, y) -> float
    export_params(params, cfg) -> params              (load into the model, export back: parity)
    collect_hessians(params, cfg, x, show_progress=True) -> {name: H [in, in] float64}   (calibrate.py)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlx_train.calibrate import collect_hessians  # noqa: F401  (part of the contract)
from mlx_train.session import MLXSession, session_from
from shared.core.config import Config
from shared.core.spec import check_params
from shared.data.bpb import ByteTables, EvalResult
from shared.errors import PgolfError
from shared.run.loop import Hooks, train_loop


def session(cfg: Config) -> MLXSession:
    return MLXSession(cfg)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, nproc: int = 1, hooks: Hooks | None = None) -> dict:
    """Train in this process with the shared loop; returns summary.json's dict."""
    if nproc != 1:
        raise PgolfError(f"--nproc {nproc}: the MLX backend trains in one process; use --nproc 1 or --backend torch")
    from shared.record.script import code_bytes  # the size of the train_gpt.py a record of this run submits

    return train_loop(MLXSession(cfg), cfg, run_dir, resume=resume, hooks=hooks, code_bytes=lambda: code_bytes("mlx", cfg))


def evaluate(params: dict[str, np.ndarray], cfg: Config, val_tokens: np.ndarray, tables: ByteTables,
             rank: int = 0, world_size: int = 1) -> EvalResult:
    """Validation totals of these weights (single process: this rank's share is the total)."""
    if world_size != 1:
        raise PgolfError("the MLX backend evaluates in one process (world_size=1)")
    from shared.eval.driver import run_eval

    check_params(params, cfg.model, "weights")
    return run_eval(session_from(cfg, params), cfg, val_tokens, tables).result  # flat, sliding or TTT


def export_params(params: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """Load the canonical dict into the MLX model and export it back (what a packed run would see)."""
    from mlx_train.model import build_model
    from mlx_train.model import export_params as export_model

    return export_model(build_model(cfg.model, params))


def batch_loss(params: dict[str, np.ndarray], cfg: Config, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (nats) of one forward pass."""
    return session_from(cfg, params).loss(np.asarray(x), np.asarray(y))
