"""`pgolf record check DIR`: a records folder reviewed as the challenge's maintainers would.

    report = check_folder(Path(DIR), against=None)    # report.failures, report.notes, report.lines()

Works on folders `pgolf record export` writes and on the challenge's own
(records/track_10min_16mb/*): their logs are parsed by the reference script's
line formats (`parse_log`), which pgolf's logs also end with
(shared/core/finish.py `challenge_lines`). Checked:

- the files: README.md, submission.json, train_gpt.py (it must compile), one log
  per seed (requirements.txt: a note when absent, as in the earliest records);
- sizes recomputed from the files: the model bytes each log reports plus the
  bytes of train_gpt.py (or the compressed size the log counts, for a script
  that measures its own self-extracting form) at most 16,000,000, and equal to
  the totals in the logs and submission.json;
- the logs agree with submission.json: each seed's val_loss/val_bpb, and the mean,
  to the precision the JSON gives;
- the 10-minute track: train time at most 600 s (the step that crosses the cap
  finishes: one step's time of slack, as the reference script stops) and
  evaluation at most 600 s in every log;
- with `against` (a BPB or another records folder): the significance report of
  shared/record/stats.py; failing the record rule is a failure.

An unreadable folder, JSON or log is a `PgolfError` (exit 2); a failed check is
a report with failures (exit 1).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.artifact.format import SIZE_CAP
from shared.errors import PgolfError
from shared.record.stats import Significance, mean_std, significance

TRACKS = ("10min_16mb", "non_record_16mb")
TIME_CAP_S = 600.0
REQUIRED = ("README.md", "submission.json", "train_gpt.py")

_SCORE = re.compile(r"^([A-Za-z_]\w*)\s+val_loss:\s*([0-9.]+)\s+val_bpb:\s*([0-9.]+)(?:\s+eval_time:\s*([0-9.]+)ms)?")
_TRAIN_MS = re.compile(r"train_time:\s*([0-9.]+)ms")
_STEP = re.compile(r"^step:\s*(\d+)/(\d+)")
_STOP_STEP = re.compile(r"^stopping_early:.*step:\s*(\d+)/")
_STEP_AVG = re.compile(r"step_avg:\s*([0-9.]+)ms")
_TOTAL = re.compile(r"^Total submission size[^:]*:\s*(\d+) bytes")
_MODEL = re.compile(r"^Serialized model[^:]*:\s*(\d+) bytes")
_CODE = re.compile(r"^Code size(?: \((compressed|uncompressed)\))?:\s*(\d+) bytes")
_TOTAL_EVAL = re.compile(r"^total_eval_time:\s*([0-9.]+)s")
_SEED_FILE = re.compile(r"seed_?(\d+)")


@dataclass
class LogFacts:
    path: Path
    seed: str | None
    metric: str
    val_loss: float
    val_bpb: float
    eval_time_s: float | None
    train_time_s: float | None
    step_avg_ms: float | None
    steps: int | None
    total_bytes: int | None
    model_bytes: int | None
    code_bytes: int | None
    code_compressed: bool


def parse_log(path: Path) -> LogFacts:
    """The final score, times and sizes a train log reports (the last of each)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise PgolfError(f"{path}: cannot read ({e.strerror or e})") from None
    score = eval_ms = train_ms = step_avg = steps = total = model = code = total_eval = None
    compressed = False
    for line in text.splitlines():
        line = line.strip()
        if (m := _SCORE.match(line)) and not line.startswith("step"):
            score = m
            if m.group(4):
                eval_ms = float(m.group(4))
        for t in _TRAIN_MS.findall(line):
            train_ms = max(train_ms or 0.0, float(t))
        if m := _STEP.match(line):
            steps = int(m.group(1))
        if m := _STOP_STEP.match(line):
            steps = int(m.group(1))
        if m := _STEP_AVG.search(line):
            step_avg = float(m.group(1))
        if m := _TOTAL.match(line):
            total = int(m.group(1))
        if m := _MODEL.match(line):
            model = int(m.group(1))
        if m := _CODE.match(line):
            if m.group(1) != "uncompressed":
                code, compressed = int(m.group(2)), m.group(1) == "compressed"
        if m := _TOTAL_EVAL.match(line):
            total_eval = float(m.group(1))
    if score is None:
        raise PgolfError(f"{path}: no final score line (`<name> val_loss:X val_bpb:Y`): is this a train log?")
    seed = _SEED_FILE.search(path.stem)
    eval_s = total_eval if total_eval is not None else (eval_ms / 1000.0 if eval_ms is not None else None)
    return LogFacts(path, seed.group(1) if seed else None, score.group(1), float(score.group(2)),
                    float(score.group(3)), eval_s, train_ms / 1000.0 if train_ms is not None else None,
                    step_avg, steps, total, model, code, compressed)


