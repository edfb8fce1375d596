"""Golden reports: the numbers a refactor must not change.

`scripts/make_golden.py` recorded the built-in default run and tiny-model
runs of every protocol and batching choice (configs and texts are in the
file). On the CPU and torch build they were recorded on, ``documents`` and
``totals`` must be byte-identical; elsewhere float32 kernels round
differently, so log-likelihoods are held to 1e-5 relative and every count
must still be exact.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from lleval.commands.score import evaluate
from lleval.config import EvalConfig

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((Path(__file__).parent / "assets" / "golden" / "reports.json").read_text())


def _same_machine(entry: dict[str, Any] | None = None) -> bool:
    """Whether this CPU and torch are those the entry (else the whole file) was recorded on."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_golden import environment

    return bool(environment() == (entry or {}).get("environment", GOLDEN["environment"]))


def _close(got: Any, expected: Any, exact: bool) -> bool:
    if exact or not isinstance(expected, float):
        return bool(got == expected)
    return math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-9)


def _check(got: dict[str, Any], expected: dict[str, Any], exact: bool) -> None:
    assert got.keys() >= expected.keys()
    for key, value in expected.items():
        assert _close(got[key], value, exact), (key, got[key], value)


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("golden") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOLDEN["texts"]))
    return str(path)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.model) if GOLDEN["runs"][name]["model"] == "builtin" else name
    for name in sorted(GOLDEN["runs"])
])
def test_golden_run(name: str, golden_data: str, request: pytest.FixtureRequest) -> None:
    run = GOLDEN["runs"][name]
    overrides = {k: v for k, v in run["config"].items() if k != "builtin_data"}
    model = {"builtin": None, "gpt2": "tiny_model_dir", "llama": "tiny_llama_dir"}[run["model"]]
    model_path = None if model is None else str(request.getfixturevalue(model))
    dataset = None if run["config"]["builtin_data"] else golden_data
    report = evaluate(EvalConfig(model=model_path, dataset=dataset, bootstrap=0, **overrides)).to_dict()
    exact = _same_machine()
    assert len(report["documents"]) == len(run["documents"])
    for got, expected in zip(report["documents"], run["documents"]):
        _check(got, expected, exact)
    _check(report["totals"], run["totals"], exact)


def test_golden_kld(golden_data: str, tiny_model_dir: Path, tiny_llama_dir: Path) -> None:
    from lleval.commands.kld import kl_divergence

    expected = GOLDEN["kld"]
    config = EvalConfig(model=str(tiny_llama_dir), dataset=golden_data, bootstrap=0, **expected["config"])
    result = kl_divergence(config, str(tiny_model_dir))
    got = result.to_dict() if hasattr(result, "to_dict") else result
    exact = _same_machine(expected)
    assert got["tokens"] == expected["tokens"]
    for block in ("kl_divergence", "delta_p", "perplexity"):
        _check(got[block], {k: v for k, v in expected[block].items() if k != "percentiles"}, exact)
        for key, value in expected[block].get("percentiles", {}).items():
            assert _close(got[block]["percentiles"][key], value, exact), (block, key)
    assert _close(got["top_token_agreement"], expected["top_token_agreement"], exact)
