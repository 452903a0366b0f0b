"""CaseOps: a reversible text transform that turns capitalisation into operator symbols.

The idea comes from the CaseOps records (PR #1729, building on the
`lossless_caps_caseops_v1` export): lower-case the text so that "The", "THE"
and "the" share pieces, and say where the capitals were with four private-use
characters that the tokenizer reserves as whole pieces (user_defined_symbols).
The code points are the records' so tokenizers built either way agree:

    TITLE   U+E001  the next ASCII word is Title-case ("Paris" -> TITLE "paris")
    ALLCAPS U+E002  the next ASCII word (two letters or more) is upper-case
    CAPNEXT U+E003  the next letter inside a word is upper-case ("iPhone" -> "i" CAPNEXT "phone")
    ESC     U+E004  the next character is literal (an operator character in the input)

A word is a maximal run of ASCII letters; nothing else is touched. `decode`
inverts `encode` for every string (tests/test_caseops.py checks random
Unicode and real text). `decode` passes an upper-case ASCII letter through
as it is: `encode` never emits one, but SentencePiece's NFKC normalisation
can (fullwidth letters), and the decoded text must still invert.

BPB is charged on the original text: an operator stands for 0 bytes, every
other character for its own UTF-8 length (case changes keep ASCII at one
byte). `operator_mask` finds the operators in a token stream for the byte
sidecar (shared/data/build.py).
"""

from __future__ import annotations

import numpy as np

from shared.errors import PgolfError

NAME = "caseops"
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
_OPS = frozenset(OPERATORS)
TRANSFORMS = ("none", NAME)


class CaseOpsError(ValueError):
    """A string that `encode` cannot have produced (a dangling or misplaced operator)."""


def _is_letter(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _encode_word(word: str, out: list[str]) -> None:
    lower = word.lower()
    if word == lower:
        out.append(word)
    elif len(word) >= 2 and word.isupper():
        out += (ALLCAPS, lower)
    else:
        if word[0].isupper():
            out.append(TITLE)
        out.append(lower[0])
        for orig, low in zip(word[1:], lower[1:], strict=True):
            if orig != low:
                out.append(CAPNEXT)
            out.append(low)


def encode(text: str) -> str:
    """The transformed text: no upper-case ASCII letter left, operators in their place."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if _is_letter(ch):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
            _encode_word(text[i:j], out)
            i = j
            continue
        if ch in _OPS:
            out.append(ESC)
        out.append(ch)
        i += 1
    return "".join(out)


def decode(text: str) -> str:
    """Invert `encode`; a `CaseOpsError` naming the position when the text is malformed."""
    out: list[str] = []
    mode = None          # TITLE or ALLCAPS waiting for the first letter of a word
    word_caps = False    # inside an ALLCAPS word
    in_word = capnext = escape = False
    for pos, ch in enumerate(text):
        if escape:
            out.append(ch)
            escape = in_word = word_caps = False
            continue
        if ch in _OPS:
            if ch == ESC:
                if mode or capnext:
                    raise CaseOpsError(f"position {pos}: escape after a capitalisation operator")
                escape = True
            elif ch == CAPNEXT:
                if capnext or mode or not in_word:
                    raise CaseOpsError(f"position {pos}: CAPNEXT outside a word")
                capnext = True
            else:
                if mode or capnext or in_word:
                    raise CaseOpsError(f"position {pos}: word operator inside a word")
                mode = ch
            continue
        if _is_letter(ch):
            if not in_word:
                word_caps = mode == ALLCAPS
                out.append(ch.upper() if mode else ch)
                mode, in_word = None, True
            else:
                out.append(ch.upper() if (word_caps or capnext) else ch)
            capnext = False
            continue
        if mode or capnext:
            raise CaseOpsError(f"position {pos}: operator not followed by an ASCII letter")
        out.append(ch)
        in_word = word_caps = False
    if mode or capnext or escape:
        raise CaseOpsError("dangling operator at the end of the text")
    return "".join(out)


def operator_ids(sp) -> list[int]:
    """The tokenizer's ids of the four operators; an error when it does not reserve them as pieces."""
    ids = [int(sp.piece_to_id(op)) for op in OPERATORS]
    missing = [f"U+{ord(op):04X}" for op, i in zip(OPERATORS, ids, strict=True) if sp.id_to_piece(i) != op]
    if missing:
        raise PgolfError(f"the tokenizer does not reserve the CaseOps operators {', '.join(missing)} as pieces: "
                         "build it with `pgolf data build --transform caseops`")
    return ids


def has_operators(sp) -> bool:
    """Does this tokenizer reserve the CaseOps operators (a CaseOps dataset needs a byte sidecar)?"""
    try:
        return all(sp.id_to_piece(int(sp.piece_to_id(op))) == op for op in OPERATORS)
    except (AttributeError, TypeError):
        return False


def operator_mask(tokens: np.ndarray, op_ids: list[int]) -> np.ndarray:
    """True where a token acts as an operator (0 original bytes); an escaped operator is a literal.

    Only operator tokens are visited, so this is cheap on long streams.
    """
    tokens = np.asarray(tokens)
    esc = op_ids[OPERATORS.index(ESC)]
    is_op = np.isin(tokens, op_ids)
    mask = is_op.copy()
    where = np.flatnonzero(is_op)
    k = 0
    while k < where.size:
        i = where[k]
        if tokens[i] == esc and i + 1 < tokens.size and is_op[i + 1]:
            mask[i + 1] = False  # the escaped character is text
            k += 2 if k + 1 < where.size and where[k + 1] == i + 1 else 1
            continue
        k += 1
    return mask
