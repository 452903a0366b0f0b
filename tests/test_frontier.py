"""The final leaderboard's stack (#1953-#2135): scoring windows longer than the training segments, and
configs/frontier.toml (#2135's configuration)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import session_for, tiny_config

from shared.core.spec import BOS_ID, init_params
from shared.eval.windows import eval_seg_len


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_eval_windows_longer_than_the_training_segments_are_not_cut(backend):
    """#1953/#2135 score 2560-token windows with a model trained on 2048-token segments: a window of
    eval.context tokens of one document attends over all of it, in every scoring primitive."""
    base = tiny_config()
    m = replace(base.model, doc_attention=True, doc_max_len=16)
    cfg = replace(base, model=m, eval=replace(base.eval, mode="sliding", context=48, stride=16)).validate()
    whole = replace(cfg, model=replace(m, doc_max_len=0))
    assert eval_seg_len(cfg) == 48 and eval_seg_len(whole) == 0
    params = init_params(m, seed=1)
    rng = np.random.default_rng(1)
    params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    x = rng.integers(2, m.vocab_size, size=(2, 48))
    x[:, 0] = BOS_ID
    y = np.roll(x, -1, 1)
    cut, full = session_for(backend, cfg, params), session_for(backend, whole, params)
    np.testing.assert_allclose(cut.token_nats(x, y), full.token_nats(x, y), rtol=1e-5, atol=1e-5)
    # the training forward still cuts at doc_max_len: the scores would differ without the eval cap
    short = replace(cfg, eval=replace(cfg.eval, context=16, stride=16))
    assert not np.allclose(session_for(backend, short, params).token_nats(x, y)[:, 20:], full.token_nats(x, y)[:, 20:])


# #2135's configuration as its command and logs give it (README "Training command", train_seed*.log
# "Hyperparameters"), in pgolf's keys; what record.toml (#1855) has the same is not repeated here.
FRONTIER_PARAMS = 35_945_673   # model_params in #2135's logs
LOGGED = {
    "model.asym_logit": True,              # ASYM_LOGIT_RESCALE=1
    "model.smear_bos_mask": False,         # SMEAR_GATE_BOS_FIX=0
    "model.qk_gain_init": 5.0,             # qk_gain_init: 5.0
    "optim.matrix_lr": 0.028,              # MATRIX_LR=0.028
    "quant.lqer_group": 32,                # LQER_ASYM_GROUP=32
    "quant.calib_tokens": 32 * 98_304,     # GPTQ_CALIBRATION_BATCHES=32 of one rank's 98,304 tokens
    "quant.gate": "fp16",                  # "passthrough (float16): blocks.attn.attn_gate_w"
    "quant.compressor": "group_ans",       # COMPRESSOR=pergroup: pgolf's smallest per-group coder (lrzip's is ZPAQ)
    "eval.context": 2560,                  # EVAL_SEQ_LEN = TTT_EVAL_SEQ_LEN = 2560
    "eval.lora_lr": 8e-5,                  # TTT_LORA_LR=8e-5
    "eval.lora_wd": 2.0,                   # TTT_WEIGHT_DECAY=2.0
    "eval.lora_targets": "q,v,o,mlp,head",  # TTT_K_LORA=0 (Q, V and the head always on), TTT_O_LORA=1, TTT_MLP_LORA=1
    "eval.lora_phases": 1,                 # PHASED_TTT_NUM_PHASES=1
    "eval.lora_prefix_docs": 2500,         # PHASED_TTT_PREFIX_DOCS=2500
    "eval.ngram_tilt": True,               # NGRAM_TILT_ENABLED=1
    "eval.ngram_order": 16,                # TOKEN_ORDER=16
    "eval.ngram_threshold": 0.8,           # TOKEN_THRESHOLD=0.800
    "eval.ngram_boost": 2.625,             # TOKEN_BOOST=2.625
}


def test_frontier_is_2135_and_builds_its_parameter_count():
    from shared.core.config import load_config
    from shared.core.spec import count_params

    cfg = load_config("configs/frontier.toml")
    assert count_params(cfg.model) == FRONTIER_PARAMS
    for key, want in LOGGED.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == want, key
    rec = load_config("configs/record.toml")
    same = {"model": ["num_layers", "model_dim", "mlp_mult", "rope_dims", "loop_start", "loop_end", "num_loops",
                      "loop_at", "parallel_from", "doc_max_len"],
            "train": ["batch_tokens", "seq_len", "warmdown_frac", "min_lr", "ema_decay", "calib_reserve_s"],
            "eval": ["stride", "lora_rank", "lora_alpha", "lora_docs", "lora_chunk", "lora_phase_lr"]}
    for section, names in same.items():   # what #2135 kept of #1855 (its log beside #1855's)
        for name in names:
            assert getattr(getattr(cfg, section), name) == getattr(getattr(rec, section), name), (section, name)



def test_small_frontier_is_small_record_scored_with_the_tilt():
    """configs/small-frontier.toml trains as small-record.toml does (README, BENCHMARKS.md compare them
    as one training under two evaluations): only the evaluation's mode and the tilt differ."""
    from shared.core.config import load_config, to_dict

    rec, fr = to_dict(load_config("configs/small-record.toml")), to_dict(load_config("configs/small-frontier.toml"))
    differ = {f"{s}.{k}": fr[s][k] for s in rec for k in rec[s] if rec[s][k] != fr[s][k]}
    assert differ == {"eval.mode": "sliding", "eval.ngram_tilt": True}

