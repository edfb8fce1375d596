"""KL against a saved top-K reference (score --save-reference, kld --reference): exact when K
covers the vocabulary, a lower bound (the coarsened formula, checked with a float64 loop)
otherwise, resumable, and refused when made from other data, tokenizer or protocol."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.commands.kld import kl_divergence
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.errors import ConfigError, DataError
from lleval.report.kld import KLReport
from transformers import AutoModelForCausalLM

TEXTS = [
    "The keeper wrote in the logbook every evening, and the gate was never mended for long.",
    "Bread needs flour, water, salt and yeast. Knead it for ten minutes, then let it rise.",
    "Blue light scatters more than red light, which is why the sky looks blue at noon.",
]


def _config(tmp_path: Path, **changes: Any) -> EvalConfig:
    """The run over ``tmp_path/d.jsonl`` (TEXTS, written the first time)."""
    data = tmp_path / "d.jsonl"
    if not data.exists():
        write_jsonl(data, TEXTS)
    return EvalConfig(dataset=str(data), max_length=16, stride=8, batch_size=3, **changes)


def _save(tmp_path: Path, model: str, k: int, name: str = "ref.parquet", **changes: Any) -> str:
    path = str(tmp_path / name)
    evaluate(_config(tmp_path, model=model, save_reference=path, reference_top_k=k, **changes))
    return path


def test_full_k_reproduces_two_model_kld(tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    vocab = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size
    ref = _save(tmp_path, str(tiny_model_dir), vocab - 1)
    exact = kl_divergence(_config(tmp_path, model=str(tiny_llama_dir)), str(tiny_model_dir)).to_dict()
    found = kl_divergence(_config(tmp_path, model=str(tiny_llama_dir), reference=ref), None).to_dict()
    assert found["reference"]["exact"] and found["reference"]["top_k"] == vocab - 1
    assert found["tokens"] == exact["tokens"]
    for block in ("kl_divergence", "delta_p"):
        for key in ("mean", "median", "max", "min"):
            assert found[block][key] == pytest.approx(exact[block][key], rel=1e-4, abs=1e-6), (block, key)
        for key, value in exact[block]["percentiles"].items():
            assert found[block]["percentiles"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (block, key)
    assert found["top_token_agreement"] == exact["top_token_agreement"]
    assert found["perplexity"] == exact["perplexity"]  # the base's target log-probs are score's, bit for bit
    assert found["base"]["name"] == exact["base"]["name"]
    KLReport.from_dict(json.loads(json.dumps(found)))  # the schema holds the new field


def _transformers_model(path: Path) -> Any:
    """The model of a folder, or of a .gguf file, loaded by transformers itself."""
    if path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return AutoModelForCausalLM.from_pretrained(path)


def _coarse_kl_loop(base_dir: Path, model_dir: Path, tokenizer: Any, k: int) -> tuple[list[float], list[float]]:
    """Per scored token of TEXTS (one window each, BOS in front), in float64 from each model's
    full logits: the KL of both distributions coarsened to the base's top ``k`` plus one tail
    bucket, and the exact KL."""
    base, model = (_transformers_model(path).double().eval() for path in (base_dir, model_dir))
    coarse, exact = [], []
    for text in TEXTS:
        tokens = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([tokens[:-1]])
        with torch.no_grad():
            lp_b = torch.log_softmax(base(ids).logits[0], dim=-1)  # (T, V)
            lp_m = torch.log_softmax(model(ids).logits[0], dim=-1)  # (T, V)
        for b, m in zip(lp_b, lp_m):
            top = torch.topk(b, k).indices.tolist()
            kl = 0.0
            for v in top:
                kl += float(b[v].exp() * (b[v] - m[v]))
            tail_b = 1.0 - sum(float(b[v].exp()) for v in top)
            tail_m = 1.0 - sum(float(m[v].exp()) for v in top)
            kl += tail_b * np.log(tail_b / tail_m) if tail_b > 0 and tail_m > 0 else 0.0  # (K = V: rounding)
            coarse.append(kl)
            exact.append(float((b.exp() * (b - m)).sum()))
    return coarse, exact


def test_small_k_is_the_coarsened_kl_and_a_lower_bound(tiny_model_dir: Path, tiny_llama_dir: Path,
                                                       tmp_path: Path) -> None:
    k = 4
    config = dataclasses.replace(_config(tmp_path), max_length=64, stride=None)
    ref = str(tmp_path / "ref.parquet")
    evaluate(dataclasses.replace(config, model=str(tiny_model_dir), save_reference=ref, reference_top_k=k))
    tokens = tmp_path / "t.parquet"
    report = kl_divergence(dataclasses.replace(config, model=str(tiny_llama_dir), reference=ref,
                                               tokens=str(tokens)), None)
    assert report.reference == {"file": ref, "top_k": k, "vocab": report.reference["vocab"], "exact": False,
                                "kl": "top-k lower bound"}
    found = pq.read_table(tokens).column("kl").to_numpy().astype(np.float64)
    from transformers import AutoTokenizer

    coarse, exact = _coarse_kl_loop(tiny_model_dir, tiny_llama_dir, AutoTokenizer.from_pretrained(tiny_model_dir), k)
    assert len(found) == len(coarse)
    np.testing.assert_allclose(found, coarse, rtol=1e-4, atol=1e-6)
    assert np.all(found <= np.asarray(exact) + 1e-6)
    assert np.mean(np.asarray(exact) - found) > 1e-4  # the truncation costs something here


def test_saved_reference_columns_are_the_model_distribution(tiny_model_dir: Path, tmp_path: Path) -> None:
    ref = _save(tmp_path, str(tiny_model_dir), 5)
    table = pq.read_table(ref).to_pydict()
    header = json.loads(pq.read_schema(ref).metadata[b"lleval"])
    assert header["reference"]["top_k"] == 5 and header["tokenizer"]["fingerprint"]
    plain = evaluate(_config(tmp_path, model=str(tiny_model_dir), tokens=str(tmp_path / "plain.parquet")))
    plain_rows = pq.read_table(tmp_path / "plain.parquet").to_pydict()
    assert plain.totals.tokens == len(table["logprob"])
    assert table["logprob"] == plain_rows["logprob"]  # bit for bit a plain run's
    for ids, lps, tail in zip(table["top_ids"], table["top_logprobs"], table["tail_logprob"]):
        assert len(ids) == 5 and lps == sorted(lps, reverse=True)
        total = sum(np.exp(np.float64(lps))) + np.exp(np.float64(tail))
        assert total == pytest.approx(1.0, abs=1e-5)


def _stop_after(n: int) -> Any:
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > n

    return should_stop


def test_resumed_save_equals_uninterrupted(tiny_loaded: Any, tmp_path: Path) -> None:
    texts = [f"Document {i}. " + "The river begins as a spring high on the moor. " * (1 + i % 4) for i in range(20)]
    data = write_jsonl(tmp_path / "many.jsonl", texts)
    ckpt, ref, full = str(tmp_path / "run.ckpt"), str(tmp_path / "ref.parquet"), str(tmp_path / "full.parquet")
    config = EvalConfig(dataset=data, max_length=32, stride=16, batch_size=3, block_tokens=300, bootstrap=0,
                        save_reference=ref, reference_top_k=3)
    partial = evaluate(dataclasses.replace(config, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded,
                       should_stop=_stop_after(6))
    assert not partial.complete
    evaluate(dataclasses.replace(config, checkpoint=ckpt), loaded=tiny_loaded)
    evaluate(dataclasses.replace(config, save_reference=full), loaded=tiny_loaded)
    assert pq.read_table(ref).equals(pq.read_table(full))
    resumed_header = json.loads(pq.read_schema(ref).metadata[b"lleval"])
    full_header = json.loads(pq.read_schema(full).metadata[b"lleval"])
    for name in ("model", "tokenizer", "dataset", "protocol", "reference"):
        assert resumed_header[name] == full_header[name], name


@pytest.mark.parametrize("change, error, match", [
    ({"stride": 4}, ConfigError, "protocol stride"),
    ({"concat": "\n\n"}, ConfigError, "protocol concat"),
    ({"limit": 2}, DataError, "dataset limit"),
    ({"text_field": "body"}, DataError, "dataset text_field"),
])
def test_a_reference_of_another_run_is_refused(tiny_model_dir: Path, tmp_path: Path, change: dict[str, Any],
                                               error: type, match: str) -> None:
    ref = _save(tmp_path, str(tiny_model_dir), 3)
    config = dataclasses.replace(_config(tmp_path, model=str(tiny_model_dir), reference=ref), **change)
    if "text_field" in change:
        write_jsonl(tmp_path / "d.jsonl", TEXTS, field="body")
    with pytest.raises(error, match=match):
        kl_divergence(config, None)


def test_other_texts_and_other_tokenizers_are_refused(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    ref = _save(tmp_path, str(tiny_model_dir), 3)
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.add_tokens(["keeper"])  # in the first text: other token ids from its first words on
    with pytest.raises(DataError, match="has token_id .* another tokenizer"):
        kl_divergence(_config(tmp_path, reference=ref), None, model=dataclasses.replace(tiny_loaded, tokenizer=other))
    write_jsonl(tmp_path / "d.jsonl", [TEXTS[1], TEXTS[0], TEXTS[2]])  # same path and settings, other texts
    with pytest.raises(DataError, match="has token_id|has position|has document"):
        kl_divergence(_config(tmp_path, reference=ref), None, model=tiny_loaded)
    write_jsonl(tmp_path / "d.jsonl", TEXTS + ["One more document at the end."])
    with pytest.raises(DataError, match="ends after"):
        kl_divergence(_config(tmp_path, reference=ref), None, model=tiny_loaded)
    write_jsonl(tmp_path / "d.jsonl", TEXTS[:2])
    with pytest.raises(DataError, match="holds .* tokens, this run scored"):
        kl_divergence(_config(tmp_path, reference=ref), None, model=tiny_loaded)


def test_a_tokenizer_defined_otherwise_that_gives_the_same_ids_is_compared(tiny_model_dir: Path, tiny_loaded: Any,
                                                                         tmp_path: Path) -> None:
    """Another definition of the tokenizer (here: one more added token that the texts never use) reads the
    same ids: the KL is the same as with the reference's own tokenizer, and the report says what was checked."""
    from transformers import AutoTokenizer

    ref = _save(tmp_path, str(tiny_model_dir), 3)
    same = kl_divergence(_config(tmp_path, reference=ref), None, model=tiny_loaded)
    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.add_tokens(["<|never-in-these-texts|>"])
    found = kl_divergence(_config(tmp_path, reference=ref), None, model=dataclasses.replace(tiny_loaded, tokenizer=other))
    assert found.tokenizer["fingerprint"] != same.tokenizer["fingerprint"]
    assert found.kl_divergence == same.kl_divergence and found.tokens == same.tokens
    assert [n for n in found.notes if "defined otherwise" in n] and not [n for n in same.notes if "defined otherwise" in n]


