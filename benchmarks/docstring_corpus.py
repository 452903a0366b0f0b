"""A held-out corpus for laptop ablations: the docstrings of installed Python code as documents.

    python -m benchmarks.docstring_corpus --out /tmp/corpora/stdlib_docs.txt
    pgolf data build --docs /tmp/corpora/stdlib_docs.txt --out /tmp/corpora --vocab 1024

Technical English prose, no one tuned small-record.toml on it: one document per module (its module,
class and function docstrings joined in source order), separated by blank lines as `pgolf data build`
reads a .txt. Roots: the standard library and this interpreter's site-packages (numpy, torch, ...).
Deterministic for one environment: modules in sorted path order, tests skipped.
"""

from __future__ import annotations

import argparse
import ast
import sysconfig
from pathlib import Path


def module_docs(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    parts = [" ".join(d.split()) for n in nodes if (d := ast.get_docstring(n)) and len(d) > 40]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    paths = sysconfig.get_paths()
    ap.add_argument("--root", type=Path, action="append", help="folders of .py files [default: stdlib, site-packages]")
    a = ap.parse_args()
    roots = a.root or [Path(paths["stdlib"]), Path(paths["purelib"])]
    skip = {"test", "tests", "testing", "idle_test", "site-packages", "lib2to3", "__pycache__"}
    files = sorted(p for r in roots for p in r.rglob("*.py") if not set(p.relative_to(r).parts) & skip)
    docs = [d for d in map(module_docs, files) if len(d) > 200]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n\n".join(d.replace("\n\n", "\n") for d in docs) + "\n", encoding="utf-8")
    print(f"{a.out}: {len(docs)} documents, {a.out.stat().st_size:,} bytes from {len(files)} modules")


if __name__ == "__main__":
    main()
