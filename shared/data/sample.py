"""The embedded sample dataset: real English text with no download.

`pgolf data sample` collects the documentation that ships with the running
Python: the module, class and function docstrings and the comment blocks of
every standard-library `.py` file (one document per file, in source order),
plus the `pydoc_data` help topics (one document per topic). The documents are
shuffled with a fixed seed, about a tenth of the text goes to validation, and
`build_dataset` trains the tokenizer and writes the shards:

    data/sample/datasets/sample_sp1024/   fineweb_val_000000.bin, fineweb_train_000000.bin, manifest.json
    data/sample/tokenizers/sample_1024_bpe.model
    data/sample/datasets/sample_sp8192_caseops/  with --vocab 8192 --transform caseops (+ fineweb_val_bytes_000000.bin)

The result depends only on the Python version (the stdlib's text).
"""

from __future__ import annotations

import ast
import re
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np

from shared.data.build import build_dataset, check_vocab

SAMPLE_NAME = "sample"
SAMPLE_VOCAB = 1024
VAL_FRACTION = 0.1
SEED = 1337
_COMMENT = re.compile(r"^[ \t]*#[ \t]?(.*)$")
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(first line, last line, text) of every module/class/function docstring."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        body = getattr(node, "body", [])
        doc = ast.get_docstring(node) if isinstance(node, _DOC_NODES) else None
        if doc and body:
            found.append((body[0].lineno, body[0].end_lineno or body[0].lineno, doc))
        # Definitions only live in statement bodies: no need to walk expressions.
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo.extend(n for n in getattr(node, field, []) or [] if isinstance(n, ast.AST))
    return found


def _comment_blocks(lines: list[str], skip: set[int]) -> list[tuple[int, int, str]]:
    """Runs of consecutive full-line comments (outside docstrings), joined into paragraphs."""
    blocks, run, start = [], [], 0
    for i, line in enumerate([*lines, ""], 1):
        m = _COMMENT.match(line) if i not in skip else None
        text = m.group(1).strip() if m else None
        if text is not None and not text.startswith(("!", "-*-")) and text.strip("#-=*~ ") != "":
            if not run:
                start = i
            run.append(text)
            continue
        if run and sum(len(t) for t in run) >= 20:
            blocks.append((start, i - 1, "\n".join(run)))
        run = []
    return blocks


def module_document(path: Path) -> str:
    """Docstrings and comment blocks of one source file, in source order ('' when none)."""
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():  # some stdlib files hold invalid escape sequences
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    docs = _docstrings(tree)
    inside = {n for lo, hi, _ in docs for n in range(lo, hi + 1)}
    parts = sorted(docs + _comment_blocks(source.splitlines(), inside))
    return "\n\n".join(text for _, _, text in parts).strip()


def stdlib_documents() -> list[str]:
    """Every documentation text of the running Python's standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    docs = [d for d in (module_document(p) for p in files) if len(d) >= 100]
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        topics = {}
    docs += [topics[k].strip() for k in sorted(topics) if len(topics[k].strip()) >= 100]
    return docs


def build_sample(out: str | Path = "data/sample", vocab: int = SAMPLE_VOCAB, transform: str = "none",
                 kind: str = "sp", workers: int = 1) -> tuple[Path, Path]:
    """Build the sample dataset under `out`; returns (data_dir, tokenizer_path).

    `vocab=8192, transform="caseops"` gives a small CaseOps dataset with its
    byte sidecar (`sample_sp8192_caseops/`); `kind="byte"` the byte260 layout.
    """
    check_vocab(vocab, kind)  # before the documents are gathered
    docs = stdlib_documents()
    order = np.random.default_rng(SEED).permutation(len(docs))
    docs = [docs[i] for i in order]
    total = sum(len(d) for d in docs)
    cum = np.cumsum([len(d) for d in docs])
    val_docs = int(np.searchsorted(cum, VAL_FRACTION * total)) + 1
    print(f"{len(docs):,} documents, {total:,} characters from {Path(sysconfig.get_paths()['stdlib'])} "
          f"(Python {sys.version.split()[0]}); {val_docs} for validation", file=sys.stderr, flush=True)
    return build_dataset(docs, out, vocab=vocab, val_docs=val_docs, name=SAMPLE_NAME, transform=transform,
                         kind=kind, workers=workers, source=f"python {sys.version.split()[0]} stdlib docstrings, comments and pydoc topics")
