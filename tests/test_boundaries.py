"""`shared/` is framework-free: importing any of it, or running `pgolf --help`, loads neither torch nor mlx.

Checked in a fresh interpreter (sys.modules of this test process is shared
with backend tests that legitimately import the frameworks).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import shared

FRAMEWORKS = ("torch", "mlx")


def _loaded_after(code: str) -> dict:
    probe = code + (
        "\nimport json, sys\n"
        f"print('@@' + json.dumps({{f: any(m == f or m.startswith(f + '.') for m in sys.modules) for f in {FRAMEWORKS!r}}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@"))
    return json.loads(line[2:])


def _shared_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(shared.__path__, "shared.") if not m.name.endswith("__main__"))


def test_shared_is_split_by_phase():
    names = set(_shared_modules())
    assert {"shared.core.config", "shared.core.spec", "shared.data.shards", "shared.data.bpb",
            "shared.artifact.format", "shared.cli.train"} <= names


def test_importing_every_shared_module_loads_no_framework():
    code = "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in _shared_modules())
    assert _loaded_after(code) == {f: False for f in FRAMEWORKS}


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "build", "--help"]])
def test_cli_help_loads_no_framework(argv):
    code = ("from shared.cli import main\n"
            "try:\n"
            f"    main({argv!r})\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n")
    assert _loaded_after(code) == {f: False for f in FRAMEWORKS}
