"""AWQ-lite (#1908, in #1945): the model's most salient column groups keep more bits inside GPTQ.

A column's salience is the RMS of the activations it multiplies (from the calibration Hessian's diagonal,
per application of the layer: a looped block sees its inputs once per pass) times the mean magnitude of
its weights. Columns are taken in groups of `quant.awq_group_size`; the `quant.awq_groups` groups with
the largest summed salience over every integer-coded matrix with a Hessian (and fewer bits than
`quant.awq_bits`) are coded at `quant.awq_bits`, with the same clip as the rest of their rows.
"""

from __future__ import annotations

import numpy as np

from shared.artifact.schemes import INT_BITS, scheme_bits
from shared.core.config import Config


def applications(name: str, cfg: Config) -> int:
    """How many times per forward pass the tensor's input is seen (a looped block's, once per pass)."""
    if name.startswith("blocks."):
        return max(1, cfg.model.layer_order(True).count(int(name.split(".")[1])))
    return 1


def select_groups(params: dict[str, np.ndarray], schemes: dict[str, str], hessians: dict, cfg: Config
                  ) -> dict[str, tuple[int, int, int]]:
    """name -> (start column, size, bits) of the protected groups (at most one per tensor here: the record
    protects one group in the whole model)."""
    q = cfg.quant
    if not q.awq_groups:
        return {}
    size, cands = q.awq_group_size, []
    for name in sorted(params):
        w = np.asarray(params[name])
        if (w.ndim != 2 or w.size <= 65536 or name not in hessians or schemes[name] not in INT_BITS
                or scheme_bits(schemes[name]) >= q.awq_bits or w.shape[1] < size):
            continue
        act = np.sqrt(np.maximum(np.diagonal(np.asarray(hessians[name], dtype=np.float64)), 0.0) / applications(name, cfg))
        sal = act * np.abs(w.astype(np.float64)).mean(axis=0)
        for g in range(w.shape[1] // size):
            cands.append((-float(sal[g * size:(g + 1) * size].sum()), name, g * size))
    chosen: dict[str, tuple[int, int, int]] = {}
    for _, name, start in sorted(cands):
        if len(chosen) == q.awq_groups:
            break
        chosen.setdefault(name, (start, size, q.awq_bits))
    return chosen
