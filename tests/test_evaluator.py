"""`lleval.Evaluator`: a model a training loop holds, scored at each call with ``lleval score``'s
numbers, the data read once, the training's state left as it was, bad input refused."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import rel_close, write_jsonl
from lleval import EvalConfig, Evaluator, evaluate
from lleval.errors import ConfigError, LlevalError, ModelLoadError
from lleval.report.score import Report
from lleval.report.suite import SuiteReport

TEXTS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(9)]
OTHER = [f"Note {i}: a stitch in time saves nine, and " * (1 + i % 3) for i in range(5)]
TRAIN = ["a b c d e f g h the lazy dog sleeps all day", "pack my box with five dozen liquor jugs"] * 2
SETTINGS = {"max_length": 24, "stride": 8, "batch_size": 3}


def _model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _train(model: Any, tokenizer: Any, steps: int, optimizer: Any = None, seed: int = 0) -> Any:
    """A plain training loop: ``steps`` AdamW steps on `TRAIN` (dropout on)."""
    import torch

    torch.manual_seed(seed)
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        ids = torch.tensor([tokenizer(TRAIN[step % len(TRAIN)])["input_ids"]])
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def _same_documents(a: dict[str, Any], b: dict[str, Any], tol: float) -> None:
    assert [d["index"] for d in a["documents"]] == [d["index"] for d in b["documents"]]
    assert [d["tokens"] for d in a["documents"]] == [d["tokens"] for d in b["documents"]]
    for x, y in zip(a["documents"], b["documents"]):
        assert rel_close(x["log_likelihood"], y["log_likelihood"], tol), (x, y)
    for key in ("perplexity", "bits_per_byte", "nll"):
        assert rel_close(a["metrics"][key], b["metrics"][key], tol)


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_a_call_equals_lleval_score_on_the_same_weights_saved(fixture: str, request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    """Trained two steps, evaluated live, saved, scored by ``lleval score``: the same numbers
    (1e-6 relative; in float32 on one CPU they are the same bits)."""
    folder = request.getfixturevalue(fixture)
    model, tokenizer = _model(folder), _tokenizer(folder)
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    evaluator = Evaluator(model, tokenizer, data, **SETTINGS)
    _train(model, tokenizer, 2)
    live = evaluator(step=2)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    saved = evaluate(EvalConfig(model=str(tmp_path / "ckpt"), dataset=data, **SETTINGS))
    a, b = live.to_dict(), saved.to_dict()
    _same_documents(a, b, 1e-6)
    assert a["totals"]["tokens"] == b["totals"]["tokens"] and a["protocol"] == b["protocol"]
    assert a["metrics"]["perplexity_ci"] == pytest.approx(b["metrics"]["perplexity_ci"], rel=1e-6)
    assert a["model"]["source"] == "memory" and a["model"]["step"] == 2 and b["model"].get("step") is None
    assert Report.from_dict(a).to_dict()["model"]["step"] == 2  # fits the shipped schema


def test_bf16_model_equals_lleval_score_in_bf16(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A bf16 model in memory against ``lleval score --dtype bfloat16`` of the same weights.

    Loaded as ``lleval score`` loads it (``from_pretrained(dtype=torch.bfloat16)``: weights in
    bf16, the rotary frequencies kept in float32), both project the head in float32 and the
    numbers are the same (the same bits on an Intel Sapphire Rapids). A model cast with
    ``.to(torch.bfloat16)`` has its rotary frequencies in bf16 too: another model, 6e-5
    relative off per document here. Against float32, bf16 costs 2.6e-4 of the perplexity
    of this tiny Llama."""
    import torch
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    tokenizer = _tokenizer(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    live = Evaluator(model, tokenizer, data, **SETTINGS)().to_dict()
    saved = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, dtype="bfloat16", **SETTINGS)).to_dict()
    _same_documents(live, saved, 1e-6)
    assert live["model"]["dtype"] == "bfloat16" and live["model"]["head_dtype"] == "float32"
    cast = Evaluator(_model(tiny_llama_dir).to(torch.bfloat16), tokenizer, data, **SETTINGS)().to_dict()
    _same_documents(cast, saved, 1e-3)
    full = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, **SETTINGS)).to_dict()
    assert not rel_close(live["metrics"]["perplexity"], full["metrics"]["perplexity"], 1e-6)  # bf16 is not float32
    assert rel_close(live["metrics"]["perplexity"], full["metrics"]["perplexity"], 1e-2)


