"""The token-only n-gram tilt (#2135): hints equal a direct transcription of the record's online state
(a ring of the last order-1 targets seeded with the first, 64-bit hashed context and pair counts, the top
token replaced only by a strictly larger count), they read only the stream's prefix, and the tilted
distribution is normalised."""

from __future__ import annotations

import numpy as np
import pytest

from shared.eval.ngram import _COEFFS, _PAIR_MIX, tilt, token_hints

M64 = (1 << 64) - 1


def online_reference(targets: np.ndarray, order: int, threshold: float) -> tuple[list[int], list[bool]]:
    ctx = order - 1
    ring = [int(targets[0])]
    totals, tops, pairs = {}, {}, {}
    tokens, gates = [], []
    for tok in map(int, targets):
        hint, prob = 0, 0.0
        key = None
        if len(ring) >= ctx:
            key = 0
            for j, r in enumerate(ring[-ctx:]):
                key ^= (r * int(_COEFFS[j])) & M64
            if key in totals:
                hint, prob = tops[key][1], np.float32(tops[key][0]) / np.float32(totals[key])
            pk = ((key * int(_PAIR_MIX)) & M64) ^ ((tok * int(_COEFFS[ctx % 32])) & M64)
            pairs[pk] = pairs.get(pk, 0) + 1
            totals[key] = totals.get(key, 0) + 1
            if key not in tops or pairs[pk] > tops[key][0]:
                tops[key] = (pairs[pk], tok)
        ring.append(tok)
        gate = bool(prob >= np.float32(threshold))
        tokens.append(hint if gate else 0)
        gates.append(gate)
    return tokens, gates


def stream(n: int, seed: int) -> np.ndarray:
    """Repetitive text-like tokens: phrases drawn from a small set, so contexts recur."""
    rng = np.random.default_rng(seed)
    phrases = [rng.integers(2, 40, size=rng.integers(3, 9)) for _ in range(12)]
    out = np.concatenate([phrases[i] for i in rng.integers(0, len(phrases), size=n)])
    return out[:n].astype(np.int64)


@pytest.mark.parametrize("order,threshold", [(16, 0.8), (4, 0.5), (2, 0.3)])
def test_hints_equal_the_online_state(order, threshold):
    t = stream(3000, order)
    h = token_hints(t, order, threshold, 2.0)
    ref_tok, ref_gate = online_reference(t, order, threshold)
    assert h.gate.tolist() == ref_gate
    assert h.token.tolist() == ref_tok
    assert 0.05 < h.gate.mean() < 0.95  # the stream exercises both branches
    assert np.all(h.boost[h.gate] == np.float32(2.0)) and np.all(h.boost[~h.gate] == 0)


def test_hints_read_only_the_prefix():
    t = stream(2000, 3)
    base = token_hints(t, 4, 0.5)
    for k in (50, 777, 1999):
        u = t.copy()
        u[k] = 41 if u[k] != 41 else 42
        moved = token_hints(u, 4, 0.5)
        assert np.array_equal(moved.token[: k + 1], base.token[: k + 1])
        assert np.array_equal(moved.gate[: k + 1], base.gate[: k + 1])


def test_the_tilted_distribution_is_normalised():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 50))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    hint = rng.integers(0, 50, size=5)
    beta = np.full(5, 2.625, dtype=np.float32)
    total = np.zeros(5)
    for y in range(50):
        nats = tilt(-logp[:, y], logp[np.arange(5), hint], hint == y, np.ones(5, bool), beta)
        total += np.exp(-nats)
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    untouched = tilt(-logp[:, 3], logp[np.arange(5), hint], hint == 3, np.zeros(5, bool), beta)
    np.testing.assert_array_equal(untouched, -logp[:, 3])
