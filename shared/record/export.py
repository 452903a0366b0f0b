"""`pgolf record export`: finished runs -> one records folder the challenge accepts as a pull request.

    folder = export_record([run_dir, ...], name=..., author=..., github_id=..., track="10min_16mb", out="records")

writes `<out>/track_<track>/<YYYY-MM-DD>_<name>/` (built in a temporary folder,
then renamed into place; an existing folder is refused unless `overwrite`):

- `train_gpt.py`: shared/record/script.py's generated script for the runs' config;
- `submission.json`: the keys accepted records use (`SUBMISSION_KEYS`), scores
  from each run's summary.json (the packed round trip: `q_val_loss`, `q_val_bpb`);
- `train_seed<S>.log`: each run's train.log;
- `requirements.txt`: what the script imports;
- `README.md`: the runs' table, the config, what differs from the baseline,
  the commands to reproduce, raw and counted code sizes.

The runs must be one config (only the seed and data paths may differ: "a 3-seed
mean must come from one config"), with distinct seeds, and trained with the code
the script is generated from (each summary's `code_bytes` equals the script's
size; otherwise the logs would describe another script).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from shared.core.config import Config, load_config, to_dict, to_toml
from shared.errors import PgolfError
from shared.files import write_failed
from shared.record.stats import mean_std
from shared.run.rundir import CONFIG, LOG, SUMMARY, run_disagreements

TRACKS = ("10min_16mb", "non_record_16mb")
SUBMISSION_KEYS = ("author", "github_id", "name", "blurb", "date", "track", "val_loss", "val_bpb", "val_loss_std",
                   "val_bpb_std", "seeds", "seed_results", "bytes_total", "bytes_code", "hardware", "pytorch_version",
                   "code_sha256")
# Why each package is there (requirements.txt says so too).
REQUIREMENTS = (
    ("torch", "the model, DDP and the training step"),
    ("numpy", "the shared spec: parameter table, quantizers, BPB"),
    ("sentencepiece", "the tokenizer's byte table for BPB"),
    ("zstandard==0.25.0", "the artifact compressor (pinned: artifact bytes depend on its build)"),
)
BROTLI = ("brotli==1.2.1", "the artifact compressor of quant.compressor = brotli/group (pinned: bytes depend on it)")
SCRIPT_WRAPPER = "train_gpt.py's own compressed source (its first line)"
ZPAQ = ("zpaq==0.3.7", "the code groups' compressor of quant.compressor = group_zpaq (pinned: bytes depend on it)")
TRITON = ("triton", "the fused training kernels of train.fused_kernels = auto (CUDA torch wheels bring it; eager without)")


def _read_run(run: Path) -> tuple[Config, dict, str]:
    for name in (CONFIG, SUMMARY, LOG):
        if not (run / name).is_file():
            raise PgolfError(f"{run}: no {name}: pass a finished run folder written by `pgolf train` or `pgolf seeds`")
    try:
        summary = json.loads((run / SUMMARY).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PgolfError(f"{run / SUMMARY}: unreadable JSON ({e})") from None
    return load_config(run / CONFIG), summary, (run / LOG).read_text(encoding="utf-8", errors="replace")


# The summary.json figures an export copies; each must be a finite number (a diverged run has no score).
EXPORTED_NUMBERS = ("q_val_loss", "q_val_bpb", "total_bytes", "code_bytes", "steps", "train_seconds")


def check_summary(summary, path: Path) -> None:
    if not isinstance(summary, dict):
        raise PgolfError(f"{path}: expected a JSON object; re-run `pgolf train --resume {path.parent}` to rewrite it")
    for key in EXPORTED_NUMBERS:
        v = summary.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            what = "missing" if key not in summary else f"{v!r}, not a finite number"
            raise PgolfError(f"{path}: {key} is {what}; a run whose summary has no score cannot be exported "
                             f"(finish it with `pgolf train --resume {path.parent}`, or retrain it)")
    if "eval_seconds" in summary and not isinstance(summary["eval_seconds"], (int, float)):
        raise PgolfError(f"{path}: eval_seconds is {summary['eval_seconds']!r}, not a number")


def _same_config(cfg: Config) -> Config:
    return replace(cfg, data=replace(cfg.data, dir="", tokenizer=""), train=replace(cfg.train, seed=0))


def _log_value(log: str, key: str) -> str | None:
    m = re.search(rf"\b{re.escape(key)}=(\S+)", log)
    return m.group(1) if m else None


def differences(cfg: Config) -> list[str]:
    """`section.key = value` for every setting that differs from pgolf's defaults (the baseline)."""
    base, mine = to_dict(Config()), to_dict(cfg)
    return [f"{s}.{k} = {v!r}" for s, table in mine.items() if s != "data"
            for k, v in table.items() if base[s][k] != v and not (s == "train" and k == "seed")]


