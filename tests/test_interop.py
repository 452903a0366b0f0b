"""`pgolf import`: weights shaped as the reference scripts save them keep their loss in pgolf.

The weight files are built here from the reference scripts' documented names, layouts and dtypes
(shared/tools/reference.py's docstring); no reference code is involved. The loss of the source
model is computed by tests/reference_math.py (float64 numpy, either script's convention) and
compared with pgolf's own backends on the imported checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.core.config import Config, ModelConfig, QuantConfig, load_config
from shared.core.spec import RMS_EPS, param_shapes
from shared.run.rundir import load_checkpoint
from shared.tools.reference import flip_rope_halves, from_reference, read_reference, to_reference
from tests.reference_math import bf16_round, reference_loss, reference_weights
from tests.test_cli_errors import run_cli

torch = pytest.importorskip("torch")

MODEL = ModelConfig(vocab_size=256, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=2)


def _config_file(tmp_path, **model) -> str:
    path = tmp_path / ("ref" + "".join(f"-{k}{v}" for k, v in model.items()) + ".toml")
    keys = {"vocab_size": 256, "num_layers": 3, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2, "mlp_mult": 2,
            **model}
    body = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items())
    path.write_text(f"[model]\n{body}\n")
    return str(path)


def _weights(seed: int = 0, m: ModelConfig = MODEL) -> dict[str, np.ndarray]:
    """Reference-shaped weights; the embedding is bf16 in both scripts' files, so it is bf16-exact here."""
    w = reference_weights(m, seed)
    w["tok_emb.weight"] = bf16_round(w["tok_emb.weight"]).astype(np.float32)
    return w


def write_pt(path, w: dict[str, np.ndarray], prefix: str = "") -> None:
    """train_gpt.py's final_model.pt: torch.save of the state dict, tok_emb.weight in bf16."""
    sd = {prefix + k: torch.from_numpy(v.copy()) for k, v in w.items()}
    sd[prefix + "tok_emb.weight"] = sd[prefix + "tok_emb.weight"].to(torch.bfloat16)
    torch.save(sd, path)


def write_npz(path, w: dict[str, np.ndarray]) -> None:
    """train_gpt_mlx.py's .npz: one .npy per name, the bf16 embedding as '<V2' bit patterns (as mx.savez writes)."""
    arrays = dict(w)
    bits = (np.ascontiguousarray(w["tok_emb.weight"]).view(np.uint32) >> 16).astype(np.uint16)
    arrays["tok_emb.weight"] = bits.view(np.dtype("V2"))
    np.savez(path, **arrays)


def _batch(seed: int = 1, seq: int = 48):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, MODEL.vocab_size, size=(2, seq + 1))
    return tok[:, :-1], tok[:, 1:]


def _import(capsys, tmp_path, src, source: str, *extra: str):
    from shared.cli import main

    out = tmp_path / "imported" / "checkpoint.safetensors"
    capsys.readouterr()
    main(["import", str(src), "--from", source, "--config", _config_file(tmp_path), "-o", str(out), *extra])
    assert "wrote" in capsys.readouterr().out
    assert (out.parent / "config.toml").is_file()
    params, cfg, step = load_checkpoint(out)
    assert cfg is not None and cfg.model == MODEL and step == 0
    assert load_config(out.parent / "config.toml").model == MODEL
    return params, cfg


def _pgolf_losses(params, cfg, x, y) -> list[float]:
    """The imported model's loss in every installed backend (fp32 on the CPU)."""
    from cuda_train.backend import batch_loss as torch_loss

    losses = [torch_loss(params, cfg, x, y)]
    try:
        from mlx_train.backend import batch_loss as mlx_loss
    except ImportError:
        return losses
    return losses + [mlx_loss(params, cfg, x, y)]


def test_torch_ref_import_keeps_the_loss(capsys, tmp_path):
    w = _weights()
    write_pt(tmp_path / "final_model.pt", w)
    params, cfg = _import(capsys, tmp_path, tmp_path / "final_model.pt", "torch-ref")
    for k, v in w.items():  # same names and layouts: the values arrive bit for bit
        assert np.array_equal(params[k], v), k
    x, y = _batch()
    want = reference_loss(w, MODEL, x, y, "torch-ref")
    for got in _pgolf_losses(params, cfg, x, y):
        assert got == pytest.approx(want, rel=2e-6)