def test_a_reference_from_a_model_compares_with_its_gguf(tiny_llama_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    """A model's reference (transformers, from its folder) against a .gguf file of it (the GGUF backend,
    whose tokenizer is another conversion, so another fingerprint): with K covering the vocabulary, each
    token's KL is the exact one of a float64 loop over both models' full logits. (The tiny .gguf writer does
    not permute q/k as llama.cpp's converter does, so its weights are not the folder's: the KL is not 0.)"""
    from transformers import AutoTokenizer

    vocab = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).config.vocab_size
    config = dataclasses.replace(_config(tmp_path), max_length=64, stride=None)
    ref, tokens = str(tmp_path / "ref.parquet"), tmp_path / "t.parquet"
    evaluate(dataclasses.replace(config, model=str(tiny_llama_dir), save_reference=ref, reference_top_k=vocab))
    report = kl_divergence(dataclasses.replace(config, model=str(tiny_gguf), reference=ref, tokens=str(tokens)), None)
    assert report.reference is not None and report.reference["exact"]
    assert [n for n in report.notes if "defined otherwise" in n]
    found = pq.read_table(tokens).column("kl").to_numpy().astype(np.float64)
    _, exact = _coarse_kl_loop(tiny_llama_dir, tiny_gguf, AutoTokenizer.from_pretrained(tiny_llama_dir), vocab)
    assert len(found) == len(exact) == report.tokens
    np.testing.assert_allclose(found, exact, rtol=1e-4, atol=1e-6)
    assert float(np.mean(exact)) > 1e-3  # two different models: a test that can fail


