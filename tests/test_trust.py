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
from shared.core.spec import init_params
from shared.errors import PgolfError
from shared.run.rundir import ARTIFACT, CHECKPOINT, CONFIG, LOG, SUMMARY, save_checkpoint
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
        run_eval(session, Config(), np.zeros(2049, dtype=np.uint16), None)


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


# ============================================================================ 2. nothing lost

def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_interrupted_rebuild_leaves_the_old_dataset_whole(tmp_path, monkeypatch):
    """Ctrl-C in the middle of encoding a rebuild (after the new tokenizer was trained): the old shards,
    manifest and tokenizer are all still there, and nothing half-built is left beside them."""
    from shared.data import build
    from tests.conftest import stdlib_docs

    docs = stdlib_docs(60_000)
    data_dir, tok = build.build_dataset(docs, tmp_path, vocab=400, val_docs=4, name="t")
    before = _tree(tmp_path)

    def interrupted(*args, **kw):
        yield from ()
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_map_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.build_dataset(docs[::-1], tmp_path, vocab=400, val_docs=5, name="t")
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets", "tokenizers"]  # no staging folder left
    monkeypatch.undo()
    # A finished rebuild replaces the dataset: a new manifest and shards, no shard of the old build left.
    new_dir, new_tok = build.build_dataset(docs[::-1], tmp_path, vocab=400, val_docs=5, name="t", shard_tokens=5000)
    assert (new_dir, new_tok) == (data_dir, tok)
    assert json.loads((new_dir / "manifest.json").read_text())["docs"]["val"] == 5
    from shared.data.dataset import open_dataset

    open_dataset(new_dir, new_tok, 400)


# ============================================================================ 3. one run folder, files that agree

def _run_cfg(tiny_data, **train):
    cfg = tiny_config(**{"iterations": 4, "checkpoint_every": 2, **train})
    return replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)),
                   quant=replace(cfg.quant, gptq=True, calib_tokens=512, budget_tokens=256, gptq_block=32))


