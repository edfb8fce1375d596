"""`LlevalCallback` in a real ``transformers.Trainer``: two training steps of a tiny model, the
held-out metrics in the Trainer's log history (and so in its TensorBoard), each equal to
``lleval score`` on the checkpoint saved at that step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import rel_close, write_jsonl
from lleval import EvalConfig, evaluate
from lleval.errors import ConfigError

HELD_OUT = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(6)]
TRAIN = ["a stitch in time saves nine", "pack my box with five dozen liquor jugs", "the lazy dog sleeps all day"]


def _trainer(folder: Path, out: Path, **arguments: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [tokenizer(text)["input_ids"] for text in TRAIN]

    class Texts(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids = torch.tensor(rows[i % len(rows)])
            return {"input_ids": ids, "labels": ids}

    args = TrainingArguments(output_dir=str(out), max_steps=2, per_device_train_batch_size=1, learning_rate=1e-2,
                             logging_steps=1, use_cpu=True, save_only_model=True, seed=0, **arguments)
    return Trainer(model=AutoModelForCausalLM.from_pretrained(folder), args=args, train_dataset=Texts(),
                   processing_class=tokenizer)


def test_each_saved_checkpoint_has_the_numbers_lleval_score_gives_it(tiny_model_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lleval.integrations.hf_trainer import LlevalCallback

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = _trainer(tiny_model_dir, tmp_path / "out", save_steps=1, report_to=["tensorboard"])
    data = write_jsonl(tmp_path / "held-out.jsonl", HELD_OUT)
    callback = LlevalCallback(trainer, data, max_length=24, stride=8)
    trainer.add_callback(callback)
    trainer.train()
    logged = {row["step"]: row for row in trainer.state.log_history if "eval_perplexity" in row}
    assert sorted(logged) == [1, 2] and [step for step, _ in callback.reports] == [1, 2]
    assert callback.evaluator is not None and callback.evaluator.tokenizations == 1
    for step in (1, 2):
        saved = evaluate(EvalConfig(model=str(tmp_path / "out" / f"checkpoint-{step}"), dataset=data,
                                    max_length=24, stride=8)).to_dict()
        row = logged[step]
        assert rel_close(row["eval_perplexity"], saved["metrics"]["perplexity"], 1e-6)
        assert rel_close(row["eval_bits_per_byte"], saved["metrics"]["bits_per_byte"], 1e-6)
        assert rel_close(row["eval_perplexity_ci_low"], saved["metrics"]["perplexity_ci"][0], 1e-6)
        assert row["eval_tokens"] == saved["totals"]["tokens"]
    assert logged[1]["eval_perplexity"] != logged[2]["eval_perplexity"]  # the training moved the weights
    # the Trainer's own TensorBoard got them (its writer keeps scalars in float32)
    scalars = _trainer_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["eval/perplexity"]] == [1, 2]
    for step, value in scalars["eval/perplexity"]:
        assert rel_close(value, logged[step]["eval_perplexity"], 1e-6)


def _trainer_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars the Trainer's TensorBoard callback wrote (``simple_value``s, float32)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events_dir in {p.parent for p in folder.rglob("events.out.tfevents.*")}:
        events = EventAccumulator(str(events_dir), size_guidance={SCALARS: 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return found


def test_every_n_steps_with_several_datasets_names_each_datasets_metrics(tiny_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    from lleval.integrations.hf_trainer import LlevalCallback

    trainer = _trainer(tiny_model_dir, tmp_path / "out", save_strategy="no", report_to=[])
    data = [write_jsonl(tmp_path / "prose.jsonl", HELD_OUT), write_jsonl(tmp_path / "chat.jsonl", TRAIN)]
    callback = LlevalCallback(trainer, data, every_steps=1, max_length=24)
    trainer.add_callback(callback)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "eval_prose_perplexity" in row]
    assert [row["step"] for row in logged] == [1, 2]
    for row, (step, report) in zip(logged, callback.reports):
        matrix = {cell["dataset"]: cell for cell in report.matrix()}
        assert row["eval_chat_perplexity"] == matrix["chat"]["perplexity"] and report.models[0].step == step
        assert row["eval_macro_bits_per_byte"] == report.macro[0].bits_per_byte


@pytest.mark.parametrize("arguments,match", [({"every_steps": 0}, "every_steps=0"),
                                             ({"every_steps": 1, "max_lenght": 8}, "did you mean 'max_length'")])
def test_a_wrong_callback_setting_is_refused_before_training(arguments: dict[str, Any], match: str,
                                                             tiny_model_dir: Path, tmp_path: Path) -> None:
    from lleval.integrations.hf_trainer import LlevalCallback

    trainer = _trainer(tiny_model_dir, tmp_path / "out", save_strategy="no", report_to=[])
    with pytest.raises(ConfigError, match=match):
        LlevalCallback(trainer, write_jsonl(tmp_path / "d.jsonl", HELD_OUT), **arguments)