def test_repeated_calls_neither_read_nor_tokenize_the_data_again(tiny_model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Documents read and tokenizer calls are counted: all at construction, none per call; and
    each call scores the weights as they are then."""
    import torch

    from lleval.data.sources import DocumentStream

    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    counts = {"documents": 0, "tokenizer": 0}
    real_next, real_call = DocumentStream.__next__, type(tokenizer).__call__

    def counted_next(self: Any) -> Any:
        counts["documents"] += 1
        return real_next(self)

    def counted_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["tokenizer"] += 1
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(DocumentStream, "__next__", counted_next)
    monkeypatch.setattr(type(tokenizer), "__call__", counted_call)
    data = [write_jsonl(tmp_path / "a.jsonl", TEXTS), write_jsonl(tmp_path / "b.jsonl", OTHER)]
    evaluator = Evaluator(model, tokenizer, data, **SETTINGS)
    built = dict(counts)
    assert built["documents"] >= len(TEXTS) + len(OTHER) and built["tokenizer"] >= 2
    first = evaluator(step=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.5)
    second = evaluator(step=1)
    third = evaluator(step=1)
    assert counts == built and evaluator.tokenizations == 2
    assert isinstance(first, SuiteReport) and first.counts == {"model_loads": 0, "tokenizations": 0, "replays": 2}
    ppl = [r.matrix()[0]["perplexity"] for r in (first, second, third)]
    assert ppl[0] != ppl[1] and ppl[1] == ppl[2]  # the halved head is scored, the same way twice
    fresh = Evaluator(model, tokenizer, data[0], **SETTINGS)()
    assert fresh.metrics["perplexity"] == ppl[1]


def _state(model: Any, optimizer: Any) -> dict[str, Any]:
    import torch

    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "weights": [p.detach().clone() for p in model.parameters()],
        "python": random.getstate(), "numpy": np.random.get_state()[1].copy(),
        "torch": torch.random.get_rng_state(), "grad_enabled": torch.is_grad_enabled(),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch

    for key in ("modes", "requires_grad", "python", "grad_enabled"):
        assert a[key] == b[key], key
    assert np.array_equal(a["numpy"], b["numpy"]) and torch.equal(a["torch"], b["torch"])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a["grads"], b["grads"]))
    assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"]))
    assert repr(a["optimizer"]) == repr(b["optimizer"])


def test_a_call_leaves_the_training_state_as_it_was(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Mid-accumulation (``.grad`` set, a loss waiting for its backward), with one module frozen in
    eval mode and one parameter frozen: after a call every flag, gradient, weight, the RNG of
    Python, numpy and torch and the optimizer are as they were, and the training goes on to the
    very weights it reaches with no evaluation at all (dropout draws the same masks)."""
    import torch

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    runs = []
    for evaluate_midway in (True, False):
        model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
        evaluator = Evaluator(model, tokenizer, data, **SETTINGS) if evaluate_midway else None
        optimizer = _train(model, tokenizer, 1)
        model.transformer.drop.eval()  # a module the user keeps in eval mode
        model.transformer.wpe.weight.requires_grad_(False)
        ids = torch.tensor([tokenizer(TRAIN[1])["input_ids"]])
        model(input_ids=ids, labels=ids).loss.backward()  # accumulated, not stepped
        pending = model(input_ids=ids, labels=ids).loss  # its backward comes after the evaluation
        if evaluator is not None:
            random.random(), np.random.rand(), torch.rand(1)  # states that are not the seeded ones
            before = _state(model, optimizer)
            evaluator(step=1)
            _assert_same(before, _state(model, optimizer))
        pending.backward()
        optimizer.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_model_wrapped_for_training_is_looked_through(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``torch.compile``'s wrapper (and DDP's, ``.module``, under torchrun: test_distributed) is
    looked through: the numbers are the bare model's."""
    import torch

    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    bare = Evaluator(model, tokenizer, data, **SETTINGS)().to_dict()
    wrapped = Evaluator(torch.compile(model), tokenizer, data, **SETTINGS)().to_dict()
    assert wrapped["documents"] == bare["documents"]


def test_a_module_that_returns_logits_is_scored_by_its_own_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A plain ``nn.Module`` whose forward returns ``(B, T, V)`` logits (no transformers class) is
    scored through its forward, with the numbers of the model it wraps."""
    import torch

    class Bare(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=ids).logits

    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    plain = Evaluator(model, tokenizer, data, **SETTINGS)().to_dict()
    bare = Evaluator(Bare(model), tokenizer, data, **SETTINGS)().to_dict()
    _same_documents(bare, plain, 1e-5)  # full logits then log-softmax, against hidden states projected


def test_several_datasets_give_the_suite_report_of_one_model_at_the_step(tiny_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    data = [write_jsonl(tmp_path / "prose.jsonl", TEXTS), write_jsonl(tmp_path / "notes.jsonl", OTHER)]
    report = Evaluator(model, tokenizer, data, name="run-a", **SETTINGS)(step=40)
    assert isinstance(report, SuiteReport) and report.datasets == ["prose", "notes"]
    assert [(m.label, m.step) for m in report.models] == [("run-a", 40)]
    for path, cell in zip(data, report.cells):
        alone = Evaluator(model, tokenizer, path, **SETTINGS)(step=40)
        assert cell.report is not None and cell.report.to_dict()["documents"] == alone.to_dict()["documents"]
    assert SuiteReport.from_dict(report.to_dict()).to_dict()["models"][0]["step"] == 40  # fits the schema


def test_each_call_writes_its_report_where_the_step_says(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    evaluator = Evaluator(model, tokenizer, data, output=str(tmp_path / "r-{step}.json"),
                          html=str(tmp_path / "r-{step}.html"), **SETTINGS)
    reports = {step: evaluator(step=step) for step in (10, 20)}
    for step, report in reports.items():
        written = json.loads((tmp_path / f"r-{step}.json").read_text())
        assert written == json.loads(report.to_json()) and written["model"]["step"] == step
        assert (tmp_path / f"r-{step}.html").stat().st_size > 0
    assert not reports[10].failed_outputs


def test_an_output_that_cannot_be_written_costs_that_output_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A folder removed after the evaluator was built: the call still returns its report, the
    failure one line in ``failed_outputs`` and a warning."""
    folder = tmp_path / "out"
    folder.mkdir()
    evaluator = Evaluator(_model(tiny_model_dir), _tokenizer(tiny_model_dir), write_jsonl(tmp_path / "d.jsonl", TEXTS),
                          output=str(folder / "r.json"), **SETTINGS)
    folder.rmdir()
    with pytest.warns(UserWarning, match="could not be written"):
        report = evaluator(step=1)
    assert report.totals.tokens > 0 and len(report.failed_outputs) == 1
    assert "\n" not in str(report.failed_outputs[0])


# --- bad input: one line, the model untouched ---


def _untouched(model: Any) -> dict[str, Any]:
    import torch

    return {"modes": [m.training for m in model.modules()], "torch": torch.random.get_rng_state(),
            "weights": [p.detach().clone() for p in model.parameters() if p.device.type != "meta"]}


def _refused(build: Any, model: Any, error: type[LlevalError], match: str) -> str:
    import torch

    model.train()
    before = _untouched(model)
    with pytest.raises(error, match=match) as caught:
        build()
    after = _untouched(model)
    assert before["modes"] == after["modes"] and torch.equal(before["torch"], after["torch"])
    assert all(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
               for a, b in zip(before["weights"], after["weights"]))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_model_with_no_lm_head_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_model_dir)  # GPT2Model: hidden states, no logits
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    message = _refused(lambda: Evaluator(base, _tokenizer(tiny_model_dir), data), base, ModelLoadError,
                       "returned no logits")
    assert "AutoModelForCausalLM" in message


