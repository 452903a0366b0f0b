"""`pgolf record check DIR`: a records folder reviewed as the challenge's maintainers would.

    report = check_folder(Path(DIR), against=None)    # report.failures, report.notes, report.lines()

Works on folders `pgolf record export` writes and on the challenge's own
(records/track_10min_16mb/*): their logs are parsed by the reference script's
line formats (`parse_log`), which pgolf's logs also end with
(shared/run/finish.py `challenge_lines`). Checked:

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
- integrity: train_gpt.py is the script exported (`code_sha256`), no log is given
  twice, each log trained the seed its name says;
- with `against` (a BPB or another records folder): the significance report of
  shared/record/stats.py.

Those are the structural checks (`Report.failures`), which a non-record submission
must pass too. Then, on the record track, `judge_record` asks whether the folder is a
record under a profile (shared/record/profile.py): the whole validation split, the
official data, enough seeds significant under both rules, the time caps, the
hardware and the legality evidence; each reason (`Report.not_record`) names the
profile field it misses. An unreadable folder, JSON or log is a `PgolfError` (exit 2);
a failed check, or a folder on the record track that is not a record, exits 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.artifact.format import SIZE_CAP
from shared.errors import PgolfError
from shared.record.profile import OFFICIAL, Profile
from shared.record.stats import PRACTICE_P, RECORD_MARGIN_NATS, RECORD_P, Significance, mean_std, significance

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
_VAL_TOKENS = re.compile(r"^(?:data_checksums:.*\b)?val_tokens:\s*(\d+)")
_SUM = re.compile(r"\b(val_sha256|tokenizer_sha256):([0-9a-f]{64})\b")
_LEDGER = re.compile(r"^eval_ledger:.*\beval_mode:(\S+).*\beval_tokens:(\d+)")
_LOG_SEED = re.compile(r"^\s*seed(?:\s*=|:)\s*(\d+)\s*$")  # pgolf's resolved config, a record's hyperparameters


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
    val_tokens: int | None = None        # the whole validation split's target tokens, as the log states them
    eval_tokens: int | None = None       # the targets the final evaluation scored (pgolf's eval_ledger line)
    eval_mode: str | None = None
    sums: dict = field(default_factory=dict)   # val_sha256 / tokenizer_sha256 the log states
    seed_in_log: str | None = None
    digest: str = ""


def parse_log(path: Path) -> LogFacts:
    """The final score, times and sizes a train log reports (the last of each)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise PgolfError(f"{path}: cannot read ({e.strerror or e})") from None
    score = eval_ms = train_ms = step_avg = steps = total = model = code = total_eval = None
    compressed = False
    val_tokens = eval_tokens = eval_mode = log_seed = None
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if log_seed is None and (m := _LOG_SEED.match(line)):
            log_seed = m.group(1)
        line = line.strip()
        if m := _VAL_TOKENS.match(line):
            val_tokens = int(m.group(1))
        sums.update(_SUM.findall(line))
        if m := _LEDGER.match(line):
            eval_mode, eval_tokens = m.group(1), int(m.group(2))
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
                    step_avg, steps, total, model, code, compressed, val_tokens, eval_tokens, eval_mode, sums,
                    log_seed, hashlib.sha256(text.encode("utf-8", "replace")).hexdigest())


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
    """`failures`: the structural checks (files, counted code, logs vs submission.json, sizes, caps), which a
    non-record submission must pass too. `not_record`: why the folder is not a record under the profile
    (each reason names the profile field it misses); empty for a record. `passes`: what the exit code says."""

    folder: Path
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: list[LogFacts] = field(default_factory=list)
    significance: Significance | None = None
    not_record: list[str] = field(default_factory=list)
    profile: Profile | None = None
    track: str | None = None

    @property
    def ok(self) -> bool:
        """The structural checks pass."""
        return not self.failures

    @property
    def record(self) -> bool:
        return self.ok and not self.not_record and self.profile is not None

    @property
    def passes(self) -> bool:
        """A record on the record track; on the non-record track, the structural checks."""
        return self.record if self.track != "non_record_16mb" else self.ok

    def lines(self) -> list[str]:
        out = [f"records folder {self.folder}"]
        for f in self.facts:
            out.append(f"  {f.path.name}: seed {f.seed or '-'} val_loss {f.val_loss:.8f} val_bpb {f.val_bpb:.8f} "
                       f"train {f.train_time_s if f.train_time_s is not None else '?'} s "
                       f"eval {f.eval_time_s if f.eval_time_s is not None else '?'} s total {f.total_bytes or '?'} bytes")
        out += [f"  note: {n}" for n in self.notes]
        if self.significance:
            out += ["  " + line for line in self.significance.lines()]
        out.append("structural checks: " + ("pass" if self.ok else f"{len(self.failures)} failed"))
        out += [f"  FAIL: {m}" for m in self.failures]
        if self.track == "non_record_16mb":
            out.append("record judgement: not applied (a non-record submission by its track)")
        elif self.profile is not None:
            out.append(f"record judgement (profile {self.profile.name}): "
                       + ("a record" if not self.not_record else f"NOT a record, {len(self.not_record)} reason(s)"))
            out += [f"  NOT RECORD: {m}" for m in self.not_record]
        if not self.ok:
            out.append(f"FAILED: {len(self.failures)} structural check(s)")
        elif self.passes:
            out.append("OK: a record submission that passes every check" if self.track != "non_record_16mb"
                       else "OK: a non-record submission that passes every structural check")
        else:
            out.append(f"NON-RECORD SUBMISSION: the structural checks pass, but it is not a record "
                       f"({len(self.not_record)} reason(s) above); submit it as non_record_16mb or fix them")
        return out


