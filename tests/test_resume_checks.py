"""What `--resume` refuses: another backend's state, a changed trajectory, a missing save."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import tiny_config

from shared.core.spec import init_params
from shared.errors import PgolfError
from shared.run.rundir import TRAIN_STATE, load_resume_state, save_resume_state


def _saved(tmp_path):
    cfg = tiny_config()
    weights = init_params(cfg.model, 0)
    save_resume_state(tmp_path, weights, {"opt/x": np.ones(3, np.float32)}, {"step": 4, "backend": "mlx"}, cfg)
    return cfg, weights


def test_round_trip_splits_weights_from_optimizer_state(tmp_path):
    cfg, weights = _saved(tmp_path)
    w, opt, st = load_resume_state(tmp_path, cfg, "mlx")
    assert st["step"] == 4 and set(opt) == {"opt/x"}
    assert set(w) == set(weights) and all(np.array_equal(w[k], weights[k]) for k in w)


def test_refuses_another_backend(tmp_path):
    cfg, _ = _saved(tmp_path)
    with pytest.raises(PgolfError, match="written by the mlx backend: resume it with --backend mlx"):
        load_resume_state(tmp_path, cfg, "torch")


@pytest.mark.parametrize("key,value", [("seed", 99), ("batch_tokens", 2048), ("seq_len", 32), ("grad_accum", 1)])
def test_refuses_a_changed_trajectory(tmp_path, key, value):
    cfg, _ = _saved(tmp_path)
    with pytest.raises(PgolfError, match=f"train.{key} was"):
        load_resume_state(tmp_path, replace(cfg, train=replace(cfg.train, **{key: value})), "mlx")


def test_refuses_a_changed_model_and_a_missing_save(tmp_path):
    cfg, _ = _saved(tmp_path)
    with pytest.raises(PgolfError, match=r"\[model\] section differs"):
        load_resume_state(tmp_path, replace(cfg, model=replace(cfg.model, rope_base=500.0)), "mlx")
    (tmp_path / TRAIN_STATE).unlink()
    with pytest.raises(PgolfError, match="nothing to resume"):
        load_resume_state(tmp_path, cfg, "mlx")
