"""Record-grade evaluation: sliding windows and score-first test-time training (`eval.mode`).

`windows.py` plans which targets are scored with which context, `ledger.py` records
every score and hands updates only tokens already scored, `driver.py` is the
scoring order of each mode. The backends supply only primitives (the `Session`
methods listed in shared/run/backends.py).
"""
