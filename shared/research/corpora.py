"""One sweep per corpus, and where its results hold: `--data D1 --data D2 ...` on `pgolf sweep` / `ablate`.

Each corpus is a sweep of its own in OUT/<corpus> (resumable as any sweep); OUT/corpora.json holds the
cross-corpus table: for every point, its delta and verdict against the base point on each corpus, and
whether the verdict is the same on all of them. A laptop result whose sign flips with the corpus is
the first thing to know before paying for a pod.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from shared.errors import PgolfError
from shared.research.runs import _f
from shared.research.sweep import run_sweep


def corpus_names(datas: list[str]) -> list[str]:
    names = []
    for i, d in enumerate(datas):
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(d).name) or f"corpus{i}"
        names.append(base if base not in names else f"{base}-{i}")
    return names


def run_corpora(out: Path, datas: list[str], tokenizers: list[str], **kw: Any) -> dict[str, Any]:
    """Every corpus's sweep in turn (OUT/<name>), then the cross-corpus table (OUT/corpora.json)."""
    if tokenizers and len(tokenizers) != len(datas):
        raise PgolfError(f"{len(datas)} --data but {len(tokenizers)} --tokenizer: give one tokenizer per dataset "
                         "(in the same order), or none to take data.tokenizer from the config")
    for d in datas:
        if not Path(d).is_dir():
            raise PgolfError(f"--data {d}: not a folder: pass a dataset folder (fineweb_{{train,val}}_*.bin)")
    names = corpus_names(datas)
    per: dict[str, dict[str, Any]] = {}
    for i, (name, d) in enumerate(zip(names, datas, strict=True)):
        per[name] = run_sweep(out / name, data=d, tokenizer=tokenizers[i] if tokenizers else None, **kw)
    cross = []
    for j, row in enumerate(per[names[0]]["rows"]):
        cells = {n: {k: per[n]["rows"][j][k] for k in ("q_val_bpb_mean", "delta", "p_better", "p_worse", "verdict")}
                 for n in names}
        verdicts = {c["verdict"] for c in cells.values()}
        holds = ("reference" if j == 0 else f"same on all {len(names)} corpora: {verdicts.pop()}" if len(verdicts) == 1
                 else "; ".join(f"{v} on {', '.join(n for n in names if cells[n]['verdict'] == v)}"
                                for v in sorted(verdicts)))
        cross.append({"label": row["label"], "corpora": cells, "holds": holds})
    summary = {"corpora": [{"name": n, "data": d} for n, d in zip(names, datas, strict=True)], "budget": {n: per[n]["budget"] for n in names},
               "per_corpus": per, "cross": cross}
    from shared.files import atomic_write_bytes

    atomic_write_bytes(out / "corpora.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


def render_cross(summary: dict[str, Any]) -> str:
    names = [c["name"] for c in summary["corpora"]]
    lines = ["| point | " + " | ".join(f"{n}: q_val_bpb (delta, verdict)" for n in names) + " | where it holds |",
             "|---|" + "---|" * len(names) + "---|"]
    for r in summary["cross"]:
        cells = []
        for n in names:
            c = r["corpora"][n]
            extra = "" if c["verdict"] == "reference" else f" ({_f(c['delta'], '+.4f')}, {c['verdict']})"
            cells.append(f"{_f(c['q_val_bpb_mean'], '.4f')}{extra}")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['holds']} |")
    return "\n".join(lines)
