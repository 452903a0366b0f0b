"""Per-document LoRA TTT memory at record width: saved activations per token, and peak resident memory
of evaluating 2,048 tokens against one training step.

    python -m benchmarks.ttt_memory [--config configs/record.toml] [--json]

1. Saved bytes per token: the tensors autograd keeps for the backward of one LoRA forward (distinct
   storages, `torch.autograd.graph.saved_tensors_hooks`) over rows x window tokens, for the two-forward
   step (`lora_step`: logits at every position), the one-forward step (`lora_score`: logits at the
   scored positions only), and the two-forward step with the base weights trainable (as before they
   were frozen). The config's model at its init weights, float32 on the CPU.
2. Peak resident memory (ru_maxrss), each in a fresh process: one training step of 2,048 tokens
   (4 rows of 512) before depth recurrence (the layers once) and after it (`train_looped`: the looped
   order, as every step after `model.loop_at` of the run and as the evaluation runs), and the config's
   evaluation of 2,048 tokens (`eval.max_tokens=2048`, seq_len 512).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PEAK = r'''
import resource, sys, time, json
import numpy as np
import torch
torch.set_num_threads(1)
from shared.core.config import load_config
from shared.core.spec import init_params, BOS_ID
what, cfg_path = sys.argv[1], sys.argv[2]
cfg = load_config(cfg_path, ["train.seq_len=512", "train.batch_tokens=2048", "train.grad_accum=1",
                             "train.compute_dtype=float32", "eval.max_tokens=2048"])
params = init_params(cfg.model, seed=0)
rng = np.random.default_rng(0)
tokens = rng.integers(2, cfg.model.vocab_size, 2049)
tokens[[0, 700, 1500]] = BOS_ID
from cuda_train.session import TorchSession, session_from, local_runtime
t0 = time.perf_counter()
if what.startswith("train"):
    s = TorchSession(cfg, local_runtime(cfg))
    s.load_weights(params)
    x = tokens[:2048].reshape(4, 512); y = tokens[1:2049].reshape(4, 512)
    s.step([(x, y)], 1.0, 0.95, looped=what == "train_looped")
else:
    from shared.eval import driver
    class OneByte:
        def target_bytes(self, t, a, b):
            return b - a
    driver.run_eval(session_from(cfg, params), cfg, tokens, OneByte())
print(json.dumps({"what": what, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - t0}))
'''


def saved_bytes(cfg_path: str, rows: int = 2, width: int = 512) -> list[dict]:
    import numpy as np
    import torch

    from cuda_train.session import session_from
    from shared.core.config import load_config
    from shared.core.spec import init_params
    from shared.eval import driver

    torch.set_num_threads(1)
    cfg = load_config(cfg_path, ["train.compute_dtype=float32", f"eval.lora_docs={rows}"])
    m, e = cfg.model, cfg.eval
    s = session_from(cfg, init_params(m, seed=0))
    out_dims = {n: o for n, (_, o) in driver.lora_shapes(m, e).items()}
    rng = np.random.default_rng(0)
    x = rng.integers(2, m.vocab_size, (rows, width))
    y = rng.integers(2, m.vocab_size, (rows, width))
    mask = np.zeros((rows, width), dtype=bool)
    mask[:, -e.lora_chunk :] = True
    pos = np.tile(np.arange(width - e.lora_chunk, width), (rows, 1))
    weight = np.full((rows, e.lora_chunk), 1.0 / e.lora_chunk, dtype=np.float32)

    def measure(fn) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(seen.values())

    rows_out = []
    for name, frozen, fn in (
            ("two forwards, base weights trainable (before)", False,
             lambda: s.lora_step(x, y, mask, e.lora_lr, e.lora_wd, e.lora_adam_eps)),
            ("two forwards (lora_step), base frozen", True,
             lambda: s.lora_step(x, y, mask, e.lora_lr, e.lora_wd, e.lora_adam_eps)),
            ("one forward (lora_score), base frozen", True,
             lambda: s.lora_score(np.arange(rows), x, y, pos, weight))):
        s.lora_begin(driver.lora_init(m, e), e.lora_alpha / e.lora_rank, out_dims)
        if not frozen:
            for p in s._frozen:
                p.requires_grad_(True)
        b = measure(fn)
        s.lora_end()
        rows_out.append({"what": name, "saved_bytes": b, "tokens": rows * width,
                         "saved_bytes_per_token": b / (rows * width)})
    return rows_out


def peak(what: str, cfg_path: str) -> dict:
    res = subprocess.run([sys.executable, "-c", PEAK, what, cfg_path], cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/record.toml")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    saved = saved_bytes(args.config)
    peaks = [peak(what, args.config) for what in ("train", "train_looped", "eval")]
    if args.json:
        print(json.dumps({"saved": saved, "peaks": peaks}))
        return
    for r in saved:
        print(f"{r['what']:<48} {r['saved_bytes_per_token'] / 1024:10.1f} KiB saved per token")
    for r in peaks:
        print(f"peak RSS, {r['what']:<12} (2,048 tokens) {r['peak_rss_bytes'] / 2**20:10.0f} MiB  ({r['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
