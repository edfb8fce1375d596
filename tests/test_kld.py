"""KL divergence: a model against itself, against a uniform fake, and refusals."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

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

TEXTS = [
    "The keeper wrote in the logbook every evening, and the gate was never mended for long.",
    "Bread needs flour, water, salt and yeast. Knead it for ten minutes, then let it rise.",
    "Blue light scatters more than red light, which is why the sky looks blue at noon.",
]


def _data(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "d.jsonl", TEXTS)


def test_model_against_itself_is_zero(tiny_loaded: Any, tmp_path: Path) -> None:
    config = EvalConfig(dataset=_data(tmp_path), max_length=16, batch_size=3)
    result = kl_divergence(config, None, base=tiny_loaded, model=tiny_loaded).to_dict()
    assert result["kl_divergence"]["mean"] == 0.0 and result["kl_divergence"]["max"] == 0.0
    assert result["top_token_agreement"] == 1.0
    assert result["delta_p"]["mean"] == 0.0
    assert result["perplexity"]["ln_ratio"] == 0.0
    assert result["perplexity"]["base"] == result["perplexity"]["model"]


def test_against_uniform_is_log_v_minus_entropy(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

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


def test_different_tokenizers_are_refused(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

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


def test_document_with_nothing_to_score_is_kept(tiny_loaded: Any, tmp_path: Path) -> None:
    config = EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", ["a", TEXTS[0]]), prefix_token="none")  # "a" is one token: nothing to predict
    result = kl_divergence(config, None, base=tiny_loaded, model=tiny_loaded).to_dict()
    assert result["dataset"]["documents"] == 2 and result["kl_divergence"]["mean"] == 0.0
    assert result["perplexity"]["ln_ratio_ci"] == [0.0, 0.0]  # resamples of only the empty document are left out
    json.dumps(result, allow_nan=False)


def test_one_model_in_two_dtypes(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lleval.hardware as hardware

    monkeypatch.setattr(hardware, "half_matmul_speedup", lambda name: 3.0)  # a stand-in measurement
    config = EvalConfig(model=str(tiny_llama_dir), dataset=_data(tmp_path), dtype="bfloat16", max_length=32,
                        device="cpu")
    result = kl_divergence(config, str(tiny_llama_dir), base_dtype="float32").to_dict()
    assert (result["base"]["dtype"], result["model"]["dtype"]) == ("float32", "bfloat16")
    assert 0.0 < result["kl_divergence"]["mean"] < 0.05  # bf16 rounding: small, not zero
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
