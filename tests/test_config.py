"""Config files: every shipped file loads; bad files fail with every problem named."""

from __future__ import annotations

import dataclasses
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

    from lleval.plan.protocols import plan

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


@pytest.mark.parametrize("text,keys", [
    ("max_length: 5\nmax-length: 7\n", "'max_length' (line 1) and 'max-length' (line 2) both set max_length"),
    ("seed: 1\nbootstrap: 10\nseed: 2\n", "'seed' (line 1) and 'seed' (line 3) both set seed"),
])
def test_a_setting_given_twice_is_refused(tmp_path: Path, text: str, keys: str) -> None:
    """YAML keeps the last of two equal keys, and the two spellings would both be read: refuse both."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert keys in str(info.value) and "keep one" in str(info.value)


def test_values_from_a_config_file_are_named_as_its_keys() -> None:
    """A refusal names a config-file value by its key and file, a typed one by its flag."""
    typed = EvalConfig(protocol="lm-eval", concat="\n\n", bootstrap=0, seed=4)
    from_file = dataclasses.replace(typed, origins={"concat": "config file c.yaml", "seed": "config file c.yaml"})
    with pytest.raises(ConfigError) as info:
        typed.validate()
    assert "drop --concat" in str(info.value) and "--seed seeds the bootstrap" in str(info.value)
    with pytest.raises(ConfigError) as info:
        from_file.validate()
    message = str(info.value)
    assert "drop concat (from config file c.yaml)" in message and "seed (from config file c.yaml) seeds" in message
    assert "--concat" not in message and "--seed" not in message
    assert "--protocol lm-eval" in message  # typed: still the flag
    assert from_file == typed  # origins are no setting: equal configs, equal checkpoints


def test_split_from_a_config_file_is_not_blamed_on_a_flag(tmp_path: Path) -> None:
    from lleval.data.spec import check_spec, data_spec

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    config = EvalConfig(dataset=str(data), split="test", origins={"split": "config file c.yaml"})
    with pytest.raises(ConfigError) as info:
        check_spec(data_spec(config))
    assert "drop split: test (from config file c.yaml)" in str(info.value) and "--split" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        check_spec(data_spec(dataclasses.replace(config, origins={})))
    assert "drop --split test" in str(info.value)


@pytest.mark.parametrize("name,ok", [("t.parquet", True), ("t.jsonl", True), ("T.JSONL", True), ("t.json", False),
                                     ("t", False), ("t.csv", False)])
def test_token_files_are_parquet_or_jsonl(name: str, ok: bool) -> None:
    config = EvalConfig(tokens=name)
    if ok:
        config.validate()
        return
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert name in str(info.value) and "use .parquet or .jsonl" in str(info.value)


@pytest.mark.parametrize("key,flag,value", [
    ("dtype", "--dtype", "float64"),
    ("protocol", "--protocol", "perplexity"),
    ("sample_by", "--sample-by", "word"),
    ("format", "--format", "xml"),
    ("max_length", "--max-length", 0),
    ("stride", "--stride", 0),
    ("block_tokens", "--block-tokens", 0),
])
def test_config_files_are_held_to_the_flags_choices_and_ranges(tmp_path: Path, key: str, flag: str,
                                                                value: object) -> None:
    """A value click refuses on the command line is refused in a config file too, by a
    message that names the file's key (values outside each flag's choices or below its
    minimum, written out here rather than read from the metadata both derive from)."""
    from click.testing import CliRunner

    from lleval.cli import main
    from lleval.config import load_config_file

    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=key):
        load_config_file(path)
    typed = CliRunner().invoke(main, ["score", flag, str(value)])
    assert typed.exit_code == 2 and flag in typed.output


def test_provenance_gives_each_set_value_and_its_origin() -> None:
    """Typed, from a config file, or passed through the API (a value other than the default that no
    flag or file set); a value simply left at its default is not listed."""
    import json

    config = EvalConfig(model="m", max_length=512, stride=256, protocol="rolling", seed=3, origins={
        "max_length": "flag", "stride": "config file runs/c.yaml", "protocol": "flag"})
    expected = {
        "model": {"value": "m", "origin": "api"},
        "max_length": {"value": 512, "origin": "flag"},
        "stride": {"value": 256, "origin": "config file", "file": "runs/c.yaml"},
        "protocol": {"value": "rolling", "origin": "flag"},  # typed, though it is the default
        "seed": {"value": 3, "origin": "api"},
    }
    assert config.provenance() == expected
    assert json.loads(json.dumps(config.provenance())) == expected  # plain JSON, for the report header
    assert EvalConfig().provenance() == {}
    from_file = EvalConfig(concat=None, origins={"concat": "config file c.yaml"})  # `concat: false` in the file
    assert from_file.provenance() == {"concat": {"value": None, "origin": "config file", "file": "c.yaml"}}


def test_each_setting_is_in_one_section_named_as_its_spec_names_it() -> None:
    from lleval.backends.base import ModelSpec
    from lleval.config import SECTIONS
    from lleval.data.spec import DataSpec

    config = EvalConfig(model="m", model_cache=False, dtype="float16", dataset="d.jsonl", limit=3)
    assert ModelSpec(**config.section("model")) == ModelSpec(name="m", cache=False, dtype="float16")
    assert DataSpec(**config.section("data")) == DataSpec(dataset="d.jsonl", limit=3)
    assert set(config.section("model")) == {f.name for f in dataclasses.fields(ModelSpec)}
    # the spec's seed is the run's --seed (an outputs setting: it seeds the bootstrap too), which --sample uses
    assert set(config.section("data")) == {f.name for f in dataclasses.fields(DataSpec)} - {"origins", "seed"}
    settings = {f.name for f in dataclasses.fields(EvalConfig)} - {"origins"}
    assert sum(len(config.section(name)) for name in SECTIONS) == len(settings)
    assert config.section("protocol") == {"protocol": "rolling", "max_length": None, "stride": None,
                                          "prefix_token": "auto", "concat": None}
    with pytest.raises(ValueError, match="no section 'modle'"):
        config.section("modle")


def test_a_typed_value_is_named_by_its_flag() -> None:
    """Origin ``flag`` (what the CLI records for a typed value) reads as no origin in a message."""
    config = EvalConfig(protocol="lm-eval", concat="\n\n", origins={"concat": "flag", "protocol": "flag"})
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert "--protocol lm-eval scores each document on its own: drop --concat" in str(info.value)


def test_a_repeatable_setting_is_a_list_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("replicas: [http://b:8000/v1, http://c:8000/v1]\n")
    assert load_config_file(path)["replicas"] == ("http://b:8000/v1", "http://c:8000/v1")
    path.write_text("replicas: [http://b:8000/v1, 3]\n")
    with pytest.raises(ConfigError, match="'replicas' must be a list of strings"):
        load_config_file(path)
