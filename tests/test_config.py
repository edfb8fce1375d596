"""Config files: every shipped file loads; bad files fail with every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from lleval.config import DEFAULT_SEPARATOR, EvalConfig, load_config_file
from lleval.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_default_config_spells_out_the_builtin_default() -> None:
    """configs/default.yaml says it is `lleval score` with no flags: every key it sets
    resolves to what the built-in defaults resolve to (same protocol plan for a model
    with 8,192 positions, same value for every other field)."""
    from conftest import TINY_TOKENIZER
    from transformers import AutoTokenizer

    from lleval.protocols import plan

    values = load_config_file(Path(__file__).parent.parent / "configs" / "default.yaml")
    spelled, default = EvalConfig(**values), EvalConfig()
    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    assert plan(spelled, tokenizer, 8192) == plan(default, tokenizer, 8192)
    plan_fields = {"max_length", "stride", "prefix_token", "protocol", "concat"}
    assert set(values) - plan_fields  # the file sets more than the window shape
    for key in set(values) - plan_fields:
        assert getattr(spelled, key) == getattr(default, key), key


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path: Path) -> None:
    values = load_config_file(path)
    config = EvalConfig(**values)
    config.validate()
    assert values  # a config file that sets nothing is a mistake


def test_wikitext_config_values() -> None:
    values = load_config_file(Path(__file__).parent.parent / "configs" / "wikitext2.yaml")
    assert values["concat"] == DEFAULT_SEPARATOR
    assert (values["max_length"], values["stride"]) == (1024, 512)


def test_unknown_keys_and_type_errors_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("max_lenght: 10\nbatch_size: many\nstreaming: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert "'max_lenght'" in message and "did you mean 'max_length'" in message
    assert "'batch_size' must be int or 'auto'" in message and "'streaming' must be bool" in message


def test_dashes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("max-length: 64\nprefix-token: 5\n")
    assert load_config_file(path) == {"max_length": 64, "prefix_token": "5"}


def test_validate_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        EvalConfig(max_length=4, stride=8, dtype="fp8", batch_size=0).validate()
    message = str(info.value)
    assert "stride (8) is larger than max length (4)" in message
    assert "dtype" in message and "batch_size" in message


@pytest.mark.parametrize("resamples", [1, 2, 99])
def test_too_few_bootstrap_resamples_are_refused(resamples: int) -> None:
    with pytest.raises(ConfigError, match="too few resamples for a 95% interval"):
        EvalConfig(bootstrap=resamples).validate()
    EvalConfig(bootstrap=100).validate()
    EvalConfig(bootstrap=0).validate()
