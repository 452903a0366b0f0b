"""The backend contract of docs/DESIGN.md, implemented with MLX.

Every tensor crossing this boundary is a float32 numpy `name -> array` dict
with the canonical names and layouts of `shared/core/spec.py`.

    train(cfg, run_dir, resume=False, nproc=1) -> summary dict
    evaluate(params, cfg, val_tokens, tables, rank=0, world_size=1) -> EvalResult
    batch_loss(params, cfg, x, y) -> float
    train_steps(params, cfg, batches) -> (losses, params)
    export_params(params, cfg) -> params              (load into the model, export back: parity)
    collect_hessians(params, cfg, x, show_progress=True) -> {name: H [in, in] float64}   (calibrate.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlx_train import train as _train
from mlx_train.calibrate import collect_hessians  # noqa: F401  (part of the contract)
from shared.core.config import Config
from shared.core.spec import check_params
from shared.data.bpb import ByteTables, EvalResult
from shared.errors import PgolfError

train_steps = _train.train_steps


def train(cfg: Config, run_dir: str | Path, resume: bool = False, nproc: int = 1, **hooks: Any) -> dict:
    return _train.train(cfg, run_dir, resume=resume, nproc=nproc, **hooks)


def evaluate(params: dict[str, np.ndarray], cfg: Config, val_tokens: np.ndarray, tables: ByteTables,
             rank: int = 0, world_size: int = 1) -> EvalResult:
    """Validation totals of these weights (single process: this rank's share is the total)."""
    if world_size != 1:
        raise PgolfError("the MLX backend evaluates in one process (world_size=1)")
    check_params(params, cfg.model, "weights")
    return _train.Trainer(cfg, params).evaluate(val_tokens, tables)


def export_params(params: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """Load the canonical dict into the MLX model and export it back (what a packed run would see)."""
    from mlx_train.model import build_model
    from mlx_train.model import export_params as export_model

    return export_model(build_model(cfg.model, params))


def batch_loss(params: dict[str, np.ndarray], cfg: Config, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (nats) of one forward pass."""
    return _train.Trainer(cfg, params).loss(np.asarray(x), np.asarray(y))


