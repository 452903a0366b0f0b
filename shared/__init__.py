"""pgolf's framework-free spec: config, shard format, byte accounting, artifact format, CLI.

Imports neither torch nor mlx (tests/test_boundaries.py checks it).
"""

__version__ = "0.1.0"

# False here, True in the generated train_gpt.py: shared/record/script.py takes the branches of `if SCRIPT:`
# and `if not SCRIPT:` accordingly, so a pod run carries none of the command line's comforts (checkpoints,
# resume, Ctrl-C handling, progress bars, provenance).
SCRIPT = False
