"""Hub ids versus local paths versus server URLs, and not waiting on a hub that cannot be reached.

huggingface_hub retries unreachable hosts for about a minute before it gives
up. Before the first hub load lleval tries the hub's host for a few seconds;
the answer is a value (`HubAccess`) that the loaders are given
(``local_files_only`` for transformers, an offline scope around a
``datasets`` call): cached models and datasets still load and anything else
fails at once with a clear message. Nothing here changes the process's
environment; the offline flags of ``datasets`` and ``huggingface_hub`` are set
only inside the scope of a ``datasets`` call, and put back after it.

A served model is named by a URL, which may carry a secret: a password in its
user-info part (``http://user:KEY@host/v1``) or a credential in its query string
(``?api_key=KEY``). `parse_server_url` reads one strictly (a malformed URL is a
`ConfigError` that says what is wrong without repeating any part of it) and
`display_url` is what a report, a label or a message may show of any URL: no
user-info, no fragment, and no query parameter whose name says it is a credential
(`is_credential_name`: it holds ``key``, ``token``, ``secret``, ``pass``, ``pwd``,
``auth``, ``sig``, ``credential`` or ``session``, in any case, ``-`` or ``_``).
Other query parameters (``?api-version=...``) are shown and sent.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import parse_qsl, unquote, urlparse

from lleval.errors import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "on", "yes", "true"}
CONNECT_TIMEOUT_SECONDS = 3.0


def is_hub_id(name: str) -> bool:
    """``gpt2`` or ``org/name``, not a path (``./x``, ``/x``, ``a/b/c``, ``x.txt``)."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")


def is_url(name: str) -> bool:
    """``http://...`` or ``https://...``: a served model, not a path or a hub id (never raises,
    whatever follows the scheme: `parse_server_url` says what is wrong with it)."""
    return bool(_SERVER_SCHEME.match(name))


_SERVER_SCHEME = re.compile(r"^(https?)://", re.IGNORECASE)
_ANY_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]+(%[A-Za-z0-9._~-]+)?$")
_CREDENTIAL_PARTS = ("key", "token", "secret", "pass", "pwd", "auth", "sig", "credential", "session")


def is_credential_name(name: str) -> bool:
    """Whether a query parameter's name says its value is a secret (``api_key``, ``api-key``,
    ``key``, ``access_token``, ``X-Auth``, ``sig``...): `display_url` leaves it out."""
    lowered = unquote(name).lower()
    return any(part in lowered for part in _CREDENTIAL_PARTS)


@dataclass(frozen=True)
class ServerURL:
    """A server's URL, read strictly: where to connect, what to send, what may be shown."""

    scheme: str  # http | https
    host: str  # a name or an IPv4 address, or an IPv6 address without its brackets
    port: int
    path: str  # the base path without a trailing slash ("" when none was given)
    query: str = ""  # sent as given with every request
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be shown: the password and the values of credential parameters."""
        found = [self.password or ""] + [v for k, v in parse_qsl(self.query, keep_blank_values=True)
                                         if is_credential_name(k)]
        return tuple(s for s in found if s)

    def shown(self, path: str | None = None) -> str:
        """The URL as reports and messages show it: no user-info, no credential parameter."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = _shown_query(self.query)
        return f"{self.scheme}://{host}:{self.port}{self.path if path is None else path}" + (
            f"?{query}" if query else "")


def parse_server_url(url: str, what: str = "--model") -> ServerURL:
    """The `ServerURL` of ``url``; a `ConfigError` naming ``what`` (the flag) when it is not
    an http(s) URL with a host and a valid port, or when its user name or password is
    ambiguous. The message never repeats any part of ``url`` (a part may be a secret)."""
    found = _SERVER_SCHEME.match(url)
    if found is None:
        raise ConfigError(f"{what} is not an http(s) URL of a server (http://HOST:PORT/v1).")
    rest = url[found.end():]
    authority, tail = _split_authority(rest)
    if "#" in tail:
        raise ConfigError(f"the URL given to {what} has a '#' after its host: a user name or password holding '/', "
                          "'?' or '#' must be percent-encoded (%2F, %3F, %23), and a URL of a server has no #fragment.")
    if "@" in tail:
        raise ConfigError(f"the URL given to {what} has an '@' after its host: a user name or password holding '/', "
                          "'?' or '#' must be percent-encoded (%2F, %3F, %23), or give the key with --api-key-env.")
    user = password = None
    if "@" in authority:
        info, _, authority = authority.rpartition("@")
        name, colon, secret = info.partition(":")
        user, password = unquote(name) or None, unquote(secret) if colon else None
    host, port = _host_and_port(authority, found.group(1).lower(), what)
    path, _, query = tail.partition("?")
    return ServerURL(found.group(1).lower(), host, port, path.rstrip("/"), query, user, password)


def _split_authority(rest: str) -> tuple[str, str]:
    """``host:port`` (with any user-info) and what follows it (path, query, fragment)."""
    ends = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
    end = min(ends) if ends else len(rest)
    return rest[:end], rest[end:]


def _host_and_port(authority: str, scheme: str, what: str) -> tuple[str, int]:
    """The host and port of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if authority.startswith("["):
        inside, bracket, after = authority[1:].partition("]")
        if not bracket or not _IPV6.match(inside) or (after and not after.startswith(":")):
            raise ConfigError(f"the host of the URL given to {what} is not a bracketed IPv6 address ([::1]): check the "
                              "brackets.")
        host, port_text = inside, after[1:] if after else None
    else:
        host, colon, port_text_found = authority.partition(":")
        port_text = port_text_found if colon else None
        if not host or not _HOST_NAME.match(host):
            raise ConfigError(f"the URL given to {what} has no valid host name (letters, digits, '-', '.'; an IPv6 "
                              "address in brackets).")
    if port_text is None or port_text == "":
        return host, 443 if scheme == "https" else 80
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"the port of the URL given to {what} is not a number from 1 to 65535.")
    return host, int(port_text)


def _shown_query(query: str) -> str:
    """``query`` without its credential parameters (each kept one as it was written)."""
    kept = [part for part in query.split("&") if part and not is_credential_name(part.partition("=")[0])]
    return "&".join(kept)


def display_url(value: str) -> str:
    """What may be shown of ``value``: a URL loses its user-info (everything up to the last
    '@': a password may hold '/'), its fragment and its credential query parameters; any
    other string is itself. Never raises."""
    found = _ANY_SCHEME.match(value)
    if found is None:
        return value
    rest = value[found.end():].split("#", 1)[0]
    if "@" in rest:
        rest = rest.rpartition("@")[2]
    authority, tail = _split_authority(rest)
    host, colon, port = authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    if colon and not port.isdigit():  # not a port: maybe a password whose '@' is missing
        authority = host
    path, _, query = tail.partition("?")
    query = _shown_query(query)
    return f"{found.group(1)}://{authority}{path}" + (f"?{query}" if query else "")


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
