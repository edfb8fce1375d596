"""--log-to and the evaluator's log_to: every tracker read back through its own library holds
the report's numbers; a tracker that fails costs the logging alone; a missing package is
refused before the model loads."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import write_jsonl
from helpers.trackers import mlflow_metrics, mlflow_runs, tensorboard_scalars, tensorboard_texts, wandb_run
from lleval.cli import main
from lleval.trackers.points import Point, flat, label, points

TEXTS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(6)]
OTHER = [f"Note {i}: a stitch in time saves nine, and " * (1 + i % 3) for i in range(4)]
SECRET = "lleval-test-secret-api-key-7f3a9c"


@pytest.fixture(autouse=True)
def _tracker_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No tracker server or account of the machine's: MLflow's store is lleval's SQLite
    default, W&B runs offline (with a key set, which must never be written), and what either
    keeps beside a run (MLflow's default artifact folder ./mlruns, W&B's cache and settings)
    goes to the test's folder, not the checkout's or the home's."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.chdir(tmp_path)


def run(args: list[str]) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _score(model: Path, data: str, out: Path, *extra: str) -> Any:
    return run(["score", "-m", str(model), "-d", data, "-L", "24", "-q", "-o", str(out), *extra])


def _expected(report_file: Path) -> list[Point]:
    """What the report's JSON gives a tracker (`points` is tested on its own below)."""
    return points(json.loads(report_file.read_text()))


# --- the points: pure functions of a report's JSON ---


def test_flat_splits_intervals_and_leaves_out_what_is_no_number() -> None:
    block = {"perplexity": 3.5, "perplexity_ci": [3.0, 4.0], "bits_per_byte": None, "bits_per_byte_ci": None,
             "unit": "nats", "passed": True, "tokens": 7}
    assert flat(block, "d/") == {"d/perplexity": 3.5, "d/perplexity_ci_low": 3.0, "d/perplexity_ci_high": 4.0,
                                 "d/passed": 1.0, "d/tokens": 7.0}


@pytest.mark.parametrize("text,cleaned", [("wiki", "wiki"), ("a/b", "a_b"), ("ckpt-1.5 x", "ckpt-1.5 x"),
                                          ("é%$", "_"), ("", "_")])
def test_labels_become_names_every_tracker_takes(text: str, cleaned: str) -> None:
    assert label(text) == cleaned


def test_compare_names_each_candidate_by_its_files_stem_where_that_tells_them_apart() -> None:
    rows = [{"candidate": c, "base_value": 2.0, "candidate_value": 3.0, "relative_change": 0.5,
             "relative_change_ci": None, "probability_worse": None, "regressed": False}
            for c in ("a/new.json", "b/old.json")]
    assert set(points({"kind": "compare", "comparisons": rows, "passed": True})[0].metrics) >= {
        "new/relative_change", "old/relative_change", "passed"}
    rows[1]["candidate"] = "b/new.json"
    assert "b_new.json/relative_change" in points({"kind": "compare", "comparisons": rows, "passed": True})[0].metrics


def _cell(ppl: float) -> dict[str, Any]:
    return {"metrics": {"perplexity": ppl, "perplexity_ci": [ppl - 1, ppl + 1]},
            "totals": {"documents": 2, "tokens": 10, "bytes": 40}, "timing": {"tokens_per_second": 5.0}}


def test_a_sweep_is_logged_at_its_steps_and_other_suites_by_model() -> None:
    models = [{"label": "c-2", "step": 200}, {"label": "c-1", "step": 100}]
    cells = [{"model": m["label"], "dataset": d, "report": _cell(p)}
             for m, p0 in zip(models, (3.0, 5.0)) for d, p in (("wiki", p0), ("code", p0 + 1))]
    macro = [{"model": "c-2", "bits_per_byte": 1.5, "bits_per_byte_ci": None}]
    sweep = points({"kind": "suite", "models": models, "cells": cells, "macro": macro})
    assert [p.step for p in sweep] == [200, 100]
    assert sweep[0].metrics["wiki/perplexity"] == 3.0 and sweep[1].metrics["code/perplexity_ci_high"] == 7.0
    assert sweep[0].metrics["macro/bits_per_byte"] == 1.5 and "macro/bits_per_byte" not in sweep[1].metrics
    unstepped = points({"kind": "suite", "models": [{**models[0], "step": None}, models[1]], "cells": cells,
                        "macro": []})
    assert [p.step for p in unstepped] == [None, None] and unstepped[1].metrics["c-1/wiki/perplexity"] == 5.0


