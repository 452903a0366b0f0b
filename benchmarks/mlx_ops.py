# ruff: noqa: I001  (mlx_train must load the BLAS shim before mlx.core is imported)
"""Single-op timings of the MLX CPU backend: where a small-config step goes.

    python -m benchmarks.mlx_ops

Shapes are those of one 8,192-token step (64 x 128) of a 256-wide model with vocab 1024.
"""

from __future__ import annotations

import time

import numpy as np

import mlx_train  # noqa: F401  (loads the BLAS shim before mlx.core)
import mlx.core as mx
import mlx.nn as nn


def timed(name: str, fn, n: int = 3) -> None:
    fn()  # warm
    start = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"{name}: {(time.perf_counter() - start) / n * 1000:.1f} ms", flush=True)


def main() -> None:
    rng = np.random.default_rng(0)
    idx = mx.array(rng.integers(0, 1024, (64, 128)))
    tgt = mx.array(rng.integers(0, 1024, (64, 128)))
    emb = mx.random.normal((1024, 256)) * 0.01

    def head(e):  # tied head: gather, norm, logits, softcap, cross-entropy
        x = mx.fast.rms_norm(e[idx], None, 1e-6)
        logits = 30 * mx.tanh((x @ e.T) / 30)
        return nn.losses.cross_entropy(logits, tgt, reduction="mean")

    timed("head fwd", lambda: mx.eval(head(emb)))
    timed("head fwd+bwd", lambda: mx.eval(mx.value_and_grad(head)(emb)))
    logits = mx.random.normal((8192, 1024))
    timed("tanh over 8192x1024", lambda: mx.eval(mx.tanh(logits)))
    timed("matmul 8192x256x1024", lambda: mx.eval(mx.random.normal((8192, 256)) @ emb.T))

    q, k = mx.random.normal((64, 2, 128, 128)), mx.random.normal((64, 1, 128, 128))
    timed("sdpa fwd+bwd", lambda: mx.eval(mx.value_and_grad(
        lambda a: mx.fast.scaled_dot_product_attention(a, k, k, scale=0.1, mask="causal").sum())(q)))
    x = mx.random.normal((8192, 256))
    w1, w2 = mx.random.normal((512, 256)) * 0.05, mx.random.normal((256, 512)) * 0.05
    timed("mlp fwd+bwd", lambda: mx.eval(mx.value_and_grad(
        lambda w: (mx.square(nn.relu(x @ w.T)) @ w2.T).sum())(w1)))
    timed("rope fwd+bwd", lambda: mx.eval(mx.value_and_grad(
        lambda a: mx.fast.rope(a, 128, traditional=False, base=10000.0, scale=-1.0, offset=0).sum())(q)))


if __name__ == "__main__":
    main()
