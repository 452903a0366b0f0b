"""`python -m shared.cli ...` is `pgolf ...`."""

from shared.cli import main

main()
