"""Time and memory of the n-gram tilt's hints (eval.ngram_tilt; shared/eval/ngram.py) at a given stream length.

    python -m benchmarks.ngram_hints --tokens 4785152 [--order 16] [--vocab 8192]

The stream is Zipf-distributed tokens (exponent 1.1 over the vocabulary, seeded): the cost is a few
sorts of the stream, so it depends on the length, not on what the text says. Prints one JSON line:
seconds, peak resident memory of the process, and how many targets the tilt gates. #2135's full
validation stream is 47,851,520 targets; its C hash table took 200.9 s inside the evaluation timer.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from shared.eval.ngram import token_hints


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4_785_152)
    ap.add_argument("--order", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, args.vocab + 1) ** 1.1
    targets = rng.choice(args.vocab, size=args.tokens, p=p / p.sum()).astype(np.uint16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    h = token_hints(targets, args.order, 0.8, 2.625)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens": args.tokens, "order": args.order, "seconds": round(dt, 2),
                      "peak_rss_mb": round(peak / 1024), "rss_before_mb": round(before / 1024),
                      "gated": int(h.gate.sum())}))


if __name__ == "__main__":
    main()
