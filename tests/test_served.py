"""The served backend (`lleval.backends.served`) against a small OpenAI-compatible server of
the test's own: it answers with the tiny GPT-2's log-probs computed here in float64, so a run
through the URL must give a local run's numbers; and with the broken answers real servers
give (shifted, generated tokens only, uniform, refused key), each of which must be one line.
The same comparison against a real vLLM is in `tests/test_vllm.py`."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import rel_close, write_jsonl
from lleval.backends.served import PROBE_TEXT
from lleval.commands.kld import kl_divergence
from lleval.commands.score import evaluate, load
from lleval.config import EvalConfig
from lleval.errors import ConfigError, ModelLoadError, ScoringError

TEXTS = [f"Document {i}. " + "The river begins as a spring in a boggy hollow high on the moor. " * (1 + i % 4)
         for i in range(8)]
KEY = "sk-test-secret-4711"


class FakeServer:
    """``/v1/models``, ``/v1/completions`` (prompt_logprobs or echo), ``/tokenize`` and
    ``/version``; ``mode`` picks a broken behaviour, and ``later = (n, mode)`` turns to
    ``mode`` after ``n`` window requests (prompts shorter than the probe's), as a server
    restarted or stuck mid-run."""

    def __init__(self, model_dir: Path, max_model_len: Any = 60) -> None:
        from transformers import AutoModelForCausalLM

        from transformers import AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.vocab = self.model.config.vocab_size
        self.root, self.max_model_len = str(model_dir), max_model_len
        self.mode, self.key, self.lock, self.requests = "ok", None, threading.Lock(), 0
        self.max_logprobs = 20  # vLLM's default --max-logprobs
        self.later: tuple[int, str] | None = None
        self.windows = 0  # completions of prompts shorter than the probe's
        self.probe_length = len(self.tokenizer(PROBE_TEXT)["input_ids"])
        self.hanging = threading.Event()  # set while a request hangs or trickles
        self.release = threading.Event()  # set: hanging requests end
        self.queries: list[str] = []  # the query string of every request
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def reset(self) -> None:
        self.release.set()
        self.mode, self.key, self.max_logprobs, self.later, self.windows = "ok", None, 20, None, 0
        self.hanging, self.release, self.queries = threading.Event(), threading.Event(), []

    def close(self) -> None:
        self.release.set()
        self.http.shutdown()

    def table(self, prompt: list[int]) -> torch.Tensor:
        """(len(prompt), V) float64 log-probs of the next token after each prefix."""
        with self.lock, torch.inference_mode():
            logits = self.model(torch.tensor([prompt])).logits[0].double()
        return torch.log_softmax(logits, dim=-1)

    def logprobs(self, prompt: list[int], mode: str) -> list[float]:
        """log P(prompt[i] | prompt[:i]) for i >= 1, from full logits in float64."""
        if mode == "uniform":
            return [-math.log(self.vocab)] * (len(prompt) - 1)
        if mode == "uniform_padded":  # uniform over the embedding's rows, padded past the tokenizer
            return [-math.log(self.vocab + 64)] * (len(prompt) - 1)
        table = self.table(prompt)
        values = [float(table[i - 1, prompt[i]]) for i in range(1, len(prompt))]
        generated = float(table[-1].max())
        if mode in ("shifted_values", "echo_shifted"):  # each token's value is the next one's
            return values[1:] + [generated]
        if mode == "late_values":  # each token's value is the one before's
            return [float(table[0].max())] + values[:-1]
        return values

    def completion(self, body: dict[str, Any], mode: str) -> dict[str, Any]:
        prompt = list(body["prompt"])
        values = self.logprobs(prompt, mode)
        top = int(body.get("prompt_logprobs") or 0)
        if top > self.max_logprobs:
            raise ValueError(f"Requested prompt logprobs of {top}, which is greater than max allowed: "
                             f"{self.max_logprobs}")
        if mode == "shifted":  # one position off: each value filed under the next token
            entries: list[Any] = [None] + [{str(prompt[min(i + 1, len(prompt) - 1)]): {"logprob": v}}
                                           for i, v in enumerate(values, start=1)]
        elif top:  # as vLLM: the top ``top`` by rank, and the token sent with its rank when lower
            table = self.table(prompt)
            entries = [None]
            for i in range(1, len(prompt)):
                order = torch.argsort(table[i - 1], descending=True).tolist()
                entry = {str(t): {"logprob": float(table[i - 1, t]), "rank": r + 1} for r, t in enumerate(order[:top])}
                entry[str(prompt[i])] = {"logprob": values[i - 1], "rank": order.index(prompt[i]) + 1}
                entries.append(entry)
        else:
            entries = [None] + [{str(t): {"logprob": v, "rank": 1}} for t, v in zip(prompt[1:], values)]
        if mode == "string_logprob":
            entries[2] = {str(prompt[2]): {"logprob": "-1.5e"}}
        choice: dict[str, Any] = {"index": 0, "text": "x", "prompt_logprobs": None, "logprobs": None}
        if mode == "generated_only":  # ignores prompt_logprobs and echo: only the generated token
            choice["logprobs"] = {"tokens": ["x"], "token_logprobs": [-1.0]}
        elif "prompt_logprobs" in body and mode not in ("echo_only", "echo_shifted"):
            choice["prompt_logprobs"] = entries
        elif body.get("echo"):
            choice["logprobs"] = {"tokens": [str(t) for t in prompt] + ["x"], "token_logprobs": [None, *values, -1.0]}
        return {"choices": [choice]}

    def mode_now(self, prompt: list[int]) -> str:
        """The mode for this completion request (counting it if it is a window's)."""
        with self.lock:
            if len(prompt) < self.probe_length - 1:
                self.windows += 1
            if self.later is not None and self.windows > self.later[0]:
                return self.later[1]
        return self.mode

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.key is None or self.headers.get("Authorization") == f"Bearer {server.key}":
                    return True
                self._send(401, {"error": {"message": "invalid API key"}})
                return False

            def _path(self) -> str:
                path, _, query = self.path.partition("?")
                server.queries.append(query)
                return path

            def do_GET(self) -> None:
                path = self._path()
                if path == "/version":
                    self._send(200, {"version": "fake-1"})
                elif path == "/v1/models" and self._authorised():
                    self._send(200, {"data": [{"id": "tiny", "root": server.root, "max_model_len": server.max_model_len}]})
                elif path != "/v1/models":
                    self._send(404, {"error": "not found"})

            def _stall(self, mode: str) -> None:
                """Never answer, or answer a byte every 0.2 s, until released."""
                server.hanging.set()
                if mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                while not server.release.wait(0.2):
                    if mode == "trickle":
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return
                self.close_connection = True

            def do_POST(self) -> None:
                path = self._path()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if path == "/tokenize":
                    ids = server.tokenizer(body["prompt"])["input_ids"]
                    self._send(200, {"tokens": ids[1:] if server.mode == "other_tokenizer" else ids})
                    return
                if not self._authorised():
                    return
                server.requests += 1
                mode = server.mode_now(list(body["prompt"]))
                if mode in ("hang", "trickle"):
                    return self._stall(mode)
                if mode == "echo_key":  # an error that repeats what it was sent, headers included
                    self._send(400, {"error": {"message": f"bad request (Authorization: {self.headers.get('Authorization')}"
                                                          f", query {self.path.partition('?')[2]})"}})
                    return
                if len(body["prompt"]) >= int(server.max_model_len):
                    self._send(400, {"error": {"message": "prompt too long"}})
                    return
                try:
                    answer = server.completion(body, mode)
                except ValueError as exc:  # as vLLM answers a request it refuses
                    self._send(400, {"error": {"message": str(exc)}})
                    return
                self._send(200, answer)

        return Handler


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[FakeServer]:
    fake = FakeServer(tiny_model_dir)
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _reset(server: FakeServer) -> Iterator[None]:
    server.reset()
    yield
    server.reset()


@pytest.mark.parametrize("protocol,extra", [
    ("rolling", {"max_length": 32, "stride": 16}),
    ("rolling", {"max_length": 32, "concat": "\n\n"}),
    ("lm-eval", {"max_length": 32}),
    ("hf-guide", {"max_length": 32, "stride": 8}),
    ("llama-cpp", {"max_length": 32}),
])
def test_a_served_model_gives_the_local_numbers(server: FakeServer, tiny_model_dir: Path, tmp_path: Path,
                                                protocol: str, extra: dict[str, Any]) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    common = dict(dataset=data, protocol=protocol, bootstrap=0, **extra)
    local = evaluate(EvalConfig(model=str(tiny_model_dir), **common))
    served = evaluate(EvalConfig(model=server.url, batch_size=3, **common))
    assert [d.tokens for d in served.documents] == [d.tokens for d in local.documents]
    for a, b in zip(served.documents, local.documents):
        assert rel_close(a.log_likelihood, b.log_likelihood, 1e-5)
    model = served.to_dict()["model"]
    assert model["source"] == "server" and model["server"] == {
        "url": server.url, "model": "tiny", "version": "fake-1", "request": "prompt_logprobs"}


def test_echo_is_used_where_prompt_logprobs_are_not_returned(server: FakeServer, tmp_path: Path) -> None:
    server.mode = "echo_only"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    report = evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    assert report.to_dict()["model"]["server"]["request"] == "echo"
    assert report.totals.tokens > 0


@pytest.mark.parametrize("mode,says", [
    ("shifted", "not aligned with the prompt"),
    ("generated_only", "scored only what it generated"),
    ("uniform", "uniform distribution"),
    ("other_tokenizer", "is not the server's"),
])
def test_an_answer_that_cannot_be_trusted_is_refused_before_scoring(server: FakeServer, tmp_path: Path, mode: str,
                                                                    says: str) -> None:
    server.mode = mode
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    with pytest.raises(ModelLoadError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    assert says in str(info.value) and "\n" not in str(info.value)


def test_the_api_key_is_sent_and_never_written(server: FakeServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server.key = KEY
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:3])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ModelLoadError) as refused:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    assert "asks for an API key (401) and none was sent" in str(refused.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(ModelLoadError) as refused:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    assert "refused the API key (401) from $OPENAI_API_KEY" in str(refused.value)
    assert "sk-wrong" not in str(refused.value)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("LLEVAL_TEST_KEY", KEY)
    config = EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0, api_key_env="LLEVAL_TEST_KEY",
                        checkpoint=str(tmp_path / "c.json"), tokens=str(tmp_path / "t.jsonl"))
    report = evaluate(config)
    assert report.totals.tokens > 0
    for text in (report.to_json(), (tmp_path / "c.json").read_text(), (tmp_path / "t.jsonl").read_text()):
        assert KEY not in text
    in_url = server.url.replace("http://", f"http://user:{KEY}@")  # a key in the URL is used, and not shown
    shown = evaluate(EvalConfig(model=in_url, dataset=data, max_length=32, bootstrap=0)).to_json()
    assert KEY not in shown and "user" not in shown
    # a replica's URL too, in the report's settings (a list) and its model block
    replicas = (in_url, f"{in_url}?token={KEY}")
    both = evaluate(EvalConfig(model=in_url, replicas=replicas, dataset=data, max_length=32, bootstrap=0)).to_dict()
    assert KEY not in json.dumps(both)
    assert list(both["settings"]["replicas"]["value"]) == [server.url, server.url]


def test_a_window_longer_than_the_server_takes_is_refused_before_it_is_sent(server: FakeServer,
                                                                            tmp_path: Path) -> None:
    """The server takes prompts below 60 tokens and must generate one: windows of at most
    58 inputs (the target is sent too); --max-length 59 is refused when planned."""
    data = write_jsonl(tmp_path / "d.jsonl", [TEXTS[7] * 2])
    with pytest.raises(ConfigError, match="58"):
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=59, bootstrap=0))
    before = server.requests
    report = evaluate(EvalConfig(model=server.url, dataset=data, max_length=58, bootstrap=0))
    assert report.protocol["max_length"] == 58 and server.requests > before


