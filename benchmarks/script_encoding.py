"""The encodings of train_gpt.py's bundle, measured: the file's bytes for each (compressor x text form).

    .venv/bin/python benchmarks/script_encoding.py [configs/record.toml ...]

Every row is checked to round-trip: the written file's bytes decode back to the bundle.
"""

from __future__ import annotations

import base64
import bz2
import lzma
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import brotli  # noqa: E402  (pgolf dependencies, pinned)
import zpaq  # noqa: E402

from shared.core.config import load_config  # noqa: E402
from shared.record.script import CODING, bundle, latin1_literal  # noqa: E402

X9 = 9 | lzma.PRESET_EXTREME


def alone(lc: int, lp: int, pb: int):
    return lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE,
                                   filters=[{"id": lzma.FILTER_LZMA1, "preset": X9, "lc": lc, "lp": lp, "pb": pb}])


def raw2(lc: int, lp: int, pb: int):
    return lambda b: lzma.compress(b, format=lzma.FORMAT_RAW,
                                   filters=[{"id": lzma.FILTER_LZMA2, "preset": X9, "lc": lc, "lp": lp, "pb": pb}])


COMPRESSORS = {
    "xz preset 9e (CHECK_NONE)": (lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=X9),
                                  "lzma.decompress({})", "lzma"),
    "lzma alone lc3 lp0 pb2": (alone(3, 0, 2), "lzma.decompress({})", "lzma"),
    "lzma alone lc3 lp0 pb0": (alone(3, 0, 0), "lzma.decompress({})", "lzma"),
    "lzma alone lc4 lp0 pb0": (alone(4, 0, 0), "lzma.decompress({})", "lzma"),
    "lzma alone lc1 lp0 pb0": (alone(1, 0, 0), "lzma.decompress({})", "lzma"),
    "lzma2 raw lc3 lp0 pb0": (raw2(3, 0, 0), "lzma.decompress({},lzma.FORMAT_RAW,None,[{{'id':lzma.FILTER_LZMA2}}])",
                              "lzma"),
    "zlib 9": (lambda b: zlib.compress(b, 9), "zlib.decompress({})", "zlib"),
    "bz2 9": (lambda b: bz2.compress(b, 9), "bz2.decompress({})", "bz2"),
    "brotli 11, window 2^24": (lambda b: brotli.compress(b, quality=11, lgwin=24), "brotli.decompress({})", "brotli"),
    "zpaq level 5, one thread": (lambda b: zpaq.compress(b, level=5, threads=1, hints=False), "zpaq.decompress({})",
                                 "zpaq"),
    "zpaq level 4, one thread": (lambda b: zpaq.compress(b, level=4, threads=1, hints=False), "zpaq.decompress({})",
                                 "zpaq"),
}


def forms(blob: bytes, expr: str, mod: str) -> dict[str, bytes]:
    b85 = f"base64.b85decode({base64.b85encode(blob).decode('ascii')!r})"
    lit = latin1_literal(blob) + ".encode('latin1')"
    return {
        "base85": f"import base64,{mod};exec({expr.format(b85)})\n".encode("ascii"),
        "latin-1 literal": CODING + f"import {mod};exec({expr.format(lit)})\n".encode("latin-1"),
    }


def round_trips(data: bytes, source: str) -> bool:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "t.py"
        f.write_bytes(data.replace(b";exec(", b";import sys;sys.stdout.buffer.write(", 1))  # print, not run
        out = subprocess.run([sys.executable, str(f)], capture_output=True)
        return out.returncode == 0 and out.stdout == source.encode("utf-8")


def main(paths: list[str]) -> None:
    for path in paths:
        source, _ = bundle(load_config(path))
        print(f"\n{path}: bundle {len(source.encode()):,} bytes (minified, shaken)\n")
        print("| compressor | form | file bytes |\n|---|---|---|")
        for name, (fn, expr, mod) in COMPRESSORS.items():
            blob = fn(source.encode("utf-8"))
            for form, data in forms(blob, expr, mod).items():
                ok = round_trips(data, source)
                print(f"| {name} | {form} | {len(data):,}{'' if ok else ' (FAILS)'} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["configs/record.toml", "configs/small.toml"])
