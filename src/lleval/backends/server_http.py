"""JSON over HTTP to an OpenAI-compatible server, bounded in time and stoppable.

`exchange` sends a set of requests together and waits for every answer. Each request
runs on a thread of its own (a daemon: one stuck in a network call never keeps the
process from exiting), at most `CONCURRENCY` in flight per server, over connections the
`Client` keeps alive between requests; connection errors, 429 and 5xx are retried with
backoff. The thread that waits is never blocked in the network itself: every
`POLL_SECONDS` it asks whether the run should stop (`lleval.stopping`; then every
request in flight is cut and `Interrupted` raised, so a Ctrl-C is honoured within a
second) and cuts any request past its deadline.

A request's deadline (``--request-timeout``, `DEFAULT_REQUEST_TIMEOUT` seconds) is a
total, from the moment it is sent to the last byte of its answer, retries and their
backoff included: a per-read timeout alone lets a server that trickles a byte every few
seconds hold a run forever. It is generous because a server batches the windows sent to
it, and a 2,048-token window queued behind others on a busy CPU server takes minutes.

The API key (`Endpoint.key`) is sent as a bearer token; `Endpoint.redact` takes it, and
any other credential, out of whatever a server says before lleval shows or stores it
(an error text may echo the request's ``Authorization`` header).
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import quote

from lleval.config import DEFAULT_REQUEST_TIMEOUT
from lleval.hub import ServerURL, parse_server_url
from lleval.stopping import POLL_SECONDS, Interrupted, stop_requested

CONCURRENCY = 8  # requests in flight per server
RETRIES = 4  # after the first try, on connection errors, 429 and 5xx: 0.5, 1, 2, 4 s apart
REDACTED = "[redacted]"
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+")
_CREDENTIAL_FIELD = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_-])*(?:api[_-]?key|key|token|secret|password|passwd|pwd|authorization))"
    r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"'&,;}\]]+)")


class ServerProblem(Exception):
    """A request failed or an answer did not pass a check; the message says which, and
    ``url`` names the server (a replica's, where it was one)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class Unsupported(ServerProblem):
    """The server does not do this request style (it refused the parameter, or ignored it)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a server is (its `ServerURL`), the base path its API lives under, and the key
    to send (never shown)."""

    address: ServerURL
    base: str  # "/v1" by default; "" for the server's root (vLLM's /tokenize and /version)
    key: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, key: str | None, what: str = "--model") -> Endpoint:
        """The endpoint of ``url`` (`lleval.hub.parse_server_url`: a malformed one is a
        `ConfigError`); the URL's password, if any, is the key, else ``key``."""
        address = parse_server_url(url, what)
        return cls(address, address.path or "/v1", address.password or key or None)

    @property
    def url(self) -> str:
        """The base URL without credentials, as reports and messages show it."""
        return self.address.shown(self.base)

    @property
    def root(self) -> Endpoint:
        """The server's root, beside the base path: where vLLM has ``/version`` and ``/tokenize``."""
        return Endpoint(self.address, "", self.key)

    def target(self, path: str) -> str:
        """The request target of ``path`` under the base path, with the URL's query."""
        return self.base + path + (f"?{self.address.query}" if self.address.query else "")

    def redact(self, text: str) -> str:
        """``text`` (anything a server said) with the key, the URL's credentials and any
        bearer token or ``key=...`` field taken out."""
        for secret in sorted({s for s in (self.key, *self.address.secrets) if s}, key=len, reverse=True):
            for form in {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}:
                text = text.replace(form, REDACTED)
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        return _CREDENTIAL_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


