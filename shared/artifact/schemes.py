"""Scheme names and their bit widths: what `[quant]` and the artifact's tensor table may name."""

from __future__ import annotations

from shared.errors import PgolfError

INT_BITS = {"int8": 8, "int7": 7, "int6": 6, "int5": 5, "int4": 4, "int3": 3, "int2": 2}
FLOAT_SCHEMES = {"fp32": 32, "fp16": 16}
SCHEMES = tuple(FLOAT_SCHEMES) + tuple(INT_BITS)


def scheme_bits(scheme: str) -> int:
    if scheme in INT_BITS:
        return INT_BITS[scheme]
    if scheme in FLOAT_SCHEMES:
        return FLOAT_SCHEMES[scheme]
    raise PgolfError(f"unknown quant scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")


def qmax(bits: int) -> int:
    """Largest magnitude of a symmetric signed `bits`-bit code (-qmax..qmax)."""
    return (1 << (bits - 1)) - 1
