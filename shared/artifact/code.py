"""The counted code of a pgolf run: the generated train_gpt.py, and the modules it is made of.

A submission's code is one file, `train_gpt.py` (the challenge counts only that
script). pgolf generates it (shared/record/script.py) from the torch entry
`cuda_train/submission.py` and every pgolf module that entry imports, computed
here from the import graph (`script_files`), with the run's config baked in.
`code_bytes(backend, cfg)` is the size of exactly that file, whichever backend
trained the run: the torch script is what gets submitted (an MLX run trains
the same spec; parity shows both agree).

`import_closure` follows every `import` statement, function-level ones
included (a run calls them: calibration, packing), into pgolf's own
packages, and takes each module reached once. Imports made by name at run
time (the CLI's lazy command table, the backend registry, the generator
below) are not followed: a training run never loads the tools behind them
(download, build, audit, parity, budget mode, record export), so they are not
its code. `code_files(backend)` is the same closure from a backend's
`python -m` entry (tests/test_artifact.py checks it against what a real run
loads).
"""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

from shared.errors import PgolfError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "mlx_train", "cuda_train")
BACKEND_PACKAGES = {"mlx": "mlx_train", "torch": "cuda_train"}
SCRIPT_ENTRY = "cuda_train.submission"  # what train_gpt.py runs

# Set by a generated train_gpt.py at start-up (its own size): inside a record
# folder there are no sources to generate from, and the script is the code.
_running_script_bytes: int | None = None


def _module_file(name: str) -> Path | None:
    """The file of a pgolf module (`shared.core.spec` -> shared/core/spec.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def module_name(f: Path) -> str:
    parts = list(f.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_module_name = module_name  # the name tests/test_boundaries.py uses


def _imports(f: Path) -> set[str]:
    """Module names that `f` imports, anywhere in its body (relative imports resolved), except under
    `if TYPE_CHECKING:`: those never run, so they are neither a dependency of a run nor an import cycle."""
    me = module_name(f)
    package = me if f.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_closure(roots: tuple[Path, ...]) -> tuple[Path, ...]:
    """`roots` and every pgolf module they import, transitively (parent packages included), sorted."""
    missing = [str(f) for f in roots if not f.is_file()]
    if missing:
        raise PgolfError(f"counted code file(s) missing: {missing}; is the checkout complete?")
    todo, seen = list(roots), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        names = _imports(f)
        name = module_name(f)
        names.update(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))  # parent packages run too
        todo.extend(g for g in map(_module_file, names) if g is not None and g not in seen)
    return tuple(sorted(seen))


@cache
def code_files_cached(backend: str) -> tuple[Path, ...]:
    if backend not in BACKEND_PACKAGES:
        raise PgolfError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_PACKAGES)}")
    pkg = ROOT / BACKEND_PACKAGES[backend]
    return import_closure((pkg / "__main__.py", pkg / "backend.py"))


def code_files(backend: str) -> list[Path]:
    """The pgolf modules a `python -m <backend package>` training run imports, in a fixed order."""
    return list(code_files_cached(backend))


def script_files() -> list[Path]:
    """The pgolf modules embedded in train_gpt.py: the closure of its entry (`SCRIPT_ENTRY`)."""
    return list(import_closure((ROOT.joinpath(*SCRIPT_ENTRY.split(".")).with_suffix(".py"),)))


def set_running_script_bytes(n: int) -> None:
    """Called by a generated train_gpt.py: its own size is the run's counted code."""
    global _running_script_bytes
    _running_script_bytes = int(n)


def code_bytes(backend: str, cfg=None) -> int:
    """Bytes of the counted code of a run of `cfg` (default config when None) trained by `backend`:
    the size of the train_gpt.py that `pgolf record export` writes for it."""
    if backend not in BACKEND_PACKAGES:
        raise PgolfError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_PACKAGES)}")
    if _running_script_bytes is not None:
        return _running_script_bytes
    # By name, so the generator (a tool) is not part of the import graph it walks.
    script = importlib.import_module("shared.record.script")
    return len(script.generate(cfg).data)
