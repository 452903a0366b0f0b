"""Compressor table: bytes of each pipeline on one record-shaped checkpoint, ZPAQ (the `zpaq` package) beside pgolf's.

    python -m benchmarks.compressors [--config configs/frontier.toml] [--zpaq-level 5] [--rows 0,1,5] [--json OUT.json]

The checkpoint is benchmarks/record_artifact.py's record-shaped one (35.9M parameters, untrained:
Student-t weights with per-row scales), quantised by the config's [quant] with round to nearest (no
GPTQ: it needs Hessians). The same body sections go through: brotli-11 (shuffled sections), the
per-group pipeline in table order and with rows sorted (`quant.group_sort`), and the per-group
pipeline with the code groups coded by ZPAQ instead of brotli (the records' lrzip/ZPAQ stage,
#1855 onwards) in both row orders, and pgolf's rANS coder on the code groups (`group_ans`); the small
frames stay brotli-11, as the records keep them. `--rows` picks rows by their index in that order.
ZPAQ runs single-threaded (`threads=1`: the only deterministic setting). Each row: payload bytes,
seconds (under whatever load the machine has) and a round-trip check.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from shared.artifact import compress as pipelines
from shared.artifact import format as artifact
from shared.core.config import load_config


def zpaq_group(sections: list[bytes], sort: bool, level: int) -> bytes:
    """The per-group payload with ZPAQ on the code groups (brotli-11 on the rest), decoded back to check."""
    import zpaq

    meta_sec, codes, scales, floats = sections
    meta = json.loads(meta_sec[4:].decode("utf-8"))
    perms, parts, rest = pipelines._group_split(meta, codes, sort)
    z = [zpaq.compress(p, level=level, threads=1, hints=False) for p in parts]
    frames = [pipelines.brotli_compress(x) for x in (meta_sec, perms)] + z + \
             [pipelines.brotli_compress(x) for x in (rest, scales, floats)]
    back = pipelines._group_join(meta, perms, [zpaq.decompress(b) for b in z], rest, "zpaq")
    assert back == codes, "ZPAQ round trip"
    return pipelines._frames(frames)


def ans_group(sections: list[bytes]) -> bytes:
    """The group_ans payload, decoded back to check."""
    payload = pipelines.encode("group_ans", sections, 22, False)
    assert pipelines.decode("group_ans", payload, "ans") == sections, "rANS round trip"
    return payload


def main() -> None:
    from benchmarks.record_artifact import record_params

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/frontier.toml")
    ap.add_argument("--zpaq-level", type=int, default=5)
    ap.add_argument("--rows", default="", help="comma-separated row indices (default: every row)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    wanted = {int(i) for i in args.rows.split(",") if i.strip()}
    cfg = load_config(args.config)
    cfg = replace(cfg, quant=replace(cfg.quant, gptq=False)).validate()
    params = record_params(cfg)
    plain = artifact.quantize_plain(params, cfg)
    qts = artifact.finish_quantized(params, plain, cfg, None)
    sections = artifact.build_sections(qts, cfg)
    raw = sum(len(s) for s in sections)
    print(f"{sum(v.size for v in params.values()):,} parameters, body {raw:,} bytes", flush=True)
    rows = []

    def row(name: str, make) -> None:
        t = time.perf_counter()
        payload = make()
        rows.append({"pipeline": name, "bytes": len(payload), "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)

    table = [
        ("brotli-11 + shuffle", lambda: pipelines.encode("brotli", sections, 22)),
        ("per-group brotli, table order", lambda: pipelines.encode("group", sections, 22, False)),
        ("per-group brotli, sorted rows", lambda: pipelines.encode("group", sections, 22, True)),
        (f"per-group ZPAQ-{args.zpaq_level}, table order", lambda: zpaq_group(sections, False, args.zpaq_level)),
        (f"per-group ZPAQ-{args.zpaq_level}, sorted rows", lambda: zpaq_group(sections, True, args.zpaq_level)),
        ("per-group rANS, table order (group_ans)", lambda: ans_group(sections)),
    ]
    for i, (name, make) in enumerate(table):
        if not wanted or i in wanted:
            row(name, make)
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "body_bytes": raw, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
