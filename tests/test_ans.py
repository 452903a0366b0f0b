"""The rANS coder of the group_ans pipeline (shared/artifact/ans.py, shared/artifact/compress.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from shared.artifact import ans
from shared.artifact import compress as pipelines
from shared.artifact import format as artifact
from shared.core.config import QuantConfig
from shared.core.spec import init_params
from shared.errors import PgolfError
from tests.conftest import tiny_config


def _round_trip(mat: np.ndarray) -> tuple[bytes, bytes]:
    side, stream = ans.encode_matrix(mat)
    back = ans.decode_matrix(side, stream, *mat.shape)
    assert back.dtype == np.int8 and back.shape == mat.shape
    np.testing.assert_array_equal(back, mat.view(np.int8) if mat.dtype == np.uint8 else mat)
    return side, stream


@pytest.mark.parametrize("shape", [(0, 0), (0, 7), (1, 1), (1, 13), (3, 1), (37, 29), (130, 257)])
def test_round_trip_of_awkward_sizes(shape):
    rng = np.random.default_rng(sum(shape))
    _round_trip(rng.integers(-128, 128, size=shape).astype(np.int8))                       # all 256 values
    _round_trip(np.clip(np.round(rng.standard_t(3, size=shape) * 4), -31, 31).astype(np.int8))  # skewed, int6
    _round_trip(np.full(shape, -7, np.int8))                                               # one distinct value


def test_every_byte_value_and_extreme_skew():
    mat = np.arange(256, dtype=np.uint8).reshape(16, 16)
    _round_trip(mat)
    skew = np.zeros((64, 300), np.int8)
    skew[5, 7], skew[63, 299] = 127, -128   # two rare values next to one at nearly all of 2^15
    _round_trip(skew)


def test_skewed_codes_are_coded_near_their_entropy():
    rng = np.random.default_rng(0)
    mat = np.clip(np.round(rng.normal(0, 6, size=(512, 256))), -31, 31).astype(np.int8)
    side, stream = _round_trip(mat)
    counts = np.bincount(mat.reshape(-1).view(np.uint8), minlength=256)
    p = counts[counts > 0] / mat.size
    entropy = -float((counts[counts > 0] * np.log2(p)).sum()) / 8
    assert entropy < len(stream) < entropy * 1.01 + 4 * ans.lanes_for(mat.size) + 16


def test_row_classes_and_reference_rows_pay_on_near_identical_rows():
    """Rows that are nearly one vector (an embedding's untrained tokens) beside spread rows: the model
    takes row classes and a reference row, and codes them in far fewer bytes than one table would."""
    rng = np.random.default_rng(1)
    common = rng.integers(-3, 4, size=192)
    quiet = common + rng.integers(0, 2, size=(300, 192)) * rng.choice([-1, 1], size=(300, 192))
    loud = np.round(rng.normal(0, 20, size=(700, 192)))
    mat = np.clip(np.concatenate([loud[:400], quiet, loud[400:]]), -127, 127).astype(np.int8)
    side, stream = _round_trip(mat)
    assert side[1] > 1   # classes
    one_table = np.bincount(mat.reshape(-1).view(np.uint8), minlength=256)
    p = one_table[one_table > 0] / mat.size
    order0 = -float((one_table[one_table > 0] * np.log2(p)).sum()) / 8
    assert len(stream) + len(side) < 0.9 * order0


def test_quantised_tables_sum_to_the_total_and_keep_every_value():
    rng = np.random.default_rng(2)
    for counts in (np.ones(256, np.int64), rng.integers(0, 5, 256) * rng.integers(0, 10 ** 6, 256),
                   np.eye(256, dtype=np.int64)[9] * 10 ** 9, np.zeros(256, np.int64)):
        f = ans.quantise(counts)
        assert f.sum() == ans.TOTAL and (f >= 0).all()
        if counts.any():
            assert ((f > 0) == (counts > 0)).all()


def test_same_bytes_same_output():
    rng = np.random.default_rng(3)
    mat = np.clip(np.round(rng.laplace(0, 5, size=(333, 96))), -63, 63).astype(np.int8)
    assert ans.encode_matrix(mat) == ans.encode_matrix(mat.copy())
    assert ans.encode_matrix(mat) != ans.encode_matrix(mat[::-1].copy())


def test_a_corrupt_frame_is_a_one_line_error():
    rng = np.random.default_rng(4)
    mat = np.clip(np.round(rng.normal(0, 8, size=(200, 64))), -31, 31).astype(np.int8)
    side, stream = ans.encode_matrix(mat)
    bad = []
    for i in (4 * ans.lanes_for(mat.size) + 10, len(stream) // 2, len(stream) - 2):
        s = bytearray(stream)
        s[i] ^= 0x5A
        bad.append((side, bytes(s)))
    bad += [(side, stream[:-2]), (side, stream + b"\0\0"), (side, stream[:3]),
            (side[:100], stream), (side[:1] + b"\0" + side[2:], stream), (b"\x09" + side[1:], stream)]
    t = bytearray(side)
    t[5] ^= 1   # a frequency table that no longer sums to 2^15
    bad.append((bytes(t), stream))
    for s, st in bad:
        with pytest.raises(PgolfError, match=r"^x\.pgz: corrupted rANS frame") as e:
            ans.decode_matrix(s, st, *mat.shape, source="x.pgz")
        assert "\n" not in str(e.value)
    with pytest.raises(PgolfError, match="corrupted rANS frame"):
        ans.decode_matrix(side, stream, 100, 64, source="x.pgz")   # fewer values than were coded


def _cfg(**quant):
    cfg = tiny_config()
    q = QuantConfig(keep_float_max_numel=0, clip_k=4.0, attn="int6", mlp="int6", embed="int8", **quant)
    return replace(cfg, quant=q).validate()


def _params(cfg, seed=5):
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in init_params(cfg.model, 1).items()}


@pytest.mark.parametrize("sort", [False, True])
def test_group_ans_unpacks_to_the_same_tensors_as_group(sort):
    params = _params(_cfg())
    out = {}
    for comp in ("group", "group_ans"):
        cfg = _cfg(compressor=comp, group_sort=sort, lqer_tensors=1)
        blob = artifact.pack(params, cfg)
        assert artifact.pipeline_of(blob) == comp
        c2, out[comp] = artifact.unpack(blob)
        assert c2.quant == cfg.quant
    assert out["group"].keys() == out["group_ans"].keys()
    for k in out["group"]:
        np.testing.assert_array_equal(out["group_ans"][k], out["group"][k])


def test_group_ans_corrupt_code_frame_is_refused():
    cfg = _cfg(compressor="group_ans")
    blob = artifact.pack(_params(cfg), cfg)
    frames = pipelines._unframe(blob[artifact.HEADER.size:], "x")
    meta = json.loads(pipelines._inflate("brotli", frames[0], "x")[4:].decode())
    big = max(range(2, len(frames) - 3), key=lambda i: len(frames[i]))
    assert len(pipelines.code_groups(meta)[0]) == len(frames) - 5
    for cut in (frames[big][:3], frames[big][:-2], frames[big][:-6] + frames[big][-4:] + frames[big][-6:-4]):
        forged = pipelines._frames(frames[:big] + [cut] + frames[big + 1:])
        with pytest.raises(PgolfError, match="corrupted") as e:
            pipelines.decode("group_ans", forged, "x.pgz")
        assert "\n" not in str(e.value) and str(e.value).startswith("x.pgz")


def test_lane_count_grows_with_the_symbols():
    assert ans.lanes_for(0) == ans.lanes_for(100) == 1
    assert [ans.lanes_for(4 ** k * 64) for k in range(1, 5)] == [2, 4, 8, 16]
    assert ans.lanes_for(10 ** 9) == 1024 and math.log2(ans.lanes_for(3 * 10 ** 6)).is_integer()


@pytest.mark.slow
def test_train_gpt_carries_the_coder_only_for_group_ans():
    from shared.record.script import bundle

    for comp in ("group", "group_ans"):
        _, names = bundle(_cfg(compressor=comp))
        assert ("shared.artifact.ans" in names) == (comp == "group_ans"), comp
