"""Curves of runs and sweeps as one PNG: train loss and val BPB against steps and seconds, the LR scale,
and the artifact's bytes per tensor class. matplotlib is the optional extra `[plot]`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from shared.errors import PgolfError
from shared.research.runs import CORPORA, SWEEP_SPEC, load_run, sweep_groups

MISSING = "pgolf plot needs matplotlib, the optional extra [plot]: pip install -e '.[plot]' (or pip install matplotlib)"


def _runs(paths: list[Path]) -> list[tuple[str, Path]]:
    out = []
    for p in paths:
        if not p.is_dir():
            raise PgolfError(f"{p}: not a folder: pass a `pgolf train` run folder or a `pgolf sweep` folder")
        if (p / SWEEP_SPEC).is_file():
            out += [(f"{g.label} s{r.seed}", r.path) for g in sweep_groups(p) for r in g.runs]
        elif (p / CORPORA).is_file():
            for name in (c["name"] for c in json.loads((p / CORPORA).read_text())["corpora"]):
                out += [(f"{name}/{g.label} s{r.seed}", r.path) for g in sweep_groups(p / name) for r in g.runs]
        else:
            load_run(p)  # a finished run, or one line saying what is wrong
            out.append((p.name, p))
    if not out:
        raise PgolfError(f"{', '.join(map(str, paths))}: no finished runs to plot")
    return out


def curves(run: Path) -> dict[str, list[tuple[float, float, float]]]:
    """(step, seconds, value) per series from metrics.jsonl; the final scored val_bpb from summary.json."""
    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    try:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "step" not in rec or "elapsed" not in rec:
            continue
        for key in ("train_loss", "lr_scale", "val_bpb"):
            if rec.get(key) is not None:
                series[key].append((float(rec["step"]), float(rec["elapsed"]), float(rec[key])))
    s = json.loads((run / "summary.json").read_text())
    last = series["val_bpb"][-1][0] if series["val_bpb"] else None
    if s.get("val_bpb") is not None and last != s.get("steps"):
        series["val_bpb"].append((float(s["steps"]), float(s.get("train_seconds", 0.0)), float(s["val_bpb"])))
    return series


def class_bytes(run: Path) -> dict[str, int]:
    """Compressed bytes of the artifact's tensors, summed per quantization class (embed, attn, mlp, ...)."""
    from shared.artifact.format import read_quantized, tensor_bytes
    from shared.core.spec import param_table

    pgz = run / "model.pgz"
    if not pgz.is_file():
        return {}
    cfg, qts = read_quantized(pgz.read_bytes(), str(pgz))
    table = param_table(cfg.model)
    out: dict[str, int] = defaultdict(int)
    for name, t in qts.items():
        out[table[name].qclass if name in table else "other"] += tensor_bytes(t, cfg.quant.zstd_level)
    return dict(out)


def plot_runs(paths: list[Path], output: Path) -> int:
    """Write the PNG; returns how many runs it shows."""
    try:
        import matplotlib
    except ImportError:
        raise PgolfError(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _runs(paths)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    panels = [("train_loss", 0, axes[0, 0], "train loss", "step"), ("train_loss", 1, axes[0, 1], "train loss", "seconds"),
              ("lr_scale", 0, axes[0, 2], "LR scale", "step"), ("val_bpb", 0, axes[1, 0], "val BPB", "step"),
              ("val_bpb", 1, axes[1, 1], "val BPB", "seconds")]
    classes: dict[str, dict[str, int]] = {}
    for label, path in runs:
        series = curves(path)
        for key, x, ax, _, _ in panels:
            pts = series.get(key, [])
            if pts:
                ax.plot([p[x] for p in pts], [p[2] for p in pts], marker="." if len(pts) < 30 else None, label=label)
        classes[label] = class_bytes(path)
    for _, _, ax, ylabel, xlabel in panels:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    ax = axes[1, 2]
    names = sorted({c for v in classes.values() for c in v})
    width = 0.8 / max(len(classes), 1)
    for i, (label, per) in enumerate(classes.items()):
        ax.bar([j + i * width for j in range(len(names))], [per.get(n, 0) for n in names], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_ylabel("compressed bytes (each tensor alone)")
    ax.set_title("bytes per tensor class")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    tmp.replace(output)
    return len(runs)