def test_a_masked_lm_is_refused_as_not_causal(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = _tokenizer(tiny_model_dir)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    _refused(lambda: Evaluator(bert, tokenizer, data), bert, ModelLoadError, "not causal")


@pytest.mark.parametrize("thing", ["a string", None])
def test_something_that_is_not_a_module_is_refused(thing: Any, tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        Evaluator(thing, _tokenizer(tiny_model_dir))


def test_a_module_whose_forward_fails_on_input_ids_is_refused(tiny_model_dir: Path) -> None:
    import torch

    layer = torch.nn.Linear(4, 4)
    _refused(lambda: Evaluator(layer, _tokenizer(tiny_model_dir)), layer, ModelLoadError, "failed on a 4-token input")


def test_a_tokenizer_larger_than_the_models_output_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    vocab = model.get_output_embeddings().weight.shape[0]
    tokenizer.add_tokens([f"extra_token_{i}" for i in range(5)])
    message = _refused(lambda: Evaluator(model, tokenizer, write_jsonl(tmp_path / "d.jsonl", TEXTS)), model,
                       ModelLoadError, "resize_token_embeddings")
    assert f"{len(tokenizer)} tokens" in message and f"logits for {vocab}" in message


def test_a_model_whose_weights_are_not_in_memory_is_refused(tiny_model_dir: Path) -> None:
    """A model on the meta device (built empty, or offloaded) holds no numbers the data can meet."""
    model = _model(tiny_model_dir)
    model.transformer.h.to("meta")
    _refused(lambda: Evaluator(model, _tokenizer(tiny_model_dir)), model, ModelLoadError, "meta device")


def test_a_call_from_inside_a_backward_pass_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Called from an autograd hook, while the step's gradients are being written: refused, and
    the backward's gradients are those of a backward with no hook that evaluates."""
    import torch

    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    evaluator = Evaluator(model, tokenizer, write_jsonl(tmp_path / "d.jsonl", TEXTS), **SETTINGS)
    model.eval()  # no dropout: two backward passes of one input give the same gradients
    ids = torch.tensor([tokenizer(TRAIN[0])["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    caught: list[BaseException] = []

    def hook(grad: torch.Tensor) -> torch.Tensor:
        try:
            evaluator(step=1)
        except LlevalError as exc:
            caught.append(exc)
        return grad

    model.lm_head.weight.register_hook(hook)
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(caught) == 1 and isinstance(caught[0], ConfigError) and "backward" in str(caught[0])
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), expected))


@pytest.mark.parametrize("settings,match", [
    ({"max_lenght": 16}, "unknown setting 'max_lenght' \\(did you mean 'max_length'\\?\\)"),
    ({"dtype": "bfloat16"}, "dtype sets how lleval loads a model"),
    ({"checkpoint": "c.ckpt"}, "each call is a run of its own"),
    ({"step": ("1",)}, "evaluator\\(step=N\\)"),
    ({"max_length": 0}, "max_length must be at least 1"),
    ({"log_to": ["tensorbored"]}, "log_to must be one of mlflow, tensorboard, wandb"),
])
def test_settings_that_mean_nothing_here_are_refused_before_the_model_is_touched(
        settings: dict[str, Any], match: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _model(tiny_model_dir)
    calls: list[int] = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ConfigError, match=match):
        Evaluator(model, _tokenizer(tiny_model_dir), write_jsonl(tmp_path / "d.jsonl", TEXTS), **settings)
    assert calls == []  # refused before the model ran


@pytest.mark.parametrize("step", [-1, "3", 2.0, True])
def test_a_step_that_is_not_a_whole_number_is_refused(step: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    evaluator = Evaluator(_model(tiny_model_dir), _tokenizer(tiny_model_dir), write_jsonl(tmp_path / "d.jsonl", TEXTS))
    with pytest.raises(ConfigError, match="whole number"):
        evaluator(step=step)


def test_a_missing_tracker_package_is_refused_before_the_model_runs(tiny_model_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    model = _model(tiny_model_dir)
    calls: list[int] = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ConfigError, match=r"pip install 'lleval\[wandb\]'"):
        Evaluator(model, _tokenizer(tiny_model_dir), write_jsonl(tmp_path / "d.jsonl", TEXTS), log_to="wandb")
    assert calls == []


def test_a_diverged_model_fails_the_call_and_leaves_the_state_as_it_was(tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    """Weights gone NaN mid-training: the call raises one `ScoringError` line (that names the
    setting to count and leave out such tokens), the training flags, RNG and weights as they were."""
    import torch

    from lleval.errors import ScoringError

    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    evaluator = Evaluator(model, tokenizer, data, **SETTINGS)
    with torch.no_grad():
        model.lm_head.weight[5].fill_(float("nan"))
    message = _refused(lambda: evaluator(step=9), model, ScoringError, "non-finite log-prob")
    assert "allow-nonfinite" in message


def test_labelled_datasets_and_labels_that_clash(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = _model(tiny_model_dir), _tokenizer(tiny_model_dir)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    same_name = [write_jsonl(tmp_path / "a" / "eval.jsonl", TEXTS), write_jsonl(tmp_path / "b" / "eval.jsonl", OTHER)]
    with pytest.raises(ConfigError, match="two datasets are labelled 'eval'"):
        Evaluator(model, tokenizer, same_name, **SETTINGS)
    report = Evaluator(model, tokenizer, {"prose": same_name[0], "notes": same_name[1]}, **SETTINGS)(step=1)
    assert isinstance(report, SuiteReport) and report.datasets == ["prose", "notes"]
    with pytest.raises(ConfigError, match="no dataset"):
        Evaluator(model, tokenizer, [])


def test_a_model_moved_after_the_evaluator_was_built_is_scored_where_it_is_now(tiny_model_dir: Path,
                                                                               tmp_path: Path) -> None:
    """The device is read at each call: a model whose weights went to the meta device (freed,
    offloaded) is refused then, one line, not a traceback from the middle of a batch."""
    model = _model(tiny_model_dir)
    evaluator = Evaluator(model, _tokenizer(tiny_model_dir), write_jsonl(tmp_path / "d.jsonl", TEXTS), **SETTINGS)
    model.to("meta")
    with pytest.raises(ModelLoadError, match="meta device"):
        evaluator(step=1)