def test_mlx_ref_import_applies_the_rope_reparametrisation(capsys, tmp_path):
    w = _weights(seed=3)
    write_npz(tmp_path / "run_mlx_model.npz", w)
    params, cfg = _import(capsys, tmp_path, tmp_path / "run_mlx_model.npz", "mlx-ref")
    hd = MODEL.head_dim
    q_src, q_imp = w["blocks.0.attn.c_q.weight"], params["blocks.0.attn.c_q.weight"]
    assert np.array_equal(q_imp[:hd // 2], q_src[:hd // 2]) and np.array_equal(q_imp[hd // 2:hd], -q_src[hd // 2:hd])
    assert np.array_equal(params["blocks.0.attn.c_v.weight"], w["blocks.0.attn.c_v.weight"])
    x, y = _batch(2)
    # The RoPE map is exact: with the eps made equal, the MLX script's maths and pgolf agree to fp32 rounding.
    exact = reference_loss(w, MODEL, x, y, "mlx-ref", eps=RMS_EPS)
    got = _pgolf_losses(params, cfg, x, y)
    for loss in got:
        assert loss == pytest.approx(exact, rel=2e-6)
    # Without the flip the model computes another function: the test could fail.
    naive = _pgolf_losses(w, cfg, x, y)[0]
    assert abs(naive - exact) / exact > 1e-3
    # The script's own eps (1e-6) is the one difference left: small at a trained embedding's scale (std 0.05).
    own = reference_loss(w, MODEL, x, y, "mlx-ref")
    assert 1e-9 < abs(own - exact) / exact < 1e-4


def test_mlx_ref_npz_as_mlx_writes_it(capsys, tmp_path):
    """The .npz exactly as mx.savez writes it (bf16 as '<V2'), where MLX is installed."""
    mx = pytest.importorskip("mlx.core")
    w = _weights(seed=5)
    arrays = {k: mx.array(v) for k, v in w.items()}
    arrays["tok_emb.weight"] = arrays["tok_emb.weight"].astype(mx.bfloat16)
    mx.savez(str(tmp_path / "m.npz"), **arrays)
    raw = read_reference(tmp_path / "m.npz", "mlx-ref")
    assert set(raw) == set(w) and all(np.array_equal(raw[k], w[k]) for k in w)
    params, _ = _import(capsys, tmp_path, tmp_path / "m.npz", "mlx-ref")
    assert np.array_equal(params["tok_emb.weight"], w["tok_emb.weight"])


@pytest.mark.parametrize("source", ["torch-ref", "mlx-ref"])
def test_round_trip(tmp_path, source):
    """reference -> pgolf -> reference is the identity, bit for bit, for both sources; the mlx-ref map
    is its own inverse and not the identity."""
    cfg = Config(model=MODEL)
    w = _weights(seed=7)
    path = tmp_path / ("w.pt" if source == "torch-ref" else "w.npz")
    (write_pt if source == "torch-ref" else write_npz)(path, w)
    params = from_reference(read_reference(path, source), source, cfg, path)
    back = to_reference(params, source, cfg)
    assert list(params) == list(param_shapes(MODEL))
    assert all(np.array_equal(back[k], w[k]) for k in w)
    changed = [k for k in w if not np.array_equal(params[k], w[k])]
    if source == "torch-ref":
        assert changed == []
    else:
        assert sorted(changed) == sorted(f"blocks.{i}.attn.{p}.weight" for i in range(3) for p in ("c_q", "c_k"))
        assert all(np.array_equal(v, w[k]) for k, v in flip_rope_halves(params, MODEL).items())


def test_wrapper_prefix_is_stripped(capsys, tmp_path):
    w = _weights(seed=9)
    write_pt(tmp_path / "compiled.pt", w, prefix="_orig_mod.")
    params, _ = _import(capsys, tmp_path, tmp_path / "compiled.pt", "torch-ref")
    assert np.array_equal(params["skip_weights"], w["skip_weights"])


def test_bad_input_is_one_error_line(capsys, tmp_path):
    w = _weights()
    good = tmp_path / "final_model.pt"
    write_pt(good, w)
    cfg = _config_file(tmp_path)
    out = str(tmp_path / "o" / "checkpoint.safetensors")

    def err(src, *args: str, config: str = cfg, o: str = out) -> str:
        return run_cli(capsys, "import", str(src), *args, "--config", config, "-o", o)

    assert "--from 'torch'" in err(good, "--from", "torch")
    assert "no such file" in err(tmp_path / "none.pt", "--from", "torch-ref")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable torch state dict" in err(tmp_path / "junk.pt", "--from", "torch-ref")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in err(tmp_path / "junk.npz", "--from", "mlx-ref")
    torch.save([1, 2], tmp_path / "list.pt")
    assert "rather than a name -> tensor state dict" in err(tmp_path / "list.pt", "--from", "torch-ref")

    extra = dict(w, **{"blocks.0.attn.rotary.inv_freq": np.ones(8, np.float32)})
    write_pt(tmp_path / "extra.pt", extra)
    assert "blocks.0.attn.rotary.inv_freq is not a torch-ref weight" in err(tmp_path / "extra.pt", "--from", "torch-ref")
    short = {k: v for k, v in w.items() if not k.startswith("blocks.2.")}
    write_pt(tmp_path / "short.pt", short)
    msg = err(tmp_path / "short.pt", "--from", "torch-ref")
    assert "blocks.2.attn.c_q.weight is missing" in msg and "the file has 2 blocks" in msg
    assert "blocks.0.mlp.fc.weight has shape (128, 64), the config gives (192, 64)" in err(
        good, "--from", "torch-ref", config=_config_file(tmp_path, mlp_mult=3))
    untied = dict(w, **{"lm_head.weight": np.zeros((256, 64), np.float32)})
    write_pt(tmp_path / "untied.pt", untied)
    assert "TIE_EMBEDDINGS=0" in err(tmp_path / "untied.pt", "--from", "torch-ref")
    assert "model.xsa_last_n = 2: torch-ref has no such option" in err(
        good, "--from", "torch-ref", config=_config_file(tmp_path, xsa_last_n=2))
    assert "model.activation = 'leaky_relu2': torch-ref has no such option" in err(
        good, "--from", "torch-ref", config=_config_file(tmp_path, activation='"leaky_relu2"'))
    assert "model.smear_gate = True: torch-ref" in err(good, "--from", "torch-ref",
                                                       config=_config_file(tmp_path, smear_gate=True))
    nan = dict(w)
    nan["blocks.1.mlp_scale"] = np.full(64, np.nan, np.float32)
    write_pt(tmp_path / "nan.pt", nan)
    assert "blocks.1.mlp_scale is not finite" in err(tmp_path / "nan.pt", "--from", "torch-ref")
    assert "name the checkpoint file" in err(good, "--from", "torch-ref", o=str(tmp_path / "dir"))

    from shared.cli import main
    main(["import", str(good), "--from", "torch-ref", "--config", cfg, "-o", out])
    assert "already exists: pass --overwrite" in err(good, "--from", "torch-ref")
    main(["import", str(good), "--from", "torch-ref", "--config", cfg, "-o", out, "--overwrite"])
    # rope_dims equal to the head dim is full RoPE, the reference's: accepted
    main(["import", str(good), "--from", "torch-ref", "--config", _config_file(tmp_path, rope_dims=16), "-o", out,
          "--overwrite"])
    assert "model.rope_dims = 8" in err(good, "--from", "torch-ref", config=_config_file(tmp_path, rope_dims=8),
                                        o=str(tmp_path / "p" / "checkpoint.safetensors"))


# ----------------------------------------------------------------------------- documented differences

def test_baseline_packs_small_matrices_as_fp16_like_the_reference():
    """configs/baseline.toml: control tensors fp32, other float tensors of <= 65,536 values fp16, the
    rest int8, as train_gpt.py's export does; the 9x512 baseline itself has no small matrix."""
    from shared.artifact.format import choose_schemes

    base = load_config("configs/baseline.toml")
    small = Config(model=MODEL, quant=base.quant)
    zeros = {k: np.zeros(s, np.float32) for k, s in param_shapes(MODEL).items()}
    schemes = choose_schemes(zeros, small)
    assert schemes["blocks.0.attn.c_k.weight"] == "fp16"      # 2,048 values, not a control tensor
    assert schemes["tok_emb.weight"] == "fp16"                # 16,384 values
    assert schemes["blocks.0.attn.q_gain"] == schemes["blocks.0.resid_mix"] == "fp32"
    assert schemes["skip_weights"] == "fp32"
    # The default ([quant] small = "other") keeps the old rule: small tensors follow quant.other.
    assert choose_schemes(zeros, Config(model=MODEL, quant=QuantConfig(other="fp32")))["blocks.0.attn.c_k.weight"] == "fp32"
    full = {k: np.broadcast_to(np.float32(0), s) for k, s in param_shapes(base.model).items()}
    assert "fp16" not in choose_schemes(full, base).values()


def test_int8_step_is_rounded_to_fp16_before_the_codes():
    """pgolf's choice: codes are round(w / the stored fp16 step), so every unclipped value decodes within
    half a stored step. The reference computes codes with the fp32 step and stores it rounded afterwards;
    under the baseline's settings (1/127 step floor, weights of a trained 9x512 scale) that changes a
    small fraction of codes, each decoding to more than half a step from its value."""
    from shared.artifact.quant import dequantize, percentile_clip, quantize

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((512, 512)) * rng.uniform(0.01, 0.06, size=(512, 1))).astype(np.float32)
    floor = 1.0 / 127.0
    t = quantize(w, "int8", percentile=99.99984, min_scale=floor)
    stored = np.broadcast_to(t.scale.astype(np.float64)[:, None], w.shape)
    clip = percentile_clip(w, 99.99984)[:, None]
    inside = np.abs(w) <= clip
    err = np.abs(dequantize(t).astype(np.float64) - w)
    assert (err[inside] <= stored[inside] * (0.5 + 1e-6)).all()
    step32 = np.maximum(clip / 127.0, floor).astype(np.float32)          # the reference: fp32 step ...
    ref_codes = np.clip(np.rint(np.clip(w, -clip, clip).astype(np.float32) / step32), -127, 127)
    differ = ref_codes != t.q                                             # ... stored as fp16 afterwards
    assert 0 < differ.mean() < 1e-3
    ref_err = np.abs(ref_codes * stored - w)
    assert (ref_err[differ & inside] > stored[differ & inside] * 0.5).all()
