"""The fused Triton kernels (cuda_train/kernels.py) against the eager path, and their speed on a GPU.

    python -m benchmarks.kernel_check units [--json OUT]   # MLP and loss alone: fp32 values and gradients, bf16 rounding
    python -m benchmarks.kernel_check gpt [--json OUT]     # the tiny GPT's training step, eager and compiled, fp32
    python -m benchmarks.kernel_check time [--json OUT]    # CUDA: ms of fused vs eager at the record's shapes, bf16

Each comparison is the largest difference relative to the largest reference value. With CUDA the kernels
run natively; without it set TRITON_INTERPRET=1 (before anything imports triton: the interpreter runs them
on CPU tensors). tests/test_kernels.py runs `units` and `gpt` in a child process and asserts on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

TOL = 1e-5  # relative to the largest reference value: float32 sums in another order, nothing more
MLP_SHAPES = [(7, 16, 24), (130, 40, 72), (2, 65, 33, 96)]  # float32 blocks are 64 x 64 x 32: below, across
CE_SHAPES = [(5, 50), (3, 2500), (4, 2048)]                 # the vocabulary block is 1024: partial, 2.4, exact
TINY = dict(vocab_size=512, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=2)  # tests' tiny model
GPT_MODELS = {"relu2": {}, "leaky_relu2": {"activation": "leaky_relu2"}, "asym_logit": {"asym_logit": True}}


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

    from cuda_train.model import GPT, load_params
    from shared.core.config import ModelConfig
    from shared.core.spec import init_params

    out = {}
    for name, change in GPT_MODELS.items():
        m = ModelConfig(**TINY, **change)
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


def time_cases(kernels, dev, tokens: int = 98304, dim: int = 512, hidden: int = 2048, vocab: int = 8192,
               reps: int = 20) -> dict:
    """Forward + backward ms of the fused MLP and loss against the eager ops (bf16, not compiled), at one
    rank's micro-batch of configs/record.toml (786,432 tokens / 8 ranks)."""
    import torch
    import torch.nn.functional as F

    if dev != "cuda":
        return {"skipped": "no CUDA"}
    bf = torch.bfloat16
    x = torch.randn(tokens, dim, device=dev, dtype=bf, requires_grad=True)
    w_fc = (torch.randn(hidden, dim, device=dev) / dim**0.5).to(bf).requires_grad_()
    w_proj = (torch.randn(dim, hidden, device=dev) / hidden**0.5).to(bf).requires_grad_()
    z = (torch.randn(tokens, vocab, device=dev) * 10).to(bf).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=dev)
    cases = {
        "mlp_fused": lambda: kernels.leaky_mlp(x, w_fc, w_proj, 0.5),
        "mlp_eager": lambda: F.linear(F.leaky_relu(F.linear(x, w_fc), 0.5).square(), w_proj),
        "ce_fused": lambda: kernels.softcap_cross_entropy(z, y, 30.0),
        "ce_eager": lambda: F.cross_entropy((30.0 * torch.tanh(z / 30.0)).float(), y),
    }
    out = {}
    for name, fn in cases.items():
        for _ in range(3):  # compile the kernels, warm the allocator
            fn().float().sum().backward()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn().float().sum().backward()
        end.record()
        torch.cuda.synchronize()
        out[name] = start.elapsed_time(end) / reps
    out.update(shape={"tokens": tokens, "dim": dim, "hidden": hidden, "vocab": vocab},
               gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["units", "gpt", "time"])
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    from cuda_train import kernels

    res = {"device": dev, "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    if args.part == "units":
        res.update(mlp=_mlp_cases(kernels, dev), ce=_ce_cases(kernels, dev), bf16=_bf16_cases(kernels, dev))
    elif args.part == "gpt":
        res.update(gpt=_gpt_cases(kernels, dev))
    else:
        res.update(time=time_cases(kernels, dev))
    text = json.dumps(res)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
