"""The parameter table (shared/core/spec.py) is the one source of names, shapes, init, groups and classes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.core.config import ModelConfig, load_config
from shared.core.spec import GROUPS, QCLASSES, count_params, init_params, names_in_group, param_table
from tests.conftest import tiny_config


def test_baseline_table_counts_the_challenge_baseline():
    m = load_config("configs/baseline.toml").model
    assert count_params(m) == 17_059_912  # the naive baseline (docs/FACTS.md)
    table = param_table(m)
    assert all(p.group in GROUPS and p.qclass in QCLASSES for p in table.values())
    assert table["blocks.0.attn.q_gain"].group == "scalar" and table["blocks.0.attn.q_gain"].qclass == "other"
    assert table["blocks.3.mlp.fc.weight"].group == "matrix" and table["blocks.3.mlp.fc.weight"].qclass == "mlp"
    assert table["tok_emb.weight"].group == "embed" and "lm_head.weight" not in table


def test_init_follows_each_row():
    m = replace(tiny_config().model, tie_embeddings=False)
    params = init_params(m, 3)
    table = param_table(m)
    assert list(params) == list(table)
    for name, p in table.items():
        w = params[name]
        assert w.shape == p.shape and w.dtype == np.float32
        kind = p.init[0]
        if kind == "zeros":
            assert not w.any(), name
        elif kind == "ones":
            assert (w == 1).all(), name
        elif kind == "uniform":
            assert np.abs(w).max() <= p.init[1] and w.std() > 0.3 * p.init[1], name
        elif kind == "normal":
            assert w.std() == pytest.approx(p.init[1], rel=0.1), name
    assert np.array_equal(init_params(m, 3)["blocks.0.attn.c_q.weight"], params["blocks.0.attn.c_q.weight"])
    assert not np.array_equal(init_params(m, 4)["blocks.0.attn.c_q.weight"], params["blocks.0.attn.c_q.weight"])


def _module_names(backend: str, m: ModelConfig) -> dict[str, tuple[int, ...]]:
    if backend == "torch":
        pytest.importorskip("torch")
        from cuda_train.model import GPT

        return {n: tuple(p.shape) for n, p in GPT(m).named_parameters()}
    pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten

    from mlx_train.model import GPT as MLXGPT

    return {n: tuple(v.shape) for n, v in tree_flatten(MLXGPT(m).parameters())}


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("tied", [True, False])
def test_each_backend_module_exposes_exactly_the_table(backend, tied):
    m = replace(tiny_config().model, tie_embeddings=tied, num_layers=3)
    expected = {n: p.shape for n, p in param_table(m).items()}
    assert _module_names(backend, m) == expected


def test_groups_partition_the_table():
    m = tiny_config().model
    owned = [n for g in GROUPS for n in names_in_group(m, g)]
    assert sorted(owned) == sorted(param_table(m))
