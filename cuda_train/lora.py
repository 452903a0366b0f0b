"""LoRA adapters for test-time training (shared/eval/driver.py, per-document LoRA #1855), torch side.

`install(model, a_init, scale)` swaps each named projection (`blocks.i.attn.c_q`, ...) for a
`LoRALinear` that keeps the very same weight Parameter (so the parameter names of the table
are unchanged) and adds a batch of adapters, one per row of the input: y = x W^T + scale *
(x A_r^T) B_r^T with A [rows, rank, in] (from the driver's numpy draw) and B [rows, out, rank]
(zero). `uninstall` puts the plain projections back. The same module in mlx_train/lora.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, a: Tensor, scale: float):
        super().__init__()
        self.base = [base]          # a list: not a submodule, so no second copy of its weight in the names
        self.weight = base.weight   # the same Parameter: the base model's name and storage
        self.a = nn.Parameter(a.clone())
        self.b = nn.Parameter(torch.zeros(a.size(0), base.weight.size(0), a.size(1), device=a.device))
        self.a0, self.scale = a.clone(), scale

    def forward(self, x: Tensor) -> Tensor:
        low = torch.bmm(x, self.a.transpose(1, 2).to(x.dtype))
        return F.linear(x, self.weight.to(x.dtype)) + self.scale * torch.bmm(low, self.b.transpose(1, 2).to(x.dtype))

    @torch.no_grad()
    def reset(self) -> None:
        self.a.copy_(self.a0)
        self.b.zero_()


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, attr = name.rsplit(".", 1)
    return model.get_submodule(path), attr


def install(model: nn.Module, a_init: dict[str, np.ndarray], scale: float, device: torch.device) -> list[LoRALinear]:
    out = []
    for name, a in a_init.items():
        parent, attr = _parent(model, name)
        lora = LoRALinear(getattr(parent, attr), torch.from_numpy(np.asarray(a, dtype=np.float32)).to(device), scale)
        setattr(parent, attr, lora)
        out.append(lora)
    return out


def uninstall(model: nn.Module, names: list[str]) -> None:
    for name in names:
        parent, attr = _parent(model, name)
        mod = getattr(parent, attr)
        if isinstance(mod, LoRALinear):
            setattr(parent, attr, mod.base[0])