def _pgolf(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from shared.cli import main; main()", *argv], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=timeout)


# The phase of `pgolf train` at which the process is killed with SIGKILL (no handler runs).
KILL_AT = """
import os, signal, sys
phase = sys.argv.pop(1)

def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

if phase == "calibration":
    import shared.artifact.calibration as m; m.calibration_batch = die
elif phase == "pack":
    import shared.artifact.format as m; m.pack = die
elif phase == "eval":
    import shared.eval.driver as m; m.run_eval = die
elif phase == "summary":      # model.pgz written, summary.json not yet
    import shared.run.rundir as m; m.RunDir.write_summary = die
elif phase == "train":
    import shared.run.loop as m
    step = m.RunDir.log_step
    def log_step(self, s, *a, **k):
        if s == 3:
            die()
        return step(self, s, *a, **k)
    m.RunDir.log_step = log_step
from shared.cli import main
main()
"""


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """The uninterrupted run every killed one is compared with: (config file, its model.pgz bytes)."""
    pytest.importorskip("mlx.core")
    from shared.cli import main

    root = tmp_path_factory.mktemp("straight")
    (root / "c.toml").write_text(to_toml(_run_cfg(tiny_data)))
    main(["train", "--backend", "mlx", "--config", str(root / "c.toml"), "--out", str(root / "a")])
    return root / "c.toml", (root / "a" / ARTIFACT).read_bytes()


@pytest.mark.mlx
@pytest.mark.parametrize("phase", ["train", "calibration", "pack", "eval", "summary"])  # 2-3 s each
def test_kill_9_at_any_phase_then_resume_finishes_with_files_that_agree(straight_run, tmp_path, capsys, phase):
    """SIGKILL in training, calibration, packing, evaluation or between the artifact and the summary; then
    `--resume` takes over the stale lock (saying so) and finishes: checkpoint, resume state, model.pgz,
    summary.json and the log's last segment describe one step and one artifact, the artifact of the
    uninterrupted run, and `record export` accepts the folder (it refused it before)."""
    from shared.cli import main
    from shared.run.rundir import LOCK, run_disagreements

    config, artifact = straight_run
    run = tmp_path / "b"
    killed = subprocess.run([sys.executable, "-c", KILL_AT, phase, "train", "--backend", "mlx", "--config",
                             str(config), "--out", str(run)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run / LOCK).is_file() and run_disagreements(run)
    export = ["record", "export", str(run), "--name", "x", "--author", "a", "--github-id", "g", "--out",
              str(tmp_path / "rec"), "--date", "2026-12-01"]
    line = one_error_line(capsys, *export)
    assert "disagree" in line or "summary.json" in line, line

    main(["train", "--backend", "mlx", "--resume", str(run)])
    assert "taking over the lock left by process" in capsys.readouterr().err
    assert run_disagreements(run) == [] and not (run / LOCK).exists()
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["steps"] == 4 and (run / ARTIFACT).read_bytes() == artifact
    main(export)


@pytest.mark.mlx
def test_resume_of_a_finished_run_does_nothing_unless_given_a_new_cap(tiny_data, tmp_path, capsys):
    pytest.importorskip("mlx.core")
    from shared.cli import main
    from shared.run.rundir import run_disagreements

    cfg = _run_cfg(tiny_data, iterations=3)
    cfg = replace(cfg, quant=replace(cfg.quant, gptq=False))
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    run = tmp_path / "run"
    main(["train", "--backend", "mlx", "--config", str(tmp_path / "c.toml"), "--out", str(run)])
    files = _tree(run)
    capsys.readouterr()
    main(["train", "--backend", "mlx", "--resume", str(run)])
    out = capsys.readouterr().out
    assert "is a finished run: step 3, stopped by train.iterations=3" in out and "--set train.iterations=6" in out
    assert _tree(run) == files  # not one byte changed: no extra step, no second packing
    main(["train", "--backend", "mlx", "--resume", str(run), "--set", "train.iterations=5"])
    assert json.loads((run / SUMMARY).read_text())["steps"] == 5 and run_disagreements(run) == []


@pytest.mark.mlx
def test_a_resume_whose_clock_is_spent_trains_no_step_past_the_cap(tiny_data, tmp_path):
    """The wallclock cap reached, killed while finishing: the resume finishes at the same step."""
    pytest.importorskip("mlx.core")
    from shared.run.backends import get_backend
    from shared.run.loop import Hooks

    cfg = _run_cfg(tiny_data, iterations=1000, max_seconds=1.0, checkpoint_every=0)
    cfg = replace(cfg, quant=replace(cfg.quant, gptq=False))
    backend = get_backend("mlx")
    import shared.run.finish as finish

    def crash(*a, **k):
        raise KeyboardInterrupt

    real, finish.finish_run = finish.finish_run, crash
    try:
        with pytest.raises(KeyboardInterrupt):
            backend.train(cfg, tmp_path / "run")
    finally:
        finish.finish_run = real
    from shared.run.rundir import saved_step

    step = saved_step(tmp_path / "run" / CHECKPOINT)
    summary = backend.train(cfg, tmp_path / "run", resume=True, hooks=Hooks(before_step=lambda s, _: pytest.fail(
        f"trained step {s + 1} past the spent cap")))
    assert summary["steps"] == step


def test_pack_onto_a_finished_runs_artifact_needs_overwrite_and_keeps_the_summary_honest(capsys, tmp_path):
    import hashlib

    from shared.cli import main

    ckpt = _ckpt(tmp_path)
    run = ckpt.parent
    main(["pack", str(ckpt), "--backend", "torch", "-o", str(run / ARTIFACT)])
    old = (run / ARTIFACT).read_bytes()
    (run / SUMMARY).write_text(json.dumps({"q_val_bpb": 1.5, "q_val_loss": 3.0, "steps": 5,
                                           "artifact_sha256": hashlib.sha256(old).hexdigest(),
                                           "artifact_bytes": len(old)}))
    line = one_error_line(capsys, "pack", str(ckpt), "--backend", "torch", "-o", str(run / ARTIFACT),
                          "--set", "quant.attn=int4")
    assert "pass --overwrite" in line and (run / ARTIFACT).read_bytes() == old
    main(["pack", str(ckpt), "--backend", "torch", "-o", str(run / ARTIFACT), "--set", "quant.attn=int4",
          "--overwrite"])
    new = (run / ARTIFACT).read_bytes()
    summary = json.loads((run / SUMMARY).read_text())
    assert new != old and summary["artifact_sha256"] == hashlib.sha256(new).hexdigest()
    assert summary["artifact_bytes"] == len(new) and summary["q_val_bpb"] is None and summary["q_val_loss"] is None


def test_a_float_key_beyond_float32_is_refused_naming_it(capsys, tmp_path):
    """1e300 is finite but overflows where a backend casts it (torch's Adam raised a traceback)."""
    line = one_error_line(capsys, "train", "--set", "optim.scalar_lr=1e300", "--out", str(tmp_path / "run"))
    assert "optim.scalar_lr = 1e+300 is out of range" in line


# ============================================================================ 4. record check judges records

PROFILE_FIELDS = ("val_tokens", "tokenizer_sha256", "val_sha256", "hardware", "min_seeds", "train_seconds",
                  "eval_seconds", "size_cap")


@pytest.fixture(scope="module")
def three_seed_folder(tiny_data, tmp_path_factory):
    """Three tiny MLX seeds evaluated on the whole (tiny) validation split, exported; and the stand-in
    profile they meet: the tiny data's token count and checksums, this machine's hardware string."""
    pytest.importorskip("mlx.core")
    from shared.cli import main
    from shared.data.manifest import data_checksums
    from shared.data.shards import load_val_tokens

    root = tmp_path_factory.mktemp("record")
    cfg = tiny_config(iterations=2)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)),
                  eval=replace(cfg.eval, max_tokens=0))
    (root / "c.toml").write_text(to_toml(cfg))
    try:
        main(["seeds", "--backend", "mlx", "--config", str(root / "c.toml"), "--seeds", "1,2,3", "--out", str(root / "s")])
    except SystemExit as e:
        assert not e.code
    try:
        main(["record", "export", *(str(root / "s" / f"seed{s}") for s in (1, 2, 3)), "--name", "tiny", "--author",
              "a", "--github-id", "g", "--out", str(root / "rec"), "--date", "2026-12-01"])
    except SystemExit as e:
        assert not e.code
    folder = root / "rec" / "track_10min_16mb" / "2026-12-01_tiny"
    sub = json.loads((folder / "submission.json").read_text())
    profile = {"val_tokens": int(load_val_tokens(tiny_data.data_dir).size - 1),
               **data_checksums(tiny_data.data_dir, tiny_data.tokenizer),
               "hardware": "^" + sub["hardware"].replace("(", r"\(").replace(")", r"\)") + "$",
               "min_seeds": 3, "train_seconds": 600.0, "eval_seconds": 600.0, "size_cap": 16_000_000}
    return folder, profile