def _track(folder: Path, sub: dict) -> str | None:
    track = sub.get("track")
    if track in TRACKS:
        return track
    parent = folder.resolve().parent.name
    return parent.removeprefix("track_") if parent.removeprefix("track_") in TRACKS else None


def check_folder(folder: Path, against: str | None = None, profile: Profile | None = OFFICIAL) -> Report:
    if not folder.is_dir():
        raise PgolfError(f"{folder} is not a folder: pass a records folder (records/<track>/<date>_<name>)")
    rep = Report(folder, profile=profile)
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
    _check_integrity(rep, folder, sub, script)
    rep.track = track
    if against is not None:
        rep.significance = compare(folder, against)
    if profile is not None and track != "non_record_16mb":
        rep.not_record = judge_record(rep, sub, profile, against)
    return rep


def _check_integrity(rep: Report, folder: Path, sub: dict, script: Path) -> None:
    """What a copied or swapped file would hide: the script's hash recorded at export, the same log under
    two seeds, a log whose own seed is not the one in its name."""
    want = sub.get("code_sha256")
    if want is not None and script.is_file():
        have = hashlib.sha256(script.read_bytes()).hexdigest()
        if have != want:
            rep.failures.append(f"train_gpt.py is not the script exported (sha256 {have[:12]}... but submission.json "
                                f"code_sha256 {str(want)[:12]}...): was it replaced?")
    elif want is None and script.is_file():
        rep.notes.append("submission.json has no code_sha256 (written by `pgolf record export`): the script's "
                         "identity is checked by its size only")
    seen: dict[str, str] = {}
    for f in rep.facts:
        if f.digest in seen:
            rep.failures.append(f"{f.path.name} is the same log as {seen[f.digest]}: each seed needs its own run")
        seen.setdefault(f.digest, f.path.name)
        if f.seed is not None and f.seed_in_log is not None and f.seed != f.seed_in_log:
            rep.failures.append(f"{f.path.name}: its name says seed {f.seed}, the log trained seed {f.seed_in_log}")
    scores = [(f.val_bpb, f.val_loss) for f in rep.facts]
    if len(scores) != len(set(scores)) and len(seen) == len(rep.facts):
        rep.notes.append("two logs report the very same score: check they are different runs")


