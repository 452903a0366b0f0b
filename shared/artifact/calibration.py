"""Calibration tokens for packing: from the *training* split, never validation.

`calibration_batch(dataset, cfg)` takes `quant.calib_tokens` tokens from the
training split as `(x, y)` sequences of `train.seq_len`: GPTQ Hessians, the
token counts of "frequency" embedding steps (`calibration_counts`) and the
budget mode's loss sensitivities come from them.
"""

from __future__ import annotations

import numpy as np

from shared.core.config import Config


def calibration_batch(dataset, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int64 [n, seq_len]: the first `quant.calib_tokens` tokens of the training split."""
    seq = cfg.train.seq_len
    n = max(1, cfg.quant.calib_tokens // seq)
    toks = dataset.train_stream().take(n * seq + 1).astype(np.int64)
    return toks[:-1].reshape(n, seq), toks[1:].reshape(n, seq)


def calibration_counts(x: np.ndarray, y: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token occurs among the calibration inputs and targets, float64 [vocab]."""
    return (np.bincount(np.asarray(x).ravel(), minlength=vocab_size)
            + np.bincount(np.asarray(y).ravel(), minlength=vocab_size)).astype(np.float64)[:vocab_size]
