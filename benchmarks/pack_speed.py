"""Packing speed of configs/record.toml's 36M checkpoint with GPTQ (no budget search), side by side.

    python -m benchmarks.pack_speed [--against REV] [--cache DIR] [--threads N] [--json OUT]

The checkpoint is benchmarks/record_artifact.py's record-shaped weights (seed 0, not trained); the
Hessians are synthetic but shaped and shared like `collect_hessians`' (q, k and v share one input):
H = (A D)(A D)^T + diag(d), A [in, 192] normal, D and d log-normal, so the diagonal (act order) and
the correlations are uneven like real activations. Token counts are Zipf-like. All are seeded and
saved under --cache, so `--against REV` packs exactly the same inputs with the packer of git
revision REV (exported with `git archive`, run in a subprocess) and reports both times, both
sizes and whether the bytes are equal. Only `shared.artifact.format.pack` is timed: wall seconds and
the process's CPU seconds (all threads), the latter less sensitive to a busy machine. Each tree
packs with its own configs/record.toml (a revision's packer may not know keys or pipelines added
since); each row says which compressor that config names.
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

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the exported tree of another revision: load the inputs, pack, print one JSON line.
CHILD = r"""
import hashlib, json, sys, time
import numpy as np
from shared.artifact import format as artifact
from shared.core.config import load_config
d = sys.argv[1]
cfg = load_config(sys.argv[2])
params = dict(np.load(f"{d}/params.npz"))
hess = dict(np.load(f"{d}/hessians.npz"))
counts = np.load(f"{d}/counts.npy")
t, c = time.perf_counter(), time.process_time()
blob = artifact.pack(params, cfg, hess, token_counts=counts)
dt, dc = time.perf_counter() - t, time.process_time() - c
open(f"{d}/blob_" + sys.argv[3], "wb").write(blob)
print(json.dumps({"seconds": round(dt, 2), "cpu_seconds": round(dc, 2), "bytes": len(blob),
                  "sha256": hashlib.sha256(blob).hexdigest()}))
"""


def synthetic_hessians(cfg, params: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """One Hessian per GPTQ-able matrix, shared where `collect_hessians`' inputs are shared."""
    from shared.core.spec import head_weight_name, names_in_group

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    by_input: dict[str, np.ndarray] = {}
    for name in list(names_in_group(cfg.model, "matrix")) + [head_weight_name(cfg.model)]:
        n_in = params[name].shape[1]
        key = name.replace("c_k.", "c_q.").replace("c_v.", "c_q.")
        if key not in by_input:
            a = rng.normal(size=(n_in, 192)) * np.exp(rng.normal(0.0, 0.5, size=(1, 192)))
            a *= np.exp(rng.normal(0.0, 0.5, size=(n_in, 1)))
            h = a @ a.T
            h[np.diag_indices(n_in)] += np.exp(rng.normal(0.0, 1.0, size=n_in))
            by_input[key] = h
        out[name] = by_input[key]
    return out


def make_inputs(cache: Path) -> None:
    from benchmarks.record_artifact import record_params
    from shared.core.config import load_config

    if (cache / "counts.npy").is_file():
        return
    cache.mkdir(parents=True, exist_ok=True)
    cfg = load_config(ROOT / "configs/record.toml")
    params = record_params(cfg)
    hess = synthetic_hessians(cfg, params)
    rng = np.random.default_rng(1)
    counts = np.floor(1e6 / (1.0 + np.arange(cfg.model.vocab_size)) ** 1.1 * rng.uniform(0.5, 1.5, cfg.model.vocab_size))
    np.savez(cache / "params.npz", **params)
    np.savez(cache / "hessians.npz", **hess)
    np.save(cache / "counts.npy", counts.astype(np.int64))


def _compressor(config: Path) -> str:
    import tomllib

    return tomllib.loads(config.read_text())["quant"].get("compressor", "zstd")


def run_tree(tree: Path, cache: Path, tag: str, threads: int) -> dict:
    """Pack the cached inputs with `tree`'s packer and `tree`'s own configs/record.toml."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PGOLF_PACK_THREADS=str(threads))
    config = tree / "configs/record.toml"
    res = subprocess.run([sys.executable, "-c", CHILD, str(cache), str(config), tag],
                         cwd=tree, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"error: packing with {tree} failed:\n{res.stderr[-2000:]}")
    return {"compressor": _compressor(config), **json.loads(res.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", default=None, help="also pack with this git revision (e.g. main)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pgolf_pack_speed")
    ap.add_argument("--threads", type=int, default=0, help="PGOLF_PACK_THREADS for this tree (0: one per core)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    make_inputs(args.cache)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            rev = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.strip()
            old = Path(tmp) / "old"
            old.mkdir()
            archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            out["before"] = {"rev": rev, **run_tree(old, args.cache, "before", args.threads)}
            print(json.dumps(out["before"]), flush=True)
        out["after"] = {"rev": "working tree", **run_tree(ROOT, args.cache, "after", args.threads)}
        print(json.dumps(out["after"]), flush=True)
    if args.against:
        out["speedup"] = round(out["before"]["seconds"] / out["after"]["seconds"], 2)
        out["cpu_ratio"] = round(out["before"]["cpu_seconds"] / out["after"]["cpu_seconds"], 2)
        out["same_bytes"] = out["before"]["sha256"] == out["after"]["sha256"]
        print(json.dumps({k: out[k] for k in ("speedup", "cpu_ratio", "same_bytes")}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    main()