def judge_record(rep: Report, sub: dict, profile: Profile, against: str | None) -> list[str]:
    """Why the folder is not a record under `profile` (empty: it is). Each reason names the profile field."""
    why: list[str] = []
    facts = rep.facts
    if len(facts) < profile.min_seeds:
        why.append(f"min_seeds: {len(facts)} seed log(s), a record needs at least {profile.min_seeds}")
    for f in facts:
        name = f.path.name
        if profile.val_tokens is None:
            why.append("val_tokens: the official validation token count of this variant is not known to the "
                       "profile; pass --profile FILE with it")
        elif f.val_tokens is None:
            why.append(f"val_tokens: {name} does not state the validation split's token count")
        elif f.val_tokens != profile.val_tokens:
            why.append(f"val_tokens: {name} validates on a split of {f.val_tokens:,} tokens, not the official "
                       f"{profile.val_tokens:,}")
        scored, whole = f.eval_tokens, profile.val_tokens or f.val_tokens
        if whole is not None and scored is not None and scored < whole - profile.val_tokens_slack:
            why.append(f"val_tokens: {name} evaluated {scored:,} target tokens, not the whole validation split "
                       f"({whole:,}; eval.max_tokens must be 0)")
        for key in ("tokenizer_sha256", "val_sha256"):
            want = getattr(profile, key)
            have = f.sums.get(key)
            if want is None:
                why.append(f"{key}: the official checksum is not known to the profile; pass --profile FILE with it")
            elif have is None:
                why.append(f"{key}: {name} states no {key} (pgolf logs it in `data_checksums:`)")
            elif have != want:
                why.append(f"{key}: {name} used {have[:12]}..., not the official {want[:12]}...")
        if f.train_time_s is None:
            why.append(f"train_seconds: {name} has no train_time")
        elif f.train_time_s > profile.train_seconds + (f.step_avg_ms or 0.0) / 1000.0:
            why.append(f"train_seconds: {name} trained {f.train_time_s:.1f} s, over {profile.train_seconds:g} s")
        if f.eval_time_s is None:
            why.append(f"eval_seconds: {name} has no eval_time")
        elif f.eval_time_s > profile.eval_seconds:
            why.append(f"eval_seconds: {name} evaluated in {f.eval_time_s:.1f} s, over {profile.eval_seconds:g} s")
        if f.eval_mode is None or f.eval_tokens is None:
            why.append(f"legality: {name} has no eval_ledger line (the evaluation mode and the ledger's count of "
                       "targets scored once)")
        if f.total_bytes is not None and f.total_bytes > profile.size_cap:
            why.append(f"size_cap: {name} totals {f.total_bytes:,} bytes, over {profile.size_cap:,}")
    hardware = str(sub.get("hardware", ""))
    if not re.search(profile.hardware, hardware):
        why.append(f"hardware: submission.json says {hardware or 'nothing'!r}, the profile needs {profile.hardware!r}")
    if against is None:
        why.append("significance: untested; pass --against BEST (the current record's BPB or folder)")
    elif rep.significance is not None:
        sig = rep.significance
        if sig.p_record is None:
            why.append(f"significance: {sig.n} seed(s) cannot be tested (a t-test needs at least two)")
        else:
            if not sig.record:
                why.append(f"significance: the README rule ({RECORD_MARGIN_NATS} nats better at p < {RECORD_P}) "
                           f"fails, p = {sig.p_record:.3g}")
            if not sig.p_practice < PRACTICE_P:
                why.append(f"significance: the audited progression rule (better at p < {PRACTICE_P}) fails, "
                           f"p = {sig.p_practice:.3g}")
    return list(dict.fromkeys(why))


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