# --- each tracker read back through its own library ---


def test_score_to_mlflow_holds_the_reports_numbers(tiny_model_dir: Path, tmp_path: Path) -> None:
    out, logs = tmp_path / "r.json", tmp_path / "logs"
    result = _score(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", TEXTS), out, "--log-to", "mlflow",
                    "--log-dir", str(logs))
    assert result.exit_code == 0, result.output
    client, runs = mlflow_runs(logs)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "lleval score"
    (expected,) = _expected(out)
    logged = mlflow_metrics(client, runs[0].info.run_id)
    assert logged == {name: [(0, value)] for name, value in expected.metrics.items()}
    assert "perplexity_ci_low" in logged and "bits_per_byte" in logged
    params = runs[0].data.params
    assert params["max_length"] == "24" and params["model"] == str(tiny_model_dir) and "log_to" not in params
    local = Path(client.download_artifacts(runs[0].info.run_id, "report.json", str(tmp_path)))
    assert json.loads(local.read_text()) == json.loads(out.read_text())


def test_score_to_tensorboard_holds_the_reports_numbers(tiny_model_dir: Path, tmp_path: Path) -> None:
    out, logs, page = tmp_path / "r.json", tmp_path / "tb", tmp_path / "r.html"
    result = _score(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", TEXTS), out, "--log-to", "tensorboard",
                    "--log-dir", str(logs), "--html", str(page))
    assert result.exit_code == 0, result.output
    (folder,) = [p for p in logs.iterdir() if p.is_dir()]
    (expected,) = _expected(out)
    assert tensorboard_scalars(folder) == {name: [(0, value)] for name, value in expected.metrics.items()}
    assert "| max_length | 24 |" in tensorboard_texts(folder)["settings"]
    assert json.loads((folder / "report.json").read_text()) == json.loads(out.read_text())
    assert (folder / "r.html").read_bytes() == page.read_bytes()


