"""The artifact format (shared/artifact/format.py): round trip, determinism, refusal of bad files, code bytes."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.artifact import compress as pipelines
from shared.artifact import format as artifact
from shared.artifact.quant import fp16_scale, frequency_clip, row_scales, token_weights
from shared.core.config import QuantConfig, to_toml
from shared.core.spec import init_params, param_shapes, param_table
from shared.errors import PgolfError
from shared.record import script as code
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**quant):
    cfg = tiny_config()
    return replace(cfg, quant=replace(QuantConfig(keep_float_max_numel=0, clip_k=4.0, zstd_level=9), **quant)).validate()


def _trained_like(cfg, seed=3) -> dict[str, np.ndarray]:
    """Spec-initialised weights plus noise, so no tensor is all zeros or all ones."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in init_params(cfg.model, 1).items()}


def test_round_trip_names_shapes_config_and_error():
    cfg = _cfg(embed="int8", attn="int6", mlp="int5", other="fp16")
    params = _trained_like(cfg)
    blob = artifact.pack(params, cfg)
    cfg2, out = artifact.unpack(blob)
    assert cfg2.model == cfg.model and cfg2.quant == cfg.quant and cfg2.train == cfg.train
    assert list(out) == sorted(param_shapes(cfg.model))
    schemes = {"embed": "int8", "attn": "int6", "mlp": "int5"}
    for name, w in params.items():
        w_hat = out[name]
        assert w_hat.dtype == np.float32 and w_hat.shape == w.shape
        cls = param_table(cfg.model)[name].qclass
        if cls == "other":
            assert np.allclose(w_hat, w, rtol=1e-3, atol=1e-6)
        else:
            # Within half of each row's step, except clipped outliers.
            q = cfg.quant
            step = row_scales(w, schemes[cls], q.clip_percentile, q.clip_k, q.min_scale).astype(np.float64)
            err = np.abs(w - w_hat) / step[:, None]
            assert np.mean(err <= 0.5 * 1.01) > 0.98, name


def test_same_inputs_same_bytes_and_header_is_tiny():
    cfg = _cfg(attn="int6", mlp="int6")
    params = _trained_like(cfg)
    a = artifact.pack(params, cfg)
    b = artifact.pack({k: params[k].copy() for k in reversed(list(params))}, cfg)  # dict order must not matter
    assert a == b
    assert a[:4] == artifact.MAGIC and artifact.HEADER.size <= 16


_PACK_SCRIPT = """
import hashlib, sys
import numpy as np
from shared.record import script as code
from shared.artifact import format as artifact
from shared.core.config import from_toml_text
data = np.load(sys.argv[1])
cfg = from_toml_text(open(sys.argv[2]).read())
params = {k[2:]: data[k] for k in data.files if k.startswith("p:")}
hess = {k[2:]: data[k] for k in data.files if k.startswith("h:")} or None
print(hashlib.sha256(artifact.pack(params, cfg, hess)).hexdigest())
"""


# The record artifact's steps in every pipeline: LQER (power iteration), pruning, brotli.
_RECORD_QUANT = {"embed": "int7", "lqer_tensors": 2, "prune_values": 300, "attn_clip_k": 5.0}


@pytest.mark.parametrize("gptq,extra", [(False, {}), (True, {}),
                                        (True, {**_RECORD_QUANT, "compressor": "group"}),
                                        (False, {**_RECORD_QUANT, "compressor": "brotli"}),
                                        (True, {**_RECORD_QUANT, "compressor": "brotli"}),
                                        (False, {**_RECORD_QUANT, "compressor": "group_ans"})])
