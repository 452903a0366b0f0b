"""`python -m cuda_train ...` is `pgolf train --backend torch ...` (and `eval` likewise); torchrun runs it per rank.

    torchrun --standalone --nproc_per_node=8 -m cuda_train \\
        --config configs/baseline.toml --data data/datasets/fineweb10B_sp1024 \\
        --tokenizer data/tokenizers/fineweb_1024_bpe.model --out runs/record
    python -m cuda_train eval runs/record/model.pgz --data DIR --tokenizer MODEL

Each rank parses the same options (shared/cli/train.py) and runs
`shared.run.loop.train_loop` with a `TorchSession`; only rank 0 prints to stdout and writes the run
directory. A user error prints one line and exits 2 on every rank; Ctrl-C
saves the step and exits 130. A worker dies with its torchrun agent
(cuda_train/launch.py `die_with_parent`, set first thing, before torch loads).
"""

from __future__ import annotations

import os
import sys

from shared.cli.train import backend_main

if __name__ == "__main__":
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from cuda_train.launch import die_with_parent

        die_with_parent()
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for the run; errors still reach stderr
    backend_main("torch", sys.argv[1:])
