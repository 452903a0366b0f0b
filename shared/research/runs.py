"""Run folders and sweep folders as groups of seeds, and the side-by-side table that compares them.

A group is one configuration trained over one or more seeds: a sweep point (OUT/<point>/seed<S>), or run
folders given one by one whose configs differ only in `train.seed`. The first group is the reference; every
other group gets its difference in mean `q_val_bpb` (the packed model's score: what the challenge counts)
and, when both sides have at least two seeds, a Welch t-test (shared/record/stats.py). Lower is better.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.core.config import Config, load_config, to_dict
from shared.errors import PgolfError
from shared.record.stats import mean_std, welch_p

SWEEP_SPEC = "sweep.json"
CORPORA = "corpora.json"  # a sweep over several corpora: one sweep folder per corpus inside
METRIC = "q_val_bpb"
ALPHA = 0.05          # a verdict says "better" or "worse" only below this one-sided p
IGNORED_KEYS = {"train.seed"}  # what differs between the seeds of one group


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    cfg: Config

    @property
    def seed(self) -> int:
        return self.cfg.train.seed


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)   # a sweep point's overrides ([] for plain runs)

    def values(self, key: str = METRIC) -> list[float]:
        return [float(r.summary[key]) for r in self.runs if r.summary.get(key) is not None]


def load_run(path: Path) -> Run:
    summary_path, cfg_path = path / "summary.json", path / "config.toml"
    if not summary_path.is_file() or not cfg_path.is_file():
        raise PgolfError(f"{path}: no summary.json and config.toml: pass a finished `pgolf train` run folder or a "
                         "sweep folder (one with sweep.json)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PgolfError(f"{summary_path}: unreadable ({e}); rerun that run") from None
    if summary.get(METRIC) is None:
        raise PgolfError(f"{summary_path}: no {METRIC} (the run did not finish scoring); rerun that run")
    return Run(path, summary, load_config(cfg_path))


def finished(path: Path) -> bool:
    """A run folder whose summary.json is readable and scored (a sweep does not run it again)."""
    try:
        return json.loads((path / "summary.json").read_text(encoding="utf-8")).get(METRIC) is not None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def read_spec(sweep_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((sweep_dir / SWEEP_SPEC).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PgolfError(f"{sweep_dir / SWEEP_SPEC}: unreadable ({e}); is {sweep_dir} a `pgolf sweep` folder?") from None


def sweep_groups(sweep_dir: Path, prefix: str = "") -> list[Group]:
    """One group per point of a sweep, in the sweep's order, with the seeds that finished."""
    spec = read_spec(sweep_dir)
    groups = []
    for point in spec["points"]:
        g = Group(prefix + point["name"], sets=list(point["sets"]))
        for seed in spec["seeds"]:
            run = sweep_dir / point["name"] / f"seed{seed}"
            if finished(run):
                g.runs.append(load_run(run))
        groups.append(g)
    return groups


def load_groups(paths: list[Path]) -> list[Group]:
    """Sweep folders become their points; run folders are grouped when their configs differ only by seed."""
    if not paths:
        raise PgolfError("give at least one run folder or sweep folder")
    groups: list[Group] = []
    by_config: dict[str, Group] = {}
    several_sweeps = sum((p / SWEEP_SPEC).is_file() for p in paths) > 1
    for p in paths:
        if not p.is_dir():
            raise PgolfError(f"{p}: not a folder: pass a `pgolf train` run folder or a `pgolf sweep` folder")
        if (p / SWEEP_SPEC).is_file():
            groups += sweep_groups(p, prefix=f"{p.name}/" if several_sweeps else "")
            continue
        if (p / CORPORA).is_file():
            raise PgolfError(f"{p}: a sweep over several corpora: compare one corpus at a time "
                             f"(pgolf compare {p}/<corpus>); {p / CORPORA} holds where each result holds")
        run = load_run(p)
        key = json.dumps({k: v for k, v in flat(run.cfg).items() if k not in IGNORED_KEYS}, sort_keys=True, default=str)
        if key in by_config:
            by_config[key].runs.append(run)
            by_config[key].label += f"+{p.name}"
        else:
            by_config[key] = Group(str(p), [run])
            groups.append(by_config[key])
    return groups


def flat(cfg: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, table in to_dict(cfg).items() for k, v in table.items()}


