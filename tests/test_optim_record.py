"""The record's optimizer numerics (#1855), each an [optim] key: each changes what it claims to, and with
all of them off the step is the one pgolf always took. The comparison against the record's own code is
benchmarks/fidelity_optim.py; cross-backend agreement is in tests/test_parity.py."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from shared.core.spec import (
    NS_EPS,
    init_params,
    ns_coefficients,
    param_table,
    record_banks,
    record_clip_order,
)
from tests.conftest import tiny_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
from cuda_train.model import build_model  # noqa: E402
from cuda_train.optim import Optimizers, newton_schulz, row_normalize  # noqa: E402

# The record-stack options already in pgolf, on: the new keys' defaults must leave this step as it was.
BASE = dict(muon_row_norm=True, muon_ns="polar_express", muon_wd=0.1, embed_wd=0.05, scalar_wd=0.02,
            grad_clip_norm=0.3, beta2=0.99)


def _setup(seed=0, **optim):
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, num_layers=3, mlp_mult=3.0),
                  optim=replace(cfg.optim, **{**BASE, **optim})).validate()
    model = build_model(cfg.model, init_params(cfg.model, seed))
    return cfg, model


def _grads(model, k, scale=0.05):
    gen = torch.Generator().manual_seed(100 + k)
    return {n: torch.randn(p.shape, generator=gen) * scale for n, p in model.named_parameters()}


def _steps(model, opt, n=3, scales=(1.0, 0.7, 0.4)):
    for k in range(n):
        for name, p in model.named_parameters():
            p.grad = _grads(model, k)[name].to(p.dtype)
        opt.set_schedule(scales[k], 0.9 + 0.02 * k)
        opt.step()
        opt.zero_grad()


def _old_step(model, cfg, n=3, scales=(1.0, 0.7, 0.4)):
    """pgolf's step before the record's numerics were options, written out: norm + eps, (c A) A after
    normalising, the scale on the update, fp32 momentum, torch's clip over every parameter."""
    o, table = cfg.optim, param_table(cfg.model)
    named = dict(model.named_parameters())
    adam = torch.optim.AdamW(
        [{"params": [p for n, p in named.items() if table[n].group == "embed"], "lr": o.tied_embed_lr,
          "weight_decay": o.embed_wd},
         {"params": [p for n, p in named.items() if table[n].group == "scalar"], "lr": o.scalar_lr,
          "weight_decay": o.scalar_wd}], betas=(o.beta1, o.beta2), eps=o.adam_eps)
    base = [g["lr"] for g in adam.param_groups]
    bufs = {}
    for k in range(n):
        grads = _grads(model, k)
        with torch.no_grad():
            for name, p in named.items():
                p.grad = grads[name].clone()
            torch.nn.utils.clip_grad_norm_(list(named.values()), o.grad_clip_norm)
            for g, b in zip(adam.param_groups, base, strict=True):
                g["lr"] = b * scales[k]
            adam.step()
            lr, mom = o.matrix_lr * scales[k], 0.9 + 0.02 * k
            for name, p in named.items():
                if table[name].group != "matrix":
                    continue
                buf = bufs.setdefault(name, torch.zeros_like(p))
                buf.mul_(mom).add_(p.grad)
                u = p.grad.add(buf, alpha=mom)
                u = u / (u.norm(dim=1, keepdim=True) + NS_EPS)
                x = u / (u.norm() + NS_EPS)
                tall = x.size(0) > x.size(1)
                x = x.T if tall else x
                for a, b, c in ns_coefficients(o.muon_ns, o.muon_backend_steps):
                    gram = x @ x.T
                    x = a * x + (b * gram + c * gram @ gram) @ x
                x = (x.T if tall else x) * max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1.0 - lr * o.muon_wd)
                p.add_(x, alpha=-lr)
            for p in named.values():
                p.grad = None


def test_options_off_give_the_same_weights_as_before():
    cfg, model = _setup()
    _, ref = _setup()
    _steps(model, Optimizers(model, cfg.optim, tied=True, ns_dtype=torch.float32))
    _old_step(ref, cfg)
    for (n, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), n