def _check(capsys, folder: Path, *extra: str) -> tuple[int, str]:
    from tests.test_record import run_pgolf

    return run_pgolf(capsys, "record", "check", str(folder), *extra)


def _profile(tmp_path: Path, profile: dict, **change) -> str:
    path = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}.json"
    path.write_text(json.dumps({k: v for k, v in {**profile, **change}.items() if v is not ...}))
    return str(path)


@pytest.mark.mlx
def test_a_folder_that_meets_the_profile_is_a_record_and_each_missed_field_is_named(three_seed_folder, tmp_path,
                                                                                     capsys):
    folder, profile = three_seed_folder
    code, out = _check(capsys, folder, "--profile", _profile(tmp_path, profile), "--against", "9.0")
    assert code == 0 and "OK: a record submission" in out, out
    wrong = {"val_tokens": profile["val_tokens"] + 10_000, "tokenizer_sha256": "0" * 64, "val_sha256": "1" * 64,
             "hardware": "^8x.*H100", "min_seeds": 4, "train_seconds": 1e-6, "eval_seconds": 1e-9, "size_cap": 1000}
    assert set(wrong) == set(PROFILE_FIELDS)
    for key, value in wrong.items():
        code, out = _check(capsys, folder, "--profile", _profile(tmp_path, profile, **{key: value}), "--against", "9.0")
        reasons = [line for line in out.splitlines() if "NOT RECORD:" in line]
        assert code == 1 and "NON-RECORD SUBMISSION" in out, (key, out)
        assert reasons and all(f"NOT RECORD: {key}:" in r for r in reasons), (key, reasons)
    for key in ("val_tokens", "tokenizer_sha256", "hardware", "min_seeds"):
        code, out = _check(capsys, folder, "--profile", _profile(tmp_path, profile, **{key: ...}))
        assert code == 2 and f"no {key!r}" in out
    # Against a better best, both significance rules fail and say so.
    code, out = _check(capsys, folder, "--profile", _profile(tmp_path, profile), "--against", "0.5")
    assert code == 1 and "README rule" in out and "audited progression rule" in out


