"""The packer's byte-budget search: which bit width for which tensor.

Its loss sensitivities are measured on the calibration tokens of
`shared.artifact.calibration` (training split only).

`budget_schemes(...)` answers "which bit width for which tensor so that the
artifact plus the counted code fits in N bytes": every tensor the config
quantises with integers may take any of `CANDIDATES`. For each (tensor,
scheme) it measures the loss on the first `quant.budget_tokens` calibration
tokens with only that tensor quantised (the sensitivity) and the tensor's
payload compressed alone (its size). Starting from int8 everywhere, it then
greedily lowers the tensor whose next step down costs the least loss per
byte saved, until the estimated size fits; a real pack checks, and the
greedy walk continues if the estimate was optimistic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.artifact.format import choose_schemes, pack, quantize_all, tensor_bytes
from shared.artifact.quant import INT_BITS, dequantize
from shared.core.config import Config
from shared.core.progress import Progress
from shared.errors import PgolfError

CANDIDATES = ("int8", "int7", "int6", "int5", "int4")


def sensitivity_batch(x: np.ndarray, y: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, cfg.quant.budget_tokens // x.shape[1])
    return x[:n], y[:n]


def budget_schemes(
    params: dict[str, np.ndarray],
    cfg: Config,
    max_artifact_bytes: int,
    loss: Callable[[dict[str, np.ndarray]], float],
    hessians: dict | None = None,
    log: Callable[[str], None] = print,
    token_counts: np.ndarray | None = None,
) -> dict[str, str]:
    """Per-tensor schemes whose packed artifact is at most `max_artifact_bytes`."""
    q = cfg.quant
    level = q.zstd_level
    eligible = [n for n, s in choose_schemes(params, cfg).items() if s in INT_BITS]
    if not eligible:
        raise PgolfError("budget mode has no integer-quantised tensors to trade: set quant.attn/mlp/embed to int schemes")
    widest = dict.fromkeys(eligible, CANDIDATES[0])
    actual = len(pack(params, cfg, hessians, widest, token_counts))
    if actual <= max_artifact_bytes:   # nothing to trade: no need to measure anything
        log(f"budget: {actual:,} artifact bytes <= {max_artifact_bytes:,} with every tensor at {CANDIDATES[0]}")
        return widest
    narrowest = len(pack(params, cfg, hessians, dict.fromkeys(eligible, CANDIDATES[-1]), token_counts))
    if narrowest > max_artifact_bytes:  # impossible: say so before minutes of measuring
        raise PgolfError(f"cannot fit the artifact in {max_artifact_bytes:,} bytes: it takes {narrowest:,} even with "
                         f"every tensor at {CANDIDATES[-1]}; raise --budget or shrink the model")
    base = loss(params)
    log(f"budget: base loss {base:.4f} nats on {q.budget_tokens} calibration tokens; "
        f"measuring {len(eligible)} tensors x {len(CANDIDATES)} schemes")
    size: dict[str, list[int]] = {}
    delta: dict[str, list[float]] = {}
    with Progress("budget: sensitivities", total=len(eligible) * len(CANDIDATES), unit="losses") as bar:
        for name in eligible:
            size[name], delta[name] = [], []
            for scheme in CANDIDATES:
                qt = quantize_all({name: params[name]}, cfg, hessians, {name: scheme}, token_counts)[name]
                size[name].append(tensor_bytes(qt, level))
                delta[name].append(loss({**params, name: dequantize(qt)}) - base)
                bar.update()

    level_of = dict.fromkeys(eligible, 0)

    def choice() -> dict[str, str]:
        return {n: CANDIDATES[i] for n, i in level_of.items()}

    def step() -> bool:
        """Lower the tensor with the cheapest loss per byte saved; False when all are at the floor."""
        best, best_ratio = None, None
        for n in eligible:
            i = level_of[n]
            if i + 1 >= len(CANDIDATES):
                continue
            saved = size[n][i] - size[n][i + 1]
            cost = max(delta[n][i + 1] - delta[n][i], 0.0)
            ratio = cost / saved if saved > 0 else float("inf")
            if best_ratio is None or ratio < best_ratio:  # ties: first name in sorted order
                best, best_ratio = n, ratio
        if best is None:
            return False
        level_of[best] += 1
        return True

    offset = actual - sum(size[n][0] for n in eligible)   # everything that is not an eligible payload
    while actual > max_artifact_bytes:
        est = offset + sum(size[n][level_of[n]] for n in eligible)
        while est > max_artifact_bytes:
            if not step():
                raise PgolfError(
                    f"cannot fit the artifact in {max_artifact_bytes:,} bytes even with every tensor at "
                    f"{CANDIDATES[-1]}: raise --budget or shrink the model")
            est = offset + sum(size[n][level_of[n]] for n in eligible)
        actual = len(pack(params, cfg, hessians, choice(), token_counts))
        if actual > max_artifact_bytes:
            offset += actual - est   # the estimate was optimistic: correct it and keep lowering
            if not step():
                raise PgolfError(f"cannot fit the artifact in {max_artifact_bytes:,} bytes: raise --budget")
    chosen = choice()
    est_loss = base + sum(delta[n][level_of[n]] for n in eligible)
    counts = {s: sum(1 for v in chosen.values() if v == s) for s in CANDIDATES}
    log(f"budget: {actual:,} artifact bytes <= {max_artifact_bytes:,}; estimated loss {est_loss:.4f} "
        f"(+{est_loss - base:.4f}); tensors per scheme: "
        + ", ".join(f"{s} {c}" for s, c in counts.items() if c))
    for n in eligible:
        log(f"  {n:32s} {chosen[n]:5s} {size[n][level_of[n]]:>10,} B  d_loss {delta[n][level_of[n]]:+.5f}")
    return chosen

