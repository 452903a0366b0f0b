"""Per-document LoRA TTT: time, forwards per chunk and scores, against an earlier pgolf commit, side by side.

    python -m benchmarks.ttt_speed [--config configs/small.toml] [--tokens 4096] [--baseline c350e81] [--json]

The same weights (the config's init plus noise: a stand-in checkpoint), the same tokens (documents of
FineWeb-like log-normal lengths), the same settings (`eval.mode = "ttt"`, `eval.ttt = "lora"`, the
config's LoRA keys), torch backend on the CPU with one thread (CPU seconds compare on a shared machine;
the speedup is in CPU seconds), each run in its own process: the `--baseline` commit
(exported with `git archive` into a temporary folder), this tree with two forwards per chunk
(`eval.lora_forwards = 2`) and with one. Reports seconds, forwards per chunk (calls of the model's
trunk) and the largest per-target score difference from this tree's two-forward run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# Runs inside the tree under test (old or new): only APIs both have.
RUNNER = r'''
import json, sys, time
import numpy as np
from shared.core.config import load_config
from shared.eval import driver
from cuda_train.session import session_from
import cuda_train.model as model_mod
import torch
torch.set_num_threads(1)   # one thread: CPU seconds are comparable on a shared machine

cfg_path, params_path, tokens_path, out_path, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
cfg = load_config(cfg_path, overrides)
params = dict(np.load(params_path))
tokens = np.load(tokens_path)

class OneByte:
    def target_bytes(self, t, a, b):
        return b - a

calls = [0]
real = model_mod.GPT.hidden
def counted(self, *a, **k):
    calls[0] += 1
    return real(self, *a, **k)
model_mod.GPT.hidden = counted
session = session_from(cfg, params)
t0, c0 = time.perf_counter(), time.process_time()
ev = driver.run_eval(session, cfg, tokens, OneByte())
sec, cpu = time.perf_counter() - t0, time.process_time() - c0
docs = driver.documents(tokens, ev.ledger.lo, ev.ledger.hi, 1)
e = cfg.eval
# chunk steps: per batch of documents, ceil(longest / chunk)
order = sorted(docs, key=lambda d: d[1] - d[0])
steps = sum(-(-max(t - s for s, t in order[i:i + e.lora_docs]) // e.lora_chunk) for i in range(0, len(order), e.lora_docs))
np.save(out_path, ev.ledger.nats)
print(json.dumps({"seconds": sec, "cpu_seconds": cpu, "nats": ev.result.nats, "tokens": ev.result.tokens, "forwards": calls[0],
                  "chunk_steps": steps}))
'''


def fineweb_like_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """Document lengths in tokens: log-normal with FineWeb's SP8192 mean (~957 tokens: 47.85M tokens over
    50,000 validation documents, #1855's log) and a heavy tail; at least 2 tokens."""
    sigma = 1.0
    mu = np.log(957.0) - sigma**2 / 2
    return np.maximum(2, rng.lognormal(mu, sigma, n).astype(np.int64))


def make_inputs(cfg_path: str, n_tokens: int, folder: Path, scale: float) -> tuple[Path, Path]:
    from shared.core.config import load_config
    from shared.core.spec import BOS_ID, init_params

    cfg = load_config(cfg_path)
    rng = np.random.default_rng(0)
    params = {k: (v + 0.02 * rng.standard_normal(v.shape)).astype(np.float32)
              for k, v in init_params(cfg.model, seed=0).items()}
    parts, total = [], 0
    while total < n_tokens + 1:
        n = max(2, int(fineweb_like_lengths(1, rng)[0] * scale))
        doc = rng.integers(2, cfg.model.vocab_size, n)
        doc[0] = BOS_ID
        parts.append(doc)
        total += n
    tokens = np.concatenate(parts)[: n_tokens + 1].astype(np.int64)
    np.savez(folder / "params.npz", **params)
    np.save(folder / "tokens.npy", tokens)
    return folder / "params.npz", folder / "tokens.npy"