def test_a_server_that_fails_mid_run_stops_it_with_one_line(server: FakeServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    server.later = (3, "shifted")
    with pytest.raises(ScoringError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0, batch_size=1))
    assert "not aligned" in str(info.value) and "\n" not in str(info.value)


def test_what_a_server_cannot_compute_or_find_is_one_line(server: FakeServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    refusals = [
        (lambda: kl_divergence(EvalConfig(model=server.url, dataset=data, max_length=32), server.url),
         ConfigError, "needs every log-prob of the vocabulary"),
        (lambda: evaluate(EvalConfig(model=server.url, dataset=data, served_model="other")),
         ModelLoadError, "does not serve 'other'; it serves tiny"),
        (lambda: evaluate(EvalConfig(model="http://127.0.0.1:9/v1", dataset=data)),
         ModelLoadError, "is the server running?"),
        (lambda: evaluate(EvalConfig(model=server.url.replace("/v1", "/nope"), dataset=data)),
         ModelLoadError, "not a list of models"),
    ]
    for run, kind, says in refusals:
        with pytest.raises(kind) as info:
            run()
        assert says in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_server_flags_are_refused_without_a_server(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    with pytest.raises(ConfigError, match="--tokenizer applies to a --model that is a server URL"):
        EvalConfig(dataset=data, tokenizer="gpt2").validate()
    with pytest.raises(ConfigError, match="--request-timeout applies to a --model that is a server URL"):
        EvalConfig(dataset=data, request_timeout=5).validate()


def test_replicas_share_the_windows_and_change_no_number(server: FakeServer, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    replica = FakeServer(tiny_model_dir)
    try:
        data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
        common = dict(dataset=data, max_length=32, stride=16, bootstrap=0)
        alone = evaluate(EvalConfig(model=server.url, **common))
        first, second = server.requests, replica.requests
        shared = evaluate(EvalConfig(model=server.url, replicas=(replica.url,), **common))
        assert [d.to_dict() for d in shared.documents] == [d.to_dict() for d in alone.documents]
        assert server.requests - first > 1 and replica.requests - second > 1  # both scored windows
        assert shared.to_dict()["model"]["server"]["replicas"] == [replica.url]
        replica.max_model_len = 40
        with pytest.raises(ModelLoadError, match="replicas must serve the same model alike"):
            evaluate(EvalConfig(model=server.url, replicas=(replica.url,), **common))
    finally:
        replica.close()


def test_a_served_run_stopped_early_resumes_from_its_checkpoint(server: FakeServer, tmp_path: Path) -> None:
    """As for a local model: stopped between batches, then resumed, the documents equal an
    uninterrupted run's, and the resumed run asks the server only for what was left."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    common = dict(model=server.url, dataset=data, max_length=32, stride=16, batch_size=2, block_tokens=64,
                  bootstrap=0)
    whole = evaluate(EvalConfig(**common))
    config = EvalConfig(**common, checkpoint=str(tmp_path / "c.json"), checkpoint_every=0)
    server.windows = 0
    partial = evaluate(config, should_stop=lambda: server.windows >= 10)
    assert not partial.complete and 0 < len(partial.documents) < len(TEXTS)
    before = server.requests
    resumed = evaluate(config)
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in whole.documents]
    assert any(note.startswith("resumed from") for note in resumed.notes)
    # the probes of a load (as many requests as a load alone makes), the checkpoint's probe (the
    # model's answers, `lleval.runner.fingerprint`: one request), then one request per window the
    # resumed process scored: fewer than a whole run's
    probe = server.requests
    load(EvalConfig(model=server.url))
    probe = server.requests - probe
    assert server.requests - probe - before == probe + 1 + resumed.timing["windows"]
    assert 0 < resumed.timing["windows"] < whole.timing["windows"]


def test_a_reference_saved_from_a_server_is_the_local_one(server: FakeServer, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    """--save-reference from a served model (its top K from prompt_logprobs) holds the local reference's
    ids and log-probs, the tail from the returned mass; kld --reference of the local model against it is
    the local-against-local KL (0 to rounding), with every token."""
    import numpy as np
    import pyarrow.parquet as pq

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:4])
    common: dict[str, Any] = dict(dataset=data, max_length=32, stride=16, bootstrap=0)
    served_ref, local_ref = str(tmp_path / "served.parquet"), str(tmp_path / "local.parquet")
    evaluate(EvalConfig(model=server.url, batch_size=3, save_reference=served_ref, reference_top_k=6, **common))
    evaluate(EvalConfig(model=str(tiny_model_dir), save_reference=local_ref, reference_top_k=6, **common))
    served, local = pq.read_table(served_ref), pq.read_table(local_ref)
    assert served.num_rows == local.num_rows > 0
    for name in ("document", "position", "token_id"):
        assert served.column(name).to_pylist() == local.column(name).to_pylist()
    s_ids, l_ids = (np.array(t.column("top_ids").to_pylist()) for t in (served, local))
    s_lp, l_lp = (np.array(t.column("top_logprobs").to_pylist()) for t in (served, local))
    assert s_ids.shape == (served.num_rows, 6)
    close = np.abs(l_lp[:, :, None] - l_lp[:, None, :]) < 1e-6  # near-ties may come in either order
    assert np.all((s_ids == l_ids) | close.any(axis=2))
    np.testing.assert_allclose(s_lp, l_lp, atol=1e-5)
    s_tail, l_tail = (t.column("tail_logprob").to_numpy() for t in (served, local))
    np.testing.assert_allclose(np.exp(s_tail), np.exp(l_tail), atol=1e-5)
    header = json.loads(served.schema.metadata[b"lleval"])
    assert header["reference"]["top_k"] == 6 and header["model"]["source"] == "server"
    kl = kl_divergence(EvalConfig(model=str(tiny_model_dir), reference=served_ref, **common), None)
    assert kl.tokens == served.num_rows and abs(kl.kl_divergence["mean"]) < 1e-5
    assert kl.top_token_agreement == 1.0 and kl.reference is not None and not kl.reference["exact"]


def test_a_server_that_gives_fewer_top_tokens_is_refused_with_what_to_change(server: FakeServer,
                                                                             tmp_path: Path) -> None:
    server.max_logprobs = 4
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    out = tmp_path / "ref.parquet"
    with pytest.raises(ConfigError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, save_reference=str(out),
                            reference_top_k=8))
    assert "--max-logprobs 8" in str(info.value) and "\n" not in str(info.value) and not out.exists()


# --- issue 28: what a hostile server, or a hostile URL, must not get past -----------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "internal error" not in text, text
    return text


@pytest.mark.parametrize("mode,style,says", [
    ("shifted_values", "prompt_logprobs", "one position early"),  # keyed by the token sent, valued from the next
    ("echo_shifted", "echo", "one position early"),  # echo's token_logprobs without their leading null
    ("late_values", "prompt_logprobs", "one position late"),
])
def test_values_one_position_off_are_refused_by_the_probe(server: FakeServer, tmp_path: Path, mode: str, style: str,
                                                          says: str) -> None:
    """The ids are the ones sent and every value is a log-prob, but each is another position's:
    perplexity would be plausible and wrong. The probe changes only the last token (or drops
    it) and watches which values move."""
    server.mode = mode
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    with pytest.raises(ModelLoadError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    text = _one_line(info.value)
    assert says in text and f"({style})" in text


def test_a_uniform_answer_over_a_padded_vocabulary_is_refused(server: FakeServer, tmp_path: Path) -> None:
    """-ln of the embedding's rows (the tokenizer's size padded to 384, as Qwen2's and Phi-2's are)."""
    server.mode = "uniform_padded"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    with pytest.raises(ModelLoadError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    text = _one_line(info.value)
    assert "uniform distribution" in text and f"-ln({server.vocab + 64})" in text


@pytest.mark.parametrize("later", ["uniform", "uniform_padded"])
def test_answers_that_turn_uniform_mid_run_fail_and_keep_the_finished_documents(
        server: FakeServer, tmp_path: Path, later: str) -> None:
    """The probe passes; then the server turns uniform (restarted without its weights). The run
    fails with one line, its checkpoint holds the documents finished before, and the rerun (the
    server fixed) resumes from them to an uninterrupted run's numbers."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    common: dict[str, Any] = dict(model=server.url, dataset=data, max_length=32, batch_size=1, block_tokens=1,
                                  bootstrap=0)
    whole = evaluate(EvalConfig(**common))
    config = EvalConfig(**common, checkpoint=str(tmp_path / "c.json"), checkpoint_every=3600)
    server.windows, server.later = 0, (6, later)
    with pytest.raises(ScoringError) as info:
        evaluate(config)
    assert "uniform distribution" in _one_line(info.value) and server.url in str(info.value)
    assert 0 < json.loads((tmp_path / "c.json").read_text())["rows"] < len(TEXTS)
    server.later = None
    resumed = evaluate(config)
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in whole.documents]