def test_bytes_do_not_depend_on_thread_count(tmp_path, gptq, extra):
    from shared.core.config import to_toml

    cfg = _cfg(attn="int6", mlp="int5", gptq=gptq, zstd_level=19, **extra)
    params = _trained_like(cfg)
    arrays = {f"p:{k}": v for k, v in params.items()}
    if gptq:
        rng = np.random.default_rng(0)
        for name, w in params.items():
            if w.ndim == 2 and param_table(cfg.model)[name].qclass in ("attn", "mlp"):
                a = rng.normal(size=(512, w.shape[1])) * rng.uniform(0.1, 3.0, size=w.shape[1])
                arrays[f"h:{name}"] = a.T @ a
        cfg = replace(cfg, quant=replace(cfg.quant, gptq_block=16))   # blocked GPTQ: exact_dot in play
    np.savez(tmp_path / "in.npz", **arrays)
    (tmp_path / "cfg.toml").write_text(to_toml(cfg))
    digests = set()
    for threads in ("1", "2", "7"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   PGOLF_PACK_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", _PACK_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "cfg.toml")],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    hess = {k[2:]: v for k, v in arrays.items() if k.startswith("h:")} or None
    digests.add(hashlib.sha256(artifact.pack(params, cfg, hess)).hexdigest())
    assert len(digests) == 1


def _blob():
    cfg = _cfg(attn="int6")
    return artifact.pack(_trained_like(cfg), cfg)


def _check_refused(blob, match):
    with pytest.raises(PgolfError, match=match) as e:
        artifact.unpack(blob, source="x.pgz")
    assert "\n" not in str(e.value) and str(e.value).startswith("x.pgz")


def test_truncated_and_trailing_bytes_are_refused():
    blob = _blob()
    _check_refused(blob[:-1], "truncated")
    _check_refused(blob[:7], "too short")
    _check_refused(blob + b"\0", "trailing")


def test_corrupted_body_is_refused():
    blob = bytearray(_blob())
    for pos in (artifact.HEADER.size + 5, len(blob) // 2, len(blob) - 3):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        _check_refused(bytes(bad), "corrupt|checksum")


def test_wrong_checksum_magic_and_future_version_are_refused():
    blob = _blob()
    magic, version, pid, length, crc = artifact.HEADER.unpack_from(blob)
    body = blob[artifact.HEADER.size:]
    _check_refused(artifact.HEADER.pack(magic, version, pid, length, crc ^ 1) + body, "checksum")
    _check_refused(artifact.HEADER.pack(b"PK\x03\x04", version, pid, length, crc) + body, "not a pgolf artifact")
    _check_refused(artifact.HEADER.pack(magic, version + 1, pid, length, crc) + body, "version 3 is not read")
    assert struct.calcsize("<4sBBII") == artifact.HEADER.size and zlib.crc32(b"") == 0


def test_a_reader_that_names_the_pipeline_refuses_another():
    """A run reads back what it wrote with its own pipeline (train_gpt.py carries that decoder only)."""
    blob = _blob()
    assert artifact.pipeline_of(blob) == "zstd"
    _, params = artifact.unpack(blob, pipeline="zstd")
    assert set(params) == set(artifact.unpack(blob)[1])
    with pytest.raises(PgolfError, match="pipeline id 0, not brotli"):
        artifact.unpack(blob, pipeline="brotli")


def test_write_and_read_artifact(tmp_path):
    cfg = _cfg()
    params = _trained_like(cfg)
    path = artifact.write_artifact(tmp_path / "sub" / "model.pgz", artifact.pack(params, cfg))
    cfg2, out = artifact.read_artifact(path)
    assert cfg2.model == cfg.model and set(out) == set(params)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(PgolfError, match="not found"):
        artifact.read_artifact(tmp_path / "missing.pgz")


def test_gptq_without_hessians_is_a_clear_error():
    cfg = _cfg(attn="int6", gptq=True)
    with pytest.raises(PgolfError, match="needs Hessians"):
        artifact.pack(_trained_like(cfg), cfg)


def test_frequency_embedding_steps_need_counts_and_follow_them():
    cfg = _cfg(embed="int8", attn="int6", mlp="int6", embed_steps="frequency", embed_clip_k=20.0)
    params = _trained_like(cfg)
    vocab = cfg.model.vocab_size
    with pytest.raises(PgolfError, match="frequency"):
        artifact.pack(params, cfg)
    with pytest.raises(PgolfError, match="token counts"):
        artifact.pack(params, cfg, token_counts=np.ones(vocab - 1))
    artifact.pack(params, replace(cfg, quant=replace(cfg.quant, embed="fp16")))   # a float embedding needs no counts
    counts = np.zeros(vocab)
    counts[: vocab // 2] = np.arange(vocab // 2, 0, -1) ** 2      # lower ids more frequent; the upper half unseen
    blob = artifact.pack(params, cfg, token_counts=counts)
    assert blob == artifact.pack(params, cfg, token_counts=counts.copy())
    _, qts = artifact.read_quantized(blob)
    scale = qts["tok_emb.weight"].scale.astype(np.float64)
    expected = fp16_scale(frequency_clip(params["tok_emb.weight"], 20.0, token_weights(counts, cfg.quant.embed_freq_floor)), 8)
    assert np.array_equal(qts["tok_emb.weight"].scale, expected) and scale[0] < scale[vocab // 2 - 1] < scale[-1]
    assert np.all(scale[vocab // 2:] == scale[-1])               # every unseen token gets the coarsest step
    # Only the embedding changes: the block matrices are packed as with per-row steps.
    _, rows = artifact.read_quantized(artifact.pack(params, replace(cfg, quant=replace(cfg.quant, embed_steps="row"))))
    for name, t in qts.items():
        if name != "tok_emb.weight" and t.q is not None:
            assert np.array_equal(t.q, rows[name].q) and np.array_equal(t.scale, rows[name].scale), name
    # Untied: the input embedding and the head both take the token's frequency.
    untied = replace(cfg, model=replace(cfg.model, tie_embeddings=False))
    _, qts = artifact.read_quantized(artifact.pack(_trained_like(untied), untied, token_counts=counts))
    for name in ("tok_emb.weight", "lm_head.weight"):
        scale = qts[name].scale.astype(np.float64)
        assert scale[0] < scale[-1] and np.all(scale[vocab // 2:] == scale[-1]), name


def test_budget_that_fits_at_int8_measures_nothing():
    from shared.artifact.budget import CANDIDATES, budget_schemes

    cfg = _cfg(embed="int8", attn="int6", mlp="int6")
    params = _trained_like(cfg)

    def loss(_):
        raise AssertionError("no sensitivity is needed when everything fits at the widest scheme")

    lines: list[str] = []
    chosen = budget_schemes(params, cfg, 10**9, loss, log=lines.append)
    assert set(chosen.values()) == {CANDIDATES[0]} and "every tensor at int8" in lines[-1]
    assert len(artifact.pack(params, cfg, schemes=chosen)) <= 10**9


def test_scheme_overrides_and_small_tensors_as_other():
    cfg = replace(_cfg(attn="int6"), quant=replace(_cfg().quant, attn="int6", keep_float_max_numel=64 * 64))
    params = _trained_like(cfg)
    _, qts = artifact.read_quantized(artifact.pack(params, cfg, schemes={"blocks.0.mlp.fc.weight": "int4"}))
    assert qts["blocks.0.attn.c_q.weight"].scheme == "fp16"       # 64x64 = 4096 <= keep_float_max_numel
    assert qts["blocks.0.mlp.fc.weight"].scheme == "int4"
    assert qts["blocks.0.attn_scale"].scheme == "fp16"
    with pytest.raises(PgolfError, match="unknown tensor"):
        artifact.pack(params, cfg, schemes={"nope": "int4"})


def test_code_bytes_counts_the_computed_files():
    for backend in ("mlx", "torch"):
        files = code.code_files(backend)
        pkg = code.BACKEND_PACKAGES[backend]
        assert any(f.parent.name == pkg for f in files)
        # What counts is the generated train_gpt.py (shared/record/script.py), far smaller than the sources.
        from shared.record.script import generate

        assert 10_000 < code.code_bytes(backend) == len(generate(None).data) < sum(len(f.read_bytes()) for f in files)
        names = {str(f.relative_to(ROOT)) for f in files}
        # The tools a run never imports are not counted; what a run needs is.
        assert "shared/artifact/format.py" in names and "shared/run/finish.py" in names
        assert not names & {"shared/data/download.py", "shared/data/audit.py", "shared/tools/parity.py",
                            "shared/artifact/budget.py", "shared/cli/data.py", "shared/cli/pack.py"}
    script = {str(f.relative_to(ROOT)) for f in code.script_files()}
    assert "cuda_train/submission.py" in script and "shared/run/finish.py" in script
    assert not script & {"shared/cli/train.py", "shared/cli/__init__.py", "shared/data/download.py"}
    with pytest.raises(PgolfError, match="unknown backend"):
        code.code_bytes("jax")


_IMPORTS = """
import sys, runpy
sys.argv = [sys.argv[1], "--config", sys.argv[2], "--out", sys.argv[3]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as e:
    assert e.code in (0, None), e.code
loaded = [m.__file__ for n, m in list(sys.modules.items())
          if n.split(".")[0] in ("shared", "mlx_train", "cuda_train") and getattr(m, "__file__", None)]
print("@@" + " ".join(sorted(loaded)))
"""


@pytest.mark.parametrize("backend,framework", [("mlx", "mlx"), ("torch", "torch")])
def test_counted_code_covers_what_a_run_imports(backend, framework, tiny_data, tmp_path):
    """A real training run (calibrating, packing, evaluating) through `python -m <backend>` loads only counted files."""
    pytest.importorskip(framework)
    pkg = code.BACKEND_PACKAGES[backend]
    cfg = tiny_config(iterations=2)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)),
                  quant=replace(cfg.quant, gptq=True, embed_steps="frequency"))
    (tmp_path / "cfg.toml").write_text(to_toml(cfg))
    out = subprocess.run([sys.executable, "-c", _IMPORTS, pkg, str(tmp_path / "cfg.toml"), str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "model.pgz").is_file()
    loaded = {Path(f).resolve() for f in out.stdout.split("@@")[-1].split()}
    loaded = {f for f in loaded if "tests" not in f.relative_to(ROOT).parts}
    assert loaded <= set(code.code_files(backend))
    if backend == "torch":  # train_gpt.py embeds everything the run used but the CLI that started it, the
        # backend's `train` (the script calls the loop itself) and the generator that sizes the script
        entry = {f for f in loaded if "cli" in f.relative_to(ROOT).parts or f.name in ("__main__.py", "backend.py")
                 or "record" in f.relative_to(ROOT).parts}
        assert loaded - entry <= set(code.script_files())


def test_malformed_table_with_a_valid_checksum_is_refused():
    """A body whose checksum is right but whose table is not (no stream sizes) is still one line."""
    import json
    import struct
    import zlib as _zlib

    from shared.core.config import to_toml

    table = json.dumps({"config": to_toml(tiny_config()), "tensors": []}).encode()
    body = struct.pack("<I", len(table)) + table
    payload = pipelines.encode("brotli", [body, b"", b"", b""], 3)
    blob = artifact.HEADER.pack(artifact.MAGIC, artifact.VERSION, pipelines.PIPELINE_IDS["brotli"], len(payload),
                                _zlib.crc32(body)) + payload
    _check_refused(blob, "malformed artifact table")