@pytest.mark.mlx
def test_the_folder_of_the_issue_is_a_non_record_with_each_reason(tiny_data, tmp_path, capsys):
    """One seed, evaluated on the first tokens only, on this CPU, default (official) profile: not OK."""
    pytest.importorskip("mlx.core")
    from shared.cli import main

    cfg = tiny_config(iterations=2)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)))
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    main(["train", "--backend", "mlx", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    main(["record", "export", str(tmp_path / "run"), "--name", "one", "--author", "a", "--github-id", "g",
          "--out", str(tmp_path / "rec"), "--date", "2026-12-01"])
    folder = tmp_path / "rec" / "track_10min_16mb" / "2026-12-01_one"
    code, out = _check(capsys, folder)
    assert code == 1 and "structural checks: pass" in out and "NON-RECORD SUBMISSION" in out
    for field_ in ("min_seeds", "val_tokens", "tokenizer_sha256", "val_sha256", "hardware", "significance"):
        assert f"NOT RECORD: {field_}:" in out, field_
    assert "evaluated 2,048 target tokens, not the whole validation split" in out
    readme = (folder / "README.md").read_text()  # its data is not FineWeb, and the README says how to rerun it
    assert "not on the challenge's FineWeb data" in readme
    assert ("DATA_PATH=./data/datasets/tiny_sp512 TOKENIZER_PATH=./data/tokenizers/tiny_512_bpe.model SEED=1337 "
            "RUN_ID=train_seed1337 torchrun --standalone --nproc_per_node=1 train_gpt.py") in readme
    assert "SEED=1337 RUN_ID=train_seed1337 torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme
    data = json.loads((folder / "submission.json").read_text())
    (folder / "submission.json").write_text(json.dumps({**data, "track": "non_record_16mb"}))
    code, out = _check(capsys, folder)  # declared a non-record submission: its structure is what is checked
    assert code == 0 and "OK: a non-record submission" in out


@pytest.mark.mlx
def test_check_catches_a_swapped_script_and_a_log_given_twice(three_seed_folder, tmp_path, capsys):
    folder, profile = three_seed_folder
    copy = tmp_path / "track_10min_16mb" / folder.name
    shutil.copytree(folder, copy)
    script = copy / "train_gpt.py"
    text = script.read_bytes()
    script.write_bytes(text[:-20] + b"#" * 19 + b"\n")  # another script of the same size
    assert len(script.read_bytes()) == len(text)
    code, out = _check(capsys, copy, "--profile", _profile(tmp_path, profile), "--against", "9.0")
    assert code == 1 and "train_gpt.py is not the script exported" in out
    script.write_bytes(text)
    shutil.copy(copy / "train_seed1.log", copy / "train_seed2.log")
    code, out = _check(capsys, copy, "--profile", _profile(tmp_path, profile), "--against", "9.0")
    assert code == 1 and "train_seed2.log is the same log as train_seed1.log" in out
    assert "its name says seed 2, the log trained seed 1" in out


# ============================================================================ 6. short runs behave

@pytest.mark.parametrize("seconds,step_s", [(20.0, 3.0), (30.0, 0.6), (120.0, 0.6), (600.0, 0.3)])
def test_small_tomls_schedule_scales_with_the_length_of_the_run(seconds, step_s):
    """configs/small.toml at any length, on a fast or a busy CPU: full LR for the first 70% of the run,
    then a linear warmdown to 0 at the end (a 20 s run on a busy CPU used to start in the warmdown)."""
    from shared.core.config import load_config
    from shared.core.schedule import lr_scale

    t = load_config(REPO / "configs" / "small.toml", [f"train.max_seconds={seconds}"]).train
    at = [(int(f * seconds / step_s), f * seconds) for f in (0.0, 0.1, 0.5, 0.69, 0.85, 1.0)]
    scales = [lr_scale(step, elapsed, t) for step, elapsed in at]
    assert scales[:4] == [1.0, 1.0, 1.0, 1.0]
    assert scales[4] == pytest.approx(0.5) and scales[5] == 0.0


def test_no_calibration_warning_without_a_reserve(tmp_path):
    """small.toml reserves nothing for GPTQ (calib_reserve_s = 0): the quantisation line gives the time and
    nothing warns; a reserve that was set and proved too small still warns."""
    from types import SimpleNamespace

    from shared.data.bpb import EvalResult
    from shared.run.finish import finish_run
    from shared.run.rundir import RunDir

    cfg = tiny_config(max_seconds=10.0)
    cfg = replace(cfg, quant=replace(cfg.quant, gptq=True, calib_tokens=256, gptq_block=16))
    params = init_params(cfg.model, 1)
    hessians = {k: np.eye(v.shape[1]) for k, v in params.items() if v.ndim == 2}
    def slow_hessians(p, x, show_progress):  # a calibration that takes measurable time
        time.sleep(0.01)
        return hessians

    session = SimpleNamespace(backend="mlx", rank=0, collect_hessians=slow_hessians, share_bytes=lambda data: data,
                              evaluate_params=lambda p, t, tb: EvalResult(100.0, 50, 200))
    dataset = SimpleNamespace(val_tokens=None, tables=None, train_stream=None)
    import shared.artifact.calibration as calibration

    real = calibration.calibration_batch
    calibration.calibration_batch = lambda ds, c: (np.ones((2, 64), dtype=np.int64), np.ones((2, 64), dtype=np.int64))
    try:
        for reserve, warned in ((0.0, False), (1e-4, True)):
            run = RunDir(tmp_path / f"r{reserve}")
            c = replace(cfg, train=replace(cfg.train, calib_reserve_s=reserve))
            finish_run(session, params, c, run, dataset, {"val_loss": 2.0, "val_bpb": 1.0, "steps": 1}, code_bytes=0)
            log = (run.path / LOG).read_text()
            assert "quantisation: calibration" in log and ("was too small" in log) == warned
    finally:
        calibration.calibration_batch = real


def test_calibration_on_a_tiny_training_split_warns(tiny_data, tmp_path, capsys):
    from shared.artifact.calibration import calibration_batch, train_token_count
    from shared.data.dataset import open_dataset

    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, 512)
    have = train_token_count(ds)
    cfg = tiny_config()
    for tokens, warned in ((have // 2, False), (have * 3, True)):
        c = replace(cfg, quant=replace(cfg.quant, calib_tokens=tokens))
        capsys.readouterr()
        x, _ = calibration_batch(ds, c)
        assert x.size == tokens // 64 * 64
        assert ("calibration sees them" in capsys.readouterr().err) == warned


def test_a_full_disk_during_export_names_the_records_folder(capsys, tmp_path, monkeypatch):
    """ENOSPC while writing the records folder: one line naming it (not only "No space left on device"), and
    no half-written folder or temp folder is left."""
    import errno

    import shared.record.export as export

    runs = [_fake_run(tmp_path, "r", 1)]
    monkeypatch.setattr(export, "run_disagreements", lambda run: [])  # a summary-only stand-in for a finished run

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    line = one_error_line(capsys, "record", "export", str(runs[0]), "--name", "x", "--author", "a", "--github-id", "g",
                          "--out", str(tmp_path / "rec"), "--date", "2026-12-01")
    assert "2026-12-01_x: could not write it (No space left on device); free some disk space" in line
    assert list((tmp_path / "rec" / "track_10min_16mb").iterdir()) == []
