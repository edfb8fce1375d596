"""The served backend: a model behind an OpenAI-compatible server (vLLM; SGLang and TGI speak
the same ``/v1/completions``), scored without a copy of it in this process.

Each window is one request whose prompt is the window's token ids (never text, so the
tokens are exactly the ones a local run scores) and which asks for the log-prob of every
prompt token: ``prompt_logprobs`` where the server accepts it (vLLM), else ``echo`` with
``logprobs``. lleval keeps the log-probs of the window's target positions, so every
protocol, ``--stride``, ``--concat`` and checkpoints work as with a local model.

What comes back is checked before it is trusted, every answer (`ServedScorer.ask`): one
log-prob per prompt position after the first, each a number, finite and at most 0, for
the token that was sent; and not the same value at every position of a window at or
below -ln(tokenizer size) (`uniform_problem`: a distribution uniform over the vocabulary,
padded or not, as when the weights did not load; it is watched in every answer, since a
server restarted mid-run can turn so). Before scoring, each server (the main one and
every ``--replicas``) must tokenize a probe text as lleval does (where it tokenizes), and
pass a probe (`Probe`) that a server whose values sit one position off cannot pass
(`check_alignment`); a replica's probe log-probs must also equal the main server's
(`REPLICA_TOLERANCE`), or it would blend another model into the run. A server gives only
the true tokens' log-probs, so `kld` and ``--token-stats`` refuse it
(`lleval.backends.base.LoadedModel.require`).

Requests, their deadline (``--request-timeout``), retries, Ctrl-C while waiting and the
API key are `lleval.backends.server_http`'s; nothing a server says is shown before its
key is taken out (`Endpoint.redact`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lleval.backends.base import LoadedModel, ModelInfo, ModelSpec
from lleval.backends.server_http import (CONCURRENCY, Client, Endpoint, ServerProblem, Unsupported, error_text,
                                         exchange)
from lleval.config import DEFAULT_API_KEY_ENV
from lleval.errors import ConfigError, ModelLoadError, ScoringError
from lleval.hub import display_url, is_url

__all__ = ["BACKEND", "CONCURRENCY", "Client", "Endpoint", "ServedScorer", "ServerProblem", "display_url"]

PROBE_TEXT = "The river begins as a spring in a boggy hollow high on the moor, and runs to the sea."
PROBE_TOKENS = 64  # the probe's prompt: the text's first tokens
UNIFORM_TOLERANCE = 1e-3  # nats: log-probs this close to each other, at or below -ln V, mean a uniform model
UNIFORM_MIN_TOKENS = 4  # an answer is judged uniform only over at least this many log-probs
#: nats: how far the log-prob of a token may move when only a token after it changes (or is
#: dropped), and how far the replaced token's own must move at least. A causal model's value at a
#: position depends on the tokens up to it alone: a server that is right moves it by nothing
#: (the same prefix, the same computation) or by the rounding of another batch shape, which ten
#: times the largest change seen at positions no shift can touch allows for (vLLM in float32
#: passes: tests/test_vllm.py). One position off, the value is another token's: apart by
#: nats, not thousandths.
ALIGNMENT_TOLERANCE = 1e-3
REPLACEMENTS = 3  # tokens tried in place of the probe's last one
#: nats per token, the mean absolute difference allowed between a replica's probe log-probs and
#: the main server's. The same weights in the same precision agree to rounding (vLLM against
#: itself passes: tests/test_vllm.py); SmolLM2-135M in bfloat16 against float32 is 0.033 apart
#: (measured locally on an Intel Xeon Sapphire Rapids), and other weights tenths of a nat: a
#: replica that far off would blend two models.
REPLICA_TOLERANCE = 0.02
MIN_MODEL_LEN = 16  # a server must take this many tokens per request: windows of 14, and the probe


def read_logprobs(answer: Any, prompt: Sequence[int], style: str) -> list[float]:
    """The log-prob of each prompt token after the first, as the server returned them for
    ``prompt``, after checking every one: it is there, for the token that was sent, a finite
    number and at most 0. Raises `ServerProblem` naming the check that failed."""
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
            values = [_number(v, i) if v is not None else math.nan for i, v in enumerate(entries[1: len(prompt)], 1)]
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


def _number(value: Any, position: int) -> float:
    """A log-prob as the server gave it: a JSON number (not a string, not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServerProblem(f"the log-prob of prompt token {position} is {str(value)[:40]!r}: not a number")
    return float(value)


def _entry_logprob(entry: Any, token: int, position: int) -> float:
    """One ``prompt_logprobs`` entry: a map from token id to its log-prob (vLLM also gives
    ranks); it must hold the token sent at that position."""
    if not isinstance(entry, dict) or str(token) not in entry:
        got = sorted(entry)[:3] if isinstance(entry, dict) else entry
        raise ServerProblem(f"prompt position {position} has no log-prob for the token sent there ({token}; the "
                            f"answer has {str(got)[:80]}): the answer is not aligned with the prompt")
    value = entry[str(token)]
    return _number(value.get("logprob") if isinstance(value, dict) else value, position)


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
        try:
            pairs = [(_number(v.get("logprob") if isinstance(v, dict) else v, i), int(t)) for t, v in entry.items()]
        except ValueError:
            raise ServerProblem(f"prompt position {i} names a token that is not an id") from None
        ranked = sorted(pairs, key=lambda pair: (-pair[0], pair[1]))[:k]
        if len(ranked) < k:
            raise ServerProblem(f"prompt position {i} has {len(ranked)} log-probs, not the {k} asked for")
        lps = np.array([lp for lp, _ in ranked])
        if not np.all(np.isfinite(lps)) or lps.max() > 1e-6:
            raise ServerProblem(f"prompt position {i} has a top log-prob that is not a log-probability")
        mass = float(np.exp(lps).sum())
        rows[i - 1, 0] = values[i - 1]
        rows[i - 1, 1 : 1 + k] = [t for _, t in ranked]
        rows[i - 1, 1 + k : 1 + 2 * k] = lps
        rows[i - 1, 1 + 2 * k] = math.log1p(-mass) if mass < 1.0 else -math.inf
    return rows


def uniform_problem(values: Sequence[float], vocab: int) -> str | None:
    """What is wrong with an answer that gives every token one log-prob at or below
    -ln(``vocab``), to `UNIFORM_TOLERANCE` (a distribution uniform over the tokenizer's
    vocabulary, or over more rows: an embedding padded past the tokenizer, as Qwen2's and
    Phi-2's are), or None. A model that works gives tokens of one text different log-probs."""
    if len(values) < UNIFORM_MIN_TOKENS or max(values) - min(values) > UNIFORM_TOLERANCE:
        return None
    mean = sum(values) / len(values)
    if mean > -math.log(vocab) + UNIFORM_TOLERANCE:
        return None
    rows = round(math.exp(-mean))
    over = "the tokenizer's vocabulary" if rows == vocab else f"{rows} rows (the tokenizer has {vocab} tokens)"
    return (f"every one of {len(values)} tokens gets log-prob {mean:.4f} = -ln({rows}): a uniform distribution over "
            f"{over}, as when the weights did not load (a tied-embedding folder without embed_tokens, or a server "
            "restarted without them). Serve the folder lleval's model cache writes, or check the server's model")


@dataclass
class ServedScorer:
    """A `TokenScorer` that asks the server (or its replicas, in turn): one request per window
    of the batch, in flight together; returns the float32 log-prob of each label at the
    scored positions."""

    client: Client
    model: str
    style: str
    max_prompt: int  # longest prompt the server takes (its maximum length, less the one token generated)
    vocab: int  # the tokenizer's size: an answer uniform over this many tokens or more is refused
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

    def ask(self, prompts: Sequence[list[int]], clients: Sequence[Client]) -> list[Any]:
        """The checked log-probs of each prompt's tokens after the first, asked of its client,
        all in flight together; with ``top_k``, each one's `reference_rows`. A `ServerProblem`
        (its ``url`` the client's) when a request or a check fails."""
        for prompt, client in zip(prompts, clients):
            if len(prompt) > self.max_prompt:
                raise ServerProblem(f"a window of {len(prompt)} tokens is longer than the server takes "
                                    f"({self.max_prompt}): lower --max-length", client.endpoint.url)
        answers = exchange([(client, "POST", "/completions", self._body(prompt))
                            for prompt, client in zip(prompts, clients)])
        return [self._read(status, answer, prompt, client)
                for (status, answer), prompt, client in zip(answers, prompts, clients)]

    def _body(self, prompt: list[int]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
        body.update({"prompt_logprobs": self.top_k} if self.style == "prompt_logprobs" else
                    {"echo": True, "logprobs": 0})
        return body

    def _read(self, status: int, answer: Any, prompt: list[int], client: Client) -> Any:
        """One answer, checked (`read_logprobs`, `uniform_problem`); a problem is raised with the
        client's URL and without anything secret the server may have echoed."""
        url = client.endpoint.url
        try:
            if status == 400 and self.style == "prompt_logprobs" and "prompt_logprobs" in error_text(answer):
                raise Unsupported(f"the server refuses prompt_logprobs: {error_text(answer)}")
            if status != 200:
                raise ServerProblem(f"the server answered {status}: {error_text(answer)}")
            values = read_logprobs(answer, prompt, self.style)
            if problem := uniform_problem(values, self.vocab):
                raise ServerProblem(problem)
            return reference_rows(answer, prompt, values, self.top_k) if self.top_k else values
        except ServerProblem as exc:
            raise type(exc)(client.endpoint.redact(str(exc)), url) from None

    def with_top_k(self, k: int) -> "ServedScorer":
        """This scorer asking for each position's ``k`` most likely tokens too (``--save-reference``),
        after one probe request: a server that gives fewer (vLLM's ``--max-logprobs``, 20 by default)
        or has no ``prompt_logprobs`` is a `ConfigError` saying what to change."""
        if self.style != "prompt_logprobs":
            raise ConfigError(f"--save-reference from {self.client.endpoint.url} needs prompt_logprobs (vLLM's), "
                              "which this server does not give.")
        scorer = dataclasses.replace(self, top_k=k)
        for client in (self.client, *self.replicas):
            try:
                scorer.ask([[1, 2, 3]], [client])
            except ServerProblem as exc:
                raise ConfigError(f"--save-reference --reference-top-k {k} from {exc.url}: {exc}. Lower "
                                  f"--reference-top-k, or start vLLM with --max-logprobs {k}.") from None
        return scorer

    def __call__(self, input_ids: Any, attention_mask: Any, labels: Any, score_mask: Any) -> Any:
        import torch

        lengths = attention_mask.sum(dim=1).tolist()
        prompts = [input_ids[b, :n].tolist() + [int(labels[b, n - 1])] for b, n in enumerate(lengths)]
        clients = (self.client, *self.replicas)
        try:
            answers = self.ask(prompts, [clients[i % len(clients)] for i in range(len(prompts))])
        except ServerProblem as exc:
            model = self.client.endpoint.redact(self.model)
            raise ScoringError(f"served model {model} at {self.where(exc)}: {exc}.") from None
        width = labels.shape[1]
        if self.top_k:  # (n, 2 + 2K) rows per window, row j for label position j: those scored, in order
            mask = score_mask.cpu().numpy()
            return torch.from_numpy(np.concatenate([rows[mask[b, : len(rows)]] for b, rows in enumerate(answers)])
                                    ).float()
        rows = [torch.tensor(values, dtype=torch.float32) for values in answers]
        full = torch.stack([torch.nn.functional.pad(row, (0, width - len(row))) for row in rows])
        return full[score_mask]

    def where(self, exc: ServerProblem) -> str:
        """The server a problem came from: the main one's URL, or a replica named as one."""
        main = self.client.endpoint.url
        return main if exc.url in (None, main) else f"{exc.url} (a replica of {main})"


def check_alignment(scorer: ServedScorer, client: Client, prompt: list[int], values: list[float]) -> None:
    """Refuse (`ServerProblem`) a server whose values are not each sent token's own log-prob
    given the tokens before it, in place; ``values`` is its answer for ``prompt``.

    With ``values[k]`` the log-prob of ``prompt[k + 1]`` and n tokens, the probe asks again
    with the last token replaced (by up to `REPLACEMENTS` other tokens of the prompt) and
    with it dropped. The value of the token before the last (``values[n - 3]``) must not
    move in either (one position early, it would be the last token's), and the last
    token's own (``values[n - 2]``) must move when it is replaced (one position late, it
    would be the token before's). Tolerance: `ALIGNMENT_TOLERANCE`, or ten times the most
    that positions no shift reaches (``values[: n - 3]``) moved between the requests."""
    n = len(prompt)
    others = [t for t in dict.fromkeys(prompt[1:-1]) if t != prompt[-1]][:REPLACEMENTS]
    if n < 6 or not others:
        raise ServerProblem(f"the probe text is {n} tokens of this tokenizer, too few to check the server's answers")
    variants = [prompt[:-1] + [t] for t in others] + [prompt[:-1]]
    answers = scorer.ask(variants, [client] * len(variants))
    noise = max([abs(a - b) for answer in answers for a, b in zip(answer[: n - 3], values[: n - 3])] or [0.0])
    tolerance = max(ALIGNMENT_TOLERANCE, 10 * noise)
    moved = max(abs(answer[n - 3] - values[n - 3]) for answer in answers)
    if moved > tolerance:
        raise ServerProblem(
            f"the log-prob it gives probe token {n - 2} moves by {moved:.3g} nats when only the token after it is "
            "replaced or dropped: each value is the next token's (one position early), not the token's own given "
            "the tokens before it")
    own = max(abs(answer[n - 2] - values[n - 2]) for answer in answers[:-1])
    if own <= tolerance:
        raise ServerProblem(
            f"the log-prob it gives the probe's last token stays within {own:.3g} nats when that token is replaced "
            f"by {len(others)} others: each value is another position's (one position late), not the token's own")


@dataclass(frozen=True)
class Probe:
    """How a server answered the probe text: its request style and the log-probs of the
    probe's tokens after the first (a replica's must equal the main server's)."""

    style: str
    values: tuple[float, ...]


@dataclass
class OpenedServer:
    """A served model found: the server answered, its model and maximum length are known,
    and the tokenizer is loaded here; `load` checks every server before any scoring."""

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
        """The served model's name (as the server gives it, redacted) at the main URL."""
        return f"{self.shown_model} at {self.endpoint.url}"

    @property
    def shown_model(self) -> str:
        """The server's name of the model, with anything secret it may hold taken out."""
        return self.endpoint.redact(self.model)

    @property
    def max_positions(self) -> int | None:
        """Inputs per window: the server's maximum length less the target sent with them and
        the one token it must generate."""
        return None if self.max_model_len is None else self.max_model_len - 2

    def load(self) -> LoadedModel:
        started = time.perf_counter()
        main = self.check(self.client)
        for replica in self.replicas:  # each passes every check the first does, and answers as it does
            self._compare(replica, main, self.check(replica))
        scorer = self._scorer(main.style, replicas=self.replicas)
        server: dict[str, Any] = {"url": self.endpoint.url, "model": self.shown_model, "version": self.version,
                                  "request": main.style}
        if self.replicas:
            server["replicas"] = [replica.endpoint.url for replica in self.replicas]
        info = ModelInfo(name=self.name, source="server", revision=None, sha256=None, dtype="served",
                         device="server", parameters=0, max_positions=self.max_positions, server=server)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return LoadedModel(scorer, self.tokenizer, info, int(pad or 0), load_seconds=time.perf_counter() - started)

    def check(self, client: Client) -> Probe:
        """Every check of one server (the main one or a replica): its tokenizer, then the probe."""
        self._check_tokenizer(client)
        return self._probe(client)

    def _scorer(self, style: str, replicas: tuple[Client, ...] = ()) -> ServedScorer:
        limit = (self.max_model_len or 1 << 30) - 1
        return ServedScorer(self.client, self.model, style, limit, len(self.tokenizer), replicas=replicas)

    def _server(self, client: Client) -> str:
        """A server as messages name it: the served model at the main URL, or the replica."""
        if client is self.client:
            return f"served model {self.name}"
        return f"replica {client.endpoint.url} of served model {self.name}"

    def _check_tokenizer(self, client: Client) -> None:
        """Where the server tokenizes (vLLM's ``/tokenize``), its tokens of a probe text must
        be lleval's: else the same ids would mean other text to the served model."""
        bare = Client(client.endpoint.root, min(30.0, client.deadline), 0)
        try:
            status, answer = bare.request("POST", "/tokenize", {"model": self.model, "prompt": PROBE_TEXT})
        except ServerProblem:
            return
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
            return  # the server does not tokenize: nothing to compare
        ours = list(self.tokenizer(PROBE_TEXT)["input_ids"])
        if answer["tokens"] != ours:
            raise ModelLoadError(
                f"the tokenizer given for {self._server(client)} is not the server's: a probe text of "
                f"{len(PROBE_TEXT)} characters is {len(ours)} tokens here and {len(answer['tokens'])} there (or other "
                "ids). Pass --tokenizer with the served model's own tokenizer.")

    def _probe(self, client: Client) -> Probe:
        """The request style the server does (``prompt_logprobs``, else ``echo``), checked on a
        probe text (`check_alignment`); refuse a server whose answers fail a check (a wrong
        answer is refused, not retried in the other style)."""
        prompt = list(self.tokenizer(PROBE_TEXT)["input_ids"])[: min(PROBE_TOKENS, (self.max_model_len or 1 << 30) - 1)]
        problems = []
        for style in ("prompt_logprobs", "echo"):
            scorer = self._scorer(style)
            try:
                values = scorer.ask([prompt], [client])[0]
                check_alignment(scorer, client, prompt, values)
            except Unsupported as exc:
                problems.append(f"{style}: {exc}")
                continue
            except ServerProblem as exc:
                raise ModelLoadError(f"{self._server(client)} fails lleval's probe of its answers ({style}): "
                                     f"{exc}.") from None
            return Probe(style, tuple(values))
        raise ModelLoadError(f"{self._server(client)} does not return prompt log-probs lleval can trust: "
                             + "; ".join(problems) + ".")

    def _compare(self, replica: Client, main: Probe, other: Probe) -> None:
        """A replica answers the probe in the main server's style, with its log-probs."""
        if other.style != main.style:
            raise ModelLoadError(f"replica {replica.endpoint.url} answers in another request style ({other.style}) "
                                 f"than {self.endpoint.url} ({main.style}): serve the same model with the same server.")
        gap = sum(abs(a - b) for a, b in zip(main.values, other.values)) / len(main.values)
        if gap > REPLICA_TOLERANCE:
            raise ModelLoadError(
                f"replica {replica.endpoint.url} gives the probe text's tokens log-probs {gap:.3g} nats apart from "
                f"{self.endpoint.url}'s on average (at most {REPLICA_TOLERANCE} for the same model): it serves other "
                f"weights, or another precision, under the name {self.shown_model}. Serve the same model alike on every "
                "replica.")


class ServedBackend:
    """Models behind an OpenAI-compatible server, named by a URL."""

    name = "server"

    def claims(self, spec: ModelSpec) -> bool:
        return spec.name is not None and is_url(spec.name)

    def open(self, spec: ModelSpec) -> OpenedServer:
        key = _api_key(spec)
        endpoint = Endpoint.parse(str(spec.name), key)
        others = [Endpoint.parse(url, key, "--replicas") for url in spec.replicas]  # every URL read before any is asked
        served = _served_model(endpoint, spec.served_model, spec)
        length = _max_model_len(served, endpoint)
        replicas = []
        for other in others:
            twin = _served_model(other, str(served["id"]), spec)
            if _max_model_len(twin, other) != length:
                raise ModelLoadError(f"replica {other.url} takes {_max_model_len(twin, other)} tokens and "
                                     f"{endpoint.url} {length}: replicas must serve the same model alike.")
            replicas.append(Client(other, spec.request_timeout))
        tokenizer = _tokenizer(spec, served)
        return OpenedServer(spec, endpoint, Client(endpoint, spec.request_timeout), str(served["id"]), length,
                            tokenizer, _version(endpoint, spec.request_timeout), tuple(replicas))


def _api_key(spec: ModelSpec) -> str | None:
    """The key in the variable ``--api-key-env`` names; a variable named on purpose that is not
    set is refused before any server is asked (unless the URL holds the key)."""
    key = os.environ.get(spec.api_key_env) or None
    if key is None and spec.api_key_env != DEFAULT_API_KEY_ENV and Endpoint.parse(str(spec.name), None).key is None:
        raise ConfigError(f"--api-key-env {spec.api_key_env}: the environment variable {spec.api_key_env} is not set "
                          f"(or empty). Export it with the server's API key, or drop --api-key-env for a server "
                          "that needs none.")
    return key


def _served_model(endpoint: Endpoint, wanted: str | None, spec: ModelSpec) -> dict[str, Any]:
    """The model a server serves (``wanted``, else its only one), from its ``/models``."""
    client = Client(endpoint, min(30.0, spec.request_timeout), retries=1)
    try:
        status, answer = client.request("GET", "/models")
    except ServerProblem as exc:
        raise ModelLoadError(f"{endpoint.redact(str(exc))}: is the server running? Start it, or check --model.") from None
    if status in (401, 403):
        raise ModelLoadError(_refused_key(endpoint, status, spec))
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        raise ModelLoadError(f"{endpoint.url}/models answered {status}, not a list of models: is this the "
                             "base URL of an OpenAI-compatible server (ending in /v1)?")
    return _pick_model(answer["data"], wanted, endpoint)


def _refused_key(endpoint: Endpoint, status: int, spec: ModelSpec) -> str:
    """Why a server refused the request, in words that say which key was sent, if any."""
    if endpoint.key is None:
        return (f"the server at {endpoint.url} asks for an API key ({status}) and none was sent: set "
                f"{spec.api_key_env} to its key (or --api-key-env to the variable that holds it).")
    where = "the URL's password" if endpoint.address.password else f"${spec.api_key_env}"
    return (f"the server at {endpoint.url} refused the API key ({status}) from {where}: set {spec.api_key_env} to a "
            "key it accepts (or --api-key-env to the variable that holds one).")


def _pick_model(models: list[Any], wanted: str | None, endpoint: Endpoint) -> dict[str, Any]:
    names = [endpoint.redact(str(m.get("id")))[:80] for m in models if isinstance(m, dict)]
    url = endpoint.url
    if wanted is not None:
        for model in models:
            if isinstance(model, dict) and model.get("id") == wanted:
                return model
        raise ModelLoadError(f"the server at {url} does not serve {wanted!r}; it serves {', '.join(names) or 'none'}.")
    if len(names) != 1:
        raise ModelLoadError(f"the server at {url} serves {len(names)} models ({', '.join(names) or 'none'}): "
                             "pick one with --served-model.")
    return dict(models[0])


def _max_model_len(served: dict[str, Any], endpoint: Endpoint) -> int | None:
    """The server's ``max_model_len`` (a whole number, or decimal digits in a string; None
    when it does not say); a `ModelLoadError` when it is something else, or too short."""
    value = served.get("max_model_len")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        shown = endpoint.redact(repr(value))[:40]
        raise ModelLoadError(f"the server at {endpoint.url} gives max_model_len {shown}, not a whole number of "
                             "tokens: it is not an OpenAI-compatible server lleval can size windows for.")
    if value < MIN_MODEL_LEN:
        raise ModelLoadError(
            f"the server at {endpoint.url} takes at most {value} tokens per request (its max_model_len): a window's "
            "inputs are sent with its last target and the server generates one token more, so lleval needs at "
            f"least {MIN_MODEL_LEN} (windows of {MIN_MODEL_LEN - 2} tokens). Restart it with a larger --max-model-len.")
    return value


def _tokenizer(spec: ModelSpec, served: dict[str, Any]) -> Any:
    """``--tokenizer``, else the served model's folder when it is on this machine."""
    from lleval.backends.hf.pretrained import load_tokenizer

    if spec.tokenizer is not None:
        return load_tokenizer(spec.tokenizer)
    for candidate in (served.get("root"), served.get("id")):
        if isinstance(candidate, str) and os.path.isdir(candidate):
            return load_tokenizer(candidate)
    raise ConfigError(f"the tokenizer of served model {str(served.get('id'))[:80]} is not on this machine: pass "
                      "--tokenizer with its hub id, folder or .gguf file.")


def _version(endpoint: Endpoint, deadline: float) -> str | None:
    """The server's version where it says (vLLM's ``/version``, beside the base path)."""
    bare = Client(endpoint.root, min(10.0, deadline), 0)
    try:
        status, answer = bare.request("GET", "/version")
    except ServerProblem:
        return None
    if status == 200 and isinstance(answer, dict) and "version" in answer:
        return endpoint.redact(str(answer.get("version")))[:80]
    return None


BACKEND = ServedBackend()
