"""Parity: one checkpoint, two backends, the same numbers.

`run_parity` loads the same float32 weights into MLX and PyTorch (CPU, fp32)
and checks, each against a stated tolerance:

1. `export`: each backend loads the checkpoint and exports it back; the shared
   packer turns both exports into byte-identical artifacts.
2. `bpb`: the artifact's validation BPB from MLX and from PyTorch agree.
3. `forward`: the loss of one training batch agrees.
4. `train`: twenty optimizer steps from the same weights on the same batches
   give losses that agree at every step, and (`weights`) the same weights:
   within WEIGHT_TOL, or, for a tensor past it, within NOISE_FACTOR times the
   training's own float noise floor (the second backend trained again from
   weights perturbed by NOISE_REL: Newton-Schulz maps every singular direction
   of a Muon update towards 1, so on a nearly low-rank gradient, early in
   training, rounding-level differences grow to ~1e-4 in 20 steps; a real
   divergence between the backends is orders of magnitude above that floor).
5. `cross`: the artifact packed from one backend's export, evaluated by the
   other backend, gives the same BPB as in its own.
6. (`modes=True`, `pgolf parity --modes`) `sliding`, `ttt_sgd`, `ttt_lora` and
   `ttt_lora_record` (#1855's adapter options, `LORA_RECORD`): the artifact's BPB under each record evaluation mode (shared/eval/driver.py, the
   checkpoint's [eval] knobs) agrees: sliding within BPB_TOL, TTT within
   TTT_TOL (TTT trains, so float-order differences can grow; measured in
   BENCHMARKS.md "Record-grade evaluation").

Each check says which quantity diverged and by how much, so a one-line
divergence in a backend (a different RoPE base, say) points at itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shared.core.config import Config

BPB_TOL = 1e-4          # absolute, in bits per byte
FORWARD_TOL = 1e-5      # relative
TRAIN_TOL = 1e-4        # relative, at every step
TTT_TOL = 1e-5          # absolute, bits per byte, after test-time training: float-order differences go through
# #1855's adapters (configs/record.toml): per slot, on the head, block layout, warm uniform A, the document's tail;
# its phases in its order (here after 2 and 4 scored documents, on 128-token chunks)
LORA_RECORD = {"lora_targets": "q,k,v,o,mlp,head", "lora_per_slot": True, "lora_layout": "block",
               "lora_a_init": "uniform", "lora_warm_a": True, "lora_adam_eps": 1e-10, "lora_tail": "document",
               "lora_train_last": False, "lora_phases": 2, "lora_phase_order": "scored", "lora_prefix_docs": 4,
               "lora_phase_chunk_tokens": 128, "lora_phase_rows": 2, "lora_phase_lr": 0.05}
                        # the updates (measured 1.4e-8 for TTT-SGD on the small.toml checkpoint, 4e-8 for LoRA: BENCHMARKS.md)
WEIGHT_TOL = 1e-4       # ||a - b|| / ||a|| per tensor after the steps (Frobenius: Adam turns fp32 rounding
                        # of near-zero gradients into single entries moved by ~lr, so not a max-abs rule)
NOISE_REL = 1e-7        # relative perturbation of the weights that measures the float noise floor of training
NOISE_FACTOR = 4.0      # a tensor past WEIGHT_TOL passes within this many times its noise floor


@dataclass
class Check:
    name: str
    ok: bool
    value: float
    tol: float
    detail: str


@dataclass
class ParityReport:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, value: float, tol: float, detail: str) -> None:
        ok = bool(np.isfinite(value) and value <= tol)
        self.checks.append(Check(name, ok, float(value), tol, detail))

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail} (got {c.value:.3g}, allowed {c.tol:.2g})" for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        out = dict(self.figures)
        out["ok"] = self.ok
        out["checks"] = {c.name: {"ok": c.ok, "value": c.value, "tol": c.tol, "detail": c.detail} for c in self.checks}
        return out


def parity_config(cfg: Config) -> Config:
    """fp32, step-based schedule, no compile: what both backends compute identically on a CPU.
    Packing without calibration (no GPTQ, per-row embedding steps): the export check is about
    the weights each backend hands the packer, and Hessians differ by float rounding."""
    train = replace(cfg.train, compute_dtype="float32", max_seconds=0.0, compile=False, warmup_steps=0)
    quant = replace(cfg.quant, gptq=False, embed_steps="row")
    return replace(cfg, train=train, quant=quant).validate()


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def train_batches(dataset, cfg: Config, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `n` micro-batches of the training stream, as a 1-rank run would see them."""
    from shared.data.shards import BatchLoader

    loader = BatchLoader(dataset.train_stream())
    micro = cfg.train.batch_tokens // cfg.train.grad_accum
    return [loader.next_batch(micro, cfg.train.seq_len) for _ in range(n)]


