"""`make bench`: every benchmark, one after the other; paste the tables into BENCHMARKS.md."""

from __future__ import annotations

from benchmarks import artifact, train_cpu


def main() -> None:
    train_cpu.main([])
    artifact.main([])


if __name__ == "__main__":
    main()
