"""The fused Triton kernels (cuda_train/kernels.py) against the eager path, and a CPU run with
`train.fused_kernels = "auto"` that never imports them (the key's check: tests/test_config.py).

Without a GPU the kernels run on CPU tensors under the Triton interpreter. TRITON_INTERPRET=1 must hold
from before triton's first import to the last kernel, so the comparisons run in one child process
(`python tests/test_kernels.py units|gpt` prints them as JSON) and each test here asserts its share; with CUDA the
child runs them natively on the GPU. They skip where triton is absent (`pip install -e '.[triton]'`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

TOL = 1e-5  # relative to the largest reference value: float32 sums in another order, nothing more
MLP_SHAPES = [(7, 16, 24), (130, 40, 72), (2, 65, 33, 96)]  # float32 blocks are 64 x 64 x 32: below, across
CE_SHAPES = [(5, 50), (3, 2500), (4, 2048)]                 # the vocabulary block is 1024: partial, 2.4, exact
GPT_MODELS = {"relu2": {}, "leaky_relu2": {"activation": "leaky_relu2"}, "asym_logit": {"asym_logit": True}}


# --- the child: every comparison, as {case: {quantity: relative error}} ----------------------------------------

def _rel(got, want) -> float:
    got, want = got.detach(), want.detach()
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))


def _mlp_cases(kernels, dev) -> dict:
    import torch
    import torch.nn.functional as F

    out = {}
    for shape in MLP_SHAPES:
        for slope in (0.5, 0.0):
            *lead, d, h = shape
            g = torch.Generator().manual_seed(sum(shape))
            x = torch.randn(*lead, d, generator=g).to(dev).requires_grad_()
            w_fc = (torch.randn(h, d, generator=g) / d**0.5).to(dev).requires_grad_()
            w_proj = (torch.randn(d, h, generator=g) / h**0.5).to(dev).requires_grad_()
            got = kernels.leaky_mlp(x, w_fc, w_proj, slope)
            want = F.linear(F.leaky_relu(F.linear(x, w_fc), slope).square(), w_proj)
            dout = torch.randn(want.shape, generator=g).to(dev)
            grads = zip(torch.autograd.grad(got, (x, w_fc, w_proj), dout),
                        torch.autograd.grad(want, (x, w_fc, w_proj), dout), strict=True)
            out[f"{shape}-{slope}"] = {"out": _rel(got, want), "shape_dtype": float(got.shape != want.shape or got.dtype != want.dtype),
                                       **{f"d_{n}": _rel(a, b) for n, (a, b) in zip(("x", "w_fc", "w_proj"), grads, strict=True)}}
    x, w_fc, w_proj = (torch.randn(s, generator=torch.Generator().manual_seed(0)).to(dev) for s in ((9, 16), (24, 16), (16, 24)))
    out["slope_matters"] = float((kernels.leaky_mlp(x, w_fc, w_proj, 0.5) - kernels.leaky_mlp(x, w_fc, w_proj, 0.0)).abs().max())
    return out


def _ce_cases(kernels, dev) -> dict:
    import torch
    import torch.nn.functional as F

    out, cap = {}, 15.0
    for rows, vocab in CE_SHAPES:
        for reduction in ("mean", "sum", "none"):
            g = torch.Generator().manual_seed(rows * vocab)
            z = (torch.randn(rows, vocab, generator=g) * 20).to(dev).requires_grad_()  # beyond the cap: tanh saturates
            y = torch.randint(0, vocab, (rows,), generator=g).to(dev)
            got = kernels.softcap_cross_entropy(z, y, cap, reduction)
            want = F.cross_entropy(cap * torch.tanh(z / cap), y, reduction=reduction)
            dout = (torch.rand(want.shape, generator=g) + 0.5).to(dev)
            out[f"{rows}x{vocab}-{reduction}"] = {
                "loss": _rel(got, want), "shape_dtype": float(got.shape != want.shape or got.dtype != torch.float32),
                "d_z": _rel(torch.autograd.grad(got, z, dout)[0], torch.autograd.grad(want, z, dout)[0])}
    return out


def _bf16_cases(kernels, dev) -> dict:
    """bf16, the training dtype (blocks 128 x 128 x 64): the activation is applied to the rounded
    pre-activation exactly as the eager ops apply it (one rounding of its float32 square); the matmuls differ from eager's only by the order of
    their float32 sums (at most an ulp of bf16 after rounding); the loss's softcap is taken in float32
    (eager rounds it to bf16), so it matches eager run in float32 on the same bf16 logits."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(5)
    bf = torch.bfloat16
    x = torch.randn(200, 96, generator=g).to(dev, bf)
    w_fc, w_proj = (torch.randn(160, 96, generator=g) / 10).to(dev, bf), (torch.randn(96, 160, generator=g) / 13).to(dev, bf)
    pre, post = kernels.mlp_up(x, w_fc, 0.5)
    want = F.leaky_relu(pre, 0.5).square()
    if os.environ.get("TRITON_INTERPRET") == "1":  # its float32 -> bf16 cast truncates (the GPU's rounds to nearest)
        h = torch.where(pre > 0, pre, 0.5 * pre).float()
        want = ((h * h).view(torch.int32) & -65536).view(torch.float32).to(bf)
    out = {"post_vs_eager_activation_mismatches": float((post != want).sum()),
           "pre_vs_eager_linear": _rel(pre, F.linear(x, w_fc))}
    dout = torch.randn(200, 96, generator=g).to(dev, bf)
    at = pre.clone().requires_grad_()
    F.linear(F.leaky_relu(at, 0.5).square(), w_proj).backward(dout)
    out["dpre_vs_eager_autograd"] = _rel(kernels.mlp_up_grad(dout, w_proj, pre, 0.5), at.grad)
    z = (torch.randn(6, 3000, generator=g) * 20).to(dev, bf)
    y = torch.randint(0, 3000, (6,), generator=g).to(dev)
    got = kernels.softcap_cross_entropy(z, y, 30.0, "none")
    out["ce_vs_eager_in_float32"] = _rel(got, F.cross_entropy(30.0 * torch.tanh(z.float() / 30.0), y, reduction="none"))
    out["ce_vs_eager_bf16_softcap"] = _rel(got, F.cross_entropy((30.0 * torch.tanh(z / 30.0)).float(), y, reduction="none"))
    return out


