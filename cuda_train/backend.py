"""The backend contract (docs/DESIGN.md) for PyTorch: numpy dicts in, numpy dicts out.

    train(cfg, run_dir, resume=False, nproc=1) -> summary dict
    evaluate(params, cfg, val_tokens, tables, rank=0, world_size=1) -> EvalResult (totals over ranks)
    batch_loss(params, cfg, x, y) -> float
    train_steps(params, cfg, batches) -> (losses, params)
    export_params(params, cfg) -> params              (load into the model, export back: parity)
    collect_hessians(params, cfg, x, show_progress=True) -> {name: H}   (calibrate.py)

`train` with nproc > 1 launches torchrun on this machine
(`python -m torch.distributed.run --standalone --nproc_per_node=N -m cuda_train`)
with the resolved config written into the run directory, and waits for it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cuda_train import runtime
from cuda_train.calibrate import collect_hessians  # noqa: F401  (part of the contract)
from cuda_train.model import build_model
from cuda_train.model import export_params as export_model
from cuda_train.optim import Optimizers
from cuda_train.train import autocast, evaluate_model
from cuda_train.train import train as train_here
from shared.core.config import Config
from shared.core.schedule import lr_scale, muon_momentum
from shared.data.bpb import ByteTables, EvalResult
from shared.errors import PgolfError

REPO_ROOT = Path(__file__).resolve().parents[1]


def train(cfg: Config, run_dir: str | Path, resume: bool = False, nproc: int = 1) -> dict:
    """Train in this process (nproc = 1) or under a torchrun this call starts and waits for (launch.py)."""
    if nproc < 1:
        raise PgolfError(f"--nproc must be at least 1, got {nproc}")
    if nproc == 1 or os.environ.get("WORLD_SIZE"):
        return train_here(cfg, run_dir, resume=resume)
    from cuda_train.launch import torchrun

    return torchrun(cfg, run_dir, resume, nproc)


def evaluate(params: dict[str, np.ndarray], cfg: Config, val_tokens: np.ndarray, tables: ByteTables,
             rank: int = 0, world_size: int = 1) -> EvalResult:
    """Validation totals of `params`; with world_size > 1 each rank scores its share and the totals are summed."""
    rt = runtime.init()
    dtype = runtime.compute_dtype(cfg.train.compute_dtype, rt.device)
    model = build_model(cfg.model, params, rt.device)
    return evaluate_model(model, cfg, val_tokens, tables, rt, dtype, rank=rank, world_size=world_size)


def _device_dtype(cfg: Config) -> tuple[torch.device, torch.dtype]:
    """fp32 work runs on the CPU (exact, comparable with MLX: a GPU may use TF32); the rest on CUDA if present."""
    if cfg.train.compute_dtype == "float32" or not torch.cuda.is_available():
        dev = torch.device("cpu")
    else:
        dev = torch.device("cuda")
    return dev, runtime.compute_dtype(cfg.train.compute_dtype, dev)


def export_params(params: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """Load the canonical dict into the torch model and export it back (what a packed run would see)."""
    dev, _ = _device_dtype(cfg)
    return export_model(build_model(cfg.model, params, dev))


@torch.no_grad()
def batch_loss(params: dict[str, np.ndarray], cfg: Config, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (nats) of one batch: one forward, no state."""
    dev, dtype = _device_dtype(cfg)
    model = build_model(cfg.model, params, dev).eval()
    with autocast(dev, dtype):
        loss = model(torch.as_tensor(np.asarray(x, dtype=np.int64), device=dev),
                     torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev))
    return float(loss)


def train_steps(params: dict[str, np.ndarray], cfg: Config,
                batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float], dict[str, np.ndarray]]:
    """The real optimizers and step-based schedule, one batch per step, no warm-up (the parity suite)."""
    dev, dtype = _device_dtype(cfg)
    model = build_model(cfg.model, params, dev)
    opt = Optimizers(model, cfg.optim, cfg.model.tie_embeddings, ns_dtype=dtype)
    steps_cfg = replace(cfg.train, max_seconds=0.0)  # the schedule by step count, never the clock
    losses = []
    for step, (x, y) in enumerate(batches):
        opt.set_schedule(lr_scale(step, 0.0, steps_cfg), muon_momentum(step, cfg.optim))
        with autocast(dev, dtype):
            loss = model(torch.as_tensor(np.asarray(x, dtype=np.int64), device=dev),
                         torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, export_model(model)
