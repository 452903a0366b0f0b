"""The training schedule both backends follow: LR scale and Muon momentum.

Pure functions of (step, elapsed seconds, config) so that the two trainers
compute the same numbers and a resumed run continues on the same curve.
"""

from __future__ import annotations

from shared.core.config import OptimConfig, TrainConfig


def lr_scale(step: int, elapsed_s: float, t: TrainConfig) -> float:
    """Linear warmdown to zero over the last `warmdown_iters` steps.

    With a wallclock cap the warmdown is measured in time: the last
    `warmdown_iters * (average step time)` seconds before `max_seconds`
    (the challenge reference's rule). Without one, in steps before `iterations`.
    """
    if t.warmdown_iters <= 0:
        return 1.0
    if t.max_seconds <= 0:
        start = max(t.iterations - t.warmdown_iters, 0)
        if start <= step < t.iterations:
            return max((t.iterations - step) / max(t.warmdown_iters, 1), 0.0)
        return 1.0
    step_s = elapsed_s / max(step, 1)
    warmdown_s = t.warmdown_iters * step_s
    remaining_s = max(t.max_seconds - elapsed_s, 0.0)
    return remaining_s / max(warmdown_s, 1e-9) if remaining_s <= warmdown_s else 1.0


def muon_momentum(step: int, o: OptimConfig) -> float:
    """Momentum warmed linearly from `muon_momentum_warmup_start` over the first steps."""
    if o.muon_momentum_warmup_steps <= 0:
        return o.muon_momentum
    frac = min(step / o.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * o.muon_momentum_warmup_start + frac * o.muon_momentum
