"""The one error type users see.

Anything that is the user's input being wrong (a missing shard, an unknown
config key, an artifact over budget) raises `PgolfError` with a one-line
message that names the file or field and says what to do. The CLI turns it
into `error: <message>` on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class PgolfError(Exception):
    """Bad input or a failed check: one line for the user, exit code 2."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