def train_steps(backend, params: dict[str, np.ndarray], cfg: Config, batches: list[tuple[np.ndarray, np.ndarray]]
                ) -> tuple[list[float], dict[str, np.ndarray]]:
    """The production step (`Session.step`, as the training loop drives it), one batch per step,
    from `params`, on the step-based schedule (LR, momentum, depth-recurrence switch); returns the
    losses and the final weights (the EMA when on)."""
    from shared.core.schedule import looped, lr_scale, muon_momentum

    session = backend.session(cfg)
    session.load_weights(params)
    t = replace(cfg.train, max_seconds=0.0, iterations=max(cfg.train.iterations, 1))
    losses = [session.step([(np.asarray(x), np.asarray(y))], lr_scale(i, 0.0, t), muon_momentum(i, cfg.optim),
                           looped=looped(i, 0.0, cfg.model, t))
              for i, (x, y) in enumerate(batches)]
    return losses, session.final_weights()


def weight_diffs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """||a - b|| / ||a|| per tensor (Frobenius: Adam turns fp32 rounding of near-zero gradients into
    single entries moved by ~lr, so not a max-abs rule)."""
    return {k: float(np.linalg.norm(a[k] - b[k]) / max(float(np.linalg.norm(a[k])), 1e-12)) for k in a}


