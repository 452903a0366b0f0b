"""The challenge's reference scripts' saved weights, mapped onto pgolf's parameter table.

    pgolf import final_model.pt --from torch-ref --config configs/baseline.toml -o ref/checkpoint.safetensors
    pgolf import logs/RUN_mlx_model.npz --from mlx-ref --config configs/baseline.toml -o ref/checkpoint.safetensors

Owns: reading the raw weight files that openai/parameter-golf's `train_gpt.py`
(`torch-ref`) and `train_gpt_mlx.py` (`mlx-ref`) write at the end of a run,
checking them against a pgolf config, and the reparametrisation that makes a
model trained under one convention compute the same function under pgolf's.
Numpy only; a `.pt` is read by the torch backend (cuda_train/reference_io.py) when one is imported.

What the scripts write (read from their source; nothing here is copied from it):

    torch-ref  final_model.pt             torch.save(model.state_dict()): a dict name -> tensor
    mlx-ref    <RUN_ID>_mlx_model.npz     mx.savez(**flat model.state): one .npy per name; bf16
                                          arrays are written with the numpy descriptor '<V2'
                                          (raw bf16 bits), which numpy reads as 2-byte voids

Both use pgolf's names exactly (pgolf took them from the torch reference):
`tok_emb.weight`, `skip_weights`, `blocks.{i}.attn.c_q|c_k|c_v|proj.weight`,
`blocks.{i}.attn.q_gain`, `blocks.{i}.mlp.fc|proj.weight`, `blocks.{i}.attn_scale`,
`blocks.{i}.mlp_scale`, `blocks.{i}.resid_mix`, and `lm_head.weight` when
untied; the same `[out, in]` layouts. `tok_emb.weight` is bf16 in both files
(the torch script casts the model to bf16 and restores only the Linear layers
and low-dimensional tensors to fp32; the MLX script draws it in bf16), the
rest fp32: every value converts to float32 exactly. A `_orig_mod.` (torch.compile)
or `module.` (DDP) prefix is stripped, in case a modified script saved a wrapper.

The one reparametrisation: RoPE direction. pgolf (both backends) and
train_gpt.py rotate each head's halves (x1, x2) by -theta: (x1 cos + x2 sin,
x2 cos - x1 sin); train_gpt_mlx.py's `nn.RoPE(traditional=False)` rotates by
+theta: (x1 cos - x2 sin, x1 sin + x2 cos). With P = negate the second half,
rot(-theta) P = P rot(+theta), P commutes with the per-head RMSNorm (it keeps
|x|) and (Pq).(Pk) = q.k. So negating the rows of the second half of every q and
k head (`flip_rope_halves`, its own inverse) gives an mlx-ref model the same
attention scores, hence the same loss, in pgolf. v, the output projection and
q_gain are untouched.

What the import cannot map (docs/REFERENCE.md has the measured effects):
train_gpt_mlx.py's RMSNorm eps is 1e-6 (`MLX_REF_RMS_EPS`); pgolf's is torch's
float32 eps (shared.core.spec.RMS_EPS, 1.19e-7), as in train_gpt.py. Only a
row whose mean square is comparable to 1e-6 notices: in practice the
normalised embedding of a token that training barely moved from its std-0.005 init.
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from shared.core.config import Config, ModelConfig
from shared.core.spec import check_finite, param_shapes
from shared.errors import PgolfError

SOURCES = ("torch-ref", "mlx-ref")
MLX_REF_RMS_EPS = 1e-6
WRAPPER_PREFIXES = ("_orig_mod.", "module.")

# [model] keys the reference scripts have too (or that only act behind a switch checked below, or only at
# init). Every other key is a pgolf option (the record stack): a non-default value changes the forward pass,
# so a reference model imported under it would compute another function. New options default to off and
# are refused here without a change to this list.
REFERENCE_KEYS = frozenset({"vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult",
                            "tie_embeddings", "tied_embed_init_std", "logit_softcap", "rope_base", "qk_gain_init",
                            "ortho_init", "loop_start", "loop_end", "loop_at", "attn_gate_scale", "gate_dims"})


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise PgolfError(f"--from {source!r}: choose torch-ref (train_gpt.py's final_model.pt) or mlx-ref "
                         "(train_gpt_mlx.py's <RUN_ID>_mlx_model.npz)")
    return source


def check_reference_model(m: ModelConfig, source: str) -> None:
    """Refuse a [model] section the reference scripts cannot have trained (a record-stack option on)."""
    default = ModelConfig()
    for f in fields(ModelConfig):
        value, off = getattr(m, f.name), getattr(default, f.name)
        if f.name in REFERENCE_KEYS or value == off or (f.name == "rope_dims" and value == m.head_dim):
            continue
        raise PgolfError(f"model.{f.name} = {value!r}: {source} has no such option (the reference scripts train "
                         f"the baseline architecture); import with model.{f.name} = {off!r}")


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 values held as 16-bit patterns -> float32 (exact: bf16 is the top half of a float32)."""
    return (np.ascontiguousarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _as_f32(name: str, a: np.ndarray, path: Path) -> np.ndarray:
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # MLX's bf16 in .npy
        return _bf16_bits_to_f32(a)
    if a.dtype.kind != "f":
        raise PgolfError(f"{path}: tensor {name} has dtype {a.dtype}, not a float: is this a reference "
                         "script's weight file?")
    return np.asarray(a, dtype=np.float32)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """train_gpt_mlx.py's `.npz`: name -> float32 (bf16 '<V2' arrays converted bit-exactly)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise PgolfError(f"{path}: not a readable .npz ({e}); --from mlx-ref reads the <RUN_ID>_mlx_model.npz "
                         "that train_gpt_mlx.py saves") from None
    odd = [k for k, v in raw.items() if not isinstance(v, np.ndarray)]
    if odd or not raw:  # a zip that is not an .npz (torch.save writes zips too): no .npy members
        hint = " (a torch .pt file? import it with --from torch-ref)" if any("data.pkl" in k for k in odd) else ""
        raise PgolfError(f"{path}: not an .npz of arrays{hint}; --from mlx-ref reads the <RUN_ID>_mlx_model.npz "
                         "that train_gpt_mlx.py saves")
    return {k: _as_f32(k, v, path) for k, v in raw.items()}


def read_pt(path: Path) -> dict[str, np.ndarray]:
    """train_gpt.py's `final_model.pt` as name -> float32, read by the torch backend (cuda_train/reference_io.py)."""
    from shared.run.backends import get_backend

    get_backend("torch")  # one error line naming the missing framework, as for every torch command
    return importlib.import_module("cuda_train.reference_io").read_pt(path)


def read_reference(path: str | Path, source: str) -> dict[str, np.ndarray]:
    """The raw tensors of a reference weight file, float32, wrapper prefixes stripped."""
    path = Path(path)
    check_source(source)
    if not path.is_file():
        raise PgolfError(f"{path}: no such file (--from {source} reads {'final_model.pt' if source == 'torch-ref' else '<RUN_ID>_mlx_model.npz'})")
    raw = read_pt(path) if source == "torch-ref" else read_npz(path)
    out: dict[str, np.ndarray] = {}
    for k, v in raw.items():
        name = k
        for prefix in WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        if name in out:
            raise PgolfError(f"{path}: tensor {name} appears twice (as {k} and with another prefix)")
        out[name] = v
    return out


def _head_rows(m: ModelConfig, num_heads: int) -> np.ndarray:
    """Row indices of the second half of every head of a [num_heads * head_dim, dim] projection."""
    hd = m.head_dim
    return np.concatenate([np.arange(h * hd + hd // 2, (h + 1) * hd) for h in range(num_heads)])


def flip_rope_halves(params: dict[str, np.ndarray], m: ModelConfig) -> dict[str, np.ndarray]:
    """Negate the second half of every q and k head: maps train_gpt_mlx.py's RoPE direction to
    pgolf's and back (an involution; see the module docstring for why the loss is unchanged)."""
    out = dict(params)
    for i in range(m.num_layers):
        for proj, heads in (("c_q", m.num_heads), ("c_k", m.num_kv_heads)):
            name = f"blocks.{i}.attn.{proj}.weight"
            w = np.array(params[name], dtype=np.float32, copy=True)
            rows = _head_rows(m, heads)
            w[rows] = -w[rows]
            out[name] = w
    return out


def check_against_config(tensors: dict[str, np.ndarray], m: ModelConfig, path: Path, source: str) -> None:
    """One error naming the first tensor that the config does not expect, lacks, or shapes differently."""
    shapes = param_shapes(m)
    missing = [k for k in shapes if k not in tensors]
    extra = sorted(k for k in tensors if k not in shapes)
    if "lm_head.weight" in missing and m.tie_embeddings is False:
        raise PgolfError(f"{path}: no lm_head.weight, but the config says model.tie_embeddings = false: "
                         "the reference run had tied embeddings (TIE_EMBEDDINGS=1); set it to true")
    if "lm_head.weight" in extra and m.tie_embeddings:
        raise PgolfError(f"{path}: holds lm_head.weight, but the config says model.tie_embeddings = true: "
                         "the reference run was untied (TIE_EMBEDDINGS=0); set it to false")
    if extra:
        raise PgolfError(f"{path}: tensor {extra[0]} is not a {source} weight pgolf knows ({len(extra)} unexpected, "
                         f"e.g. {extra[:3]}); is this {'final_model.pt' if source == 'torch-ref' else 'the _mlx_model.npz'}"
                         " of an unmodified reference script?")
    if missing:
        layers = sum(1 for k in tensors if k.endswith(".attn.c_q.weight"))
        hint = (f" (the file has {layers} blocks, the config model.num_layers = {m.num_layers})"
                if layers != m.num_layers else "")
        raise PgolfError(f"{path}: tensor {missing[0]} is missing ({len(missing)} missing){hint}; "
                         "pass the --config the reference run was trained with")
    for k, s in shapes.items():
        got = tuple(tensors[k].shape)
        if got != s:
            raise PgolfError(f"{path}: tensor {k} has shape {got}, the config gives {s}; set the [model] keys "
                             "(vocab_size, model_dim, num_heads, num_kv_heads, mlp_mult) to the reference run's "
                             "VOCAB_SIZE, MODEL_DIM, NUM_HEADS, NUM_KV_HEADS, MLP_MULT")


def from_reference(tensors: dict[str, np.ndarray], source: str, cfg: Config,
                   path: str | Path = "weights") -> dict[str, np.ndarray]:
    """Reference weights -> pgolf parameters (table order, float32), checked and reparametrised."""
    path = Path(path)
    check_source(source)
    check_reference_model(cfg.model, source)
    check_against_config(tensors, cfg.model, path, source)
    check_finite(tensors, str(path), what="the reference run diverged; import an earlier or another run")
    params = {k: np.ascontiguousarray(tensors[k], dtype=np.float32) for k in param_shapes(cfg.model)}
    return flip_rope_halves(params, cfg.model) if source == "mlx-ref" else params


def to_reference(params: dict[str, np.ndarray], source: str, cfg: Config) -> dict[str, np.ndarray]:
    """pgolf parameters -> the tensors (float32) a reference script of `source` would hold for the
    same function: the inverse of `from_reference` (the RoPE flip is its own inverse)."""
    check_source(source)
    out = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    return flip_rope_halves(out, cfg.model) if source == "mlx-ref" else out


def import_reference(path: str | Path, source: str, cfg: Config) -> dict[str, np.ndarray]:
    """Read a reference weight file and return pgolf parameters for `cfg`."""
    return from_reference(read_reference(path, source), source, cfg, path)
