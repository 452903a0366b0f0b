"""Test entry under torchrun: evaluate one artifact in several eval modes on every rank, print rank 0's JSON.

    torchrun --standalone --nproc_per_node=2 -m tests.eval_entry ARTIFACT DATA TOKENIZER MODE_JSON...

Each MODE_JSON is a dict of [eval] keys; rank 0 prints one JSON line per mode with the totals,
which every rank has after the driver's all-reduce (tests/test_torch_distributed.py). Without torchrun
it runs as one process. `PGOLF_TEST_DELAY=RANK:SECONDS` makes that rank's first LoRA forward of each
mode that much longer (an uneven share of the work).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace

from cuda_train import runtime
from cuda_train.session import TorchSession
from shared.artifact.format import read_artifact
from shared.data.dataset import open_dataset
from shared.eval.driver import run_eval


def delay(session, rank: int) -> None:
    """Sleep in `rank`'s first `lora_score` as PGOLF_TEST_DELAY says."""
    spec = os.environ.get("PGOLF_TEST_DELAY")
    if not spec or int(spec.split(":")[0]) != rank:
        return
    score, seconds = session.lora_score, float(spec.split(":")[1])

    def slow(*args, **kwargs):
        session.lora_score = score
        time.sleep(seconds)
        return score(*args, **kwargs)

    session.lora_score = slow


def main(argv: list[str]) -> None:
    artifact, data, tokenizer, *modes = argv
    cfg, params = read_artifact(artifact)
    ds = open_dataset(data, tokenizer, cfg.model.vocab_size)
    rt = runtime.init("cpu")
    for text in modes:
        c = replace(cfg, eval=replace(cfg.eval, **json.loads(text))).validate()
        s = TorchSession(c, rt, training=False)
        s.load_weights(params)
        delay(s, rt.rank)
        ev = run_eval(s, c, ds.val_tokens, ds.tables)
        mine = int((ev.ledger.mine == 1).sum()) if ev.ledger is not None else -1
        if rt.rank == 0:
            print(json.dumps({"mode": ev.mode, "nats": ev.result.nats, "world_size": rt.world_size, "tokens": ev.result.tokens,
                              "bytes": ev.result.bytes, "bpb": ev.result.val_bpb, "rank0_scored": mine}), flush=True)
    runtime.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
