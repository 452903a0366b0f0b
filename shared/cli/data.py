"""`pgolf data`: get a dataset and its tokenizer, and check their byte accounting.

    pgolf data sample [--out data/sample] [--vocab 8192 --transform caseops] [--kind byte]
    pgolf data build --docs SRC --out DIR --vocab N [--val-docs K] [--name NAME] [--transform caseops]
                     [--kind sp|byte] [--workers W]
    pgolf data download --variant sp1024|sp4096|sp8192|byte260|<name> --train-shards N [--out data] [--repo-id ID]
    pgolf data audit --data DIR --tokenizer MODEL [--json]    byte tables vs decoded validation text
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group()
def data() -> None:
    """Datasets and tokenizers: sample, build, download, audit."""


def _done(data_dir: Path, tokenizer: Path) -> None:
    from shared.data.manifest import read_manifest

    manifest = read_manifest(data_dir) or {}
    tokens = manifest.get("tokens", {})
    click.echo(f"data:      {data_dir}")
    click.echo(f"tokenizer: {tokenizer}")
    if tokens:
        click.echo(f"tokens:    val {tokens.get('val', 0):,}, train {tokens.get('train', 0):,}")


def _transform_opt(f):
    return click.option("--transform", type=click.Choice(["none", "caseops"]), default="none", show_default=True,
                        help="caseops: the reversible capitalisation transform (PR #1729), its operators reserved "
                             "in the tokenizer, and fineweb_val_bytes_*.bin byte sidecars.")(f)


def _kind_opt(f):
    return click.option("--kind", type=click.Choice(["sp", "byte"]), default="sp", show_default=True,
                        help="sp: SentencePiece BPE; byte: the challenge's byte260 tokenizer (--vocab is ignored).")(f)


@data.command()
@click.option("--out", default="data/sample", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output root: OUT/datasets/sample_sp1024/ and OUT/tokenizers/sample_1024_bpe.model.")
@click.option("--vocab", default=1024, show_default=True, type=int, help="Tokenizer vocabulary size.")
@_transform_opt
@_kind_opt
def sample(out: Path, vocab: int, transform: str, kind: str) -> None:
    """Build the embedded sample dataset from the Python standard library's documentation (no download)."""
    from shared.data.build import default_workers
    from shared.data.sample import build_sample

    _done(*build_sample(out, vocab=vocab, transform=transform, kind=kind, workers=default_workers()))


@data.command()
@click.option("--docs", "src", required=True,
              help="A .jsonl file with a `text` field, a folder of .txt files, a glob, or one .txt file "
                   "(documents separated by blank lines).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output root.")
@click.option("--vocab", type=int, default=None, help="Tokenizer vocabulary size, e.g. 1024 or 8192 (not for --kind byte).")
@click.option("--val-docs", type=int, default=None,
              help="The first K documents form the validation split [default: 10% of them, at most 50,000].")
@click.option("--name", default=None, help="Dataset name [default: from --docs]: OUT/datasets/<name>_sp<N>/.")
@_transform_opt
@_kind_opt
@click.option("--workers", type=int, default=None, help="Encoding processes [default: the CPU count, at most 8].")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reuse this SentencePiece .model instead of training one (--vocab then comes from it).")
def build(src: str, out: Path, vocab: int | None, val_docs: int | None, name: str | None, transform: str,
          kind: str, workers: int | None, tokenizer: Path | None) -> None:
    """Train a SentencePiece BPE tokenizer (the challenge's settings) and export challenge shards.

    Validation is the first --val-docs documents; neither the tokenizer nor the train shards see them.
    """
    from shared.data.build import build_dataset, default_workers, open_docs
    from shared.errors import PgolfError

    if workers is not None and workers < 1:
        raise PgolfError(f"--workers must be at least 1, got {workers}")
    if vocab is None and kind == "sp" and tokenizer is None:
        raise PgolfError("--vocab is required for a SentencePiece tokenizer (e.g. --vocab 8192), or pass --kind byte")
    docs, default_name = open_docs(src)
    if val_docs is None:
        val_docs = min(50_000, max(1, len(docs) // 10))
    _done(*build_dataset(docs, out, vocab=vocab or 260, val_docs=val_docs, name=name or default_name,
                         source=str(src), transform=transform, kind=kind,
                         workers=default_workers() if workers is None else workers, tokenizer=tokenizer))


@data.command()
@click.option("--variant", default="sp1024", show_default=True,
              help="sp1024, sp4096, sp8192, byte260, caseops, or <name> of a fineweb10B_<name> dataset.")
@click.option("--train-shards", type=int, default=1, show_default=True, help="Train shards to fetch (100M tokens each).")
@click.option("--out", default="data", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output root: OUT/datasets/fineweb10B_<variant>/ and OUT/tokenizers/.")
@click.option("--repo-id", default=None,
              help="Dataset repo id [default: $MATCHED_FINEWEB_REPO_ID, else the variant's known repo].")
@click.option("--repo", default=None, hidden=True, help="Old name of --repo-id.")
@click.option("--remote-root", default=None,
              help="Folder of the export inside the repo [default: $MATCHED_FINEWEB_REMOTE_ROOT_PREFIX, else datasets].")
def download(variant: str, train_shards: int, out: Path, repo_id: str | None, repo: str | None,
             remote_root: str | None) -> None:
    """Download a published FineWeb export from Hugging Face (honours HF_ENDPOINT); every file is verified."""
    from shared.data.download import download as fetch

    _done(*fetch(variant, train_shards, out, repo=repo_id or repo, remote_root=remote_root))


@data.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Dataset folder with the shards.")
@click.option("--tokenizer", required=True, type=click.Path(path_type=Path), help="The SentencePiece .model file (byte260: the .json file).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit(data_dir: Path, tokenizer: Path, as_json: bool) -> None:
    """Check that the bytes BPB is charged with add up to the UTF-8 length of the decoded validation text.

    Every variant: sp<VOCAB> (byte tables), CaseOps (the byte sidecar against the text with the transform
    inverted), byte260. When it is off, names the known bug class that explains it. Exit 1 when not exact.
    """
    from shared.data.audit import audit as run_audit
    from shared.data.audit import describe

    report = run_audit(data_dir, tokenizer)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(describe(report))
    if not report["exact"]:
        sys.exit(1)
