"""Budget mode's fit as config: `quant.tensor_schemes`, `pack --write-config`, one
pruning currency, and the counted code of the config actually written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.artifact import format as artifact
from shared.artifact.prune import count_candidates, prune, prune_costs
from shared.core.config import QuantConfig, apply_overrides, load_config
from shared.core.spec import init_params, param_table
from shared.errors import PgolfError
from shared.record.script import code_bytes
from shared.run.rundir import save_checkpoint
from tests.conftest import tiny_config
from tests.test_pack_cli import run


def _cfg(model=None, **quant):
    cfg = tiny_config()
    base = QuantConfig(keep_float_max_numel=0, attn="int8", mlp="int8", embed="int8", zstd_level=9)
    return replace(cfg, model=replace(cfg.model, **(model or {})), quant=replace(base, **quant)).validate()


def _params(cfg, seed=3):
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in init_params(cfg.model, 1).items()}




# ----------------------------------------------------------------------------- the config key

@pytest.mark.parametrize("value, message", [
    ("blocks.9.mlp.fc.weight=int5", "unknown tensor 'blocks.9.mlp.fc.weight' (did you mean 'blocks.1.mlp.fc.weight'?)"),
    ("blocks.0.mlp.fc.weight=int9", "blocks.0.mlp.fc.weight='int9' is not a scheme"),
    ("blocks.0.attn_scale=int6", "blocks.0.attn_scale is a vector"),
    ("blocks.0.mlp.fc.weight", "'blocks.0.mlp.fc.weight' is not NAME=SCHEME"),
    ("tok_emb.weight=int6,tok_emb.weight=int5", "names 'tok_emb.weight' twice"),
])
def test_tensor_schemes_are_checked_when_the_config_loads(value, message):
    with pytest.raises(PgolfError, match="quant.tensor_schemes") as e:
        apply_overrides(tiny_config(), [f"quant.tensor_schemes={value}"])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_bad_table_is_one_line_and_exit_2_on_the_cli(tmp_path, capsys):
    cfg = _cfg()
    ckpt = save_checkpoint(tmp_path, _params(cfg), cfg, step=1)
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(tmp_path / "m.pgz"),
                        "--set", "quant.tensor_schemes=blocks.0.mlp.fc.wieght=int5"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "unknown tensor" in err
    assert not (tmp_path / "m.pgz").exists()


def test_the_table_overrides_the_class_rules_in_every_packing_path(tiny_data, tmp_path):
    """choose_schemes is where `pack`, budget mode and a training run's finish_run take schemes from."""
    from shared.data.dataset import open_dataset
    from shared.run.finish import finish_run
    from shared.run.rundir import RunDir
    from tests.test_record_artifact import _FakeSession

    cfg = _cfg(attn="int6", mlp="int6", tensor_schemes="blocks.1.mlp.fc.weight=int4, tok_emb.weight=int5,"
                                                        "blocks.0.attn.c_q.weight=fp16")
    params = _params(cfg)
    want = {"blocks.1.mlp.fc.weight": "int4", "tok_emb.weight": "int5", "blocks.0.attn.c_q.weight": "fp16",
            "blocks.0.mlp.fc.weight": "int6"}
    _, qts = artifact.read_quantized(artifact.pack(params, cfg))
    assert {n: qts[n].scheme for n in want} == want
    # The table in the config gives the same codes as the old per-call `schemes` argument.
    plain = replace(cfg, quant=replace(cfg.quant, tensor_schemes=""))
    _, old = artifact.read_quantized(artifact.pack(params, plain, schemes={k: v for k, v in want.items()}))
    for n in params:
        assert qts[n].scheme == old[n].scheme
        np.testing.assert_array_equal(artifact.dequantize(qts[n]), artifact.dequantize(old[n]))
    # A training run packs through the same function: its artifact states the same schemes.
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, cfg.model.vocab_size)
    finish_run(_FakeSession(), params, cfg, RunDir(tmp_path), ds, {"val_loss": 1.0, "val_bpb": 0.5, "steps": 1}, code_bytes=0)
    _, run_qts = artifact.read_quantized((tmp_path / "model.pgz").read_bytes())
    assert {n: run_qts[n].scheme for n in want} == want