def run_parity(params: dict[str, np.ndarray], cfg: Config, dataset, steps: int = 20,
               backends: tuple[str, str] = ("mlx", "torch"), modes: bool = False) -> ParityReport:
    from shared.artifact.format import pack, unpack
    from shared.core.progress import Phases
    from shared.run.backends import get_backend

    cfg = parity_config(cfg)
    cfg = replace(cfg, eval=replace(cfg.eval, mode="flat"))  # checks 2 and 5: the flat pass; check 6: the others
    a_name, b_name = backends
    a, b = get_backend(a_name), get_backend(b_name)
    rep = ParityReport()
    phases = Phases("parity", 6 if modes else 5)
    phases.start(f"export and pack in {a_name} and {b_name}")

    # 1. Export -> pack: byte-identical artifacts.
    blob_a = pack(a.export_params(params, cfg), cfg)
    blob_b = pack(b.export_params(params, cfg), cfg)
    rep.figures.update({f"sha256_{a_name}": sha256(blob_a), f"sha256_{b_name}": sha256(blob_b),
                        "identical": blob_a == blob_b, "artifact_bytes": len(blob_a)})
    rep.add("export", 0.0 if blob_a == blob_b else 1.0, 0.0,
            f"artifacts packed from the {a_name} and {b_name} exports differ")

    # 2. The artifact's validation BPB in both backends.
    phases.start("validation BPB of the artifact in both backends")
    _, q_a = unpack(blob_a)
    res_a = a.evaluate(q_a, cfg, dataset.val_tokens, dataset.tables)
    res_b = b.evaluate(q_a, cfg, dataset.val_tokens, dataset.tables)
    diff = abs(res_a.val_bpb - res_b.val_bpb)
    rep.figures.update({f"bpb_{a_name}": res_a.val_bpb, f"bpb_{b_name}": res_b.val_bpb, "bpb_abs_diff": diff,
                        "eval_tokens": res_a.tokens})
    rep.add("bpb", diff, BPB_TOL, f"validation BPB of the artifact differs between {a_name} and {b_name}")
    if res_a.bytes != res_b.bytes or res_a.tokens != res_b.tokens:
        rep.add("bpb_counts", 1.0, 0.0, "the backends scored different token or byte counts")

    # 3. One forward pass.
    phases.start("one forward pass")
    batches = train_batches(dataset, cfg, max(steps, 1))
    x, y = batches[0]
    la, lb = a.batch_loss(params, cfg, x, y), b.batch_loss(params, cfg, x, y)
    rep.figures.update({f"loss_{a_name}": la, f"loss_{b_name}": lb, "loss_rel_diff": rel_diff(la, lb)})
    rep.add("forward", rel_diff(la, lb), FORWARD_TOL, "forward loss on the first training batch differs")

    # 4. Training steps from the same weights on the same batches.
    phases.start(f"{steps} training steps in each backend")
    if steps > 0:
        losses_a, after_a = train_steps(a, params, cfg, batches[:steps])
        losses_b, after_b = train_steps(b, params, cfg, batches[:steps])
        diffs = [rel_diff(p, q) for p, q in zip(losses_a, losses_b, strict=True)]
        worst = int(np.argmax(diffs))
        rep.figures.update({"train_steps": steps, f"train_losses_{a_name}": losses_a,
                            f"train_losses_{b_name}": losses_b, "max_loss_rel_diff": max(diffs)})
        rep.add("train", max(diffs), TRAIN_TOL,
                f"training losses diverge, worst at step {worst + 1} ({losses_a[worst]:.6f} vs {losses_b[worst]:.6f})")
        wdiff = weight_diffs(after_a, after_b)
        allowed = {k: WEIGHT_TOL for k in wdiff}
        if max(wdiff.values()) > WEIGHT_TOL:  # measure the noise floor only when it is needed
            rng = np.random.default_rng(0)
            nudged = {k: (v * (1.0 + NOISE_REL * rng.standard_normal(v.shape))).astype(np.float32)
                      for k, v in params.items()}
            floor = weight_diffs(after_b, train_steps(b, nudged, cfg, batches[:steps])[1])
            allowed = {k: max(WEIGHT_TOL, NOISE_FACTOR * floor[k]) for k in wdiff}
            rep.figures["weight_noise_floor"] = {k: floor[k] for k in wdiff if wdiff[k] > WEIGHT_TOL}
        wname = max(wdiff, key=lambda k: wdiff[k] / allowed[k])
        rep.figures["max_weight_rel_diff"] = max(wdiff.values())
        rep.add("weights", wdiff[wname], allowed[wname], f"weights after {steps} steps differ most in {wname}"
                + ("" if allowed[wname] == WEIGHT_TOL else f" ({NOISE_FACTOR:g}x its noise floor allowed)"))

    # 5. Cross evaluation: each backend's artifact read by the other. With identical
    phases.start("cross evaluation")
    # artifacts this is check 2 again; otherwise both artifacts are scored by both.
    cross = diff
    if blob_a != blob_b:
        _, q_b = unpack(blob_b)
        cross = max(diff, abs(a.evaluate(q_b, cfg, dataset.val_tokens, dataset.tables).val_bpb
                              - b.evaluate(q_b, cfg, dataset.val_tokens, dataset.tables).val_bpb))
    rep.figures["cross_bpb_abs_diff"] = cross
    rep.add("cross", cross, BPB_TOL, "an artifact from one backend evaluates differently in the other")
    if modes:
        phases.start("sliding, TTT-SGD and TTT-LoRA evaluation in both backends")
        eval_parity(rep, q_a, cfg, dataset, (a, a_name), (b, b_name))
    return rep


def eval_parity(rep: ParityReport, params: dict[str, np.ndarray], cfg: Config, dataset, a, b) -> None:
    """Check 6: the same weights under sliding windows and both TTT flavours, in both backends."""
    (a_be, a_name), (b_be, b_name) = a, b
    for name, keys, tol in (("sliding", {"mode": "sliding"}, BPB_TOL),
                            ("ttt_sgd", {"mode": "ttt", "ttt": "sgd"}, TTT_TOL),
                            ("ttt_lora", {"mode": "ttt", "ttt": "lora"}, TTT_TOL),
                            ("ttt_lora_record", {"mode": "ttt", "ttt": "lora", **LORA_RECORD}, TTT_TOL)):
        c = replace(cfg, eval=replace(cfg.eval, **keys)).validate()
        ra = a_be.evaluate(params, c, dataset.val_tokens, dataset.tables)
        rb = b_be.evaluate(params, c, dataset.val_tokens, dataset.tables)
        diff = abs(ra.val_bpb - rb.val_bpb)
        rep.figures.update({f"{name}_bpb_{a_name}": ra.val_bpb, f"{name}_bpb_{b_name}": rb.val_bpb,
                            f"{name}_bpb_abs_diff": diff})
        rep.add(name, diff, tol, f"{name} evaluation BPB differs between {a_name} and {b_name}")
        if (ra.tokens, ra.bytes) != (rb.tokens, rb.bytes):
            rep.add(f"{name}_counts", 1.0, 0.0, f"{name}: the backends scored different token or byte counts")
