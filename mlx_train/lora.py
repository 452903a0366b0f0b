"""LoRA adapters for test-time training (shared/eval/driver.py, per-document LoRA #1855), MLX side.

`install(model, a_init, scale)` swaps each named projection (`blocks.i.attn.c_q`, ...) for a
`LoRALinear` holding the very same `weight` array (so the parameter-table names still load into
it) plus a batch of adapters, one per row of the input: y = x W^T + scale * (x A_r^T) B_r^T with
A [rows, rank, in] (the driver's numpy draw) and B [rows, out, rank] (zero). `uninstall` puts
the plain projections back. The same module in cuda_train/lora.py.
"""

from __future__ import annotations

# isort: off
from mlx_train import runtime  # noqa: F401  (before mlx.core: loads the Linux BLAS shim)
# isort: on
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_train.model import CastedLinear


class LoRALinear(nn.Module):
    def __init__(self, base: CastedLinear, a: mx.array, scale: float):
        super().__init__()
        self.weight = base.weight
        self.a = a
        self.b = mx.zeros((a.shape[0], base.weight.shape[0], a.shape[1]))
        self._base, self._a0, self._scale = base, a, scale

    def __call__(self, x: mx.array) -> mx.array:
        low = x @ self.a.astype(x.dtype).transpose(0, 2, 1)
        return x @ self.weight.astype(x.dtype).T + self._scale * (low @ self.b.astype(x.dtype).transpose(0, 2, 1))

    def reset(self) -> None:
        self.a = self._a0
        self.b = mx.zeros(self.b.shape)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    node = model
    for part in path:
        node = node[int(part)] if isinstance(node, list) else getattr(node, part)
    return node, attr


def install(model: nn.Module, a_init: dict[str, np.ndarray], scale: float) -> list[LoRALinear]:
    out = []
    for name, a in a_init.items():
        parent, attr = _parent(model, name)
        lora = LoRALinear(getattr(parent, attr), mx.array(np.asarray(a, dtype=np.float32)), scale)
        setattr(parent, attr, lora)
        out.append(lora)
    return out


def uninstall(model: nn.Module, names: list[str]) -> None:
    for name in names:
        parent, attr = _parent(model, name)
        mod = getattr(parent, attr)
        if isinstance(mod, LoRALinear):
            mod._base.weight = mod.weight
            setattr(parent, attr, mod._base)
