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


def _import_graph() -> dict[str, set[str]]:
    """module -> the pgolf modules it imports (anywhere in its body), parents of itself excluded."""
    from shared.artifact.code import PACKAGES, ROOT, _imports, _module_file, _module_name

    graph = {}
    for f in (f for p in PACKAGES for f in (ROOT / p).rglob("*.py")):
        me = _module_name(f)
        deps = {_module_name(g) for g in map(_module_file, _imports(f)) if g is not None}
        graph[me] = {d for d in deps if d != me and not me.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = "open"
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path)
        path.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u, [])
    return found


def test_no_import_cycles():
    graph = _import_graph()
    assert "shared.core.loop" in graph and "cuda_train.session" in graph
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # the detector itself finds one


def test_backends_never_import_each_other():
    graph = _import_graph()
    for mod, deps in graph.items():
        if mod.startswith("mlx_train"):
            assert not any(d.startswith("cuda_train") for d in deps), mod
        if mod.startswith("cuda_train"):
            assert not any(d.startswith("mlx_train") for d in deps), mod
        if mod.startswith("shared"):
            assert not any(d.startswith(("cuda_train", "mlx_train")) for d in deps), mod


def test_the_demo_finds_its_config():
    from shared.tools.demo import SMALL

    assert SMALL.is_file(), SMALL
