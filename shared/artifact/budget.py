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

The fit is a config (`quant.tensor_schemes`, `quant.lqer_rank`,
`quant.prune_values`): every size compared is the artifact plus the counted
code of the config stating that choice (`code_size`), since the script bakes
the config. `quant.budget_measure = "narrowest"` measures one loss per tensor
instead of one per (tensor, width) (docs/ARTIFACT.md, "Budget mode").
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
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
    with_tensor_schemes,
)
from shared.artifact.lqer import error_score
from shared.artifact.prune import count_candidates
from shared.artifact.quant import INT_BITS, QTensor, dequantize
from shared.core.config import Config, to_toml
from shared.core.progress import Progress
from shared.errors import PgolfError

CANDIDATES = ("int8", "int7", "int6", "int5", "int4")


def sensitivity_batch(x: np.ndarray, y: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, cfg.quant.budget_tokens // x.shape[1])
    return x[:n], y[:n]


class Packer:
    """Packs per-tensor scheme choices, quantising each (tensor, scheme) once (GPTQ is the slow part).

    Every pack states its choice in the config it embeds (`quant.tensor_schemes`, via
    `format.with_tensor_schemes`), exactly as a later `pack` or training run of that config would, and
    `total` adds the counted code of that config: the script bakes the config, so the choice changes
    the code's size too."""

    def __init__(self, params: dict[str, np.ndarray], hessians: dict | None, token_counts: np.ndarray | None,
                 code_size: Callable[[Config], int] | None = None):
        self.params, self.hessians, self.counts = params, hessians, token_counts
        self.code_size = code_size or (lambda c: 0)
        self.cache: dict[tuple[str, str], QTensor] = {}
        self.code_cache: dict[str, int] = {}
        self.blobs: OrderedDict[str, bytes] = OrderedDict()   # the last few packs, by config (measured() repacks)
        self.seconds = dict.fromkeys(("quantise", "losses", "sizes", "packs", "code"), 0.0)
        self.counts_of = dict.fromkeys(("quantise", "losses", "packs", "code"), 0)

    def timed(self, what: str, t0: float) -> None:
        self.seconds[what] += time.perf_counter() - t0
        if what in self.counts_of:
            self.counts_of[what] += 1

    def timings(self) -> str:
        s, n = self.seconds, self.counts_of
        return (f"budget: time: quantise {s['quantise']:.0f}s ({n['quantise']} tensor-widths), losses {s['losses']:.0f}s "
                f"({n['losses']} passes), tensor sizes {s['sizes']:.0f}s, packs {s['packs']:.0f}s ({n['packs']} "
                f"packs), counted code {s['code']:.0f}s ({n['code']} scripts)")

    def tensor(self, name: str, scheme: str, cfg: Config) -> QTensor:
        key = (name, scheme)
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = quantize_plain({name: self.params[name]}, cfg, self.hessians, {name: scheme},
                                             self.counts)[name]
            self.timed("quantise", t0)
        return self.cache[key]

    def config(self, cfg: Config, schemes: dict[str, str] | None) -> Config:
        """`cfg` with `schemes` written into `quant.tensor_schemes`."""
        return with_tensor_schemes(self.params, cfg, schemes or {})

    def plain(self, cfg: Config, schemes: dict[str, str] | None) -> dict[str, QTensor]:
        chosen = choose_schemes(self.params, self.config(cfg, schemes))
        return {n: self.tensor(n, chosen[n], cfg) for n in sorted(self.params)}

    def pack(self, cfg: Config, schemes: dict[str, str] | None) -> bytes:
        """The same bytes as `format.pack(params, self.config(cfg, schemes), hessians, token_counts=...)`."""
        c = self.config(cfg, schemes)
        key = to_toml(c)    # the config fixes the bytes (params, Hessians and counts are this packer's)
        if key in self.blobs:
            self.blobs.move_to_end(key)
            return self.blobs[key]
        plain = self.plain(c, None)
        t0 = time.perf_counter()
        blob = pack_quantized(finish_quantized(self.params, plain, c, self.hessians), c)
        self.timed("packs", t0)
        self.blobs[key] = blob
        while len(self.blobs) > 4:
            self.blobs.popitem(last=False)
        return blob

    def code(self, cfg: Config, schemes: dict[str, str] | None) -> int:
        """Counted code bytes of the config that states this choice (cached: generating a script takes a while)."""
        c = self.config(cfg, schemes)
        key = to_toml(c)
        if key not in self.code_cache:
            t0 = time.perf_counter()
            self.code_cache[key] = self.code_size(c)
            self.timed("code", t0)
        return self.code_cache[key]

    def total(self, cfg: Config, schemes: dict[str, str] | None) -> int:
        """Artifact bytes plus the counted code of the config that states the choice."""
        return len(self.pack(cfg, schemes)) + self.code(cfg, schemes)


def budget_schemes(
    params: dict[str, np.ndarray],
    cfg: Config,
    budget: int,
    loss: Callable[[dict[str, np.ndarray]], float],
    hessians: dict | None = None,
    log: Callable[[str], None] = print,
    token_counts: np.ndarray | None = None,
    packer: Packer | None = None,
    trail: list[dict[str, str]] | None = None,
    code_size: Callable[[Config], int] | None = None,
) -> dict[str, str]:
    """Per-tensor schemes whose packed artifact, plus `code_size` of the config stating them (0 when not
    given), is at most `budget` bytes.

    `trail`, when given, receives the choice after every greedy step, in order (fit_budget starts
    its finer means from the one before the last)."""
    q = cfg.quant
    level = q.zstd_level
    packer = packer or Packer(params, hessians, token_counts, code_size)
    eligible = [n for n, s in choose_schemes(params, cfg).items() if s in INT_BITS]
    if not eligible:
        raise PgolfError("budget mode has no integer-quantised tensors to trade: set quant.attn/mlp/embed to int schemes")
    widest = dict.fromkeys(eligible, CANDIDATES[0])
    actual = packer.total(cfg, widest)
    if actual <= budget:   # nothing to trade: no need to measure anything
        log(f"budget: {actual:,} bytes (artifact + code) <= {budget:,} with every tensor at {CANDIDATES[0]}")
        return widest
    narrowest = packer.total(cfg, dict.fromkeys(eligible, CANDIDATES[-1]))
    if narrowest > budget:  # impossible: say so before minutes of measuring
        raise PgolfError(f"cannot fit the artifact in {budget:,} bytes: it takes {narrowest:,} (artifact + code) "
                         f"even with every tensor at {CANDIDATES[-1]}; raise --budget or shrink the model")
    def timed_loss(p: dict[str, np.ndarray]) -> float:
        t0 = time.perf_counter()
        out = loss(p)
        packer.timed("losses", t0)
        return out

    base = timed_loss(params)
    every = q.budget_measure == "every"
    log(f"budget: base loss {base:.4f} nats on {q.budget_tokens} calibration tokens; measuring {len(eligible)} "
        f"tensors x {len(CANDIDATES) if every else 1} schemes (quant.budget_measure={q.budget_measure})")
    size: dict[str, list[int]] = {}
    delta: dict[str, list[float]] = {}
    with Progress("budget: sensitivities", total=len(eligible) * len(CANDIDATES), unit="widths") as bar:
        for name in eligible:
            size[name], delta[name] = [], []
            errors = []
            for scheme in CANDIDATES:
                qt = packer.tensor(name, scheme, cfg)
                t0 = time.perf_counter()
                size[name].append(tensor_bytes(qt, level))
                packer.timed("sizes", t0)
                if every:
                    delta[name].append(timed_loss({**params, name: dequantize(qt)}) - base)
                else:
                    h = (hessians or {}).get(name) if q.gptq else None
                    errors.append(error_score(params[name], dequantize(qt), h))
                bar.update()
            if not every:
                # One forward pass, at the narrowest width (the largest, least noisy loss change); the other
                # widths scale it by their weight error, to second order what a loss change goes as near a
                # minimum. Both are per tensor, so the Hessian's units cancel.
                d = timed_loss({**params, name: dequantize(packer.tensor(name, CANDIDATES[-1], cfg))}) - base
                delta[name] = [d * e / errors[-1] if errors[-1] > 0 else 0.0 for e in errors]

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

    # Everything that is not an eligible payload (code included); corrected after every real pack.
    offset = actual - sum(size[n][0] for n in eligible)
    while actual > budget:
        est = offset + sum(size[n][level_of[n]] for n in eligible)
        while est > budget:
            if not step():
                raise PgolfError(
                    f"cannot fit the artifact in {budget:,} bytes even with every tensor at "
                    f"{CANDIDATES[-1]}: raise --budget or shrink the model")
            est = offset + sum(size[n][level_of[n]] for n in eligible)
        actual = packer.total(cfg, choice())
        if actual > budget:
            offset += actual - est   # the estimate was optimistic: correct it and keep lowering
            if not step():
                raise PgolfError(f"cannot fit the artifact in {budget:,} bytes: raise --budget")
    chosen = choice()
    est_loss = base + sum(delta[n][level_of[n]] for n in eligible)
    counts = {s: sum(1 for v in chosen.values() if v == s) for s in CANDIDATES}
    log(f"budget: {actual:,} bytes (artifact + code) <= {budget:,}; estimated loss {est_loss:.4f} "
        f"(+{est_loss - base:.4f}); tensors per scheme: "
        + ", ".join(f"{s} {c}" for s, c in counts.items() if c))
    for n in eligible:
        log(f"  {n:32s} {chosen[n]:5s} {size[n][level_of[n]]:>10,} B  d_loss {delta[n][level_of[n]]:+.5f}")
    return chosen


def _prune_to_fit(packer: Packer, cfg: Config, schemes: dict[str, str], budget: int,
                  log: Callable[[str], None]) -> tuple[Config, int] | None:
    """The config with about the fewest +-1 codes pruned that fits (within 0.1% of the candidates: secant
    and bisection steps on the packed size), and its total; None if pruning every candidate does not fit."""
    plain = packer.plain(cfg, schemes)
    total = count_candidates(plain, packer.hessians)
    if total == 0:
        return None

    def size(n: int) -> int:
        return packer.total(replace(cfg, quant=replace(cfg.quant, prune_values=n)), schemes)

    lo, lo_size = 0, size(0)
    if lo_size <= budget:
        return cfg, lo_size
    hi, hi_size = total, size(total)
    if hi_size > budget:
        log(f"budget: pruning all {total:,} +-1 codes leaves {hi_size:,} bytes: not enough")
        return None
    for i in range(12):   # between a size over the budget (lo) and one within it (hi)
        if hi - lo <= max(1, total // 1000):
            break
        if i % 2 == 0:    # a secant step, 5% past the estimate (the size falls slower than linearly at first) ...
            per = max((lo_size - hi_size) / (hi - lo), 1e-9)
            n = min(hi - 1, max(lo + 1, lo + math.ceil((lo_size - budget) / per * 1.05)))
        else:             # ... then a bisection, so that a secant stuck on one side still converges
            n = (lo + hi) // 2
        sn = size(n)
        if sn <= budget:
            hi, hi_size = n, sn
        else:
            lo, lo_size = n, sn
    log(f"budget: pruning {hi:,} of {total:,} +-1 codes gives {hi_size:,} bytes")
    return replace(cfg, quant=replace(cfg.quant, prune_values=hi)), hi_size


def fit_budget(
    params: dict[str, np.ndarray],
    cfg: Config,
    budget: int,
    loss: Callable[[dict[str, np.ndarray]], float],
    hessians: dict | None = None,
    log: Callable[[str], None] = print,
    token_counts: np.ndarray | None = None,
    code_size: Callable[[Config], int] | None = None,
) -> Config:
    """The config (`quant.tensor_schemes`, `quant.lqer_rank`, `quant.prune_values` set) whose artifact plus
    `code_size(config)` (the counted script, which bakes that config; 0 when not given) is at most
    `budget` bytes: bit widths, then LQER rank, then pruning, the cheapest measured loss among those
    that fit (module docstring). `format.pack(params, config, hessians, token_counts=...)` rebuilds
    exactly the artifact measured here, and so does a training run of that config."""
    packer = Packer(params, hessians, token_counts, code_size)
    trail: list[dict[str, str]] = []
    schemes = budget_schemes(params, cfg, budget, loss, hessians, log, token_counts, packer, trail)
    if not trail:
        log(packer.timings())
        return packer.config(cfg, schemes)    # fits at the widest widths: nothing to trade
    prev = trail[-2] if len(trail) >= 2 else dict.fromkeys(schemes, CANDIDATES[0])

    def measured(c: Config, sch: dict[str, str]) -> tuple[float, int]:
        blob = packer.pack(c, sch)
        t0 = time.perf_counter()
        lo = loss(unpack(blob)[1])
        packer.timed("losses", t0)
        return lo, len(blob) + packer.code(c, sch)

    options: list[tuple[float, str, Config, int]] = []
    widths_loss, widths_size = measured(cfg, schemes)
    options.append((widths_loss, "bit widths", packer.config(cfg, schemes), widths_size))
    q = cfg.quant
    if packer.total(cfg, prev) <= budget:
        # The widths' size estimate was pessimistic: the state before the last step fits as it is.
        lo, sz = measured(cfg, prev)
        options.append((lo, "bit widths without the last step", packer.config(cfg, prev), sz))
        log(packer.timings())
        return _choose(options, budget, log)
    if q.lqer_tensors > 0 and q.lqer_rank > 0:
        for r in range(q.lqer_rank - 1, -1, -1):
            c = replace(cfg, quant=replace(q, lqer_rank=r))
            if packer.total(c, prev) <= budget:
                lo, sz = measured(c, prev)
                options.append((lo, f"LQER rank {q.lqer_rank} -> {r} (before the last width step)",
                                packer.config(c, prev), sz))
                break
    pruned = _prune_to_fit(packer, cfg, prev, budget, log)
    if pruned is not None:
        c, _ = pruned
        lo, sz = measured(c, prev)
        options.append((lo, f"pruning {c.quant.prune_values:,} +-1 codes (before the last width step)",
                        packer.config(c, prev), sz))
    log(packer.timings())
    return _choose(options, budget, log)


def _choose(options: list, budget: int, log: Callable[[str], None]) -> Config:
    for lo, what, _, sz in options:
        log(f"budget: option {what}: {sz:,} bytes (artifact + code), loss {lo:.5f}")
    best = min(options, key=lambda o: o[0])   # ties: the first (widths, then rank, then pruning)
    log(f"budget: chose {best[1]} ({best[3]:,} bytes <= {budget:,}, loss {best[0]:.5f})")
    return best[2]
