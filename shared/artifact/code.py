"""The counted code of a pgolf run: the modules a training run imports, computed.

A run enters through `<backend package>/__main__.py` (torchrun, `python -m`)
or `<backend package>/backend.py` (`pgolf train`, which looks the backend up
by name). `code_files` follows every `import` statement of those modules,
function-level ones included (a run calls them: calibration, packing), into
pgolf's own packages, and counts each module reached once. Imports made by
name at run time (the CLI's lazy command table, the backend registry) are
not followed: a training run never loads the tools behind them (download,
build, audit, parity, budget mode), so they are not its code.
tests/test_artifact.py checks the computed set against what a real run loads.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from shared.errors import PgolfError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "mlx_train", "cuda_train")
BACKEND_PACKAGES = {"mlx": "mlx_train", "torch": "cuda_train"}


def _module_file(name: str) -> Path | None:
    """The file of a pgolf module (`shared.core.spec` -> shared/core/spec.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _module_name(f: Path) -> str:
    parts = list(f.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(f: Path) -> set[str]:
    """Module names that `f` imports, anywhere in its body (relative imports resolved)."""
    me = _module_name(f)
    package = me if f.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


@cache
def code_files_cached(backend: str) -> tuple[Path, ...]:
    if backend not in BACKEND_PACKAGES:
        raise PgolfError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_PACKAGES)}")
    pkg = ROOT / BACKEND_PACKAGES[backend]
    todo = [pkg / "__main__.py", pkg / "backend.py"]
    missing = [str(f) for f in todo if not f.is_file()]
    if missing:
        raise PgolfError(f"counted code file(s) missing: {missing}; is the checkout complete?")
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        names = _imports(f)
        name = _module_name(f)
        names.update(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))  # parent packages run too
        todo.extend(g for g in map(_module_file, names) if g is not None and g not in seen)
    return tuple(sorted(seen))


def code_files(backend: str) -> list[Path]:
    """The files whose UTF-8 bytes count as the submission's code, in a fixed order."""
    return list(code_files_cached(backend))


def code_bytes(backend: str) -> int:
    """Bytes of the counted code for `backend` (see `code_files`)."""
    return sum(len(f.read_bytes()) for f in code_files(backend))
