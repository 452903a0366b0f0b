"""Shared test fixtures: a tiny real-text dataset and tokenizer, built once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

try:  # before any test imports mlx.core: mlx_train loads the Linux BLAS shim first (docs/FACTS.md)
    import mlx_train  # noqa: F401
except ImportError:  # no MLX here: the MLX tests skip
    pass

from shared.core.config import Config, EvalConfig, ModelConfig, TrainConfig, load_config

# Optional extra text no one tuned on (Tiny Shakespeare): tests that use it skip unless PGOLF_SHAKESPEARE names it.
SHAKESPEARE = Path(os.environ["PGOLF_SHAKESPEARE"]) if os.environ.get("PGOLF_SHAKESPEARE") else None


@dataclass(frozen=True)
class TinyData:
    data_dir: Path
    tokenizer: Path
    vocab_size: int


def stdlib_docs(limit_chars: int = 400_000) -> list[str]:
    """Real English text that ships with Python: module docstrings of the standard library."""
    import ast
    import sysconfig

    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc and len(doc) > 200:
            docs.append(doc)
            total += len(doc)
            if total >= limit_chars:
                break
    return docs


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    """vocab 512 tokenizer + val/train shards with BOS before each document, built by `build_dataset`."""
    from shared.data.build import build_dataset

    out = tmp_path_factory.mktemp("tiny_data")
    data_dir, tok = build_dataset(stdlib_docs(), out, vocab=512, val_docs=8, name="tiny")
    return TinyData(data_dir, tok, 512)


def tiny_config(**train_overrides) -> Config:
    """A 2-layer, width-64 model on tiny_data: seconds per run on 2 cores."""
    cfg = Config(
        model=ModelConfig(vocab_size=512, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=2),
        train=TrainConfig(
            iterations=8, max_seconds=0.0, batch_tokens=1024, seq_len=64, grad_accum=2, warmup_steps=0,
            warmdown_iters=4, val_every=0, log_every=1, compute_dtype="float32", compile=False,
        ),
        eval=EvalConfig(max_tokens=2048, batch_tokens=1024),
    )
    from dataclasses import replace

    return replace(cfg, train=replace(cfg.train, **train_overrides)).validate()


__all__ = ["TinyData", "tiny_config", "stdlib_docs", "load_config", "SHAKESPEARE"]


def session_for(backend: str, cfg, params):
    """A one-process evaluation session of `backend` holding `params` (skipped when the backend is absent)."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
        from mlx_train.session import session_from
    else:
        pytest.importorskip("torch")
        from cuda_train.session import session_from
    return session_from(cfg, params)