def test_score_to_wandb_offline_holds_the_reports_numbers_and_never_the_key(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    out, logs = tmp_path / "r.json", tmp_path / "wb"
    result = _score(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", TEXTS), out, "--log-to", "wandb",
                    "--log-dir", str(logs), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(out.read_text())  # nothing of W&B's on stdout
    found = wandb_run(logs)
    (expected,) = _expected(out)
    (row,) = found["history"]
    assert {k: v for k, v in row.items() if not k.startswith("_")} == expected.metrics
    assert found["config"]["max_length"] == 24 and found["name"] == "lleval score"
    assert json.loads((found["folder"] / "files" / "report.json").read_text()) == json.loads(out.read_text())
    written = [p for p in logs.rglob("*") if p.is_file()]
    assert written and not [p for p in written if SECRET.encode() in p.read_bytes()]


def test_a_checkpoint_sweep_draws_one_curve_per_dataset(tiny_model_dir: Path, tiny_llama_dir: Path,
                                                        tmp_path: Path) -> None:
    """Suite cells are logged at their model's step: dataset/perplexity over steps 100 and 200."""
    out, logs = tmp_path / "s.json", tmp_path / "tb"
    data = [write_jsonl(tmp_path / "prose.jsonl", TEXTS), write_jsonl(tmp_path / "notes.jsonl", OTHER)]
    result = run(["score", "-m", str(tiny_model_dir), "-m", str(tiny_llama_dir), "-d", data[0], "-d", data[1],
                  "--step", "200", "--step", "100", "-L", "24", "-q", "-o", str(out), "--log-to", "tensorboard",
                  "--log-dir", str(logs)])
    assert result.exit_code == 0, result.output
    (folder,) = [p for p in logs.iterdir() if p.is_dir()]
    scalars = tensorboard_scalars(folder)
    matrix = json.loads(out.read_text())["matrix"]
    for dataset in ("prose", "notes"):
        curve = sorted((row["step"], row["perplexity"]) for row in matrix if row["dataset"] == dataset)
        assert scalars[f"{dataset}/perplexity"] == curve and [s for s, _ in curve] == [100, 200]
    macro = {m["model"]: m["bits_per_byte"] for m in json.loads(out.read_text())["macro"]}
    assert dict(scalars["macro/bits_per_byte"]) == {200: macro[Path(tiny_model_dir).name],
                                                    100: macro[Path(tiny_llama_dir).name]}


def test_kld_and_compare_to_tensorboard_hold_their_numbers(tiny_model_dir: Path, tiny_llama_dir: Path,
                                                           tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    kld_out, logs = tmp_path / "k.json", tmp_path / "tb-kld"
    result = run(["kld", "--base", str(tiny_model_dir), "-m", str(tiny_llama_dir), "-d", data, "-L", "24", "-q",
                  "-o", str(kld_out), "--log-to", "tensorboard", "--log-dir", str(logs)])
    assert result.exit_code == 0, result.output
    (folder,) = [p for p in logs.iterdir() if p.is_dir()]
    kld = json.loads(kld_out.read_text())
    scalars = tensorboard_scalars(folder)
    assert scalars["kl_divergence_mean"] == [(0, kld["kl_divergence"]["mean"])]
    assert scalars["top_token_agreement"] == [(0, kld["top_token_agreement"])]
    assert scalars["perplexity_ln_ratio"] == [(0, kld["perplexity"]["ln_ratio"])]
    base, cand = tmp_path / "base.json", tmp_path / "cand.json"
    assert _score(tiny_model_dir, data, base).exit_code == 0 and _score(tiny_llama_dir, data, cand).exit_code == 0
    out, logs = tmp_path / "c.json", tmp_path / "tb-compare"
    result = run(["compare", str(base), str(cand), "-o", str(out), "--log-to", "tensorboard", "--log-dir", str(logs)])
    assert result.exit_code == 0, result.output
    (folder,) = [p for p in logs.iterdir() if p.is_dir()]
    (row,) = json.loads(out.read_text())["comparisons"]
    scalars = tensorboard_scalars(folder)
    assert scalars["cand/relative_change"] == [(0, row["relative_change"])]
    assert scalars["cand/relative_change_ci_low"] == [(0, row["relative_change_ci"][0])]
    assert scalars["passed"] == [(0, 1.0)]


# --- the evaluator's log_to ---


def test_evaluator_logs_each_call_at_its_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lleval import Evaluator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    logs = tmp_path / "logs"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    with Evaluator(model, AutoTokenizer.from_pretrained(tiny_model_dir), data, max_length=24,
                   log_to=["tensorboard", "mlflow"], log_dir=str(logs), name="run-7") as evaluator:
        reports = {}
        for step in (10, 20):
            reports[step] = evaluator(step=step)
            with torch.no_grad():
                model.lm_head.weight.mul_(0.9)
    (folder,) = [p for p in logs.iterdir() if p.is_dir() and p.name.startswith("run-7")]
    curve = tensorboard_scalars(folder)["perplexity"]
    assert curve == [(step, r.metrics["perplexity"]) for step, r in reports.items()]
    client, (found,) = mlflow_runs(logs)
    assert mlflow_metrics(client, found.info.run_id)["bits_per_byte"] == [
        (step, r.metrics["bits_per_byte"]) for step, r in reports.items()]
    assert found.info.status == "FINISHED"  # closed by the with block
    names = {f.path for f in client.list_artifacts(found.info.run_id)}
    assert names == {"report-step-10.json", "report-step-20.json"}


def test_evaluator_inside_an_active_mlflow_run_logs_into_it(tiny_model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A training script's own run gets the metrics, the settings as lleval.* parameters (beside
    its own max_length), and stays open."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lleval import Evaluator

    uri = f"sqlite:///{tmp_path / 'train.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with mlflow.start_run() as active:
        mlflow.log_param("max_length", 4096)
        evaluator = Evaluator(model, AutoTokenizer.from_pretrained(tiny_model_dir),
                              write_jsonl(tmp_path / "d.jsonl", TEXTS), max_length=24, log_to="mlflow")
        report = evaluator(step=3)
        assert not report.failed_outputs and evaluator.close() == []
        assert mlflow.active_run() is not None
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(active.info.run_id)
    assert run.data.params["max_length"] == "4096" and run.data.params["lleval.max_length"] == "24"
    assert mlflow_metrics(client, active.info.run_id)["perplexity"] == [(3, report.metrics["perplexity"])]


# --- failures ---


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_tracker_that_fails_costs_the_logging_alone(tiny_model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's server down and TensorBoard's folder a file: the report is written and complete,
    each failure one line, exit 1; W&B, asked beside them, still holds the numbers."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the event files would go")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "r.json"
    result = _score(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", TEXTS), out, "--log-to", "mlflow",
                    "--log-to", "tensorboard", "--log-to", "wandb", "--log-dir", str(blocked))
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    assert report["complete"] and report["totals"]["tokens"] > 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and "--log-to mlflow: logging failed" in errors[0]
    assert "--log-to tensorboard: logging failed" in errors[1]
    assert "Traceback" not in result.stderr
    (row,) = wandb_run(tmp_path / "wb")["history"]
    assert row["perplexity"] == report["metrics"]["perplexity"]


def test_a_missing_tracker_package_is_refused_before_the_model_loads(tiny_model_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import lleval.runner.prepare as prepare

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a))
    monkeypatch.setattr(prepare, "load_and_plan", lambda *a, **k: pytest.fail("the model was loaded"))
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    result = _score(tiny_model_dir, data, tmp_path / "r.json", "--log-to", "mlflow")
    assert result.exit_code == 2 and "pip install 'lleval[mlflow]'" in result.stderr
    assert "sqlalchemy" in result.stderr and not (tmp_path / "r.json").exists()
    result = run(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--log-to", "mlflow"])
    assert result.exit_code == 2 and "pip install 'lleval[mlflow]'" in result.stderr


@pytest.mark.parametrize("command", [["score", "-d", "x.jsonl"], ["compare", "a.json", "b.json"]])
def test_log_dir_without_log_to_is_refused(command: list[str]) -> None:
    result = run([*command, "--log-dir", "logs"])
    assert result.exit_code == 2 and "--log-dir is where --log-to's trackers write: give --log-to" in result.stderr


def test_an_unknown_tracker_is_refused_by_name() -> None:
    result = run(["score", "--log-to", "tensorbored"])
    assert result.exit_code == 2 and "tensorbored" in result.stderr and "tensorboard" in result.stderr


def test_wandb_with_no_credentials_fails_in_one_line_and_never_prompts(tiny_model_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode with no key anywhere: W&B would prompt for one and block the command; lleval
    refuses the run in one line instead, and the report is written."""
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb-config"))
    out = tmp_path / "r.json"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    result = CliRunner().invoke(main, ["score", "-m", str(tiny_model_dir), "-d", data, "-L", "24", "-q", "-o", str(out),
                                       "--log-to", "wandb", "--log-dir", str(tmp_path / "wb")], input="",
                                catch_exceptions=False)
    assert result.exit_code == 1 and json.loads(out.read_text())["complete"]
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert "--log-to wandb: logging failed (W&B has no credentials" in error


def test_a_config_file_names_trackers_as_a_list(tmp_path: Path) -> None:
    from lleval.config import load_config_file
    from lleval.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("log_to: [tensorboard, mlflow]\nlog-dir: runs\n")
    assert load_config_file(path) == {"log_to": ("tensorboard", "mlflow"), "log_dir": "runs"}
    path.write_text("log_to: [tensorbored]\n")
    with pytest.raises(ConfigError, match="'log_to' must be one of mlflow, tensorboard, wandb, got 'tensorbored'"):
        load_config_file(path)
