"""Parity: MLX and PyTorch compute the same numbers from the same weights.

Every option of the [model], [optim] and [train] sections has a case here:
the architecture and optimizer options through `run_parity`'s forward and
training-step checks, the training-loop options (accumulation, micro-batch
cap, undone warm-up, warmdown) through whole `train` runs compared step by step.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("torch")

from conftest import tiny_config  # noqa: E402

from shared.core.spec import init_params, param_table  # noqa: E402
from shared.data.dataset import open_dataset  # noqa: E402
from shared.run.rundir import load_checkpoint  # noqa: E402
from shared.tools.parity import parity_config, rel_diff, run_parity  # noqa: E402

pytestmark = [pytest.mark.mlx, pytest.mark.torch]


def _cfg(model=None, optim=None, **train):
    cfg = tiny_config(**train)
    return replace(cfg, model=replace(cfg.model, **(model or {})), optim=replace(cfg.optim, **(optim or {}))).validate()


# Each case changes options away from the defaults; together they cover every model and optim key.
CASES = {
    "baseline_shape": _cfg(),
    "untied_head": _cfg(model={"tie_embeddings": False}, optim={"embed_lr": 0.3, "head_lr": 0.02}),
    "mha_odd_depth": _cfg(model={"num_layers": 3, "num_heads": 2, "num_kv_heads": 2, "mlp_mult": 3, "model_dim": 48}),
    "softcap_rope_gain": _cfg(model={"logit_softcap": 5.0, "rope_base": 100.0, "qk_gain_init": 3.0,
                                     "tied_embed_init_std": 0.05}),
    "optimizer_knobs": _cfg(optim={"tied_embed_lr": 0.1, "matrix_lr": 0.02, "scalar_lr": 0.01, "muon_momentum": 0.9,
                                   "muon_backend_steps": 3, "muon_momentum_warmup_start": 0.5,
                                   "muon_momentum_warmup_steps": 3, "beta1": 0.8, "beta2": 0.99, "adam_eps": 1e-6,
                                   "grad_clip_norm": 0.05}),
    "step_warmdown": _cfg(iterations=6, warmdown_iters=4),
    # The record stack (README "The record stack"), one option per case, then all of them together.
    "mlp_mult_float": _cfg(model={"mlp_mult": 2.5}),
    "leaky_relu2": _cfg(model={"activation": "leaky_relu2"}),
    "partial_rope": _cfg(model={"rope_dims": 8}),
    "ln_scale": _cfg(model={"ln_scale": True, "num_layers": 3}),
    "xsa": _cfg(model={"xsa_last_n": 1}),
    "skip_gates": _cfg(model={"skip_gates": True, "num_layers": 4}),
    "depth_recurrence": _cfg(model={"num_layers": 3, "loop_start": 1, "loop_end": 1, "num_loops": 2, "loop_at": 0.5},
                             iterations=6),
    "parallel_lanes": _cfg(model={"num_layers": 3, "parallel_from": 1}),
    "smear_gate": _cfg(model={"smear_gate": True, "gate_dims": 6}),
    "smear_across_bos": _cfg(model={"smear_gate": True, "gate_dims": 6, "smear_bos_mask": False}),
    "attn_gate": _cfg(model={"attn_gate": True, "gate_dims": 6, "attn_gate_scale": 0.7}),
    "ortho_init": _cfg(model={"ortho_init": True}),
    "doc_attention": _cfg(model={"doc_attention": True, "doc_max_len": 12}),
    "asym_logit": _cfg(model={"asym_logit": True, "logit_softcap": 4.0}),
    "weight_decay": _cfg(optim={"muon_wd": 0.5, "embed_wd": 0.3, "scalar_wd": 0.2}),
    "muon_eq_r_polar_express": _cfg(optim={"muon_row_norm": True, "muon_ns": "polar_express"}),
    # The record's Muon numerics (#1855; benchmarks/fidelity_optim.py), then its bf16 momentum and Newton-Schulz.
    "record_muon_numerics": _cfg(optim={"muon_row_norm": True, "muon_ns": "polar_express", "muon_row_norm_eps": "max",
                                        "muon_ns_form": "record", "grad_clip_norm": 0.05, "grad_clip_banks": True,
                                        "grad_clip_local": True}),
    "warmdown_frac_min_lr": _cfg(iterations=6, warmdown_frac=0.5, min_lr=0.2),
    "ema": _cfg(ema_decay=0.8),
    "record_stack": _cfg(model={"num_layers": 4, "mlp_mult": 4.0, "activation": "leaky_relu2", "rope_dims": 8,
                                "qk_gain_init": 5.0, "ln_scale": True, "xsa_last_n": 4, "skip_gates": True,
                                "loop_start": 1, "loop_end": 2, "num_loops": 1, "loop_at": 0.35, "parallel_from": 3,
                                "smear_gate": True, "attn_gate": True, "gate_dims": 6, "ortho_init": True,
                                "doc_attention": True, "doc_max_len": 16},
                         optim={"muon_wd": 0.095, "embed_wd": 0.085, "scalar_wd": 0.02, "muon_row_norm": True,
                                "muon_ns": "polar_express", "grad_clip_norm": 0.3, "beta2": 0.99},
                         iterations=6, warmdown_frac=0.85, min_lr=0.1, ema_decay=0.9),
}
# The record artifact: int7 embedding, int6 blocks with per-class sigmas, int8 gates, LQER, pruning,
# per-group compression. Both backends export the weights, pack identical bytes and evaluate the same
# unpacked (LQER-corrected) weights.
_rec = _cfg(model={"attn_gate": True, "smear_gate": True, "gate_dims": 6})
CASES["record_artifact"] = replace(_rec, quant=replace(
    _rec.quant, embed="int7", attn="int6", mlp="int6", gate="int8", keep_float_max_numel=0, attn_clip_k=13.0,
    mlp_clip_k=12.0, embed_clip_k=14.0, lqer_tensors=3, lqer_rank=4, prune_values=200, compressor="group")).validate()


def live_params(cfg, seed: int) -> dict[str, np.ndarray]:
    """Initial weights made far from uniform: projections filled in and embeddings large enough
    that the logits (and so the loss) depend on every path, as in a trained model."""
    params = init_params(cfg.model, seed=seed)
    rng = np.random.default_rng(seed)
    table = param_table(cfg.model)
    for k, v in params.items():
        if k.endswith("proj.weight"):
            params[k] = rng.uniform(-1, 1, v.shape).astype(np.float32) / np.sqrt(v.shape[1])
        elif k in ("tok_emb.weight", "lm_head.weight"):
            params[k] = rng.normal(0, 0.5, v.shape).astype(np.float32)
        elif table[k].init[0] == "zeros":  # zero-initialised gates: make them matter
            params[k] = rng.normal(0, 0.5, v.shape).astype(np.float32)
    return params


@pytest.mark.parametrize("case", list(CASES))
def test_backends_agree(tiny_data, case):
    cfg = replace(CASES[case], data=replace(CASES[case].data, dir=str(tiny_data.data_dir),
                                            tokenizer=str(tiny_data.tokenizer)))
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    rep = run_parity(live_params(cfg, seed=7), cfg, ds, steps=6)
    assert rep.ok, rep.failures()
    f = rep.figures
    assert f["identical"] and f["sha256_mlx"] == f["sha256_torch"]
    assert f["bpb_abs_diff"] <= 1e-4 and f["max_loss_rel_diff"] <= 1e-4
    # The training steps moved the model: the check compared something.
    assert f["train_losses_mlx"][-1] != f["train_losses_mlx"][0]


def test_bf16_momentum_agrees_within_its_rounding_noise(tiny_data):
    """optim.muon_momentum_dtype = bfloat16 rounds each gradient to bf16, so an fp32-level difference between
    the backends' gradients can flip a rounding; the backends round alike otherwise (tests/test_optim_record.py).
    Every check passes, the training losses within the spread torch shows against itself from weights
    nudged by NOISE_REL (the weights check's noise floor, applied to the losses)."""
    from shared.run.backends import get_backend
    from shared.tools.parity import NOISE_FACTOR, NOISE_REL, TRAIN_TOL, train_batches, train_steps

    cfg = _cfg(optim={"muon_row_norm": True, "muon_momentum_dtype": "bfloat16", "muon_ns_form": "record"})
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)))
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    params = live_params(cfg, seed=7)
    rep = run_parity(params, cfg, ds, steps=6)
    assert all(c.ok for c in rep.checks if c.name != "train"), rep.failures()
    pcfg = parity_config(cfg)
    batches = train_batches(ds, pcfg, 6)
    rng = np.random.default_rng(0)
    nudged = {k: (v * (1.0 + NOISE_REL * rng.standard_normal(v.shape))).astype(np.float32) for k, v in params.items()}
    torch_backend = get_backend("torch")
    base, _ = train_steps(torch_backend, params, pcfg, batches)
    moved, _ = train_steps(torch_backend, nudged, pcfg, batches)
    floor = max(rel_diff(a, b) for a, b in zip(base, moved, strict=True))
    assert rep.figures["max_loss_rel_diff"] <= max(TRAIN_TOL, NOISE_FACTOR * floor), (rep.figures, floor)


