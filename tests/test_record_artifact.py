"""The record artifact: format v2 pipelines, v1 refused, LQER, pruning, gates, budget fit."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.artifact import compress as pipelines
from shared.artifact import format as artifact
from shared.artifact import lqer
from shared.artifact.prune import count_candidates, prune, prune_costs
from shared.artifact.quant import dequantize
from shared.core.config import QuantConfig
from shared.core.spec import init_params, param_table
from shared.errors import PgolfError
from tests.conftest import tiny_config

DATA = Path(__file__).parent / "data"


def _cfg(model=None, **quant):
    cfg = tiny_config()
    base = QuantConfig(keep_float_max_numel=0, attn="int6", mlp="int6", embed="int7", clip_k=12.0, zstd_level=9)
    return replace(cfg, model=replace(cfg.model, **(model or {})), quant=replace(base, **quant)).validate()


def _params(cfg, seed=3):
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in init_params(cfg.model, 1).items()}


def test_a_v1_artifact_is_refused_naming_the_fix():
    """Format v1 was written only by pre-release pgolf (no released artifact holds it): refused in one line."""
    blob = (DATA / "artifact_v1_tiny.pgz").read_bytes()
    assert blob[4] == 1
    _check_refused(blob, r"artifact format version 1 is not read by this pgolf .*repack the checkpoint with `pgolf pack`")


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["zstd", "brotli", "group", "group_zpaq", "group_ans"])
def test_every_pipeline_round_trips_to_the_same_weights(pipeline):
    if pipeline == "group_zpaq":
        pytest.importorskip("zpaq")
    cfg = _cfg(lqer_tensors=2, prune_values=200)
    params = _params(cfg)
    ref = artifact.unpack(artifact.pack(params, cfg))[1]
    for sort in (True, False):
        c = replace(cfg, quant=replace(cfg.quant, compressor=pipeline, group_sort=sort))
        blob = artifact.pack(params, c)
        assert blob[4] == artifact.VERSION and artifact.pipeline_of(blob) == pipeline
        c2, out = artifact.unpack(blob)
        assert c2.quant == c.quant
        for k in ref:
            np.testing.assert_array_equal(out[k], ref[k])


def test_group_pipeline_stores_a_real_row_permutation():
    cfg = _cfg(compressor="group")
    qts = artifact.quantize_all(_params(cfg), cfg)
    sections = artifact.build_sections(qts, cfg)
    import json
    meta = json.loads(sections[0][4:].decode())
    groups, rest = pipelines.code_groups(meta)
    # One group per role: q, k, v, out, fc, proj of both layers together, and the embedding.
    assert len(groups) == 7 and all(len(g) == 2 for g in groups if g[0][1] != cfg.model.vocab_size)
    perms, parts, _ = pipelines._group_split(meta, sections[1], sort=True)
    assert perms and sum(len(p) for p in parts) == len(sections[1]) - sum(n for _, n in rest)
    mat = np.frombuffer(parts[0], dtype=np.int8).reshape(-1, groups[0][0][2])
    key = np.abs(mat.astype(np.int64)).sum(axis=1)
    assert np.all(np.diff(key) >= 0)   # rows stored in the similarity order


def test_the_removed_auto_compressor_names_its_replacement():
    with pytest.raises(PgolfError, match='quant.compressor = "auto" was removed.*set quant.compressor = "group"') as e:
        _cfg(compressor="auto")
    assert "\n" not in str(e.value)
    cfg = _cfg(compressor="brotli")
    params = _params(cfg)
    sections = artifact.build_sections(artifact.quantize_all(params, cfg), cfg)
    payloads = {p: pipelines.encode(p, sections, cfg.quant.zstd_level) for p in ("zstd", "brotli", "group")}
    assert len({len(v) for v in payloads.values()}) == 3   # the pipelines really differ
    assert artifact.pack(params, cfg)[artifact.HEADER.size:] == payloads["brotli"]


def _check_refused(blob, match):
    with pytest.raises(PgolfError, match=match) as e:
        artifact.unpack(blob, source="x.pgz")
    assert "\n" not in str(e.value) and str(e.value).startswith("x.pgz")


def test_missing_or_foreign_decompressor_is_refused_by_name(monkeypatch):
    cfg = _cfg(compressor="brotli")
    blob = artifact.pack(_params(cfg), cfg)
    _check_refused(blob[:5] + bytes([4]) + blob[6:], "lrzip")
    _check_refused(blob[:5] + bytes([77]) + blob[6:], "unknown compression pipeline id 77")
    monkeypatch.setitem(sys.modules, "brotli", None)   # as if the package were not installed
    _check_refused(blob, "needs the `brotli` package")
    zblob = artifact.pack(_params(cfg), replace(cfg, quant=replace(cfg.quant, compressor="zstd")))
    artifact.unpack(zblob)   # zstd artifacts need no brotli


def test_group_zpaq_without_the_package_is_a_one_line_error(monkeypatch):
    """Packing or reading the ZPAQ pipeline, or writing train_gpt.py, where `zpaq` (a pgolf dependency) is
    missing says in one line what to install."""
    cfg = _cfg(compressor="group")
    blob = artifact.pack(_params(cfg), cfg)
    monkeypatch.setitem(sys.modules, "zpaq", None)   # as if the package were not installed
    with pytest.raises(PgolfError, match=r"needs the `zpaq` package.*pip install zpaq==0\.3\.7") as e:
        artifact.pack(_params(cfg), replace(cfg, quant=replace(cfg.quant, compressor="group_zpaq")))
    assert "\n" not in str(e.value)
    from shared.record.script import self_extracting
    with pytest.raises(PgolfError, match=r"train_gpt.py's compressed form needs the `zpaq` package.*pip install zpaq"):
        self_extracting("print(1)\n")
    # a group_zpaq artifact (id 3) with a code frame to inflate is refused by name when unpacked
    from shared.artifact import compress as c
    frames = c._unframe(blob[artifact.HEADER.size:], "x")
    forged = c._frames(frames[:2] + [b"z"] + frames[3:])
    magic, version, _, _, crc = artifact.HEADER.unpack_from(blob)
    head = artifact.HEADER.pack(magic, version, c.PIPELINE_IDS["group_zpaq"], len(forged), crc)
    _check_refused(head + forged, "needs the `zpaq` package")


def test_lqer_factors_fit_the_error_and_are_stored_at_their_bits():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(96, 3)) @ rng.normal(size=(3, 80))
    err = low + 0.01 * rng.normal(size=(96, 80))
    us, vs = lqer.top_factors(err, 3)
    s_ref = np.linalg.svd(err, compute_uv=False)[:3]
    s_ours = np.sqrt((us ** 2).sum(axis=0) * (vs ** 2).sum(axis=1))
    np.testing.assert_allclose(s_ours, s_ref, rtol=1e-3)   # power iteration: close singular values mix a little
    resid_svd = (s_ref ** 2).sum()
    assert ((us @ vs) ** 2).sum() == pytest.approx(resid_svd, rel=1e-4)   # but the captured energy is the SVD's
    f = lqer.fit(err, rank=3, a_bits=2, b_bits=4, group=64)
    assert f.a.shape == (96, 3) and f.b.shape == (3, 80) and f.a_scale.shape == (1,) and f.b_scale.shape == (3, 2)
    assert np.abs(f.a).max() <= 1 and np.abs(f.b).max() <= 7
    resid = ((err - lqer.correction(f)) ** 2).sum() / (err ** 2).sum()
    assert resid < 0.35   # ternary A, 4-bit B still remove most of a rank-3 error


def test_lqer_corrects_the_tensors_with_the_largest_error():
    cfg = _cfg(lqer_tensors=2, lqer_rank=4)
    params = _params(cfg)
    plain = artifact.quantize_plain(params, cfg)
    ranking = artifact.lqer_ranking(params, plain, cfg)
    top = {n for n, _ in ranking[:2]}
    qts = artifact.quantize_all(params, cfg)
    assert {n for n, t in qts.items() if t.lqer is not None} == top
    for n in top:
        before = ((dequantize(plain[n]) - params[n]) ** 2).sum()
        after = ((dequantize(qts[n]) - params[n]) ** 2).sum()
        assert after < before
    # The corrections survive the artifact and its reader.
    _, qts2 = artifact.read_quantized(artifact.pack(params, cfg))
    for n in top:
        np.testing.assert_array_equal(dequantize(qts2[n]), dequantize(qts[n]))


def test_pruning_zeroes_exactly_the_cheapest_plus_minus_one_codes():
    cfg = _cfg()
    params = _params(cfg)
    plain = artifact.quantize_plain(params, cfg)
    total = count_candidates(plain)
    pruned = prune(params, plain, 50)
    assert count_candidates(pruned) == total - 50
    costs = []
    for name in sorted(plain):
        if plain[name].q is None:
            continue
        pos, c = prune_costs(params[name], plain[name], None)
        costs += [(cc, name, p) for cc, p in zip(c, pos, strict=True)]
    costs.sort(key=lambda t: t[0])
    limit = costs[49][0]
    for name in plain:
        if plain[name].q is None:
            continue
        changed = np.flatnonzero(plain[name].q.reshape(-1) != pruned[name].q.reshape(-1))
        assert np.all(pruned[name].q.reshape(-1)[changed] == 0)
        pos, c = prune_costs(params[name], plain[name], None)
        assert np.all(c[np.isin(pos, changed)] <= limit)
    assert prune(params, plain, 0) is plain


def test_gates_take_int8_rows_and_classes_take_their_own_clip():
    model = {"attn_gate": True, "smear_gate": True, "gate_dims": 6}
    cfg = _cfg(model, gate="int8", attn_clip_k=5.0)
    params = _params(cfg)
    table = param_table(cfg.model)
    gates = [n for n in table if table[n].qclass == "gate"]
    assert sorted(gates) == ["blocks.0.attn.gate", "blocks.1.attn.gate", "smear.weight"]
    qts = artifact.quantize_all(params, cfg)
    for n in gates:
        assert qts[n].scheme == "int8" and qts[n].scale.shape == (params[n].shape[0],)
    default = artifact.quantize_all(params, replace(cfg, quant=replace(cfg.quant, gate="fp16", attn_clip_k=0.0)))
    assert all(default[n].scheme == "fp16" for n in gates)
    # attn_clip_k changes the attention matrices' steps only; 0 means quant.clip_k.
    q = "blocks.0.attn.c_q.weight"
    ratio = qts[q].scale.astype(np.float64) / default[q].scale.astype(np.float64)
    np.testing.assert_allclose(ratio, 5.0 / 12.0, rtol=2e-3)
    m = "blocks.0.mlp.fc.weight"
    np.testing.assert_array_equal(qts[m].scale, default[m].scale)


@pytest.mark.slow
def test_fit_budget_uses_the_finer_means_and_packs_what_it_measured():
    from shared.artifact.budget import fit_budget

    cfg = _cfg(embed="int8", attn="int8", mlp="int8", lqer_tensors=2, lqer_rank=4, compressor="zstd")
    params = _params(cfg)
    widest = len(artifact.pack(params, cfg))

    def loss(p):   # a deterministic stand-in for the model's loss: relative weight error
        return sum(float(((p[k] - params[k]) ** 2).sum()) for k in params)

    lines: list[str] = []
    budget = widest - 400
    cfg2 = fit_budget(params, cfg, budget, loss, log=lines.append)
    blob = artifact.pack(params, cfg2)
    assert len(blob) <= budget
    text = "\n".join(lines)
    assert "budget: chose" in text and "option bit widths" in text and "option pruning" in text
    # What it chose is recorded in the artifact: the widths in the table, rank and pruning in [quant].
    c3, _ = artifact.unpack(blob)
    assert (c3.quant.lqer_rank, c3.quant.prune_values) == (cfg2.quant.lqer_rank, cfg2.quant.prune_values)
    chosen = text.split("budget: chose ")[1]
    options = {ln.split("option ")[1].split(":")[0]: float(ln.rsplit("loss ", 1)[1])
               for ln in lines if "budget: option" in ln}
    assert chosen.startswith(min(options, key=options.get))


class _FakeSession:
    """Just what finish_run calls: Hessians that take a moment to collect, a fixed evaluation."""

    backend, rank = "torch", 0

    def share_bytes(self, data):
        return data

    def collect_hessians(self, params, x, show_progress):
        import time

        time.sleep(0.05)
        return {}

    def evaluate_params(self, params, val_tokens, tables):
        from shared.data.bpb import EvalResult

        return EvalResult(nats=1000.0, tokens=1000, bytes=4000)


def test_finish_run_times_gptq_and_says_when_the_reserve_was_too_small(tiny_data, tmp_path):
    from shared.data.dataset import open_dataset
    from shared.run.finish import finish_run
    from shared.run.rundir import RunDir

    cfg = tiny_config(max_seconds=30.0, calib_reserve_s=0.01)
    cfg = replace(cfg, quant=replace(cfg.quant, gptq=True, calib_tokens=256)).validate()
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, cfg.model.vocab_size)
    stats = {"val_loss": 1.0, "val_bpb": 0.5, "steps": 1}
    summary = finish_run(_FakeSession(), _params(cfg), cfg, RunDir(tmp_path), ds, stats, code_bytes=0)
    log = (tmp_path / "train.log").read_text()
    assert summary["calib_seconds"] >= 0.05 and summary["quant_seconds"] > 0
    assert f"calibration {summary['calib_seconds']:.1f}s + quantise and pack" in log
    assert "train.calib_reserve_s=0.01 was too small" in log and "raise train.calib_reserve_s to at least 1" in log
    cfg = replace(cfg, train=replace(cfg.train, calib_reserve_s=25.0))
    finish_run(_FakeSession(), _params(cfg), cfg, RunDir(tmp_path / "b"), ds, dict(stats), code_bytes=0)
    assert "too small" not in (tmp_path / "b" / "train.log").read_text()


def _awq_setup(groups=1):
    cfg = _cfg(model={"model_dim": 256, "num_heads": 4, "num_kv_heads": 2, "mlp_mult": 2.0, "num_layers": 2},
               gptq=True, awq_groups=groups)
    params = _params(cfg)
    rng = np.random.default_rng(5)
    hessians = {}
    for name, w in params.items():
        if w.ndim == 2 and name.startswith("blocks."):
            x = rng.normal(size=(512, w.shape[1])) * np.linspace(0.5, 1.5, w.shape[1])
            if name == "blocks.1.mlp.fc.weight":
                x[:, 128:192] *= 6.0   # one hot group of inputs
            hessians[name] = x.T @ x
    return cfg, params, hessians


def test_awq_keeps_the_most_salient_column_group_at_more_bits():
    """AWQ-lite (#1908): the group with the largest activation-RMS x |weight| salience is coded at
    quant.awq_bits inside GPTQ, stored with its own scales, and read back as it was written."""
    from shared.artifact.awq import select_groups

    cfg, params, hessians = _awq_setup()
    chosen = artifact.choose_schemes(params, cfg)
    assert select_groups(params, chosen, hessians, cfg) == {"blocks.1.mlp.fc.weight": (128, 64, 8)}
    two = replace(cfg, quant=replace(cfg.quant, awq_groups=2))
    assert len(select_groups(params, chosen, hessians, two)) == 2
    qts = artifact.quantize_plain(params, cfg, hessians)
    t = qts["blocks.1.mlp.fc.weight"]
    assert t.awq is not None and np.abs(t.q[:, 128:192]).max() > 31 >= np.abs(np.delete(t.q, np.s_[128:192], 1)).max()
    off = artifact.quantize_plain(params, replace(cfg, quant=replace(cfg.quant, awq_groups=0)), hessians)
    w = params["blocks.1.mlp.fc.weight"]
    err = lambda q: ((dequantize(q)[:, 128:192] - w[:, 128:192]) ** 2).sum()  # noqa: E731
    assert err(t) < err(off["blocks.1.mlp.fc.weight"]) / 10
    _, back = artifact.read_quantized(artifact.pack(params, cfg, hessians))
    np.testing.assert_array_equal(dequantize(back["blocks.1.mlp.fc.weight"]), dequantize(t))
    assert back["blocks.1.mlp.fc.weight"].awq.start == 128


def test_awq_counts_a_looped_blocks_inputs_once_per_pass():
    from shared.artifact.awq import applications

    cfg = _cfg(model={"num_layers": 4, "loop_start": 1, "loop_end": 2, "num_loops": 2})
    assert [applications(f"blocks.{i}.mlp.fc.weight", cfg) for i in range(4)] == [1, 3, 3, 1]
    assert applications("tok_emb.weight", cfg) == 1


def test_awq_needs_gptq():
    with pytest.raises(PgolfError, match="awq_groups"):
        _cfg(awq_groups=1, gptq=False)


def test_requirements_name_each_compressor_with_why():
    import tomllib

    from shared.record.export import requirements_txt
    from shared.record.script import WRAPPER_PIN, generate

    for comp in ("zstd", "group", "group_zpaq", "group_ans"):
        cfg = _cfg(compressor=comp)
        text = requirements_txt(cfg, "2.13.0+cu128")
        lines = text.splitlines()
        # brotli: the pipelines' (group_ans: its small frames); zpaq: group_zpaq's, else the script's first line's
        assert ("brotli==1.2.1  # the artifact compressor" in text) == (comp != "zstd"), comp
        assert generate(cfg).wrapper == "zpaq"
        zpaq = [line for line in lines if line.startswith("zpaq==0.3.7")]
        assert len(zpaq) == 1 and ("code groups" in zpaq[0]) == (comp == "group_zpaq"), (comp, zpaq)
        assert text.startswith("torch==2.13.0  # the runs used 2.13.0+cu128;")
    assert generate(_cfg(compressor="zstd")).data.startswith(b"# coding:latin1\nimport zpaq;exec(zpaq.decompress(")
    pinned = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert WRAPPER_PIN in {d.split(";")[0].strip() for d in pinned}   # the pins pyproject.toml installs


def test_requirements_name_triton_only_for_the_fused_kernels():
    from shared.record.export import requirements_txt

    cfg = _cfg(compressor="zstd")
    assert "triton" not in requirements_txt(cfg, "2.13.0")
    auto = replace(cfg, train=replace(cfg.train, fused_kernels="auto"))
    assert "\ntriton  # the fused training kernels" in requirements_txt(auto, "2.13.0")
