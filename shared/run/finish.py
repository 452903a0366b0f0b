"""The end of every training run, shared by both trainers: pack, re-evaluate, summarise.

    summary = finish_run(session, params, cfg, run_dir, dataset, train_stats, code_bytes=n)

1. pack the float32 canonical weights with the shared packer (`shared.artifact.format`);
   rank 0 writes `model.pgz` atomically;
2. unpack the same bytes and evaluate those weights with the session, in the
   configured `eval.mode` (flat, sliding or TTT: shared/eval/driver.py), so
   `q_val_*` is exactly what `pgolf eval model.pgz` reports; the clock of that
   evaluation is `eval_seconds`, and the log gives its share of the challenge's
   separate 600 s evaluation budget (on the machine it ran on). `val_*`, from
   the training loop's last validation, is flat (a run with no validation
   scores its final weights here, in `eval.mode`);
3. write `summary.json` (keys: `shared.run.rundir.SUMMARY_KEYS`, plus a few extras), after the
   log's closing lines in the challenge's format (`challenge_lines`: what `pgolf record check`
   and the challenge's reviewers read).

`train_stats` comes from the trainer: `val_loss`, `val_bpb` (the weights before
packing, evaluated on the same tokens), `steps`, `train_tokens`,
`train_seconds`, and anything else worth keeping in the summary.
`session.evaluate_params` returns totals over all ranks. An artifact over the cap is an
error (exit code 2) raised after everything is written, so nothing is lost.
Finite or refuse: weights with a NaN or an infinity, a scale that overflows
fp16 (an error naming the tensor) or a packed model that evaluates to a
non-finite loss stop the run with one line before model.pgz or summary.json
is written; the checkpoint stays, so nothing trained is lost.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.artifact.format import SIZE_CAP
from shared.core.config import Config
from shared.core.spec import check_finite, count_params
from shared.errors import PgolfError
from shared.eval.driver import EVAL_BUDGET_S, mode_name
from shared.run.backends import Session
from shared.run.rundir import ARTIFACT, RunDir


def finish_run(
    session: Session,
    params: dict[str, np.ndarray],
    cfg: Config,
    run_dir: RunDir,
    dataset,
    train_stats: dict[str, Any],
    *,
    code_bytes: int | Callable[[], int],
) -> dict[str, Any]:
    """Pack, evaluate the round-tripped weights, write summary.json (rank 0); return the summary.
    `code_bytes`: the size of the train_gpt.py a record of this run submits (the caller knows it), or a
    function giving it, called once the run is scored (a run that fails first never sizes its script)."""
    from shared.artifact import format as artifact

    name, rank = session.backend, session.rank
    stats = dict(train_stats)
    check_finite(params, f"{run_dir.path}: the trained weights")
    hessians = counts = None
    t0 = time.perf_counter()
    if cfg.quant.calibrates:  # calibration: the first training tokens
        from shared.artifact.calibration import calibration_batch, calibration_counts

        x, y = calibration_batch(dataset, cfg)
        counts = calibration_counts(x, y, cfg.model.vocab_size)
        if cfg.quant.gptq:   # GPTQ Hessians through the backend's own forward
            hessians = session.collect_hessians(params, x, show_progress=rank == 0)
    calib_s = time.perf_counter() - t0
    if "val_loss" not in stats or "val_bpb" not in stats:
        pre = session.evaluate_params(params, dataset.val_tokens, dataset.tables)
        stats["val_loss"], stats["val_bpb"] = pre.val_loss, pre.val_bpb

    # Rank 0 packs, with every core (the pack threads); the other ranks wait for its bytes without a
    # collective's timeout, then all evaluate those bytes. Only rank 0 writes the file.
    t1 = time.perf_counter()
    from shared.core.progress import Progress, activate

    blob = None
    if rank == 0:
        with Progress("pack: quantise", total=len(params), unit="tensors", enabled=run_dir.is_main,
                      min_s=5.0) as bar, activate(bar):
            blob = artifact.pack(params, cfg, hessians=hessians, token_counts=counts)
    blob = session.share_bytes(blob)
    t2 = time.perf_counter()
    # The challenge's 600 s cover training and whatever reads training data after it: the calibration
    # (GPTQ Hessians, token counts). Quantising and packing read none and may follow (docs/TIME-BUDGET.md,
    # #1868, #2014, #2117). train.calib_reserve_s is kept free for the calibration: say whether it was enough.
    quant_s = t2 - t1
    stats["calib_seconds"], stats["quant_seconds"] = round(calib_s, 3), round(quant_s, 3)
    reserve = cfg.train.calib_reserve_s
    run_dir.log(f"quantisation: calibration {calib_s:.1f}s + quantise and pack {quant_s:.1f}s; the time cap counts "
                f"the calibration (it reads training data), not the rest (train.calib_reserve_s={reserve:g})")
    # A reserve that was set and proved too small is worth a warning; with none (0: small configs, experiments)
    # the line above already gives the time.
    if cfg.quant.gptq and cfg.train.max_seconds > 0 and reserve > 0 and calib_s > reserve:
        run_dir.log(f"warning: train.calib_reserve_s={reserve:g} was too small: calibration took {calib_s:.1f}s, so "
                    f"training and calibration used {calib_s - reserve:.1f}s more than train.max_seconds="
                    f"{cfg.train.max_seconds:g}; raise train.calib_reserve_s to at least {math.ceil(calib_s)}")
    # finite, or an error before writing; written by the config's pipeline (the script carries only its decoder)
    _, q_params = artifact.unpack(blob, source=str(run_dir.path / ARTIFACT), pipeline=cfg.quant.compressor)
    # The artifact exists before its (long: TTT) evaluation starts, so a run stopped during evaluation
    # keeps it; it is taken back if the evaluation is not finite.
    if rank == 0 and run_dir.is_main:
        artifact.write_artifact(run_dir.path / ARTIFACT, blob)
    clock = time.perf_counter()
    q = session.evaluate_params(q_params, dataset.val_tokens, dataset.tables)
    eval_seconds = time.perf_counter() - clock
    for key, value in (("val_loss", stats["val_loss"]), ("val_bpb", stats["val_bpb"]),
                       ("q_val_loss", q.val_loss), ("q_val_bpb", q.val_bpb)):
        if not math.isfinite(float(value)):
            if rank == 0 and run_dir.is_main:
                (run_dir.path / ARTIFACT).unlink(missing_ok=True)
            raise PgolfError(f"{run_dir.path}: {key} is {value} (not finite); model.pgz and summary.json were not "
                             f"written, the checkpoint is kept: check it with `pgolf eval {run_dir.path}`")
    code = int(code_bytes() if callable(code_bytes) else code_bytes)
    seconds = float(stats.get("train_seconds", 0.0))
    tokens = int(stats.get("train_tokens", 0))
    summary: dict[str, Any] = {
        "backend": name,
        "val_loss": float(stats["val_loss"]),
        "val_bpb": float(stats["val_bpb"]),
        "q_val_loss": q.val_loss,
        "q_val_bpb": q.val_bpb,
        "artifact_bytes": len(blob),
        "code_bytes": code,
        "total_bytes": len(blob) + code,
        "artifact_sha256": hashlib.sha256(blob).hexdigest(),
        "params": count_params(cfg.model),
        "steps": int(stats.get("steps", 0)),
        "train_tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_second": float(stats.get("tokens_per_second", tokens / seconds if seconds > 0 else 0.0)),
        "eval_mode": mode_name(cfg.eval),
        "eval_seconds": eval_seconds,
        "eval_tokens": q.tokens,
        "eval_bytes": q.bytes,
        "size_cap": SIZE_CAP,
        "within_cap": len(blob) + code <= SIZE_CAP,
    }
    for k, v in stats.items():  # trainer extras (world_size, compute dtype, ...) without clobbering
        summary.setdefault(k, v)
    run_dir.log(
        f"packed {run_dir.path / ARTIFACT}: {len(blob):,} model bytes + {code:,} code bytes = "
        f"{len(blob) + code:,} of {SIZE_CAP:,} ({'within' if summary['within_cap'] else 'OVER'} the cap); "
        f"val_bpb {summary['val_bpb']:.4f} -> {q.val_bpb:.4f} after packing"
    )
    run_dir.log(f"evaluation ({summary['eval_mode']}): {eval_seconds:.1f}s, "
                f"{100 * eval_seconds / EVAL_BUDGET_S:.1f}% of the challenge's {EVAL_BUDGET_S:.0f} s evaluation "
                "budget on this machine")
    for line in challenge_lines(cfg, summary):
        run_dir.log(line)
    run_dir.write_summary(summary)
    if not summary["within_cap"]:
        raise PgolfError(
            f"{run_dir.path / ARTIFACT}: {summary['total_bytes']:,} bytes (model + code) is over the "
            f"{SIZE_CAP:,}-byte cap by {summary['total_bytes'] - SIZE_CAP:,}; the run is saved: repack it smaller "
            "with `pgolf pack --budget 16000000` or lower quant.* bit widths")
    return summary


def quantization_line(summary: dict[str, Any], train_ms: float) -> list[str]:
    """Calibration and quantisation times, and the training time the challenge counts: the steps plus the
    calibration (it reads training data), not quantising and packing (docs/TIME-BUDGET.md). `pgolf record
    check` reads the largest `train_time` of a log, so `total_train_time` is what it checks."""
    calib = 1000.0 * float(summary.get("calib_seconds", 0.0))
    quant = 1000.0 * float(summary.get("quant_seconds", 0.0))
    if calib + quant <= 0:
        return []
    return [f"calibration_time:{calib:.0f}ms quantization_time:{quant:.0f}ms total_train_time:{train_ms + calib:.0f}ms"]


def challenge_lines(cfg: Config, summary: dict[str, Any]) -> list[str]:
    """The closing lines of the challenge's reference train_gpt.py, with the same keys and number formats,
    so a pgolf log reads (and parses) like a record's: train time, sizes, the round-trip score."""
    steps, iterations = summary["steps"], cfg.train.iterations
    ms = 1000.0 * summary["train_seconds"]
    lines = []
    if summary.get("stop_reason") == "wallclock":
        lines.append(f"stopping_early: wallclock_cap train_time:{ms:.0f}ms step:{steps}/{iterations}")
    lines += [
        f"step:{steps}/{iterations} val_loss:{summary['val_loss']:.4f} val_bpb:{summary['val_bpb']:.4f} "
        f"train_time:{ms:.0f}ms step_avg:{ms / max(steps, 1):.2f}ms",
        *quantization_line(summary, ms),
        f"Serialized model pgz: {summary['artifact_bytes']} bytes",
        f"Code size: {summary['code_bytes']} bytes",
        f"Total submission size pgz: {summary['total_bytes']} bytes",
        f"final_pgz_roundtrip val_loss:{summary['q_val_loss']:.4f} val_bpb:{summary['q_val_bpb']:.4f} "
        f"eval_time:{1000.0 * summary['eval_seconds']:.0f}ms",
        f"final_pgz_roundtrip_exact val_loss:{summary['q_val_loss']:.8f} val_bpb:{summary['q_val_bpb']:.8f}",
    ]
    if "eval_tokens" in summary:  # legality evidence: the mode, and the ledger's count of targets scored once
        lines.append(f"eval_ledger: eval_mode:{summary.get('eval_mode', cfg.eval.mode)} "
                     f"eval_tokens:{summary['eval_tokens']} eval_bytes:{summary.get('eval_bytes', 0)} "
                     f"max_tokens:{cfg.eval.max_tokens} each_target_scored:once")
    return lines
