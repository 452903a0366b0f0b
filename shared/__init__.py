"""pgolf's framework-free spec: config, shard format, byte accounting, artifact format, CLI.

Imports neither torch nor mlx (tests/test_boundaries.py checks it).
"""

__version__ = "0.1.0"