def test_with_tensor_schemes_writes_only_what_differs_in_name_order():
    cfg = _cfg(attn="int6")
    params = _params(cfg)
    c = artifact.with_tensor_schemes(params, cfg, {"tok_emb.weight": "int5", "blocks.0.attn.c_q.weight": "int6",
                                                    "blocks.1.attn.c_k.weight": "int4"})
    assert c.quant.tensor_schemes == "blocks.1.attn.c_k.weight=int4,tok_emb.weight=int5"


# ----------------------------------------------------------------------------- pruning: one currency

def test_pruning_with_hessians_never_ranks_unweighted_gate_codes_against_weighted_ones():
    """The int8 gate rows get no Hessian. Their plain costs (w^2 units) are far below the Hessian-weighted
    costs of the block matrices (H_jj sums a squared activation over many tokens), so the old mixed
    ranking pruned gate codes first; now only tensors with a Hessian are ranked."""
    model = {"attn_gate": True, "smear_gate": True, "gate_dims": 6}
    cfg = _cfg(model, gate="int4", attn="int4", mlp="int4", embed="int4", gptq=True)
    params = _params(cfg)
    table = param_table(cfg.model)
    gates = [n for n in table if table[n].qclass == "gate"]
    rng = np.random.default_rng(0)
    hessians = {}
    for n, w in params.items():
        if table[n].qclass in ("attn", "mlp", "embed"):
            a = rng.normal(size=(4096, w.shape[1]))      # 4,096 calibration tokens' activations
            hessians[n] = a.T @ a
    plain = artifact.quantize_plain(params, cfg, hessians)
    weighted = np.sort(np.concatenate([prune_costs(params[k], plain[k], hessians[k])[1] for k in hessians]))
    gate_costs = np.concatenate([prune_costs(params[k], plain[k], None)[1] for k in gates])
    # (A weighted cost can be negative: after GPTQ a +-1 code may sit further from w than 0 does.)
    n_prune = int((weighted <= 0).sum()) + 100
    # The premise: mixed, many of the gates' codes would have been among the cheapest n.
    assert (gate_costs < weighted[n_prune - 1]).sum() > 20
    pruned = prune(params, plain, n_prune, hessians)
    for k in gates:
        np.testing.assert_array_equal(pruned[k].q, plain[k].q)
    changed = 0
    for k in hessians:
        pos, c = prune_costs(params[k], plain[k], hessians[k])
        diff = np.flatnonzero(pruned[k].q.reshape(-1) != plain[k].q.reshape(-1))
        assert np.all(c[np.isin(pos, diff)] <= weighted[n_prune - 1])
        changed += len(diff)
    assert changed == n_prune
    assert count_candidates(plain, hessians) == count_candidates({k: plain[k] for k in hessians})
    # Without Hessians there is one currency already (plain error): the gates take part.
    assert count_candidates(plain) > count_candidates(plain, hessians)


# ----------------------------------------------------------------------------- code counted after fitting

@pytest.mark.slow
def test_fit_counts_the_code_of_the_config_it_chose():
    """A stand-in code size that grows with the table: fitting against the pre-fit code size (the old
    way) ends over the budget; fit_budget counts the code of each config it measures."""
    from shared.artifact.budget import fit_budget

    cfg = _cfg(lqer_tensors=2, lqer_rank=4, compressor="zstd")
    params = _params(cfg)

    def code_size(c):
        return 1000 + 150 * len(c.quant.tensor_scheme_map())

    def loss(p):
        return sum(float(((p[k] - params[k]) ** 2).sum()) for k in params)

    budget = int(0.8 * len(artifact.pack(params, cfg))) + code_size(cfg)
    old = fit_budget(params, cfg, budget - code_size(cfg), loss, log=lambda s: None)
    assert len(artifact.pack(params, old)) + code_size(old) > budget   # what the old accounting allowed
    fitted = fit_budget(params, cfg, budget, loss, log=lambda s: None, code_size=code_size)
    assert len(artifact.pack(params, fitted)) + code_size(fitted) <= budget


