"""The MLX trainer (Apple silicon, or Linux CPU). See docs/DESIGN.md for the module map.

Importing the package sets up the runtime first (`runtime.py`: the Linux
OpenBLAS shim must be loaded before the first `import mlx.core`).
"""

from mlx_train import runtime as _runtime  # noqa: F401  (side effect: BLAS + compile cache)
