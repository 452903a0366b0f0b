"""The backend contract (typed) and the one registry of backend names.

Each backend package (`mlx_train`, `cuda_train`) has a `backend.py` module
that satisfies `Backend`; its `session(cfg, ...)` returns a `Session`, the
small object the shared training loop (shared/run/loop.py), the end of a
run (shared/run/finish.py) and the parity suite (shared/tools/parity.py)
drive. Every tensor crossing the boundary is a float32 numpy
`name -> array` dict with the names and layouts of the parameter table
(shared/core/spec.py). `get_backend` imports a backend only when asked, so
nothing here loads a framework.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.core.config import Config
from shared.data.bpb import ByteTables, EvalResult
from shared.errors import PgolfError

Batch = tuple[np.ndarray, np.ndarray]   # (x, y) int token ids [rows, seq_len]


class Session(Protocol):
    """One process's model + optimizer state for the shared loop (a rank under DDP)."""

    backend: str          # "mlx" | "torch": written into the resume state, which only this backend can read
    rank: int
    world_size: int
    is_main: bool

    def step(self, batches: list[Batch], lr_scale: float, momentum: float, looped: bool = False,
             seg_len: int = 0) -> float:
        """One optimizer step on this rank's micro-batches (in the depth-recurrence order when `looped`, with
        document segments of at most `seg_len` tokens when given); returns the global mean loss (the same on
        every rank); updates the EMA when on."""
    def evaluate(self, val_tokens: np.ndarray, tables: ByteTables) -> EvalResult:
        """Validation totals of the weights that get packed (the EMA when on), summed over ranks."""
    def evaluate_params(self, params: dict[str, np.ndarray], val_tokens: np.ndarray, tables: ByteTables) -> EvalResult:
        """Validation totals of other weights (the packed artifact's), summed over ranks, scored as
        `eval.mode` says (shared/eval/driver.py)."""
    # Evaluation primitives: shared/eval/driver.py decides the order (score, record, only then update);
    # a session evaluating sliding windows or TTT holds the weights under evaluation (`evaluate_params`
    # builds a separate one: TTT changes its weights).
    def token_nats(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """float64 [rows, T]: -log softmax over the whole vocabulary at each target, no gradient; with LoRA
        on, row r runs through adapter r."""
    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """float64 values summed over ranks (a collective; the identity in one process)."""
    def wait_all(self) -> None:
        """Return once every rank has called it, however long the slowest one works (no collective's
        timeout); the driver calls it before each collective that follows uneven work."""

    def share_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (the others pass None), however long rank 0 took to make it
        (no collective's timeout): the packed artifact, made once."""
    def sgd_begin(self, momentum: float) -> None:
        """Fresh momentum buffers for test-time SGD on every weight."""
    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float, clip: float, denom: int) -> None:
        """One SGD step on sum(nats of this rank's rows) / denom, gradients summed over ranks, clipped to a
        global norm `clip` (0 = off), momentum as torch.optim.SGD; this rank's rows may be none."""
    def sgd_end(self) -> None: ...
    def lora_begin(self, a_init: dict[str, np.ndarray], scale: float, out_dims: dict[str, int]) -> None:
        """Adapters named as in shared/eval/driver.py `lora_shapes` (A from `a_init` [rows, rank, in], B zero
        [rows, out_dims[name], rank]), one per input row; the base weights frozen until `lora_end`."""
    def lora_reset(self, a: dict[str, np.ndarray] | None = None, keep_a: bool = False) -> None:
        """B to zero, Adam state cleared (a new batch of documents); A to `a`, or kept, or its first draw."""
    def lora_a(self) -> dict[str, np.ndarray]:
        """The adapters' current A matrices."""
    def lora_step(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, lr: float, wd: float,
                  eps: float = 1e-8) -> None:
        """One Adam step (betas (0, 0.99)) on the adapters; row r's loss: the mean of its masked nats."""
    def lora_end(self) -> None:
        """The adapters gone, the base weights trainable again."""
    def collect_hessians(self, params: dict[str, np.ndarray], x: np.ndarray, show_progress: bool) -> dict:
        """GPTQ input Hessians of `params` on calibration tokens x (see calibrate.py)."""
    def load_weights(self, params: dict[str, np.ndarray]) -> None: ...
    def weights(self) -> dict[str, np.ndarray]:
        """The live weights (what training continues from)."""
    def final_weights(self) -> dict[str, np.ndarray]:
        """What is checkpointed, evaluated and packed: the EMA of the weights when train.ema_decay > 0."""
    def all_finite(self) -> bool: ...
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Optimizer buffers, the EMA and RNG state as named arrays (the resume file). A collective: every
        rank calls it (a sharded optimizer gathers its state), rank 0 writes it."""
    def load_optimizer_state(self, tensors: dict[str, np.ndarray]) -> None: ...
    def snapshot(self) -> Any:
        """Everything a step changes (weights, optimizer state, RNG), to undo the warm-up."""
    def rollback(self, snap: Any) -> None: ...
    def agree(self, flags: list[bool]) -> list[bool]:
        """Each flag OR-ed over all ranks (a collective: every rank calls it at the same step)."""
    def barrier(self) -> None: ...
    def info(self) -> dict[str, str]:
        """Provenance for the log's first line: framework version, device, dtype, BLAS."""
    def log_lines(self) -> list[str]:
        """Extra lines for the log file only (e.g. nvidia-smi)."""
    def summary_extras(self) -> dict[str, Any]:
        """Backend facts for summary.json (compute dtype, device, BLAS)."""


class Backend(Protocol):
    """What `mlx_train.backend` and `cuda_train.backend` export."""

    def session(self, cfg: Config) -> Session: ...
    def train(self, cfg: Config, run_dir: str | Path, resume: bool = False, nproc: int = 1,
              hooks: Any = None) -> dict: ...
    def evaluate(self, params: dict[str, np.ndarray], cfg: Config, val_tokens: np.ndarray, tables: ByteTables,
                 rank: int = 0, world_size: int = 1) -> EvalResult: ...
    def batch_loss(self, params: dict[str, np.ndarray], cfg: Config, x: np.ndarray, y: np.ndarray) -> float: ...
    def export_params(self, params: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]: ...
    def collect_hessians(self, params: dict[str, np.ndarray], cfg: Config, x: np.ndarray,
                         show_progress: bool = True) -> dict[str, np.ndarray]: ...


# name -> (module, framework it needs, how to install it)
BACKENDS = {"mlx": ("mlx_train.backend", "mlx", "pip install -e '.[mlx]'"),
            "torch": ("cuda_train.backend", "torch", "pip install -e '.[torch]'")}


def get_backend(name: str) -> Backend:
    """`mlx_train.backend` or `cuda_train.backend`, imported on first use."""
    if name not in BACKENDS:
        raise PgolfError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module, framework, install = BACKENDS[name]
    try:
        importlib.import_module(framework)
    except ImportError:
        raise PgolfError(f"backend {name!r} needs {framework}, which is not installed: {install}") from None
    return importlib.import_module(module)  # type: ignore[return-value]
