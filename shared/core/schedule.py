"""The training schedule both backends follow: LR scale, Muon momentum, depth-recurrence switch.

Pure functions of (step, elapsed seconds, config) so that the two trainers
compute the same numbers and a resumed run continues on the same curve.
"Training time" is `train.max_seconds` minus `train.calib_reserve_s` (GPTQ
calibration reads training data, so the challenge counts it in the 600 s; it
is kept out of the steps' budget: docs/TIME-BUDGET.md), or the step budget
`train.iterations` when uncapped.
"""

from __future__ import annotations

from shared.core.config import ModelConfig, OptimConfig, TrainConfig


def train_seconds(t: TrainConfig) -> float:
    """The wallclock the training steps may use (0 = uncapped)."""
    return max(t.max_seconds - t.calib_reserve_s, 0.0) if t.max_seconds > 0 else 0.0


def progress(step: int, elapsed_s: float, t: TrainConfig) -> float:
    """How far training is, in [0, 1]: by the clock when capped, else by steps."""
    budget = train_seconds(t)
    if budget > 0:
        return min(elapsed_s / budget, 1.0)
    return min(step / max(t.iterations, 1), 1.0)


def lr_scale(step: int, elapsed_s: float, t: TrainConfig) -> float:
    """The LR multiplier: 1, then a linear warmdown to 0, floored at `train.min_lr`.

    `train.warmdown_frac` > 0: the warmdown covers the last fraction of training
    (`progress`; the records' rule, #1855). Otherwise the last `warmdown_iters`
    steps; with a wallclock cap measured in time, the last `warmdown_iters *
    (average step time)` seconds (the challenge reference's rule).
    """
    return max(_warmdown(step, elapsed_s, t), t.min_lr)


def _warmdown(step: int, elapsed_s: float, t: TrainConfig) -> float:
    if t.warmdown_frac > 0:
        left = 1.0 - progress(step, elapsed_s, t)
        return min(left / t.warmdown_frac, 1.0)
    if t.warmdown_iters <= 0:
        return 1.0
    budget = train_seconds(t)
    if budget <= 0:
        start = max(t.iterations - t.warmdown_iters, 0)
        if start <= step < t.iterations:
            return max((t.iterations - step) / max(t.warmdown_iters, 1), 0.0)
        return 1.0
    step_s = elapsed_s / max(step, 1)
    warmdown_s = t.warmdown_iters * step_s
    remaining_s = max(budget - elapsed_s, 0.0)
    return remaining_s / max(warmdown_s, 1e-9) if remaining_s <= warmdown_s else 1.0


def muon_momentum(step: int, o: OptimConfig) -> float:
    """Momentum warmed linearly from `muon_momentum_warmup_start` over the first steps."""
    if o.muon_momentum_warmup_steps <= 0:
        return o.muon_momentum
    frac = min(step / o.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * o.muon_momentum_warmup_start + frac * o.muon_momentum


def looped(step: int, elapsed_s: float, m: ModelConfig, t: TrainConfig) -> bool:
    """Whether depth recurrence is on for this step (from `model.loop_at` of training on, #1855)."""
    return m.looping and progress(step, elapsed_s, t) >= m.loop_at


def seq_cap(step: int, elapsed_s: float, t: TrainConfig) -> int:
    """The document segment cap of this step under `train.seq_schedule` (#2014: the first stage whose
    fraction has not been passed), or 0 (the model's own `doc_max_len`) without a schedule."""
    at = progress(step, elapsed_s, t)
    for frac, cap in t.seq_stages():
        if at <= frac:
            return cap
    return 0


def rewarm(step: int, stage_step: int | None, t: TrainConfig) -> float:
    """The LR ramp after a change of the segment cap: (steps since + 1) / seq_rewarm_steps, up to 1 (#2014)."""
    if stage_step is None or t.seq_rewarm_steps <= 0:
        return 1.0
    return min((step - stage_step + 1) / t.seq_rewarm_steps, 1.0)