def imbalance(n_docs: int = 50_000, ranks: int = 8, docs: int = 64, chunk: int = 48, context: int = 2048) -> dict:
    """Work per rank (tokens through the model: live rows x window over the chunk steps) of the LoRA queue
    over `n_docs` FineWeb-like documents, max / mean over `ranks`: pgolf's partition and plain dealing."""
    from shared.eval import driver

    lengths = fineweb_like_lengths(n_docs, np.random.default_rng(0))
    starts = np.concatenate([[1], 1 + np.cumsum(lengths)[:-1]])
    queue = [b for _, b in driver.length_batches([(int(s), int(s + n)) for s, n in zip(starts, lengths, strict=True)],
                                                 docs)]
    works = [driver.lora_work(b, chunk, context) for b in queue]
    load = np.bincount(driver.partition(works, ranks), weights=works, minlength=ranks)
    dealt = np.array([sum(works[r::ranks]) for r in range(ranks)])
    return {"docs": n_docs, "ranks": ranks, "batches": len(queue), "partition_max_over_mean": load.max() / load.mean(),
            "round_robin_max_over_mean": dealt.max() / dealt.mean(), "largest_batch_over_mean": max(works) / load.mean()}


def run_tree(tree: Path, cfg_path: str, params: Path, tokens: Path, out: Path, overrides: list[str]) -> dict:
    script = out.with_suffix(".py")
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    res = subprocess.run([sys.executable, str(script), str(REPO / cfg_path), str(params), str(tokens), str(out),
                          *overrides], cwd=tree, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"run in {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/small.toml")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--baseline", default="c350e81", help="the pgolf commit to compare with")
    ap.add_argument("--doc-scale", type=float, default=0.25,
                    help="document lengths x this (small configs have a short context)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--imbalance", action="store_true",
                    help="instead: the LoRA work of 50,000 FineWeb-like documents over 8 ranks (#1855's settings)")
    args = ap.parse_args()
    if args.imbalance:
        print(json.dumps(imbalance()))
        return
    base = ["eval.mode=ttt", "eval.ttt=lora", f"eval.max_tokens={args.tokens}", "train.compute_dtype=float32"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params, tokens = make_inputs(args.config, args.tokens, tmp, args.doc_scale)
        old = tmp / "baseline"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        runs = [(f"{args.baseline} (two forwards)", old, base),
                ("this tree, eval.lora_forwards=2", REPO, [*base, "eval.lora_forwards=2"]),
                ("this tree, eval.lora_forwards=1", REPO, [*base, "eval.lora_forwards=1"])]
        scores = {}
        for name, tree, overrides in runs:
            r = run_tree(tree, args.config, params, tokens, tmp / f"run{len(rows)}.npy", overrides)
            scores[name] = np.load(tmp / f"run{len(rows)}.npy")
            rows.append({"run": name, **r})
        ref = scores[runs[1][0]]
        for r in rows:
            r["max_abs_score_diff_vs_two_forward"] = float(np.abs(scores[r["run"]] - ref).max())
            r["forwards_per_chunk"] = r["forwards"] / r["chunk_steps"]
            r["speedup_vs_baseline"] = rows[0]["cpu_seconds"] / r["cpu_seconds"]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'run':<36} {'wall s':>8} {'CPU s':>8} {'speedup':>8} {'fwd/chunk':>9} {'max |score diff|':>17} "
          f"{'nats/token':>11}")
    for r in rows:
        print(f"{r['run']:<36} {r['seconds']:8.1f} {r['cpu_seconds']:8.1f} {r['speedup_vs_baseline']:8.2f} "
              f"{r['forwards_per_chunk']:9.2f} "
              f"{r['max_abs_score_diff_vs_two_forward']:17.2e} {r['nats'] / r['tokens']:11.6f}")


if __name__ == "__main__":
    main()
