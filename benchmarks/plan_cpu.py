"""`pgolf plan --hardware cpu` beside a real run on this machine.

    python -m benchmarks.plan_cpu [--seconds 60] [--calibrate] [--nice -5]

Default: trains configs/small.toml with the torch backend for `--seconds` of training steps on the
sample data (`pgolf data sample`), then prints the plan's prediction next to what the run measured (the plan's
CPU row at the mean of the matmul probes read just before and after the run, shared/plan/hardware.py):
ms/step (train_seconds / steps), peak RSS (summary.json peak_memory_bytes: the process's ru_maxrss)
and the final evaluation's seconds, with the load average before and after. `--calibrate` instead
runs the calibration config (a different shape: 3 layers x 256, sequences of 256, 4,096 tokens per
step, no GPTQ) and prints the CPU constants it implies (shared/plan/constants.py CALIBRATION["cpu"]: one
achieved fraction of the CPU's peaks, the static RSS); small.toml is never used to fit them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALIB_SETS = ("model.num_layers=3", "model.model_dim=256", "model.num_heads=4", "model.num_kv_heads=2",
              "train.seq_len=256", "train.batch_tokens=4096", "train.val_every=0", "train.checkpoint_every=0",
              "eval.max_tokens=32768", "quant.gptq=false")


def _train(sets: tuple[str, ...], seconds: float, out: Path, nice: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "shared.cli", "train", "--backend", "torch", "--config", "configs/small.toml",
           "--out", str(out), "--set", f"train.max_seconds={seconds}"]
    for s in sets:
        cmd += ["--set", s]
    pre = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []
    print("$ " + " ".join(pre + cmd[2:]).replace(sys.executable, "python"), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(pre + cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode and pre:   # not allowed to raise priority: run at the default
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"training failed:\n{r.stderr[-2000:]}")
    plan_line = next((ln for ln in r.stdout.splitlines() if ln.startswith("plan")), "")
    summary = json.loads((out / "summary.json").read_text())
    summary["_wall_s"] = time.perf_counter() - t0
    summary["_plan_line"] = plan_line
    return summary


def _probe() -> float:
    from shared.plan.hardware import cpu_probe_gflops

    return cpu_probe_gflops.__wrapped__()   # uncached: a fresh reading


def _predict(sets: tuple[str, ...], seconds: float, gflops: float):
    from shared.core.config import load_config
    from shared.plan import make_plan
    from shared.plan.hardware import cpu_hardware

    cfg = load_config(ROOT / "configs/small.toml", (*sets, f"train.max_seconds={seconds}"))
    return make_plan(cfg, cpu_hardware(gflops), "pgolf"), cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--nice", type=int, default=-5, help="priority of the training run (root may raise it)")
    args = ap.parse_args(argv)
    if not (ROOT / "data/sample/tokenizers/sample_1024_bpe.model").is_file():
        subprocess.run([sys.executable, "-m", "shared.cli", "data", "sample"], check=True, cwd=ROOT)
    sets = CALIB_SETS if args.calibrate else ()
    load0, probe0 = os.getloadavg(), _probe()
    seconds = args.seconds if not args.calibrate else 40.0
    s = _train(sets, seconds, ROOT / "runs" / "bench_plan_cpu", args.nice)
    load1, probe1 = os.getloadavg(), _probe()
    plan, cfg = _predict(sets, seconds, (probe0 + probe1) / 2.0)
    ms = 1000.0 * s["train_seconds"] / max(1, s["steps"])
    rss = s.get("peak_memory_bytes") or 0
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load0[0]:.2f} before, "
          f"{load1[0]:.2f} after (under load when above {os.cpu_count()}); matmul probe {probe0:.1f} GFLOP/s before, "
          f"{probe1:.1f} after (the plan uses their mean)")
    if args.calibrate:
        from shared.plan import constants as K
        from shared.plan import predict as P

        hw = plan.hardware
        prof = P.profile_for("pgolf", cfg, hw, P.parse_techniques((), "pgolf", cfg))
        unit = P.step_terms(cfg, hw, prof, {**K.CALIBRATION["cpu"], "gemm": 1.0, "attn": 1.0, "bw": 1.0}, cfg.train.seq_len, False)
        rest = unit["launch"] + unit["comm"] + unit["host"]
        frac = (unit["gemm"] + unit["attention"] + unit["memory"] + unit["optimizer"]) / (ms - rest)
        mem = P.memory(cfg, hw, prof, {**K.CALIBRATION["cpu"], "static_gib": 0.0})
        static = rss / 2**30 - mem["peak_gib"]
        print(f"measured {ms:.1f} ms/step, peak RSS {rss / 2**30:.3f} GiB -> CALIBRATION['cpu']: gemm = attn = bw = "
              f"{frac:.4g}, static_gib = {static:.4g} (now {K.CALIBRATION['cpu']})")
        return
    j = plan.as_json()
    ev = s.get("eval_seconds")
    rows = [("ms/step", j["ms_per_step"], ms), ("steps", j["steps"], s["steps"]),
            ("peak RSS GiB", j["peak_memory_gb"], rss / 2**30),
            (f"eval seconds ({cfg.eval.mode})", j["eval_seconds"][cfg.eval.mode], ev)]
    print("\n| figure | plan --hardware cpu | measured | error |\n|---|---|---|---|")
    for name, pred, got in rows:
        err = "n/a" if not got else f"{100.0 * (pred - got) / got:+.1f}%"
        print(f"| {name} | {pred:,.3f} | {got if got is None else f'{got:,.3f}'} | {err} |")
    print(f"\ntrain's own summary line: {s['_plan_line']}")


if __name__ == "__main__":
    main()
