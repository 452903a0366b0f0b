"""GPTQ calibration for the MLX backend: input Hessians of the block matrices and the head.

    hessians = collect_hessians(params, cfg, x)   # x: token ids [batch, seq] (or flat)

For every 2-D block weight W [out, in] (`shared.core.spec.optim_group == "matrix"`)
returns H = sum over calibration tokens of a a^T, a being the layer's input
activation, as a float64 numpy [in, in]; and for the output head (the tied
`tok_emb.weight`, or `lm_head.weight`) the same sum over the final normalised
hidden states that the head multiplies. The activations come from this
backend's own `GPT`: each block linear is swapped for a recording wrapper that
hands its input to an accumulator and then calls the original layer. The
forward runs in float32. The numpy quantiser (shared/artifact/gptq.py) then turns
Hessians into codes identically on any backend. Calibration tokens must come
from the training split, never validation.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from shared.core.config import Config
from shared.core.progress import Progress
from shared.core.spec import head_weight_name, names_in_group
from shared.data.shards import as_sequences

from .model import build_model


class _Recording(nn.Module):
    """Wraps a linear layer; adds a^T a of its input to a float64 numpy sum."""

    def __init__(self, inner: nn.Module, total: np.ndarray):
        super().__init__()
        self.inner = inner
        self._total = total

    def __call__(self, x: mx.array) -> mx.array:
        a = np.array(x.astype(mx.float32), dtype=np.float64).reshape(-1, x.shape[-1])
        self._total += a.T @ a
        return self.inner(x)


def collect_hessians(params: dict[str, np.ndarray], cfg: Config, x: np.ndarray,
                     batch_size: int = 8, show_progress: bool = True) -> dict[str, np.ndarray]:
    """H = sum a a^T over the inputs of every block matrix and of the head, float64 [in, in]."""
    model = build_model(cfg.model, params, mx.float32)
    sums: dict[str, np.ndarray] = {}
    for name in sorted(names_in_group(cfg.model, "matrix")):
        path = name[: -len(".weight")].split(".")      # blocks.3.attn.c_q -> ["blocks", "3", "attn", "c_q"]
        parent = model
        for part in path[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else getattr(parent, part)
        layer = getattr(parent, path[-1])
        sums[name] = np.zeros((params[name].shape[1],) * 2, dtype=np.float64)
        setattr(parent, path[-1], _Recording(layer, sums[name]))
    head = np.zeros((cfg.model.model_dim,) * 2, dtype=np.float64)
    seqs = as_sequences(x, cfg.train.seq_len).astype(np.int32)
    with Progress("calibration: Hessians", total=len(seqs), unit="seqs", enabled=show_progress) as bar:
        for i in range(0, len(seqs), batch_size):
            h = model.hidden(mx.array(seqs[i:i + batch_size]))
            a = np.array(h.astype(mx.float32), dtype=np.float64).reshape(-1, h.shape[-1])
            head += a.T @ a
            bar.update(len(seqs[i:i + batch_size]))
    sums[head_weight_name(cfg.model)] = head
    return dict(sorted(sums.items()))
