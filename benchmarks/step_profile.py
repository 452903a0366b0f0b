"""Per-step counts of the torch training step on CPU: host syncs, graph breaks, Muon's kernels.

    python -m benchmarks.step_profile [--config configs/record.toml] [--seq-len 256] [--json OUT]

- host syncs per step: the calls inside `TorchSession.step` that make the host wait for the device
  (`.item()`, `.tolist()`, `bool()`/`float()`/`int()` of a tensor, `.cpu()`/`.numpy()`, `nonzero`),
  counted with a TorchFunctionMode around the second of two steps (the first builds the optimizers);
- graph breaks of the training forward: `torch._dynamo.explain` of the model's forward with both layer
  orders (what `torch.compile(fullgraph=True)` would refuse);
- Muon's kernel count: the aten operators run by one `Muon.step` (torch.profiler on CPU), on one rank
  and as rank 0 of 8 (collectives replaced by local copies), with train.grad_sync ddp and sharded.
The model is the config's layers, heads and options at a short sequence and a small width (the counts
depend on neither).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from cuda_train import runtime
from cuda_train.session import TorchSession
from shared.core.config import load_config
from shared.core.spec import init_params

SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero"}


class SyncCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCS:
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def small(cfg, seq_len: int, width: int):
    """The config at a short sequence and width `width` (same layers, heads, options: the same counts)."""
    t = replace(cfg.train, seq_len=seq_len, batch_tokens=seq_len * 2, grad_accum=2, compute_dtype="float32",
                compile=False, warmup_steps=0)
    m = replace(cfg.model, doc_max_len=min(cfg.model.doc_max_len, seq_len), model_dim=width,
                vocab_size=min(cfg.model.vocab_size, 1024))
    return replace(cfg, train=t, model=m).validate()


def batches(cfg, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, cfg.model.vocab_size, size=(1, cfg.train.seq_len))
        out.append((x, np.roll(x, -1, axis=1)))
    return out


def host_syncs(cfg) -> dict:
    from cuda_train.optim import Optimizers

    s = TorchSession(cfg, runtime.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    s.load_weights(init_params(cfg.model, 0))
    # fused Adam, as on CUDA: its step counters live on the device (plain Adam reads CPU counters with .item())
    s.opt = Optimizers(s.model, cfg.optim, cfg.model.tie_embeddings, ns_dtype=s.dtype, fused=True)
    b = batches(cfg, cfg.train.grad_accum)
    s.step(b, 1.0, 0.95)
    with SyncCounter() as c:
        s.step(b, 1.0, 0.95)
    return {"per_step": sum(c.calls.values()), "calls": c.calls}


def graph_breaks(cfg) -> dict:
    from cuda_train.model import GPT

    model = GPT(cfg.model)
    from cuda_train.model import load_params
    load_params(model, init_params(cfg.model, 0))
    x, y = (torch.from_numpy(a) for a in batches(cfg, 1)[0])
    out = {}
    for looped in ((False, True) if cfg.model.looping else (False,)):
        torch._dynamo.reset()
        ex = torch._dynamo.explain(model)(x, y, looped=looped)
        out["looped" if looped else "plain"] = {"graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
                                                "reasons": sorted({str(r.reason)[:160] for r in ex.break_reasons})}
    return out


def muon_kernels(cfg, world_size: int, sync: str) -> dict:
    """aten operators of one Muon step as rank 0 of `world_size` (collectives: local stand-ins)."""
    from cuda_train.model import GPT, load_params
    from cuda_train.optim import Optimizers

    model = GPT(cfg.model)
    load_params(model, init_params(cfg.model, 0))
    opt = Optimizers(model, cfg.optim, cfg.model.tie_embeddings, ns_dtype=torch.float32, rank=0,
                     world_size=world_size, sharded=sync == "sharded")
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    saved = dist.all_reduce, dist.all_gather_into_tensor
    dist.all_reduce = lambda t, op=None: t
    done = type("Done", (), {"wait": lambda self: None})()

    def gather(out, inp, async_op=False):
        out.copy_(inp.repeat(out.numel() // inp.numel()))
        return done if async_op else None

    dist.all_gather_into_tensor = gather
    try:
        opt.muon.step()   # momentum buffers exist from here on, as in training
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.muon.step()
    finally:
        dist.all_reduce, dist.all_gather_into_tensor = saved
    # top-level aten operators only (an op's own sub-calls are not extra kernels)
    events = [e for e in prof.events() if e.name.startswith("aten::") and (e.cpu_parent is None or
              not e.cpu_parent.name.startswith("aten::"))]
    return {"aten_ops": len(events), "matrices": len(opt.muon.param_groups[0]["params"])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/record.toml")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--width", type=int, default=128, help="model_dim (the counts do not depend on it)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = small(load_config(args.config), args.seq_len, args.width)
    out = {"config": args.config, "torch": torch.__version__, "host_syncs": host_syncs(cfg)}
    print(json.dumps({"host_syncs": out["host_syncs"]}), flush=True)
    out["muon"] = {f"{sync}_world{w}": muon_kernels(cfg, w, sync) for w in (1, 8) for sync in ("ddp", "sharded")}
    print(json.dumps({"muon": out["muon"]}), flush=True)
    out["graph_breaks"] = graph_breaks(cfg)
    print(json.dumps({"graph_breaks": out["graph_breaks"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
