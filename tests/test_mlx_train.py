"""The MLX trainer end to end on the tiny dataset: learning, resume, artifact, divergence."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from shared.core.config import to_toml
from shared.errors import PgolfError
from shared.run.loop import Hooks
from tests.conftest import tiny_config

pytestmark = pytest.mark.mlx
mx = pytest.importorskip("mlx.core")
backend = pytest.importorskip("mlx_train.backend")


def with_data(cfg, tiny):
    return replace(cfg, data=replace(cfg.data, dir=str(tiny.data_dir), tokenizer=str(tiny.tokenizer)))


def test_loss_falls_and_summary_is_complete(tiny_data, tmp_path):
    from shared.run.rundir import SUMMARY_KEYS

    cfg = with_data(tiny_config(iterations=12, val_every=6), tiny_data)
    summary = backend.train(cfg, tmp_path)
    assert all(k in summary for k in SUMMARY_KEYS)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["val_bpb"] == pytest.approx(summary["val_bpb"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses
    vals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in vals] == [6, 12]
    assert summary["steps"] == 12 and summary["train_tokens"] == 12 * cfg.train.batch_tokens
    assert summary["total_bytes"] == summary["artifact_bytes"] + summary["code_bytes"]
    blob = (tmp_path / "model.pgz").read_bytes()
    assert summary["artifact_bytes"] == len(blob)
    assert (tmp_path / "config.toml").read_text() == to_toml(cfg)
    log = (tmp_path / "train.log").read_text()
    assert "git_sha=" in log and "blas=" in log and "mlx=" in log


def test_gradients_finite_and_accumulation_matches_one_batch(tiny_data):
    """Splitting a micro-batch into chunks (max_microbatch_tokens) does not change the step."""
    from mlx_train.session import session_from
    from shared.core.spec import init_params
    from shared.data.shards import BatchLoader, TokenStream

    cfg = tiny_config(grad_accum=1)
    params = init_params(cfg.model, 0)
    x, y = BatchLoader(TokenStream(tiny_data.data_dir)).next_batch(1024, 64)
    whole = session_from(cfg, params)
    split = session_from(replace(cfg, train=replace(cfg.train, max_microbatch_tokens=256)), params)
    la = whole.step([(x, y)], 1.0, 0.9)
    lb = split.step([(x, y)], 1.0, 0.9)  # 1024 tokens in 4 chunks of 256
    assert np.isfinite(la) and la == pytest.approx(lb, rel=1e-5)
    wa, wb = whole.weights(), split.weights()
    for k in wa:
        assert np.isfinite(wa[k]).all()
        # Adam normalises tiny gradients, so rounding in near-zero ones shows; a real bug moves weights ~lr.
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-3, atol=2e-4, err_msg=k)
    assert any(not np.array_equal(wa[k], params[k]) for k in wa)


def test_resume_after_interrupt_reproduces_weights(tiny_data, tmp_path):
    from shared.run.rundir import load_checkpoint

    cfg = with_data(tiny_config(iterations=8), tiny_data)
    backend.train(cfg, tmp_path / "full")

    def interrupt(step, session):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the real Ctrl-C path: finish the step, save, exit

    with pytest.raises(KeyboardInterrupt):
        backend.train(cfg, tmp_path / "cut", hooks=Hooks(after_step=interrupt))
    _, _, saved_step = load_checkpoint(tmp_path / "cut")
    assert saved_step == 3
    backend.train(cfg, tmp_path / "cut", resume=True)
    full, _, s1 = load_checkpoint(tmp_path / "full")
    cut, _, s2 = load_checkpoint(tmp_path / "cut")
    assert s1 == s2 == 8
    for k in full:
        assert np.array_equal(full[k], cut[k]), k


def test_artifact_round_trip_matches_summary(tiny_data, tmp_path):
    from shared.artifact.calibration import calibration_batch, calibration_counts
    from shared.artifact.format import pack, read_artifact
    from shared.data.dataset import open_dataset
    from shared.run.rundir import load_checkpoint

    # The packing stack of the benchmarks: int6 GPTQ blocks, int8 embedding with "frequency" steps.
    cfg = with_data(tiny_config(iterations=4), tiny_data)
    cfg = replace(cfg, quant=replace(cfg.quant, attn="int6", mlp="int6", gptq=True, embed_steps="frequency",
                                     calib_tokens=2048))
    summary = backend.train(cfg, tmp_path)
    art_cfg, params = read_artifact(tmp_path / "model.pgz")
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, cfg.model.vocab_size)
    res = backend.evaluate(params, with_data(art_cfg, tiny_data), ds.val_tokens, ds.tables)
    assert res.val_bpb == pytest.approx(summary["q_val_bpb"], rel=1e-6)
    assert res.tokens == summary["eval_tokens"]
    # The run's artifact is what packing its checkpoint gives: calibration is a function of the weights and data.
    weights, ckpt_cfg, _ = load_checkpoint(tmp_path / "checkpoint.safetensors")
    x, y = calibration_batch(ds, ckpt_cfg)
    blob = pack(weights, ckpt_cfg, backend.collect_hessians(weights, ckpt_cfg, x),
                token_counts=calibration_counts(x, y, cfg.model.vocab_size))
    assert blob == (tmp_path / "model.pgz").read_bytes()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path):
    from shared.run.rundir import load_checkpoint

    cfg = with_data(tiny_config(iterations=8, checkpoint_every=2), tiny_data)

    def poison(step, session):
        if step == 3:  # as if the update had blown up: the next forward pass gives NaN
            session.params["tok_emb.weight"] = session.params["tok_emb.weight"] * float("nan")

    with pytest.raises(PgolfError, match="step 4"):
        backend.train(cfg, tmp_path, hooks=Hooks(after_step=poison))
    params, _, step = load_checkpoint(tmp_path)
    assert step == 2
    assert all(np.isfinite(v).all() for v in params.values())
    assert not (tmp_path / "summary.json").exists()


def test_artifact_over_the_cap_is_an_error_after_everything_is_saved(tiny_data, tmp_path, monkeypatch):
    import shared.run.finish

    monkeypatch.setattr(shared.run.finish, "SIZE_CAP", 1000)
    cfg = replace(tiny_config(iterations=2), data=replace(tiny_config().data, dir=str(tiny_data.data_dir),
                                                          tokenizer=str(tiny_data.tokenizer)))
    with pytest.raises(PgolfError, match="over the 1,000-byte cap"):
        backend.train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["within_cap"] is False and (tmp_path / "model.pgz").is_file()
