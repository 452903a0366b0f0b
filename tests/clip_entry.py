"""Test-only torchrun entry: a few optimizer steps of the tiny model per [optim] variant, on two ranks.

    torchrun --nproc_per_node=2 -m tests.clip_entry OUT

Each rank steps on its own random batch (so the ranks' gradients differ); rank 0 writes OUT/<variant>.npz
with the weights after 2 steps (`train.grad_sync = "sharded"`, the default) and OUT/<variant>_ddp.npz the
same under the DDP wrapper, and OUT/<variant>_state*.npz the optimizer state after those steps, and OUT/kept.json says whether Muon's momentum survived the warm-up
rollback under `warmup_muon_momentum = keep_multi_rank`. One process group for every variant: seconds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from cuda_train import runtime
from cuda_train.session import TorchSession
from shared.core.spec import init_params
from tests.conftest import tiny_config

VARIANTS = {
    "ddp": {},
    "local": {"grad_clip_local": True},
    "clip_avg": {"grad_clip_norm": 0.01},
    "clip_local": {"grad_clip_norm": 0.01, "grad_clip_local": True},
}


def main(out: Path) -> None:
    rt = runtime.init("cpu")
    base = tiny_config(grad_accum=2)
    rng = np.random.default_rng(rt.rank)
    x = rng.integers(0, base.model.vocab_size, size=(2, base.train.seq_len))
    batch = [(x, np.roll(x, -1, axis=1))]
    for name, optim in VARIANTS.items():
        for sync, tag in (("sharded", ""), ("ddp", "_ddp")):
            cfg = replace(base, optim=replace(base.optim, **optim), train=replace(base.train, grad_sync=sync))
            s = TorchSession(cfg, rt)
            s.load_weights(init_params(base.model, 0))
            for _ in range(2):
                s.step(batch, 1.0, 0.9)
            state = s.optimizer_state()   # every rank: the sharded optimizer gathers
            if rt.is_main:
                np.savez(out / f"{name}{tag}.npz", **s.weights())
                np.savez(out / f"{name}_state{tag}.npz", **{k.replace("/", "|"): v for k, v in state.items()})
    s = TorchSession(replace(base, optim=replace(base.optim, warmup_muon_momentum="keep_multi_rank")), rt)
    s.load_weights(init_params(base.model, 0))
    snap = s.snapshot()
    s.step(batch, 1.0, 0.9)
    before = {n: t.copy() for n, t in s.optimizer_state().items() if n.startswith("muon.momentum/")}
    s.rollback(snap)
    after = {n: t for n, t in s.optimizer_state().items() if n.startswith("muon.momentum/")}
    if rt.is_main:
        kept = bool(before) and all(n in after and np.array_equal(before[n], after[n]) for n in before)
        (out / "kept.json").write_text(json.dumps({"kept": kept, "adam_reset": not s.opt.adam.state}))
    runtime.shutdown()  # a barrier first: a rank leaving early can abort its peer under gloo


if __name__ == "__main__":
    main(Path(sys.argv[1]))
