"""Hub ids versus local paths, and not waiting on a hub that cannot be reached.

huggingface_hub retries unreachable hosts for about a minute before it gives
up. When the hub's host cannot be reached within a few seconds, lleval
switches the hub libraries to offline mode, so cached models and datasets
still load and anything else fails at once with a clear message.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import sys
from urllib.parse import urlparse

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "on", "yes", "true"}
CONNECT_TIMEOUT_SECONDS = 3.0
_switched_offline = False  # set when lleval, not the user, turned offline mode on


def is_hub_id(name: str) -> bool:
    """``gpt2`` or ``org/name``, not a path (``./x``, ``/x``, ``a/b/c``, ``x.txt``)."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")


def offline_by_env() -> bool:
    """True when the user set HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(key, "").strip().lower() in _TRUE for key in keys)


@functools.cache
def hub_reachable() -> bool:
    """Whether a TCP connection to the hub's host opens within a few seconds.

    When it does not, the hub libraries are switched to offline mode for the
    rest of the process (environment variables, and the flags of those
    already imported).
    """
    if offline_by_env():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
        return True
    except OSError:
        _go_offline()
        return False


def _go_offline() -> None:
    global _switched_offline
    _switched_offline = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        config.HF_DATASETS_OFFLINE = True  # type: ignore[attr-defined]


def offline_hint() -> str:
    """The sentence that explains why a hub id did not load."""
    if _switched_offline:
        return (
            "The hub cannot be reached from this machine and it is not in the local cache: "
            "use a local path, or run once where the hub is reachable to fill the cache."
        )
    if offline_by_env():
        return "It is not in the local cache, and HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set."
    return "Check the name and (for gated repositories) `hf auth login`."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without a trailing period."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
