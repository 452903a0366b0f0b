"""`python -m mlx_train ...` is `pgolf train --backend mlx ...` (and `eval` likewise).

    python -m mlx_train --config configs/small.toml --out runs/small
    python -m mlx_train eval runs/small/model.pgz --data DIR --tokenizer MODEL
"""

from __future__ import annotations

import sys

import mlx_train  # noqa: F401  (the BLAS shim before mlx.core)
from shared.cli.train import backend_main

if __name__ == "__main__":
    backend_main("mlx", sys.argv[1:])
