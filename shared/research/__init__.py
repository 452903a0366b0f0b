"""The research loop: sweep, ablate, compare and plot runs (shared/cli/research.py is their command line).

    runs.py    run folders and sweep folders -> groups of seeds, the comparison table and its verdicts
    sweep.py   a resumable grid of `pgolf train` runs, results.csv / results.jsonl / summary.json
    ablate.py  the techniques of a config turned back to the baseline's value, one at a time
    corpora.py one sweep per corpus (several --data) and where each result holds
    plot.py    curves and bytes per tensor class (matplotlib, the optional extra `[plot]`)
"""
