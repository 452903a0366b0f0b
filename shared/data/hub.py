"""Fetching one file from a Hugging Face dataset repo, and every way that can fail, named once.

`fetch` is the only call into huggingface_hub. Whatever the hub client
raises (its own `HfHubHTTPError` family, or the transport errors of the HTTP
library it runs on: httpx2 in huggingface_hub 2.x, httpx in 1.x, requests
before that) becomes one `PgolfError` in `hub_error`, which reads the whole
cause chain, because the client wraps a failed metadata request in a
`LocalEntryNotFoundError` ("not in the local cache") whatever the real
reason was:

    nothing listening            connection refused at <endpoint>
    no route, DNS, TLS           cannot connect to <endpoint> (<reason>)
    no answer in time            no answer from <endpoint> for <file>
    HTTP 5xx (after retries)     server error <code> for <file> at <endpoint>
    the body ends early          transfer of <file> cut short after N retries
    HTTP 404 entry / repo        <file> is not in the dataset repo / dataset repo not found
    HTTP 401/403, gated          access to <repo> refused
    HF_HUB_OFFLINE=1             offline mode
    a local write fails          could not write <staging file>

The client retries on its own (HEAD requests with exponential backoff up to
about 23 s, a cut transfer five times, resuming with HTTP Range). Its retry
warnings are swallowed and counted: the user sees at most one "retrying"
line per file and the count in the error.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from shared.errors import PgolfError

DEFAULT_ENDPOINT = "https://huggingface.co"


class _RetryCounter(logging.Handler):
    """Takes the hub client's log records while a fetch runs: counts retries, prints one note for the first."""

    def __init__(self, remote_path: str):
        super().__init__(logging.DEBUG)
        self.remote_path = remote_path
        self.retries = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno < logging.WARNING:
            return
        if "[Retry " in msg or "resume download" in msg:
            self.retries += 1
            if self.retries == 1:  # one line, so that a wait of up to ~23 s is not silent
                reason = (self.last if "[Retry " in msg else msg).splitlines()[0]
                reason = reason.split(" thrown while")[0].strip("'")
                if reason.startswith("Error while downloading from "):
                    reason = reason.split(": ", 1)[-1]
                reason = reason[:160]
                print(f"{self.remote_path}: {reason}; retrying", file=sys.stderr, flush=True)
        self.last = msg


@contextlib.contextmanager
def _quiet_hub(remote_path: str) -> Iterator[_RetryCounter]:
    """Route huggingface_hub's log records to a counter instead of stderr, for the length of one fetch."""
    lib = logging.getLogger("huggingface_hub")
    counter = _RetryCounter(remote_path)
    saved = lib.handlers[:], lib.propagate, lib.level
    lib.handlers[:] = [counter]
    lib.propagate = False
    lib.setLevel(logging.WARNING)
    try:
        yield counter
    finally:
        lib.handlers[:], lib.propagate = saved[0], saved[1]
        lib.setLevel(saved[2])


def _http_library_errors() -> dict[str, tuple[type[BaseException], ...]]:
    """The transport error classes of whichever HTTP library the hub client has loaded, by kind."""
    kinds: dict[str, list[type[BaseException]]] = {"connect": [], "timeout": [], "cut": []}
    names = {"connect": ("ConnectError", "ConnectionError", "ProxyError", "SSLError"),
             "timeout": ("TimeoutException", "Timeout", "ReadTimeout", "ConnectTimeout"),
             "cut": ("RemoteProtocolError", "ReadError", "ChunkedEncodingError", "ContentDecodingError")}
    for module in ("httpx2", "httpx", "requests.exceptions"):
        lib = sys.modules.get(module)
        for kind, attrs in names.items():
            kinds[kind] += [c for a in attrs if isinstance(c := getattr(lib, a, None), type)]
    return {kind: tuple(classes) for kind, classes in kinds.items()}


def _chain(e: BaseException) -> list[BaseException]:
    """e and every exception it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    while e is not None and all(e is not s for s in seen):
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def hub_error(e: BaseException, remote_path: str, repo: str, endpoint: str | None, retries: int = 0) -> PgolfError:
    """One line naming what went wrong fetching `remote_path` from `repo`: the single map of hub failures."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    at = endpoint or DEFAULT_ENDPOINT
    tries = f" after {retries} retries" if retries else ""
    http = _http_library_errors()
    chain = _chain(e)

    def find(*classes):
        classes = tuple(c for c in classes if c)
        return next((x for x in chain if classes and isinstance(x, classes)), None)

    if isinstance(e, OSError) and not isinstance(e, HfHubHTTPError) and e.filename:  # our side: the staging folder
        return PgolfError(f"could not write {e.filename} ({e.strerror or e}); check the free space and "
                          f"permissions of the download folder")
    if find(OfflineModeIsEnabled):
        return PgolfError(f"cannot fetch {remote_path}: HF_HUB_OFFLINE is set; unset it to download")
    if find(GatedRepoError):
        return PgolfError(f"access to the dataset repo {repo} at {at} is gated: accept its terms and log in "
                          "(huggingface-cli login), then run the command again")
    if find(RemoteEntryNotFoundError):
        return PgolfError(f"{remote_path} is not in the dataset repo {repo} at {at}")
    if find(RepositoryNotFoundError):
        return PgolfError(f"dataset repo {repo} not found at {at} (check --repo-id; a private repo needs a login)")
    if status_err := find(HfHubHTTPError):
        response = getattr(status_err, "response", None)
        code = getattr(response, "status_code", None)
        if code is not None and code >= 500:
            return PgolfError(f"server error {code} for {remote_path} at {at}{tries}: the hub is failing; "
                              "try again later")
        if code in (401, 403):
            return PgolfError(f"access to {remote_path} in {repo} at {at} refused (HTTP {code}): "
                              "log in (huggingface-cli login) or check --repo-id")
        if code is not None:
            return PgolfError(f"HTTP {code} for {remote_path} at {at}: {_first_line(status_err)}")
    if find(ConnectionRefusedError) or (
            (c := find(*http["connect"])) is not None and "refused" in str(c).lower()):
        return PgolfError(f"connection refused at {at}{tries}: nothing is listening there; check HF_ENDPOINT "
                          "and your network")
    if c := find(*http["timeout"], TimeoutError):
        return PgolfError(f"no answer from {at} for {remote_path}{tries} ({_first_line(c)}); "
                          "check your network (HF_HUB_DOWNLOAD_TIMEOUT sets the wait)")
    if c := find(*http["connect"], ConnectionError):
        return PgolfError(f"cannot connect to {at}{tries} ({_first_line(c)}); check HF_ENDPOINT and your network")
    if c := find(*http["cut"]):
        return PgolfError(f"transfer of {remote_path} cut short{tries or ' after the client retries'} "
                          f"({_first_line(c)}); run the command again to resume")
    return PgolfError(f"downloading {remote_path} from {at} failed ({type(e).__name__}: {_first_line(e)}); "
                      "run the command again to resume")


def fetch(repo: str, remote_path: str, staging: Path, endpoint: str | None) -> Path:
    """Download one file of a dataset repo into `staging` (partial transfers resume there); its local path."""
    from huggingface_hub import hf_hub_download

    with _quiet_hub(remote_path) as counter:
        try:
            return Path(hf_hub_download(repo_id=repo, filename=remote_path, repo_type="dataset",
                                        local_dir=staging, endpoint=endpoint))
        except Exception as e:  # every failure is named in hub_error, not some here and some there
            raise hub_error(e, remote_path, repo, endpoint, counter.retries) from None
