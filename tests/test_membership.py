"""Membership (contamination) scores per document and calibration of the top-1 prediction,
checked against naive full-logits reimplementations of each paper's formula."""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.data.spec import builtin_sample_path
from lleval.engine.kernels import target_columns, target_logprobs, target_stats
from lleval.errors import ConfigError
from lleval.report.score import Report
from lleval.report.tokens import read_token_file

SCHEMA = Path(__file__).resolve().parent.parent / "src" / "lleval" / "schemas" / "score.schema.json"
# short enough that each document is one window of 64 (the reference scores each in one pass)
TEXTS = [json.loads(line)["text"][: 40 + 6 * i] for i, line in enumerate(builtin_sample_path().read_text().splitlines())][:5]
TEXTS += ["Zoë's café — naïve “quotes” ✓ 🙂", "ab"]


def _reference(model: Any, tokenizer: Any, text: str) -> dict[str, np.ndarray]:
    """Per scored token, from float64 log-softmax of the full logits of one window."""
    sequence = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([sequence[:-1]])).logits[0].double(), dim=-1)  # (n, V)
    targets = torch.tensor(sequence[1:])
    lp = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    p = logp.exp()
    mu = (p * logp).sum(1)
    sigma = ((p * logp * logp).sum(1) - mu * mu).sqrt()
    return {"logprob": lp.numpy(), "z": ((lp - mu) / sigma).numpy(), "top1": p.max(1).values.numpy(),
            "correct": (logp.argmax(1) == targets).numpy()}


