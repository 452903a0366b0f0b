"""The GPU pod's environment, pinned and checked in one place.

    python -m benchmarks.pod_env [--json OUT]     # exit 0; the report says what differs

PINS is what a record run of pgolf expects on the pod: the torch the lent H100/H200 image
carries (this development machine runs a newer CPU build, so a mismatch here is reported, not
fatal), triton, FlashAttention 3 (`flash_attn_interface`, optional: SDPA's flash kernel is the
fallback and the log says which kernel ran), and the compressors whose builds decide the
artifact's bytes (pyproject.toml pins the same versions; benchmarks/device_check.sh carries their
wheels, which the image lacks). `required` entries must import for a record run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path

# name -> (pinned version prefix or None for "any", required)
PINS: dict[str, tuple[str | None, bool]] = {
    "torch": ("2.11.", True),              # the lent device image: torch 2.11.0+cu130
    "triton": ("3.", False),               # fused kernels (optional); the image has 3.6
    "flash_attn_interface": (None, False),  # FA3 (Hopper); absent from the image: SDPA flash runs instead
    "zstandard": ("0.25.0", True),         # artifact compressor (pyproject.toml)
    "brotli": ("1.2.1", True),             # artifact compressor (pyproject.toml)
    "zpaq": ("0.3.7", True),               # train_gpt.py's own compressed form (pyproject.toml)
    "numpy": (None, True),
    "sentencepiece": (None, True),
    "safetensors": (None, True),
}


def _version(mod) -> str | None:
    for attr in ("__version__", "version", "VERSION"):
        v = getattr(mod, attr, None)
        if isinstance(v, str):
            return v
    try:
        from importlib.metadata import version
        return version(mod.__name__)
    except Exception:  # noqa: BLE001 - a module without distribution metadata
        return None


def check() -> dict:
    out: dict = {"python": platform.python_version(), "packages": {}, "ok": True}
    for name, (pin, required) in PINS.items():
        try:
            mod = importlib.import_module(name)
            ver = _version(mod)
            match = pin is None or (ver is not None and ver.startswith(pin))
            row = {"version": ver, "pin": pin, "required": required, "ok": match}
        except Exception as e:  # noqa: BLE001 - ImportError, or a broken build's own error
            row = {"version": None, "pin": pin, "required": required, "ok": not required,
                   "error": f"{type(e).__name__}: {str(e)[:120]}"}
        out["packages"][name] = row
        out["ok"] &= row["ok"] or not required
    try:
        import torch
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    except Exception as e:  # noqa: BLE001
        out["cuda_error"] = str(e)[:160]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rep = check()
    for name, row in rep["packages"].items():
        if "error" in row:
            flag = "MISSING (required)" if row["required"] else "absent (optional)"
        else:
            flag = "ok" if row["ok"] else ("OTHER VERSION (required)" if row["required"] else "other version (optional)")
        print(f"{name:<22} {str(row['version']):<16} pin {str(row['pin']):<8} {flag}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2) + "\n")
    return rep


if __name__ == "__main__":
    main()
