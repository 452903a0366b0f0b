"""Pick a backend by name without importing a framework until it is needed."""

from __future__ import annotations

import importlib
from types import ModuleType

from shared.errors import PgolfError

BACKENDS = {"mlx": ("mlx_train.backend", "mlx", "pip install -e '.[mlx]'"),
            "torch": ("cuda_train.backend", "torch", "pip install -e '.[torch]'")}


def get_backend(name: str) -> ModuleType:
    """`mlx_train.backend` or `cuda_train.backend` (the contract in docs/DESIGN.md)."""
    if name not in BACKENDS:
        raise PgolfError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module, framework, install = BACKENDS[name]
    try:
        importlib.import_module(framework)
    except ImportError:
        raise PgolfError(f"backend {name!r} needs {framework}, which is not installed: {install}") from None
    return importlib.import_module(module)
