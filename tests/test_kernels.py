"""The fused Triton kernels (cuda_train/kernels.py) against the eager path, and a CPU run with
`train.fused_kernels = "auto"` that never imports them (the key's check: tests/test_config.py).

Without a GPU the kernels run on CPU tensors under the Triton interpreter. TRITON_INTERPRET=1 must hold
from before triton's first import to the last kernel, so the comparisons (benchmarks/kernel_check.py)
run in a child process and each test here asserts its share; with CUDA the child runs them natively on
the GPU. They skip where triton is absent (`pip install -e '.[triton]'`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.kernel_check import CE_SHAPES, GPT_MODELS, MLP_SHAPES, TOL


def _child(part: str) -> dict:
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("triton not installed (pip install -e '.[triton]')")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    import torch

    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    p = subprocess.run([sys.executable, "-m", "benchmarks.kernel_check", part], cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results():
    """The kernels against eager: the MLP and the loss alone (a few seconds)."""
    return _child("units")


@pytest.fixture(scope="module")
def gpt_results():
    """The whole model's training step with the kernels, eager and compiled (~15 s: marked slow)."""
    return _child("gpt")


def _within(entry: dict) -> None:
    assert entry.pop("shape_dtype", 0.0) == 0.0
    worst = max(entry, key=entry.get)
    assert entry[worst] <= TOL, (worst, entry)


@pytest.mark.parametrize("shape", MLP_SHAPES, ids=str)
@pytest.mark.parametrize("slope", [0.5, 0.0], ids=["leaky_relu2", "relu2"])
def test_mlp_matches_eager_values_and_gradients(results, shape, slope):
    _within(results["mlp"][f"{shape}-{slope}"])


def test_mlp_slope_changes_the_result(results):
    assert results["mlp"]["slope_matters"] > 1e-3  # relu2 and leaky_relu2 differ where the pre-activation < 0


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softcapped_ce_matches_eager_values_and_gradients(results, shape, reduction):
    _within(results["ce"][f"{shape[0]}x{shape[1]}-{reduction}"])


def test_bf16_rounds_as_the_eager_ops(results):
    b = results["bf16"]
    assert b["post_vs_eager_activation_mismatches"] == 0.0  # bit for bit from the same pre-activation
    assert b["pre_vs_eager_linear"] <= 2**-6 and b["dpre_vs_eager_autograd"] <= 2**-6  # an ulp or so of bf16
    assert b["ce_vs_eager_in_float32"] <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("model", GPT_MODELS)
def test_gpt_training_step_matches_eager(gpt_results, model):
    _within(gpt_results["gpt"][f"{model}-fused"])
    assert gpt_results["gpt"][f"{model}-fused_ce_on"] == (0.0 if model == "asym_logit" else 1.0)


@pytest.mark.slow
def test_gpt_compiled_fullgraph_with_the_kernels_matches_eager(gpt_results):
    _within(gpt_results["gpt"]["leaky_relu2-compiled"])


@pytest.mark.slow
def test_eval_mode_and_lora_stay_eager(gpt_results):
    assert gpt_results["gpt"]["eval_and_lora_calls"] == 0.0


def test_cpu_training_never_imports_the_kernels(monkeypatch):
    """`auto` on the CPU: eager, and cuda_train.kernels (hence triton) is never imported."""
    torch = pytest.importorskip("torch")
    from conftest import tiny_config

    from cuda_train import runtime
    from cuda_train.session import TorchSession, fused_kernels_usable
    from shared.core.spec import init_params

    monkeypatch.setitem(sys.modules, "cuda_train.kernels", None)  # an import now raises ImportError
    cfg = tiny_config(fused_kernels="auto")
    assert not fused_kernels_usable(cfg, torch.device("cpu"))
    s = TorchSession(cfg, runtime.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    s.load_weights(init_params(cfg.model, seed=0))
    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 512, (2, 64)), rng.integers(0, 512, (2, 64)))
    assert np.isfinite(s.step([batch], 1.0, 0.95))
    assert s.fused_kernels is False and s.info()["fused_kernels"] == "off"
    assert all(b.mlp.fused is None for b in s.model.blocks) and s.model.fused_ce is None