def test_row_norm_eps_max_divides_by_max_of_norm_and_eps():
    u = torch.tensor([[3e-4, 4e-4], [3e-9, 4e-9], [0.0, 0.0]])
    out = row_normalize(u, "max")
    assert torch.equal(out[0], u[0] / u[0].norm())             # a plain row: exactly u / norm
    assert torch.allclose(out[1], u[1] / NS_EPS)               # below eps: divided by eps
    assert torch.equal(out[2], torch.zeros(2))
    add = row_normalize(u, "add")                              # the default: u / (norm + eps)
    assert not torch.equal(add[0], out[0]) and torch.allclose(add[1], u[1] / (5e-9 + NS_EPS))
    # the norm is taken in fp32 and rounded to the update's dtype before the division
    ub = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    want = ub / ub.float().norm(dim=-1, keepdim=True).clamp_min(NS_EPS).bfloat16()
    assert row_normalize(ub, "max").dtype == torch.bfloat16 and torch.equal(row_normalize(ub, "max"), want)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_ns_form_record_transposes_first_and_associates_c_times_a_squared(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    x = g.mT if shape[0] > shape[1] else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
    for a, b, c in ns_coefficients("polar_express", 5):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    want = x.mT if shape[0] > shape[1] else x
    got = newton_schulz(g, 5, torch.bfloat16, "polar_express", "record")
    assert torch.equal(got, want)
    assert not torch.equal(newton_schulz(g, 5, torch.bfloat16, "polar_express", "baseline"), got)


def test_momentum_dtype_bfloat16_keeps_a_bf16_buffer_and_changes_the_step():
    cfg, model = _setup(muon_momentum_dtype="bfloat16", muon_ns_form="record")
    opt = Optimizers(model, cfg.optim, tied=True, ns_dtype=torch.float32)
    assert opt.muon.ns_dtype == torch.bfloat16  # Newton-Schulz in bf16 too, as the record
    _steps(model, opt, n=2)
    name = "blocks.0.mlp.fc.weight"
    p = dict(model.named_parameters())[name]
    buf = opt.muon.state[p]["momentum_buffer"]
    assert buf.dtype == torch.bfloat16 and buf.shape == p.shape and buf.abs().max() > 0
    # save -> load keeps the dtype and the bits (a resumed run continues in bf16)
    fresh = Optimizers(model, cfg.optim, tied=True, ns_dtype=torch.float32)
    fresh.load_state_tensors(opt.state_tensors())
    assert fresh.muon.state[p]["momentum_buffer"].dtype == torch.bfloat16
    assert torch.equal(fresh.muon.state[p]["momentum_buffer"], buf)
    _, ref = _setup()
    _steps(ref, Optimizers(ref, replace(cfg.optim, muon_momentum_dtype="float32"), tied=True, ns_dtype=torch.float32),
           n=2)
    assert not torch.equal(dict(ref.named_parameters())[name], p)


def test_grad_clip_banks_takes_one_norm_per_bank_in_the_record_order():
    cfg, model = _setup(grad_clip_banks=True, grad_clip_norm=0.01)
    named = dict(model.named_parameters())
    grads = _grads(model, 0)
    for n, p in named.items():
        p.grad = grads[n].clone()
    order = record_clip_order(cfg.model)
    # every parameter once; each bank stacks q+o, k+v, up, down over the layers
    assert sorted(n for e in order for n in e) == sorted(named)
    banks = record_banks(cfg.model)
    assert order[:4] == list(banks.values())
    assert banks["qo_bank"][:2] == ["blocks.0.attn.c_q.weight", "blocks.1.attn.c_q.weight"]
    norms = torch.stack([torch.linalg.vector_norm(torch.stack([grads[n] for n in e]) if len(e) > 1 else grads[e[0]])
                         for e in order])
    coef = torch.clamp(0.01 / (torch.linalg.vector_norm(norms) + 1e-6), max=1.0)
    Optimizers(model, cfg.optim, tied=True, ns_dtype=torch.float32).clip()
    for n, p in named.items():
        assert torch.equal(p.grad, grads[n] * coef), n


def _rollback_buffers(mode, world_size=1):
    from cuda_train import runtime
    from cuda_train.session import TorchSession

    cfg, _ = _setup(warmup_muon_momentum=mode)
    s = TorchSession(cfg, runtime.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
                     training=False)
    s.load_weights(init_params(cfg.model, 0))
    opt = s._optimizers()      # steps on one process; the rollback then reads the world size the mode names
    s.world_size = world_size
    snap = s.snapshot()
    _steps(s.model, opt, n=2)
    before = {p: st["momentum_buffer"].clone() for p, st in opt.muon.state.items()}
    s.rollback(snap)
    return before, opt


@pytest.mark.parametrize("mode,world_size,kept", [("reset", 2, False), ("keep", 1, True),
                                                 ("keep_multi_rank", 1, False), ("keep_multi_rank", 2, True)])
def test_warmup_muon_momentum_keeps_or_resets_the_buffers(mode, world_size, kept):
    before, opt = _rollback_buffers(mode, world_size)
    assert not opt.adam.state  # Adam always starts afresh
    if kept:
        assert all(torch.equal(opt.muon.state[p]["momentum_buffer"], b) for p, b in before.items())
    else:
        assert not opt.muon.state


def test_mlx_warmup_keep_and_bf16_momentum():
    pytest.importorskip("mlx.core")
    import mlx.core as mx

    from mlx_train.session import MLXSession

    cfg, _ = _setup(warmup_muon_momentum="keep", muon_momentum_dtype="bfloat16", muon_ns_form="record")
    s = MLXSession(cfg)
    s.load_weights(init_params(cfg.model, 0))
    snap = s.snapshot()
    x = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(2, 64))
    s.step([(x, np.roll(x, -1, axis=1))], 1.0, 0.9)
    key = "blocks.0.mlp.proj.weight.momentum_buffer"  # the zero-initialised output projections get gradient first
    buf = s.state[key]
    assert buf.dtype == mx.bfloat16 and float(mx.abs(buf.astype(mx.float32)).max()) > 0
    s.rollback(snap)
    assert mx.array_equal(s.state[key], buf) and int(s.state["step"]) == 0
    assert all(mx.array_equal(s.params[k], v) for k, v in snap[0].items())
    st = s.optimizer_state()
    assert st[key].dtype == np.float32
    s.load_optimizer_state(st)
    assert s.state[key].dtype == mx.bfloat16


