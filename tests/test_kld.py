"""KL divergence: a model against itself, against a uniform fake, and refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable

import jsonschema

import lleval
import pytest
import torch
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.config import EvalConfig
from lleval.errors import ConfigError
from lleval.commands.kld import kl_divergence
from lleval.engine.kernels import scorer_from_slices, slices_from_logits
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "The keeper wrote in the logbook every evening, and the gate was never mended for long.",
    "Bread needs flour, water, salt and yeast. Knead it for ten minutes, then let it rise.",
    "Blue light scatters more than red light, which is why the sky looks blue at noon.",
]


def _data(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "d.jsonl", TEXTS)


Logits = Callable[[torch.Tensor], torch.Tensor]


def _float64_pair(base_logits: Logits, model_logits: Logits, tokenizer: Any) -> dict[str, list[float]]:
    """Per scored token of TEXTS, computed here in float64 from each model's logits for the
    whole document (one window: each fits in 64 tokens, BOS in front): KL(P_base || P_model)
    summed over the vocabulary, whether the argmaxes agree, p_model - p_base of the target,
    and both target log-probs. ``*_logits`` map (1, T) ids to (T, V) float64 logits."""
    out: dict[str, list[float]] = {"kl": [], "agree": [], "delta_p": [], "base_lp": [], "model_lp": []}
    for text in TEXTS:
        tokens = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(tokens) <= 65
        ids, targets = torch.tensor([tokens[:-1]]), torch.tensor(tokens[1:])[:, None]
        with torch.no_grad():
            lp_base = torch.log_softmax(base_logits(ids), dim=-1)  # (T, V)
            lp_model = torch.log_softmax(model_logits(ids), dim=-1)  # (T, V)
        out["kl"] += (lp_base.exp() * (lp_base - lp_model)).sum(dim=-1).tolist()
        out["agree"] += (lp_base.argmax(dim=-1) == lp_model.argmax(dim=-1)).double().tolist()
        base_lp, model_lp = lp_base.gather(1, targets)[:, 0], lp_model.gather(1, targets)[:, 0]
        out["delta_p"] += (model_lp.exp() - base_lp.exp()).tolist()
        out["base_lp"] += base_lp.tolist()
        out["model_lp"] += model_lp.tolist()
    return out


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the two order statistics around rank (n - 1) q / 100."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def test_model_against_itself_is_zero(tiny_loaded: Any, tmp_path: Path) -> None:
    config = EvalConfig(dataset=_data(tmp_path), max_length=16, batch_size=3)
    result = kl_divergence(config, None, base=tiny_loaded, model=tiny_loaded).to_dict()
    # BOS in front: every token of every document is predicted once, across windows of 16
    tok = tiny_loaded.tokenizer
    assert result["tokens"] == sum(len(tok(text, add_special_tokens=False)["input_ids"]) for text in TEXTS)
    assert result["kl_divergence"]["mean"] == 0.0 and result["kl_divergence"]["max"] == 0.0
    assert result["top_token_agreement"] == 1.0
    assert result["delta_p"]["mean"] == 0.0
    assert result["perplexity"]["ln_ratio"] == 0.0
    assert result["perplexity"]["base"] == result["perplexity"]["model"]


def test_against_uniform_is_log_v_minus_entropy(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    vocab = tiny_loaded.vocab
    uniform = slices_from_logits(lambda ids, mask: torch.zeros(*ids.shape, vocab))
    fake = dataclasses.replace(tiny_loaded, slices=uniform, scorer=scorer_from_slices(uniform, 64))
    result = kl_divergence(EvalConfig(dataset=_data(tmp_path), max_length=64), None, base=tiny_loaded, model=fake).to_dict()

    # Independent: one window per document (each fits in 64), entropy of the base at every position.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = tiny_loaded.tokenizer
    kls, base_lp = [], 0.0
    for text in TEXTS:
        tokens = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        assert len(tokens) <= 65
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([tokens[:-1]])).logits[0].double(), dim=-1)
        entropy = -(logp.exp() * logp).sum(dim=-1)
        kls += (math.log(vocab) - entropy).tolist()
        base_lp += float(logp.gather(1, torch.tensor(tokens[1:]).unsqueeze(1)).sum())
    assert result["tokens"] == len(kls)
    assert math.isclose(result["kl_divergence"]["mean"], sum(kls) / len(kls), rel_tol=1e-5)
    assert math.isclose(result["kl_divergence"]["max"], max(kls), rel_tol=1e-5)
    assert math.isclose(result["perplexity"]["model"], vocab, rel_tol=1e-6)
    assert math.isclose(result["perplexity"]["base"], math.exp(-base_lp / len(kls)), rel_tol=1e-6)
    assert math.isclose(result["perplexity"]["ln_ratio"], math.log(vocab) + base_lp / len(kls), rel_tol=1e-5)


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16"])
def test_perplexities_equal_a_score_run_of_each_model(
    tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path: Path, base_dtype: str
) -> None:
    """kld's per-model perplexities are what ``lleval score`` gives each model (an independent
    path: `evaluate` and its own scorer), not a float32 log-softmax's slightly lower ones."""
    from lleval.commands.score import evaluate

    data = _data(tmp_path)
    config = EvalConfig(model=str(tiny_llama_dir), dataset=data, max_length=24, stride=8, batch_size=3, bootstrap=0)
    result = kl_divergence(config, str(tiny_model_dir), base_dtype=base_dtype).to_dict()
    model_ppl = evaluate(config).metrics["perplexity"]
    base_ppl = evaluate(dataclasses.replace(config, model=str(tiny_model_dir), dtype=base_dtype)).metrics["perplexity"]
    assert model_ppl is not None and base_ppl is not None and result["perplexity"]["base"] != result["perplexity"]["model"]
    assert math.isclose(result["perplexity"]["model"], model_ppl, rel_tol=1e-9)
    assert math.isclose(result["perplexity"]["base"], base_ppl, rel_tol=1e-9)
    assert math.isclose(result["perplexity"]["ln_ratio"], math.log(model_ppl / base_ppl), rel_tol=1e-9, abs_tol=1e-12)