def _lowest_mean(values: np.ndarray, k: float) -> float:
    m = max(1, int(len(values) * k))  # the papers' int(n k), at least one token
    return float(np.mean(sorted(values.tolist())[:m]))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tiny_loaded: Any) -> list[dict[str, np.ndarray]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return [_reference(model, tiny_loaded.tokenizer, text) for text in TEXTS]


def _config(tmp_path: Path, **kw: Any) -> EvalConfig:
    return EvalConfig(**{"dataset": write_jsonl(tmp_path / "d.jsonl", TEXTS), "bootstrap": 0, "max_length": 64,
                         "batch_size": 3, **kw})


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0, 0.01])
def test_membership_scores_match_the_papers_formulas(tiny_loaded: Any, reference: Any, tmp_path: Path,
                                                     k: float) -> None:
    report = evaluate(_config(tmp_path, membership=True, min_k=k), loaded=tiny_loaded)
    assert len(report.documents) == len(TEXTS)
    for doc, ref, text in zip(report.documents, reference, TEXTS):
        row = doc.to_dict()
        assert math.isclose(row["min_k_prob"], _lowest_mean(ref["logprob"], k), rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(row["min_k_plus_plus"], _lowest_mean(ref["z"], k), rel_tol=1e-3, abs_tol=1e-3)
        ratio = float(ref["logprob"].sum()) / len(zlib.compress(text.encode("utf-8")))
        assert math.isclose(row["zlib_ratio"], ratio, rel_tol=1e-5)


def test_calibration_matches_a_naive_binning(tiny_loaded: Any, reference: Any, tmp_path: Path) -> None:
    block = evaluate(_config(tmp_path, calibration=True), loaded=tiny_loaded).statistics["calibration"]
    confidence = np.concatenate([r["top1"] for r in reference])
    correct = np.concatenate([r["correct"] for r in reference])
    n, ece = len(confidence), 0.0
    for b in range(15):
        low, high = b / 15, (b + 1) / 15
        inside = [i for i in range(n) if low <= confidence[i] < high or (b == 14 and confidence[i] == 1.0)]
        got = block["bins"][b]
        assert (got["low"], got["high"], got["tokens"]) == (low, high, len(inside))
        if inside:
            conf, acc = float(np.mean(confidence[inside])), float(np.mean(correct[inside]))
            assert math.isclose(got["confidence"], conf, rel_tol=1e-5) and got["accuracy"] == acc
            ece += len(inside) / n * abs(acc - conf)
        else:
            assert got["confidence"] is None and got["accuracy"] is None
    assert block["tokens"] == n
    assert math.isclose(block["ece"], ece, rel_tol=1e-4, abs_tol=1e-6)
    assert block["top1_accuracy"] == float(correct.mean())


def test_the_flags_change_no_log_prob(tiny_loaded: Any, tmp_path: Path) -> None:
    plain_tokens, flagged_tokens = tmp_path / "a.parquet", tmp_path / "b.parquet"
    plain = evaluate(_config(tmp_path, tokens=str(plain_tokens)), loaded=tiny_loaded)
    flagged = evaluate(_config(tmp_path, tokens=str(flagged_tokens), membership=True, calibration=True,
                               token_stats=True), loaded=tiny_loaded)
    keys = ("index", "log_likelihood", "tokens", "bytes", "words")
    assert [[d.to_dict()[k] for k in keys] for d in flagged.documents] == [[d.to_dict()[k] for k in keys]
                                                                             for d in plain.documents]
    a, b = list(read_token_file(str(plain_tokens))[1]), list(read_token_file(str(flagged_tokens))[1])
    assert [r["logprob"] for r in a] == [r["logprob"] for r in b]
    assert {"rank", "entropy", "mink_pp_z", "top1_prob", "top1_correct"} <= set(b[0])
    assert all(r["top1_correct"] == float(r["rank"] == 1) for r in b)  # one definition of "correct"


def test_the_kernel_columns_leave_the_log_prob_bit_identical() -> None:
    torch.manual_seed(0)
    logits = torch.randn(37, 500) * 4
    targets = torch.randint(0, 500, (37,))
    names = ("rank", "entropy", "mink_pp_z", "top1_prob", "top1_correct")
    for chosen in [names, ("top1_prob",), ("mink_pp_z",), ("top1_correct", "rank")]:
        out = target_columns(logits.clone(), targets, chosen)
        assert torch.equal(out["logprob"], target_logprobs(logits.clone(), targets))
    logprob, rank, entropy = target_stats(logits.clone(), targets)
    out = target_columns(logits.clone(), targets, names)
    assert torch.equal(out["rank"], rank) and torch.equal(out["entropy"], entropy)
    uniform = target_columns(torch.zeros(3, 10), torch.tensor([0, 4, 9]), ("mink_pp_z", "top1_prob", "top1_correct"))
    assert uniform["mink_pp_z"].tolist() == [0.0, 0.0, 0.0]  # sigma 0: every token as likely as the mean
    assert torch.allclose(uniform["top1_prob"], torch.full((3,), 0.1))
    assert uniform["top1_correct"].tolist() == [1.0, 1.0, 1.0]  # a tie for the top counts as correct


def test_a_resumed_run_gives_the_same_scores(tiny_loaded: Any, tmp_path: Path) -> None:
    texts = TEXTS * 4
    base = dict(dataset=write_jsonl(tmp_path / "d.jsonl", texts), bootstrap=0, max_length=32, stride=16,
                batch_size=2, block_tokens=100, membership=True, calibration=True)
    full = evaluate(EvalConfig(**base), loaded=tiny_loaded)  # type: ignore[arg-type]
    ckpt = str(tmp_path / "run.ckpt")
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 6

    partial = evaluate(EvalConfig(**base, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded,  # type: ignore[arg-type]
                       should_stop=stop)
    assert 0 < len(partial.documents) < len(texts)
    resumed = evaluate(EvalConfig(**base, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded)  # type: ignore[arg-type]
    assert any("resumed from" in n for n in resumed.notes)
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in full.documents]
    assert resumed.statistics == full.statistics


def test_a_report_with_the_new_fields_validates_and_reads_back(tiny_loaded: Any, tmp_path: Path) -> None:
    report = evaluate(_config(tmp_path, membership=True, calibration=True), loaded=tiny_loaded)
    data = report.to_dict()
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert json.loads(report.to_json()) == data
    assert Report.from_dict(data).to_dict()["documents"] == data["documents"]
    assert data["statistics"]["calibration"]["tokens"] == report.totals.tokens
    bad = json.loads(report.to_json())
    bad["statistics"]["calibration"]["bins"] = bad["statistics"]["calibration"]["bins"][:3]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(SCHEMA.read_text()))


def test_a_model_without_the_vocabulary_gives_min_k_and_zlib_and_says_why_not_min_k_plus_plus(
        tiny_loaded: Any, tmp_path: Path) -> None:
    served = dataclasses.replace(tiny_loaded, slices=None)  # only the log-prob of each true token
    report = evaluate(_config(tmp_path, membership=True), loaded=served)
    rows = [d.to_dict() for d in report.documents]
    assert all(r["min_k_plus_plus"] is None and r["min_k_prob"] <= 0 and r["zlib_ratio"] <= 0 for r in rows)
    assert any("min_k_plus_plus is null" in n for n in report.notes)
    with pytest.raises(ConfigError, match="--calibration needs every log-prob of the vocabulary"):
        evaluate(_config(tmp_path, calibration=True), loaded=served)


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5", "nan"])
def test_a_bad_min_k_is_refused_in_one_line(tiny_model_dir: Path, tmp_path: Path, value: str) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", data, "--membership",
                                       "--min-k", value])
    assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "--min-k" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_min_k_without_membership_is_refused() -> None:
    with pytest.raises(ConfigError, match="give --membership"):
        EvalConfig(min_k=0.3).validate()
