"""LoRA adapters for test-time training (shared/eval/driver.py, per-document LoRA #1855), MLX side.

`Adapters(a_init, out_dims, scale)` holds one batched adapter per name, one adapter per row of the
input: delta(x) = scale * (x A_r^T) B_r^T with A [rows, rank, in] (the driver's numpy draw) and B
[rows, out, rank] (zero). Names and sites as in cuda_train/lora.py: `<site>.<kind>` with the site
`layer<i>`, `slot<j>` (a position of the looped layer order) or `head`; the model adds each kind where
mlx_train/model.py `adapt` says. The model takes the adapters as an argument; its weights are untouched.
"""

from __future__ import annotations

# isort: off
# isort: on
import mlx.core as mx
import numpy as np


def split_name(name: str) -> tuple[str, str]:
    """`slot3.q` -> ("slot3", "q"); `head` -> ("head", "head")."""
    site, _, kind = name.partition(".")
    return site, kind or site


class Adapter:
    def __init__(self, a: mx.array, out_dim: int, scale: float):
        self.a, self.b, self.scale = a, mx.zeros((a.shape[0], out_dim, a.shape[1])), scale
        self.rows: mx.array | None = None   # which adapter rows the input's rows use (None: all, in order)

    def __call__(self, x: mx.array) -> mx.array:
        a, b = (self.a, self.b) if self.rows is None else (self.a[self.rows], self.b[self.rows])
        low = x @ a.astype(x.dtype).transpose(0, 2, 1)
        return self.scale * (low @ b.astype(x.dtype).transpose(0, 2, 1))


class Adapters:
    """Every adapter of one evaluation, by name; `site(layer, slot)` is what block `layer` at position
    `slot` of the layer order reads."""

    def __init__(self, a_init: dict[str, np.ndarray], out_dims: dict[str, int], scale: float):
        self.names = list(a_init)
        self.mods = [Adapter(mx.array(np.asarray(a_init[n], dtype=np.float32)), out_dims[n], scale)
                     for n in self.names]
        self.a0 = [m.a for m in self.mods]
        self.sites: dict[str, dict[str, Adapter]] = {}
        for n, m in zip(self.names, self.mods, strict=True):
            site, kind = split_name(n)
            self.sites.setdefault(site, {})[kind] = m

    def site(self, layer: int, slot: int) -> dict[str, Adapter] | None:
        return self.sites.get(f"slot{slot}", self.sites.get(f"layer{layer}"))

    def select(self, rows: mx.array | None) -> None:
        """The input's row i runs through adapter row rows[i] (None: row i)."""
        for m in self.mods:
            m.rows = rows

    def tensors(self) -> list[mx.array]:
        return [t for m in self.mods for t in (m.a, m.b)]

    def set_tensors(self, tensors: list[mx.array]) -> None:
        for i, m in enumerate(self.mods):
            m.a, m.b = tensors[2 * i], tensors[2 * i + 1]

    def reset(self, a: dict[str, np.ndarray] | None = None, keep_a: bool = False) -> None:
        """B to zero; A to `a` when given, else kept (`keep_a`), else back to its first draw."""
        for n, m, a0 in zip(self.names, self.mods, self.a0, strict=True):
            if a is not None:
                m.a = mx.array(np.asarray(a[n], dtype=np.float32))
            elif not keep_a:
                m.a = a0
            m.b = mx.zeros(m.b.shape)

    def a_values(self) -> dict[str, np.ndarray]:
        return {n: np.array(m.a) for n, m in zip(self.names, self.mods, strict=True)}
