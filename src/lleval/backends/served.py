"""The served backend: a model behind an OpenAI-compatible server (vLLM; SGLang and TGI speak
the same ``/v1/completions``), scored without a copy of it in this process.

Each window is one request whose prompt is the window's token ids (never text, so the
tokens are exactly the ones a local run scores) and which asks for the log-prob of every
prompt token: ``prompt_logprobs`` where the server accepts it (vLLM), else ``echo`` with
``logprobs``. lleval keeps the log-probs of the window's target positions, so every
protocol, ``--stride``, ``--concat`` and checkpoints work as with a local model.

What comes back is checked before it is trusted (`read_logprobs`): one log-prob per
prompt position after the first, each for the token that was sent, finite and at most 0.
A probe before scoring also refuses a server whose answers are uniform over the
vocabulary (weights that did not load: every token would cost ln V). A server gives only
the true tokens' log-probs, so `kld` and ``--token-stats`` refuse it
(`lleval.backends.base.LoadedModel.require`).

Requests go out concurrently (`CONCURRENCY` in flight per server; the server batches them
itself; ``--replicas`` adds servers of the same model, which take the windows in turn)
over the standard library's ``http.client``, one kept-alive connection per worker
thread: requests are small JSON posts to one host, which needs no further dependency.
Connection errors, 429 and 5xx are retried with backoff. The API key (from the variable
``--api-key-env`` names) is sent as a bearer token and is never part of a message, a
report or a checkpoint.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from lleval.backends.base import LoadedModel, ModelInfo, ModelSpec
from lleval.config import without_credentials
from lleval.errors import ConfigError, ModelLoadError, ScoringError
from lleval.hub import is_url

CONCURRENCY = 8  # requests in flight
TIMEOUT_SECONDS = 600.0  # per request: a 2,048-token window on a busy CPU server takes a while
RETRIES = 4  # after the first try, on connection errors, 429 and 5xx: 0.5, 1, 2, 4 s apart
PROBE_TEXT = "The river begins as a spring in a boggy hollow high on the moor, and runs to the sea."
UNIFORM_TOLERANCE = 1e-3  # nats: log-probs this close to -ln V everywhere mean a uniform model


class ServerProblem(Exception):
    """A request failed or an answer did not pass a check; the message says which."""


class Unsupported(ServerProblem):
    """The server does not do this request style (it refused the parameter, or ignored it)."""


@dataclass(frozen=True)
class Endpoint:
    """Where the server is, and how to authenticate (the key is never shown)."""

    scheme: str
    host: str
    port: int
    path: str  # the base path, e.g. "/v1"
    key: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, key_env: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--model {display_url(url)} is not an http(s) URL of a server.")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = parts.password or os.environ.get(key_env) or None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/") or "/v1", key)

    @property
    def url(self) -> str:
        """The base URL without credentials, as reports and messages show it."""
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    @property
    def root(self) -> Endpoint:
        """The server's root, beside the base path: where vLLM has ``/version`` and ``/tokenize``."""
        return Endpoint(self.scheme, self.host, self.port, "", self.key)


def display_url(url: str) -> str:
    """``url`` with any user name and password taken out (`lleval.config.without_credentials`)."""
    return str(without_credentials(url))


class Client:
    """JSON over HTTP to one server: a kept-alive connection per thread, retries with backoff."""

    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT_SECONDS, retries: int = RETRIES) -> None:
        self.endpoint, self.timeout, self.retries = endpoint, timeout, retries
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self.endpoint.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = kind(self.endpoint.host, self.endpoint.port, timeout=self.timeout)
        return conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The status and the decoded JSON answer of ``method`` on ``path`` under the base path."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.endpoint.key:
            headers["Authorization"] = f"Bearer {self.endpoint.key}"
        payload = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                conn = self._connection()
                conn.request(method, self.endpoint.path + path, payload, headers)
                response = conn.getresponse()
                status, text = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._local.conn = None
                if attempt == self.retries:
                    raise ServerProblem(f"cannot reach {self.endpoint.url}: {exc.__class__.__name__}: {exc}") from None
            else:
                if status != 429 and status < 500 or attempt == self.retries:
                    return status, _decode(text)
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")  # the loop returns or raises