def _tolerance(value: float) -> float:
    """Half a unit in the last decimal the JSON gives (records round their means), at most 5e-5:
    a score given to fewer than four decimals cannot be checked against its logs."""
    text = repr(float(value))
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 8
    return min(0.5 * 10.0 ** -decimals, 5e-5) + 1e-9


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PgolfError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PgolfError(f"{path}: unreadable JSON ({e}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise PgolfError(f"{path}: expected a JSON object")
    if path.name == "submission.json":
        check_numbers(data, path)
    return data


NUMBER_KEYS = ("val_loss", "val_bpb", "val_loss_std", "val_bpb_std", "bytes_total", "bytes_code")
SEED_NUMBER_KEYS = ("val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms", "eval_time_s")


def check_numbers(sub: dict, path: Path) -> None:
    """Every numeric field present in submission.json is a number (not null, text or a boolean)."""
    def bad(v) -> bool:  # null, text, a boolean, or NaN / infinity (Python's json reads `NaN` and `Infinity`)
        return isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)

    for key in NUMBER_KEYS:
        if key in sub and bad(sub[key]):
            raise PgolfError(f"{path}: {key} must be a number, got {sub[key]!r}")
    for seed, r in seed_results(sub).items():
        for key in SEED_NUMBER_KEYS:
            if key in r and bad(r[key]):
                raise PgolfError(f"{path}: seed_results[{seed}].{key} must be a number, got {r[key]!r}")


def seed_results(sub: dict) -> dict[str, dict]:
    """Per-seed results from submission.json (`seed_results`, or an older record's `seeds` table)."""
    table = sub.get("seed_results")
    if not isinstance(table, dict) and isinstance(sub.get("seeds"), dict):
        table = sub["seeds"]
    return {str(k): v for k, v in (table or {}).items() if isinstance(v, dict)}


def scores(folder: Path) -> tuple[list[float], list[float]]:
    """(val_bpb per seed, val_loss per seed) of a records folder: submission.json's, else its logs'."""
    sub = read_json(folder / "submission.json")
    per = seed_results(sub)
    if per and all("val_bpb" in r for r in per.values()):
        losses = [float(r["val_loss"]) for r in per.values() if "val_loss" in r]
        return [float(r["val_bpb"]) for r in per.values()], (losses if len(losses) == len(per) else [])
    logs = [parse_log(p) for p in sorted(folder.glob("*.log"))]
    if not logs:
        if "val_bpb" in sub:
            return [float(sub["val_bpb"])], ([float(sub["val_loss"])] if "val_loss" in sub else [])
        raise PgolfError(f"{folder}: no per-seed results in submission.json and no logs")
    return [f.val_bpb for f in logs], [f.val_loss for f in logs]


@dataclass
class Report:
    folder: Path
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: list[LogFacts] = field(default_factory=list)
    significance: Significance | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        out = [f"records folder {self.folder}"]
        for f in self.facts:
            out.append(f"  {f.path.name}: seed {f.seed or '-'} val_loss {f.val_loss:.8f} val_bpb {f.val_bpb:.8f} "
                       f"train {f.train_time_s if f.train_time_s is not None else '?'} s "
                       f"eval {f.eval_time_s if f.eval_time_s is not None else '?'} s total {f.total_bytes or '?'} bytes")
        out += [f"  note: {n}" for n in self.notes]
        if self.significance:
            out += ["  " + line for line in self.significance.lines()]
        out += [f"  FAIL: {m}" for m in self.failures]
        out.append("OK: the folder passes every check" if self.ok else f"FAILED: {len(self.failures)} check(s)")
        return out


def _track(folder: Path, sub: dict) -> str | None:
    track = sub.get("track")
    if track in TRACKS:
        return track
    parent = folder.resolve().parent.name
    return parent.removeprefix("track_") if parent.removeprefix("track_") in TRACKS else None


