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
    """module -> the pgolf modules it imports anywhere in its body (function-level and `TYPE_CHECKING`
    imports included), parents of itself excluded."""
    from shared.record.script import PACKAGES, ROOT, imports, module_file, module_name

    graph = {}
    for f in (f for p in PACKAGES for f in (ROOT / p).rglob("*.py")):
        me = module_name(f)
        deps = {module_name(g) for g in map(module_file, imports(f, typing=True)) if g is not None}
        graph[me] = {d for d in deps if d != me and not me.startswith(d + ".")}
    return graph


def _package_graph() -> dict[str, set[str]]:
    """shared's subpackages (shared.core, shared.run, ...; top-level modules stand alone) -> those they import."""
    def package(mod: str) -> str:
        return ".".join(mod.split(".")[:2])

    out: dict[str, set[str]] = {}
    for mod, deps in _import_graph().items():
        if mod.startswith("shared."):
            out.setdefault(package(mod), set()).update(
                package(d) for d in deps if d.startswith("shared.") and package(d) != package(mod))
    return out


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
    assert "shared.run.loop" in graph and "cuda_train.session" in graph
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # the detector itself finds one


def test_no_package_cycles_in_shared():
    graph = _package_graph()
    assert {"shared.core", "shared.run", "shared.data", "shared.artifact", "shared.record"} <= set(graph)
    assert _cycles(graph) == []


def test_data_and_artifact_stay_below_orchestration():
    """Data and artifact code is used by the run, never the other way: atomic writes come from shared.files."""
    graph = _package_graph()
    for low in ("shared.core", "shared.data", "shared.artifact", "shared.eval"):
        assert not graph[low] & {"shared.run", "shared.record", "shared.cli", "shared.plan"}, (low, graph[low])
    assert "shared.files" in graph["shared.data"]


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
