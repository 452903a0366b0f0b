"""Is a new record significant? Mean, std and a one-sided Welch t-test, without scipy.

The challenge's rule (README, "Submitting"): a new record must beat the best by at
least 0.005 nats at p < 0.01 over several seeds. In practice the maintainers took
rows in order of pull-request creation with a one-sided Welch test at p < 0.25
against the previous accepted row. `significance` reports both p-values.

The Student-t tail is computed from the regularized incomplete beta function
(a Lentz continued fraction, as in Numerical Recipes 6.4): Welch's degrees of
freedom are not integers, and the core must not need scipy
(tests/test_record.py compares it with scipy when scipy is installed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import PgolfError

RECORD_MARGIN_NATS = 0.005
RECORD_P = 0.01
PRACTICE_P = 0.25


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            last = d * c
        if abs(last - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (df may be fractional)."""
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    n = len(xs)
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


def welch_p(new: Sequence[float], best: Sequence[float] | float, margin: float = 0.0) -> tuple[float, float, float]:
    """One-sided Welch test of H1: mean(new) < mean(best) - margin. Returns (p, t, df).

    `best` may be one number (a published score: no variance of its own); `new` needs two values."""
    if len(new) < 2:
        raise ValueError("a t-test needs at least two seeds")
    best = [float(best)] if isinstance(best, (int, float)) else list(best)
    ma, sa = mean_std(new)
    mb, sb = mean_std(best)
    va, vb = sa * sa / len(new), (sb * sb / len(best) if len(best) > 1 else 0.0)
    diff = (mb - margin) - ma
    se2 = va + vb
    if se2 == 0.0:
        return (0.0 if diff > 0 else 1.0), math.copysign(math.inf, diff) if diff else 0.0, math.inf
    terms = va * va / (len(new) - 1) + (vb * vb / (len(best) - 1) if len(best) > 1 else 0.0)
    df = se2 * se2 / terms if terms > 0 else math.inf
    t = diff / math.sqrt(se2)
    return t_sf(t, df), t, df


@dataclass(frozen=True)
class Significance:
    n: int
    mean_bpb: float
    std_bpb: float
    best_bpb: float
    margin_bpb: float           # 0.005 nats in this tokenizer's bits per byte
    p_record: float | None      # H1: beat the best by the margin (needs p < 0.01)
    p_practice: float | None    # H1: beat the best at all (the maintainers' p < 0.25)
    units: str                  # "nats" (val_loss on both sides) or "bpb"

    @property
    def record(self) -> bool:
        return self.p_record is not None and self.p_record < RECORD_P

    def lines(self) -> list[str]:
        out = [f"seeds {self.n}: val_bpb mean {self.mean_bpb:.8f} std {self.std_bpb:.8f}; best {self.best_bpb:.8f} "
               f"(delta {self.mean_bpb - self.best_bpb:+.8f} bpb)"]
        if self.p_record is None:
            out.append("significance: needs at least two seeds (the challenge asks for three)")
            return out
        verdict = "PASS" if self.record else "FAIL"
        out.append(f"record rule (>= {RECORD_MARGIN_NATS} nats = {self.margin_bpb:.6f} bpb better, one-sided Welch, "
                   f"tested in {self.units}): p = {self.p_record:.3g} -> {verdict} (needs p < {RECORD_P})")
        out.append(f"maintainers' practice (better at all, p < {PRACTICE_P}): p = {self.p_practice:.3g} -> "
                   f"{'PASS' if self.p_practice < PRACTICE_P else 'FAIL'}")
        return out


def significance(new_bpb: Sequence[float], new_loss: Sequence[float], best_bpb: Sequence[float] | float,
                 best_loss: Sequence[float] | None = None) -> Significance:
    """Both tests of the seeds `new_*` against the best. With the best's val_loss per seed the margin
    is tested in nats; against a BPB alone it is converted with the new runs' own bits per nat-token
    ratio (val_bpb / val_loss: the same tokenizer on both sides)."""
    mean_b, std_b = mean_std(list(new_bpb))
    if len(new_loss) != len(new_bpb):
        raise PgolfError("the seeds' val_loss is needed beside their val_bpb (to turn 0.005 nats into bits per byte)")
    ratio = mean_std([b / loss for b, loss in zip(new_bpb, new_loss, strict=True)])[0]
    best_list = [float(best_bpb)] if isinstance(best_bpb, (int, float)) else list(best_bpb)
    margin_bpb = RECORD_MARGIN_NATS * ratio
    p_rec = p_pr = None
    best_loss = best_loss if best_loss and len(new_loss) == len(new_bpb) else None
    units = "nats" if best_loss else "bpb"
    if len(new_bpb) >= 2:
        if best_loss:
            p_rec = welch_p(list(new_loss), list(best_loss), RECORD_MARGIN_NATS)[0]
        else:
            p_rec = welch_p(list(new_bpb), best_list, margin_bpb)[0]
        p_pr = welch_p(list(new_bpb), best_list, 0.0)[0]
    return Significance(len(new_bpb), mean_b, std_b, mean_std(best_list)[0], margin_bpb, p_rec, p_pr, units)