class _Flight:
    """The attempts of one `exchange` in progress, with their deadlines, so that the waiting
    thread can cut one past its deadline, or all of them when the run stops."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._open: dict[int, tuple[http.client.HTTPConnection, float]] = {}
        self._keys = itertools.count()

    def add(self, conn: http.client.HTTPConnection, deadline: float) -> int:
        with self._lock:
            key = next(self._keys)
            self._open[key] = (conn, deadline)
        if self.cancelled.is_set():
            _shut(conn)
        return key

    def remove(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)

    def expire(self, now: float) -> None:
        """Cut every attempt past its deadline (its thread then fails it as late)."""
        with self._lock:
            late = [conn for conn, deadline in self._open.values() if now >= deadline]
        for conn in late:
            _shut(conn)

    def cancel(self) -> None:
        """Cut every attempt, and start no more."""
        self.cancelled.set()
        with self._lock:
            every = [conn for conn, _ in self._open.values()]
        for conn in every:
            _shut(conn)


def _shut(conn: http.client.HTTPConnection) -> None:
    """End a connection's socket from another thread: a read blocked on it returns at once."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Client:
    """Requests to one server: connections kept alive between requests, at most ``slots``
    in flight, each within ``deadline`` seconds (retries included)."""

    def __init__(self, endpoint: Endpoint, deadline: float = DEFAULT_REQUEST_TIMEOUT, retries: int = RETRIES,
                 slots: int = CONCURRENCY) -> None:
        self.endpoint, self.deadline, self.retries = endpoint, deadline, retries
        self._slots = threading.BoundedSemaphore(slots)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The status and the decoded JSON answer of ``method`` on ``path`` (`exchange` of one)."""
        return exchange([(self, method, path, body)])[0]

    def send(self, method: str, path: str, body: Any, flight: _Flight) -> tuple[int, Any]:
        """One request, on the calling thread (a worker of `exchange`), retried with backoff
        while its deadline allows; `ServerProblem` when it cannot be answered."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.endpoint.key:
            headers["Authorization"] = f"Bearer {self.endpoint.key}"
        payload = None if body is None else json.dumps(body).encode()
        with self._slot(flight):
            deadline = time.monotonic() + self.deadline
            for attempt in itertools.count():
                try:
                    status, text = self._attempt(method, self.endpoint.target(path), payload, headers, flight, deadline)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    self._check_time(flight, deadline)
                    if attempt >= self.retries:
                        raise ServerProblem(f"cannot reach {self.endpoint.url}: {exc.__class__.__name__}: {exc}",
                                            self.endpoint.url) from None
                else:
                    if status != 429 and status < 500 or attempt >= self.retries:
                        return status, _decode(text)
                flight.cancelled.wait(min(0.5 * 2**attempt, max(0.0, deadline - time.monotonic())))
                self._check_time(flight, deadline)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _check_time(self, flight: _Flight, deadline: float) -> None:
        """Raise when the exchange was cancelled or the request's deadline has passed."""
        if flight.cancelled.is_set():
            raise ServerProblem(f"the request to {self.endpoint.url} was cut short", self.endpoint.url)
        if time.monotonic() >= deadline:
            raise ServerProblem(f"{self.endpoint.url} gave no complete answer within {self.deadline:g} s (--request-"
                                "timeout): is the server stuck or overloaded? Check it, or raise --request-timeout",
                                self.endpoint.url)

    def _attempt(self, method: str, target: str, payload: bytes | None, headers: dict[str, str], flight: _Flight,
                 deadline: float) -> tuple[int, bytes]:
        """One try, on a kept-alive connection if there is one (once more on a new one when the
        server had closed it meanwhile, which is not a failure), registered with ``flight`` so
        the waiting thread can cut it; raises what the connection raises."""
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            try:
                return self._on(idle, method, target, payload, headers, flight, deadline)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if flight.cancelled.is_set():
                    raise
        kind = http.client.HTTPSConnection if self.endpoint.address.scheme == "https" else http.client.HTTPConnection
        conn = kind(self.endpoint.address.host, self.endpoint.address.port, timeout=self.deadline)
        return self._on(conn, method, target, payload, headers, flight, deadline)

    def _on(self, conn: http.client.HTTPConnection, method: str, target: str, payload: bytes | None,
            headers: dict[str, str], flight: _Flight, deadline: float) -> tuple[int, bytes]:
        conn.timeout = max(deadline - time.monotonic(), 1e-3)  # also bounds the connect
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        key = flight.add(conn, deadline)
        try:
            conn.request(method, target, payload, headers)
            response = conn.getresponse()
            text = response.read()
        except BaseException:
            conn.close()
            raise
        finally:
            flight.remove(key)
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return response.status, text

    def _slot(self, flight: _Flight) -> "_Slot":
        return _Slot(self._slots, flight, self.endpoint.url)


class _Slot:
    """One of a server's `CONCURRENCY` places in flight, waited for until the exchange is cancelled."""

    def __init__(self, slots: threading.BoundedSemaphore, flight: _Flight, url: str) -> None:
        self.slots, self.flight, self.url = slots, flight, url

    def __enter__(self) -> None:
        while not self.slots.acquire(timeout=POLL_SECONDS):
            if self.flight.cancelled.is_set():
                raise ServerProblem(f"the request to {self.url} was cut short", self.url)

    def __exit__(self, *exc: object) -> None:
        self.slots.release()


def exchange(requests: Sequence[tuple[Client, str, str, Any]]) -> list[tuple[int, Any]]:
    """Send every ``(client, method, path, body)`` together and return each one's status and
    decoded answer, in order. The first request that fails (`ServerProblem`) cuts the others
    and is raised; so is `Interrupted` when the run is asked to stop while they are in flight."""
    flight = _Flight()
    futures = [_in_thread(client.send, method, path, body, flight) for client, method, path, body in requests]
    try:
        _wait(futures, flight, sorted({client.endpoint.url for client, *_ in requests}))
    except BaseException:
        flight.cancel()
        raise
    return [future.result() for future in futures]


def _wait(futures: list[Future[tuple[int, Any]]], flight: _Flight, urls: list[str]) -> None:
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION)
        for future in done:
            failure = future.exception()
            if failure is not None:
                raise failure
        if pending and stop_requested():  # asked only while a wait lasts
            raise Interrupted(f"stopped while waiting for {' and '.join(urls)}")
        flight.expire(time.monotonic())


def _in_thread(fn: Callable[..., tuple[int, Any]], *args: Any) -> Future[tuple[int, Any]]:
    """``fn(*args)`` on a daemon thread of its own, its outcome in the returned future."""
    future: Future[tuple[int, Any]] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the waiting thread, which raises it
            future.set_exception(exc)

    threading.Thread(target=run, name="lleval-request", daemon=True).start()
    return future


def _decode(text: bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"error": {"message": text[:200].decode("utf-8", "replace")}}


def error_text(answer: Any) -> str:
    """The first line of the error an answer carries (at most 300 characters), not yet redacted."""
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else error or answer
    return str(message).strip().splitlines()[0][:300] if str(message).strip() else "(no message)"