def differing_keys(groups: list[Group]) -> list[str]:
    """The config keys whose value is not the same in every run (the seed aside)."""
    flats = [flat(r.cfg) for g in groups for r in g.runs]
    if not flats:
        return []
    keys = sorted(set().union(*flats))
    return [k for k in keys if k not in IGNORED_KEYS and len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


def budget_line(groups: list[Group]) -> str:
    """Equal steps, equal wallclock, or neither: the first thing a reader of the table must know."""
    runs = [r for g in groups for r in g.runs]
    caps = {r.cfg.train.max_seconds for r in runs}
    iters = {r.cfg.train.iterations for r in runs}
    if not runs:
        return "budget: no finished runs"
    if caps == {0.0} and len(iters) == 1:
        return f"budget: equal steps ({iters.pop()} steps per run, no wallclock cap)"
    if len(caps) == 1 and 0.0 not in caps:
        line = f"budget: equal wallclock ({caps.pop():g} s of training per run; steps differ with speed and the machine's load)"
        return line + load_warning(groups)
    return ("budget: MIXED (step budgets " + ", ".join(map(str, sorted(iters))) + "; wallclock caps "
            + ", ".join(f"{c:g}s" for c in sorted(caps)) + "): the runs are not on equal terms")


LOAD_RATIO = 1.3  # seeds of one config whose speeds differ by more than this ran under different load


def load_warning(groups: list[Group]) -> str:
    """Under a wallclock budget, seeds of the same config that ran at different speeds mean the machine's load
    changed during the sweep: their steps, hence their scores, measure the load as much as the config."""
    worst = max(((max(v) / min(v), g.label) for g in groups if len(v := g.values("tokens_per_second")) > 1
                 and min(v) > 0), default=None)
    if worst is None or worst[0] <= LOAD_RATIO:
        return ""
    return (f"\nWARNING: the seeds of {worst[1]} ran {worst[0]:.1f}x apart in tok/s: the machine's load changed, "
            "so steps and scores at equal wallclock mix load with the config; rerun with --steps N (equal steps) "
            "or on an idle machine")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def verdict(ref: Group, g: Group) -> dict[str, Any]:
    """Difference of mean q_val_bpb against the reference and, with two seeds or more on both sides, the
    one-sided Welch p-values of "better" and "worse" and the two-sided p."""
    a, b = g.values(), ref.values()
    out: dict[str, Any] = {"delta": (_mean(a) - _mean(b)) if a and b else None, "p_better": None, "p_worse": None,
                           "p_two_sided": None}
    if len(a) < 2 or len(b) < 2:
        out["verdict"] = "needs 2+ seeds on both sides" if a and b else "no finished runs"
        return out
    p_better = welch_p(a, b)[0]
    p_worse = welch_p(b, a)[0]
    out.update(p_better=p_better, p_worse=p_worse, p_two_sided=min(1.0, 2.0 * min(p_better, p_worse)))
    if p_better < ALPHA:
        out["verdict"] = "better"
    elif p_worse < ALPHA:
        out["verdict"] = "worse"
    else:
        out["verdict"] = "no clear difference"
    return out


def rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One dict per group: its differing keys, seeds, mean/std of the scores, bytes, steps, speed, verdict."""
    keys = differing_keys(groups)
    ref = groups[0]
    out = []
    for i, g in enumerate(groups):
        q = g.values()
        m, s = mean_std(q) if q else (None, None)
        cfg = flat(g.runs[0].cfg) if g.runs else {}
        row = {
            "label": g.label,
            "sets": g.sets,
            "config": {k: cfg.get(k) for k in keys} if g.runs else {},
            "seeds": [r.seed for r in g.runs],
            "runs": [str(r.path) for r in g.runs],
            "n": len(q),
            "q_val_bpb_mean": m,
            "q_val_bpb_std": s if len(q) > 1 else None,
            "val_bpb_mean": _mean(g.values("val_bpb")),
            "total_bytes_max": max(g.values("total_bytes"), default=None),
            "steps_mean": _mean(g.values("steps")),
            "tokens_per_second_mean": _mean(g.values("tokens_per_second")),
            "train_seconds_mean": _mean(g.values("train_seconds")),
        }
        row.update(verdict(ref, g) if i else {"delta": None, "p_better": None, "p_worse": None,
                                              "p_two_sided": None, "verdict": "reference"})
        out.append(row)
    return out


def _f(x: Any, fmt: str) -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render(table: list[dict[str, Any]], budget: str) -> str:
    """The table as markdown (what BENCHMARKS.md takes), then the budget line."""
    head = ("| run | config (keys that differ) | seeds | q_val_bpb | std | val_bpb | bytes | steps | tok/s "
            "| delta | p (better) | p (worse) | verdict |")
    lines = [head, "|" + "---|" * 13]
    for r in table:
        cfg = " ".join(f"{k}={_value(v)}" for k, v in r["config"].items()) or "(same)"
        seeds = ",".join(map(str, r["seeds"])) or "-"
        lines.append(
            f"| {r['label']} | {cfg} | {seeds} | {_f(r['q_val_bpb_mean'], '.4f')} | {_f(r['q_val_bpb_std'], '.4f')} "
            f"| {_f(r['val_bpb_mean'], '.4f')} | {_f(r['total_bytes_max'], ',.0f')} | {_f(r['steps_mean'], '.0f')} "
            f"| {_f(r['tokens_per_second_mean'], ',.0f')} | {_f(r['delta'], '+.4f')} | {_f(r['p_better'], '.3g')} "
            f"| {_f(r['p_worse'], '.3g')} | {r['verdict']} |")
    lines.append("")
    lines.append(budget)
    lines.append(f"q_val_bpb: mean over seeds of the packed model's score (lower is better); delta and the one-sided "
                 f"Welch p-values are against the first row; a verdict needs p < {ALPHA}.")
    return "\n".join(lines)