def _decode(text: bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"error": {"message": text[:200].decode("utf-8", "replace")}}


def _error_text(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else error or answer
    return str(message).strip().splitlines()[0][:300] if str(message).strip() else "(no message)"


def read_logprobs(answer: Any, prompt: Sequence[int], style: str) -> list[float]:
    """The log-prob of each prompt token after the first, as the server returned them for
    ``prompt``, after checking every one: it is there, for the token that was sent, finite
    and at most 0. Raises `ServerProblem` naming the check that failed."""
    try:
        choice = answer["choices"][0]
        if style == "prompt_logprobs":
            entries = choice["prompt_logprobs"]
            if entries is None:
                raise Unsupported("the answer has no prompt_logprobs (the server ignored the request for them)")
            values = [_entry_logprob(entry, token, i) for i, (entry, token) in enumerate(zip(entries, prompt)) if i]
        else:
            logprobs = choice["logprobs"]
            entries, given = logprobs["token_logprobs"], logprobs.get("tokens")
            values = [float(v) if v is not None else math.nan for v in entries[1 : len(prompt)]]
            if given is not None and len(given) < len(prompt):
                raise ServerProblem(f"the answer covers {len(given)} tokens, not the {len(prompt)} of the prompt "
                                    "(the server ignored echo and scored only what it generated)")
    except (KeyError, IndexError, TypeError) as exc:
        raise ServerProblem(f"the answer is not a completions answer with log-probs ({exc!r} missing)") from None
    if len(values) != len(prompt) - 1:
        raise ServerProblem(f"the answer has {len(values)} prompt log-probs for a prompt of {len(prompt)} tokens "
                            f"(expected {len(prompt) - 1})")
    for i, value in enumerate(values, start=1):
        if not math.isfinite(value) or value > 1e-6:
            raise ServerProblem(f"the log-prob of prompt token {i} is {value}: not a log-probability")
    return values


def reference_rows(answer: Any, prompt: Sequence[int], values: list[float], k: int) -> np.ndarray:
    """``(len(prompt) - 1, 2 + 2k)`` float64, `ReferenceScorer`'s layout: per prompt position after
    the first, the token's log-prob, the ``k`` most likely ids (most likely first), their log-probs,
    and the log of the mass left (``log1p(-sum)``: a server gives no more digits; -inf when the top
    ``k`` hold all of it to rounding). vLLM's entries are the top ``k`` by rank, plus the token sent
    when it ranks lower; ``ServerProblem`` when fewer than ``k`` come back."""
    entries = answer["choices"][0]["prompt_logprobs"]
    rows = np.empty((len(prompt) - 1, 2 + 2 * k), dtype=np.float64)
    for i in range(1, len(prompt)):
        entry = entries[i]
        ranked = sorted(((float(v["logprob"] if isinstance(v, dict) else v), int(t)) for t, v in entry.items()),
                        key=lambda pair: (-pair[0], pair[1]))[:k]
        if len(ranked) < k:
            raise ServerProblem(f"prompt position {i} has {len(ranked)} log-probs, not the {k} asked for")
        lps = np.array([lp for lp, _ in ranked])
        mass = float(np.exp(lps).sum())
        rows[i - 1, 0] = values[i - 1]
        rows[i - 1, 1 : 1 + k] = [t for _, t in ranked]
        rows[i - 1, 1 + k : 1 + 2 * k] = lps
        rows[i - 1, 1 + 2 * k] = math.log1p(-mass) if mass < 1.0 else -math.inf
    return rows


def _entry_logprob(entry: Any, token: int, position: int) -> float:
    """One ``prompt_logprobs`` entry: a map from token id to its log-prob (vLLM also gives
    ranks); it must hold the token sent at that position."""
    if not isinstance(entry, dict) or str(token) not in entry:
        got = sorted(entry)[:3] if isinstance(entry, dict) else entry
        raise ServerProblem(f"prompt position {position} has no log-prob for the token sent there ({token}; the "
                            f"answer has {got}): the answer is not aligned with the prompt")
    value = entry[str(token)]
    return float(value["logprob"] if isinstance(value, dict) else value)


@dataclass
class ServedScorer:
    """A `TokenScorer` that asks the server (or its replicas, in turn): one request per window
    of the batch, in flight together; returns the float32 log-prob of each label at the
    scored positions."""

    client: Client
    model: str
    style: str
    max_prompt: int  # longest prompt the server takes (its maximum length, less the one token generated)
    concurrency: int = CONCURRENCY
    replicas: tuple[Client, ...] = ()  # further servers of the same model
    top_k: int = 0  # > 0: also each position's top-K (--save-reference), `reference_rows`' layout

    @property
    def k(self) -> int | None:
        """The reference's top K (as `ReferenceScorer.k`), None when not saving one."""
        return self.top_k or None

    @property
    def columns(self) -> tuple[str, ...]:
        """The further columns (``--save-reference``'s, with ``top_k``)."""
        if not self.top_k:
            return ()
        from lleval.engine.reference import reference_columns

        return reference_columns(self.top_k)

    def window_logprobs(self, prompt: list[int], client: Client | None = None) -> Any:
        """The checked log-probs of ``prompt``'s tokens after the first (asked of ``client``,
        by default the first server); with ``top_k``, each one's `reference_rows`."""
        client = client or self.client
        if len(prompt) > self.max_prompt:
            raise ServerProblem(f"a window of {len(prompt)} tokens is longer than the server takes "
                                f"({self.max_prompt}): lower --max-length")
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
        body.update({"prompt_logprobs": self.top_k} if self.style == "prompt_logprobs" else
                    {"echo": True, "logprobs": 0})
        status, answer = client.request("POST", "/completions", body)
        if status == 400 and self.style == "prompt_logprobs" and "prompt_logprobs" in _error_text(answer):
            raise Unsupported(f"the server refuses prompt_logprobs: {_error_text(answer)}")
        if status != 200:
            raise ServerProblem(f"the server answered {status}: {_error_text(answer)}")
        values = read_logprobs(answer, prompt, self.style)
        return reference_rows(answer, prompt, values, self.top_k) if self.top_k else values

    def with_top_k(self, k: int) -> "ServedScorer":
        """This scorer asking for each position's ``k`` most likely tokens too (``--save-reference``),
        after one probe request: a server that gives fewer (vLLM's ``--max-logprobs``, 20 by default)
        or has no ``prompt_logprobs`` is a `ConfigError` saying what to change."""
        if self.style != "prompt_logprobs":
            raise ConfigError(f"--save-reference from {self.client.endpoint.url} needs prompt_logprobs (vLLM's), "
                              "which this server does not give.")
        scorer = dataclasses.replace(self, top_k=k)
        try:
            scorer.window_logprobs([1, 2, 3])
        except ServerProblem as exc:
            raise ConfigError(f"--save-reference --reference-top-k {k} from {self.client.endpoint.url}: {exc}. "
                              f"Lower --reference-top-k, or start vLLM with --max-logprobs {k}.") from None
        return scorer

    def __call__(self, input_ids: Any, attention_mask: Any, labels: Any, score_mask: Any) -> Any:
        import torch

        lengths = attention_mask.sum(dim=1).tolist()
        prompts = [input_ids[b, :n].tolist() + [int(labels[b, n - 1])] for b, n in enumerate(lengths)]
        clients = (self.client, *self.replicas)
        chosen = [clients[i % len(clients)] for i in range(len(prompts))]
        with ThreadPoolExecutor(max_workers=min(self.concurrency * len(clients), len(prompts))) as pool:
            try:
                answers = list(pool.map(self.window_logprobs, prompts, chosen))
            except ServerProblem as exc:
                raise ScoringError(f"served model {self.client.endpoint.url}: {exc}.") from None
        width = labels.shape[1]
        if self.top_k:  # (n, 2 + 2K) rows per window, row j for label position j: those scored, in order
            mask = score_mask.cpu().numpy()
            return torch.from_numpy(np.concatenate([rows[mask[b, : len(rows)]] for b, rows in enumerate(answers)])
                                    ).float()
        rows = [torch.tensor(values, dtype=torch.float32) for values in answers]
        full = torch.stack([torch.nn.functional.pad(row, (0, width - len(row))) for row in rows])
        return full[score_mask]


@dataclass
class OpenedServer:
    """A served model found: the server answered, its model and maximum length are known,
    and the tokenizer is loaded here; `load` probes it before any scoring."""

    spec: ModelSpec
    endpoint: Endpoint
    client: Client
    model: str
    max_model_len: int | None
    tokenizer: Any
    version: str | None
    replicas: tuple[Client, ...] = ()  # further servers of the same model, checked alike

    @property
    def name(self) -> str:
        return f"{self.model} at {self.endpoint.url}"

    @property
    def max_positions(self) -> int | None:
        """Inputs per window: the server's maximum length less the target sent with them and
        the one token it must generate."""
        return None if self.max_model_len is None else self.max_model_len - 2

    def load(self) -> LoadedModel:
        started = time.perf_counter()
        self._check_tokenizer()
        style = self._probe()
        for replica in self.replicas:  # each answers as the first does, or the run is refused
            if self._probe(replica) != style:
                raise ModelLoadError(f"replica {replica.endpoint.url} answers in another request style than "
                                     f"{self.endpoint.url}: serve the same model with the same server.")
        limit = (self.max_model_len or 1 << 30) - 1
        scorer = ServedScorer(self.client, self.model, style, limit, replicas=self.replicas)
        server: dict[str, Any] = {"url": self.endpoint.url, "model": self.model, "version": self.version,
                                  "request": style}
        if self.replicas:
            server["replicas"] = [replica.endpoint.url for replica in self.replicas]
        info = ModelInfo(name=self.name, source="server", revision=None, sha256=None, dtype="served",
                         device="server", parameters=0, max_positions=self.max_positions, server=server)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return LoadedModel(scorer, self.tokenizer, info, int(pad or 0), load_seconds=time.perf_counter() - started)

    def _check_tokenizer(self) -> None:
        """Where the server tokenizes (vLLM's ``/tokenize``), its tokens of a probe text must
        be lleval's: else the same ids would mean other text to the served model."""
        bare = Client(self.endpoint.root, 30.0, 0)
        try:
            status, answer = bare.request("POST", "/tokenize", {"model": self.model, "prompt": PROBE_TEXT})
        except ServerProblem:
            return
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
            return  # the server does not tokenize: nothing to compare
        ours = list(self.tokenizer(PROBE_TEXT)["input_ids"])
        if answer["tokens"] != ours:
            raise ModelLoadError(
                f"the tokenizer given for {self.name} is not the server's: a probe text of {len(PROBE_TEXT)} "
                f"characters is {len(ours)} tokens here and {len(answer['tokens'])} there (or other ids). Pass "
                "--tokenizer with the served model's own tokenizer.")

    def _probe(self, client: Client | None = None) -> str:
        """The request style the server (or a replica) does (``prompt_logprobs``, else ``echo``), checked on a
        probe text; refuse a server whose answers fail a check or are uniform over the
        vocabulary (a wrong answer is refused, not retried in the other style)."""
        prompt = list(self.tokenizer(PROBE_TEXT)["input_ids"])[:64]
        problems = []
        for style in ("prompt_logprobs", "echo"):
            try:
                values = ServedScorer(self.client, self.model, style, 1 << 30).window_logprobs(prompt, client)
            except Unsupported as exc:
                problems.append(f"{style}: {exc}")
                continue
            except ServerProblem as exc:
                raise ModelLoadError(f"served model {self.name} fails lleval's check of its answers ({style}): "
                                     f"{exc}.") from None
            uniform = -math.log(len(self.tokenizer))
            if all(abs(v - uniform) < UNIFORM_TOLERANCE for v in values):
                raise ModelLoadError(
                    f"served model {self.name} gives every token log-prob {uniform:.4f} = -ln(vocabulary size): "
                    "a uniform distribution, as when its weights did not load (a tied-embedding folder without "
                    "embed_tokens). Serve the folder lleval's model cache writes, or check the server's model.")
            return style
        raise ModelLoadError(f"served model {self.name} does not return prompt log-probs lleval can trust: "
                             + "; ".join(problems) + ".")


class ServedBackend:
    """Models behind an OpenAI-compatible server, named by a URL."""

    name = "server"

    def claims(self, spec: ModelSpec) -> bool:
        return spec.name is not None and is_url(spec.name)

    def open(self, spec: ModelSpec) -> OpenedServer:
        endpoint = Endpoint.parse(str(spec.name), spec.api_key_env)
        served = _served_model(endpoint, spec.served_model, spec.api_key_env)
        replicas = []
        for url in spec.replicas:
            other = Endpoint.parse(url, spec.api_key_env)
            twin = _served_model(other, str(served["id"]), spec.api_key_env)
            if twin.get("max_model_len") != served.get("max_model_len"):
                raise ModelLoadError(f"replica {other.url} takes {twin.get('max_model_len')} tokens and "
                                     f"{endpoint.url} {served.get('max_model_len')}: replicas must serve the same "
                                     "model alike.")
            replicas.append(Client(other))
        tokenizer = _tokenizer(spec, served)
        return OpenedServer(spec, endpoint, Client(endpoint), str(served["id"]), served.get("max_model_len"),
                            tokenizer, _version(endpoint), tuple(replicas))


def _served_model(endpoint: Endpoint, wanted: str | None, key_env: str) -> dict[str, Any]:
    """The model a server serves (``wanted``, else its only one), from its ``/models``."""
    client = Client(endpoint, timeout=30.0, retries=1)
    try:
        status, answer = client.request("GET", "/models")
    except ServerProblem as exc:
        raise ModelLoadError(f"{exc}: is the server running? Start it, or check --model.") from None
    if status in (401, 403):
        raise ModelLoadError(f"the server at {endpoint.url} refused the API key ({status}): set "
                             f"{key_env} to a key it accepts (or --api-key-env to the variable).")
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        raise ModelLoadError(f"{endpoint.url}/models answered {status}, not a list of models: is this the "
                             "base URL of an OpenAI-compatible server (ending in /v1)?")
    return _pick_model(answer["data"], wanted, endpoint.url)


def _pick_model(models: list[Any], wanted: str | None, url: str) -> dict[str, Any]:
    names = [str(m.get("id")) for m in models if isinstance(m, dict)]
    if wanted is not None:
        for model in models:
            if isinstance(model, dict) and model.get("id") == wanted:
                return model
        raise ModelLoadError(f"the server at {url} does not serve {wanted!r}; it serves {', '.join(names) or 'none'}.")
    if len(names) != 1:
        raise ModelLoadError(f"the server at {url} serves {len(names)} models ({', '.join(names) or 'none'}): "
                             "pick one with --served-model.")
    return dict(models[0])


def _tokenizer(spec: ModelSpec, served: dict[str, Any]) -> Any:
    """``--tokenizer``, else the served model's folder when it is on this machine."""
    from lleval.backends.hf import load_tokenizer

    if spec.tokenizer is not None:
        return load_tokenizer(spec.tokenizer)
    for candidate in (served.get("root"), served.get("id")):
        if isinstance(candidate, str) and os.path.isdir(candidate):
            return load_tokenizer(candidate)
    raise ConfigError(f"the tokenizer of served model {served.get('id')} is not on this machine: pass --tokenizer "
                      "with its hub id, folder or .gguf file.")


def _version(endpoint: Endpoint) -> str | None:
    """The server's version where it says (vLLM's ``/version``, beside the base path)."""
    bare = Client(endpoint.root, 10.0, 0)
    try:
        status, answer = bare.request("GET", "/version")
    except ServerProblem:
        return None
    return str(answer.get("version")) if status == 200 and isinstance(answer, dict) and "version" in answer else None


BACKEND = ServedBackend()