@pytest.fixture()
def replica(tiny_model_dir: Path) -> Iterator[FakeServer]:
    fake = FakeServer(tiny_model_dir)
    yield fake
    fake.close()


@pytest.mark.parametrize("mode,says", [
    ("other_tokenizer", "is not the server's"),
    ("uniform", "uniform distribution"),
    ("shifted_values", "one position early"),
    ("echo_only", "answers in another request style"),
])
def test_every_replica_passes_every_check_of_the_main_server_and_is_named(
        server: FakeServer, replica: FakeServer, tmp_path: Path, mode: str, says: str) -> None:
    replica.mode = mode
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    with pytest.raises(ModelLoadError) as info:
        evaluate(EvalConfig(model=server.url, replicas=(replica.url,), dataset=data, max_length=32, bootstrap=0))
    text = _one_line(info.value)
    assert says in text and f"replica {replica.url}" in text


def test_a_replica_serving_other_weights_under_the_same_name_is_refused(server: FakeServer, tiny_llama_dir: Path,
                                                                        tmp_path: Path) -> None:
    """Another model of the same tokenizer, served as "tiny": it passes every check of its own,
    and its probe log-probs are not the main server's."""
    other = FakeServer(tiny_llama_dir)
    try:
        data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
        with pytest.raises(ModelLoadError) as info:
            evaluate(EvalConfig(model=server.url, replicas=(other.url,), dataset=data, max_length=32, bootstrap=0))
        text = _one_line(info.value)
        assert f"replica {other.url}" in text and "nats apart" in text and "other weights" in text
        alone = evaluate(EvalConfig(model=other.url, dataset=data, max_length=32, bootstrap=0))  # itself, it is fine
        assert alone.totals.tokens > 0
    finally:
        other.close()