# Named shrinking overrides: #2135's stack on 4 layers of width 64 (layer 1 looped, lanes from 3, XSA
# everywhere), a few steps, windows longer than the training segments, the tilt and one phase kept.
SHRINK = ["model.vocab_size=512", "model.num_layers=4", "model.model_dim=64", "model.num_heads=4",
          "model.num_kv_heads=2", "model.loop_start=1", "model.loop_end=1", "model.parallel_from=3",
          "model.xsa_last_n=4", "model.doc_max_len=64",
          "train.iterations=3", "train.max_seconds=0", "train.batch_tokens=1024", "train.seq_len=64",
          "train.grad_accum=2", "train.warmup_steps=1", "train.val_every=0", "train.log_every=1",
          "train.calib_reserve_s=0", "train.compute_dtype=float32", "train.compile=false",
          "quant.calib_tokens=2048",
          "eval.max_tokens=1024", "eval.batch_tokens=1024", "eval.context=96", "eval.stride=16",
          "eval.lora_rank=4", "eval.lora_alpha=8", "eval.lora_docs=2", "eval.lora_chunk=16",
          "eval.lora_prefix_docs=2", "eval.lora_phase_chunk_tokens=256", "eval.lora_phase_rows=2",
          "eval.ngram_order=4", "eval.ngram_threshold=0.5"]


@pytest.mark.torch
@pytest.mark.slow
def test_frontier_submission_script_runs_on_1_and_2_ranks(tiny_data, tmp_path):
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    from shared.artifact import format as artifact
    from shared.core.config import load_config
    from shared.record.script import generate

    cfg = load_config("configs/frontier.toml", SHRINK)
    assert cfg.eval.ngram_tilt and cfg.eval.lora_phases == 1 and cfg.model.asym_logit
    (tmp_path / "train_gpt.py").write_bytes(generate(cfg).data)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DATA_PATH=str(tiny_data.data_dir), TOKENIZER_PATH=str(tiny_data.tokenizer), PGOLF_PG_TIMEOUT_S="120")
    for nproc in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "train_gpt.py"]
        out = subprocess.run(cmd, cwd=tmp_path, env={**env, "RUN_ID": f"r{nproc}"}, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads((tmp_path / "logs" / f"r{nproc}" / "summary.json").read_text())
        assert got["steps"] == 3 and np.isfinite(got["q_val_bpb"]) and got["q_val_bpb"] > 0, got
        assert artifact.pipeline_of((tmp_path / "logs" / f"r{nproc}" / "model.pgz").read_bytes()) == "group_ans"
