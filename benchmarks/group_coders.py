"""The code-group coders on trained artifacts: bytes, pack and unpack CPU seconds per pipeline.

    python -m benchmarks.group_coders RUN/model.pgz [RUN2/model.pgz ...] [--pipelines zstd,group,group_ans]
                                      [--json OUT.json]

Each artifact is read back to its quantised tensors and its body re-encoded with every pipeline in
turn (table order: quant.group_sort off), so all rows code the very same integer codes, scales and
floats. Per row: artifact bytes (header included), pack and unpack CPU seconds of this process (all
threads; the frame memo is cleared first), wall seconds, and a check that unpacking gives the body back.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import replace
from pathlib import Path

from shared.artifact import compress as pipelines
from shared.artifact import format as artifact


def rows_for(path: Path, names: list[str]) -> list[dict]:
    cfg, qts = artifact.read_quantized(path.read_bytes(), str(path))
    cfg = replace(cfg, quant=replace(cfg.quant, group_sort=False))
    sections = artifact.build_sections(qts, cfg)
    body = b"".join(sections)
    out = []
    for name in names:
        pipelines._MEMO.clear()
        pipelines._memo_bytes = 0
        t, cpu = time.perf_counter(), time.process_time()
        payload = pipelines.encode(name, sections, 22, False)   # zstd at level 22
        pack_cpu, pack_s = time.process_time() - cpu, time.perf_counter() - t
        cpu = time.process_time()
        back = b"".join(pipelines.decode(pipelines.PIPELINE_IDS[name], payload, str(path)))
        unpack_cpu = time.process_time() - cpu
        assert zlib.crc32(back) == zlib.crc32(body) and back == body, f"{path}: {name} round trip"
        out.append({"artifact": str(path), "pipeline": name, "bytes": artifact.HEADER.size + len(payload),
                    "pack_cpu_s": round(pack_cpu, 2), "pack_s": round(pack_s, 2), "unpack_cpu_s": round(unpack_cpu, 2)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", type=Path, nargs="+")
    ap.add_argument("--pipelines", default="zstd,group,group_ans")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [r for p in args.artifacts for r in rows_for(p, args.pipelines.split(","))]
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
