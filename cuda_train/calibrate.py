"""GPTQ calibration for the PyTorch backend: input Hessians of the block matrices and the head.

    hessians = collect_hessians(params, cfg, x)   # x: token ids [batch, seq] (or flat)

For every 2-D block weight W [out, in] (`shared.core.spec.optim_group == "matrix"`)
returns H = sum over calibration tokens of a a^T, a being the layer's input
activation, as a float64 numpy [in, in]; and for the output head (the tied
`tok_emb.weight`, or `lm_head.weight`) the same sum over the final normalised
hidden states that the head multiplies. The activations come from this
backend's own `GPT` (forward pre-hooks on its linear layers), run in float32
without autocast, one sequence chunk at a time. The numpy quantiser
(shared/artifact/gptq.py) then turns Hessians into codes identically on any backend.
Calibration tokens must come from the training split, never validation.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.core.config import Config
from shared.core.progress import Progress
from shared.core.spec import head_weight_name, names_in_group
from shared.data.shards import as_sequences

from .model import build_model


@torch.no_grad()
def collect_hessians(params: dict[str, np.ndarray], cfg: Config, x: np.ndarray,
                     batch_size: int = 8, show_progress: bool = True) -> dict[str, np.ndarray]:
    """H = sum a a^T over the inputs of every block matrix and of the head, float64 [in, in]."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(cfg.model, params, device=device).eval()
    matrices = set(names_in_group(cfg.model, "matrix"))
    targets = {n: m for n, m in model.named_modules() if f"{n}.weight" in matrices}
    sums = {n: torch.zeros(m.weight.shape[1], m.weight.shape[1], dtype=torch.float64, device=device)
            for n, m in targets.items()}
    head = torch.zeros(cfg.model.model_dim, cfg.model.model_dim, dtype=torch.float64, device=device)

    def recorder(name: str):
        def hook(module, args):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[name].addmm_(a.T, a)
        return hook

    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in targets.items()]
    # Full fp32 matmuls whatever a training run set process-wide: the same checkpoint must give
    # the same Hessians (and so the same artifact bytes) from `pgolf train` and from `pgolf pack`.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        seqs = as_sequences(x, cfg.train.seq_len)
        with Progress("calibration: Hessians", total=len(seqs), unit="seqs", enabled=show_progress) as bar:
            for i in range(0, len(seqs), batch_size):
                idx = torch.from_numpy(seqs[i:i + batch_size]).to(device)
                h = model.hidden(idx).reshape(-1, cfg.model.model_dim).to(torch.float64)
                head.addmm_(h.T, h)   # what the head multiplies: no need for the logits themselves
                bar.update(len(idx))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for h in handles:
            h.remove()
    out = {f"{n}.weight": sums[n].cpu().numpy() for n in sums}
    out[head_weight_name(cfg.model)] = head.cpu().numpy()
    return dict(sorted(out.items()))
