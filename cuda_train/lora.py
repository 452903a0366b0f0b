"""LoRA adapters for test-time training (shared/eval/driver.py, per-document LoRA #1855), torch side.

`Adapters(a_init, out_dims, scale)` holds one batched adapter per name, one adapter per row of the
input: delta(x) = scale * (x A_r^T) B_r^T with A [rows, rank, in] (the driver's numpy draw) and B
[rows, out, rank] (zero). A name is `<site>.<kind>`: the site `layer<i>` (one adapter per block) or
`slot<j>` (one per position j of the looped layer order, #1855), or `head` for the output head; the
kind says where the model adds it (`cuda_train/model.py` `adapt`): q, k, v, o (reads the attention
output), o_in (reads the attention input), fc, proj, mlp (dim -> dim beside the MLP). The model
takes the adapters as an argument (`GPT.logits(idx, lora=adapters)`); its own weights are untouched.
The same module in mlx_train/lora.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def split_name(name: str) -> tuple[str, str]:
    """`slot3.q` -> ("slot3", "q"); `head` -> ("head", "head")."""
    site, _, kind = name.partition(".")
    return site, kind or site


class Adapter(nn.Module):
    def __init__(self, a: Tensor, out_dim: int, scale: float):
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.b = nn.Parameter(torch.zeros(a.size(0), out_dim, a.size(1), device=a.device))
        self.scale = scale
        self.rows: Tensor | slice | None = None   # the adapter rows of the input's rows (None: all, in order)

    def forward(self, x: Tensor) -> Tensor:
        a, b = (self.a, self.b) if self.rows is None else (self.a[self.rows], self.b[self.rows])
        low = torch.bmm(x, a.transpose(1, 2).to(x.dtype))
        return self.scale * torch.bmm(low, b.transpose(1, 2).to(x.dtype))


class Adapters(nn.Module):
    """Every adapter of one evaluation, by name; `site(layer, slot)` is what block `layer` at position
    `slot` of the layer order reads."""

    def __init__(self, a_init: dict[str, np.ndarray], out_dims: dict[str, int], scale: float, device: torch.device):
        super().__init__()
        self.names = list(a_init)
        self.mods = nn.ModuleList(
            Adapter(torch.from_numpy(np.asarray(a_init[n], dtype=np.float32)).to(device), out_dims[n], scale)
            for n in self.names)
        self.a0 = [m.a.detach().clone() for m in self.mods]
        self.sites: dict[str, dict[str, Adapter]] = {}
        for n, m in zip(self.names, self.mods, strict=True):
            site, kind = split_name(n)
            self.sites.setdefault(site, {})[kind] = m

    def site(self, layer: int, slot: int) -> dict[str, Adapter] | None:
        return self.sites.get(f"slot{slot}", self.sites.get(f"layer{layer}"))

    def select(self, rows: Tensor | slice | None) -> None:
        """The input's row i runs through adapter row rows[i] (None: row i; a slice: a view, no copy)."""
        for m in self.mods:
            m.rows = rows

    def tensors(self) -> list[Tensor]:
        return [t for m in self.mods for t in (m.a, m.b)]

    @torch.no_grad()
    def reset(self, a: dict[str, np.ndarray] | None = None, keep_a: bool = False) -> None:
        """B to zero; A to `a` when given, else kept (`keep_a`), else back to its first draw."""
        for n, m, a0 in zip(self.names, self.mods, self.a0, strict=True):
            if a is not None:
                m.a.copy_(torch.from_numpy(np.asarray(a[n], dtype=np.float32)))
            elif not keep_a:
                m.a.copy_(a0)
            m.b.zero_()

    def a_values(self) -> dict[str, np.ndarray]:
        return {n: m.a.detach().cpu().numpy().copy() for n, m in zip(self.names, self.mods, strict=True)}
