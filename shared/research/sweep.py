"""A resumable grid of `pgolf train` runs, and its results table.

OUT/sweep.json records what the sweep runs (config, points, seeds, budget, backend, data); running the same
command again compares against it and finishes only what is missing: a point whose summary.json is scored
is not run again, an interrupted one resumes from its last checkpoint (train.checkpoint_every) or starts
over. After every run the results (results.csv, results.jsonl: one row per finished run; summary.json:
one row per point with mean, std and the Welch test against the first point) are rewritten atomically,
so a killed sweep leaves a table of what finished.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.config import load_config, parse_override
from shared.errors import PgolfError
from shared.research.runs import SWEEP_SPEC, budget_line, finished, rows, sweep_groups

FOREVER = 1_000_000  # train.iterations under a wallclock budget: the clock stops the run
CSV_KEYS = ["point", "seed", "sets", "q_val_bpb", "val_bpb", "q_val_loss", "val_loss", "steps", "tokens_per_second",
            "total_bytes", "artifact_bytes", "train_seconds", "eval_seconds", "seconds", "stop_reason", "run"]


@dataclass(frozen=True)
class Point:
    name: str
    sets: list[str]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)[:80]


def grid_points(grids: list[str]) -> list[Point]:
    """`--grid section.key=v1,v2` (repeatable) -> every combination, the first values of each key first."""
    axes: list[list[str]] = []
    seen = set()
    for g in grids:
        if "=" not in g:
            raise PgolfError(f"--grid {g!r}: expected section.key=v1,v2, e.g. --grid model.mlp_mult=2,3")
        key, values = g.split("=", 1)
        key = key.strip()
        vals = [v.strip() for v in values.split(",")]
        if any(not v for v in vals):
            raise PgolfError(f"--grid {g!r}: an empty value; expected section.key=v1,v2")
        if len(set(vals)) != len(vals):
            raise PgolfError(f"--grid {g!r}: a value is repeated")
        if key in seen:
            raise PgolfError(f"--grid {key}: given twice; list all its values in one --grid")
        seen.add(key)
        parse_override(f"{key}={vals[0]}")  # section.key shape
        axes.append([f"{key}={v}" for v in vals])
    points = []
    for i, combo in enumerate(itertools.product(*axes)):
        short = "-".join(s.split(".", 1)[1] for s in combo)
        points.append(Point(f"p{i:02d}-{_slug(short)}", list(combo)))
    return points


def budget_sets(steps: int | None, max_seconds: float | None) -> list[str]:
    """Equal steps or equal wallclock, chosen explicitly (one of the two)."""
    if (steps is None) == (max_seconds is None):
        raise PgolfError("pass exactly one of --steps N (equal steps) and --max-seconds S (equal wallclock)")
    if steps is not None:
        if steps < 1:
            raise PgolfError(f"--steps {steps}: must be at least 1")
        return [f"train.iterations={steps}", "train.max_seconds=0.0"]
    if not max_seconds > 0:
        raise PgolfError(f"--max-seconds {max_seconds}: must be positive")
    return [f"train.iterations={FOREVER}", f"train.max_seconds={float(max_seconds)!r}"]


def _spec(kind, backend, config_path, points, seeds, budget, sets, data, tokenizer) -> dict[str, Any]:
    return {"kind": kind, "backend": backend, "config": str(config_path), "points": [vars(p) for p in points],
            "seeds": seeds, "budget": budget, "sets": sets, "data": data, "tokenizer": tokenizer}


def _write_atomic(path: Path, text: str) -> None:
    from shared.files import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def results(out: Path) -> dict[str, Any]:
    """Rewrite results.csv, results.jsonl and summary.json from the finished runs; return the summary."""
    spec = json.loads((out / SWEEP_SPEC).read_text())
    groups = sweep_groups(out)
    records = []
    for g in groups:
        for r in g.runs:
            s = r.summary
            rec = {k: s.get(k) for k in CSV_KEYS if k in s}
            rec.update(point=g.label, seed=r.seed, sets=" ".join(g.sets), run=str(r.path),
                       seconds=float(s.get("train_seconds", 0.0)) + float(s.get("eval_seconds", 0.0)))
            records.append(rec)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_KEYS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow(rec)
    _write_atomic(out / "results.csv", buf.getvalue())
    _write_atomic(out / "results.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    summary = {"kind": spec["kind"], "budget": budget_line(groups), "backend": spec["backend"],
               "config": spec["config"], "seeds": spec["seeds"], "rows": rows(groups),
               "runs_finished": len(records), "runs_total": len(spec["points"]) * len(spec["seeds"])}
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _say(msg: str) -> None:
    from shared.core.progress import _QUIET  # noqa: PLC2701 - the one switch every progress line obeys

    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)


def _eta(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 600 else f"{seconds / 60:.1f}min"


def run_sweep(out: Path, *, kind: str, backend: str, config_path: str, points: list[Point], seeds: list[int],
              budget: list[str], sets: list[str], data: str | None, tokenizer: str | None,
              train: Any) -> dict[str, Any]:
    """Train every (point, seed) not finished yet, in order, with `train` (the `pgolf train` command, given by
    the caller: the command line sits above this package); returns the summary (also OUT/summary.json)."""
    from shared.run.rundir import TRAIN_STATE, saved_step

    if any(parse_override(s)[:2] == ("train", "seed") for s in sets + [x for p in points for x in p.sets]):
        raise PgolfError("train.seed is set by --seeds: drop it from --set and --grid")
    # every point's config is checked before the first run trains
    for p in points:
        load_config(config_path, [*sets, *budget, *p.sets, f"train.seed={seeds[0]}"])
    spec = _spec(kind, backend, config_path, points, seeds, budget, sets, data, tokenizer)
    spec_path = out / SWEEP_SPEC
    if spec_path.is_file():
        old = json.loads(spec_path.read_text())
        if old != spec:
            diff = [k for k in spec if old.get(k) != spec[k]]
            raise PgolfError(f"{spec_path}: this folder holds a different {old.get('kind', 'sweep')} (differs in "
                             f"{', '.join(diff)}): rerun with the same flags to finish it, or choose another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(spec_path, json.dumps(spec, indent=2, sort_keys=True) + "\n")
    jobs = [(p, s) for p in points for s in seeds]
    todo = [(p, s) for p, s in jobs if not finished(out / p.name / f"seed{s}")]
    total = len(jobs)
    _say(f"{kind} {out}: {len(points)} points x {len(seeds)} seeds = {total} runs; {total - len(todo)} finished, "
         f"{len(todo)} to run; {budget_line_of(budget)}")
    log = out / "sweep.log"
    t0, done_now = time.monotonic(), 0
    for p, seed in todo:
        i = jobs.index((p, seed)) + 1
        run = out / p.name / f"seed{seed}"
        if run.is_dir() and saved_step(run / TRAIN_STATE) is not None:
            args, how = ["--backend", backend, "--resume", str(run)], "resuming"
        else:
            args = ["--backend", backend, "--config", str(config_path), "--out", str(run), "--overwrite",
                    "--set", f"train.seed={seed}"]
            for s in [*sets, *budget, *p.sets]:
                args += ["--set", s]
            args += ["--data", data] if data else []
            args += ["--tokenizer", tokenizer] if tokenizer else []
            how = "restarting" if run.is_dir() else "running"
        _say(f"{kind} [{i}/{total}] {how} {p.name} seed {seed}: {' '.join(p.sets) or '(base)'}")
        with open(log, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
            print(f"== [{i}/{total}] {p.name} seed {seed} ({how})", flush=True)
            train.main(args=args, prog_name="pgolf train", standalone_mode=False)
        done_now += 1
        summary = results(out)
        left = len(todo) - done_now
        per_run = (time.monotonic() - t0) / done_now
        scored = [r for r in summary["rows"] if r["q_val_bpb_mean"] is not None]
        best = min(scored, key=lambda r: r["q_val_bpb_mean"]) if scored else None
        this = json.loads((run / "summary.json").read_text())
        _say(f"{kind} [{i}/{total}] {p.name} seed {seed}: q_val_bpb {this['q_val_bpb']:.4f} in {this['steps']} steps"
             f"; {left} left, ETA {_eta(left * per_run)}"
             + (f"; best so far {best['label']} {best['q_val_bpb_mean']:.4f} (n={best['n']})" if best else ""))
    return results(out)


def budget_line_of(budget: list[str]) -> str:
    if "train.max_seconds=0.0" in budget:
        return f"equal steps ({budget[0].split('=')[1]} per run)"
    return f"equal wallclock ({budget[1].split('=')[1]} s per run)"