def check_folder(folder: Path, against: str | None = None) -> Report:
    if not folder.is_dir():
        raise PgolfError(f"{folder} is not a folder: pass a records folder (records/<track>/<date>_<name>)")
    rep = Report(folder)
    missing = [n for n in REQUIRED if not (folder / n).is_file()]
    if missing:
        rep.failures.append(f"missing file(s): {', '.join(missing)}")
    if not (folder / "requirements.txt").is_file():
        rep.notes.append("no requirements.txt (the earliest records had none; new ones list their packages)")
    sub = read_json(folder / "submission.json") if (folder / "submission.json").is_file() else {}
    for key in ("author", "github_id", "name", "val_bpb"):
        if sub and key not in sub:
            rep.failures.append(f"submission.json: no {key!r}")
    logs = sorted(folder.glob("*.log"))
    if not logs:
        rep.failures.append("no train log (*.log): one per seed")
    rep.facts = [parse_log(p) for p in logs]

    script = folder / "train_gpt.py"
    code = None
    if script.is_file():
        src = script.read_bytes()
        code = len(src)
        try:
            compile(src, str(script), "exec")
        except (SyntaxError, ValueError) as e:
            rep.failures.append(f"train_gpt.py does not compile: {e}")
    track = _track(folder, sub)
    if track is None:
        rep.notes.append("track unknown (submission.json `track` or the parent folder's name): time caps not checked")
    per = seed_results(sub)
    totals = []
    for f in rep.facts:
        counted = code
        if code is not None and f.code_compressed and f.code_bytes is not None and f.code_bytes < code:
            counted = f.code_bytes
            rep.notes.append(f"{f.path.name}: code counted as its compressed form, {f.code_bytes:,} bytes "
                             f"(train_gpt.py is {code:,} bytes as stored)")
        if f.model_bytes is not None and counted is not None:
            total = f.model_bytes + counted
            totals.append(total)
            if total > SIZE_CAP:
                rep.failures.append(f"{f.path.name}: {f.model_bytes:,} model + {counted:,} code = {total:,} bytes, "
                                    f"over the {SIZE_CAP:,}-byte cap")
            if f.total_bytes is not None and f.total_bytes != total:
                rep.failures.append(f"{f.path.name}: the log's total {f.total_bytes:,} bytes != {f.model_bytes:,} model "
                                    f"+ {counted:,} code bytes of train_gpt.py (was the script changed after the run?)")
        elif f.total_bytes is not None:
            totals.append(f.total_bytes)
            if f.total_bytes > SIZE_CAP:
                rep.failures.append(f"{f.path.name}: {f.total_bytes:,} bytes, over the {SIZE_CAP:,}-byte cap")
        else:
            rep.failures.append(f"{f.path.name}: no size line (`Total submission size ...: N bytes`)")
        if track == "10min_16mb":
            slack = (f.step_avg_ms or 0.0) / 1000.0
            if f.train_time_s is None:
                rep.failures.append(f"{f.path.name}: no train_time in the log (10-minute track)")
            elif f.train_time_s > TIME_CAP_S + slack:
                rep.failures.append(f"{f.path.name}: trained {f.train_time_s:.1f} s, over the {TIME_CAP_S:.0f} s cap")
            if f.eval_time_s is None:
                rep.notes.append(f"{f.path.name}: no eval_time in the log")
            elif f.eval_time_s > TIME_CAP_S:
                rep.failures.append(f"{f.path.name}: evaluated in {f.eval_time_s:.1f} s, over the {TIME_CAP_S:.0f} s cap")
        if f.seed is not None and f.seed in per:
            r = per[f.seed]
            for key in ("val_loss", "val_bpb"):
                if key in r and abs(float(r[key]) - getattr(f, key)) > _tolerance(r[key]):
                    rep.failures.append(f"{f.path.name}: {key} {getattr(f, key):.8f} but submission.json seed "
                                        f"{f.seed} says {r[key]}")
            if "artifact_bytes" in r and f.total_bytes is not None and int(r["artifact_bytes"]) != f.total_bytes:
                rep.failures.append(f"{f.path.name}: total {f.total_bytes:,} bytes but submission.json seed {f.seed} "
                                    f"says artifact_bytes {int(r['artifact_bytes']):,}")
        elif per:
            rep.notes.append(f"{f.path.name}: no seed in its name or no seed_results entry for it (not compared)")
    if per and rep.facts:
        logged = {f.seed for f in rep.facts}
        absent = sorted(s for s in per if s not in logged)
        if absent:
            rep.failures.append(f"no train_seed<S>.log for seed(s) {', '.join(absent)} of submission.json")
    scored = [f for f in rep.facts if f.seed in per] if per else rep.facts
    if sub and "val_bpb" in sub and scored:
        for key in ("val_bpb", "val_loss"):
            if key in sub:
                mean = mean_std([getattr(f, key) for f in scored])[0]
                if abs(mean - float(sub[key])) > _tolerance(sub[key]) + 1e-8:
                    rep.failures.append(f"submission.json {key} {sub[key]} is not the logs' mean {mean:.8f}")
    if code is not None and "bytes_code" in sub and int(sub["bytes_code"]) != code \
            and not any(f.code_compressed for f in rep.facts):
        rep.failures.append(f"submission.json bytes_code {int(sub['bytes_code']):,} != {code:,} bytes of train_gpt.py")
    if totals and "bytes_total" in sub and int(sub["bytes_total"]) != max(totals):
        rep.failures.append(f"submission.json bytes_total {int(sub['bytes_total']):,} != the largest seed's "
                            f"{max(totals):,} bytes (model + code, recomputed)")
    if against is not None:
        rep.significance = compare(folder, against)
        if not rep.significance.record:
            rep.failures.append("not a significant record against " + against)
    return rep


def compare(folder: Path, against: str) -> Significance:
    """The significance of `folder`'s seeds against a BPB number or another records folder."""
    bpb, loss = scores(folder)
    return significance_against(bpb, loss, against)


def significance_against(bpb: list[float], loss: list[float], against: str) -> Significance:
    try:
        best: float | list[float] = float(against)
        best_loss = None
        if not math.isfinite(best) or best <= 0:
            raise PgolfError(f"--against {against}: the best score must be a positive, finite BPB")
    except ValueError:
        other = Path(against)
        if not other.is_dir():
            raise PgolfError(f"--against {against}: neither a BPB number nor a records folder") from None
        best, best_loss = scores(other)
        if not loss or len(best_loss) != len(best):
            best_loss = None
    return significance(bpb, loss, best, best_loss or None)