def test_parity_names_a_divergence(tiny_data, monkeypatch):
    """A one-line difference in one backend (here: MLX's RoPE base) fails the suite and says where."""
    import mlx.core as mx

    from mlx_train import model as mlx_model

    cfg = replace(CASES["baseline_shape"], data=replace(CASES["baseline_shape"].data, dir=str(tiny_data.data_dir),
                                                        tokenizer=str(tiny_data.tokenizer)))
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)

    def rope_other_base(self, x):
        return mx.fast.rope(x, self.head_dim, traditional=False, base=self.rope_base * 2, scale=-1.0, offset=0)

    monkeypatch.setattr(mlx_model.CausalSelfAttention, "_rope", rope_other_base)
    rep = run_parity(live_params(cfg, seed=1), cfg, ds, steps=2)
    failed = [c.name for c in rep.checks if not c.ok]
    assert "forward" in failed and "bpb" in failed
    assert "export" not in failed  # the weights themselves still pack identically
    assert any("forward loss" in f for f in rep.failures())


def test_weights_check_is_not_loosened_by_the_noise_floor(tiny_data, monkeypatch):
    """A real optimizer difference (MLX's learning rates 1% higher) moves the weights past WEIGHT_TOL;
    the noise floor is then measured, and it is far below the difference: the check still fails."""
    from mlx_train.session import MLXSession

    cfg = replace(CASES["baseline_shape"], data=replace(CASES["baseline_shape"].data, dir=str(tiny_data.data_dir),
                                                        tokenizer=str(tiny_data.tokenizer)))
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    step = MLXSession.step
    monkeypatch.setattr(MLXSession, "step", lambda self, b, lr, mom, looped=False: step(self, b, lr * 1.01, mom, looped))
    rep = run_parity(live_params(cfg, seed=1), cfg, ds, steps=3)
    weights = next(c for c in rep.checks if c.name == "weights")
    assert not weights.ok
    floor = rep.figures["weight_noise_floor"]
    assert floor and max(floor.values()) < weights.value / 10


