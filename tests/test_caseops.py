"""The CaseOps transform: hand-checked encodings, bijectivity on random Unicode and real text, operator masks."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import caseops
from shared.data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE, decode, encode, operator_mask
from tests.conftest import SHAKESPEARE, stdlib_docs

HAND = [
    ("the cat", "the cat"),
    ("The NASA iPhone", f"{TITLE}the {ALLCAPS}nasa i{CAPNEXT}phone"),
    ("A I", f"{TITLE}a {TITLE}i"),                       # one capital letter is Title, not ALLCAPS
    ("McDonald's", f"{TITLE}mc{CAPNEXT}donald's"),
    ("ABc", f"{TITLE}a{CAPNEXT}bc"),
    ("x2Y", f"x2{TITLE}y"),                               # digits end a word
    ("Émile", "Émile"),                                   # non-ASCII is untouched
    (f"a{TITLE}B", f"a{ESC}{TITLE}{TITLE}b"),             # a literal operator is escaped
    (f"{ESC}{ESC}", f"{ESC}{ESC}{ESC}{ESC}"),
]


@pytest.mark.parametrize("text,expected", HAND)
def test_hand_checked(text, expected):
    assert encode(text) == expected
    assert decode(expected) == text


def test_no_capitals_left_and_lowercase_shared():
    out = encode("The THE the tHe")
    assert not any("A" <= c <= "Z" for c in out)
    assert out.replace(TITLE, "").replace(ALLCAPS, "").replace(CAPNEXT, "") == "the the the the"


def _random_text(rng: np.random.Generator, n: int) -> str:
    """Characters biased towards the hard cases: letters of both cases, operators, spaces, any code point."""
    pools = [
        list("abcxyzABCXYZ"), list(caseops.OPERATORS), list(" \n\t'-0123456789"),
        list("ÉéßŁ東\u2581\U0001F600"),
    ]
    out = []
    for _ in range(n):
        k = rng.integers(0, 5)
        if k < 4:
            pool = pools[k]
            out.append(pool[rng.integers(0, len(pool))])
        else:  # any code point, surrogates included (Python strings may hold them)
            out.append(chr(int(rng.integers(0, 0x110000))))
    return "".join(out)


def test_bijective_on_random_unicode():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        text = _random_text(rng, int(rng.integers(0, 40)))
        assert decode(encode(text)) == text, repr(text)


def test_bijective_on_real_text():
    docs = stdlib_docs(400_000)  # every long module docstring of the stdlib (~110k characters)
    if SHAKESPEARE is not None and SHAKESPEARE.is_file():
        docs.append(SHAKESPEARE.read_text(encoding="utf-8"))
    assert sum(len(d) for d in docs) > 100_000
    changed = 0
    for doc in docs:
        enc = encode(doc)
        assert decode(enc) == doc
        changed += enc != doc
    assert changed > len(docs) // 2  # the transform really did something on most documents


@pytest.mark.parametrize("bad", [TITLE, f"{TITLE} x", f"a{TITLE}b", f"{CAPNEXT}a", f"{ALLCAPS}{TITLE}a", ESC,
                                 f"a{CAPNEXT}"])
def test_malformed_raises(bad):
    with pytest.raises(caseops.CaseOpsError):
        decode(bad)


def test_uppercase_passes_through():
    """NFKC can turn a fullwidth letter into an ASCII capital that no operator announced: it decodes as itself."""
    assert decode("x\uff21") == "x\uff21" and decode("xMHz") == "xMHz"


def test_operator_mask_escapes():
    t, a, c, e, x = 10, 11, 12, 13, 99   # operator ids in OPERATORS order, and one text token
    ops = [t, a, c, e]
    stream = np.array([1, t, x, e, t, x, e, e, c, x, e, e, e, a])
    # an escaped operator is text: ESC TITLE, ESC ESC and ESC ESC ESC ALLCAPS are (op, text) pairs
    want = [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert operator_mask(stream, ops).astype(int).tolist() == want
