"""`pgolf pack` and `pgolf inspect` (shared/cli/pack.py) through the real CLI entry point."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.artifact.calibration import calibration_batch, calibration_counts
from shared.artifact.format import read_artifact, read_quantized
from shared.cli import main
from shared.cli import pack as cli_pack
from shared.core.spec import init_params
from shared.data.dataset import open_dataset
from shared.record.script import code_bytes
from shared.run.rundir import load_checkpoint, save_checkpoint
from tests.conftest import tiny_config


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _checkpoint(tmp_path: Path, vocab: int = 512, **quant) -> Path:
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=vocab), quant=replace(cfg.quant, keep_float_max_numel=0, **quant))
    rng = np.random.default_rng(0)
    params = {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in init_params(cfg.model, 1).items()}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return save_checkpoint(run_dir, params, cfg, step=7)


def test_pack_then_inspect_json(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "model.pgz"
    code, stdout, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(out),
                             "--set", "quant.mlp=int6", "--set", "quant.zstd_level=9"], capsys)
    assert code == 0, err
    assert "artifact bytes" in stdout and out.is_file()
    cfg, _ = read_artifact(out)
    assert cfg.quant.mlp == "int6" and cfg.quant.zstd_level == 9
    code, stdout, err = run(["inspect", str(out), "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    for key in ("artifact_bytes", "code_bytes", "total_bytes", "params", "bytes_per_param", "headroom", "tensors"):
        assert key in r
    assert r["artifact_bytes"] == out.stat().st_size
    assert r["code_bytes"] == code_bytes("torch", cfg)  # the train_gpt.py of the artifact's config
    assert r["total_bytes"] == r["artifact_bytes"] + r["code_bytes"]
    assert r["headroom"] == 16_000_000 - r["total_bytes"]
    assert r["params"] == sum(t["params"] for t in r["tensors"])
    assert r["bytes_per_param"] == pytest.approx(r["artifact_bytes"] / r["params"])
    schemes = {t["name"]: t["scheme"] for t in r["tensors"]}
    assert schemes["blocks.0.mlp.fc.weight"] == "int6" and schemes["tok_emb.weight"] == "int8"
    # The human table names every tensor.
    code, stdout, _ = run(["inspect", str(out)], capsys)
    assert code == 0 and "blocks.1.mlp.proj.weight" in stdout and "headroom" in stdout


def test_inspect_over_the_cap_exits_2(tmp_path, capsys, monkeypatch):
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "model.pgz"
    assert run(["pack", str(ckpt), "--backend", "mlx", "-o", str(out)], capsys)[0] == 0
    monkeypatch.setattr(cli_pack, "SIZE_CAP", 1000)
    code, _, err = run(["inspect", str(out), "--backend", "mlx"], capsys)
    assert code == 2 and "over the" in err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "model.pgz"
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(out), "--set", "model.num_layers=3"], capsys)
    assert code == 2 and "only takes quant.*" in err and err.count("\n") == 1
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(out), "--set", "quant.attn=int9"], capsys)
    assert code == 2 and "not a scheme" in err
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(out), "--budget", "1000"], capsys)
    assert code == 2 and "counted code" in err
    bad = tmp_path / "bad.pgz"
    bad.write_bytes(b"PGLF\x01" + b"\0" * 20)
    code, _, err = run(["inspect", str(bad)], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = run(["inspect", str(tmp_path / "none.pgz")], capsys)
    assert code == 2 and "not found" in err


@pytest.mark.torch
def test_gptq_and_budget_from_training_tokens(tmp_path, capsys, tiny_data):
    pytest.importorskip("torch")
    ckpt = _checkpoint(tmp_path, vocab=tiny_data.vocab_size, zstd_level=9, calib_tokens=2048, budget_tokens=512)
    data = ["--data", str(tiny_data.data_dir), "--tokenizer", str(tiny_data.tokenizer)]
    int8 = tmp_path / "int8.pgz"
    assert run(["pack", str(ckpt), "--backend", "torch", "-o", str(int8)], capsys)[0] == 0
    gptq = tmp_path / "gptq.pgz"
    code, stdout, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(gptq), "--set", "quant.attn=int6",
                             "--set", "quant.gptq=true", *data], capsys)
    assert code == 0, err
    assert "calibration: 2,048 tokens from the training split" in stdout
    assert read_quantized(gptq.read_bytes())[0].quant.gptq
    # "frequency" embedding steps count the same calibration tokens; without them they are refused.
    freq = tmp_path / "freq.pgz"
    code, _, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(freq), "--set", "quant.embed_steps=frequency",
                        "--data", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere" in err
    code, stdout, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(freq), "--set", "quant.embed_steps=frequency",
                             *data], capsys)
    assert code == 0 and "calibration: 2,048 tokens" in stdout, err
    assert "tok_emb.weight: frequency steps" in stdout and stdout.rstrip().endswith("checkpoint step 7")
    _, qts = read_quantized(freq.read_bytes())
    scale = qts["tok_emb.weight"].scale
    cfg = load_checkpoint(ckpt)[1]
    counts = calibration_counts(*calibration_batch(open_dataset(tiny_data.data_dir, tiny_data.tokenizer, 512), cfg), 512)
    assert (counts == 0).any() and np.all(scale[counts == 0] == scale.max())   # unseen tokens: the coarsest step
    assert scale[np.argmax(counts)] < np.median(scale)                          # the most frequent: a fine one
    # A budget 30% below the all-int8 size forces some tensors under 8 bits. It counts the larger
    # backend's code, so the artifact fits whichever trainer submits it.
    code_max = max(code_bytes("mlx", cfg), code_bytes("torch", cfg))
    budget = code_max + int(0.7 * int8.stat().st_size)
    out = tmp_path / "budget.pgz"
    code, stdout, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(out), "--budget", str(budget), *data],
                            capsys)
    assert code == 0, err
    # The code counted is the script of the config actually packed: the fit is baked into it.
    fitted = read_quantized(out.read_bytes())[0]
    code_fit = max(code_bytes("mlx", fitted), code_bytes("torch", fitted))
    assert fitted.quant.tensor_schemes and code_fit != code_max
    assert out.stat().st_size + code_fit <= budget and f"({code_max:,} bytes before fitting" in stdout
    assert f"{out.stat().st_size:,} artifact bytes + {code_fit:,} code bytes" in stdout
    _, qts = read_quantized(out.read_bytes())
    bits = [t.bits for t in qts.values() if t.q is not None]
    assert min(bits) < 8 and "budget:" in stdout
    # Impossible budgets say so.
    code, stdout, err = run(["pack", str(ckpt), "--backend", "torch", "-o", str(out), *data,
                             "--budget", str(code_max + 2000)], capsys)
    assert code == 2 and "cannot fit" in err and "even with every tensor at int4" in err
    assert "measuring" not in stdout   # found out before any sensitivity pass
