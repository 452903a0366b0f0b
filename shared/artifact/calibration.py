"""Calibration tokens for packing: from the *training* split, never validation.

`calibration_batch(dataset, cfg)` takes `quant.calib_tokens` tokens from the
training split as `(x, y)` sequences of `train.seq_len`: GPTQ Hessians, the
token counts of "frequency" embedding steps (`calibration_counts`) and the
budget mode's loss sensitivities come from them.
"""

from __future__ import annotations

import sys

import numpy as np

from shared.core.config import Config


def calibration_batch(dataset, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int64 [n, seq_len]: the first `quant.calib_tokens` tokens of the training split."""
    seq = cfg.train.seq_len
    n = max(1, cfg.quant.calib_tokens // seq)
    have = train_token_count(dataset)
    if have is not None and have < n * seq + 1:  # the stream wraps around: the same tokens again and again
        print(f"warning: quant.calib_tokens={cfg.quant.calib_tokens:,} but the training split of {dataset.data_dir} "
              f"holds {have:,} tokens: calibration sees them {(n * seq + 1) / max(have, 1):.1f} times over "
              "(GPTQ Hessians and token counts from that little text); use a larger training split",
              file=sys.stderr, flush=True)
    toks = dataset.train_stream().take(n * seq + 1).astype(np.int64)
    return toks[:-1].reshape(n, seq), toks[1:].reshape(n, seq)


def train_token_count(dataset) -> int | None:
    """Tokens in the training shards (from their headers), None when the dataset has no folder."""
    from shared.data.shards import find_shards, shard_count

    data_dir = getattr(dataset, "data_dir", None)
    if data_dir is None:
        return None
    return sum(shard_count(f) for f in find_shards(data_dir, "train"))


def calibration_counts(x: np.ndarray, y: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token occurs among the calibration inputs and targets, float64 [vocab]."""
    return (np.bincount(np.asarray(x).ravel(), minlength=vocab_size)
            + np.bincount(np.asarray(y).ravel(), minlength=vocab_size)).astype(np.float64)[:vocab_size]
