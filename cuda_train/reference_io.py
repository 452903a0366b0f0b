"""Reading the challenge's train_gpt.py weights (`final_model.pt`) for `pgolf import` (shared/tools/reference.py).

torch.load lives here, in the torch backend, so that shared/ stays framework-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.errors import PgolfError


def read_pt(path: Path) -> dict[str, np.ndarray]:
    """train_gpt.py's `final_model.pt`: a torch state dict -> name -> float32 (needs torch)."""
    try:  # weights_only: tensors and plain containers only, never arbitrary pickled code
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PgolfError(f"{path}: not a readable torch state dict ({first}); --from torch-ref reads the "
                         "final_model.pt that train_gpt.py saves") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PgolfError(f"{path}: holds a {type(obj).__name__} rather than a name -> tensor state dict; "
                         "--from torch-ref reads final_model.pt (final_model.int8.ptz is the quantised export)")
    out = {}
    for k, t in obj.items():
        if not t.is_floating_point():
            raise PgolfError(f"{path}: tensor {k} has dtype {t.dtype}, not a float: is this train_gpt.py's "
                             "final_model.pt?")
        out[str(k)] = t.detach().to(torch.float32).contiguous().numpy()
    return out
