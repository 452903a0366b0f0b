"""`pgolf plan` (shared/plan/, shared/cli/plan.py): exact figures, the JSON contract, the warnings."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from shared.core.config import Config, EvalConfig, ModelConfig, TrainConfig, load_config
from shared.core.spec import count_params
from shared.plan import get_hardware, make_plan, names, summary_line
from shared.plan.counts import flops_per_token
from shared.plan.doclen import context_of, doc_lengths, masked_context
from shared.record.script import script_files
from tests.test_pack_cli import run

CONTRACT = ("params", "artifact_bytes", "code_bytes", "tokens_per_step", "flops_per_step", "ms_per_step",
            "ms_per_step_before_loop", "ms_per_step_after_loop", "steps", "train_seconds", "peak_memory_gb",
            "eval_seconds", "pack_seconds", "warnings", "hardware")



def hand_config(**model) -> Config:
    """vocab 16, 2 layers of width 8, 2 heads / 1 KV head (head dim 4, kv dim 4), MLP 2x, sequences of 4."""
    m = dict(vocab_size=16, num_layers=2, model_dim=8, num_heads=2, num_kv_heads=1, mlp_mult=2.0)
    m.update(model)
    return Config(model=ModelConfig(**m),
                  train=TrainConfig(batch_tokens=8, seq_len=4, grad_accum=1, iterations=10, max_seconds=0.0),
                  eval=EvalConfig(max_tokens=64, batch_tokens=8)).validate()


def test_flops_match_a_hand_count():
    cfg = hand_config()
    # per layer: q 8x8 + k 4x8 + v 4x8 + out 8x8 + fc 16x8 + proj 8x16 = 64 + 32 + 32 + 64 + 128 + 128 = 448
    # two layers 896, the tied head 16x8 = 128: 6 x 1,024 = 6,144 matmul FLOPs per trained token
    # causal attention over 4 tokens: (4 + 1) / 2 = 2.5 keys per query; 14 x 2.5 x 8 x 2 layers = 560
    f = flops_per_token(cfg.model, 4, looped=False, doc_mask=False)
    assert (f["gemm"], f["attention"], f["context"]) == (6144.0, 560.0, 2.5)
    p = make_plan(cfg, get_hardware("cpu"), "pgolf", code_bytes=1)
    assert p.as_json()["flops_per_step"] == 8 * (6144 + 560)
    # depth recurrence: layers 0..1 looped once more is 4 layer applications after it switches on
    loop = hand_config(loop_start=0, loop_end=1, num_loops=1, loop_at=0.5)
    after = flops_per_token(loop.model, 4, looped=True, doc_mask=False)
    assert after["gemm"] == 6.0 * (4 * 448 + 128) and after["attention"] == 14 * 2.5 * 8 * 4
    j = make_plan(loop, get_hardware("cpu"), "pgolf", code_bytes=1).as_json()
    assert j["flops"]["per_step_before_loop"] == 8 * (6144 + 560)
    assert j["flops"]["per_step_after_loop"] == 8 * (after["gemm"] + after["attention"])
    assert j["ms_per_step_after_loop"] > j["ms_per_step_before_loop"]


def test_document_mask_context_matches_a_packed_stream():
    """The closed form (a token's keys = min(its place in its document, its place in the window) + 1)
    against counting keys in a real packed stream of documents of those lengths, cut into windows."""
    lens = doc_lengths(1_000_000, 2_000)
    stream = np.random.default_rng(0).permutation(lens)
    pos = np.concatenate([np.arange(n) for n in stream])     # place of each token in its document
    for T in (64, 512):
        t = np.arange(pos.size) % T
        counted = float((np.minimum(pos, t) + 1).mean())
        assert context_of(lens, T) == pytest.approx(counted, rel=0.03)
        assert masked_context(T, 1024) < (T + 1) / 2      # the mask only removes keys


@pytest.mark.parametrize("path", ["configs/small.toml", "configs/baseline.toml", "configs/record.toml",
                                  "configs/frontier.toml"])
def test_params_and_code_bytes_are_exact(path):
    from shared.record.script import generate

    cfg = load_config(path)
    p = make_plan(cfg, get_hardware("8xh100"), "pgolf")
    j = p.as_json()
    assert j["params"] == count_params(cfg.model)
    assert sum(j["params_by_class"].values()) == j["params"]
    assert j["code_bytes"] == len(generate(cfg).data)
    assert j["tokens_per_step"] == cfg.train.batch_tokens


def test_json_contract_and_hardware_list(capsys):
    code, out, _ = run(["plan", "configs/small.toml", "--hardware", "cpu", "--json"], capsys)
    assert code == 0
    j = json.loads(out)
    assert set(CONTRACT) <= set(j)
    assert set(j["eval_seconds"]) == {"flat", "sliding", "ttt"} and isinstance(j["warnings"], list)
    assert j["hardware"] == "cpu" and j["ms_per_step_after_loop"] is None   # small.toml has no recurrence
    assert j["steps"] >= 1 and j["peak_memory_gb"] > 0 and j["artifact_bytes"] > 0
    code, out, _ = run(["plan", "--hardware", "list"], capsys)
    assert code == 0 and all(n in out for n in names())
    code, out, _ = run(["plan", "--hardware", "list", "--json"], capsys)
    assert {h["name"] for h in json.loads(out)} == set(names()) and all(h["sources"] for h in json.loads(out))


def test_bad_hardware_is_one_line_exit_2(capsys):
    code, out, err = run(["plan", "configs/small.toml", "--hardware", "tpu-v9"], capsys)
    assert code == 2 and err.startswith("error: --hardware 'tpu-v9'") and len(err.strip().splitlines()) == 1
    code, _, err = run(["plan", "configs/small.toml", "--technique", "warp_drive=on"], capsys)
    assert code == 2 and err.startswith("error: --technique") and "Traceback" not in err


def _warned(plan, prefix: str) -> bool:
    return any(w.startswith(prefix) for w in plan.warnings)


def test_warnings_fire():
    rec = load_config("configs/record.toml")
    h100 = get_hardware("8xh100")
    fits = make_plan(rec, h100, "record", code_bytes=60_000)
    assert not fits.warnings
    # an int8 artifact of the record model cannot fit 16 MB
    int8 = replace(rec, quant=replace(rec.quant, attn="int8", mlp="int8", embed="int8"))
    assert _warned(make_plan(int8, h100, "record", code_bytes=60_000), "size:")
    # the whole 786,432-token batch in one micro-batch per GPU does not fit 80 GB
    big = load_config("configs/record.toml", ["train.grad_accum=1", "train.seq_len=2048"])
    assert _warned(make_plan(big, get_hardware("1xh100"), "record", code_bytes=60_000), "memory:")
    # sliding windows advanced one token at a time take hours
    slow = load_config("configs/record.toml", ["eval.mode=sliding", "eval.stride=1"])
    assert _warned(make_plan(slow, h100, "record", code_bytes=60_000), "eval:")
    # half a second of reserve cannot hold pgolf's GPTQ of 36M parameters
    tight = load_config("configs/record.toml", ["train.calib_reserve_s=0.5"])
    assert _warned(make_plan(tight, h100, "pgolf", code_bytes=60_000), "gptq:")
    # the record config on a 16 GB MacBook Air, and the micro-batch cap that would fit
    mac = make_plan(rec, get_hardware("m2-16gb"), "pgolf", code_bytes=60_000)
    w = next(x for x in mac.warnings if x.startswith("memory:"))
    assert "unified memory" in w and "train.max_microbatch_tokens" in w
    assert any("uncalibrated" in n for n in mac.notes)
    cap = int(w.split("(e.g. ")[1].split(")")[0].replace(",", ""))
    capped = load_config("configs/record.toml", [f"train.max_microbatch_tokens={cap}"])
    assert not _warned(make_plan(capped, get_hardware("m2-16gb"), "pgolf", code_bytes=60_000), "memory:")


def test_absurd_size_is_flagged_up_front(capsys):
    code, out, _ = run(["plan", "configs/small.toml", "--set", "model.num_layers=100000", "--json"], capsys)
    j = json.loads(out)
    assert code == 0 and j["warnings"][0].startswith("size: about") and j["ms_per_step"] is None
    assert set(CONTRACT) <= set(j)


def test_profiles_differ_where_the_implementations_do():
    rec = load_config("configs/record.toml")
    h100 = get_hardware("8xh100")
    mine, theirs = make_plan(rec, h100, "pgolf", code_bytes=1), make_plan(rec, h100, "record", code_bytes=1)
    # with model.doc_attention pgolf attends per document as the record does; without it, over the whole row
    assert mine.time["terms"]["attention"] == theirs.time["terms"]["attention"]
    dense = load_config("configs/record.toml", ["model.doc_attention=false", "model.doc_max_len=0"])
    assert make_plan(dense, h100, "pgolf", code_bytes=1).time["terms"]["attention"] > theirs.time["terms"]["attention"]
    # the fused softcapped cross-entropy (train.fused_kernels = "auto") holds no fp32 logits, as the record's;
    # with the kernels off pgolf keeps fp32 logits: more memory
    assert mine.memory["components"]["logits"] == theirs.memory["components"]["logits"]
    eager = load_config("configs/record.toml", ["train.fused_kernels=off"])
    assert make_plan(eager, h100, "pgolf", code_bytes=1).memory["components"]["logits"] > \
        theirs.memory["components"]["logits"]
    # the record techniques pgolf has no key for: the n-gram tilt adds its precompute to the eval
    tilt = make_plan(rec, h100, "record", ("ngram_tilt=on",), code_bytes=1)
    assert tilt.eval["seconds"]["ttt"] > theirs.eval["seconds"]["ttt"] + 100


def test_pgolf_profile_reads_the_frontier_keys(capsys):
    """The techniques the record profile takes as --technique flags come from pgolf's keys in the pgolf
    profile: the same n-gram precompute in the evaluation, the growing context's cheaper steps."""
    h100 = get_hardware("8xh100")

    def ttt_s(path, sets=(), profile="pgolf", tech=()):
        return make_plan(load_config(path, list(sets)), h100, profile, tech, code_bytes=1).eval["seconds"]["ttt"]

    mine = ttt_s("configs/frontier.toml") - ttt_s("configs/frontier.toml", ["eval.ngram_tilt=false"])
    theirs = ttt_s("configs/record.toml", profile="record", tech=("ngram_tilt=on",)) - \
        ttt_s("configs/record.toml", profile="record")
    assert mine > 100 and mine == pytest.approx(theirs, rel=1e-6)
    short = ttt_s("configs/record.toml", ["eval.lora_short_chunks=256:8,2000:24"])
    assert short != ttt_s("configs/record.toml")
    grow = ["train.seq_schedule=1024@0.1,2048@0.7,3072@1.0", "train.seq_len=3072", "model.doc_max_len=3072"]
    steps = [make_plan(load_config("configs/record.toml", s), h100, "pgolf", code_bytes=1).time["steps"]
             for s in (grow, grow[1:])]
    assert steps[0] > steps[1]   # shorter segments early: cheaper attention, more steps in the same time
    code, _, err = run(["plan", "configs/record.toml", "--technique", "ngram_tilt=on"], capsys)
    assert code == 2 and "--set eval.ngram_tilt" in err


def test_train_prints_the_summary_and_never_fails(monkeypatch):
    from shared.cli.train import plan_summary

    cfg = load_config("configs/small.toml")
    line = plan_summary(cfg, "torch", 1)
    assert line.startswith("plan (cpu, pgolf profile)") and "ms/step" in line
    assert line == summary_line(make_plan(cfg, get_hardware("cpu"), "pgolf"))

    def boom(*a, **k):
        raise RuntimeError("no plan today")

    monkeypatch.setattr("shared.plan.make_plan", boom)
    assert plan_summary(cfg, "torch", 1) == "plan: unavailable (RuntimeError: no plan today)"


def test_the_planner_is_not_counted_code():
    assert not any("plan" in f.parts for f in script_files())


def test_gpu_check_puts_predictions_beside_measurements():
    from shared.plan.predict import beside_measured

    cfg = load_config("configs/record.toml")
    speed = {"orders": {"plain": {"ms_per_step_median": 800.0}, "looped": {"ms_per_step_median": 1100.0}},
             "peak_memory_bytes": 40 * 2**30}
    out = beside_measured(cfg, "NVIDIA H100 80GB HBM3", speed)
    assert out["hardware"] == "1xh100"
    for order in ("plain", "looped"):
        o = out["orders"][order]
        assert o["ms_per_step_predicted"] > 0
        assert o["measured_over_predicted"] == pytest.approx(o["ms_per_step_measured"] / o["ms_per_step_predicted"],
                                                             rel=1e-3)
    assert out["peak_memory_gb_measured"] == 40.0 and out["peak_memory_gb_predicted"] > 0


def test_checkpoint_gives_the_real_packed_size(tmp_path, capsys):
    from shared.artifact.format import pack, write_artifact
    from shared.core.config import to_toml
    from shared.core.spec import init_params
    from shared.run.rundir import save_checkpoint
    from tests.conftest import tiny_config

    cfg = tiny_config()
    rng = np.random.default_rng(0)
    params = {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in init_params(cfg.model, 1).items()}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = save_checkpoint(run_dir, params, cfg, step=3)
    conf = tmp_path / "tiny.toml"
    conf.write_text(to_toml(cfg))
    blob = pack(params, cfg)
    code, out, err = run(["plan", str(conf), "--hardware", "cpu", "--checkpoint", str(ckpt), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["artifact_bytes"] == len(blob)
    art = write_artifact(tmp_path / "m.pgz", blob + b"")
    code, out, _ = run(["plan", str(conf), "--hardware", "cpu", "--checkpoint", str(art), "--json"], capsys)
    assert json.loads(out)["artifact_bytes"] == art.stat().st_size