@pytest.fixture(scope="module")
def trained_runs(tiny_data, tmp_path_factory):
    """The same tiny config trained by both trainers: accumulation, a micro-batch token cap,
    undone warm-up and warmdown all in play."""
    from shared.run.backends import get_backend

    cfg = tiny_config(iterations=6, grad_accum=2, max_microbatch_tokens=256, warmup_steps=2, warmdown_iters=3)
    # the warm-up undone except Muon's momentum (optim.warmup_muon_momentum; reset is the snapshot restored)
    cfg = replace(cfg, optim=replace(cfg.optim, warmup_muon_momentum="keep"))
    cfg = replace(parity_config(cfg), data=replace(cfg.data, dir=str(tiny_data.data_dir),
                                                   tokenizer=str(tiny_data.tokenizer)))
    root = tmp_path_factory.mktemp("parity_runs")
    for name in ("mlx", "torch"):
        get_backend(name).train(cfg, root / name)
    return root


def test_training_loops_agree(trained_runs):
    """Whole runs of both trainers from the same seed: same losses at every step, same final weights."""
    runs = {}
    for name in ("mlx", "torch"):
        records = map(json.loads, (trained_runs / name / "metrics.jsonl").read_text().splitlines())
        runs[name] = ([r["train_loss"] for r in records if "train_loss" in r], load_checkpoint(trained_runs / name)[0])
    (lm, wm), (lt, wt) = runs["mlx"], runs["torch"]
    assert len(lm) == len(lt) == 6
    assert max(rel_diff(a, b) for a, b in zip(lm, lt, strict=True)) <= 1e-4
    for k in wm:
        np.testing.assert_allclose(wm[k], wt[k], rtol=1e-3, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_cli_parity_on_trained_checkpoint(trained_runs, tiny_data, backend, capsys):
    """`pgolf parity` on a checkpoint written by each trainer: exit 0 and the documented keys."""
    from shared.cli import main

    ckpt = trained_runs / backend / "checkpoint.safetensors"
    try:
        main([
            "parity", str(ckpt), "--data", str(tiny_data.data_dir), "--tokenizer", str(tiny_data.tokenizer),
            "--steps", "5", "--json",
        ])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] is True and out["identical"] is True
    assert out["sha256_mlx"] == out["sha256_torch"]
    assert out["bpb_abs_diff"] <= 1e-4 and out["max_loss_rel_diff"] <= 1e-4
    assert abs(out["bpb_mlx"] - out["bpb_torch"]) == out["bpb_abs_diff"]


@pytest.mark.slow
def test_sliding_and_ttt_evaluations_agree(trained_runs, tiny_data):
    """Check 6: sliding within 1e-4 BPB, both TTT flavours within TTT_TOL, same token and byte counts."""
    from shared.run.backends import get_backend
    from shared.tools.parity import TTT_TOL, ParityReport, eval_parity

    params, cfg, _ = load_checkpoint(trained_runs / "mlx" / "checkpoint.safetensors")
    cfg = replace(cfg, eval=replace(cfg.eval, max_tokens=1024, stride=16, ttt_chunk_tokens=256, ttt_lr=0.01,
                                    lora_docs=2, lora_chunk=32, lora_rank=2, lora_alpha=2.0)).validate()
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, tiny_data.vocab_size)
    rep = ParityReport()
    eval_parity(rep, params, cfg, ds, (get_backend("mlx"), "mlx"), (get_backend("torch"), "torch"))
    assert rep.ok, rep.failures()
    assert [c.name for c in rep.checks] == ["sliding", "ttt_sgd", "ttt_lora", "ttt_lora_record"]
    assert rep.figures["ttt_lora_record_bpb_abs_diff"] <= TTT_TOL
    assert rep.figures["sliding_bpb_abs_diff"] <= 1e-4 and rep.figures["ttt_lora_bpb_abs_diff"] <= TTT_TOL
    # each mode really is a different evaluation of the same weights
    assert len({round(rep.figures[f"{m}_bpb_mlx"], 6) for m in ("sliding", "ttt_sgd", "ttt_lora", "ttt_lora_record")}) == 4