def test_two_models_against_a_float64_loop(tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Two different models (the tiny GPT-2 as base, the tiny Llama compared), whose KL is
    far from 0 and not symmetric: every statistic equals the float64 loop's, to float32
    rounding (measured: 1.5e-8 relative on the mean, 3.5e-7 nats on one token's KL)."""
    config = EvalConfig(model=str(tiny_llama_dir), dataset=_data(tmp_path), max_length=64, bootstrap=0, device="cpu")
    result = kl_divergence(config, str(tiny_model_dir)).to_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = _float64_pair(lambda ids: base(ids).logits[0].double(), lambda ids: model(ids).logits[0].double(), tokenizer)
    kls, n = ref["kl"], len(ref["kl"])
    reverse = _float64_pair(lambda ids: model(ids).logits[0].double(), lambda ids: base(ids).logits[0].double(),
                            tokenizer)["kl"]
    assert not math.isclose(sum(reverse), sum(kls), rel_tol=1e-3)  # the direction is one the test can tell apart
    got = result["kl_divergence"]
    assert result["tokens"] == n
    expected = {"mean": sum(kls) / n, "stderr": statistics.stdev(kls) / math.sqrt(n), "median": statistics.median(kls),
                "max": max(kls), "min": min(kls)}
    # a token's float32 KL carries the rounding of log-probs of ~6 nats (an ulp is 4.8e-7)
    assert {k: got[k] for k in expected} == pytest.approx(expected, rel=1e-6, abs=1e-6)
    percentiles = {f"p{q:g}": _percentile(kls, q) for q in (99.9, 99, 95, 90, 10, 5, 1, 0.1)}
    assert got["percentiles"] == pytest.approx(percentiles, rel=1e-6, abs=1e-6)
    assert result["top_token_agreement"] == sum(ref["agree"]) / n
    assert math.isclose(result["delta_p"]["mean"], sum(ref["delta_p"]) / n, rel_tol=1e-6)
    base_nll, model_nll = -sum(ref["base_lp"]) / n, -sum(ref["model_lp"]) / n
    assert math.isclose(result["perplexity"]["base"], math.exp(base_nll), rel_tol=1e-6)
    assert math.isclose(result["perplexity"]["model"], math.exp(model_nll), rel_tol=1e-6)
    assert math.isclose(result["perplexity"]["ln_ratio"], model_nll - base_nll, rel_tol=1e-5)


def test_different_tokenizers_are_refused(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.add_tokens(["<|extra|>"])
    with pytest.raises(ConfigError, match="tokenizers .* differ"):
        kl_divergence(EvalConfig(dataset=_data(tmp_path)), None, base=tiny_loaded,
                      model=dataclasses.replace(tiny_loaded, tokenizer=other))


def test_kld_cli_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "kld.json"
    result = CliRunner().invoke(
        main, ["kld", "--base", str(tiny_model_dir), "-m", str(tiny_model_dir), _data(tmp_path), "-q", "-o", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "kld" and data["kl_divergence"]["mean"] == 0.0 and data["top_token_agreement"] == 1.0
    assert set(data["kl_divergence"]["percentiles"]) == {"p99.9", "p99", "p95", "p90", "p10", "p5", "p1", "p0.1"}
    assert set(data["kl_divergence"]["percentiles"].values()) == {0.0}  # a model against itself, at every token
    assert data["settings"]["base"] == {"value": str(tiny_model_dir), "origin": "flag"}
    assert "base_dtype" not in data["settings"]  # left unset


def test_kld_settings_name_a_base_from_a_config_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text(f"base: {tiny_model_dir}\nmax_length: 16\n")
    out = tmp_path / "kld.json"
    result = CliRunner().invoke(main, ["kld", "--config", str(config), "-m", str(tiny_model_dir), _data(tmp_path),
                                       "--base-dtype", "float32", "-q", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    settings = json.loads(out.read_text())["settings"]
    assert settings["base"] == {"value": str(tiny_model_dir), "origin": "config file", "file": str(config)}
    assert settings["base_dtype"] == {"value": "float32", "origin": "flag"}
    assert settings["max_length"] == {"value": 16, "origin": "config file", "file": str(config)}


def test_document_with_nothing_to_score_is_kept(tiny_loaded: Any, tmp_path: Path) -> None:
    config = EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", ["a", TEXTS[0]]), prefix_token="none")  # "a" is one token: nothing to predict
    result = kl_divergence(config, None, base=tiny_loaded, model=tiny_loaded).to_dict()
    assert result["dataset"]["documents"] == 2 and result["kl_divergence"]["mean"] == 0.0
    # no prefix token: the second document's first token is not predicted, and "a" gives nothing
    assert result["tokens"] == len(tiny_loaded.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]) - 1
    assert result["perplexity"]["ln_ratio_ci"] == [0.0, 0.0]  # resamples of only the empty document are left out
    json.dumps(result, allow_nan=False)


def test_one_model_in_two_dtypes(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lleval.hardware as hardware

    monkeypatch.setattr(hardware, "half_matmul_speed", lambda name: hardware.HalfSpeed(3.0, 3.0, 3.0, 15))  # a stand-in
    # one window per document and one document per batch: the bf16 body computes what the
    # reference's single-document forward computes
    config = EvalConfig(model=str(tiny_llama_dir), dataset=_data(tmp_path), dtype="bfloat16", max_length=64,
                        batch_size=1, device="cpu")
    result = kl_divergence(config, str(tiny_llama_dir), base_dtype="float32").to_dict()
    assert (result["base"]["dtype"], result["model"]["dtype"]) == ("float32", "bfloat16")
    # The reference: the float32 model, and the bf16 one as lleval runs it (its body in bf16,
    # the output projection in float32 with the bf16-rounded weights), both in float64 from there.
    full = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    half = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).eval()
    head = half.lm_head.weight.double()  # (V, H)
    ref = _float64_pair(lambda ids: full(ids).logits[0].double(),
                        lambda ids: half.model(input_ids=ids).last_hidden_state[0].double() @ head.T,
                        AutoTokenizer.from_pretrained(tiny_llama_dir))
    n = len(ref["kl"])
    assert result["tokens"] == n
    # The KL is ~8e-6 nats a token, so float32 log-softmax rounding (~1e-7 on log-probs of
    # magnitude 1-10) is up to ~1e-3 of it: measured 1.4e-4 on the mean on AMD Zen 4/5, 1.4e-3
    # on an Intel Sapphire Rapids (AMX bf16 kernels). A bf16 output projection gives ~9% more.
    assert math.isclose(result["kl_divergence"]["mean"], sum(ref["kl"]) / n, rel_tol=5e-3)
    assert math.isclose(result["kl_divergence"]["max"], max(ref["kl"]), rel_tol=5e-3)
    # one token may flip on a near tie of the two top logits (the closest here: 1.5e-5 apart,
    # against ~2.4e-7 of float32 rounding; another CPU's bf16 kernels give other ties)
    assert abs(result["top_token_agreement"] - sum(ref["agree"]) / n) <= 1 / n
    assert math.isclose(result["perplexity"]["base"], math.exp(-sum(ref["base_lp"]) / n), rel_tol=1e-6)
    assert math.isclose(result["perplexity"]["model"], math.exp(-sum(ref["model_lp"]) / n), rel_tol=1e-6)
    assert result["environment"]["cpu"]["bf16_matmul_speedup"] == 3.0
    assert "fp16_matmul_speedup" not in result["environment"]["cpu"]
    jsonschema.validate(result, json.loads((Path(lleval.__file__).parent / "schemas" / "kld.schema.json").read_text()))


def test_kld_needs_a_base_or_a_base_dtype(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["kld", "-m", str(tiny_model_dir), "-d", _data(tmp_path), "-q"])
    assert result.exit_code == 2 and "give --base" in result.output


def test_kld_config_file_takes_its_own_options(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`base` and `base-dtype` are keys of kld's config file, as its flags are on the command line."""
    from click.testing import CliRunner

    from lleval.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("One text here.", "And another one.")))
    config = tmp_path / "k.yaml"
    config.write_text(f"base: {tiny_model_dir}\nbase-dtype: float32\nbootstrap: 0\n")
    result = CliRunner().invoke(main, ["kld", "--config", str(config), "-m", str(tiny_model_dir), "-d", str(data),
                                       "-q", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["base"]["name"] == str(tiny_model_dir) and report["base"]["dtype"] == "float32"
    assert report["kl_divergence"]["mean"] == 0.0  # the same model and dtype: no divergence
    typo = tmp_path / "t.yaml"
    typo.write_text("bsae: x\n")
    refused = CliRunner().invoke(main, ["kld", "--config", str(typo), "-d", str(data)])
    assert refused.exit_code == 2 and "did you mean 'base'" in refused.output