def test_a_replica_failing_mid_run_is_named(server: FakeServer, replica: FakeServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    replica.later = (2, "uniform")
    with pytest.raises(ScoringError) as info:
        evaluate(EvalConfig(model=server.url, replicas=(replica.url,), dataset=data, max_length=32, bootstrap=0,
                            batch_size=2))
    assert f"{replica.url} (a replica of {server.url})" in _one_line(info.value)


def _suite_run(server_url: str, tmp_path: Path) -> tuple[Any, str]:
    """``lleval score`` of a served model over two datasets with -o and --html: the result and
    every text it wrote or printed."""
    from click.testing import CliRunner

    from lleval.cli import main

    a, b = write_jsonl(tmp_path / "a.jsonl", TEXTS[:2]), write_jsonl(tmp_path / "b.jsonl", TEXTS[2:4])
    out, page = tmp_path / "suite.json", tmp_path / "suite.html"
    done = CliRunner().invoke(main, ["score", "-q", "-m", server_url, "-d", a, "-d", b, "--max-length", "32",
                                     "--bootstrap", "0", "-o", str(out), "--html", str(page)])
    written = "".join(p.read_text() for p in (out, page) if p.exists())
    return done, done.output + written


def test_a_server_error_echoing_the_key_reaches_no_message_report_or_page(
        server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's 400 repeats the Authorization header and the query: stderr, suite.json's
    ``cells[].error`` and the suite page get the error without the key."""
    server.key, server.mode = KEY, "echo_key"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    done, everything = _suite_run(server.url + "?api_key=" + KEY, tmp_path)
    assert done.exit_code != 0 and "[redacted]" in done.output
    report = json.loads((tmp_path / "suite.json").read_text())
    errors = [cell["error"] for cell in report["cells"]]
    assert len(errors) == 2 and all(e and "bad request" in e and "[redacted]" in e for e in errors)
    assert KEY not in everything and "4711" not in everything


@pytest.mark.parametrize("query", ["api_key", "key", "token", "access_token", "X-Api-Key", "sig"])
def test_a_key_in_the_query_string_is_sent_and_never_shown(server: FakeServer, tmp_path: Path, query: str) -> None:
    """The query is sent as written (a proxy may want it); settings, stdout, the suite's labels
    and its models show the URL without the credential, and keep other parameters."""
    url = f"{server.url}?api-version=2024-06-01&{query}={KEY}"
    done, everything = _suite_run(url, tmp_path)
    assert done.exit_code == 0, done.output
    assert f"api-version=2024-06-01&{query}={KEY}" in server.queries
    report = json.loads((tmp_path / "suite.json").read_text())
    shown = server.url.split("://")[1].removesuffix("/v1")
    assert report["models"][0]["label"] == shown
    assert report["models"][0]["model"] == server.url + "?api-version=2024-06-01"
    assert KEY not in everything and "4711" not in everything
    single = evaluate(EvalConfig(model=url, dataset=write_jsonl(tmp_path / "d.jsonl", TEXTS[:1]), max_length=32,
                                 bootstrap=0)).to_json()
    assert KEY not in single and "api-version=2024-06-01" in single


@pytest.mark.parametrize("url", ["http://user:pa/ss-4711@127.0.0.1:1/v1", "http://user:pa?ss-4711@127.0.0.1:1/v1",
                                 "http://user:pa#ss-4711@127.0.0.1:1/v1", "http://user:pass-4711",
                                 "http://127.0.0.1:99999/v1", "http://127.0.0.1:80x/v1", "http://[::1/v1",
                                 "http://[::1]x/v1", "http:///v1", "http://127.0.0.1:0/v1", "http://h^st/v1"])
def test_a_malformed_url_is_one_line_that_repeats_no_part_of_it(tmp_path: Path, url: str) -> None:
    from click.testing import CliRunner

    from lleval.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:1])
    with pytest.raises(ConfigError) as info:
        evaluate(EvalConfig(model=url, dataset=data, max_length=32, bootstrap=0))
    assert "4711" not in _one_line(info.value) and "ss-" not in str(info.value)
    done = CliRunner().invoke(main, ["score", "-q", "-m", url, "-d", data, "--max-length", "32"])
    assert done.exit_code == 2 and "4711" not in done.output and "internal error" not in done.output
    assert done.output.count("\n") == 1, done.output
    replica = CliRunner().invoke(main, ["score", "-q", "-m", "http://127.0.0.1:1/v1", "--replicas", url, "-d", data])
    assert replica.exit_code == 2 and "4711" not in replica.output and "--replicas" in replica.output


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_server_that_never_answers_or_trickles_fails_the_run_at_the_deadline(
        server: FakeServer, tmp_path: Path, mode: str) -> None:
    """--request-timeout is a total per request: a trickle of a byte every 0.2 s trips it as
    surely as silence, within about the deadline, and the finished documents are checkpointed."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    config = EvalConfig(model=server.url, dataset=data, max_length=32, batch_size=1, block_tokens=1, bootstrap=0,
                        request_timeout=1, checkpoint=str(tmp_path / "c.json"), checkpoint_every=3600)
    server.later = (5, mode)
    started = time.monotonic()
    with pytest.raises(ScoringError) as info:
        evaluate(config)
    took = time.monotonic() - started
    assert "no complete answer within 1 s (--request-timeout)" in _one_line(info.value)
    assert server.hanging.is_set() and took < 15, took
    assert 0 < json.loads((tmp_path / "c.json").read_text())["rows"] < len(TEXTS)


def test_a_server_that_hangs_on_the_probe_fails_the_load_at_the_deadline(server: FakeServer, tmp_path: Path) -> None:
    server.mode = "trickle"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:1])
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0, request_timeout=1))
    assert "--request-timeout" in _one_line(info.value) and time.monotonic() - started < 10


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_stop_while_a_request_hangs_ends_the_run_within_a_second(server: FakeServer, tmp_path: Path,
                                                                   mode: str) -> None:
    """``should_stop`` turns true while a batch waits on a server that will not answer (a
    deadline of 600 s): the run returns within about a second, incomplete, with the documents
    finished before, and its checkpoint resumes to an uninterrupted run's numbers."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    common: dict[str, Any] = dict(model=server.url, dataset=data, max_length=32, batch_size=1, block_tokens=1,
                                  bootstrap=0)
    whole = evaluate(EvalConfig(**common))
    config = EvalConfig(**common, checkpoint=str(tmp_path / "c.json"), checkpoint_every=3600)
    server.windows, server.later = 0, (5, mode)
    asked: list[float] = []

    def should_stop() -> bool:
        if server.hanging.is_set() and not asked:
            asked.append(time.monotonic())
        return bool(asked)

    partial = evaluate(config, should_stop=should_stop)
    assert time.monotonic() - asked[0] < 1.5
    assert not partial.complete and 0 < len(partial.documents) < len(TEXTS)
    server.later = None
    resumed = evaluate(config)
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in whole.documents]


def test_a_stop_while_the_probe_hangs_is_one_line_within_a_second(server: FakeServer, tmp_path: Path) -> None:
    from lleval.stopping import Interrupted

    server.mode = "hang"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:1])
    asked: list[float] = []

    def should_stop() -> bool:
        if server.hanging.is_set() and not asked:
            asked.append(time.monotonic())
        return bool(asked)

    with pytest.raises(Interrupted) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0), should_stop=should_stop)
    assert time.monotonic() - asked[0] < 1.5 and server.url in _one_line(info.value)


@pytest.mark.subprocess
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_request_hangs_is_honoured_within_a_second(server: FakeServer, tmp_path: Path,
                                                                    signum: int) -> None:
    """``lleval score`` of a served model whose server stops answering mid-run: the first
    SIGINT or SIGTERM ends it within a second or two, exit 128 + the signal, with the report
    (incomplete, the finished documents in it) and the checkpoint written."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    out, checkpoint = tmp_path / "r.json", tmp_path / "c.json"
    server.later = (5, "hang")
    command = [sys.executable, "-m", "lleval", "score", "-q", "-m", server.url, "-d", data, "--max-length", "32",
               "--batch-size", "1", "--block-tokens", "1", "--bootstrap", "0", "--checkpoint", str(checkpoint),
               "-o", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.hanging.wait(120), proc.communicate(timeout=5)
        time.sleep(0.3)  # well inside the wait
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert took < 2.5, took
    report = json.loads(out.read_text())
    assert report["complete"] is False and 0 < len(report["documents"]) < len(TEXTS)
    assert json.loads(checkpoint.read_text())["rows"] == len(report["documents"])


def test_a_log_prob_that_is_not_a_number_is_one_line(server: FakeServer, tmp_path: Path) -> None:
    server.mode = "string_logprob"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:1])
    with pytest.raises(ModelLoadError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    assert "'-1.5e'" in _one_line(info.value) and "not a number" in str(info.value)
    server.mode, server.later = "ok", (0, "string_logprob")
    with pytest.raises(ScoringError) as scoring:
        evaluate(EvalConfig(model=server.url, dataset=data, max_length=32, bootstrap=0))
    assert "not a number" in _one_line(scoring.value)


@pytest.mark.parametrize("length,says", [
    ("sixty", "gives max_model_len 'sixty', not a whole number"),
    (60.5, "gives max_model_len 60.5, not a whole number"),
    (True, "gives max_model_len True, not a whole number"),
    (2, "takes at most 2 tokens per request"),
    (-1, "takes at most -1 tokens per request"),
])
def test_a_max_model_len_that_is_not_a_length_is_one_line(server: FakeServer, tmp_path: Path, length: Any,
                                                          says: str) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:1])
    server.max_model_len = length
    try:
        with pytest.raises(ModelLoadError) as info:
            evaluate(EvalConfig(model=server.url, dataset=data, bootstrap=0))
    finally:
        server.max_model_len = 60
    text = _one_line(info.value)
    assert says in text and "or less" not in text


