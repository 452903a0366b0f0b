"""The PyTorch trainer in one process on CPU: learning, the run directory, resume, divergence."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.core.config import load_config, to_toml
from shared.errors import PgolfError
from shared.run.loop import Hooks
from shared.run.rundir import SUMMARY_KEYS, load_checkpoint
from tests.conftest import tiny_config

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
backend = pytest.importorskip("cuda_train.backend")

REPO = Path(__file__).resolve().parents[1]


def with_data(cfg, tiny):
    return replace(cfg, data=replace(cfg.data, dir=str(tiny.data_dir), tokenizer=str(tiny.tokenizer)))


def interrupt_before(step: int) -> Hooks:
    """A real SIGINT to this process at the boundary before step `step + 1` runs."""
    def hook(at, session):
        if at == step:
            os.kill(os.getpid(), signal.SIGINT)
    return Hooks(before_step=hook)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_small_config_learns_and_writes_a_complete_run(tiny_data, tmp_path):
    """configs/small.toml (shrunk in steps, vocab matched to the fixture) on CPU, one process."""
    cfg = load_config(REPO / "configs" / "small.toml", [
        "model.vocab_size=512", "train.iterations=30", "train.max_seconds=0", "train.warmup_steps=2",
        "train.val_every=15", "train.checkpoint_every=0", "train.batch_tokens=2048", "eval.max_tokens=4096",
        "train.compile=false",
    ])
    cfg = with_data(cfg, tiny_data)
    summary = backend.train(cfg, tmp_path)
    for name in ("config.toml", "train.log", "metrics.jsonl", "checkpoint.safetensors", "train_state.safetensors",
                 "model.pgz", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert all(k in summary for k in SUMMARY_KEYS) and summary["backend"] == "torch"
    assert json.loads((tmp_path / "summary.json").read_text())["q_val_bpb"] == pytest.approx(summary["q_val_bpb"])
    recs = records(tmp_path)
    losses = [r["train_loss"] for r in recs if "train_loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses
    assert [r["step"] for r in recs if "val_bpb" in r] == [15, 30]
    assert summary["val_loss"] < np.log(512) - 1.0
    assert summary["steps"] == 30 and summary["train_tokens"] == 30 * 2048
    assert summary["artifact_bytes"] == len((tmp_path / "model.pgz").read_bytes())
    assert (tmp_path / "config.toml").read_text() == to_toml(cfg)
    log = (tmp_path / "train.log").read_text()
    assert "git_sha=" in log and "torch=" in log and "warm-up: 2 steps" in log


def test_resume_reproduces_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    cfg = with_data(tiny_config(iterations=8, warmup_steps=2), tiny_data)
    straight = backend.train(cfg, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        backend.train(cfg, tmp_path / "b", hooks=interrupt_before(3))  # a real SIGINT before step 4 runs
    _, _, saved_step = load_checkpoint(tmp_path / "b")
    assert saved_step == 4  # the step in flight finishes, then the run saves and stops
    resumed = backend.train(cfg, tmp_path / "b", resume=True)
    a, _, _ = load_checkpoint(tmp_path / "a")
    b, _, step = load_checkpoint(tmp_path / "b")
    assert step == 8
    for k in a:  # bit-exact, the bar of the MLX test (docs/RELIABILITY.md "Determinism")
        assert np.array_equal(b[k], a[k]), k
    la = {r["step"]: r["train_loss"] for r in records(tmp_path / "a") if "train_loss" in r}
    lb = {r["step"]: r["train_loss"] for r in records(tmp_path / "b") if "train_loss" in r}
    assert all(lb[s] == la[s] for s in la)
    assert resumed["val_bpb"] == straight["val_bpb"]
    assert resumed["train_tokens"] == straight["train_tokens"]


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    cfg = with_data(tiny_config(iterations=8, checkpoint_every=3), tiny_data)
    with pytest.raises(KeyboardInterrupt):
        backend.train(cfg, tmp_path, hooks=interrupt_before(3))
    good, _, good_step = load_checkpoint(tmp_path)
    # Continue with an infinite Adam step: the weights go non-finite, the next loss is NaN.
    bad = replace(cfg, optim=replace(cfg.optim, scalar_lr=float("inf")),
                  train=replace(cfg.train, checkpoint_every=0))
    with pytest.raises(PgolfError, match="training diverged: the loss is nan") as err:
        backend.train(bad, tmp_path, resume=True)
    assert "\n" not in str(err.value) and f"step {good_step})" in str(err.value)
    after, _, step = load_checkpoint(tmp_path)
    assert step == good_step and all(np.array_equal(after[k], good[k]) for k in good)


def test_non_finite_weights_are_never_checkpointed(tiny_data, tmp_path):
    cfg = with_data(tiny_config(iterations=8, checkpoint_every=1), tiny_data)
    cfg = replace(cfg, optim=replace(cfg.optim, scalar_lr=float("inf")))
    with pytest.raises(PgolfError, match="weights became non-finite by step 1"):
        backend.train(cfg, tmp_path)
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_resume_without_a_checkpoint_names_the_file(tiny_data, tmp_path):
    cfg = with_data(tiny_config(iterations=2), tiny_data)
    with pytest.raises(PgolfError, match="train_state.safetensors not found: nothing to resume"):
        backend.train(cfg, tmp_path, resume=True)


def test_seq_schedule_grows_the_context_during_a_run(tiny_data, tmp_path):
    """train.seq_schedule (#2014): the loop switches the segment cap at its fractions, logs each change,
    and re-warms the LR after it (the logged lr_scale starts low again)."""
    cfg = with_data(tiny_config(iterations=8, warmup_steps=0, log_every=1), tiny_data)
    cfg = replace(cfg, model=replace(cfg.model, doc_attention=True, doc_max_len=32),
                  train=replace(cfg.train, seq_schedule="8@0.25,16@1.0", seq_rewarm_steps=4)).validate()
    backend.train(cfg, tmp_path)
    log = (tmp_path / "train.log").read_text()
    assert "context: document segments of at most 8 tokens" in log
    assert "context: segments of at most 16 tokens from step 4" in log
    scales = {r["step"]: r["lr_scale"] for r in records(tmp_path) if "lr_scale" in r}
    assert (scales[3], scales[4], scales[5]) == pytest.approx((1.0, 0.25, 0.5))
