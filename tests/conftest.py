"""Shared test fixtures: a tiny real-text dataset and tokenizer, built once per session."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shared.config import Config, ModelConfig, TrainConfig, EvalConfig, load_config
from shared.shards import write_shard

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


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
    """vocab 512 tokenizer + val/train shards with BOS before each document."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("tiny_data")
    docs = stdlib_docs()
    val_docs, train_docs = docs[:8], docs[8:]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train_docs), model_writer=model, vocab_size=512, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, character_coverage=0.999, minloglevel=2,
        max_sentence_length=100_000,
    )
    tok = out / "tiny_512_bpe.model"
    tok.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    for split, group in (("val", val_docs), ("train", train_docs)):
        ids = [t for d in group for t in [1, *sp.encode(d)]]
        write_shard(out / f"fineweb_{split}_000000.bin", np.array(ids, dtype=np.uint16))
    return TinyData(out, tok, 512)


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
