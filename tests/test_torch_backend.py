"""The PyTorch backend's contract pieces on CPU: canonical params, Muon, losses, evaluation, parity steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from shared.core.spec import init_params, param_table
from shared.data.shards import BatchLoader, TokenStream, val_batches, val_token_count
from shared.errors import PgolfError
from tests.conftest import tiny_config

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
backend = pytest.importorskip("cuda_train.backend")
from cuda_train.model import build_model, export_params, load_params  # noqa: E402
from cuda_train.optim import Optimizers, newton_schulz  # noqa: E402


def test_params_round_trip_and_strict_names():
    cfg = tiny_config()
    params = init_params(cfg.model, 3)
    model = build_model(cfg.model, params)
    out = export_params(model)
    assert list(out) == list(params)
    assert all(np.array_equal(out[k], params[k]) for k in params)
    broken = dict(params)
    broken.pop("blocks.0.attn.q_gain")
    with pytest.raises(PgolfError, match="q_gain"):
        load_params(model, broken)


def test_model_file_never_imports_distributed():
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "cuda_train" / "model.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch" in imported and not any(m.startswith("torch.distributed") for m in imported)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_newton_schulz_orthogonalises(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x = newton_schulz(g, 5, torch.float32)
    assert x.shape == g.shape
    s = torch.linalg.svdvals(x)
    # The quintic iteration pushes every singular value into a band around 1 (not exactly 1).
    assert s.min() > 0.5 and s.max() < 1.3, s
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 2  # g itself was far from orthogonal


def test_muon_owns_exactly_the_block_matrices():
    cfg = tiny_config()
    model = build_model(cfg.model, init_params(cfg.model, 0))
    opt = Optimizers(model, cfg.optim, tied=True, ns_dtype=torch.float32)
    names = {p: n for n, p in model.named_parameters()}
    muon = {names[p] for p in opt.muon.param_groups[0]["params"]}
    assert muon == {n for n in names.values() if param_table(cfg.model)[n].group == "matrix"}
    adam = {names[p] for g in opt.adam.param_groups for p in g["params"]}
    assert adam | muon == set(names.values()) and not adam & muon


def test_batch_loss_at_init_is_uniform(tiny_data):
    cfg = tiny_config()
    x, y = BatchLoader(TokenStream(tiny_data.data_dir)).next_batch(512, 64)
    loss = backend.batch_loss(init_params(cfg.model, 0), cfg, x, y)
    # Zero-init output projections and a 0.005-std tied embedding: logits ~ 0, loss ~ ln(vocab).
    assert loss == pytest.approx(math.log(cfg.model.vocab_size), abs=0.02)


def test_evaluate_counts_and_shards_add_up(tiny_data):
    from shared.data.dataset import open_dataset

    cfg = tiny_config()
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, cfg.model.vocab_size)
    params = init_params(cfg.model, 1)
    whole = backend.evaluate(params, cfg, ds.val_tokens, ds.tables)
    assert whole.tokens == val_token_count(ds.val_tokens, cfg.train.seq_len, cfg.eval.max_tokens)
    nbytes = sum(b for _, _, b in val_batches(ds.val_tokens, cfg.train.seq_len, cfg.eval.batch_tokens, ds.tables,
                                               max_tokens=cfg.eval.max_tokens))
    assert whole.bytes == nbytes
    # The mean of per-batch losses equals the summed nats / tokens (equal-sized batches).
    losses = [backend.batch_loss(params, cfg, x, y) for x, y, _ in
              val_batches(ds.val_tokens, cfg.train.seq_len, cfg.eval.batch_tokens, ds.tables,
                          max_tokens=cfg.eval.max_tokens)]
    assert whole.val_loss == pytest.approx(float(np.mean(losses)), rel=1e-5)
    halves = [backend.evaluate(params, cfg, ds.val_tokens, ds.tables, rank=r, world_size=2) for r in (0, 1)]
    assert halves[0].tokens + halves[1].tokens == whole.tokens
    assert halves[0].bytes + halves[1].bytes == whole.bytes
    assert halves[0].nats + halves[1].nats == pytest.approx(whole.nats, rel=1e-6)


def test_train_steps_learns_a_repeated_batch(tiny_data):
    cfg = tiny_config(iterations=10, warmdown_iters=0)
    params = init_params(cfg.model, 0)
    x, y = BatchLoader(TokenStream(tiny_data.data_dir)).next_batch(512, 64)
    from shared.tools.parity import train_steps

    losses, out = train_steps(backend, params, cfg, [(x, y)] * 10)
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 1.0, losses
    assert set(out) == set(params)
    assert not np.array_equal(out["blocks.0.mlp.fc.weight"], params["blocks.0.mlp.fc.weight"])
    assert backend.batch_loss(out, cfg, x, y) < losses[0]


def test_grad_accum_must_split_over_ranks():
    from shared.run.loop import local_accum_steps

    t = tiny_config(grad_accum=2).train
    assert local_accum_steps(t, 2) == 1 and local_accum_steps(t, 1) == 2
    with pytest.raises(PgolfError, match="grad_accum"):
        local_accum_steps(tiny_config(grad_accum=1).train, 2)
