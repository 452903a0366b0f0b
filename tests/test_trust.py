"""Trustworthy runs and submissions (docs/RELIABILITY.md "Trust"): non-finite scores are errors, bad input
fails up front in one line, nothing finished is lost, a run folder's files agree, `record check` judges
records strictly, and long phases report progress.

One section per defect class; each test drives the real command or function and checks what a user sees.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.core.config import Config, ModelConfig, to_toml
from shared.core.rundir import ARTIFACT, CHECKPOINT, CONFIG, LOG, SUMMARY, save_checkpoint
from shared.core.spec import init_params
from shared.errors import PgolfError
from tests.conftest import tiny_config
from tests.test_faults import one_error_line

REPO = Path(__file__).resolve().parents[1]


def _ckpt(tmp_path: Path) -> Path:
    cfg = tiny_config()
    run = tmp_path / "ckpt"
    run.mkdir(exist_ok=True)
    return save_checkpoint(run, init_params(cfg.model, 1), cfg, step=5)


# ============================================================================ 1. non-finite scores are errors

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_ledger_refuses_a_non_finite_score_instead_of_skipping_it(bad):
    """A diverged TTT evaluation used to sum NaN chunks as 0 nats and report a better BPB."""
    from shared.data.bpb import ByteTables
    from shared.eval.ledger import Ledger

    tokens = np.arange(1, 33, dtype=np.uint16) % 7 + 4
    tables = ByteTables(np.ones(16, dtype=np.int16), np.zeros(16, dtype=bool), np.ones(16, dtype=bool))
    ledger = Ledger(tokens, 1, 17, tables)
    ledger.record(1, np.full(8, 2.0))
    ledger.record(9, np.array([2.0, 2.0, bad, 2.0, 2.0, 2.0, 2.0, 2.0]))
    ledger.settle(1, 17)
    with pytest.raises(PgolfError, match="evaluation diverged"):
        ledger.result()
    ok = Ledger(tokens, 1, 17, tables)
    ok.record(1, np.full(16, 2.0))
    assert ok.result().nats == 32.0


def test_a_flat_evaluation_that_diverges_reports_no_score():
    from types import SimpleNamespace

    from shared.data.bpb import EvalResult
    from shared.eval.driver import run_eval

    session = SimpleNamespace(evaluate=lambda tokens, tables: EvalResult(float("nan"), 10, 40))
    with pytest.raises(PgolfError, match="diverged"):
        run_eval(session, Config(), np.zeros(10, dtype=np.uint16), None)


@pytest.mark.parametrize("key", ["model.mlp_mult", "model.logit_softcap", "model.tied_embed_init_std",
                                 "model.qk_gain_init", "model.rope_base", "optim.muon_wd", "quant.min_scale",
                                 "quant.embed_freq_floor", "quant.clip_k", "eval.lora_alpha", "eval.ttt_lr",
                                 "train.max_seconds"])
@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_infinity_is_refused_for_every_float_key_naming_it(capsys, tmp_path, key, value):
    line = one_error_line(capsys, "train", "--set", f"{key}={value}", "--out", str(tmp_path / "run"))
    assert f"{key} must be a finite number" in line


def test_every_float_key_of_the_config_refuses_infinity():
    """Not only the keys listed above: each float field of each section, however the config was built."""
    import dataclasses

    from shared.core.config import ALLOW_INFINITY

    cfg = Config()
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            if isinstance(getattr(sub, f.name), float) and f"{section.name}.{f.name}" not in ALLOW_INFINITY:
                bad = replace(cfg, **{section.name: replace(sub, **{f.name: float("inf")})})
                with pytest.raises(PgolfError, match=f"{section.name}.{f.name} must be a finite number"):
                    bad.validate()
    with pytest.raises(PgolfError, match="model.num_layers = 18446744073709551616 is out of range"):
        Config(model=ModelConfig(num_layers=2**64)).validate()


# ============================================================================ 1b. one line, up front

def test_tracebacks_of_the_battery_are_one_line(capsys, tmp_path, tiny_data):
    ckpt = _ckpt(tmp_path)
    out = str(tmp_path / "run")
    cases = [
        (["train", "--set", "model.mlp_mult=inf", "--out", out], "model.mlp_mult must be a finite number"),
        (["train", "--set", "train.seed=18446744073709551616", "--out", out], "train.seed = 18446744073709551616 is out of range"),
        (["train", "--set", "train.seed=99999999999999999999", "--out", out], "out of range"),
        (["seeds", "--config", "configs/small.toml", "--seeds", "99999999999999999999", "--out", out], "out of range"),
        (["seeds", "--config", "configs/small.toml", "--seeds", "1,,2", "--out", out], "without empty items"),
        (["seeds", "--config", "configs/small.toml", "--seeds", "1,2", "--against", "nan", "--out", out],
         "positive, finite BPB"),
        (["seeds", "--config", "configs/small.toml", "--seeds", "1,2", "--against", "abc", "--out", out],
         "neither a BPB number nor a records folder"),
        (["record", "check", str(tmp_path), "--against", "inf"], "positive, finite BPB"),
        (["eval", str(ckpt), "--set", "model.num_layers=3"], "--set model.num_layers: the [model] section comes from"),
        (["train", "--set", "eval.mode=sliding", "--set", "eval.stride=2000", "--out", out], "eval.stride=2000 must not exceed"),
        (["eval", str(ckpt), "--set", "eval.mode=sliding", "--set", "eval.stride=65"], "eval.stride=65 must not exceed"),
        (["gpu-check", "--seconds", "inf"], "--seconds must be in (0, 3600]"),
    ]
    for argv, needle in cases:
        assert needle in one_error_line(capsys, *argv), argv


def test_a_torch_file_given_as_mlx_ref_is_one_line(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    pt = tmp_path / "final_model.pt"
    torch.save({"tok_emb.weight": torch.zeros(4, 4)}, pt)
    line = one_error_line(capsys, "import", str(pt), "--from", "mlx-ref", "--config", "configs/small.toml",
                          "-o", str(tmp_path / "imp" / "checkpoint.safetensors"))
    assert "not an .npz of arrays (a torch .pt file? import it with --from torch-ref)" in line


@pytest.mark.parametrize("manifest,needle", [
    ({"files": 5}, "expected files to be a list"),
    ({"files": [3]}, "expected files[0] to be an object"),
    ({"files": [{"name": 7, "tokens": 1}]}, "expected files[0].name to be a string"),
    ({"tokenizer": "x"}, "expected tokenizer to be an object"),
    ({"tokens": []}, "expected tokens to be an object"),
])
def test_a_manifest_of_the_wrong_shape_is_one_line(capsys, tmp_path, tiny_data, manifest, needle):
    data = tmp_path / "data"
    shutil.copytree(tiny_data.data_dir, data)
    (data / "manifest.json").chmod(0o644)
    (data / "manifest.json").write_text(json.dumps(manifest))
    line = one_error_line(capsys, "eval", str(_ckpt(tmp_path)), "--data", str(data), "--tokenizer",
                          str(tiny_data.tokenizer))
    assert "manifest.json has the wrong shape" in line and needle in line


def _fake_run(root: Path, name: str, seed: int, **summary) -> Path:
    from shared.record.script import generate

    run = root / name
    run.mkdir(parents=True)
    cfg = tiny_config(seed=seed)
    (run / CONFIG).write_text(to_toml(cfg))
    (run / LOG).write_text("x\n")
    full = {"code_bytes": len(generate(cfg).data), "q_val_loss": 2.0, "q_val_bpb": 1.2, "total_bytes": 100,
            "steps": 8, "train_seconds": 1.0}
    full.update(summary)
    (run / SUMMARY).write_text(json.dumps({k: v for k, v in full.items() if v is not ...}))
    return run


@pytest.mark.parametrize("summary,needle", [
    ({"q_val_bpb": None}, "q_val_bpb is None, not a finite number"),
    ({"steps": ...}, "steps is missing"),
    ({"q_val_loss": "2.0"}, "q_val_loss is '2.0'"),
])
def test_export_of_a_summary_without_a_score_is_one_line(capsys, tmp_path, summary, needle):
    run = _fake_run(tmp_path, "run", 1, **summary)
    line = one_error_line(capsys, "record", "export", str(run), "--name", "x", "--author", "a", "--github-id", "g",
                          "--out", str(tmp_path / "rec"))
    assert needle in line


def test_export_and_check_refuse_nan_and_an_impossible_date(capsys, tmp_path):
    run = _fake_run(tmp_path, "run", 1)
    (run / SUMMARY).write_text((run / SUMMARY).read_text().replace("1.2", "NaN"))
    assert "q_val_bpb is nan" in one_error_line(capsys, "record", "export", str(run), "--name", "x", "--author", "a",
                                                "--github-id", "g", "--out", str(tmp_path / "rec"))
    assert "not a calendar date" in one_error_line(capsys, "record", "export", str(tmp_path / "missing"), "--name",
                                                   "x", "--author", "a", "--github-id", "g", "--date", "2026-13-45")
    from tests.test_record import _challenge_folder

    folder = _challenge_folder(tmp_path / "rec")
    sub = json.loads((folder / "submission.json").read_text())
    (folder / "submission.json").write_text(json.dumps(sub).replace(str(sub["val_bpb"]), "NaN"))
    assert "val_bpb must be a number, got nan" in one_error_line(capsys, "record", "check", str(folder))


def test_seeds_into_a_used_out_names_overwrite_before_training(capsys, tmp_path, tiny_data):
    (tmp_path / "s" / "seed2").mkdir(parents=True)
    (tmp_path / "s" / "seed2" / CONFIG).write_text("")
    cfg = tiny_config()
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)))
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    line = one_error_line(capsys, "seeds", "--config", str(tmp_path / "c.toml"), "--seeds", "1,2",
                          "--out", str(tmp_path / "s"))
    assert "pass --overwrite" in line and not (tmp_path / "s" / "seed1").exists()  # seed 1 never started


def test_pack_into_an_unwritable_folder_fails_before_packing(capsys, tmp_path):
    """A read-only folder (or, as root, a path under a file) for --write-config: refused before the artifact."""
    ckpt = _ckpt(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    (tmp_path / "afile").write_text("")
    root = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes read-only folders
    target = tmp_path / "afile" / "fit.toml" if root else ro / "fit.toml"
    try:
        line = one_error_line(capsys, "pack", str(ckpt), "--backend", "torch", "-o", str(tmp_path / "m.pgz"),
                              "--budget", "16000000", "--write-config", str(target))
        assert "--write-config" in line and "cannot be written" in line
        assert not (tmp_path / "m.pgz").exists()
    finally:
        ro.chmod(0o755)