def requirements_txt(cfg: Config, torch_version: str) -> str:
    """requirements.txt: the packages the script imports with `cfg`, each with why; torch at the runs' version."""
    from shared.record.script import WRAPPER_PIN, generate

    needs = REQUIREMENTS + ((BROTLI,) if cfg.quant.compressor != "zstd" else ()) + \
        ((ZPAQ,) if cfg.quant.compressor == "group_zpaq" else ()) + ((TRITON,) if cfg.train.fused_kernels == "auto" else ())
    if generate(cfg).wrapper and not any(pkg == WRAPPER_PIN for pkg, _ in needs):   # the first line's decompressor
        needs += ((WRAPPER_PIN, SCRIPT_WRAPPER),)
    text = "".join(f"{pkg}  # {why}\n" for pkg, why in needs)
    if re.fullmatch(r"\d+\.\d+(\.\d+)?(\+\w+)?", torch_version):  # the version the runs used (float results depend on it)
        base = torch_version.split("+")[0]
        text = text.replace("torch  #", f"torch=={base}  # the runs used {torch_version};", 1)
    return text


def folder_name(name: str, date: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    if not slug:
        raise PgolfError(f"--name {name!r}: needs letters or digits (it names the records folder)")
    return f"{date}_{slug}"


def export_record(runs: list[Path], *, name: str, author: str, github_id: str, track: str = "10min_16mb",
                  out: Path = Path("records"), blurb: str | None = None, date: str | None = None,
                  overwrite: bool = False) -> Path:
    from shared.record.script import SCRIPT_NAME, baked_config, generate

    if track not in TRACKS:
        raise PgolfError(f"--track {track!r}: choose one of {', '.join(TRACKS)}")
    if not runs:
        raise PgolfError("pass at least one RUN_DIR (three seeds is usual)")
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise PgolfError(f"--date {date!r}: expected YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        raise PgolfError(f"--date {date!r}: not a calendar date (YYYY-MM-DD)") from None
    folder_name(name, date)  # a --name without letters: refused before the runs are read
    loaded = [(Path(r), *_read_run(Path(r))) for r in runs]
    cfg0 = loaded[0][1]
    for run, cfg, _, _ in loaded[1:]:
        if _same_config(cfg) != _same_config(cfg0):
            raise PgolfError(f"{run}: its config differs from {loaded[0][0]}'s beyond the seed and data paths; "
                             "a record's seeds must come from one config")
    seeds = [cfg.train.seed for _, cfg, _, _ in loaded]
    if len(set(seeds)) != len(seeds):
        raise PgolfError(f"the runs repeat a seed ({seeds}): each RUN_DIR must be a different seed")
    for run, _, summary, _ in loaded:
        check_summary(summary, run / SUMMARY)
        if problems := run_disagreements(run):  # the files must describe one finished run
            raise PgolfError(f"{run}: its files disagree: {'; '.join(problems)}; finish it with "
                             f"`pgolf train --resume {run}` (or retrain it) before exporting")
    gen = generate(cfg0)
    code = len(gen.data)
    for run, _, summary, _ in loaded:
        if int(summary.get("code_bytes", -1)) != code:
            raise PgolfError(f"{run}: trained with {summary.get('code_bytes')} bytes of counted code, but the "
                             f"train_gpt.py of this checkout is {code} bytes: export from the checkout that trained "
                             "it, or retrain")

    dest = Path(out) / f"track_{track}" / folder_name(name, date)
    if dest.exists() and not overwrite:
        raise PgolfError(f"{dest} exists: pass --overwrite to replace it, or another --name")

    results, logs = {}, {}
    for _, cfg, s, log in loaded:
        steps = int(s["steps"])
        results[str(cfg.train.seed)] = {
            "val_loss": round(float(s["q_val_loss"]), 8),
            "val_bpb": round(float(s["q_val_bpb"]), 8),
            "artifact_bytes": int(s["total_bytes"]),
            "steps": steps,
            "step_avg_ms": round(1000.0 * float(s["train_seconds"]) / max(steps, 1), 2),
            "eval_time_s": round(float(s.get("eval_seconds", 0.0)), 1),
        }
        logs[f"train_seed{cfg.train.seed}.log"] = log
    losses = [r["val_loss"] for r in results.values()]
    bpbs = [r["val_bpb"] for r in results.values()]
    s0, log0 = loaded[0][2], loaded[0][3]
    world = int(s0.get("world_size", 1))
    hardware = f"{world}x{s0['device']}" if s0.get("device") else str(s0.get("backend", "?"))
    torch_version = _log_value(log0, "torch") or (f"n/a (trained with {s0.get('backend')})")
    mean_loss, std_loss = mean_std(losses)
    mean_bpb, std_bpb = mean_std(bpbs)
    n = len(results)
    blurb = blurb or (f"pgolf {cfg0.model.num_layers}x{cfg0.model.model_dim}, vocab {cfg0.model.vocab_size}, "
                      f"{s0.get('params', 0):,} parameters; {n}-seed mean of the packed round trip.")
    submission = {
        "author": author, "github_id": github_id, "name": name, "blurb": blurb, "date": date, "track": track,
        "val_loss": round(mean_loss, 8), "val_bpb": round(mean_bpb, 8),
        "val_loss_std": round(std_loss, 8), "val_bpb_std": round(std_bpb, 8),
        "seeds": [int(s) for s in results], "seed_results": results,
        "bytes_total": max(r["artifact_bytes"] for r in results.values()), "bytes_code": code,
        "hardware": hardware, "pytorch_version": torch_version,
        "code_sha256": hashlib.sha256(gen.data).hexdigest(),  # `record check` refuses a swapped script
    }
    readme = _readme(submission, cfg0, baked_config(cfg0), gen, loaded)
    requirements = requirements_txt(cfg0, torch_version)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / SCRIPT_NAME).write_bytes(gen.data)
        (tmp / "submission.json").write_text(json.dumps(submission, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        (tmp / "requirements.txt").write_text(requirements, encoding="utf-8")
        for fname, text in logs.items():
            (tmp / fname).write_text(text, encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except OSError as e:  # a full disk, a read-only folder: name the records folder, not a temp file
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(dest, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _reproduce(sub: dict, cfg: Config, baked: Config, loaded) -> str:
    """The Reproduce section: the FineWeb commands, or, for runs on other data (the sample), how to rerun
    them on that data as they were and how a record attempt would run on FineWeb instead."""
    run_data, vocab = Path(cfg.data.dir).name, cfg.model.vocab_size
    tok = Path(cfg.data.tokenizer).name
    fetch = (f"# data, from the repository root: python3 data/cached_challenge_fineweb.py --variant sp{vocab}\n"
             f"# (or: pgolf data download --variant sp{vocab}); then, in this folder: ln -s ../../../data data")
    if run_data.startswith("fineweb"):
        data_env = "" if run_data == Path(baked.data.dir).name else (  # a FineWeb variant: say where it goes
            f"DATA_PATH=./data/datasets/{run_data} TOKENIZER_PATH=./data/tokenizers/{tok} ")
        runs = "\n".join(f"{data_env}SEED={seed} RUN_ID=train_seed{seed} torchrun --standalone --nproc_per_node=8 "
                         "train_gpt.py" for seed in sub["seeds"])
        return f"```bash\npip install -r requirements.txt\n{fetch}\n{runs}\n```\n"
    world = int(loaded[0][2].get("world_size", 1))
    build = ("pgolf data sample --out data" if run_data.startswith("sample_")
             else f"# build {run_data} with the pgolf command that made it (pgolf data build ...)")
    again = "\n".join(f"DATA_PATH=./data/datasets/{run_data} TOKENIZER_PATH=./data/tokenizers/{tok} SEED={seed} "
                       f"RUN_ID=train_seed{seed} torchrun --standalone --nproc_per_node={world} train_gpt.py"
                       for seed in sub["seeds"])
    record = "\n".join(f"SEED={seed} RUN_ID=train_seed{seed} torchrun --standalone --nproc_per_node=8 train_gpt.py"
                        for seed in sub["seeds"])
    return f"""These runs trained and were scored on `{run_data}`, not on the challenge's FineWeb data: their scores
are not comparable with the leaderboard's. To rerun them as they were ({world} process(es), as logged):

```bash
pip install -r requirements.txt
{build}   # in this folder: data/datasets/{run_data}, data/tokenizers/{tok}
{again}
```

To train this config on FineWeb instead (what a record attempt runs, on 8xH100):

```bash
{fetch}
{record}
```
"""


def _readme(sub: dict, cfg: Config, baked: Config, gen, loaded) -> str:
    rows = "\n".join(f"| {seed} | {r['val_loss']:.8f} | {r['val_bpb']:.8f} | {r['artifact_bytes']:,} | {r['steps']:,} "
                     f"| {r['step_avg_ms']:.2f} | {r['eval_time_s']:.1f} |" for seed, r in sub["seed_results"].items())
    diffs = "\n".join(f"- `{d}`" for d in differences(cfg)) or "- none: pgolf's defaults (the naive baseline)"
    runs = ", ".join(f"`{run.name}`" for run, *_ in loaded)
    return f"""# {sub['name']}

{sub['blurb']}

**val_bpb {sub['val_bpb']:.8f}** (std {sub['val_bpb_std']:.8f}), val_loss {sub['val_loss']:.8f} (std {sub['val_loss_std']:.8f}),
mean of {len(sub['seeds'])} seed(s) on {sub['hardware']}, PyTorch {sub['pytorch_version']}. Largest artifact:
{sub['bytes_total']:,} bytes (model + code) of 16,000,000.

| seed | val_loss | val_bpb | artifact bytes | steps | step avg (ms) | eval (s) |
|---|---|---|---|---|---|---|
{rows}

Scores are the packed artifact's round trip (`final_pgz_roundtrip_exact` in each log).

## What this run changes from the baseline

{diffs}

The full resolved config is baked into `train_gpt.py`; here it is:

```toml
{to_toml(baked).rstrip()}
```

## Reproduce

""" + _reproduce(sub, cfg, baked, loaded) + f"""
Each run writes `logs/<RUN_ID>/` (train.log, model.pgz, summary.json) and ends with the
challenge's lines (`final_pgz_roundtrip ... val_bpb:...`, `Total submission size pgz: N bytes`).
Other environment variables, as in the reference script: ITERATIONS, MAX_WALLCLOCK_SECONDS,
WARMUP_STEPS, WARMDOWN_ITERS, TRAIN_BATCH_TOKENS, TRAIN_SEQ_LEN, VAL_LOSS_EVERY, TRAIN_LOG_EVERY.

## Code

`train_gpt.py` was generated by pgolf (`pgolf record export`) from its PyTorch backend and the
{len(gen.modules)} modules a training run imports: {gen.raw_bytes:,} bytes of source, {gen.minified_bytes:,}
minified, counted as the {sub['bytes_code']:,}-byte {gen.form} file. It imports torch, numpy,
sentencepiece, zstandard and brotli (the file's own compressed form; the brotli/group pipelines;
requirements.txt says why) and reads nothing else.
Runs exported: {runs}.
"""