@pytest.mark.slow
def test_resume_with_the_record_numerics_reproduces_the_uninterrupted_run(tiny_data, tmp_path):
    """bf16 momentum saved and loaded, and the warm-up's kept momentum only on a fresh start: a resumed
    run continues bit for bit."""
    import cuda_train.backend as backend
    from shared.run.loop import Hooks
    from shared.run.rundir import load_checkpoint

    cfg = tiny_config(iterations=5, warmup_steps=2)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)),
                  optim=replace(cfg.optim, **BASE, muon_row_norm_eps="max", muon_momentum_dtype="bfloat16",
                                muon_ns_form="record", grad_clip_banks=True, warmup_muon_momentum="keep")).validate()
    backend.train(cfg, tmp_path / "a")

    def stop(step, session):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the real Ctrl-C path: finish the step, save, exit

    with pytest.raises(KeyboardInterrupt):
        backend.train(cfg, tmp_path / "b", hooks=Hooks(after_step=stop))
    backend.train(cfg, tmp_path / "b", resume=True)
    a, _, _ = load_checkpoint(tmp_path / "a")
    b, _, step = load_checkpoint(tmp_path / "b")
    assert step == 5 and all(np.array_equal(a[k], b[k]) for k in a)


def test_sharded_layout_puts_one_matrix_per_rank_in_each_bank():
    from cuda_train.optim import Layout

    lay = Layout([4, 6, 2, 5, 3], world_size=2)
    assert lay.banks == [[0, 1], [2, 3], [4]]
    assert lay.chunks == [6, 5, 3] and lay.offsets == [0, 12, 22] and lay.total == 28
    assert lay.start == [0, 6, 12, 17, 22]   # owner r's chunk of its bank: matrix i at offset + (i % 2) * chunk
    one = Layout([4, 6], world_size=1)
    assert one.banks == [[0], [1]] and one.start == [0, 4] and one.total == 10