def test_bad_references_and_flag_mixes_are_refused(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.errors import ReportError

    with pytest.raises(ReportError, match="does not exist"):
        kl_divergence(_config(tmp_path, reference=str(tmp_path / "nope.parquet")), None, model=tiny_loaded)
    tokens = str(tmp_path / "t.parquet")
    evaluate(_config(tmp_path, tokens=tokens), loaded=tiny_loaded)
    with pytest.raises(ReportError, match="is a token file, not a reference"):
        kl_divergence(_config(tmp_path, reference=tokens), None, model=tiny_loaded)
    with pytest.raises(ConfigError, match="drop --base"):
        kl_divergence(_config(tmp_path, reference=tokens), str(tiny_model_dir), model=tiny_loaded)
    with pytest.raises(ConfigError, match="writes Parquet"):
        _config(tmp_path, save_reference=str(tmp_path / "r.jsonl")).validate()
    with pytest.raises(ConfigError, match="give --save-reference"):
        _config(tmp_path, reference_top_k=5).validate()


def test_cli_save_then_kld_against_the_reference(tiny_gguf: Path, tmp_path: Path) -> None:
    """A reference from a GGUF model in float32, kld with the same in bfloat16."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    ref, out = str(tmp_path / "ref.parquet"), str(tmp_path / "kld.json")
    runner = CliRunner()
    common = ["-d", data, "--max-length", "16", "--bootstrap", "100", "-q"]
    saved = runner.invoke(main, ["score", "-m", str(tiny_gguf), *common, "--save-reference", ref,
                                 "--reference-top-k", "8"])
    assert saved.exit_code == 0, saved.output
    both = runner.invoke(main, ["kld", "-m", str(tiny_gguf), *common, "--reference", ref, "--base", "x"])
    common += ["--dtype", "bfloat16"]
    assert both.exit_code == 2 and "drop --base" in both.output
    page = tmp_path / "kld.html"
    done = runner.invoke(main, ["kld", "-m", str(tiny_gguf), *common, "--reference", ref, "-o", out,
                                "--html", str(page)])
    assert done.exit_code == 0, done.output
    report = json.loads(Path(out).read_text())
    kl = report["kl_divergence"]
    points = _kl_points(page.read_text(encoding="utf-8"))
    assert points == {"min": kl["min"], "median": kl["median"], "max": kl["max"], **kl["percentiles"]}
    import jsonschema

    jsonschema.validate(report, json.loads((Path(lleval_root()) / "schemas" / "kld.schema.json").read_text()))
    assert report["reference"]["top_k"] == 8 and report["reference"]["kl"] == "top-k lower bound"
    assert report["base"]["dtype"] == "float32" and report["model"]["dtype"] == "bfloat16"
    assert report["kl_divergence"]["mean"] > 0


def lleval_root() -> str:
    import lleval

    return str(Path(lleval.__file__).parent)


def _kl_points(page: str) -> dict[str, float]:
    """The kld page's ``circle.point`` marks: percentile name -> KL."""
    from html.parser import HTMLParser

    found: dict[str, float] = {}

    class Points(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = dict(attrs)
            if tag == "circle" and values.get("class") == "point":
                found[str(values["data-percentile"])] = float(values["data-kl"] or "nan")

    Points().feed(page)
    return found