def _gpt_cases(kernels, dev) -> dict:
    """The whole training forward and backward with the kernels wired in (model.use_fused_kernels), eagerly
    and under torch.compile(fullgraph=True) (the aot_eager backend: dynamo and AOT autograd over the fake
    impls, then the kernels themselves); asym_logit: the fused MLP with the eager loss."""
    import torch
    from conftest import tiny_config

    from cuda_train.model import GPT, load_params
    from shared.core.spec import init_params

    out = {}
    for name, change in GPT_MODELS.items():
        m = replace(tiny_config().model, **change)
        rng = np.random.default_rng(3)  # off the init (zero output projections): every path carries a signal
        params = {k: v + 0.02 * rng.standard_normal(v.shape).astype(np.float32) for k, v in init_params(m, seed=3).items()}
        nets = [GPT(m).to(dev) for _ in range(3)]
        for net in nets:
            load_params(net, params)
            net.to(dev)
        nets[1].use_fused_kernels(kernels)
        nets[2].use_fused_kernels(kernels)
        runs = [nets[0], nets[1], torch.compile(nets[2], fullgraph=True, backend="aot_eager")] if name == "leaky_relu2" \
            else nets[:2]
        g = torch.Generator().manual_seed(1)
        idx, tgt = (torch.randint(0, m.vocab_size, (2, 40), generator=g).to(dev) for _ in range(2))
        losses = []
        for run in runs:
            loss = run(idx, tgt)
            loss.backward()
            losses.append(loss.detach())
        for k, tag in ((1, "fused"), (2, "compiled"))[: len(runs) - 1]:
            # softcap_pos/neg's gradients are sums of cancelling terms (~1e-9 here; eager float32 is itself
            # ~1e-2 off float64 on them): compared by the loss and every other gradient instead
            grads = [_rel(q.grad, p.grad) if q.grad is not None else 1.0
                     for (n, p), q in zip(nets[0].named_parameters(), nets[k].parameters(), strict=True)
                     if not n.startswith("softcap_")]
            out[f"{name}-{tag}"] = {"loss": _rel(losses[k], losses[0]), "grads_worst": max(grads)}
        out[f"{name}-fused_ce_on"] = float(nets[1].fused_ce is not None)
    # evaluation (model.eval()) and a LoRA site stay eager: the kernels must not be called
    called = []
    net = nets[1]
    for block in net.blocks:
        block.mlp.fused = lambda *a: called.append("mlp")
    net.fused_ce = lambda *a: called.append("ce")
    net.eval()
    net(idx, tgt)
    net.train()
    net.blocks[0].mlp(torch.randn(1, 4, m.model_dim, device=dev), lora={})
    out["eval_and_lora_calls"] = float(len(called))
    return out


def main(part: str) -> None:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    from cuda_train import kernels

    res = {"device": dev, "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    if part == "units":
        res.update(mlp=_mlp_cases(kernels, dev), ce=_ce_cases(kernels, dev), bf16=_bf16_cases(kernels, dev))
    else:
        res.update(gpt=_gpt_cases(kernels, dev))
    print(json.dumps(res))


# --- the tests ------------------------------------------------------------------------------------------------

def _child(part: str) -> dict:
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("triton not installed (pip install -e '.[triton]')")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    import torch

    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    p = subprocess.run([sys.executable, __file__, part], capture_output=True, text=True, env=env, timeout=600)
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


if __name__ == "__main__":
    main(sys.argv[1])