@pytest.mark.slow
def test_budget_fit_written_as_config_packs_the_same_bytes_and_is_baked_into_the_script(tiny_data, tmp_path, capsys):
    pytest.importorskip("torch")
    from shared.record.script import bundle

    cfg = _cfg(gptq=True, calib_tokens=2048, budget_tokens=512, lqer_tensors=2, lqer_rank=2)
    ckpt = save_checkpoint(tmp_path / "run", _params(cfg), cfg, step=7)
    data = ["--data", str(tiny_data.data_dir), "--tokenizer", str(tiny_data.tokenizer)]
    full = tmp_path / "full.pgz"
    assert run(["pack", str(ckpt), "--backend", "torch", "-o", str(full), *data], capsys)[0] == 0
    budget = code_bytes("torch", cfg) + int(0.75 * full.stat().st_size)
    fit, out = tmp_path / "fit.toml", tmp_path / "budget.pgz"
    code, stdout, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(out), "--budget", str(budget), *data,
                             "--write-config", str(fit)], capsys)
    assert code == 0, err
    fitted = load_config(fit)
    per = fitted.quant.tensor_scheme_map()
    assert per and "budget: fit: quant.tensor_schemes overrides" in stdout and f"wrote {fit}" in stdout
    # artifact + the code of the config written (the script bakes it) fit the budget
    assert out.stat().st_size + code_bytes("torch", fitted) <= budget
    # Packing from the written config, without --budget, gives the same bytes.
    again = tmp_path / "again.pgz"
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(again), "--config", str(fit), *data], capsys)
    assert code == 0, err
    assert again.read_bytes() == out.read_bytes()
    # The generated train_gpt.py carries the fit in its baked config.
    import ast

    from shared.core.config import Config, to_dict

    source, _ = bundle(fitted)
    # the baked config is the `C=` line after the embedded modules (whose own lines may start with C= too)
    baked = ast.literal_eval([line[2:] for line in source.splitlines() if line.startswith("C=")][-1])
    quant = {**to_dict(Config())["quant"], **baked["quant"]}   # the script holds the keys that differ
    q = fitted.quant
    assert baked["quant"]["tensor_schemes"] == q.tensor_schemes
    assert quant["prune_values"] == q.prune_values and quant["lqer_rank"] == q.lqer_rank
    # --write-config never replaces a file unasked, and says so before any fitting.
    code, stdout, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(tmp_path / "x.pgz"), "--budget",
                             str(budget), *data, "--write-config", str(fit)], capsys)
    assert code == 2 and "--overwrite" in err and "budget:" not in stdout
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(tmp_path / "x.pgz"),
                        "--write-config", str(tmp_path / "new.toml")], capsys)
    assert code == 2 and "add --budget" in err
    # A config for another model is refused by name.
    other = tmp_path / "other.toml"
    other.write_text(Path(fit).read_text().replace("num_layers = 2", "num_layers = 3"))
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(tmp_path / "x.pgz"), "--config",
                        str(other)], capsys)
    assert code == 2 and "model.num_layers" in err


# ----------------------------------------------------------------------------- cheaper budget mode

@pytest.mark.slow
def test_narrowest_measures_one_loss_per_tensor_and_still_fits():
    from shared.artifact.budget import CANDIDATES, fit_budget

    cfg = _cfg(compressor="zstd", budget_measure="narrowest")
    params = _params(cfg)
    calls = []

    def loss(p):
        calls.append(1)
        return sum(float(((p[k] - params[k]) ** 2).sum()) for k in params)

    lines: list[str] = []
    budget = int(0.8 * len(artifact.pack(params, cfg)))
    fitted = fit_budget(params, cfg, budget, loss, log=lines.append)
    assert len(artifact.pack(params, fitted)) <= budget
    eligible = sum(1 for s in artifact.choose_schemes(params, cfg).values() if s.startswith("int"))
    sens = next(ln for ln in lines if "measuring" in ln)
    assert f"measuring {eligible} tensors x 1 schemes" in sens
    options = sum(1 for ln in lines if "budget: option" in ln)
    assert len(calls) == 1 + eligible + options      # base, one per tensor, one per option
    assert len(calls) < eligible * len(CANDIDATES)
    assert any(ln.startswith("budget: time: quantise") for ln in lines)


def test_compressed_frames_are_remembered_without_changing_a_byte():
    from shared.artifact import compress

    raw = np.random.default_rng(0).integers(-3, 4, size=200_000).astype(np.int8).tobytes()
    first = compress.brotli_compress(raw)
    assert compress.brotli_compress(raw) is first            # the same frame object: remembered
    assert compress._brotli().compress(raw, quality=11, lgwin=24) == first
    assert compress.zstd_compress(raw, 9) == compress._zstd_compress(raw, 9)
