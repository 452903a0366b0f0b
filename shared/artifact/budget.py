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

`fit_budget(...)` (what `pgolf pack --budget` runs) adds the finer means
after the bit widths: the last width step overshoots (a whole tensor loses a
bit), so from the state just before it, it also tries (1) lowering the LQER
rank (`quant.lqer_rank`, down to 0) and (2) selective pruning of +-1 codes
(`quant.prune_values`, shared/artifact/prune.py), each only as far as needed
to fit; it measures the loss of every candidate that fits and keeps the
cheapest. Hessians are collected once by the caller and every (tensor,
scheme) is quantised (GPTQ) once and cached, so the repeated packs only
re-run pruning, LQER and compression.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from shared.artifact.format import (
    choose_schemes,
    finish_quantized,
    pack_quantized,
    quantize_plain,
    tensor_bytes,
    unpack,
)
from shared.artifact.prune import count_candidates
from shared.artifact.quant import INT_BITS, QTensor, dequantize
from shared.core.config import Config
from shared.core.progress import Progress
from shared.errors import PgolfError

CANDIDATES = ("int8", "int7", "int6", "int5", "int4")


def sensitivity_batch(x: np.ndarray, y: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, cfg.quant.budget_tokens // x.shape[1])
    return x[:n], y[:n]


class Packer:
    """Packs per-tensor scheme choices, quantising each (tensor, scheme) once (GPTQ is the slow part)."""

    def __init__(self, params: dict[str, np.ndarray], hessians: dict | None, token_counts: np.ndarray | None):
        self.params, self.hessians, self.counts = params, hessians, token_counts
        self.cache: dict[tuple[str, str], QTensor] = {}

    def tensor(self, name: str, scheme: str, cfg: Config) -> QTensor:
        key = (name, scheme)
        if key not in self.cache:
            self.cache[key] = quantize_plain({name: self.params[name]}, cfg, self.hessians, {name: scheme},
                                             self.counts)[name]
        return self.cache[key]

    def plain(self, cfg: Config, schemes: dict[str, str] | None) -> dict[str, QTensor]:
        chosen = choose_schemes(self.params, cfg)
        chosen.update(schemes or {})
        return {n: self.tensor(n, chosen[n], cfg) for n in sorted(self.params)}

    def pack(self, cfg: Config, schemes: dict[str, str] | None) -> bytes:
        """The same bytes as `format.pack(params, cfg, hessians, schemes, token_counts)`."""
        return pack_quantized(finish_quantized(self.params, self.plain(cfg, schemes), cfg, self.hessians), cfg)


def budget_schemes(
    params: dict[str, np.ndarray],
    cfg: Config,
    max_artifact_bytes: int,
    loss: Callable[[dict[str, np.ndarray]], float],
    hessians: dict | None = None,
    log: Callable[[str], None] = print,
    token_counts: np.ndarray | None = None,
    packer: Packer | None = None,
    trail: list[dict[str, str]] | None = None,
) -> dict[str, str]:
    """Per-tensor schemes whose packed artifact is at most `max_artifact_bytes`.

    `trail`, when given, receives the choice after every greedy step, in order (fit_budget starts
    its finer means from the one before the last)."""
    q = cfg.quant
    level = q.zstd_level
    packer = packer or Packer(params, hessians, token_counts)
    eligible = [n for n, s in choose_schemes(params, cfg).items() if s in INT_BITS]
    if not eligible:
        raise PgolfError("budget mode has no integer-quantised tensors to trade: set quant.attn/mlp/embed to int schemes")
    widest = dict.fromkeys(eligible, CANDIDATES[0])
    actual = len(packer.pack(cfg, widest))
    if actual <= max_artifact_bytes:   # nothing to trade: no need to measure anything
        log(f"budget: {actual:,} artifact bytes <= {max_artifact_bytes:,} with every tensor at {CANDIDATES[0]}")
        return widest
    narrowest = len(packer.pack(cfg, dict.fromkeys(eligible, CANDIDATES[-1])))
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
                qt = packer.tensor(name, scheme, cfg)
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
        if trail is not None:
            trail.append(choice())
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
        actual = len(packer.pack(cfg, choice()))
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



def _prune_to_fit(packer: Packer, cfg: Config, schemes: dict[str, str], max_bytes: int,
                  log: Callable[[str], None]) -> tuple[Config, int] | None:
    """The config with about the fewest +-1 codes pruned that fits (within 0.1% of the candidates: secant
    and bisection steps on the packed size), and its size; None if pruning every candidate does not fit."""
    plain = packer.plain(cfg, schemes)
    total = count_candidates(plain)
    if total == 0:
        return None

    def size(n: int) -> int:
        return len(packer.pack(replace(cfg, quant=replace(cfg.quant, prune_values=n)), schemes))

    lo, lo_size = 0, size(0)
    if lo_size <= max_bytes:
        return cfg, lo_size
    hi, hi_size = total, size(total)
    if hi_size > max_bytes:
        log(f"budget: pruning all {total:,} +-1 codes leaves {hi_size:,} bytes: not enough")
        return None
    for i in range(12):   # between a size over the budget (lo) and one within it (hi)
        if hi - lo <= max(1, total // 1000):
            break
        if i % 2 == 0:    # a secant step, 5% past the estimate (the size falls slower than linearly at first) ...
            per = max((lo_size - hi_size) / (hi - lo), 1e-9)
            n = min(hi - 1, max(lo + 1, lo + math.ceil((lo_size - max_bytes) / per * 1.05)))
        else:             # ... then a bisection, so that a secant stuck on one side still converges
            n = (lo + hi) // 2
        sn = size(n)
        if sn <= max_bytes:
            hi, hi_size = n, sn
        else:
            lo, lo_size = n, sn
    log(f"budget: pruning {hi:,} of {total:,} +-1 codes gives {hi_size:,} bytes")
    return replace(cfg, quant=replace(cfg.quant, prune_values=hi)), hi_size


def fit_budget(
    params: dict[str, np.ndarray],
    cfg: Config,
    max_artifact_bytes: int,
    loss: Callable[[dict[str, np.ndarray]], float],
    hessians: dict | None = None,
    log: Callable[[str], None] = print,
    token_counts: np.ndarray | None = None,
) -> tuple[dict[str, str], Config]:
    """(per-tensor schemes, config with `quant.lqer_rank` / `quant.prune_values` set) whose artifact
    is at most `max_artifact_bytes`: bit widths, then LQER rank, then pruning, the cheapest measured
    loss among those that fit (module docstring). `format.pack(params, cfg', hessians, schemes,
    token_counts)` rebuilds exactly the artifact measured here."""
    packer = Packer(params, hessians, token_counts)
    trail: list[dict[str, str]] = []
    schemes = budget_schemes(params, cfg, max_artifact_bytes, loss, hessians, log, token_counts, packer, trail)
    if not trail:
        return schemes, cfg    # fits at the widest widths: nothing to trade
    prev = trail[-2] if len(trail) >= 2 else dict.fromkeys(schemes, CANDIDATES[0])

    def measured(c: Config, sch: dict[str, str]) -> tuple[float, int]:
        blob = packer.pack(c, sch)
        return loss(unpack(blob)[1]), len(blob)

    options: list[tuple[float, str, dict[str, str], Config, int]] = []
    widths_loss, widths_size = measured(cfg, schemes)
    options.append((widths_loss, "bit widths", schemes, cfg, widths_size))
    q = cfg.quant
    if len(packer.pack(cfg, prev)) <= max_artifact_bytes:
        # The widths' size estimate was pessimistic: the state before the last step fits as it is.
        lo, sz = measured(cfg, prev)
        options.append((lo, "bit widths without the last step", prev, cfg, sz))
        return _choose(options, max_artifact_bytes, log)
    if q.lqer_tensors > 0 and q.lqer_rank > 0:
        for r in range(q.lqer_rank - 1, -1, -1):
            c = replace(cfg, quant=replace(q, lqer_rank=r))
            if len(packer.pack(c, prev)) <= max_artifact_bytes:
                lo, sz = measured(c, prev)
                options.append((lo, f"LQER rank {q.lqer_rank} -> {r} (before the last width step)", prev, c, sz))
                break
    pruned = _prune_to_fit(packer, cfg, prev, max_artifact_bytes, log)
    if pruned is not None:
        c, _ = pruned
        lo, sz = measured(c, prev)
        options.append((lo, f"pruning {c.quant.prune_values:,} +-1 codes (before the last width step)", prev, c, sz))
    return _choose(options, max_artifact_bytes, log)


def _choose(options: list, max_artifact_bytes: int, log: Callable[[str], None]) -> tuple[dict[str, str], Config]:
    for lo, what, _, _, sz in options:
        log(f"budget: option {what}: {sz:,} bytes, loss {lo:.5f}")
    best = min(options, key=lambda o: o[0])   # ties: the first (widths, then rank, then pruning)
    log(f"budget: chose {best[1]} ({best[4]:,} bytes <= {max_artifact_bytes:,}, loss {best[0]:.5f})")
    return best[2], best[3]
