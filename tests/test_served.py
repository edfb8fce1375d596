"""The served backend (`lleval.backends.served`) against a small OpenAI-compatible server of
the test's own: it answers with the tiny GPT-2's log-probs computed here in float64, so a run
through the URL must give a local run's numbers; and with the broken answers real servers
give (shifted, generated tokens only, uniform, refused key), each of which must be one line.
The same comparison against a real vLLM is in `tests/test_vllm.py`."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import rel_close, write_jsonl
from lleval.commands.kld import kl_divergence
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.errors import ConfigError, ModelLoadError, ScoringError

TEXTS = [f"Document {i}. " + "The river begins as a spring in a boggy hollow high on the moor. " * (1 + i % 4)
         for i in range(8)]
KEY = "sk-test-secret-4711"


class FakeServer:
    """``/v1/models``, ``/v1/completions`` (prompt_logprobs or echo) and ``/version``; ``mode``
    picks a broken behaviour."""

    def __init__(self, model_dir: Path, max_model_len: int = 60) -> None:
        from transformers import AutoModelForCausalLM

        from transformers import AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.vocab = self.model.config.vocab_size
        self.root, self.max_model_len = str(model_dir), max_model_len
        self.mode, self.key, self.lock, self.requests = "ok", None, threading.Lock(), 0
        self.max_logprobs = 20  # vLLM's default --max-logprobs
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def table(self, prompt: list[int]) -> torch.Tensor:
        """(len(prompt), V) float64 log-probs of the next token after each prefix."""
        with self.lock, torch.inference_mode():
            logits = self.model(torch.tensor([prompt])).logits[0].double()
        return torch.log_softmax(logits, dim=-1)

    def logprobs(self, prompt: list[int]) -> list[float]:
        """log P(prompt[i] | prompt[:i]) for i >= 1, from full logits in float64."""
        if self.mode == "uniform":
            return [-math.log(self.vocab)] * (len(prompt) - 1)
        table = self.table(prompt)
        return [float(table[i - 1, prompt[i]]) for i in range(1, len(prompt))]

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = list(body["prompt"])
        values = self.logprobs(prompt)
        top = int(body.get("prompt_logprobs") or 0)
        if top > self.max_logprobs:
            raise ValueError(f"Requested prompt logprobs of {top}, which is greater than max allowed: "
                             f"{self.max_logprobs}")
        if self.mode == "shifted":  # one position off: each value filed under the next token
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
        choice: dict[str, Any] = {"index": 0, "text": "x", "prompt_logprobs": None, "logprobs": None}
        if self.mode == "generated_only":  # ignores prompt_logprobs and echo: only the generated token
            choice["logprobs"] = {"tokens": ["x"], "token_logprobs": [-1.0]}
        elif "prompt_logprobs" in body and self.mode != "echo_only":
            choice["prompt_logprobs"] = entries
        elif body.get("echo"):
            choice["logprobs"] = {"tokens": [str(t) for t in prompt] + ["x"], "token_logprobs": [None, *values, -1.0]}
        return {"choices": [choice]}

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

            def do_GET(self) -> None:
                if self.path == "/version":
                    self._send(200, {"version": "fake-1"})
                elif self.path == "/v1/models" and self._authorised():
                    self._send(200, {"data": [{"id": "tiny", "root": server.root, "max_model_len": server.max_model_len}]})
                elif self.path != "/v1/models":
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    ids = server.tokenizer(body["prompt"])["input_ids"]
                    self._send(200, {"tokens": ids[1:] if server.mode == "other_tokenizer" else ids})
                    return
                if not self._authorised():
                    return
                server.requests += 1
                if len(body["prompt"]) >= server.max_model_len:
                    self._send(400, {"error": {"message": "prompt too long"}})
                    return
                try:
                    answer = server.completion(body)
                except ValueError as exc:  # as vLLM answers a request it refuses
                    self._send(400, {"error": {"message": str(exc)}})
                    return
                self._send(200, answer)

        return Handler


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[FakeServer]:
    fake = FakeServer(tiny_model_dir)
    yield fake
    fake.http.shutdown()


@pytest.fixture(autouse=True)
def _reset(server: FakeServer) -> None:
    server.mode, server.key, server.max_logprobs = "ok", None, 20


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
    assert "refused the API key (401)" in str(refused.value) and KEY not in str(refused.value)
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


def test_a_server_that_fails_mid_run_stops_it_with_one_line(server: FakeServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    import lleval.backends.served as served

    real = served.ServedScorer.window_logprobs
    calls = {"n": 0}

    def flaky(self: Any, prompt: list[int], client: Any = None) -> list[float]:
        calls["n"] += 1
        if calls["n"] > 3:
            server.mode = "shifted"
        return real(self, prompt, client)

    monkeypatch.setattr(served.ServedScorer, "window_logprobs", flaky)
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
        replica.http.shutdown()


def test_a_served_run_stopped_early_resumes_from_its_checkpoint(server: FakeServer, tmp_path: Path) -> None:
    """As for a local model: stopped between batches, then resumed, the documents equal an
    uninterrupted run's, and the resumed run asks the server only for what was left."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    common = dict(model=server.url, dataset=data, max_length=32, stride=16, batch_size=2, block_tokens=64,
                  bootstrap=0)
    whole = evaluate(EvalConfig(**common))
    config = EvalConfig(**common, checkpoint=str(tmp_path / "c.json"), checkpoint_every=0)
    calls = iter(range(10_000))
    partial = evaluate(config, should_stop=lambda: next(calls) > 4)
    assert not partial.complete and 0 < len(partial.documents) < len(TEXTS)
    before = server.requests
    resumed = evaluate(config)
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in whole.documents]
    assert any(note.startswith("resumed from") for note in resumed.notes)
    # the backend's probe and the checkpoint's (the model's answers, `lleval.runner.fingerprint`), then
    # one request per window the resumed process scored: fewer than a whole run's
    assert server.requests - before == 2 + resumed.timing["windows"]
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
