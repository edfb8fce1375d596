"""Hub ids versus local paths, and not waiting on a hub that cannot be reached.

huggingface_hub retries unreachable hosts for about a minute before it gives
up. Before the first hub load lleval tries the hub's host for a few seconds;
the answer is a value (`HubAccess`) that the loaders are given
(``local_files_only`` for transformers, an offline scope around a
``datasets`` call): cached models and datasets still load and anything else
fails at once with a clear message. Nothing here changes the process's
environment; the offline flags of ``datasets`` and ``huggingface_hub`` are set
only inside the scope of a ``datasets`` call, and put back after it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlparse

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "on", "yes", "true"}
CONNECT_TIMEOUT_SECONDS = 3.0


def is_hub_id(name: str) -> bool:
    """``gpt2`` or ``org/name``, not a path (``./x``, ``/x``, ``a/b/c``, ``x.txt``)."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")


def is_url(name: str) -> bool:
    """``http://...`` or ``https://...``: a served model, not a path or a hub id."""
    return urlparse(name).scheme in ("http", "https")


def offline_by_env() -> bool:
    """True when the user set HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(key, "").strip().lower() in _TRUE for key in keys)


@dataclass(frozen=True)
class HubAccess:
    """Whether loaders may use the network: ``offline`` with its cause (``env``: the user
    set HF_HUB_OFFLINE; ``unreachable``: the host did not answer; ``local``: a local model,
    which needs none), else online."""

    offline: bool
    cause: str = "online"  # online | env | unreachable | local

    def hint(self) -> str:
        """The sentence that explains why a hub id did not load."""
        if self.cause == "unreachable":
            return ("The hub cannot be reached from this machine and it is not in the local cache: "
                    "use a local path, or run once where the hub is reachable to fill the cache.")
        if self.cause == "env":
            return "It is not in the local cache, and HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set."
        return "Check the name and (for gated repositories) `hf auth login`."


@functools.cache
def hub_access() -> HubAccess:
    """Offline when the environment says so, or when a TCP connection to the hub's host
    does not open within a few seconds (asked once per process)."""
    if offline_by_env():
        return HubAccess(True, "env")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
        return HubAccess(False)
    except OSError:
        return HubAccess(True, "unreachable")


@contextlib.contextmanager
def datasets_offline(access: HubAccess) -> Iterator[None]:
    """``datasets`` takes no offline argument: when ``access`` is offline, its offline
    flags (and huggingface_hub's) are set for the call inside this scope, then restored."""
    import datasets.config
    import huggingface_hub.constants

    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved = [getattr(module, name) for module, name in flags]
    try:
        if access.offline:
            for module, name in flags:
                setattr(module, name, True)
        yield
    finally:
        for (module, name), value in zip(flags, saved):
            setattr(module, name, value)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without a trailing period."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