def test_a_max_model_len_in_a_string_of_digits_is_that_number(server: FakeServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:1])
    server.max_model_len = "60"
    try:
        report = evaluate(EvalConfig(model=server.url, dataset=data, bootstrap=0))
    finally:
        server.max_model_len = 60
    assert report.to_dict()["model"]["max_positions"] == 58


def test_an_unset_api_key_variable_is_refused_before_the_server_is_asked(
        server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.key = KEY
    monkeypatch.delenv("LLEVAL_TEST_UNSET", raising=False)
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:1])
    asked = len(server.queries)
    with pytest.raises(ConfigError) as info:
        evaluate(EvalConfig(model=server.url, dataset=data, api_key_env="LLEVAL_TEST_UNSET"))
    assert "LLEVAL_TEST_UNSET is not set" in _one_line(info.value) and "refused" not in str(info.value)
    assert len(server.queries) == asked  # not a single request


def test_two_servers_in_m_get_labels_of_their_own_and_a_clash_says_how_to_label(
        server: FakeServer, replica: FakeServer, tmp_path: Path) -> None:
    from lleval.commands.suite import suite_from_flags

    suite = suite_from_flags([server.url, replica.url], ["d.jsonl"])
    labels = [m.label for m in suite.models]
    assert labels == [u.split("://")[1].removesuffix("/v1") for u in (server.url, replica.url)]
    with pytest.raises(ConfigError) as info:
        suite_from_flags([server.url, server.url.replace("http://", "http://u:" + KEY + "@")], ["d.jsonl"])
    text = _one_line(info.value)
    assert "--suite file" in text and "label:" in text and KEY not in text


@pytest.mark.subprocess
def test_a_signal_while_the_probe_hangs_exits_at_once_having_scored_nothing(server: FakeServer,
                                                                             tmp_path: Path) -> None:
    """The first SIGTERM while the model loads (its probe unanswered): exit 128 + 15 within a
    second or two, one line saying where it stopped, and no report (nothing was scored)."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    out = tmp_path / "r.json"
    server.mode = "hang"
    command = [sys.executable, "-m", "lleval", "score", "-q", "-m", server.url, "-d", data, "--max-length", "32",
               "-o", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.hanging.wait(120), proc.communicate(timeout=5)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and took < 2.5, (proc.returncode, took, stderr)
    assert f"stopped while waiting for {server.url}" in stderr and "Traceback" not in stderr
    assert not out.exists()
